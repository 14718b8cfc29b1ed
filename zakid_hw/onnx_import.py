"""ONNX importer for multi-layer perceptrons: ONNX file -> integer IR (:mod:`zakid_hw.ir`).

:func:`load_model` accepts three forms of MLP (MatMul/Gemm, bias Add, Relu, Flatten/Reshape):

``qoperator``
    onnxruntime's QOperator output: QuantizeLinear, QLinearMatMul, com.microsoft QGemm, com.microsoft
    QLinearAdd (the bias of a MatMul + Add layer), DequantizeLinear.
``qdq``
    onnxruntime's QDQ output: QuantizeLinear/DequantizeLinear around float MatMul/Gemm/Add. onnxruntime fuses
    DQ -> MatMul/Gemm -> Q into QLinearMatMul/QGemm at its default optimisation level, and that fused
    arithmetic is what the IR reproduces. The importer asks onnxruntime which nodes it fuses and refuses
    a model whose MatMul/Gemm onnxruntime would run in float.
``float+calibration``
    a float model plus calibration rows: quantized with onnxruntime's ``quantize_static``
    (see :mod:`zakid_hw.quantize_float` for the default scheme), then imported as ``qoperator``.

The IR reproduces onnxruntime 1.31 (CPU, default optimisation level) bit for bit:

* QuantizeLinear: ``saturate(rint(f32(x) / f32(scale)) + zp)`` (IR ``quantize``).
* QLinearMatMul and QGemm: int32 accumulator ``sum((x - x_zp) * (w - w_zp)) + bias`` (IR ``dense``), then
  IR ``requantize`` with the multiplier formed in float32 in onnxruntime's order,
  ``f32(f32(f32(alpha * x_scale) * w_scale[n]) / y_scale)`` (alpha is 1 except for QGemm; see
  ``quant_gemm.cc`` / ``quantize_linear_matmul.cc`` in onnxruntime), the product ``f32(f32(acc) * m)`` rounded
  half to even, plus the zero point, saturated.
* DequantizeLinear: ``f32(q - zp) * f32(scale)`` (IR ``dequantize``).
* An elementwise "island" between two integer tensors (QLinearAdd of a constant bias, DQ -> Add -> Q that
  onnxruntime does not fuse, DQ -> Relu -> Q, Q(DQ(q)) with new parameters) is a per-channel,
  non-decreasing map of the 256 input codes. Its kernels differ between CPUs (AVX2 uses FMA, NEON fixed
  point), so the importer *tabulates* it by running exactly those nodes in onnxruntime on all 256 codes,
  then composes the table with the producing layer's ``requantize`` into one IR ``threshold`` (an exact
  staircase on the accumulator). A table that is the identity or a clamp at a zero point becomes nothing or
  a ``relu`` instead.
* Relu on an integer tensor (ONNX semantics ``max(q, 0)``) becomes IR ``relu`` with ``zero_point=0``.

One onnxruntime behaviour is *not* reproduced, because it is not integer arithmetic: on x86 CPUs without
VNNI its u8 x s8 GEMM (used for uint8 activations, and for all QDQ models, whose int8 activations onnxruntime
converts to uint8) saturates the sum of each two adjacent products to int16. The IR computes the exact sum,
as the FPGA does (and, by onnxruntime's documentation, its VNNI kernels); ``graph.meta["warnings"]`` names
the layers where the local onnxruntime may therefore differ. int8 activations in QOperator form, or 7-bit weights
(``reduce_range=True``), make onnxruntime exact.

``graph.meta``: ``source_format`` ("qoperator", "qdq", "float+calibration"), ``source_path``, ``opset``,
``producer``, ``onnx_ops`` (op counts), ``notes`` (what was tabulated or removed), ``warnings``, and for the
float path ``quantization`` (the scheme, see :mod:`zakid_hw.quantize_float`).

Everything a user can get wrong raises :class:`zakid_hw.errors.ZakidError` with a message naming the culprit.
"""

from __future__ import annotations

import functools
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import golden
from .errors import ZakidError
from .ir import Graph, Node, Tensor, dtype_range

#: ops accepted per model form; (domain, op_type), domain "" is the default ONNX domain
_COMMON = {"Relu", "Flatten", "Reshape", "Identity", "Constant"}
FLOAT_OPS = _COMMON | {"Gemm", "MatMul", "Add"}
QUANT_OPS = FLOAT_OPS | {"QuantizeLinear", "DequantizeLinear", "QLinearMatMul"}
MS_OPS = {"QGemm", "QLinearAdd"}  # com.microsoft domain
_QOPERATOR_MARKERS = {"QLinearMatMul", "QGemm", "QLinearAdd"}
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32"}
#: onnx >= 1.20 writes IR version 14, which onnxruntime 1.31 refuses
ORT_MAX_IR_VERSION = 10


def _fail(msg: str):
    raise ZakidError(" ".join(msg.split()))


# --------------------------------------------------------------------------------------------------------
# public entry point


def load_model(path, calibration=None) -> Graph:
    """Import an ONNX MLP as an integer IR graph, bit-exact with onnxruntime (see the module docstring).

    ``calibration``: for a float model, an array whose first axis indexes rows, each of the input's shape
    (or that shape without a leading batch 1). It is ignored (and noted in ``graph.meta``) for a model that
    is already quantized.
    """
    try:
        return _load_model(path, calibration)
    except ZakidError:
        raise
    except Exception as e:  # onnx / onnxruntime / numpy errors must not escape raw
        _fail(f"could not import {path}: {type(e).__name__}: {e}. This is probably a bug in zakid-hw's "
              "importer; please report it with the model attached.")


def _load_model(path, calibration) -> Graph:
    model = read_model(path)
    check_interface(model)
    fmt = detect_format(model)
    check_ops(model, fmt)
    if fmt == "float":
        from .quantize_float import quantize_float

        if calibration is None:
            _fail(f"{path} is a float model (no QuantizeLinear/QLinearMatMul/QGemm): pass calibration data "
                  "(an array of typical input rows) so that it can be quantized, or quantize it yourself "
                  "with onnxruntime.quantization.quantize_static.")
        qmodel, scheme = quantize_float(model, calibration)
        graph = Importer(qmodel, "qoperator").run()
        graph.meta.update(source_format="float+calibration", quantization=scheme)
    else:
        if fmt == "qdq" or any(n.op_type in ("MatMul", "Gemm") for n in model.graph.node):
            check_ort_fuses(model)
        graph = Importer(model, fmt).run()
        if calibration is not None:
            graph.meta["notes"].append("calibration data ignored: the model is already quantized")
    graph.meta["source_path"] = str(path)
    graph.meta["warnings"] = u8s8_warnings(graph, graph.meta.get("quantization", {}).get("format", fmt))
    return graph


# --------------------------------------------------------------------------------------------------------
# reading and checking the file


def read_model(path):
    """Parse an ONNX file, loading external tensor data only from inside the model's folder."""
    import onnx
    from google.protobuf.message import DecodeError

    path = Path(path)
    if not path.is_file():
        _fail(f"model file {path} does not exist or is not a file.")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError, OSError) as e:
        _fail(f"{path} is not a readable ONNX model (truncated or not ONNX at all): {e}.")
    g = model.graph
    if not model.ir_version or not g.node or not g.output:
        _fail(f"{path} is not a usable ONNX model: it has no ir_version, no nodes or no graph outputs "
              "(a file that is not ONNX or is truncated often parses as such an empty model).")
    folder = path.resolve().parent
    external = [t for t in _all_tensors(g) if t.data_location == onnx.TensorProto.EXTERNAL]
    for t in external:
        loc = {e.key: e.value for e in t.external_data}.get("location", "")
        target = (folder / loc).resolve()
        if not loc or os.path.isabs(loc) or os.path.commonpath([folder, target]) != str(folder):
            _fail(f"tensor {t.name!r} of {path} keeps its data in {loc!r}, outside the model's folder "
                  f"{folder}; refusing to read it. Move the data file next to the model.")
        if not target.is_file():
            _fail(f"tensor {t.name!r} of {path} keeps its data in {loc!r}, which does not exist in {folder}.")
    if external:
        try:
            onnx.load_external_data_for_model(model, str(folder))
        except Exception as e:
            _fail(f"could not read the external tensor data of {path}: {e}.")
    _check_wiring(model, path)
    return model


def _all_tensors(graph):
    yield from graph.initializer
    for n in graph.node:
        for a in n.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors


def _check_wiring(model, path):
    """Every node input must be produced before it is used: catches truncated or garbled files."""
    g = model.graph
    known = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    for n in g.node:
        missing = [i for i in n.input if i not in known]
        if missing:
            _fail(f"node {n.name!r} ({n.op_type}) of {path} reads {missing}, which no earlier node, input or "
                  "initializer provides: the file is truncated, corrupt or not topologically sorted.")
        known.update(n.output)
    lost = [o.name for o in g.output if o.name not in known]
    if lost:
        _fail(f"graph output(s) {lost} of {path} are produced by no node: the file is truncated or corrupt.")


def _graph_inputs(model):
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def static_shape(value_info, what: str) -> tuple[int, ...]:
    """The static shape of a graph input/output, or a ZakidError naming the dynamic dimension."""
    t = value_info.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        _fail(f"{what} {value_info.name!r} has no shape in the model; give it a static shape such as "
              "(1, 64).")
    dims = []
    for i, d in enumerate(t.tensor_type.shape.dim):
        if d.HasField("dim_value") and d.dim_value > 0:
            dims.append(int(d.dim_value))
        else:
            sym = d.dim_param or "unknown"
            _fail(f"{what} {value_info.name!r} has a dynamic dimension {i} ({sym!r}); zakid-hw needs a static "
                  "shape. Fix it, e.g. python -m onnxruntime.tools.make_dynamic_shape_fixed --dim_param "
                  f"{sym} --dim_value 1 in.onnx out.onnx.")
    return tuple(dims)


def check_interface(model):
    """Exactly one graph input (float32/int8/uint8, static shape) and one graph output."""
    ins, outs = _graph_inputs(model), list(model.graph.output)
    if len(ins) != 1:
        _fail(f"the model has {len(ins)} graph inputs ({[i.name for i in ins]}); zakid-hw supports exactly "
              "one input.")
    if len(outs) != 1:
        _fail(f"the model has {len(outs)} graph outputs ({[o.name for o in outs]}); zakid-hw supports "
              "exactly one output.")
    elem = ins[0].type.tensor_type.elem_type
    if _ONNX_DTYPES.get(elem) not in ("float32", "int8", "uint8"):
        _fail(f"graph input {ins[0].name!r} has element type {elem}; only float32, int8 and uint8 inputs "
              "are supported.")
    static_shape(ins[0], "graph input")


def detect_format(model) -> str:
    ops = {n.op_type for n in model.graph.node}
    if ops & _QOPERATOR_MARKERS:
        return "qoperator"
    if ops & {"QuantizeLinear", "DequantizeLinear"}:
        return "qdq"
    return "float"


def check_ops(model, fmt: str):
    """Raise one ZakidError listing every node whose op (and domain) is not supported."""
    allowed = FLOAT_OPS if fmt == "float" else QUANT_OPS
    bad = []
    for n in model.graph.node:
        domain = n.domain if n.domain not in ("", "ai.onnx") else ""
        ok = (domain == "" and n.op_type in allowed) or (
            fmt != "float" and domain == "com.microsoft" and n.op_type in MS_OPS)
        if not ok:
            bad.append(f"{n.name or '<unnamed>'!r} ({domain + '.' if domain else ''}{n.op_type})")
    if bad:
        supported = sorted(allowed | (MS_OPS if fmt != "float" else set()))
        _fail(f"the model contains {len(bad)} unsupported node(s): {', '.join(bad)}. zakid-hw imports MLPs "
              f"({fmt} form) built from {', '.join(supported)}.")


# --------------------------------------------------------------------------------------------------------
# onnxruntime helpers


def ort_session(model, optimized_model_filepath=None):
    """An onnxruntime CPU session (default optimisation level) for an in-memory model, with its IR version
    lowered to one onnxruntime reads."""
    import onnxruntime as ort

    m = type(model)()
    m.CopyFrom(model)
    m.ir_version = min(m.ir_version, ORT_MAX_IR_VERSION)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if optimized_model_filepath:
        opts.optimized_model_filepath = str(optimized_model_filepath)
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def check_ort_fuses(model):
    """Refuse float MatMul/Gemm nodes that onnxruntime (default optimisation level) leaves in float: their
    float arithmetic is not the integer kernel the IR reproduces."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="zakid_ort_") as tmp:
        try:
            ort_session(model, os.path.join(tmp, "optimized.onnx"))
        except Exception as e:
            _fail(f"onnxruntime cannot load the model, so there is no reference to be bit-exact with: {e}")
        opt = onnx.load(os.path.join(tmp, "optimized.onnx"))
    left = [f"{n.name!r} ({n.op_type})" for n in opt.graph.node
            if n.op_type in ("MatMul", "Gemm") and n.domain in ("", "ai.onnx")]
    if left:
        _fail(f"onnxruntime runs {', '.join(left)} in float at its default optimisation level (it does not "
              "fuse them with their QuantizeLinear/DequantizeLinear into an integer kernel), so no integer "
              "accelerator can match it bit for bit. Quantize the layer fully: DequantizeLinear on input and "
              "weight (and an int32 bias for Gemm, with alpha=1 and beta=1) and a QuantizeLinear right after it.")


@functools.lru_cache(maxsize=None)
def ort_u8s8_saturates() -> bool:
    """Does this onnxruntime build on this CPU saturate sums of two adjacent u8 x s8 products to int16?

    MLAS's u8 x s8 GEMM on x86 CPUs without VNNI uses vpmaddubsw, which adds the products of activation
    bytes k and k+1 (k even) with int16 saturation; onnxruntime documents the resulting errors and suggests
    7-bit weights (``reduce_range``). Probe: 255*127 + 255*127 = 64770 saturates to 32767."""
    from onnx import TensorProto, helper, numpy_helper

    c = {"s1": np.float32(1), "z8": np.uint8(0), "w": np.full((2, 1), 127, np.int8), "wz": np.int8(0),
         "ys": np.float32(256)}
    node = helper.make_node("QLinearMatMul", ["a", "s1", "z8", "w", "s1", "wz", "ys", "z8"], ["y"])
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("a", TensorProto.UINT8, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 1])],
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in c.items()])
    sess = ort_session(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    y = int(sess.run(None, {"a": np.full((1, 2), 255, np.uint8)})[0].reshape(()))
    return y != 253  # exact: rint(64770 / 256) = 253; saturated: rint(32767 / 256) = 128


def u8s8_warnings(graph: Graph, fmt: str) -> list[str]:
    """Name the layers where onnxruntime on this machine may differ from exact integer arithmetic (the IR)
    because of int16 pair saturation: int8 weights with uint8 activations, or with int8 activations in a
    QDQ model (onnxruntime converts those to uint8 on x86)."""
    risky = []
    for d in graph.nodes_of("dense"):
        w, x = np.asarray(d.attrs["weight"]), graph.tensors[d.inputs[0]]
        if w.dtype != np.int8 or not (x.dtype == "uint8" or (x.dtype == "int8" and fmt == "qdq")):
            continue
        w = np.pad(w.astype(np.int64), ((0, 0), (0, w.shape[1] % 2)))
        pos, neg = np.maximum(w, 0), np.minimum(w, 0)
        if 255 * (pos[:, 0::2] + pos[:, 1::2]).max() > 32767 or 255 * (neg[:, 0::2] + neg[:, 1::2]).min() < -32768:
            risky.append(d.name)
    if not risky or not ort_u8s8_saturates():
        return []
    return [" ".join(f"""onnxruntime on this CPU computes u8 x s8 products with int16 saturation of adjacent pairs
        (x86 without VNNI), so for layer(s) {', '.join(map(repr, risky))} it can differ from the exact integer
        arithmetic of this graph (which is what the FPGA computes). Quantize with int8 activations in QOperator
        format, or with 7-bit weights (quantize_static(..., reduce_range=True)), to make onnxruntime
        exact.""".split())]


# --------------------------------------------------------------------------------------------------------
# values of ONNX tensors during lowering


@dataclass
class IRValue:
    """An ONNX tensor that exists in the IR graph under ``name``."""
    name: str


@dataclass
class DQValue:
    """DequantizeLinear of an IR integer tensor (kept lazy: only materialized if it reaches the output).
    ``dq_node`` is the ONNX DequantizeLinear node, or None after a reshape."""
    src: str
    scale: np.float32
    zp: int
    dq_node: object = None


@dataclass
class DQConst:
    """DequantizeLinear of a constant (weights, biases)."""
    q: np.ndarray
    scale: np.ndarray
    zp: np.ndarray
    axis: int
    dq_node: object = None


@dataclass
class AccValue:
    """Float result of MatMul/Gemm on dequantized inputs (QDQ), to be requantized as onnxruntime's fused
    kernel does: real value ``acc * alpha * x_scale * w_scale``."""
    acc: str
    x_scale: np.float32
    w_scale: np.ndarray
    alpha: np.float32


@dataclass
class Island:
    """Float elementwise function of the IR integer tensor ``src`` (ONNX name ``src_onnx``) computed by the
    ONNX ``nodes``; resolved by tabulation when it becomes integer again."""
    src: str
    src_onnx: str
    nodes: list = field(default_factory=list)


def _scalar(a, what: str):
    a = np.asarray(a)
    if a.size != 1:
        _fail(f"{what} must be a single value (per-tensor), got shape {a.shape}.")
    return a.reshape(()).item()


# --------------------------------------------------------------------------------------------------------
# the lowering


class Importer:
    """Lower the nodes of one quantized ONNX graph to IR nodes, one handler per ONNX op (``LOWER``)."""

    def __init__(self, model, fmt: str):
        from onnx import numpy_helper

        self.model, self.fmt = model, fmt
        self.consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.vals: dict[str, object] = {}
        self.notes: list[str] = []
        self.names: set[str] = set()
        inp, out = _graph_inputs(model)[0], model.graph.output[0]
        self.graph = Graph(name=model.graph.name or "model", inputs=[inp.name], outputs=[out.name],
                           tensors={}, nodes=[])
        dtype = _ONNX_DTYPES[inp.type.tensor_type.elem_type]
        self._tensor(inp.name, static_shape(inp, "graph input"), dtype)
        self.vals[inp.name] = IRValue(inp.name)

    # ---- small utilities

    def run(self) -> Graph:
        for node in self.model.graph.node:
            self.current = node
            LOWER[node.op_type](self, node)
        self._finish_output()
        ops = [n.op_type for n in self.model.graph.node]
        self.graph.meta = {
            "source_format": self.fmt,
            "opset": {o.domain or "ai.onnx": o.version for o in self.model.opset_import},
            "producer": f"{self.model.producer_name} {self.model.producer_version}".strip(),
            "onnx_ops": {op: ops.count(op) for op in sorted(set(ops))},
            "notes": self.notes,
        }
        return self.graph

    def where(self, node=None) -> str:
        node = node or self.current
        return f"node {node.name or '<unnamed>'!r} ({node.op_type})"

    def _tensor(self, name, shape, dtype, scale=None, zp=None) -> str:
        if name in self.graph.tensors:
            _fail(f"tensor name {name!r} is produced twice in the model ({self.where()}).")
        self.graph.tensors[name] = Tensor(name, tuple(int(s) for s in shape), dtype,
                                          None if scale is None else float(np.float32(scale)),
                                          None if zp is None else int(zp))
        return name

    def _node_name(self, base: str) -> str:
        name, i = base or "node", 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def _emit(self, op, hint, inputs, outputs, /, **attrs) -> Node:
        node = Node(op, self._node_name(hint), list(inputs), list(outputs), attrs)
        self.graph.nodes.append(node)
        return node

    def _fresh(self, base: str) -> str:
        name, i = base, 1
        while name in self.graph.tensors or name in self.vals or name in self.consts:
            name, i = f"{base}_{i}", i + 1
        return name

    def const(self, name, what="input"):
        if name not in self.consts:
            _fail(f"{self.where()}: its {what} {name!r} must be a constant (initializer), but it is computed "
                  "at run time.")
        return self.consts[name]

    def opt_const(self, node, i, default=None):
        return self.const(node.input[i]) if len(node.input) > i and node.input[i] else default

    def val(self, name):
        if name in self.consts:
            return self.consts[name]
        if name not in self.vals:
            _fail(f"{self.where()} reads {name!r}, which an earlier, fused or removed part of the graph "
                  "consumed; zakid-hw supports chain-shaped MLPs only.")
        return self.vals[name]

    def int_input(self, name, what="input") -> Tensor:
        v = self.val(name)
        if isinstance(v, IRValue) and self.graph.tensors[v.name].dtype in ("int8", "uint8"):
            return self.graph.tensors[v.name]
        _fail(f"{self.where()}: its {what} {name!r} must be an int8/uint8 tensor computed by the graph, got "
              f"{self._describe(v)}.")

    def _describe(self, v) -> str:
        if isinstance(v, IRValue):
            return f"a {self.graph.tensors[v.name].dtype} tensor"
        if isinstance(v, np.ndarray):
            return "a constant"
        return {DQValue: "a dequantized tensor", DQConst: "a dequantized constant",
                AccValue: "an unquantized MatMul/Gemm result", Island: "a float elementwise result"
                }.get(type(v), type(v).__name__)

    def attrs(self, node) -> dict:
        from onnx import helper

        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    # ---- layer building blocks

    def emit_dense(self, node, x: Tensor, x_zp: int, w_nk, w_zp, bias) -> str:
        """IR dense on integer weights ``w_nk`` (N, K); returns the int32 accumulator tensor name."""
        n_out, k = w_nk.shape
        if x.shape[-1] != k:
            _fail(f"{self.where(node)}: input {x.name!r} has {x.shape[-1]} features but the weight expects {k}.")
        w_zp = np.asarray(w_zp).astype(np.int64)
        w_zp = int(w_zp.reshape(-1)[0]) if np.all(w_zp == w_zp.reshape(-1)[0]) else w_zp.reshape(-1)
        if not np.isscalar(w_zp) and w_zp.shape != (n_out,):
            _fail(f"{self.where(node)}: weight zero point has {w_zp.size} values for {n_out} output channels.")
        bias = np.zeros(n_out, np.int32) if bias is None else np.broadcast_to(
            np.asarray(bias, np.int32).reshape(-1), (n_out,)).copy()
        acc = self._tensor(self._fresh(f"{node.name or node.op_type}_acc"), (*x.shape[:-1], n_out), "int32")
        self._emit("dense", node.name or node.op_type, [x.name], [acc], weight=np.ascontiguousarray(w_nk),
                   w_zp=w_zp, x_zp=int(x_zp), bias=bias)
        return acc

    def emit_requantize(self, node, acc: str, out: str, x_scale, w_scale, y_scale, y_zp, y_dtype, alpha=1.0):
        """IR requantize with onnxruntime's float32 multiplier ``f32(f32(f32(alpha*xs)*ws)/ys)``."""
        mult = multiplier(x_scale, w_scale, y_scale, alpha)
        n_out = self.graph.tensors[acc].shape[-1]
        if mult.size not in (1, n_out):
            _fail(f"{self.where(node)}: {mult.size} weight scales for {n_out} output channels.")
        if not np.all(mult > 0) or not np.all(np.isfinite(mult)):
            _fail(f"{self.where(node)}: scales must be positive and finite (multiplier {mult}).")
        qmin, qmax = dtype_range(y_dtype)
        self._tensor(out, self.graph.tensors[acc].shape, y_dtype, y_scale, y_zp)
        self._emit("requantize", f"{node.name or node.op_type}_requant", [acc], [out],
                   multiplier=mult.reshape(()) if mult.size == 1 else mult.reshape(-1),
                   zero_point=int(y_zp), dtype=y_dtype, qmin=qmin, qmax=qmax)
        self.vals[out] = IRValue(out)

    # ---- tabulated elementwise islands

    def resolve_island(self, island: Island, out: str, out_dtype: str, scale, zp):
        """Tabulate ``island`` (ending in ONNX tensor ``out``) with onnxruntime and lower it."""
        src = self.graph.tensors[island.src]
        table = tabulate(self.model, island, src, out, out_dtype, self.consts, self.where())
        lo = dtype_range(src.dtype)[0]
        codes = np.arange(lo, lo + table.shape[0])[:, None]
        names = ", ".join(repr(n.name or n.op_type) for n in island.nodes)
        if out_dtype == src.dtype and np.array_equal(table, np.broadcast_to(codes, table.shape)):
            self.vals[out] = IRValue(island.src)  # identity
            self.notes.append(f"{names}: identity on the integer codes, removed")
            return
        z = int(table[0, 0])
        if out_dtype == src.dtype and np.array_equal(table, np.broadcast_to(np.maximum(codes, z), table.shape)):
            self._tensor(out, src.shape, out_dtype, scale, zp)
            self._emit("relu", island.nodes[-1].name or "relu", [island.src], [out], zero_point=z)
            self.vals[out] = IRValue(out)
            self.notes.append(f"{names}: a clamp at code {z}, lowered to relu")
            return
        self.compose_threshold(island.src, table, out, out_dtype, scale, zp)
        self.notes.append(f"{names}: tabulated with onnxruntime and merged into threshold node for {out!r}")

    def compose_threshold(self, src: str, table, out: str, out_dtype: str, scale, zp):
        """Replace the IR chain dense -> (requantize|relu|threshold)* -> ``src`` followed by the code map
        ``table`` (rows: codes of src, columns: channels) by dense -> threshold -> ``out``."""
        chain, t, users = [], src, 0
        while True:  # walk up from src to the dense layer; every tensor on the way has a single user
            p = self.graph.producer(t)
            if p is None or p.op not in ("dense", "requantize", "relu", "threshold"):
                _fail(f"{self.where()}: this elementwise operation on {src!r} can only follow a MatMul/Gemm "
                      "layer (it is merged into that layer's requantization), but its input comes from "
                      f"{'the graph input' if p is None else p.op + ' ' + repr(p.name)}.")
            if len(self.graph.consumers(t)) != users:
                _fail(f"{self.where()}: tensor {t!r} is used more than once; cannot merge {src!r} into its layer.")
            if p.op == "dense":
                break
            chain.insert(0, p)
            t, users = p.inputs[0], 1
        dense = p
        lo_code = dtype_range(self.graph.tensors[src].dtype)[0]
        n_ch = table.shape[1]
        cols = np.arange(n_ch)

        def g(acc):  # the exact integer function acc -> out code, per channel (last axis)
            v = acc
            for n in chain:
                v = golden.run_node(n, v)
            return table[np.asarray(v, np.int64) - lo_code, cols]

        acc_lo, acc_hi = dense_bounds(dense, self.graph.tensors[dense.inputs[0]].dtype)
        thresholds, base = staircase(g, acc_lo, acc_hi)
        for n in chain:
            self.graph.nodes.remove(n)
            for o in n.outputs:
                del self.graph.tensors[o]
                self.vals = {k: v for k, v in self.vals.items() if not (isinstance(v, IRValue) and v.name == o)}
        self._tensor(out, self.graph.tensors[dense.outputs[0]].shape, out_dtype, scale, zp)
        self._emit("threshold", f"{dense.name}_threshold", [dense.outputs[0]], [out],
                   thresholds=thresholds, base=int(base), dtype=out_dtype)
        self.vals[out] = IRValue(out)

    # ---- ONNX op handlers

    def quantize_linear(self, node):
        x = self.val(node.input[0])
        a = self.attrs(node)
        scale = np.float32(_scalar(self.const(node.input[1], "scale"), f"{self.where()}: y_scale"))
        zp_arr = self.opt_const(node, 2)
        if zp_arr is not None:
            dtype = str(zp_arr.dtype)
            zp = int(_scalar(zp_arr, f"{self.where()}: y_zero_point"))
        else:
            dtype, zp = _ONNX_DTYPES.get(a.get("output_dtype") or 2), 0  # ONNX default: uint8
        if dtype not in ("int8", "uint8"):
            _fail(f"{self.where()}: quantizes to {dtype}; only int8 and uint8 are supported.")
        out = node.output[0]
        if isinstance(x, IRValue) and self.graph.tensors[x.name].dtype == "float32":
            t = self.graph.tensors[x.name]
            self._tensor(out, t.shape, dtype, scale, zp)
            self._emit("quantize", node.name or "quantize", [x.name], [out], scale=scale, zero_point=zp,
                       dtype=dtype)
            self.vals[out] = IRValue(out)
        elif isinstance(x, AccValue):
            self.emit_requantize(node, x.acc, out, x.x_scale, x.w_scale, scale, zp, dtype, x.alpha)
        elif isinstance(x, DQValue):
            island = self._island_from(x)
            island.nodes.append(node)
            self.resolve_island(island, out, dtype, scale, zp)
        elif isinstance(x, Island):
            x.nodes.append(node)
            self.resolve_island(x, out, dtype, scale, zp)
        else:
            _fail(f"{self.where()}: cannot quantize {self._describe(x)}.")

    def _island_from(self, dq: DQValue) -> Island:
        if dq.dq_node is None:
            _fail(f"{self.where()}: float operations on a reshaped dequantized tensor are not supported.")
        return Island(dq.src, dq.dq_node.input[0], [dq.dq_node])

    def dequantize_linear(self, node):
        a = self.attrs(node)
        scale = np.asarray(self.const(node.input[1], "scale"), np.float32)
        src = node.input[0]
        zp = self.opt_const(node, 2)
        if src in self.consts:
            q = self.consts[src]
            zp = np.zeros(scale.shape, q.dtype) if zp is None else zp
            self.vals[node.output[0]] = DQConst(q, scale, np.asarray(zp), int(a.get("axis", 1)), node)
            return
        t = self.int_input(src)
        self.vals[node.output[0]] = DQValue(
            t.name, np.float32(_scalar(scale, f"{self.where()}: x_scale of an activation")),
            0 if zp is None else int(_scalar(zp, f"{self.where()}: x_zero_point of an activation")), node)

    def _weights(self, node, w, scale, zp, trans: bool, what="weight"):
        """(N, K) integer weights and per-channel-or-scalar scale/zp from a (K, N) or, with trans, (N, K)
        constant."""
        if w.dtype not in (np.int8, np.uint8) or w.ndim != 2:
            _fail(f"{self.where(node)}: its {what} must be a 2-D int8/uint8 constant, got {w.dtype} {w.shape}.")
        w_nk = w if trans else w.T
        n_out = w_nk.shape[0]
        for name, arr in (("scale", scale), ("zero point", zp)):
            if np.asarray(arr).size not in (1, n_out):
                _fail(f"{self.where(node)}: {what} {name} has {np.asarray(arr).size} values; expected 1 or one "
                      f"per output channel ({n_out}).")
        return w_nk, np.asarray(scale, np.float32).reshape(-1), np.asarray(zp).astype(np.int64).reshape(-1)

    def qlinear_matmul(self, node):
        x = self.int_input(node.input[0])
        xs, xzp = (self.const(node.input[i]) for i in (1, 2))
        w, ws, wzp = (self.const(node.input[i], "weight") for i in (3, 4, 5))
        ys, yzp = self.const(node.input[6]), self.const(node.input[7])
        w_nk, ws, wzp = self._weights(node, w, ws, wzp, trans=False)
        acc = self.emit_dense(node, x, _scalar(xzp, "a_zero_point"), w_nk, wzp, None)
        self.emit_requantize(node, acc, node.output[0], np.float32(_scalar(xs, "a_scale")), ws,
                             np.float32(_scalar(ys, "y_scale")), _scalar(yzp, "y_zero_point"), str(yzp.dtype))

    def qgemm(self, node):
        a = self.attrs(node)
        if a.get("transA", 0):
            _fail(f"{self.where()}: transA=1 is not supported (the input must be (1, K)).")
        alpha = np.float32(a.get("alpha", 1.0))
        x = self.int_input(node.input[0])
        xs, xzp = self.const(node.input[1]), self.const(node.input[2])
        w, ws, wzp = (self.const(node.input[i], "weight") for i in (3, 4, 5))
        w_nk, ws, wzp = self._weights(node, w, ws, wzp, trans=bool(a.get("transB", 0)))
        bias = self.opt_const(node, 6)
        if bias is not None and (bias.dtype != np.int32 or bias.size not in (1, w_nk.shape[0])):
            _fail(f"{self.where()}: bias C must be int32 with 1 or N values, got {bias.dtype} {bias.shape}.")
        acc = self.emit_dense(node, x, _scalar(xzp, "a_zero_point"), w_nk, wzp, bias)
        xs = np.float32(_scalar(xs, "a_scale"))
        if len(node.input) > 7 and node.input[7]:
            ys, yzp = self.const(node.input[7]), self.opt_const(node, 8)
            if yzp is None:
                _fail(f"{self.where()}: y_scale without y_zero_point is not supported.")
            self.emit_requantize(node, acc, node.output[0], xs, ws, np.float32(_scalar(ys, "y_scale")),
                                 _scalar(yzp, "y_zero_point"), str(yzp.dtype), alpha)
        else:  # float output: f32(acc) * f32(f32(alpha * a_scale) * b_scale)
            self._emit_float_output(node, acc, multiplier(xs, ws, np.float32(1), alpha))

    def _emit_float_output(self, node, acc, scale):
        if scale.size != 1:
            _fail(f"{self.where(node)}: a float output with per-channel weight scales is not supported; "
                  "quantize the output (QuantizeLinear) or use per-tensor weight scales.")
        out = node.output[0]
        self._tensor(out, self.graph.tensors[acc].shape, "float32")
        self._emit("dequantize", f"{node.name or node.op_type}_scale", [acc], [out],
                   scale=np.float32(scale.reshape(())), zero_point=0)
        self.vals[out] = IRValue(out)

    def _dq_operands(self, node, x_name, w_name):
        x, w = self.val(x_name), self.val(w_name)
        if not isinstance(x, DQValue) or not isinstance(w, DQConst):
            _fail(f"{self.where(node)}: a float {node.op_type} must read a DequantizeLinear of an activation "
                  f"and a DequantizeLinear of a constant weight (QDQ form); got {self._describe(x)} and "
                  f"{self._describe(w)}. Float layers in a quantized model are not supported.")
        return x, w

    def matmul(self, node):
        x, w = self._dq_operands(node, node.input[0], node.input[1])
        if w.scale.size > 1 and w.axis not in (1, -1):
            _fail(f"{self.where()}: per-channel weight scales must run along the output axis (axis=1).")
        w_nk, ws, wzp = self._weights(node, w.q, w.scale, w.zp, trans=False)
        acc = self.emit_dense(node, self.graph.tensors[x.src], x.zp, w_nk, wzp, None)
        self.vals[node.output[0]] = AccValue(acc, x.scale, ws, np.float32(1))

    def gemm(self, node):
        a = self.attrs(node)
        if a.get("transA", 0):
            _fail(f"{self.where()}: transA=1 is not supported (the input must be (1, K)).")
        x, w = self._dq_operands(node, node.input[0], node.input[1])
        trans = bool(a.get("transB", 0))
        if w.scale.size > 1 and w.axis != (0 if trans else 1):
            _fail(f"{self.where()}: per-channel weight scales must run along the output-channel axis.")
        w_nk, ws, wzp = self._weights(node, w.q, w.scale, w.zp, trans=trans)
        bias = None
        if len(node.input) > 2 and node.input[2]:
            b = self.val(node.input[2])
            expect = (np.float32(x.scale) * ws).astype(np.float32)
            if not (isinstance(b, DQConst) and b.q.dtype == np.int32 and not np.any(b.zp)
                    and np.allclose(np.broadcast_to(b.scale.reshape(-1), expect.shape), expect, rtol=1e-6)):
                _fail(f"{self.where()}: its bias C must be a DequantizeLinear of an int32 constant with zero "
                      "point 0 and scale input_scale * weight_scale (as onnxruntime's quantizer writes it).")
            if a.get("beta", 1.0) != 1.0:
                _fail(f"{self.where()}: beta={a['beta']} is not supported with a quantized bias.")
            bias = b.q
        acc = self.emit_dense(node, self.graph.tensors[x.src], x.zp, w_nk, wzp, bias)
        self.vals[node.output[0]] = AccValue(acc, x.scale, ws, np.float32(a.get("alpha", 1.0)))

    def qlinear_add(self, node):
        a_name, b_name = node.input[0], node.input[3]
        if b_name not in self.consts and a_name in self.consts:
            a_name, b_name = b_name, a_name
        if b_name not in self.consts:
            _fail(f"{self.where()}: adds two computed tensors (a residual connection); only the addition of "
                  "a constant (a bias) is supported.")
        t = self.int_input(a_name)
        c_zp = self.opt_const(node, 7, np.zeros((), t.dtype))
        self._check_per_channel_const(node, self.consts[b_name], t)
        self.resolve_island(Island(t.name, a_name, [node]), node.output[0], str(c_zp.dtype),
                            np.float32(_scalar(self.const(node.input[6]), "C_scale")), _scalar(c_zp, "C_zp"))

    def _check_per_channel_const(self, node, arr, t: Tensor):
        """An elementwise constant must vary along the last (channel) axis only."""
        arr = np.asarray(arr)
        shape = (1,) * (len(t.shape) - arr.ndim) + arr.shape
        if len(shape) > len(t.shape) or any(s != 1 for s in shape[:-1]) or shape[-1] not in (1, t.shape[-1]):
            _fail(f"{self.where(node)}: its constant operand has shape {arr.shape}; only per-channel constants "
                  f"(broadcast along the last axis of {t.shape}) are supported.")

    def add(self, node):
        x, y = self.val(node.input[0]), self.val(node.input[1])
        if isinstance(x, (np.ndarray, DQConst)):
            x, y = y, x
        if isinstance(x, (DQValue, Island)) and isinstance(y, (np.ndarray, DQConst)):
            island = x if isinstance(x, Island) else self._island_from(x)
            self._check_per_channel_const(node, y.q if isinstance(y, DQConst) else y,
                                          self.graph.tensors[island.src])
            if isinstance(y, DQConst):
                island.nodes.append(y.dq_node)
            island.nodes.append(node)
            self.vals[node.output[0]] = island
            return
        if isinstance(x, AccValue) or isinstance(y, AccValue):
            _fail(f"{self.where()}: a float Add right after MatMul/Gemm without QuantizeLinear between them is "
                  "not fused by onnxruntime into an integer kernel; put the bias into a Gemm (int32 bias) or "
                  "quantize the MatMul output first.")
        _fail(f"{self.where()}: adds {self._describe(x)} and {self._describe(y)}; only a constant bias added "
              "to a quantized layer output is supported.")

    def relu(self, node):
        x = self.val(node.input[0])
        out = node.output[0]
        if isinstance(x, IRValue) and self.graph.tensors[x.name].dtype in ("int8", "uint8"):
            t = self.graph.tensors[x.name]  # ONNX Relu on integers: max(q, 0)
            self._tensor(out, t.shape, t.dtype, t.scale, t.zero_point)
            self._emit("relu", node.name or "relu", [x.name], [out], zero_point=0)
            self.vals[out] = IRValue(out)
        elif isinstance(x, (DQValue, Island)):
            island = x if isinstance(x, Island) else self._island_from(x)
            island.nodes.append(node)
            self.vals[out] = island
        else:
            _fail(f"{self.where()}: Relu on {self._describe(x)} is not supported; in a quantized model Relu "
                  "must act on a quantized tensor (onnxruntime's quantizer usually folds it away).")

    def _reshape_to(self, node, shape):
        x = self.val(node.input[0])
        out = node.output[0]
        if isinstance(x, np.ndarray):
            self.consts[out] = x.reshape(shape)
            return
        if isinstance(x, DQValue):
            t = self.graph.tensors[x.src]
            name = self._fresh(out + "_q")
            self._tensor(name, shape, t.dtype, t.scale, t.zero_point)
            self._emit("reshape", node.name or "reshape", [x.src], [name], shape=tuple(shape))
            self.vals[out] = DQValue(name, x.scale, x.zp)
            return
        if not isinstance(x, IRValue):
            _fail(f"{self.where()}: cannot reshape {self._describe(x)}.")
        t = self.graph.tensors[x.name]
        if int(np.prod(shape)) != int(np.prod(t.shape)):
            _fail(f"{self.where()}: cannot reshape {t.shape} to {tuple(shape)}.")
        self._tensor(out, shape, t.dtype, t.scale, t.zero_point)
        self._emit("reshape", node.name or "reshape", [x.name], [out], shape=tuple(shape))
        self.vals[out] = IRValue(out)

    def _shape_of(self, name):
        v = self.val(name)
        if isinstance(v, np.ndarray):
            return v.shape
        if isinstance(v, DQValue):
            return self.graph.tensors[v.src].shape
        if isinstance(v, IRValue):
            return self.graph.tensors[v.name].shape
        _fail(f"{self.where()}: cannot reshape {self._describe(v)}.")

    def flatten(self, node):
        shape = self._shape_of(node.input[0])
        axis = self.attrs(node).get("axis", 1)
        axis = axis + len(shape) if axis < 0 else axis
        self._reshape_to(node, (int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))))

    def reshape(self, node):
        shape_in = self._shape_of(node.input[0])
        spec = [int(s) for s in self.const(node.input[1], "shape")]
        allow_zero = self.attrs(node).get("allowzero", 0)
        out = [shape_in[i] if s == 0 and not allow_zero else s for i, s in enumerate(spec)]
        if out.count(-1) == 1:
            known = int(np.prod([s for s in out if s != -1]))
            out[out.index(-1)] = int(np.prod(shape_in)) // max(known, 1)
        self._reshape_to(node, tuple(out))

    def identity(self, node):
        self.vals[node.output[0]] = self.val(node.input[0])
        if node.input[0] in self.consts:
            self.consts[node.output[0]] = self.consts[node.input[0]]

    def constant(self, node):
        from onnx import numpy_helper

        a = {x.name: x for x in node.attribute}
        if "value" not in a:
            _fail(f"{self.where()}: only Constant nodes with a 'value' tensor are supported.")
        self.consts[node.output[0]] = numpy_helper.to_array(a["value"].t)

    # ---- graph output

    def _finish_output(self):
        out = self.graph.outputs[0]
        self.current = next((n for n in self.model.graph.node if out in n.output), None)
        v = self.vals.get(out)
        if isinstance(v, DQValue):
            t = self.graph.tensors[v.src]
            self._tensor(out, t.shape, "float32")
            self._emit("dequantize", getattr(self.current, "name", "") or "dequantize", [v.src], [out],
                       scale=v.scale, zero_point=v.zp)
        elif isinstance(v, AccValue):
            self._emit_float_output(self.current, v.acc, multiplier(v.x_scale, v.w_scale, np.float32(1),
                                                                    v.alpha))
        elif isinstance(v, IRValue) and v.name != out:  # output is an alias (Identity, removed island)
            t = self.graph.tensors[v.name]
            self._tensor(out, t.shape, t.dtype, t.scale, t.zero_point)
            self._emit("reshape", "output", [v.name], [out], shape=t.shape)
        elif not isinstance(v, IRValue):
            _fail(f"graph output {out!r} is {self._describe(v) if v is not None else 'a constant'}; it must "
                  "be a quantized tensor or a DequantizeLinear of one.")


#: ONNX op type -> lowering handler
LOWER = {
    "QuantizeLinear": Importer.quantize_linear,
    "DequantizeLinear": Importer.dequantize_linear,
    "QLinearMatMul": Importer.qlinear_matmul,
    "QGemm": Importer.qgemm,
    "QLinearAdd": Importer.qlinear_add,
    "MatMul": Importer.matmul,
    "Gemm": Importer.gemm,
    "Add": Importer.add,
    "Relu": Importer.relu,
    "Flatten": Importer.flatten,
    "Reshape": Importer.reshape,
    "Identity": Importer.identity,
    "Constant": Importer.constant,
}


# --------------------------------------------------------------------------------------------------------
# arithmetic helpers


def multiplier(x_scale, w_scale, y_scale, alpha=1.0) -> np.ndarray:
    """onnxruntime's requantization multiplier, in its float32 operation order:
    ``f32(f32(f32(alpha * x_scale) * w_scale) / y_scale)`` (QGemm; QLinearMatMul is the same with alpha 1)."""
    f = np.float32
    xa = f(f(alpha) * f(x_scale))
    return (f(xa) * np.asarray(w_scale, np.float32) / f(y_scale)).astype(np.float32)


def dense_bounds(dense: Node, x_dtype: str):
    """Exact per-channel range [lo, hi] of a dense accumulator over all inputs of ``x_dtype``."""
    a = dense.attrs
    qmin, qmax = dtype_range(x_dtype)
    w = np.asarray(a["weight"], np.int64) - np.asarray(a["w_zp"], np.int64).reshape(-1, 1)
    dlo, dhi = qmin - a["x_zp"], qmax - a["x_zp"]
    lo = np.minimum(w * dlo, w * dhi).sum(axis=1) + np.asarray(a["bias"], np.int64)
    hi = np.maximum(w * dlo, w * dhi).sum(axis=1) + np.asarray(a["bias"], np.int64)
    return lo, hi


def staircase(g, lo, hi):
    """Thresholds (C, T) and base reproducing a per-channel non-decreasing integer function ``g`` of the
    accumulator on [lo, hi]: ``g(acc) == base + #{j: acc >= thr[c, j]}``."""
    lv, hv = g(lo[None])[0].astype(np.int64), g(hi[None])[0].astype(np.int64)
    if np.any(hv < lv):
        raise ZakidError("internal error: a requantization chain is not non-decreasing")
    base = int(lv.min())
    n_levels = int((hv - base).max())
    levels = base + 1 + np.arange(n_levels)[:, None]  # (T, 1): level reached at threshold j
    left = np.broadcast_to(lo, (n_levels, lo.size)).copy()
    right = np.broadcast_to(hi, (n_levels, hi.size)).copy()
    while np.any(left < right):  # smallest acc in [lo, hi] with g(acc) >= level
        mid = (left + right) // 2
        ok = g(mid) >= levels
        right = np.where(ok, mid, right)
        left = np.where(ok, left, mid + 1)
    thr = np.where(levels <= lv, lo, np.where(levels > hv, hi + 1, left))
    return np.ascontiguousarray(thr.T.astype(np.int64)), base


def tabulate(model, island: Island, src: Tensor, out: str, out_dtype: str, consts: dict, where: str):
    """Run the island's ONNX nodes in onnxruntime on every code of ``src`` (the whole tensor set to that
    code); return the table (codes, channels) of output codes."""
    from onnx import TensorProto, helper, numpy_helper

    onnx_type = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}
    needed = {i for n in island.nodes for i in n.input if i in consts}
    graph = helper.make_graph(
        island.nodes, "island",
        [helper.make_tensor_value_info(island.src_onnx, onnx_type[src.dtype], list(src.shape))],
        [helper.make_tensor_value_info(out, onnx_type[out_dtype], None)],
        [numpy_helper.from_array(np.asarray(consts[i]), i) for i in sorted(needed)])
    sub = helper.make_model(graph, opset_imports=list(model.opset_import))
    try:
        sess = ort_session(sub)
        lo, hi = dtype_range(src.dtype)
        np_type = np.int8 if src.dtype == "int8" else np.uint8
        rows = [sess.run(None, {island.src_onnx: np.full(src.shape, v, np_type)})[0] for v in range(lo, hi + 1)]
    except ZakidError:
        raise
    except Exception as e:
        _fail(f"{where}: onnxruntime could not run this elementwise part of the model: {e}")
    table = np.stack([np.asarray(r).reshape(-1, src.shape[-1]) for r in rows]).astype(np.int64)
    if not np.all(table == table[:, :1, :]):
        _fail(f"{where}: this elementwise operation does not act per channel (last axis) only.")
    table = table[:, 0, :]
    if np.any(np.diff(table, axis=0) < 0):
        _fail(f"{where}: this elementwise operation is not non-decreasing in its input, so it cannot be "
              "merged into a requantization.")
    return table
