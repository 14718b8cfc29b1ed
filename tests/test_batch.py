"""Batches of inferences (``--batch N``): a model of dense layers runs N inferences per run, one per pixel of
pointwise convolutions; RTL equals the golden model of every inference, and the cycle model is exact."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import irzoo
from modelzoo import ort_run
from rtl_gen.config import AccelConfig
from test_accelerator import run_core
from zakid_hw import cycle_model, golden, passes, schedule
from zakid_hw.compiler import compile_model
from zakid_hw.errors import ZakidError
from zakid_hw.ir import dtype_range
from zakid_hw.simulate import from_codes, signed_codes, simulate_model, to_codes

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits"


def mlp(dtype, make=irzoo.mlp_b):
    return passes.lower_for_hardware(make(np.random.default_rng(7), dtype))


def inputs(g, n, seed=0):
    lo, hi = dtype_range(g.tensors[g.inputs[0]].dtype)
    xs = np.random.default_rng(seed).integers(lo, hi + 1, (n, *g.tensors[g.inputs[0]].shape))
    xs[0], xs[1] = lo, hi
    return xs


def test_batch_program_is_the_golden_model_per_inference():
    g = mlp("int8")
    one, three = schedule.make_program(g, 4), schedule.make_program(g, 4, batch=3)
    xs = inputs(g, 3)
    got = three.from_codes(three.accel_golden(three.to_codes(xs)))
    np.testing.assert_array_equal(got, golden.run_batch(g, xs))
    # the batch's storage holds inference i in pixel i
    np.testing.assert_array_equal(three.to_codes(xs).reshape(3, -1)[1], one.to_codes(xs[1:2]))
    assert (three.in_len, three.out_len) == (3 * one.in_len, 3 * one.out_len)
    assert three.macs == 3 * one.macs
    assert [l.kind for l in three.layers] == ["conv", "conv", "conv", "add", "conv"]
    for l in three.layers:
        assert (l.geometry["oh"], l.geometry["ow"]) == (1, 3)
        assert l.kind == "add" or (l.geometry["kh"], l.geometry["kw"]) == (1, 1)
    with pytest.raises(ValueError):
        three.to_codes(xs[:2])


def test_batch_layers_start_while_the_layer_before_drains():
    """Every dense layer after a requantized one starts before the layer before has written its last
    outputs; where a layer's steps are fewer than the pipeline's depth, its start waits for the last
    pixel's outputs (a gap above the minimum)."""
    image = schedule.memory_image(schedule.make_program(mlp("int8"), 4, batch=3), 4)
    gaps = [d.chain_gap for d in image.layers]
    assert gaps[0] == gaps[3] == 0 and all(gaps[i] for i in (1, 2, 4))
    assert gaps[2] > cycle_model.MIN_CHAIN_GAP
    assert cycle_model.cycles_per_run(image) < 3 * cycle_model.cycles_per_run(
        schedule.memory_image(schedule.make_program(mlp("int8"), 4), 4))


@pytest.mark.parametrize("make,dtype,requantizer,pixels", [
    (irzoo.mlp_b, "int8", "tables", 1), (irzoo.mlp_b, "uint8", "affine", 1), (irzoo.mlp_p, "uint8", "tables", 2)])
def test_batch_rtl_matches_golden(make, dtype, requantizer, pixels, tmp_path):
    """Three inferences per run, two runs, in RTL simulation (with two pixels per weight word, pairs of
    inferences share each weight read)."""
    g = mlp(dtype, make)
    prog = schedule.make_program(g, 4, pixels, batch=3)
    xs = inputs(g, 6)
    rows = np.stack([prog.to_codes(xs[i:i + 3]) for i in (0, 3)])
    res = run_core(prog, AccelConfig(lanes=4, dsp_lanes=4, dsp_pack=pixels, pixels=pixels), rows, tmp_path,
                   requantizer)
    got = signed_codes(res["outputs"], prog.out_code_dtype)
    np.testing.assert_array_equal(got, np.stack([prog.accel_golden(r) for r in rows]))
    np.testing.assert_array_equal(np.concatenate([prog.from_codes(r) for r in got]), golden.run_batch(g, xs))
    image = schedule.memory_image(prog, 4, requantizer)
    assert set(res["cycles"]) == {cycle_model.cycles_per_run(image)}
    assert any(d.pair for d in image.layers) == (pixels == 2)


def test_digits_batch_equals_onnxruntime():
    """The digits MLP eight inferences per run: 21 images (the last run filled up with copies of the last
    image), RTL equals onnxruntime; where the cycles go."""
    xs = np.load(DIGITS / "digits_x.npy")[:21]
    c = compile_model(DIGITS / "digits_mlp_int8.onnx", batch=8)
    assert len(to_codes(c, xs)) == 3
    res = simulate_model(c, xs)
    want = ort_run(DIGITS / "digits_mlp_int8.onnx", xs)
    np.testing.assert_array_equal(res.outputs.reshape(want.shape), want)
    assert set(res.cycles) == {cycle_model.cycles_per_run(c.image)}
    # 8 x (64 + 16) MAC steps on 16 lanes; the waits through the pipeline come once per run
    assert cycle_model.layer_steps(c.image) == [8 * 64, 8 * 16]
    assert from_codes(c, res.codes, 21).shape == (21, 1, 10)


def test_cli_sim_batch_over_uart(tmp_path):
    """`zakid-hw sim --batch 2 --uart --check`: the whole design behind its UART link, runs of two."""
    np.save(tmp_path / "x.npy", np.load(DIGITS / "digits_x.npy")[:3])
    r = subprocess.run([sys.executable, "-m", "zakid_hw.cli", "sim", str(DIGITS / "digits_mlp_int8.onnx"),
                        "--batch", "2", "--input", "x.npy", "--output", "y.npy", "--check", "--uart"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    c = compile_model(DIGITS / "digits_mlp_int8.onnx", batch=2)
    cycles = cycle_model.cycles_per_run(c.image)
    assert "simulated 3 inferences" in r.stdout and f"2 runs of 2, {cycles} cycles per run" in r.stdout
    assert "check passed" in r.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), ort_run(DIGITS / "digits_mlp_int8.onnx",
                                                                      np.load(tmp_path / "x.npy")))


def test_batch_needs_dense_layers():
    g = passes.lower_for_hardware(irzoo.cnn_a(np.random.default_rng(0)))
    with pytest.raises(ZakidError, match=r"--batch 2: node 'conv\d+' is a conv layer"):
        schedule.make_program(g, 4, batch=2)
    g = passes.lower_for_hardware(irzoo.cnn_raw(np.random.default_rng(0)))
    with pytest.raises(ZakidError, match="--batch 4: node .* is a conv layer"):
        schedule.make_program(g, 4, batch=4)
    for bad in (0, -1):
        with pytest.raises(ZakidError, match="--batch must be a positive"):
            schedule.make_program(mlp("int8"), 4, batch=bad)


def test_report_of_a_batch_design():
    """The build report counts cycles per run and per inference; latency is per run, throughput per
    inference (the place-and-route figures here are made up: only the arithmetic is checked)."""
    from zakid_hw.build import make_report, text_report
    from zakid_hw.synth import ResourceUse, SynthResult
    c = compile_model(DIGITS / "digits_mlp_int8.onnx", batch=8)
    cycles = cycle_model.cycles_per_run(c.image)
    synth = SynthResult("digits", "icebreaker", "up5k", Path("."), Path("x.bin"), Path("x.v"), Path("x.json"), {},
                        {k: ResourceUse(1, 2) for k in ("lc", "dsp", "ebr", "spram", "io", "pll")},
                        c.config.clock_mhz, 50.0, "clk", tool_seconds={"yosys": 1.0})
    r = make_report(c, cycles, synth, 12)
    assert (r["batch"], r["cycles_per_run"], r["cycles_per_inference"]) == (8, cycles, cycles / 8)
    assert r["latency_us"] == pytest.approx(cycles / c.config.clock_mhz, abs=1e-3)
    assert r["inferences_per_s"] == pytest.approx(8e6 / (cycles / c.config.clock_mhz), rel=1e-4)
    assert r["roofline_cycles"] == 8 * 74 and r["mac_steps"] == 8 * 80
    assert r["efficiency"] == round(8 * 74 / cycles, 3) and r["device_limit_cycles"] == 8 * 74
    assert [l["efficiency"] for l in r["layers"]] == [round(l["roofline_cycles"] / l["cycles"], 3) for l in r["layers"]]
    assert sum(l["cycles"] for l in r["layers"]) + 1 == cycles
    text = text_report(r)
    assert f"{cycles} cycles = {r['latency_us']} us per run of 8 inferences ({cycles / 8:g} cycles each)" in text
    assert f"{8 * 1184} MACs per run of 8 in 2 layers" in text
    assert f"(roofline {8 * 74} cycles, {8 * 74 / cycles:.1%} of it; device limit {8 * 74})" in text
    assert r["verification"] == {"rtl_rows_checked": 12, "rtl_inferences_checked": 96, "mismatches": 0}
