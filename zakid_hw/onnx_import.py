"""ONNX importer: ONNX file -> integer IR (:mod:`zakid_hw.ir`), bit-exact with onnxruntime.

:func:`load_model` accepts MLPs and small CNNs in three forms:

``qoperator``
    onnxruntime's QOperator output: QuantizeLinear, QLinearMatMul, QLinearConv, com.microsoft QGemm,
    QLinearAdd (a bias, or a residual connection of two computed tensors), QLinearConcat, QLinearAveragePool,
    QLinearGlobalAveragePool, QLinearSoftmax, QLinearSigmoid/QLinearLeakyRelu, MaxPool on codes,
    DequantizeLinear; also ConvInteger and MatMulInteger (int32 results).
``qdq``
    onnxruntime's QDQ output: QuantizeLinear/DequantizeLinear around float MatMul/Gemm/Conv/Add/AveragePool/
    GlobalAveragePool/Concat/Softmax. onnxruntime fuses DQ -> op -> Q into its integer kernels at its default
    optimisation level, and that fused arithmetic is what the IR reproduces. The importer asks onnxruntime
    which nodes it fuses and refuses (naming them) a model whose MatMul/Gemm/Conv/pooling/Add of two tensors
    onnxruntime would run in float.
``float+calibration``
    a float model plus calibration rows: prepared (opset 13, constants and BatchNormalization folded) and
    quantized with onnxruntime's ``quantize_static`` (see :mod:`zakid_hw.quantize_float` for the default
    scheme), then imported as ``qoperator``.

Shape ops (Flatten, Reshape, Squeeze, Unsqueeze, Transpose, Identity) act on codes. Convolutions are IR
``conv`` (NCHW; 1-D convolutions are 2-D with H = 1, and their (1, C, L) tensors are (1, C, 1, L) in the IR),
with any kernel, stride, dilation, explicit or auto padding and group count (depthwise included). The module is
split in three: this file (entry point, checks, values, MLP layers, shapes), :mod:`zakid_hw.onnx_cnn`
(convolution, pooling, residual Add, Concat, Transpose, Softmax) and :mod:`zakid_hw.onnx_islands` (tabulated
elementwise islands); :mod:`zakid_hw.onnx_common` holds what they share.

The IR reproduces onnxruntime 1.32 (CPU, default optimisation level) bit for bit:

* QuantizeLinear: ``saturate(rint(f32(x) / f32(scale)) + zp)`` (IR ``quantize``).
* QLinearMatMul, QGemm and QLinearConv: int32 accumulator ``sum((x - x_zp) * (w - w_zp)) + bias`` (IR ``dense``
  or ``conv``; padding reads the code ``x_zp``), then IR ``requantize`` (per channel along axis 1 for
  convolutions) with the multiplier formed in float32 in onnxruntime's order,
  ``f32(f32(f32(alpha * x_scale) * w_scale[n]) / y_scale)`` (alpha is 1 except for QGemm; see
  ``quant_gemm.cc`` / ``quantize_linear_matmul.cc`` in onnxruntime), the product ``f32(f32(acc) * m)`` rounded
  half to even, plus the zero point, saturated.
* MaxPool on codes: IR ``maxpool``. A MaxPool between DequantizeLinear and QuantizeLinear runs on the codes
  too (max commutes with the non-decreasing code maps), followed by the island of its Q(DQ()).
* Average pooling (QLinearAveragePool, QLinearGlobalAveragePool, fused QDQ AveragePool/GlobalAveragePool): IR
  ``sumpool`` + ``threshold`` from :func:`zakid_hw.ort_arith.avgpool_form`; refused (with the reason) where
  onnxruntime's float32 averaging is not a function of the window sum, or where padded windows hold different
  numbers of inputs (the IR threshold has no per-position tables).
* Add of two computed tensors (QLinearAdd, fused QDQ Add): IR ``add`` + ``threshold`` from
  :func:`zakid_hw.ort_arith.add_form`.
* Concat: inputs whose quantization differs from the output's are requantized by their tabulated code map
  (merged into their producing layer), then IR ``concat``.
* QLinearSoftmax (and fused QDQ Softmax): host op IR ``qsoftmax``; a float Softmax computing the graph output
  after a DequantizeLinear: host IR ``dequantize`` + ``softmax`` (not bit-exact: exp differs between libraries).
* DequantizeLinear: ``f32(q - zp) * f32(scale)`` (IR ``dequantize``).
* Elementwise "islands" between two integer tensors (QLinearAdd of a constant bias, DQ -> Add/Mul/Relu/Clip/
  BatchNormalization/... -> Q, Q(DQ(q)) with new parameters) are tabulated with onnxruntime on all 256 codes and
  merged into the producing layer's threshold (see :mod:`zakid_hw.onnx_islands`).
* Relu/Clip on an integer tensor (ONNX semantics ``max(q, 0)``) becomes IR ``relu``/``clip``.

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
from dataclasses import replace
from pathlib import Path

import numpy as np

from .errors import ZakidError
from .ir import Graph, Node, Tensor, dtype_range
from .onnx_cnn import CnnOps, LOWER_CNN
from .onnx_islands import IslandOps
from .onnx_common import (_ONNX_DTYPES, AccValue, DQConst, DQValue, Island,
                          IRValue, SoftmaxValue, _fail, _scalar, multiplier, ort_session)

#: ops accepted per model form; (domain, op_type), domain "" is the default ONNX domain
_COMMON = {"Relu", "Flatten", "Reshape", "Identity", "Constant", "Squeeze", "Unsqueeze", "Transpose", "Clip",
           "MaxPool", "GlobalMaxPool", "Concat", "Softmax"}
#: float elementwise ops allowed between DequantizeLinear and QuantizeLinear (tabulated with onnxruntime)
ISLAND_OPS = {"Add", "Sub", "Mul", "Div", "Relu", "Clip", "BatchNormalization", "LeakyRelu", "Sigmoid", "Tanh",
              "HardSigmoid", "Neg"}
FLOAT_OPS = _COMMON | {"Gemm", "MatMul", "Add", "Conv", "AveragePool", "GlobalAveragePool", "BatchNormalization"}
QUANT_OPS = FLOAT_OPS | ISLAND_OPS | {"QuantizeLinear", "DequantizeLinear", "QLinearMatMul", "QLinearConv",
                                      "ConvInteger", "MatMulInteger"}
MS_OPS = {"QGemm", "QLinearAdd", "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool",
          "QLinearSoftmax", "QLinearSigmoid", "QLinearLeakyRelu"}  # com.microsoft domain
_QOPERATOR_MARKERS = {"QLinearMatMul", "QGemm", "QLinearAdd", "QLinearConv", "ConvInteger", "MatMulInteger",
                      "QLinearConcat", "QLinearAveragePool", "QLinearGlobalAveragePool", "QLinearSoftmax",
                      "QLinearSigmoid", "QLinearLeakyRelu"}
#: float ops whose arithmetic only an onnxruntime integer kernel (after fusion) makes reproducible
_MUST_FUSE = {"MatMul", "Gemm", "Conv", "FusedConv", "FusedGemm", "FusedMatMul", "AveragePool", "GlobalAveragePool",
              "ConvTranspose", "Softmax"}


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
    if fmt == "qonnx":  # Quant/BipolarQuant/Trunc nodes: see zakid_hw.qonnx_import
        from .qonnx_import import import_qonnx

        graph = import_qonnx(model)
        graph.meta["source_path"] = str(path)
        return graph
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
        if fmt == "qdq" or any(n.op_type in _MUST_FUSE | {"Add"} for n in model.graph.node):
            check_ort_fuses(model)
        graph = Importer(model, fmt).run()
        if calibration is not None:
            graph.meta["notes"].append("calibration data ignored: the model is already quantized")
    graph.meta["source_path"] = str(path)
    graph.meta["warnings"] = graph.meta.get("warnings", []) + u8s8_warnings(
        graph, graph.meta.get("quantization", {}).get("format", fmt))
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
    from .qonnx_import import is_qonnx

    if is_qonnx(model):
        return "qonnx"
    ops = {n.op_type for n in model.graph.node}
    if ops & _QOPERATOR_MARKERS or _graph_inputs(model)[0].type.tensor_type.elem_type != 1:
        return "qoperator"  # integer kernels, or an integer input (e.g. MaxPool on uint8 codes)
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
        _fail(f"the model contains {len(bad)} unsupported node(s): {', '.join(bad)}. zakid-hw imports "
              f"{fmt} models built from {', '.join(supported)}.")


# --------------------------------------------------------------------------------------------------------
# onnxruntime helpers


def check_ort_fuses(model):
    """Refuse float MatMul/Gemm/Conv/pooling/Softmax nodes that onnxruntime (default optimisation level) leaves
    in float (other than a Softmax computing the graph output on the host): their float arithmetic is not the
    integer kernel the IR reproduces. A float Add of two computed tensors is refused likewise."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="zakid_ort_") as tmp:
        try:
            ort_session(model, os.path.join(tmp, "optimized.onnx"))
        except Exception as e:
            _fail(f"onnxruntime cannot load the model, so there is no reference to be bit-exact with: {e}")
        opt = onnx.load(os.path.join(tmp, "optimized.onnx"))
    g = opt.graph
    consts = {t.name for t in g.initializer} | {""}
    for n in g.node:  # constant folding left undone (e.g. DequantizeLinear of a bias) still gives constants
        if all(i in consts for i in n.input):
            consts.update(n.output)
    outputs = {o.name for o in g.output}
    left = []
    for n in g.node:
        if n.op_type in _MUST_FUSE and not (n.op_type == "Softmax" and n.output[0] in outputs):
            left.append(f"{n.name!r} ({n.op_type})")
        elif n.op_type in ("Add", "Sum", "Mul") and n.domain in ("", "ai.onnx") \
                and sum(i not in consts for i in n.input) >= 2:
            left.append(f"{n.name!r} ({n.op_type} of two computed tensors)")
    if left:
        _fail(f"onnxruntime runs {', '.join(left)} in float at its default optimisation level (it does not "
              "fuse them with their QuantizeLinear/DequantizeLinear into an integer kernel), so no integer "
              "accelerator can match it bit for bit. Quantize the layer fully: DequantizeLinear on its inputs "
              "(and an int32 bias with scale input_scale * weight_scale, alpha=1 and beta=1 for Gemm) and a "
              "QuantizeLinear right after it.")


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
    for d in graph.nodes:
        if d.op not in ("dense", "conv"):
            continue
        w, x = np.asarray(d.attrs["weight"]), graph.tensors[d.inputs[0]]
        if w.dtype != np.int8 or not (x.dtype == "uint8" or (x.dtype == "int8" and fmt == "qdq")):
            continue
        w = w.astype(np.int64).reshape(w.shape[0], -1)
        pos, neg = np.maximum(w, 0), np.minimum(w, 0)
        if d.op == "conv":  # the kernel's pairing of taps is its own business: bound it by the two largest
            pos, neg = np.sort(pos, axis=1)[:, -2:], np.sort(neg, axis=1)[:, :2]
        pos, neg = (np.pad(a, ((0, 0), (0, a.shape[1] % 2))) for a in (pos, neg))
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
# the lowering


class Importer(IslandOps, CnnOps):
    """Lower the nodes of one quantized ONNX graph to IR nodes, one handler per ONNX op (``LOWER``)."""

    def __init__(self, model, fmt: str):
        from onnx import numpy_helper

        self.model, self.fmt = model, fmt
        self.consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.vals: dict[str, object] = {}
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.names: set[str] = set()
        inp, out = _graph_inputs(model)[0], model.graph.output[0]
        self.graph = Graph(name=model.graph.name or "model", inputs=[inp.name], outputs=[out.name],
                           tensors={}, nodes=[])
        dtype = _ONNX_DTYPES[inp.type.tensor_type.elem_type]
        self._tensor(inp.name, static_shape(inp, "graph input"), dtype)
        self.vals[inp.name] = IRValue(inp.name)
        self.host_floats = {inp.name}  # float tensors the host computes from the input (quantizable)
        self.current = None

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
            "warnings": self.warnings,
        }
        return self.graph

    def where(self, node=None) -> str:
        node = node or self.current
        if node is None:
            return "the graph"
        return f"node {node.name or '<unnamed>'!r} ({node.op_type})"

    def _tensor(self, name, shape, dtype, scale=None, zp=None) -> str:
        if name in self.graph.tensors:
            _fail(f"tensor name {name!r} is produced twice in the model ({self.where()}).")
        self.graph.tensors[name] = Tensor(name, tuple(int(s) for s in shape), dtype,
                                          None if scale is None else float(np.float32(scale)),
                                          None if zp is None else int(zp))
        return name

    def _like(self, name, t: Tensor, shape=None, dtype=None) -> str:
        """A new IR tensor ``name`` with the quantization parameters of ``t``."""
        return self._tensor(name, t.shape if shape is None else shape, dtype or t.dtype, t.scale, t.zero_point)

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

    def _out_name(self, node, i=0) -> str:
        """The IR name for ONNX output ``i`` of ``node`` (its own name unless the IR already has it)."""
        o = node.output[i]
        return o if o not in self.graph.tensors else self._fresh(o)

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
                  "consumed (a tensor merged into a layer's requantization cannot be used elsewhere too).")
        return self.vals[name]

    def shape(self, v) -> tuple:
        """The ONNX shape of a value."""
        if isinstance(v, np.ndarray):
            return v.shape
        if isinstance(v, SoftmaxValue):
            v = v.dq
        if getattr(v, "post_shape", None) is not None:
            return tuple(v.post_shape)
        if getattr(v, "shape", None) is not None:
            return tuple(v.shape)
        name = {IRValue: "name", DQValue: "src", Island: "src", AccValue: "acc"}.get(type(v))
        if name is None:
            _fail(f"{self.where()}: cannot use {self._describe(v)} here.")
        return self.graph.tensors[getattr(v, name)].shape

    def materialize(self, v: IRValue) -> str:
        """The IR tensor holding ``v`` in its ONNX shape (emits a reshape for a 1-D convolution's view)."""
        t = self.graph.tensors[v.name]
        if v.shape is None or tuple(v.shape) == t.shape:
            return v.name
        name = self._fresh(f"{v.name}_{len(v.shape)}d")
        self._like(name, t, shape=v.shape)
        self._emit("reshape", f"{v.name}_view", [v.name], [name], shape=tuple(v.shape))
        return name

    def int_input(self, name, what="input") -> Tensor:
        """An int8/uint8 graph tensor in its ONNX shape."""
        v = self.val(name)
        if isinstance(v, IRValue) and self.graph.tensors[v.name].dtype in ("int8", "uint8"):
            return self.graph.tensors[self.materialize(v)]
        _fail(f"{self.where()}: its {what} {name!r} must be an int8/uint8 tensor computed by the graph, got "
              f"{self._describe(v)}.")

    def _describe(self, v) -> str:
        if isinstance(v, IRValue):
            return f"a {self.graph.tensors[v.name].dtype} tensor"
        if isinstance(v, np.ndarray):
            return "a constant"
        return {DQValue: "a dequantized tensor", DQConst: "a dequantized constant",
                AccValue: "an unquantized MatMul/Gemm/Conv result", Island: "a float elementwise result",
                SoftmaxValue: "a float Softmax result"}.get(type(v), type(v).__name__)

    def attrs(self, node) -> dict:
        from onnx import helper

        a = {x.name: helper.get_attribute_value(x) for x in node.attribute}
        return {k: v.decode() if isinstance(v, bytes) else v for k, v in a.items()}

    def _forget(self, tensor: str):
        """Drop every ONNX value that refers to the (removed) IR tensor ``tensor``."""
        def refers(v):
            return any(getattr(v, f, None) == tensor for f in ("name", "src", "acc")) or (
                isinstance(v, SoftmaxValue) and v.dq.src == tensor)
        self.vals = {k: v for k, v in self.vals.items() if not refers(v)}

    # ---- layer building blocks

    def emit_dense(self, node, x: Tensor, x_zp: int, w_nk, w_zp, bias) -> str:
        """IR dense on integer weights ``w_nk`` (N, K); returns the int32 accumulator tensor name."""
        n_out, k = w_nk.shape
        if x.shape[-1] != k:
            _fail(f"{self.where(node)}: input {x.name!r} has {x.shape[-1]} features but the weight expects {k}.")
        w_zp = _per_channel(w_zp, n_out, f"{self.where(node)}: weight zero point")
        bias = np.zeros(n_out, np.int32) if bias is None else np.broadcast_to(
            np.asarray(bias, np.int32).reshape(-1), (n_out,)).copy()
        acc = self._tensor(self._fresh(f"{node.name or node.op_type}_acc"), (*x.shape[:-1], n_out), "int32")
        self._emit("dense", node.name or node.op_type, [x.name], [acc], weight=np.ascontiguousarray(w_nk),
                   w_zp=w_zp, x_zp=int(x_zp), bias=bias)
        return acc

    def emit_requantize(self, node, acc: str, out: str, x_scale, w_scale, y_scale, y_zp, y_dtype, alpha=1.0,
                        axis=-1, view=None):
        """IR requantize with onnxruntime's float32 multiplier ``f32(f32(f32(alpha*xs)*ws)/ys)``; per-channel
        multipliers run along ``axis`` of the accumulator."""
        mult = multiplier(x_scale, w_scale, y_scale, alpha)
        n_out = self.graph.tensors[acc].shape[axis]
        if mult.size not in (1, n_out):
            _fail(f"{self.where(node)}: {mult.size} weight scales for {n_out} output channels.")
        if not np.all(mult > 0) or not np.all(np.isfinite(mult)):
            _fail(f"{self.where(node)}: scales must be positive and finite (multiplier {mult}).")
        qmin, qmax = dtype_range(y_dtype)
        self._tensor(out, self.graph.tensors[acc].shape, y_dtype, y_scale, y_zp)
        extra = {"axis": axis} if axis != -1 else {}
        self._emit("requantize", f"{node.name or node.op_type}_requant", [acc], [out],
                   multiplier=mult.reshape(()) if mult.size == 1 else mult.reshape(-1),
                   zero_point=int(y_zp), dtype=y_dtype, qmin=qmin, qmax=qmax, **extra)
        self.vals[node.output[0]] = IRValue(out, view)

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
        out = self._out_name(node)
        if isinstance(x, IRValue) and self.graph.tensors[x.name].dtype == "float32":
            if x.name not in self.host_floats:
                _fail(f"{self.where()}: quantizes a float tensor computed inside the model ({x.name!r}); only the "
                      "graph input (or a reshape of it) can be quantized on the host.")
            t = self.graph.tensors[x.name]
            self._tensor(out, t.shape, dtype, scale, zp)
            self._emit("quantize", node.name or "quantize", [x.name], [out], scale=scale, zero_point=zp,
                       dtype=dtype)
            self.vals[node.output[0]] = IRValue(out)
        elif isinstance(x, AccValue):
            self.emit_requantize(node, x.acc, out, x.x_scale, x.w_scale, scale, zp, dtype, x.alpha, x.axis, x.shape)
        elif isinstance(x, (DQValue, Island)):
            island = self._island_from(x, node.input[0]) if isinstance(x, DQValue) else x
            self.resolve_island(replace(island, nodes=island.nodes + [node]), out, dtype, scale, zp,
                                onnx_out=node.output[0])
        elif isinstance(x, SoftmaxValue):
            self.quantized_softmax(node, x, scale, zp, dtype)
        elif hasattr(x, "lower_at_quantize"):  # pending two-input ops (residual Add, Concat) of the QDQ form
            x.lower_at_quantize(self, node, scale, zp, dtype)
        else:
            _fail(f"{self.where()}: cannot quantize {self._describe(x)}.")

    def _island_from(self, dq: DQValue, onnx_name: str) -> Island:
        """An island starting at the DequantizeLinear ``dq`` (made up if ``dq`` has no ONNX node), whose float
        result is ONNX tensor ``onnx_name``."""
        from onnx import helper

        shape = self.shape(dq)
        if dq.dq_node is not None:
            return Island(dq.src, dq.dq_node.input[0], [dq.dq_node], shape)
        t = self.graph.tensors[dq.src]
        sname, zname, src = self._fresh(f"{dq.src}__scale"), self._fresh(f"{dq.src}__zp"), "__zakid_island_input"
        self.consts[sname] = np.asarray(dq.scale, np.float32)
        self.consts[zname] = np.asarray(dq.zp, dtype=t.dtype)
        node = helper.make_node("DequantizeLinear", [src, sname, zname], [onnx_name], name=f"{dq.src}_dequantize")
        return Island(dq.src, src, [node], shape)

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
        v = self.val(src)
        if not (isinstance(v, IRValue) and self.graph.tensors[v.name].dtype in ("int8", "uint8")):
            _fail(f"{self.where()}: its input {src!r} must be an int8/uint8 tensor computed by the graph, got "
                  f"{self._describe(v)}.")
        self.vals[node.output[0]] = DQValue(
            v.name, np.float32(_scalar(scale, f"{self.where()}: x_scale of an activation")),
            0 if zp is None else int(_scalar(zp, f"{self.where()}: x_zero_point of an activation")), node, v.shape)

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
        self.emit_requantize(node, acc, self._out_name(node), np.float32(_scalar(xs, "a_scale")), ws,
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
            self.emit_requantize(node, acc, self._out_name(node), xs, ws, np.float32(_scalar(ys, "y_scale")),
                                 _scalar(yzp, "y_zero_point"), str(yzp.dtype), alpha)
        else:  # float output: f32(acc) * f32(f32(alpha * a_scale) * b_scale)
            self._emit_float_output(node, acc, multiplier(xs, ws, np.float32(1), alpha))

    def _emit_float_output(self, node, acc, scale):
        if scale.size != 1:
            _fail(f"{self.where(node)}: a float output with per-channel weight scales is not supported; "
                  "quantize the output (QuantizeLinear) or use per-tensor weight scales.")
        out = self._out_name(node)
        self._tensor(out, self.graph.tensors[acc].shape, "float32")
        self._emit("dequantize", f"{node.name or node.op_type}_scale", [acc], [out],
                   scale=np.float32(scale.reshape(())), zero_point=0)
        self.vals[node.output[0]] = IRValue(out)

    def _dq_operands(self, node, x_name, w_name):
        x, w = self.val(x_name), self.val(w_name)
        if not isinstance(x, DQValue) or not isinstance(w, DQConst):
            _fail(f"{self.where(node)}: a float {node.op_type} must read a DequantizeLinear of an activation "
                  f"and a DequantizeLinear of a constant weight (QDQ form); got {self._describe(x)} and "
                  f"{self._describe(w)}. Float layers in a quantized model are not supported.")
        return x, w

    def _dq_input_tensor(self, x: DQValue) -> Tensor:
        return self.graph.tensors[self.materialize(IRValue(x.src, x.shape))]

    def matmul(self, node):
        x, w = self._dq_operands(node, node.input[0], node.input[1])
        if w.scale.size > 1 and w.axis not in (1, -1):
            _fail(f"{self.where()}: per-channel weight scales must run along the output axis (axis=1).")
        w_nk, ws, wzp = self._weights(node, w.q, w.scale, w.zp, trans=False)
        acc = self.emit_dense(node, self._dq_input_tensor(x), x.zp, w_nk, wzp, None)
        self.vals[node.output[0]] = AccValue(acc, x.scale, ws, np.float32(1))

    def _dq_bias(self, node, b_name, x_scale, w_scale):
        b = self.val(b_name)
        expect = (np.float32(x_scale) * w_scale).astype(np.float32)
        if not (isinstance(b, DQConst) and b.q.dtype == np.int32 and not np.any(b.zp)
                and np.allclose(np.broadcast_to(b.scale.reshape(-1), expect.shape), expect, rtol=1e-6)):
            _fail(f"{self.where()}: its bias must be a DequantizeLinear of an int32 constant with zero "
                  "point 0 and scale input_scale * weight_scale (as onnxruntime's quantizer writes it).")
        return b.q

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
            bias = self._dq_bias(node, node.input[2], x.scale, ws)
            if a.get("beta", 1.0) != 1.0:
                _fail(f"{self.where()}: beta={a['beta']} is not supported with a quantized bias.")
        acc = self.emit_dense(node, self._dq_input_tensor(x), x.zp, w_nk, wzp, bias)
        self.vals[node.output[0]] = AccValue(acc, x.scale, ws, np.float32(a.get("alpha", 1.0)))

    def qlinear_add(self, node):
        a_name, b_name = node.input[0], node.input[3]
        if b_name not in self.consts and a_name in self.consts:
            a_name, b_name = b_name, a_name
        if b_name not in self.consts:
            return self.residual_add_qlinear(node)
        v = self.val(a_name)
        t = self.int_input(a_name) if not isinstance(v, IRValue) else self.graph.tensors[v.name]
        c_zp = self.opt_const(node, 7, np.zeros((), t.dtype))
        self.resolve_island(Island(t.name, a_name, [node], self.shape(v)), self._out_name(node), str(c_zp.dtype),
                            np.float32(_scalar(self.const(node.input[6]), "C_scale")), _scalar(c_zp, "C_zp"),
                            onnx_out=node.output[0])

    def _reshape_to(self, node, shape):
        x = self.val(node.input[0])
        out = node.output[0]
        shape = tuple(int(s) for s in shape)
        if isinstance(x, np.ndarray):
            self.consts[out] = x.reshape(shape)
            return
        if isinstance(x, Island):  # reshapes commute with elementwise maps: tabulated with the island
            self.vals[out] = replace(x, nodes=x.nodes + [node], post_shape=shape)
            return
        src = x.src if isinstance(x, DQValue) else x.name if isinstance(x, IRValue) else None
        if src is None:
            _fail(f"{self.where()}: cannot reshape {self._describe(x)}.")
        t = self.graph.tensors[src]
        if int(np.prod(shape)) != int(np.prod(t.shape)):
            _fail(f"{self.where()}: cannot reshape {self.shape(x)} to {shape}.")
        name = self._fresh(out + "_q") if isinstance(x, DQValue) else self._out_name(node)
        self._like(name, t, shape=shape)
        self._emit("reshape", node.name or "reshape", [src], [name], shape=shape)
        if isinstance(x, DQValue):
            self.vals[out] = DQValue(name, x.scale, x.zp)
        else:
            if src in self.host_floats:
                self.host_floats.add(name)
            self.vals[out] = IRValue(name)

    def flatten(self, node):
        shape = self.shape(self.val(node.input[0]))
        axis = self.attrs(node).get("axis", 1)
        axis = axis + len(shape) if axis < 0 else axis
        self._reshape_to(node, (int(np.prod(shape[:axis])), int(np.prod(shape[axis:]))))

    def reshape(self, node):
        shape_in = self.shape(self.val(node.input[0]))
        spec = [int(s) for s in self.const(node.input[1], "shape")]
        allow_zero = self.attrs(node).get("allowzero", 0)
        out = [shape_in[i] if s == 0 and not allow_zero else s for i, s in enumerate(spec)]
        if out.count(-1) == 1:
            known = int(np.prod([s for s in out if s != -1]))
            out[out.index(-1)] = int(np.prod(shape_in)) // max(known, 1)
        self._reshape_to(node, tuple(out))

    def _axes(self, node):
        axes = self.opt_const(node, 1)
        axes = self.attrs(node).get("axes") if axes is None else axes
        return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]

    def squeeze(self, node):
        shape = list(self.shape(self.val(node.input[0])))
        axes = self._axes(node)
        axes = [i for i, s in enumerate(shape) if s == 1] if axes is None else [a % len(shape) for a in axes]
        if any(shape[a] != 1 for a in axes):
            _fail(f"{self.where()}: cannot squeeze axes {axes} of shape {tuple(shape)}.")
        self._reshape_to(node, [s for i, s in enumerate(shape) if i not in axes])

    def unsqueeze(self, node):
        shape = list(self.shape(self.val(node.input[0])))
        axes = self._axes(node)
        rank = len(shape) + len(axes)
        for a in sorted(x % rank for x in axes):
            shape.insert(a, 1)
        self._reshape_to(node, shape)

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
        hint = getattr(self.current, "name", "") or "output"
        if isinstance(v, SoftmaxValue):
            self.host_softmax(v, out)
        elif isinstance(v, DQValue):
            src = self.materialize(IRValue(v.src, v.shape))
            t = self.graph.tensors[src]
            if out in self.graph.tensors:
                _fail(f"graph output {out!r} is also the name of an internal tensor; rename it.")
            self._tensor(out, t.shape, "float32")
            self._emit("dequantize", hint, [src], [out], scale=v.scale, zero_point=v.zp)
        elif isinstance(v, AccValue):
            self._emit_float_output(self.current, v.acc, multiplier(v.x_scale, v.w_scale, np.float32(1), v.alpha))
        elif isinstance(v, IRValue):
            src = self.materialize(v)
            if src != out:  # output is an alias (Identity, removed island, view)
                t = self.graph.tensors[src]
                if out in self.graph.tensors:
                    _fail(f"graph output {out!r} is also the name of an internal tensor; rename it.")
                self._like(out, t)
                self._emit("reshape", "output", [src], [out], shape=t.shape)
        else:
            _fail(f"graph output {out!r} is {self._describe(v) if v is not None else 'a constant'}; it must "
                  "be a quantized tensor or a DequantizeLinear of one.")


def _per_channel(zp, n: int, what: str):
    """A zero point as an int (all equal) or an int64 array of ``n`` values."""
    zp = np.asarray(zp).astype(np.int64).reshape(-1)
    if np.all(zp == zp[0]):
        return int(zp[0])
    if zp.shape != (n,):
        _fail(f"{what} has {zp.size} values for {n} output channels.")
    return zp


#: ONNX op type -> lowering handler
LOWER = {
    "QuantizeLinear": Importer.quantize_linear,
    "DequantizeLinear": Importer.dequantize_linear,
    "QLinearMatMul": Importer.qlinear_matmul,
    "QGemm": Importer.qgemm,
    "QLinearAdd": Importer.qlinear_add,
    "MatMul": Importer.matmul,
    "Gemm": Importer.gemm,
    "Flatten": Importer.flatten,
    "Reshape": Importer.reshape,
    "Squeeze": Importer.squeeze,
    "Unsqueeze": Importer.unsqueeze,
    "Identity": Importer.identity,
    "Constant": Importer.constant,
    **{op: IslandOps.island_op for op in ISLAND_OPS},
    **LOWER_CNN,
}
