"""``zakid-hw run`` end to end against the simulated top level (accelerator + UART host link).

The design runs in cocotb + Verilator with ``sim/benches/pty_bench.py``, which puts its UART on a
pseudo-terminal; the real ``run`` command (pyserial SerialLink + Driver) talks to that pty as it would to a
board's serial port, with the same bytes on the wire. The build folder is made without synthesis: ``run`` only
reads ``model.onnx`` and ``report.json`` from it.
"""

import json
import shutil
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from rtl_gen.spram import sim_sources
from rtl_gen.system import AcceleratorSystem
from sim.runner import simulate
from zakid_hw import golden
from zakid_hw.compiler import compile_model
from zakid_hw.simulate import cache_dir

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "examples" / "digits" / "digits_mlp_int8.onnx"
DIGITS_X = REPO / "examples" / "digits" / "digits_x.npy"
DIVISOR = 8
N_ROWS = 5


def make_build_folder(path: Path, compiled) -> Path:
    """The parts of a build folder that ``zakid-hw run`` reads (no bitstream)."""
    path.mkdir(parents=True)
    shutil.copy(MODEL, path / "model.onnx")
    c = compiled.config
    report = {"board": compiled.board.name, "mac_lanes": c.lanes, "dsp_pack": c.dsp_pack, "clock_mhz": c.clock_mhz,
              "pixels": c.pixels, "batch": compiled.program.batch,
              "host_link": {"baud": round(c.clock_mhz * 1e6 / c.uart_divisor)}}
    (path / "report.json").write_text(json.dumps(report))
    return path


@pytest.fixture(scope="module")
def compiled():
    return compile_model(MODEL, uart_divisor=DIVISOR)


@contextmanager
def pty_device(compiled, d: Path):
    """The simulated system of ``compiled`` on a pty while the block runs: yields the pty's path."""
    port_file, stop_file = d / "port", d / "stop"
    outcome = {}

    def sim():
        try:
            outcome["result"] = simulate(
                AcceleratorSystem(compiled.config, compiled.image, compiled.signature), name="zakid_system_pty",
                test_module="pty_bench", test_dir=REPO / "sim" / "benches", build_dir=cache_dir(),
                extra_sources=sim_sources(compiled.config),
                parameters=dict(divisor=DIVISOR, port_file=str(port_file), stop_file=str(stop_file),
                                max_seconds=300))
        except BaseException as e:  # reported by the fixture
            outcome["error"] = e

    thread = threading.Thread(target=sim, daemon=True)
    t0 = time.monotonic()
    thread.start()
    while not port_file.exists():  # the first Verilator compile takes a minute or so
        if not thread.is_alive():
            raise AssertionError(f"the simulation ended before opening its pty: {outcome.get('error')}")
        if time.monotonic() - t0 > 900:
            raise AssertionError("the simulation did not open its pty within 900 s")
        time.sleep(0.2)
    print(f"pty up after {time.monotonic() - t0:.1f} s")
    yield port_file.read_text()
    stop_file.touch()
    thread.join(60)
    assert not thread.is_alive(), "the pty bench did not stop"
    if "error" in outcome:
        raise outcome["error"]
    print("pty bench:", outcome["result"])
    assert outcome["result"]["stopped_by"] == "stop_file"


@pytest.fixture(scope="module")
def device(compiled, tmp_path_factory):
    with pty_device(compiled, tmp_path_factory.mktemp("pty")) as port:
        yield port


def zakid_run(build: Path, port: str, x: Path, y: Path):
    return subprocess.run([sys.executable, "-m", "zakid_hw.cli", "run", str(build), "--port", port,
                           "--input", str(x), "--output", str(y), "--timeout", "60"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)


def test_run_over_pty_matches_golden_and_onnxruntime(compiled, device, tmp_path):
    build = make_build_folder(tmp_path / "build", compiled)
    xs = np.load(DIGITS_X)[:N_ROWS]
    np.save(tmp_path / "x.npy", xs)
    t0 = time.monotonic()
    p = zakid_run(build, device, tmp_path / "x.npy", tmp_path / "y.npy")
    print(f"zakid-hw run: {time.monotonic() - t0:.1f} s\n{p.stdout}{p.stderr}")
    assert p.returncode == 0, p.stderr
    assert f"ran {N_ROWS} inferences" in p.stdout
    ys = np.load(tmp_path / "y.npy")

    want = golden.run_batch(compiled.graph, xs)
    assert ys.shape == want.shape and ys.dtype == want.dtype
    np.testing.assert_array_equal(ys, want)

    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(str(MODEL), providers=["CPUExecutionProvider"])
    ref = np.stack([sess.run(None, {"x": x.reshape(1, 64)})[0] for x in xs])
    np.testing.assert_array_equal(ys, ref.reshape(ys.shape))


def test_run_refuses_a_device_with_another_model(compiled, device, tmp_path):
    # the same model for 4 lanes has another memory image, hence another signature
    other = compile_model(MODEL, board=compiled.board.name, lanes=4, uart_divisor=DIVISOR)
    assert other.signature != compiled.signature
    build = make_build_folder(tmp_path / "build", other)
    np.save(tmp_path / "x.npy", np.load(DIGITS_X)[:1])
    p = zakid_run(build, device, tmp_path / "x.npy", tmp_path / "y.npy")
    assert p.returncode == 2, p.stdout + p.stderr
    assert f"signature {compiled.signature:08x}" in p.stderr
    assert f"expected {other.signature:08x}" in p.stderr
    assert not (tmp_path / "y.npy").exists()


def test_run_a_batch_design_over_pty(tmp_path):
    """A design for runs of 2 (``--batch 2``): ``run`` sends 5 rows as 3 runs (the last filled up with a copy
    of the fifth row) and gives back 5 outputs, equal to the golden model."""
    c = compile_model(MODEL, uart_divisor=DIVISOR, batch=2)
    build = make_build_folder(tmp_path / "build", c)
    xs = np.load(DIGITS_X)[:N_ROWS]
    np.save(tmp_path / "x.npy", xs)
    (tmp_path / "pty").mkdir()
    with pty_device(c, tmp_path / "pty") as port:
        p = zakid_run(build, port, tmp_path / "x.npy", tmp_path / "y.npy")
    assert p.returncode == 0, p.stderr
    assert f"ran {N_ROWS} inferences in 3 runs of 2" in p.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), golden.run_batch(c.graph, xs))
