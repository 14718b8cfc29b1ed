"""Convolution, depthwise, pooling, residual add and concat layers in RTL simulation equal the golden model
bit for bit, and the cycle model is exact."""

import numpy as np
import pytest

import irzoo
from rtl_gen.config import AccelConfig
from test_accelerator import run_core
from zakid_hw import cycle_model, passes, schedule
from zakid_hw.ir import dtype_range
from zakid_hw.simulate import signed_codes


@pytest.mark.parametrize("make,lanes,dsp_lanes,dtype,requantizer,pixels", [
    (irzoo.cnn_a, 4, 2, "int8", "tables", 1),
    (irzoo.cnn_b, 8, 8, "uint8", "tables", 1),
    (irzoo.cnn_c, 4, 4, "int8", "tables", 1),
    (irzoo.cnn_c, 8, 8, "uint8", "affine", 1),
    (irzoo.cnn_raw, 4, 4, "uint8", "affine", 1),
    (irzoo.cnn_k1, 4, 4, "int8", "tables", 1),  # one step per lane group, in the first layer and after one
    (irzoo.cnn_pw, 4, 4, "uint8", "tables", 2),  # three pointwise layers on two pixels at once
    (irzoo.cnn_pw, 4, 4, "int8", "affine", 1),  # the same one pixel at a time: each starts while the layer
                                                # before drains (cycle_model.can_chain)
    (irzoo.cnn_pk, 4, 4, "int8", "tables", 2),  # three convolutions with kernels and padding, the same
    (irzoo.cnn_pk, 4, 4, "uint8", "affine", 2),
    (irzoo.cnn_ps, 4, 4, "int8", "tables", 2),  # a one-channel convolution on pairs by shifting, B's last
    (irzoo.cnn_ps, 4, 4, "uint8", "affine", 2),  # tap peeked from A's word
    (irzoo.cnn_pc, 4, 4, "int8", "affine", 2),  # the same with one more kernel column instead
    (irzoo.cnn_pc, 4, 4, "uint8", "tables", 2),
    (irzoo.cnn_pv, 4, 4, "int8", "tables", 2),  # one-channel convolutions on pixel pairs down the columns
    (irzoo.cnn_pv, 4, 4, "uint8", "affine", 2),
])
def test_cnn_core_matches_golden(make, lanes, dsp_lanes, dtype, requantizer, pixels, tmp_path):
    rng = np.random.default_rng(lanes)
    g = passes.lower_for_hardware(make(rng, dtype))
    prog = schedule.make_program(g, lanes, pixels)
    lo, hi = dtype_range(dtype)
    xs = rng.integers(lo, hi + 1, (6, *g.tensors[g.inputs[0]].shape[1:]))
    xs[0] = lo
    xs[1] = hi
    rows = np.stack([prog.to_codes(xs[i:i + 1]) for i in range(len(xs))])
    config = AccelConfig(lanes=lanes, dsp_lanes=dsp_lanes, dsp_pack=pixels, pixels=pixels)
    res = run_core(prog, config, rows, tmp_path, requantizer)
    got = signed_codes(res["outputs"], prog.out_code_dtype)
    want = np.stack([prog.accel_golden(r) for r in rows])
    np.testing.assert_array_equal(got, want)
    image = schedule.memory_image(prog, lanes, requantizer)
    assert set(res["cycles"]) == {cycle_model.cycles_per_run(image)}
    if make is irzoo.cnn_pw and pixels == 1:
        assert [bool(d.chain_gap) for d in image.layers] == [False, False, True, False, True, False]
    elif make is irzoo.cnn_pw:
        assert [d.pair for d in image.layers] == [1, 0, 1, 0, 1, 0]
        assert [d.b_last for d in image.layers if d.pair] == [0, 0, 1]
    elif make is irzoo.cnn_pk:
        assert [d.pair for d in image.layers] == [1, 1, 1, 0, 0]
        assert [d.check for d in image.layers] == [1, 1, 1, 0, 0]
    elif make is irzoo.cnn_ps:
        assert [(d.pair, d.pair_shift, d.check, d.kw, d.k) for d in image.layers][0] == (1, 2, 1, 5, 15)
        assert [d.pair for d in image.layers] == [1, 0, 0]
    elif make is irzoo.cnn_pv:
        assert [(d.pair, d.pair_shift, d.pair_delay, d.b_first, d.kh, d.oh) for d in image.layers] == [
            (1, schedule.COL, 6, 0, 6, 4), (0, 0, 0, 1, 1, 7), (1, schedule.COL, 4, 1, 3, 3), (0, 0, 0, 1, 6, 1)]
    elif make is irzoo.cnn_pc:
        assert [(d.pair, d.pair_shift, d.check, d.kw, d.k) for d in image.layers] == [(1, 1, 1, 5, 10),
                                                                                     (0, 0, 0, 6, 180)]
