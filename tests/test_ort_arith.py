"""Integer forms of onnxruntime's quantized Add and average pooling, and the host-side QLinearSoftmax, against
onnxruntime itself (models built here, independently of the code under test)."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelzoo import ort_session
from zakid_hw import golden, ort_arith
from zakid_hw.errors import ZakidError
from zakid_hw.ir import Node

NP = {"int8": np.int8, "uint8": np.uint8}
TP = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}
LO = {"int8": -128, "uint8": 0}


def run(nodes, inputs: dict, inits: dict, out_dtype, opset=13):
    """Run a small graph in onnxruntime (default optimisation level); ``inits``: name -> array."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(k, TP[str(v.dtype)], v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", TP[out_dtype], None)],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    return ort_session(model).run(None, inputs)[0].astype(np.int64)


def qparams(sa, za, sb, zb, sy, zy, d):
    f = np.float32
    return {"sa": f(sa), "za": NP[d](za), "sb": f(sb), "zb": NP[d](zb), "sy": f(sy), "zy": NP[d](zy)}


QLADD = helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"], domain="com.microsoft")


def all_pairs(d):
    c = np.arange(LO[d], LO[d] + 256)
    return np.repeat(c, 256).astype(NP[d]), np.tile(c, 256).astype(NP[d])


def random_add_params(rng, d):
    sa, sb, sy = np.exp(rng.uniform(np.log(1e-3), np.log(0.2), 3)).astype(np.float32)
    za, zb, zy = (int(v) for v in rng.integers(LO[d], LO[d] + 256, 3))
    return sa, za, sb, zb, sy, zy


def hw_add(a, b, form, za, zb, d):
    a_mult, b_mult, thr, base = form
    acc = golden.add(a, b, a_zp=za, b_zp=zb, a_mult=a_mult, b_mult=b_mult)
    return golden.threshold(acc, thresholds=thr, base=base, dtype=d)


@pytest.mark.parametrize("d", ["int8", "uint8"])
def test_add_form_equals_qlinearadd_on_all_pairs(d):
    rng = np.random.default_rng(7 if d == "int8" else 8)
    a, b = all_pairs(d)
    for k in range(6):
        sa, za, sb, zb, sy, zy = random_add_params(rng, d)
        if k == 0:
            sb = sa  # equal input scales: many exact ties
        y = run([QLADD], {"a": a, "b": b}, qparams(sa, za, sb, zb, sy, zy, d), d)
        qmin = qmax = None
        if k == 1:  # a following Relu folded into the clamp
            qmin, y = zy, np.maximum(y, zy)
        if k == 2:  # a following Clip
            qmin, qmax = LO[d] + 20, LO[d] + 200
            y = np.clip(y, qmin, qmax)
        form = ort_arith.add_form(sa, za, sb, zb, sy, zy, d, d, d, qmin=qmin, qmax=qmax)
        assert form[2].shape == (1, int(y.max() - y.min()))
        np.testing.assert_array_equal(hw_add(a, b, form, za, zb, d), y)


def test_add_form_qdq_is_fused_qlinearadd_and_relu_variant_is_exact():
    rng = np.random.default_rng(3)
    d = "uint8"
    a, b = all_pairs(d)
    sa, za, sb, zb, sy, zy = random_add_params(rng, d)
    qdq = [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["fa"]),
           helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["fb"]),
           helper.make_node("Add", ["fa", "fb"], ["s"])]
    params = qparams(sa, za, sb, zb, sy, zy, d)
    y_qdq = run(qdq + [helper.make_node("QuantizeLinear", ["s", "sy", "zy"], ["y"])], {"a": a, "b": b}, params, d)
    y_ql = run([QLADD], {"a": a, "b": b}, params, d)
    np.testing.assert_array_equal(y_qdq, y_ql)
    np.testing.assert_array_equal(ort_arith.add_table(sa, za, sb, zb, sy, zy, d, d, d, kind="qdq").ravel(), y_qdq)
    # a float Relu between Add and QuantizeLinear is not fused: onnxruntime runs it in float32
    relu = qdq + [helper.make_node("Relu", ["s"], ["r"]), helper.make_node("QuantizeLinear", ["r", "sy", "zy"], ["y"])]
    y_relu = run(relu, {"a": a, "b": b}, params, d)
    form = ort_arith.add_form(sa, za, sb, zb, sy, zy, d, d, d, kind="qdq_relu")
    np.testing.assert_array_equal(hw_add(a, b, form, za, zb, d), y_relu)


def test_add_form_mixed_dtypes_in_qdq_form():
    rng = np.random.default_rng(4)
    a = np.arange(-128, 128).astype(np.int8).repeat(256)
    b = np.tile(np.arange(256), 256).astype(np.uint8)
    sa, sb, sy = np.exp(rng.uniform(np.log(1e-3), np.log(0.2), 3)).astype(np.float32)
    za, zb, zy = -3, 140, 20
    nodes = [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["fa"]),
             helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["fb"]),
             helper.make_node("Add", ["fa", "fb"], ["s"]), helper.make_node("QuantizeLinear", ["s", "sy", "zy"], ["y"])]
    params = {"sa": sa, "za": np.int8(za), "sb": sb, "zb": np.uint8(zb), "sy": sy, "zy": np.uint8(zy)}
    y = run(nodes, {"a": a, "b": b}, params, "uint8")
    form = ort_arith.add_form(sa, za, sb, zb, sy, zy, "int8", "uint8", "uint8", kind="qdq")
    np.testing.assert_array_equal(hw_add(a, b, form, za, zb, "uint8"), y)


@pytest.mark.parametrize("side", ["a", "b"])
def test_add_form_broadcast_span(side):
    """One code against a whole inner span (e.g. (C, 1) + (C, K)) runs another kernel path."""
    rng = np.random.default_rng(11 if side == "a" else 12)
    d = "int8"
    for _ in range(2):
        sa, za, sb, zb, sy, zy = random_add_params(rng, d)
        big = rng.integers(-128, 128, (64, 40)).astype(np.int8)
        small = np.arange(-128, 128, 4).astype(np.int8)[:, None]
        a, b = (small, big) if side == "a" else (big, small)
        y = run([QLADD], {"a": a, "b": b}, qparams(sa, za, sb, zb, sy, zy, d), d)
        form = ort_arith.add_form(sa, za, sb, zb, sy, zy, d, d, d, broadcast=side)
        a_full, b_full = np.broadcast_to(a, y.shape), np.broadcast_to(b, y.shape)
        np.testing.assert_array_equal(hw_add(a_full, b_full, form, za, zb, d), y)


def test_add_form_refuses_what_no_linear_form_reproduces(monkeypatch):
    # "a or b is large" is monotone but no weighted sum separates it: (128, 0) and (0, 128) reach it, (127, 127)
    # does not
    table = ((np.arange(256)[:, None] >= 128) | (np.arange(256)[None, :] >= 128)).astype(np.int64)
    monkeypatch.setattr(ort_arith, "add_table", lambda *args: table)
    with pytest.raises(ZakidError, match="no integer multipliers"):
        ort_arith.add_form(0.1, 0, 0.1, 0, 0.1, 0, "uint8", "uint8", "uint8")
    # a table that decreases cannot be a staircase at all
    monkeypatch.setattr(ort_arith, "add_table", lambda *args: 5 - table)
    with pytest.raises(ZakidError, match="not non-decreasing"):
        ort_arith.add_form(0.1, 0, 0.1, 0, 0.1, 0, "uint8", "uint8", "uint8")


def test_add_form_argument_errors():
    with pytest.raises(ZakidError, match="one dtype"):
        ort_arith.add_form(0.1, 0, 0.1, 0, 0.1, 0, "int8", "uint8", "uint8")
    with pytest.raises(ZakidError, match="clamp"):
        ort_arith.add_form(0.1, 0, 0.1, 0, 0.1, 0, "uint8", "uint8", "uint8", qmin=10, qmax=5)
    with pytest.raises(ZakidError, match="zero point"):
        ort_arith.add_form(0.1, 300, 0.1, 0, 0.1, 0, "uint8", "uint8", "uint8")


def test_simplest_fraction_search():
    from fractions import Fraction as F

    assert ort_arith._simplest_between(F(169, 254), F(169, 253)) == F(2, 3)
    assert ort_arith._simplest_between(F(0), F(1, 3)) == F(1, 4)
    assert ort_arith._simplest_between(F(5, 2), None) == 3
    assert ort_arith._simplest_between(F(3), F(7, 2)) == F(10, 3)
    rng = np.random.default_rng(0)
    for _ in range(300):  # smallest denominator, by brute force
        lo = F(int(rng.integers(0, 400)), int(rng.integers(1, 256)))
        hi = lo + F(int(rng.integers(1, 50)), int(rng.integers(1, 20000)))
        got = ort_arith._simplest_between(lo, hi)
        assert lo < got < hi
        q = next(q for q in range(1, got.denominator + 1) if (lo * q).__floor__() + 1 < hi * q)
        assert q == got.denominator


# --------------------------------------------------------------------------------------------------------
# average pooling


def qlinear_avgpool(x, xs, xz, ys, yz, d, glob=False, **attrs):
    op = "QLinearGlobalAveragePool" if glob else "QLinearAveragePool"
    node = helper.make_node(op, ["x", "xs", "xz", "ys", "yz"], ["y"], domain="com.microsoft", **attrs)
    inits = {"xs": np.float32(xs), "xz": NP[d](xz), "ys": np.float32(ys), "yz": NP[d](yz)}
    return run([node], {"x": x}, inits, d)


def hw_avgpool(x, forms, xz, d, kernel, strides, pads):
    acc = golden.sumpool(x, kernel=kernel, strides=strides, pads=pads, x_zp=xz)
    sizes = ort_arith.avgpool_window_sizes(x.shape[2:], kernel, strides, pads)
    out = np.full(acc.shape, 10**6)
    for m, (thr, base) in forms.items():
        out = np.where(sizes == m, golden.threshold(acc, thresholds=thr, base=base, dtype=d), out)
    return out


@pytest.mark.parametrize("d", ["int8", "uint8"])
def test_avgpool_form_equals_qlinear_average_pool(d):
    rng = np.random.default_rng(21 if d == "int8" else 22)
    checked = 0
    while checked < 12:
        xs, ys = np.exp(rng.uniform(np.log(1e-3), np.log(0.2), 2)).astype(np.float32)
        xz, yz = (int(v) for v in rng.integers(LO[d], LO[d] + 256, 2))
        kernel = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        strides = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        pads = [int(rng.integers(0, kernel[i % 2])) for i in range(4)]
        cip = int(rng.integers(0, 2))
        h, w = int(rng.integers(kernel[0] + 1, 9)), int(rng.integers(kernel[1] + 1, 9))
        x = rng.integers(LO[d], LO[d] + 256, (1, 24, h, w)).astype(NP[d])
        y = qlinear_avgpool(x, xs, xz, ys, yz, d, kernel_shape=kernel, strides=strides, pads=pads,
                            count_include_pad=cip)
        forms = ort_arith.avgpool_form(xs, xz, ys, yz, d, kernel=kernel, input_hw=(h, w), strides=strides,
                                       pads=pads, count_include_pad=cip)
        assert set(forms) == set(np.unique(ort_arith.avgpool_window_sizes((h, w), kernel, strides, pads)))
        np.testing.assert_array_equal(hw_avgpool(x, forms, xz, d, kernel, strides, pads), y)
        checked += 1


@pytest.mark.parametrize("d", ["int8", "uint8"])
def test_global_average_pool_forms(d):
    rng = np.random.default_rng(31)
    for k, (h, w) in enumerate([(7, 7), (1, 1), (5, 3), (16, 16)]):
        xs, ys = np.exp(rng.uniform(np.log(1e-3), np.log(0.2), 2)).astype(np.float32)
        if k == 0:
            ys = xs  # integer kernel: no float ties problem
        xz, yz = (int(v) for v in rng.integers(LO[d], LO[d] + 256, 2))
        n = h * w
        if n < 100:  # one channel per reachable sum
            total = np.arange(255 * n + 1)[:, None]
            x = (LO[d] + total // n + (np.arange(n)[None, :] < total % n)).reshape(1, -1, h, w).astype(NP[d])
        else:
            x = rng.integers(LO[d], LO[d] + 256, (1, 40, h, w)).astype(NP[d])
        for glob in (True, False):  # the op, and QLinearAveragePool with a whole-input kernel (same kernel)
            attrs = {} if glob else {"kernel_shape": [h, w]}
            y = qlinear_avgpool(x, xs, xz, ys, yz, d, glob=glob, **attrs)
            forms = ort_arith.avgpool_form(xs, xz, ys, yz, d, kernel=(h, w), input_hw=(h, w), global_pool=glob)
            assert list(forms) == [h * w]
            np.testing.assert_array_equal(hw_avgpool(x, forms, xz, d, (h, w), (1, 1), [0] * 4), y)


def test_global_average_pool_multiplier_is_formed_as_onnxruntime_does():
    """Scales for which f32(x_scale / f32(y_scale * n)) and f32(f32(x_scale / y_scale) / n) differ in one output
    code: onnxruntime forms it the first way."""
    d, xs, ys, xz, yz, n = "uint8", np.float32(0.008133192546665668), np.float32(0.013992100954055786), 52, 127, 49
    total = np.arange(255 * n + 1)[:, None]
    x = (total // n + (np.arange(n)[None, :] < total % n)).reshape(1, -1, 7, 7).astype(np.uint8)
    y = qlinear_avgpool(x, xs, xz, ys, yz, d, glob=True)
    forms = ort_arith.avgpool_form(xs, xz, ys, yz, d, kernel=(7, 7), input_hw=(7, 7), global_pool=True)
    np.testing.assert_array_equal(hw_avgpool(x, forms, xz, d, (7, 7), (1, 1), [0] * 4), y)
    other = golden.requantize(total.ravel() - xz * n, multiplier=np.float32(np.float32(xs / ys) / np.float32(n)),
                              zero_point=yz, dtype=d, qmin=0, qmax=255)
    assert np.sum(other != y.ravel()) == 1


def test_qdq_average_pools_are_fused_kernels():
    rng = np.random.default_rng(5)
    d, xs, xz, ys, yz = "int8", np.float32(0.018), -100, np.float32(0.0211), 17  # no float near-ties
    x = rng.integers(-128, 128, (1, 8, 9, 7)).astype(np.int8)
    inits = {"xs": xs, "xz": np.int8(xz), "ys": ys, "yz": np.int8(yz)}
    attrs = {"kernel_shape": [3, 2], "strides": [2, 1], "pads": [1, 1, 1, 0], "count_include_pad": 1}
    for op, a in (("AveragePool", attrs), ("GlobalAveragePool", {})):
        nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["f"]),
                 helper.make_node(op, ["f"], ["p"], **a), helper.make_node("QuantizeLinear", ["p", "ys", "yz"], ["y"])]
        y = run(nodes, {"x": x}, inits, d)
        if op == "AveragePool":
            forms = ort_arith.avgpool_form(xs, xz, ys, yz, d, kernel=(3, 2), input_hw=(9, 7), strides=(2, 1),
                                           pads=attrs["pads"], count_include_pad=1)
            np.testing.assert_array_equal(hw_avgpool(x, forms, xz, d, (3, 2), (2, 1), attrs["pads"]), y)
        else:
            forms = ort_arith.avgpool_form(xs, xz, ys, yz, d, kernel=(9, 7), input_hw=(9, 7), global_pool=True)
            np.testing.assert_array_equal(hw_avgpool(x, forms, xz, d, (9, 7), (1, 1), [0] * 4), y)


@pytest.mark.parametrize("equal_scales", [True, False])
def test_avgpool_sum_ambiguity_is_exactly_what_onnxruntime_does(equal_scales):
    """Every ordered pair of codes through a 1x2 window: for each sum, the lowest and highest code onnxruntime
    gives are those avgpool_float_extremes predicts (so its verdict "function of the sum or not" is exact)."""
    d, xz, yz = "uint8", 90, 3
    xs = np.float32(0.0123)
    ys = xs if equal_scales else np.float32(0.0172)
    a, b = all_pairs(d)
    x = np.stack([a, b], axis=1).reshape(1, 1, 65536, 2)
    y = qlinear_avgpool(x, xs, xz, ys, yz, d, kernel_shape=[1, 2]).ravel()
    s = a.astype(np.int64) + b - 2 * xz
    sums, low, high = ort_arith.avgpool_float_extremes(xs, xz, ys, yz, d, 2, 2)
    ort_low = np.full(sums.size, 10**6)
    ort_high = np.full(sums.size, -(10**6))
    np.minimum.at(ort_low, s - sums[0], y)
    np.maximum.at(ort_high, s - sums[0], y)
    np.testing.assert_array_equal(ort_low, low)
    np.testing.assert_array_equal(ort_high, high)
    assert np.sum(low != high) > (50 if equal_scales else -1)  # equal scales: exact ties S/2 = k + 1/2
    if not equal_scales:
        assert not np.any(low != high)
        return
    # (the input is wider than the kernel: a whole-input kernel would run the integer global kernel)
    with pytest.raises(ZakidError, match="not a function of the window sum"):
        ort_arith.avgpool_form(xs, xz, ys, yz, d, kernel=(1, 2), input_hw=(1, 3))
    forms = ort_arith.avgpool_form(xs, xz, ys, yz, d, kernel=(1, 2), input_hw=(1, 3), strict=False)
    thr, base = forms[2]
    hw = golden.threshold(s, thresholds=thr, base=base, dtype=d)
    sure = (low == high)[s - sums[0]]
    np.testing.assert_array_equal(hw[sure], y[sure])
    assert np.all((hw[~sure] == low[s - sums[0]][~sure]) | (hw[~sure] == high[s - sums[0]][~sure]))


# --------------------------------------------------------------------------------------------------------
# QLinearSoftmax


def qlinear_softmax(x, xs, xz, ys, yz, d, axis, opset):
    node = helper.make_node("QLinearSoftmax", ["x", "xs", "xz", "ys", "yz"], ["y"], domain="com.microsoft",
                            axis=axis, opset=opset)
    inits = {"xs": np.float32(xs), "xz": NP[d](xz), "ys": np.float32(ys), "yz": NP[d](yz)}
    return run([node], {"x": x}, inits, d, opset=opset)


@pytest.mark.parametrize("d", ["int8", "uint8"])
def test_qsoftmax_golden_equals_onnxruntime(d):
    rng = np.random.default_rng(41 if d == "int8" else 42)
    total = 0
    for k in range(24):
        xs = np.float32(np.exp(rng.uniform(np.log(1e-3), np.log(1.0))))
        ys = np.float32(1 / 256) if k % 3 == 0 else np.float32(np.exp(rng.uniform(np.log(1e-3), np.log(0.3))))
        yz = LO[d] if k % 2 else int(rng.integers(LO[d], LO[d] + 256))
        xz = int(rng.integers(LO[d], LO[d] + 256))
        opset = 12 if k % 4 == 0 else 13
        shape = [int(rng.integers(20, 60))] + [int(v) for v in rng.integers(1, 8, int(rng.integers(1, 3)))]
        axis = int(rng.integers(-len(shape), len(shape)))
        x = rng.integers(LO[d], LO[d] + 256, shape)
        x[:5] = x[:5].max()  # constant rows: exact ties 1/D
        x[5:10] = np.clip(x[5:10] // 8 + LO[d] + 100, LO[d], LO[d] + 255)  # narrow rows
        x = x.astype(NP[d])
        y = qlinear_softmax(x, xs, xz, ys, yz, d, axis, opset)
        node = Node("qsoftmax", "sm", ["x"], ["y"], {"x_scale": xs, "x_zp": xz, "y_scale": ys, "y_zp": yz,
                                                      "dtype": d, "axis": axis, "opset": opset})
        np.testing.assert_array_equal(golden.run_node(node, x), y)
        total += y.size
    assert total > 5000


@pytest.mark.parametrize("d", ["int8", "uint8"])
def test_qsoftmax_float_overflow_rows(d):
    """Rows of one or two codes with a tiny y_scale, where f32(e * c) overflows: onnxruntime >= 1.32 computes in
    double (1.31 converted the float infinity)."""
    rng = np.random.default_rng(5)
    for ys in (1 / 256, 1 / 300, 1 / 1000):
        for width in (1, 2, 3):
            for yz in (LO[d], LO[d] + 100, LO[d] + 200):
                x = rng.integers(LO[d], LO[d] + 256, (16, width)).astype(NP[d])
                y = qlinear_softmax(x, 0.07, 0, ys, yz, d, -1, 13)
                g = golden.qsoftmax(x, x_scale=0.07, x_zp=0, y_scale=ys, y_zp=yz, dtype=d, axis=-1, opset=13)
                np.testing.assert_array_equal(g, y)
