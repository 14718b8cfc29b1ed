"""ONNX node conformance tests, run through zakid-hw's importer and golden model.

``onnx.backend.test.case.node.collect_testcases()`` regenerates the ONNX backend node tests offline (no data
files needed). This file takes every case whose node is one of :data:`OPS` and runs it as one pytest parameter:

* **integer cases** (QLinearConv, QLinearMatMul, ConvInteger, MatMulInteger, and MaxPool on uint8): the case's
  model is imported as it is (after :func:`inputs_to_initializers`, below) and the golden model's output must
  equal the case's expected output exactly. onnxruntime must agree with it too (a check of the harness).
* **float cases** (Conv, MaxPool, AveragePool on float32): the case's input is the calibration data; the
  single-node model is quantized with :func:`zakid_hw.quantize_float.quantize_float` (onnxruntime's
  ``quantize_static``, QOperator, zakid-hw's default scheme), and the golden model's output must equal
  onnxruntime's output of that quantized model bit for bit, on the case's input and on a few more inputs
  drawn from (and a little beyond) its range.

The cases keep weights, scales and zero points as graph *inputs*; zakid-hw takes one graph input, so
:func:`inputs_to_initializers` turns every input but the first into an initializer holding the case's data.

zakid-hw runs one inference per row with a static batch of 1. Cases whose first input has several rows are
split rather than excluded: a 2-D MatMul-like case ``(M, K) x (K, N)`` becomes M models with input ``(1, K)``;
a 3-D QLinearMatMul ``(B, M, K) x (B, K, N)`` (a different weight per batch entry) becomes B such models of
M rows each.

onnxruntime's ``quantize_static`` quantizes a MaxPool only when its input is already quantized, so it leaves
the lone MaxPool of a float case in float; such a case is quantized as quantize_static would quantize a MaxPool
behind a quantized layer: QuantizeLinear (int8, MinMax scale and zero point of the case input), MaxPool on
int8, DequantizeLinear (:func:`qdq_maxpool`).

Cases with no reference to compare with (onnxruntime cannot run their quantized model) are listed in
:data:`EXCLUDED` with the reason; cases that zakid-hw must refuse with a clear ZakidError are listed in
:data:`REJECTED` with the reason and the message expected; nothing is skipped or xfailed otherwise, and every
other case of these ops, including any a new onnx release adds, is run. ``test_every_case_is_tested_or_excluded``
checks that the lists name real cases and that every family meant to be covered is present.
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from zakid_hw import golden
from zakid_hw.errors import ZakidError
from zakid_hw.onnx_import import load_model

#: node op types whose conformance cases are run here
OPS = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "Conv", "MaxPool", "AveragePool"}

#: cases not run, with the reason: there is no reference to compare with
_NO_REFERENCE = ("no reference: quantize_static turns the dilated AveragePool into com.microsoft QLinearAveragePool "
                 "with a dilations attribute, which onnxruntime's QLinearAveragePool does not have (the quantized "
                 "model fails to load)")
EXCLUDED = {
    "test_averagepool_2d_dilations": _NO_REFERENCE,
    "test_averagepool_3d_dilations_small": _NO_REFERENCE,
    "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_True": _NO_REFERENCE,
    "test_averagepool_3d_dilations_large_count_include_pad_is_0_ceil_mode_is_False": _NO_REFERENCE,
    "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_True": _NO_REFERENCE,
    "test_averagepool_3d_dilations_large_count_include_pad_is_1_ceil_mode_is_False": _NO_REFERENCE,
}

#: cases zakid-hw must refuse with a ZakidError: name -> (reason, regular expression the message must match).
#: If the importer learns one of these, the test fails: move the case to the tested set then.
_FLOAT_AVERAGE = ("onnxruntime's QLinearAveragePool averages in float32, and for these scales its result is not "
                  "a function of the integer window sum, so no integer requantizer reproduces it",
                  r"not a function of the window sum")
# count_include_pad=0 with padding: onnxruntime divides each window by its number of in-image inputs, which
# differs between output positions, and the threshold op has one table per channel. The importer may find
# first that one of those divisions is not reproducible (_FLOAT_AVERAGE); either refusal is right.
_VARYING_DIVISOR = ("AveragePool with count_include_pad=0 and padding: the divisor differs between output "
                    "positions (or, found first, the float32 average of one of them is not reproducible)",
                    r"different numbers of in-image inputs|not a function of the window sum")
_3D = ("3-D pooling: zakid-hw's convolution and pooling layers are 1-D or 2-D", r"3-D convolutions")
_ARGMAX = ("MaxPool's second output (the argmax indices)", r"Indices output")
REJECTED = {
    "test_averagepool_3d_default": _3D,
    "test_maxpool_3d_default": _3D,
    "test_maxpool_3d_dilations": _3D,
    "test_maxpool_3d_dilations_use_ref_impl": _3D,
    "test_maxpool_3d_dilations_use_ref_impl_large": _3D,
    "test_maxpool_with_argmax_2d_precomputed_pads": _ARGMAX,
    "test_maxpool_with_argmax_2d_precomputed_strides": _ARGMAX,
    "test_averagepool_2d_pads": _VARYING_DIVISOR,
    "test_averagepool_2d_precomputed_pads": _VARYING_DIVISOR,
    "test_averagepool_2d_same_lower": _VARYING_DIVISOR,
    "test_averagepool_2d_same_upper": _VARYING_DIVISOR,
    "test_averagepool_2d_precomputed_same_upper": _VARYING_DIVISOR,
    "test_averagepool_2d_ceil": ("ceil_mode=1 adds a partial window, whose divisor differs from the others",
                                 r"ceil_mode=1"),
    "test_averagepool_2d_precomputed_strides": _FLOAT_AVERAGE,
}

#: integer cases that onnxruntime itself cannot run (so the harness check against onnxruntime is left out and
#: the case's expected output, from the ONNX reference implementation, is the only reference)
ORT_CANNOT_RUN = {
    "test_convinteger_with_padding": "onnxruntime's ConvInteger takes only a scalar weight zero point; this case "
                                     "has one per output channel",
}

#: extra inputs per float case (besides the case's own), drawn from 1.25 x the case input's range
EXTRA_ROWS = 8


# --------------------------------------------------------------------------------------------------------
# collecting and reshaping the cases


#: the modules of onnx.backend.test.case.node that generate the cases of OPS
_CASE_MODULES = ("conv", "maxpool", "averagepool", "qlinearconv", "qlinearmatmul", "convinteger", "matmulinteger")


def _collect():
    """The node test cases of OPS, by name. ``collect_testcases()`` imports (and so runs the generators of)
    every op's module, about 20 s; importing just the modules of OPS fills the same list in under a second.
    (Its ``op_type`` argument does not help: the modules run only on their first import in a process.)"""
    import importlib

    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            for m in _CASE_MODULES:
                importlib.import_module(f"onnx.backend.test.case.node.{m}")
            cases = list(node._NodeTestCases)
        except (ImportError, AttributeError):   # layout of a future onnx release: take the slow, public way
            cases = node.collect_testcases()
    return {c.name: c for c in cases if c.kind == "node" and c.model.graph.node[0].op_type in OPS}


CASES = _collect()
TESTED = sorted(n for n in CASES if n not in EXCLUDED and n not in REJECTED)


def inputs_to_initializers(model: onnx.ModelProto, feeds: dict) -> onnx.ModelProto:
    """A copy of ``model`` in which every graph input named in ``feeds`` is an initializer holding that value
    (scalars keep their rank-0 shape; the dtype is the input's declared element type)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    keep = []
    for vi in g.input:
        if vi.name in feeds:
            dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
            arr = np.asarray(feeds[vi.name]).astype(dtype)
            g.initializer.append(numpy_helper.from_array(arr, vi.name))
        else:
            keep.append(vi)
    del g.input[:]
    g.input.extend(keep)
    return m


def single_node_model(case_model, data_name, x, consts: dict, y_name, y) -> onnx.ModelProto:
    """The case's node alone with data input ``data_name`` of ``x``'s shape, every input in ``consts`` an
    initializer, and output ``y_name`` of ``y``'s shape; same opsets, IR version lowered for onnxruntime."""
    g = case_model.graph
    types = {vi.name: vi.type.tensor_type.elem_type for vi in [*g.input, *g.output]}
    graph = helper.make_graph(
        [g.node[0]], g.name,
        [helper.make_tensor_value_info(data_name, types[data_name], list(np.shape(x)))],
        [helper.make_tensor_value_info(y_name, types[y_name], list(np.shape(y)))])
    model = helper.make_model(graph, opset_imports=list(case_model.opset_import))
    model.ir_version = min(case_model.ir_version, 10)
    model = inputs_to_initializers(_with_inputs(model, g, consts), consts)
    onnx.checker.check_model(model)
    return model


def _with_inputs(model, case_graph, consts):
    """Declare the constant inputs as graph inputs (so that inputs_to_initializers finds their types)."""
    by_name = {vi.name: vi for vi in case_graph.input}
    for name in consts:
        model.graph.input.append(by_name[name])
    return model


def subcases(case):
    """Split a case into (label, single-node model, input rows, expected outputs or None) with one inference
    per row. Integer cases carry their expected outputs; float cases carry None (the reference is onnxruntime
    on the quantized model)."""
    g = case.model.graph
    ins, outs = case.data_sets[0]
    names = [vi.name for vi in g.input]
    feeds = {n: np.asarray(v) for n, v in zip(names, ins)}
    data_name, y_name, y = names[0], g.output[0].name, np.asarray(outs[0])
    consts = {n: feeds[n] for n in names[1:]}
    x = feeds[data_name]
    op = g.node[0].op_type
    if op in ("QLinearMatMul", "MatMulInteger"):
        if x.ndim == 2:        # (M, K) x (K, N): one model, M rows of shape (1, K)
            batches = [("", x, consts, y)]
        else:                  # (B, M, K) x (B, K, N): B models (each its own B[b]), M rows each
            wname = g.node[0].input[3 if op == "QLinearMatMul" else 1]
            batches = [(f"batch{b}/", x[b], dict(consts, **{wname: consts[wname][b]}), y[b])
                       for b in range(x.shape[0])]
        out = []
        for label, xb, cb, yb in batches:
            model = single_node_model(case.model, data_name, xb[:1], cb, y_name, yb[:1])
            out.append((label or "rows", model, xb[:, None, :], yb[:, None, :]))
        return out
    model = single_node_model(case.model, data_name, x, consts, y_name, y)
    if x.dtype == np.float32:
        return [("float", model, x[None], None)]
    return [("int", model, x[None], y[None])]


def qdq_maxpool(model, xs) -> onnx.ModelProto:
    """The float single-MaxPool model wrapped as quantize_static wraps a MaxPool behind a quantized layer:
    QuantizeLinear -> MaxPool (int8) -> DequantizeLinear, with one int8 scale and zero point from the range of
    the calibration rows (MinMax, asymmetric, the range widened to include 0, as onnxruntime does)."""
    g = model.graph
    rmin, rmax = min(float(xs.min()), 0.0), max(float(xs.max()), 0.0)
    scale = np.float32((rmax - rmin) / 255.0 if rmax > rmin else 1.0)
    zp = np.int8(np.clip(np.rint(-128 - rmin / scale), -128, 127))
    node = onnx.NodeProto()
    node.CopyFrom(g.node[0])
    x, y = node.input[0], node.output[0]
    node.input[0], node.output[0] = "x_q", "y_q"
    nodes = [helper.make_node("QuantizeLinear", [x, "scale", "zp"], ["x_q"], name="quant"), node,
             helper.make_node("DequantizeLinear", ["y_q", "scale", "zp"], [y], name="dequant")]
    graph = helper.make_graph(nodes, g.name + "_qdq", list(g.input), list(g.output),
                              [numpy_helper.from_array(np.asarray(scale), "scale"),
                               numpy_helper.from_array(np.asarray(zp), "zp")])
    q = helper.make_model(graph, opset_imports=list(model.opset_import))
    q.ir_version = model.ir_version
    onnx.checker.check_model(q)
    return q


def extra_rows(name, x, n=EXTRA_ROWS):
    """``n`` more float inputs of ``x``'s shape, uniform over 1.25 x its range (so some saturate)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    lo, hi = float(x.min()), float(x.max())
    mid, half = (lo + hi) / 2, max(hi - lo, 1e-3) / 2 * 1.25
    return rng.uniform(mid - half, mid + half, (n, *x.shape)).astype(np.float32)


def ort_rows(model, xs):
    from zakid_hw.onnx_import import ort_session

    sess = ort_session(model)
    name = sess.get_inputs()[0].name
    return np.stack([sess.run(None, {name: x})[0] for x in xs])


# --------------------------------------------------------------------------------------------------------
# the tests


def test_every_case_is_tested_or_excluded():
    assert set(EXCLUDED) | set(REJECTED) | set(ORT_CANNOT_RUN) <= set(CASES)
    assert not set(EXCLUDED) & set(REJECTED)
    # the families the conformance run is meant to cover are all present in this onnx release
    for prefix in ("test_qlinearconv", "test_qlinearmatmul_", "test_convinteger_", "test_matmulinteger",
                   "test_conv_", "test_maxpool_2d", "test_averagepool_2d"):
        assert any(n.startswith(prefix) for n in TESTED), prefix


def run_case(name, tmp_path, rtl=False):
    case = CASES[name]
    for label, model, xs, expected in subcases(case):
        if expected is None:
            from zakid_hw.quantize_float import quantize_float

            if model.graph.node[0].op_type == "MaxPool":
                model = qdq_maxpool(model, xs)
            else:
                model, _ = quantize_float(model, xs)
            xs = np.concatenate([xs, extra_rows(name, xs[0])])
            expected = ort_rows(model, xs)
        elif name not in ORT_CANNOT_RUN:
            # the harness itself: onnxruntime on the converted model reproduces the case's expected output
            np.testing.assert_array_equal(ort_rows(model, xs), expected, err_msg=f"{name} {label}: harness")
        path = tmp_path / f"{name}_{label.replace('/', '_')}.onnx"
        onnx.save(model, path)
        graph = load_model(path)
        ours = golden.run_batch(graph, xs)
        assert ours.shape == expected.shape, f"{name} {label}: shape {ours.shape} != {expected.shape}"
        kind = np.int64 if expected.dtype.kind in "iu" else np.float32   # compare values, no wrap-around
        np.testing.assert_array_equal(np.asarray(ours).astype(kind), expected.astype(kind),
                                      err_msg=f"{name} {label}: golden model != reference")
        if rtl:  # the generated accelerator in RTL simulation, on the same rows
            from zakid_hw.compiler import compile_model
            from zakid_hw.simulate import simulate_model

            res = simulate_model(compile_model(path), xs)
            np.testing.assert_array_equal(np.asarray(res.outputs).reshape(expected.shape).astype(kind),
                                          expected.astype(kind), err_msg=f"{name} {label}: RTL != reference")


@pytest.mark.parametrize("name", TESTED)
def test_conformance(name, tmp_path):
    run_case(name, tmp_path)


#: a representative subset also runs through the generated RTL (each case compiles its own Verilator model)
RTL_SUBSET = ("test_qlinearconv", "test_conv_with_strides_and_asymmetric_padding", "test_convinteger_with_padding",
              "test_maxpool_2d_ceil")


@pytest.mark.parametrize("name", RTL_SUBSET)
def test_conformance_in_rtl(name, tmp_path):
    run_case(name, tmp_path, rtl=True)


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_rejected_with_clear_error(name, tmp_path):
    reason, pattern = REJECTED[name]
    with pytest.raises(ZakidError, match=pattern):
        run_case(name, tmp_path)
