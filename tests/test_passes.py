"""Each pass on its own: the golden model gives the same results before and after it."""

import numpy as np
import pytest

from zakid_hw import golden, passes
from zakid_hw.ir import Graph, Node, Tensor, dtype_range


def mlp_graph(rng, widths=(13, 30, 3), x_dtype="uint8", h_dtype="int8", per_channel=False, w_zp=0):
    """A small integer MLP in the IR, as an importer would produce it."""
    tensors = {"x": Tensor("x", (1, widths[0]), "float32")}
    nodes = [Node("quantize", "q_in", ["x"], ["x_q"],
                  dict(scale=np.float32(0.02), zero_point=17 if x_dtype == "uint8" else -5, dtype=x_dtype))]
    tensors["x_q"] = Tensor("x_q", (1, widths[0]), x_dtype)
    cur, cur_dtype = "x_q", x_dtype
    for i, (k, n) in enumerate(zip(widths[:-1], widths[1:])):
        last = i == len(widths) - 2
        out_dtype = h_dtype
        zp = -3 if out_dtype == "int8" else 9
        mult = np.float32(rng.uniform(0.002, 0.02, n if per_channel else None))
        nodes.append(Node("dense", f"fc{i}", [cur], [f"acc{i}"], dict(
            weight=rng.integers(-128, 128, (n, k)), w_zp=w_zp,
            x_zp=int(dtype_range(cur_dtype)[0] // 2 + 11) if cur_dtype == "uint8" else 4,
            bias=rng.integers(-3000, 3000, n))))
        tensors[f"acc{i}"] = Tensor(f"acc{i}", (1, n), "int32")
        lo, hi = dtype_range(out_dtype)
        nodes.append(Node("requantize", f"rq{i}", [f"acc{i}"], [f"y{i}"], dict(
            multiplier=mult, zero_point=zp, dtype=out_dtype, qmin=lo, qmax=hi)))
        tensors[f"y{i}"] = Tensor(f"y{i}", (1, n), out_dtype, 0.1, zp)
        cur, cur_dtype = f"y{i}", out_dtype
        if not last:
            nodes.append(Node("relu", f"relu{i}", [cur], [f"r{i}"], dict(zero_point=zp)))
            tensors[f"r{i}"] = Tensor(f"r{i}", (1, n), out_dtype, 0.1, zp)
            cur = f"r{i}"
    nodes.append(Node("dequantize", "dq", [cur], ["out"], dict(scale=np.float32(0.1), zero_point=zp)))
    tensors["out"] = Tensor("out", (1, widths[-1]), "float32")
    return Graph("mlp", ["x"], ["out"], tensors, nodes)


def same_results(g1, g2, rng, n=400):
    xs = rng.normal(0, 2, (n, 1, g1.tensors["x"].shape[1])).astype(np.float32)
    a, b = golden.run_batch(g1, xs), golden.run_batch(g2, xs)
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("x_dtype", ["uint8", "int8"])
@pytest.mark.parametrize("name", [p.__name__ for p in passes.HARDWARE_PIPELINE])
def test_pass_keeps_results(name, x_dtype, per_channel):
    rng = np.random.default_rng(1)
    g = mlp_graph(rng, x_dtype=x_dtype, per_channel=per_channel, w_zp=3)
    # each pass is applied to the graph as the pipeline hands it over
    for p in passes.HARDWARE_PIPELINE:
        if p.__name__ == name:
            break
        g = p(g)
    same_results(g, getattr(passes, name)(g), rng)


def test_fold_relu_removes_relu():
    g = passes.fold_relu(mlp_graph(np.random.default_rng(0)))
    assert not g.nodes_of("relu")
    assert g.nodes_of("requantize")[0].attrs["qmin"] == -3


def test_fold_zero_points_leave_plain_macs():
    g = passes.lower_for_hardware(mlp_graph(np.random.default_rng(0), w_zp=2))
    for d in g.nodes_of("dense"):
        assert d.attrs["x_zp"] == 0 and d.attrs["w_zp"] == 0
    assert not g.nodes_of("requantize") and len(g.nodes_of("threshold")) == 2


@pytest.mark.parametrize("mult", [np.float32(0.0123), np.float32(1 / 3), np.float32(2.0**-10), np.float32(0.7)])
def test_thresholds_equal_requantize_exhaustively(mult):
    """Every accumulator in the range, including ties and the float32 rounding of large accumulators."""
    for lo, hi, zp, qmin, qmax in [(-70000, 70000, 0, -128, 127), (-(2**25), 2**25, -128, -128, 127),
                                   (-500, 900, 7, 7, 255)]:
        span = hi - lo
        accs = np.arange(lo, hi + 1) if span < 3_000_000 else np.concatenate(
            [np.arange(lo, lo + 1_000_000), np.random.default_rng(0).integers(lo, hi + 1, 1_000_000),
             np.arange(hi - 1_000_000, hi + 1)])
        thr = passes.thresholds_for(mult, zp, qmin, qmax, lo, hi)
        want = golden.requantize(accs, multiplier=mult, zero_point=zp, dtype="int8", qmin=qmin, qmax=qmax)
        got = golden.threshold(accs[:, None], thresholds=thr, base=qmin, dtype="int8")[:, 0]
        np.testing.assert_array_equal(got, want)


def test_float32_rounding_of_accumulator_matters():
    """The rule rounds f32(acc) first: above 2**24 this differs from exact arithmetic, and the
    thresholds follow the float32 rule, not the exact one."""
    acc = np.int64(2**24 + 1)
    assert float(np.float32(acc)) != float(acc)
    thr = passes.thresholds_for(np.float32(2.0**-17), 0, -128, 127, 2**24 - 1000, 2**24 + 1000)
    accs = np.arange(2**24 - 1000, 2**24 + 1001)
    want = golden.requantize(accs, multiplier=np.float32(2.0**-17), zero_point=0, dtype="int8",
                             qmin=-128, qmax=127)
    np.testing.assert_array_equal(golden.threshold(accs[:, None], thresholds=thr, base=-128,
                                                   dtype="int8")[:, 0], want)


def test_accumulator_bounds_are_reached():
    rng = np.random.default_rng(3)
    g = passes.lower_for_hardware(mlp_graph(rng))
    d = g.nodes_of("dense")[0]
    lo, hi = passes.accumulator_bounds(g, d)
    w = d.attrs["weight"]
    lo_x, hi_x = dtype_range(g.tensors[d.inputs[0]].dtype)
    x_max = np.where(w > 0, hi_x, lo_x)  # the worst-case input for each channel
    x_min = np.where(w > 0, lo_x, hi_x)
    for c in range(w.shape[0]):
        assert golden.dense(x_max[c], **d.attrs)[c] == hi[c]
        assert golden.dense(x_min[c], **d.attrs)[c] == lo[c]


def test_negative_multiplier_is_an_error():
    with pytest.raises(Exception, match="positive"):
        passes.thresholds_for(np.float32(-0.1), 0, -128, 127, -10, 10)
