"""The golden model's window ops (conv, maxpool, sumpool) equal onnxruntime's float Conv/MaxPool/AveragePool
on small integers (exact in float32) over random shapes, strides, pads, dilations and groups."""

import numpy as np
import pytest
from onnx import TensorProto, helper

from modelzoo import ort_session
from zakid_hw import golden


def ort_op(op, inputs, **attrs):
    names = [f"i{k}" for k in range(len(inputs))]
    node = helper.make_node(op, names, ["y"], **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, v.shape) for n, v in zip(names, inputs)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    model.ir_version = 9
    feeds = {n: np.asarray(v, np.float32) for n, v in zip(names, inputs)}
    return ort_session(model).run(None, feeds)[0]


def random_window(rng):
    kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
    h, w = int(rng.integers(kh * 2, 9)), int(rng.integers(kw, 9))
    pads = [int(min(rng.integers(0, 3), k - 1)) for k in (kh, kw, kh, kw)]
    strides = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
    dil = (int(rng.integers(1, 3)), 1)
    return h, w, (kh, kw), strides, pads, dil


@pytest.mark.parametrize("seed", range(4))
def test_conv_equals_onnxruntime(seed):
    rng = np.random.default_rng(seed)
    for trial in range(25):
        h, w, (kh, kw), strides, pads, dil = random_window(rng)
        c = int(rng.integers(1, 5))
        group = c if trial % 3 == 0 else 1
        m = c * int(rng.integers(1, 3)) if group > 1 else int(rng.integers(1, 5))
        x = rng.integers(-5, 6, (1, c, h, w))
        wt = rng.integers(-3, 4, (m, c // group, kh, kw))
        b = rng.integers(-9, 9, m)
        y = golden.conv(x, weight=wt, w_zp=0, x_zp=0, bias=b, strides=strides, pads=pads, dilations=dil,
                        group=group)
        r = ort_op("Conv", [x, wt, b], strides=list(strides), pads=pads, dilations=list(dil), group=group)
        assert y.shape == r.shape and np.array_equal(y, r)


@pytest.mark.parametrize("seed", range(4))
def test_pools_equal_onnxruntime(seed):
    rng = np.random.default_rng(100 + seed)
    for trial in range(25):
        h, w, kernel, strides, pads, dil = random_window(rng)
        x = rng.integers(-5, 6, (1, 3, h, w))
        for ceil_mode in (0, 1):
            y = golden.maxpool(x, kernel=kernel, strides=strides, pads=pads, dilations=dil, ceil_mode=ceil_mode)
            r = ort_op("MaxPool", [x], kernel_shape=list(kernel), strides=list(strides), pads=pads,
                       dilations=list(dil), ceil_mode=ceil_mode)
            assert y.shape == r.shape and np.array_equal(y, r)
        y = golden.sumpool(x, kernel=kernel, strides=strides, pads=pads, x_zp=0)
        r = ort_op("AveragePool", [x], kernel_shape=list(kernel), strides=list(strides), pads=pads,
                   count_include_pad=1)
        assert y.shape == r.shape and np.allclose(y, r * kernel[0] * kernel[1], atol=1e-4)


def test_threshold_along_channel_axis():
    acc = np.arange(24).reshape(1, 2, 3, 4)
    thr = np.array([[5, 100], [15, 20]])
    y = golden.threshold(acc, thresholds=thr, base=-1, dtype="int8", axis=1)
    assert np.array_equal(y[0, 0], (acc[0, 0] >= 5) - 1)
    assert np.array_equal(y[0, 1], (acc[0, 1] >= 15).astype(int) + (acc[0, 1] >= 20) - 1)


def test_add_and_affine():
    a, b = np.array([[3, -4]]), np.array([[10, 0]])
    assert np.array_equal(golden.add(a, b, a_zp=1, b_zp=-2, a_mult=3, b_mult=-5), [[6 - 60, -15 - 10]])
    x = np.float32([1.0, 2.0])
    y = golden.affine(x, steps=[("sub", np.float32(0.5)), ("div", np.float32(3.0)), ("mul", np.float32([2, 4]))])
    assert y.dtype == np.float32 and np.array_equal(y, ((x - np.float32(0.5)) / np.float32(3)) * np.float32([2, 4]))
