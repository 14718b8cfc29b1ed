"""True end-to-end runs: ONNX -> RTL simulation (cocotb + Verilator) -> bitstream, on the shipped example."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelzoo import ort_run
from zakid_hw import cycle_model
from zakid_hw.compiler import compile_model
from zakid_hw.simulate import golden_outputs, simulate_model

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"


@pytest.fixture(scope="module")
def digits():
    return np.load(DIGITS / "digits_x.npy"), np.load(DIGITS / "digits_y.npy")


def test_whole_digits_set_in_rtl_equals_onnxruntime(digits):
    """Every one of the 1797 images through the generated RTL: outputs equal onnxruntime's bit for bit,
    so the accuracy is the same too."""
    xs, ys = digits
    c = compile_model(DIGITS / "digits_mlp_int8.onnx")
    res = simulate_model(c, xs)
    want = ort_run(DIGITS / "digits_mlp_int8.onnx", xs)
    np.testing.assert_array_equal(res.outputs.reshape(want.shape), want)
    np.testing.assert_array_equal(res.outputs, golden_outputs(c, xs))
    acc_rtl = float((res.outputs.reshape(len(xs), -1).argmax(1) == ys).mean())
    acc_ort = float((want.reshape(len(xs), -1).argmax(1) == ys).mean())
    assert acc_rtl == acc_ort > 0.95
    assert set(res.cycles) == {cycle_model.cycles_per_run(c.image)}


def test_float_model_with_calibration_in_rtl(digits, tmp_path):
    """The float model quantized by the tool itself: RTL equals the golden model and onnxruntime on the
    quantized model the tool made."""
    xs, _ = digits
    calib = np.load(DIGITS / "calib.npy")
    c = compile_model(DIGITS / "digits_mlp.onnx", calibration=calib)
    assert c.graph.meta["quantization"]["calibration_rows"] == len(calib)
    res = simulate_model(c, xs[:300])
    np.testing.assert_array_equal(res.outputs, golden_outputs(c, xs[:300]))


def test_cli_sim_whole_design_over_uart(digits, tmp_path):
    """`zakid-hw sim --uart --check`: the full top level (UART host link included) on a few images."""
    xs, _ = digits
    np.save(tmp_path / "x.npy", xs[:4])
    r = subprocess.run([sys.executable, "-m", "zakid_hw.cli", "sim", str(DIGITS / "digits_mlp_int8.onnx"),
                        "--input", "x.npy", "--output", "y.npy", "--check", "--uart"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "check passed" in r.stdout
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.float32 and y.shape == (4, 1, 10)
    np.testing.assert_array_equal(y, ort_run(DIGITS / "digits_mlp_int8.onnx", xs[:4]))


def test_build_example_to_bitstream(tmp_path):
    """The README's main job: ONNX -> verified RTL -> bitstream + report for the iCEBreaker."""
    r = subprocess.run([sys.executable, "-m", "zakid_hw.cli", "build", str(DIGITS / "digits_mlp_int8.onnx"),
                        "--fpga", "ice40"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout
    out = tmp_path / "build" / "digits_mlp_int8"
    assert (out / "digits_mlp_int8.bin").stat().st_size > 50_000
    assert "module" in (out / "digits_mlp_int8.v").read_text()
    rep = json.loads((out / "report.json").read_text())
    for key in ("model", "device", "board", "macs", "mac_lanes", "cycles_per_inference", "fmax_mhz", "clock_mhz",
                "latency_us", "inferences_per_s", "resources", "layers"):
        assert key in rep
    assert rep["device"] == "up5k" and rep["board"] == "icebreaker" and rep["macs"] == 64 * 16 + 16 * 10
    assert rep["timing_met"] and rep["fmax_mhz"] >= rep["clock_mhz"]
    assert rep["resources"]["lc"]["total"] == 5280 and 0 < rep["resources"]["lc"]["used"] < 5280
    assert rep["resources"]["dsp"]["used"] >= 1
    assert sum(l["cycles"] for l in rep["layers"]) + 1 == rep["cycles_per_inference"]
    # where the cycles go: 64 and 16 MAC steps (16 lanes), the rest waits for the requantized outputs
    assert [(l["mac_steps"], l["wait_cycles"]) for l in rep["layers"]] == [(64, 16), (16, 27)]
    assert rep["mac_steps"] == 80 and "80 in MAC steps, 44 waiting" in (out / "report.txt").read_text()
    assert (rep["roofline_cycles"], rep["efficiency"]) == (74, 0.597) and "74 cycles, 59.7% of it" in (
        out / "report.txt").read_text()
    assert rep["latency_us"] == pytest.approx(rep["cycles_per_inference"] / rep["clock_mhz"], rel=1e-3)
    assert [p.name for p in tmp_path.joinpath("build").iterdir()] == ["digits_mlp_int8"]  # no temp folders left
    # where the place-and-route run's time went, tool by tool
    assert set(rep["tool_seconds"]) == {"elaborate", "yosys", "nextpnr-ice40", "icepack"}
    assert rep["tool_seconds"]["yosys"] > 0 and rep["tool_seconds"]["nextpnr-ice40"] > 0
    assert "nextpnr-ice40" in (out / "report.txt").read_text()
    # the exploration took the fastest design: 16 int8 lanes, two per SB_MAC16
    assert (rep["mac_lanes"], rep["dsp_lanes"], rep["dsp_pack"]) == (16, 16, 2)
    assert rep["resources"]["dsp"]["used"] == 8
    # the cost model's predictions against this real build (issue 4: within 15%)
    pred = rep["exploration"]["predicted_resources"]
    lc = rep["resources"]["lc"]["used"]
    assert abs(pred["lc"] - lc) <= 0.15 * lc, (pred, rep["resources"])  # block RAM: see the README's known limits
    assert pred["dsp"] == rep["resources"]["dsp"]["used"] and pred["spram"] == rep["resources"]["spram"]["used"]
