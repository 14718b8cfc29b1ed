"""Test model factory: small deterministic ONNX models, onnxruntime quantization and execution.

Plain functions (no pytest fixtures) so that any test or script can reuse them:

* :func:`float_mlp` builds a random float MLP (Gemm or MatMul+Add, Relu between layers, optional
  leading Flatten);
* :func:`quantize_model` quantizes a float model with ``onnxruntime.quantization.quantize_static``
  (QOperator or QDQ, int8 or uint8 activations, per-tensor or per-channel weights);
* :func:`ort_run` runs a model in onnxruntime (CPU, default optimisation level) on many rows.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: onnx >= 1.20 writes IR version 14, which onnxruntime 1.31 refuses; models written here use this one.
IR_VERSION = 10
OPSET = 17


def _finish(graph: onnx.GraphProto, opset: int = OPSET) -> onnx.ModelProto:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="zakid-hw-tests")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def float_mlp(widths=(64, 16, 10), seed=0, use_gemm=True, relu=True,
              flatten_input_shape=None) -> onnx.ModelProto:
    """A random float32 MLP ``widths[0] -> widths[1] -> ... -> widths[-1]``.

    Weights are drawn from N(0, 1/sqrt(fan_in)), biases from N(0, 0.1). Input ``x`` of shape
    ``(1, widths[0])`` (or ``flatten_input_shape``, e.g. ``(1, 1, 8, 8)``, followed by a Flatten),
    output ``y`` of shape ``(1, widths[-1])``. Layers are Gemm (transB=1, weight stored (N, K)) or
    MatMul + Add (weight stored (K, N)); a Relu follows every layer but the last when ``relu``.
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    if flatten_input_shape is not None:
        assert int(np.prod(flatten_input_shape[1:])) == widths[0]
        x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(flatten_input_shape))
        nodes.append(helper.make_node("Flatten", ["x"], ["x_flat"], name="flatten", axis=1))
        cur = "x_flat"
    else:
        x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, widths[0]])
        cur = "x"
    n_layers = len(widths) - 1
    for i, (k, n) in enumerate(zip(widths[:-1], widths[1:])):
        w = rng.normal(0.0, 1.0 / np.sqrt(k), size=(n, k)).astype(np.float32)
        b = rng.normal(0.0, 0.1, size=(n,)).astype(np.float32)
        last = i == n_layers - 1
        out = "y" if last else f"h{i}"
        if use_gemm:
            inits += [numpy_helper.from_array(w, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
            nodes.append(helper.make_node("Gemm", [cur, f"fc{i}.weight", f"fc{i}.bias"], [out],
                                          name=f"fc{i}", transB=1))
        else:
            inits += [numpy_helper.from_array(w.T.copy(), f"fc{i}.weight"),
                      numpy_helper.from_array(b, f"fc{i}.bias")]
            nodes.append(helper.make_node("MatMul", [cur, f"fc{i}.weight"], [f"mm{i}"], name=f"fc{i}_matmul"))
            nodes.append(helper.make_node("Add", [f"mm{i}", f"fc{i}.bias"], [out], name=f"fc{i}_add"))
        cur = out
        if relu and not last:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"], name=f"relu{i}"))
            cur = f"r{i}"
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, widths[-1]])
    graph = helper.make_graph(nodes, f"mlp_{'_'.join(map(str, widths))}", [x_info], [y_info], inits)
    return _finish(graph)


class _RowReader:
    """A CalibrationDataReader yielding the rows of an array, one inference each."""

    def __init__(self, name: str, shape, rows: np.ndarray):
        self._it = iter([{name: np.asarray(r, np.float32).reshape(shape)} for r in rows])

    def get_next(self):
        return next(self._it, None)


def quantize_model(model: onnx.ModelProto, calib: np.ndarray, fmt: str = "qoperator",
                   activation_type: str = "int8", per_channel: bool = False, tmpdir=None,
                   weight_type: str = "int8", name: str | None = None, reduce_range: bool = False) -> str:
    """Quantize ``model`` with onnxruntime's ``quantize_static`` (MinMax calibration over the rows of
    ``calib``) and return the path of the quantized model, written to ``tmpdir``.

    ``reduce_range`` quantizes weights to 7 bits. onnxruntime's u8 x s8 kernel on x86 CPUs without VNNI
    saturates sums of adjacent products to int16 (vpmaddubsw); it runs uint8-activation models and all QDQ
    models (it converts int8 activations to uint8) that way, so those only match exact integer arithmetic
    with 7-bit weights."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    qtypes = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    formats = {"qoperator": QuantFormat.QOperator, "qdq": QuantFormat.QDQ}
    tmpdir = Path(tmpdir if tmpdir is not None else os.getcwd())
    tag = name or (f"{model.graph.name}_{fmt}_{activation_type}_{'pc' if per_channel else 'pt'}"
                   f"{'_rr' if reduce_range else ''}")
    src, dst = tmpdir / f"{tag}.float.onnx", tmpdir / f"{tag}.onnx"
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.ir_version = min(model.ir_version, IR_VERSION)
    onnx.save(model, src)
    inp = model.graph.input[0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]

    class Reader(_RowReader, CalibrationDataReader):
        pass

    quantize_static(str(src), str(dst), Reader(inp.name, shape, calib),
                    quant_format=formats[fmt], activation_type=qtypes[activation_type],
                    weight_type=qtypes[weight_type], per_channel=per_channel,
                    reduce_range=reduce_range)
    q = onnx.load(dst)
    if q.ir_version > IR_VERSION:
        q.ir_version = IR_VERSION
        onnx.save(q, dst)
    return str(dst)


def ort_session(path_or_model):
    """An onnxruntime CPU session at the default optimisation level."""
    import onnxruntime as ort

    data = path_or_model.SerializeToString() if isinstance(path_or_model, onnx.ModelProto) else str(path_or_model)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def ort_run(path_or_model, x_rows: np.ndarray, batched: bool = False) -> np.ndarray:
    """Run a single-input, single-output model on every row of ``x_rows`` (first axis indexes
    inferences; each row has the input's shape or that shape without its leading 1); return the outputs
    stacked along a first axis. ``batched`` concatenates rows along the batch axis in one call (only
    valid when the model's batch dimension is free)."""
    sess = ort_session(path_or_model)
    inp = sess.get_inputs()[0]
    shape = [int(d) for d in inp.shape]
    rows = np.asarray(x_rows, np.float32)
    if batched:
        out = sess.run(None, {inp.name: rows.reshape(len(rows), *shape[1:])})[0]
        return out.reshape(len(rows), *([1] + list(out.shape[1:])))
    return np.stack([sess.run(None, {inp.name: r.reshape(shape)})[0] for r in rows])
