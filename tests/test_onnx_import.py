"""ONNX importer: bit-exactness with onnxruntime (default optimisation level) and user-facing errors."""

from __future__ import annotations

import itertools
import logging

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from modelzoo import float_mlp, ort_run, quantize_model
from zakid_hw import golden
from zakid_hw.errors import ZakidError
from zakid_hw.onnx_import import load_model, ort_u8s8_saturates
from zakid_hw.quantize_float import canonicalize, quantize_float

logging.getLogger().setLevel(logging.ERROR)  # onnxruntime's quantizer logs advice through the root logger

WIDTHS = [(64, 16, 10), (13, 30, 3), (7, 5)]


def calib_rows(widths, seed=0, n=64):
    return np.random.default_rng(seed).normal(size=(n, 1, widths[0])).astype(np.float32)


def make_inputs(graph, n=3000, seed=1):
    """Random rows plus rows that saturate the input quantizer, huge magnitudes and exact rounding ties."""
    rng = np.random.default_rng(seed)
    shape = graph.tensors[graph.inputs[0]].shape
    q = graph.nodes_of("quantize")[0].attrs
    scale = float(q["scale"])
    parts = [rng.normal(size=(n // 2, *shape)) * rng.choice([0.3, 1.0, 3.0], size=(n // 2,) + (1,) * len(shape)),
             rng.uniform(-140, 140, size=(n // 4, *shape)) * scale,  # covers and exceeds the int8 code range
             (rng.integers(-140, 140, size=(n // 8, *shape)) + 0.5) * scale,  # ties for round-half-even
             rng.normal(size=(n // 8, *shape)) * 1e4,
             np.zeros((1, *shape))]
    return np.concatenate(parts).astype(np.float32)


def assert_bit_exact(graph, path, xs):
    ours = golden.run_batch(graph, xs)
    ref = ort_run(path, xs)
    assert ours.shape == ref.shape
    if ref.dtype == np.float32:
        ours = ours.astype(np.float32)
    bad = int(np.sum(ours != ref))
    assert bad == 0, f"{bad} of {ref.size} outputs differ from onnxruntime"


# 8-bit weights on uint8 activations (and QDQ, which onnxruntime runs as uint8 on x86) hit onnxruntime's
# int16 pair saturation on CPUs without VNNI; 7-bit weights (reduce_range) keep onnxruntime exact.
CASES = [(fmt, act, pc, gemm) for fmt, act, pc, gemm in
         itertools.product(["qoperator", "qdq"], ["int8", "uint8"], [False, True], [True, False])]


@pytest.mark.parametrize("fmt,act,per_channel,use_gemm", CASES)
def test_bit_exact_quantized(tmp_path, fmt, act, per_channel, use_gemm):
    widths = WIDTHS[CASES.index((fmt, act, per_channel, use_gemm)) % len(WIDTHS)]
    model = float_mlp(widths, seed=len(widths) + use_gemm, use_gemm=use_gemm)
    exact_kernel = fmt == "qoperator" and act == "int8"
    path = quantize_model(model, calib_rows(widths), fmt, act, per_channel, tmp_path,
                          reduce_range=not exact_kernel)
    graph = load_model(path)
    assert graph.meta["source_format"] == fmt
    assert graph.meta["warnings"] == []
    x = graph.tensors[graph.inputs[0]]
    assert (x.name, x.shape, x.dtype) == ("x", (1, widths[0]), "float32")
    assert graph.outputs == ["y"] and graph.tensors["y"].shape == (1, widths[-1])
    assert {n.op for n in graph.nodes} <= {"quantize", "dense", "requantize", "threshold", "dequantize"}
    assert len(graph.nodes_of("dense")) == len(widths) - 1
    for n in graph.nodes_of("requantize") + graph.nodes_of("threshold"):
        t = graph.tensors[n.outputs[0]]
        assert t.dtype == act and t.scale > 0 and t.zero_point is not None
    assert_bit_exact(graph, path, make_inputs(graph))


def test_gemm_layers_lower_to_dense_requantize(tmp_path):
    path = quantize_model(float_mlp((64, 16, 10)), calib_rows((64,)), "qoperator", "int8", True, tmp_path)
    graph = load_model(path)
    assert [n.op for n in graph.nodes] == ["quantize", "dense", "requantize", "dense", "requantize", "dequantize"]
    d = graph.nodes_of("dense")[0].attrs
    assert d["weight"].shape == (16, 64) and d["weight"].dtype == np.int8 and d["bias"].shape == (16,)
    assert graph.nodes_of("requantize")[0].attrs["multiplier"].shape == (16,)


@pytest.mark.parametrize("fmt", ["qoperator", "qdq"])
def test_flatten_input(tmp_path, fmt):
    model = float_mlp((64, 16, 10), use_gemm=False, flatten_input_shape=(1, 1, 8, 8))
    calib = np.random.default_rng(3).normal(size=(50, 1, 1, 8, 8)).astype(np.float32)
    path = quantize_model(model, calib, fmt, "int8", False, tmp_path, reduce_range=fmt == "qdq")
    graph = load_model(path)
    assert graph.tensors["x"].shape == (1, 1, 8, 8)
    assert graph.nodes[0].op == "reshape"
    assert_bit_exact(graph, path, make_inputs(graph, n=1000))


def test_weight_zero_point(tmp_path):
    """uint8 weights have non-zero zero points: carried by dense.w_zp."""
    path = quantize_model(float_mlp((13, 30, 3)), calib_rows((13,)), "qoperator", "uint8", True, tmp_path,
                          weight_type="uint8")
    graph = load_model(path)
    assert any(np.any(np.asarray(n.attrs["w_zp"]) != 0) for n in graph.nodes_of("dense"))
    assert_bit_exact(graph, path, make_inputs(graph, n=1000))


def test_qgemm_alpha_folds_into_multiplier(tmp_path):
    path = quantize_model(float_mlp((13, 30, 3)), calib_rows((13,)), "qoperator", "int8", True, tmp_path)
    model = onnx.load(path)
    for n in model.graph.node:
        if n.op_type == "QGemm":
            n.attribute.append(helper.make_attribute("alpha", 0.37))
    onnx.save(model, tmp_path / "alpha.onnx")
    graph = load_model(tmp_path / "alpha.onnx")
    assert_bit_exact(graph, tmp_path / "alpha.onnx", make_inputs(graph, n=1000))


@pytest.mark.parametrize("kind,ops", [
    ("int_relu", {"relu"}),  # ONNX Relu on int8 codes: max(q, 0)
    ("dq_relu_q", set()),  # Relu between DQ and Q with the same parameters: identity after a folded Relu
    ("dq_relu_q_rescaled", {"threshold"}),  # new scale: tabulated, merged into the layer
    ("dq_add_q", {"threshold"}),  # float Add of a constant
])
def test_elementwise_islands(tmp_path, kind, ops):
    """Elementwise ops between two integer tensors are tabulated with onnxruntime (or recognised)."""
    path = quantize_model(float_mlp((13, 30, 3), seed=4), calib_rows((13,)), "qoperator", "int8", True, tmp_path)
    model = onnx.load(path)
    g = model.graph
    fc0, fc1 = (n for n in g.node if n.op_type == "QGemm")
    h, hs, hz = fc0.output[0], fc0.input[7], fc0.input[8]
    new = []
    if kind == "int_relu":
        new.append(helper.make_node("Relu", [h], ["h_relu"], name="int_relu"))
    else:
        new.append(helper.make_node("DequantizeLinear", [h, hs, hz], ["h_f"], name="dq"))
        if kind == "dq_add_q":
            g.initializer.append(numpy_helper.from_array(np.linspace(-0.3, 0.5, 30).astype(np.float32), "c"))
            new.append(helper.make_node("Add", ["h_f", "c"], ["h_g"], name="add_c"))
        else:
            new.append(helper.make_node("Relu", ["h_f"], ["h_g"], name="relu_f"))
        if kind in ("dq_relu_q_rescaled", "dq_add_q"):
            s = numpy_helper.to_array(next(t for t in g.initializer if t.name == hs))
            g.initializer.append(numpy_helper.from_array(np.float32(s * 1.37), "s2"))
            g.initializer.append(numpy_helper.from_array(np.int8(-3), "z2"))
            hs, hz = "s2", "z2"
        new.append(helper.make_node("QuantizeLinear", ["h_g", hs, hz], ["h_relu"], name="q"))
    fc1.input[0], fc1.input[1], fc1.input[2] = "h_relu", hs, hz
    nodes = list(g.node)
    del g.node[:]
    g.node.extend(nodes[:nodes.index(fc0) + 1] + new + nodes[nodes.index(fc0) + 1:])
    path = _save(model, tmp_path / f"{kind}.onnx")
    graph = load_model(path)
    assert {n.op for n in graph.nodes} - {"quantize", "dense", "requantize", "dequantize"} == ops
    assert_bit_exact(graph, path, make_inputs(graph, n=2000))


def test_qgemm_float_output(tmp_path):
    """QGemm without y_scale outputs f32(acc) * f32(a_scale * b_scale): an IR dequantize of the accumulator."""
    path = quantize_model(float_mlp((13, 30, 3)), calib_rows((13,)), "qoperator", "int8", False, tmp_path)
    model = onnx.load(path)
    last = [n for n in model.graph.node if n.op_type == "QGemm"][-1]
    del last.input[7:]
    last.output[0] = "y"
    model.graph.node.remove(next(n for n in model.graph.node if n.op_type == "DequantizeLinear"))
    path = _save(model, tmp_path / "float_out.onnx")
    graph = load_model(path)
    assert [n.op for n in graph.nodes][-2:] == ["dense", "dequantize"]
    assert_bit_exact(graph, path, make_inputs(graph, n=1000))


def test_u8s8_saturation_is_reported(tmp_path):
    """With 8-bit weights and uint8 activations, onnxruntime on x86 without VNNI saturates; say so."""
    path = quantize_model(float_mlp((64, 16, 10)), calib_rows((64,)), "qoperator", "uint8", True, tmp_path)
    graph = load_model(path)
    if ort_u8s8_saturates():
        assert graph.meta["warnings"] and "fc0_quant" in graph.meta["warnings"][0]
    else:
        assert graph.meta["warnings"] == []
        assert_bit_exact(graph, path, make_inputs(graph, n=1000))


# ---- float model + calibration


@pytest.mark.parametrize("kwargs,calib_shape", [
    (dict(widths=(64, 16, 10)), (200, 1, 64)),
    (dict(widths=(13, 30, 3), use_gemm=False), (200, 13)),  # rows without the leading batch 1
    (dict(widths=(64, 16, 10), flatten_input_shape=(1, 1, 8, 8)), (100, 1, 8, 8)),
])
def test_float_with_calibration(tmp_path, kwargs, calib_shape):
    model = float_mlp(**kwargs)
    onnx.save(model, tmp_path / "float.onnx")
    calib = np.random.default_rng(4).normal(size=calib_shape).astype(np.float32)
    graph = load_model(tmp_path / "float.onnx", calibration=calib)
    q = graph.meta["quantization"]
    assert graph.meta["source_format"] == "float+calibration"
    assert (q["format"], q["activation_type"], q["weight_type"], q["per_channel"], q["calibration_method"],
            q["calibration_rows"]) == ("qoperator", "int8", "int8", False, "minmax", calib_shape[0])
    assert graph.nodes_of("threshold") == []  # MatMul + Add was fused to Gemm before quantizing
    qmodel, _ = quantize_float(model, calib)
    onnx.save(qmodel, tmp_path / "quantized.onnx")
    xs = make_inputs(graph, n=2000)
    assert_bit_exact(graph, tmp_path / "quantized.onnx", xs)
    # and it still computes the float model's function, approximately
    ref = ort_run(tmp_path / "float.onnx", xs[:500])
    err = np.abs(golden.run_batch(graph, xs[:500]) - ref)
    assert np.median(err) < 0.1 * np.abs(ref).mean()


def test_float_gemm_alpha_beta_transb_folded(tmp_path):
    rng = np.random.default_rng(5)
    w, b = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="g", alpha=0.5, beta=2.0, transB=0)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    onnx.save(model, tmp_path / "m.onnx")
    calib = rng.normal(size=(100, 6)).astype(np.float32)
    g = load_model(tmp_path / "m.onnx", calibration=calib)
    assert [n.op for n in g.nodes] == ["quantize", "dense", "requantize", "dequantize"]
    xs = rng.normal(size=(200, 1, 6)).astype(np.float32)
    ref = ort_run(tmp_path / "m.onnx", xs)
    np.testing.assert_allclose(ort_run(canonicalize(model), xs), ref, rtol=1e-5, atol=1e-5)
    assert np.median(np.abs(golden.run_batch(g, xs) - ref)) < 0.02 * np.abs(ref).max()


# ---- bad input


def _save(model, path):
    model.ir_version = 10
    onnx.save(model, path)
    return path


def raises(path, *needles, **kw):
    with pytest.raises(ZakidError) as e:
        load_model(path, **kw)
    msg = str(e.value)
    for n in needles:
        assert n in msg, msg
    assert "\n" not in msg
    return msg


def test_not_onnx(tmp_path):
    (tmp_path / "junk.onnx").write_text("this is not a model\n" * 10)
    raises(tmp_path / "junk.onnx", "junk.onnx")
    (tmp_path / "empty.onnx").write_bytes(b"")
    raises(tmp_path / "empty.onnx", "empty.onnx")
    raises(tmp_path / "missing.onnx", "missing.onnx", "does not exist")


def test_truncated(tmp_path):
    path = quantize_model(float_mlp((13, 30, 3)), calib_rows((13,)), "qoperator", "int8", False, tmp_path)
    data = open(path, "rb").read()
    for cut in (len(data) // 3, len(data) // 2, len(data) - 7):
        (tmp_path / "cut.onnx").write_bytes(data[:cut])
        raises(tmp_path / "cut.onnx", "cut.onnx")


def test_unsupported_ops_all_listed(tmp_path):
    model = float_mlp((8, 4))
    g = model.graph
    g.node.append(helper.make_node("Sigmoid", ["y"], ["s"], name="act_sigmoid"))
    g.node.append(helper.make_node("Sin", ["s"], ["p"], name="head_sin"))
    g.node.append(helper.make_node("Sigmoid", ["p"], ["z"], name="act2"))
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 4]))
    msg = raises(_save(model, tmp_path / "m.onnx"), "'act_sigmoid' (Sigmoid)", "'head_sin' (Sin)",
                 "'act2' (Sigmoid)", calibration=np.zeros((4, 8), np.float32))
    assert "3 unsupported" in msg


def test_dynamic_or_missing_input_shape(tmp_path):
    model = float_mlp((8, 4))
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.ClearField("dim_value")
    dim.dim_param = "batch"
    raises(_save(model, tmp_path / "dyn.onnx"), "'x'", "'batch'", calibration=np.zeros((4, 8), np.float32))
    model.graph.input[0].type.tensor_type.ClearField("shape")
    raises(_save(model, tmp_path / "noshape.onnx"), "'x'", "no shape")


def test_float_without_calibration(tmp_path):
    raises(_save(float_mlp((8, 4)), tmp_path / "f.onnx"), "float model", "calibration")


@pytest.mark.parametrize("shape", [(10, 7), (10, 2, 8), (10, 1, 1, 8), (8,), (0, 8)])
def test_calibration_wrong_shape(tmp_path, shape):
    raises(_save(float_mlp((8, 4)), tmp_path / "f.onnx"), str(shape), "(1, 8)", calibration=np.zeros(shape))


def test_external_data_outside_folder(tmp_path):
    inner = tmp_path / "models"
    inner.mkdir()
    model = float_mlp((64, 16, 10))
    onnx.save(model, inner / "ext.onnx", save_as_external_data=True, location="weights.bin", size_threshold=0)
    calib = np.zeros((4, 64), np.float32)
    assert load_model(inner / "ext.onnx", calibration=calib).meta["source_format"] == "float+calibration"
    (tmp_path / "secret.bin").write_bytes(open(inner / "weights.bin", "rb").read())
    for loc in ("../secret.bin", str(tmp_path / "secret.bin")):
        m = onnx.load(inner / "ext.onnx", load_external_data=False)
        for t in m.graph.initializer:
            for e in t.external_data:
                if e.key == "location":
                    e.value = loc
        (inner / "evil.onnx").write_bytes(m.SerializeToString())
        raises(inner / "evil.onnx", loc, "outside", calibration=calib)


def test_several_inputs_or_outputs(tmp_path):
    model = float_mlp((8, 4))
    model.graph.output.append(helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 4]))
    model.graph.node.append(helper.make_node("Relu", ["y"], ["h"], name="extra"))
    raises(_save(model, tmp_path / "two_out.onnx"), "2 graph outputs", "exactly one output")
    model = float_mlp((8, 4))
    model.graph.input.append(helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 8]))
    raises(_save(model, tmp_path / "two_in.onnx"), "2 graph inputs", "'x2'")


def test_gemm_trans_a(tmp_path):
    model = float_mlp((8, 4))
    model.graph.node[0].attribute.append(helper.make_attribute("transA", 1))
    raises(_save(model, tmp_path / "t.onnx"), "'fc0'", "transA", calibration=np.zeros((4, 8), np.float32))


def test_qdq_gemm_left_in_float(tmp_path):
    """alpha != 1 stops onnxruntime from fusing a QDQ Gemm: its float path cannot be matched."""
    path = quantize_model(float_mlp((13, 30, 3)), calib_rows((13,)), "qdq", "int8", False, tmp_path)
    model = onnx.load(path)
    for n in model.graph.node:
        if n.op_type == "Gemm":
            n.attribute.append(helper.make_attribute("alpha", 0.5))
    raises(_save(model, tmp_path / "a.onnx"), "'fc0' (Gemm)", "'fc1' (Gemm)", "float")


def test_residual_add(tmp_path):
    """QLinearAdd of two computed tensors (a residual connection): IR add + threshold (zakid_hw.ort_arith)."""
    path = quantize_model(float_mlp((8, 8, 8), use_gemm=False, relu=False), calib_rows((8,)), "qoperator",
                          "int8", False, tmp_path)
    model = onnx.load(path)
    add = next(n for n in model.graph.node if n.op_type == "QLinearAdd")
    add.input[3] = model.graph.node[0].output[0]  # add the quantized input instead of the bias
    add.input[4], add.input[5] = model.graph.node[0].input[1], model.graph.node[0].input[2]
    graph = load_model(_save(model, tmp_path / "res.onnx"))
    assert "add" in {n.op for n in graph.nodes}
    assert_bit_exact(graph, tmp_path / "res.onnx", make_inputs(graph, n=1000))
