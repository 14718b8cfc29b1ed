"""The accelerator core in RTL simulation (cocotb + Verilator) equals the golden model bit for bit."""

import numpy as np
import pytest

from rtl_gen.accelerator import Accelerator
from rtl_gen.config import AccelConfig
from rtl_gen.spram import sim_sources
from sim.runner import simulate
from test_passes import mlp_graph
from zakid_hw import cycle_model, passes, schedule
from zakid_hw.ir import dtype_range
from zakid_hw.simulate import signed_codes


def run_core(program, config, rows, tmp_path, requantizer="tables"):
    image = schedule.memory_image(program, config.lanes, requantizer)
    res = simulate(Accelerator(config, image), name="accel_core", test_module="core_bench",
                   test_dir="sim/benches", build_dir=tmp_path / "sim",
                   extra_sources=sim_sources(config),
                   parameters={"rows": [list(map(int, r)) for r in rows], "out_len": program.out_len})
    return res


@pytest.mark.parametrize("lanes,dsp_lanes,dsp_pack,x_dtype,h_dtype,per_channel,requantizer", [
    (8, 8, 1, "uint8", "int8", False, "tables"),
    (4, 1, 1, "int8", "uint8", True, "affine"),
    (16, 8, 1, "int8", "int8", True, "tables"),
    (16, 12, 2, "uint8", "uint8", True, "tables"),  # 6 SB_MAC16 in two-8x8 mode, 4 logic-cell lanes
])
def test_core_matches_golden(lanes, dsp_lanes, dsp_pack, x_dtype, h_dtype, per_channel, requantizer, tmp_path):
    rng = np.random.default_rng(lanes)
    g = passes.lower_for_hardware(mlp_graph(rng, widths=(13, 30, 5), x_dtype=x_dtype, h_dtype=h_dtype,
                                            per_channel=per_channel,
                                            w_zp=2 if dsp_pack == 1 else 0))  # int8 weights for 8x8 products
    prog = schedule.make_program(g)
    lo, hi = dtype_range(x_dtype)
    rows = rng.integers(lo, hi + 1, (12, prog.in_len))
    rows[0] = lo
    rows[1] = hi
    res = run_core(prog, AccelConfig(lanes=lanes, dsp_lanes=dsp_lanes, dsp_pack=dsp_pack), rows, tmp_path,
                   requantizer)
    got = signed_codes(res["outputs"], h_dtype)
    want = np.stack([prog.accel_golden(r) for r in rows])
    np.testing.assert_array_equal(got, want)
    assert res["cycles"] == res["sim_cycles"]
    assert set(res["cycles"]) == {cycle_model.cycles_per_run(schedule.memory_image(prog, lanes, requantizer))}


def test_worst_case_accumulators_do_not_overflow(tmp_path):
    """Inputs that drive every accumulator to its bound (largest and smallest) give golden results:
    the accumulator width from the bound analysis is enough."""
    rng = np.random.default_rng(7)
    g = passes.lower_for_hardware(mlp_graph(rng, widths=(40, 6, 4), x_dtype="uint8", h_dtype="int8"))
    # make the first layer's sums large: all weights of one sign per channel
    d = g.nodes_of("dense")[0]
    prog = schedule.make_program(g)
    w = prog.layers[0].weight
    lo, hi = dtype_range("uint8")
    rows = [np.where(w[c] > 0, hi, lo) for c in range(w.shape[0])] + [np.where(w[c] > 0, lo, hi) for c in range(w.shape[0])]
    image = schedule.memory_image(prog, 4)
    acc_lo, acc_hi = passes.accumulator_bounds(g, d)
    assert -(2 ** (image.acc_width - 1)) <= acc_lo.min() and acc_hi.max() < 2 ** (image.acc_width - 1)
    res = run_core(prog, AccelConfig(lanes=4, dsp_lanes=2), rows, tmp_path)
    want = np.stack([prog.accel_golden(r) for r in rows])
    np.testing.assert_array_equal(signed_codes(res["outputs"], "int8"), want)


def test_chained_layer_starting_one_cycle_earlier_reads_stale_inputs(tmp_path, monkeypatch):
    """The second dense layer starts while the first still drains (cycle_model.chain_gaps). The gap is tight:
    one cycle less and the layer reads an input in the cycle it is written, so it sees the previous
    inference's code and the outputs go wrong."""
    rng = np.random.default_rng(3)
    g = passes.lower_for_hardware(mlp_graph(rng, widths=(13, 8, 5), x_dtype="uint8", h_dtype="int8"))
    prog = schedule.make_program(g)
    exact = cycle_model.chain_gaps(*_gap_inputs(prog, 8))
    assert exact[1] > cycle_model.MIN_CHAIN_GAP
    rows = rng.integers(0, 256, (6, prog.in_len))
    want = np.stack([prog.accel_golden(r) for r in rows])
    monkeypatch.setattr(schedule, "chain_gaps", lambda *a: [max(0, v - 1) for v in exact])
    res = run_core(prog, AccelConfig(lanes=8, dsp_lanes=8), rows, tmp_path)
    assert (signed_codes(res["outputs"], "int8") != want).any()
    assert set(res["cycles"]) == {cycle_model.cycles_per_run(schedule.memory_image(prog, 8))}


def _gap_inputs(prog, lanes):
    image = schedule.memory_image(prog, lanes)
    return image.layers, lanes, image.requant_latency, [False, True]
