"""Test model factory: small deterministic ONNX models, onnxruntime quantization and execution.

Plain functions (no pytest fixtures) so that any test or script can reuse them:

* :func:`float_mlp` builds a random float MLP (Gemm or MatMul+Add, Relu between layers, optional
  leading Flatten);
* :func:`quantize_model` quantizes a float model with ``onnxruntime.quantization.quantize_static``
  (QOperator or QDQ, int8 or uint8 activations, per-tensor or per-channel weights);
* :func:`ort_run` runs a model in onnxruntime (CPU, default optimisation level) on many rows;
* :class:`CnnBuilder` builds random float CNNs (1-D/2-D Conv with any padding, stride, dilation and group,
  BatchNormalization, Relu/Relu6, Max/Average/GlobalAverage pooling, residual Add, Concat, Gemm, Softmax);
  :func:`kws_dscnn_small` and :func:`dense_autoencoder` are small MLPerf Tiny shapes made with it;
  :func:`random_rows` makes calibration and test rows.
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


# ---- small convolutional networks


def _conv_out(size, k, s, p0, p1, d=1, ceil=0):
    from zakid_hw.golden import conv_out_size

    return conv_out_size(size, k, s, p0, p1, d, ceil)


class CnnBuilder:
    """Builds a random float CNN with onnx.helper, tracking the (C, *spatial) shape of the current tensor.

    Every method appends nodes after the current tensor and returns ``self``; 1-D and 2-D tensors are both
    supported (the spatial rank comes from the input shape). Weights are N(0, 1/sqrt(fan_in))."""

    def __init__(self, input_shape, seed=0, name="cnn"):
        self.rng = np.random.default_rng(seed)
        self.name = name
        self.nodes, self.inits = [], []
        self.x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(input_shape))
        self.cur, self.shape = "x", tuple(input_shape[1:])
        self.n = 0

    def _id(self, kind):
        self.n += 1
        return f"{kind}{self.n}"

    def _init(self, arr, name):
        self.inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def _node(self, op, inputs, kind=None, **attrs):
        name = self._id(kind or op.lower())
        out = f"{name}_out"
        self.nodes.append(helper.make_node(op, [self.cur] + list(inputs), [out], name=name, **attrs))
        self.cur = out
        return self

    def conv(self, out, kernel, strides=None, pads=None, dilations=None, group=1, auto_pad=None, bias=True):
        c, *sp = self.shape
        r = len(sp)
        kernel = tuple(kernel) if np.ndim(kernel) else (kernel,) * r
        strides = tuple(strides or (1,) * r)
        dilations = tuple(dilations or (1,) * r)
        fan_in = c // group * int(np.prod(kernel))
        name = self._id("conv")
        w = self.rng.normal(0, 1 / np.sqrt(fan_in), size=(out, c // group, *kernel))
        ins = [self._init(w, f"{name}.weight")]
        if bias:
            ins.append(self._init(self.rng.normal(0, 0.1, size=out), f"{name}.bias"))
        attrs = dict(kernel_shape=list(kernel), strides=list(strides), dilations=list(dilations), group=group)
        if auto_pad:
            attrs["auto_pad"] = auto_pad
            if auto_pad == "VALID":
                pads = (0,) * (2 * r)
            else:
                pads = []
                for size, k, s, d in zip(sp, kernel, strides, dilations):
                    need = max(0, (-(-size // s) - 1) * s + (k - 1) * d + 1 - size)
                    pads.append((need // 2, need - need // 2) if auto_pad == "SAME_UPPER"
                                else (need - need // 2, need // 2))
                pads = tuple(p[0] for p in pads) + tuple(p[1] for p in pads)
        else:
            pads = tuple(pads or (0,) * (2 * r))
            attrs["pads"] = list(pads)
        self.nodes.append(helper.make_node("Conv", [self.cur] + ins, [f"{name}_out"], name=name, **attrs))
        self.cur = f"{name}_out"
        self.shape = (out, *(_conv_out(sp[i], kernel[i], strides[i], pads[i], pads[i + r], dilations[i])
                             for i in range(r)))
        return self

    def bn(self, negative=False):
        c = self.shape[0]
        name = self._id("bn")
        scale = self.rng.uniform(0.5, 1.5, c) * (np.where(self.rng.random(c) < 0.5, -1, 1) if negative else 1)
        ins = [self._init(scale, f"{name}.scale"), self._init(self.rng.normal(0, 0.2, c), f"{name}.bias"),
               self._init(self.rng.normal(0, 0.2, c), f"{name}.mean"),
               self._init(self.rng.uniform(0.5, 2, c), f"{name}.var")]
        self.nodes.append(helper.make_node("BatchNormalization", [self.cur] + ins, [f"{name}_out"], name=name,
                                           epsilon=1e-3))
        self.cur = f"{name}_out"
        return self

    def relu(self):
        return self._node("Relu", [])

    def relu6(self):
        lo, hi = self._init(0.0, self._id("clip_lo")), self._init(6.0, self._id("clip_hi"))
        return self._node("Clip", [lo, hi], kind="relu6_")

    def maxpool(self, kernel, strides=None, pads=None, ceil_mode=0, dilations=None):
        c, *sp = self.shape
        r = len(sp)
        kernel = tuple(kernel) if np.ndim(kernel) else (kernel,) * r
        strides = tuple(strides or kernel)
        pads = tuple(pads or (0,) * (2 * r))
        dilations = tuple(dilations or (1,) * r)
        self._node("MaxPool", [], kernel_shape=list(kernel), strides=list(strides), pads=list(pads),
                   ceil_mode=ceil_mode, dilations=list(dilations))
        self.shape = (c, *(_conv_out(sp[i], kernel[i], strides[i], pads[i], pads[i + r], dilations[i], ceil_mode)
                           for i in range(r)))
        return self

    def avgpool(self, kernel, strides=None, pads=None, count_include_pad=0):
        c, *sp = self.shape
        r = len(sp)
        kernel = tuple(kernel) if np.ndim(kernel) else (kernel,) * r
        strides = tuple(strides or kernel)
        pads = tuple(pads or (0,) * (2 * r))
        self._node("AveragePool", [], kernel_shape=list(kernel), strides=list(strides), pads=list(pads),
                   count_include_pad=count_include_pad)
        self.shape = (c, *(_conv_out(sp[i], kernel[i], strides[i], pads[i], pads[i + r]) for i in range(r)))
        return self

    def global_avgpool(self):
        self._node("GlobalAveragePool", [])
        self.shape = (self.shape[0],) + (1,) * (len(self.shape) - 1)
        return self

    def flatten(self):
        self._node("Flatten", [], axis=1)
        self.shape = (int(np.prod(self.shape)),)
        return self

    def dense(self, out, bias=True):
        k = self.shape[0]
        name = self._id("fc")
        ins = [self._init(self.rng.normal(0, 1 / np.sqrt(k), size=(out, k)), f"{name}.weight")]
        if bias:
            ins.append(self._init(self.rng.normal(0, 0.1, size=out), f"{name}.bias"))
        self.nodes.append(helper.make_node("Gemm", [self.cur] + ins, [f"{name}_out"], name=name, transB=1))
        self.cur, self.shape = f"{name}_out", (out,)
        return self

    def softmax(self):
        return self._node("Softmax", [], axis=-1)

    def branch(self):
        """Start a side branch from the current tensor: returns (saved tensor, saved shape)."""
        return self.cur, self.shape

    def add_from(self, saved):
        """Residual: current + the saved tensor (same shape)."""
        other, shape = saved
        assert shape == self.shape, (shape, self.shape)
        return self._node("Add", [other], kind="residual")

    def concat_from(self, saved):
        """Concatenate the saved tensor and the current one along the channels."""
        other, shape = saved
        assert shape[1:] == self.shape[1:], (shape, self.shape)
        name = self._id("concat")
        self.nodes.append(helper.make_node("Concat", [other, self.cur], [f"{name}_out"], name=name, axis=1))
        self.cur, self.shape = f"{name}_out", (shape[0] + self.shape[0], *self.shape[1:])
        return self

    def model(self) -> onnx.ModelProto:
        y = helper.make_tensor_value_info(self.cur, TensorProto.FLOAT, [1, *self.shape])
        graph = helper.make_graph(self.nodes, self.name, [self.x_info], [y], self.inits)
        return _finish(graph, opset=13)


def random_rows(shape, n, seed=0, calib=False):
    """``n`` float32 rows of ``shape`` (the model input's shape): N(0, 1) for calibration, otherwise mixed
    magnitudes (0.5, 1, 2 times N(0, 1)) so that some rows saturate the input quantizer."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, *shape))
    if not calib:
        x = x * rng.choice([0.5, 1.0, 2.0], size=(n,) + (1,) * len(shape))
    return x.astype(np.float32)


def kws_dscnn_small(channels=8, blocks=2, seed=0, frames=49, coeffs=10):
    """A small DS-CNN keyword-spotting shape (MLPerf Tiny style): input (1, 1, frames, coeffs), Conv 10x4
    stride 2 with TF SAME padding, BN, Relu; ``blocks`` x [depthwise 3x3 (group=C), BN, Relu, pointwise 1x1,
    BN, Relu]; average pooling over the whole map, Flatten, Gemm -> 12."""
    b = CnnBuilder((1, 1, frames, coeffs), seed=seed, name="kws_dscnn_small")
    b.conv(channels, (10, 4), strides=(2, 2), pads=(4, 1, 5, 1)).bn().relu()
    for _ in range(blocks):
        b.conv(channels, 3, pads=(1, 1, 1, 1), group=channels).bn().relu()
        b.conv(channels, 1).bn().relu()
    b.avgpool(tuple(b.shape[1:]))
    return b.flatten().dense(12).model()


def dense_autoencoder(widths=(64, 16, 16, 4, 16, 16, 64), seed=0, bn=True):
    """A dense autoencoder (MLPerf Tiny anomaly-detection shape, scaled down): Gemm + BatchNormalization +
    Relu per hidden layer, the last layer linear."""
    b = CnnBuilder((1, widths[0]), seed=seed, name="dense_autoencoder")
    for i, w in enumerate(widths[1:]):
        b.dense(w)
        if i < len(widths) - 2:
            if bn:
                b.bn()
            b.relu()
    return b.model()
