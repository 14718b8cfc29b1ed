"""QONNX (Brevitas / FINN) importer: a model with Quant / BipolarQuant / Trunc nodes -> integer IR.

The reference is ``qonnx.core.onnx_exec.execute_onnx``: it runs the QONNX custom ops with qonnx's numpy code
and every standard node alone in onnxruntime. The IR graph reproduces it bit for bit:

* **Host, before the accelerator.** Reshape/Flatten and elementwise Mul/Add/Sub/Div/BatchNormalization
  by constants on the float input become IR ``reshape`` / ``affine``. The input Quant becomes IR
  ``quantize`` (qonnx: ``clip(round(f32(f32(x / scale) + zeropt)), min, max)``; clipping before or after
  rounding to integer bounds is the same; with a zero point, ``affine`` steps ``div scale``, ``add
  zeropt`` and ``quantize`` with scale 1) and, when the code range is narrower than int8/uint8, ``clip``.
  The input quantizer must round half to even (ROUND) and have 1-8 bits (not bipolar); layer quantizers
  may use any rounding mode.
* **Weights.** A Quant / BipolarQuant of a constant (then possibly Transpose/Reshape) gives the integer
  codes ``round(w / scale + zeropt)`` (clipped), with per-tensor or per-output-channel scale and zero
  point; BipolarQuant and 1-bit signed Quant give codes -1/+1.
* **Layers.** A MatMul/Gemm of quantized activations and quantized weights becomes IR ``dense`` on the
  integer codes. onnxruntime computes the MatMul in float on ``(code - zp) * scale``; when the activation
  and weight scales are powers of two and the sum of the absolute products is below 2**24 units, every
  product and partial sum is exact in float32 in any order (FMA or not), so the float result is exactly
  ``f32(acc) * f32(x_scale * w_scale)``. Otherwise the layer is imported with that formula and
  ``graph.meta["warnings"]`` says that it is not guaranteed bit-exact.
* **After each layer**, the float elementwise chain (Gemm's float bias, which onnxruntime adds once to the
  exact product for a single input row; Mul/Add/Sub/Div by per-channel constants, quantized or not;
  BatchNormalization, Relu, Clip, Quant/BipolarQuant/Trunc, in any order) ending in a
  quantizer is a per-channel monotone function of the integer accumulator. The importer evaluates it in
  numpy with the float32 operations execute_onnx performs (BatchNormalization as onnxruntime computes it,
  ``x * s + (beta - mean * s)`` with ``s = gamma * (1 / sqrt(var + eps))``, *not* the ONNX reference
  formula) and turns it into an exact IR ``threshold`` by binary search over the accumulator's reachable
  range. A channel whose function is non-increasing (e.g. negative BN gamma) gets its weights and bias
  negated, which makes it non-decreasing without any symmetry assumption on the quantizer. Bipolar
  activations (codes -1/+1) are stored as 0/1 and the next layer's weights are doubled with a bias
  ``-sum(w)``.
* **The output.** A chain without a final quantizer (e.g. the float BatchNormalization after the last
  MatMul) stays on the host: the last ``dense`` returns its int32 accumulators, then ``dequantize``
  (the accumulator unit) and ``affine`` steps reproduce the float chain. A quantized output is
  dequantized as qonnx does, ``(code - zeropt) * scale``.

Shape arithmetic (Shape/Gather/Unsqueeze/Concat ...) and any other standard op on constants is folded by
running it in onnxruntime, as execute_onnx does. Trunc follows qonnx's versions: v1 unless the model
imports the node's domain at opset >= 2.

``graph.meta``: ``source_format`` "qonnx", ``opset``, ``producer``, ``onnx_ops``, ``notes``,
``warnings``, ``code_ranges`` (IR tensor -> (lo, hi) of the integer codes it can hold, tighter than its
dtype) and ``layers`` (per dense node: weight bits, scales, exactness).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import golden
from .errors import ZakidError
from .ir import Graph, Node, Tensor, dtype_range
from .onnx_common import staircase
from .threshold_tables import signed_bits

#: domains whose Quant / BipolarQuant / Trunc nodes are QONNX quantizers
QONNX_DOMAINS = ("onnx.brevitas", "qonnx.custom_op.general", "finn.custom_op.general")
QUANTIZERS = ("Quant", "BipolarQuant", "Trunc")
#: standard ops handled on run-time tensors (any standard op whose inputs are all constant is folded)
STANDARD_OPS = {"Reshape", "Flatten", "Identity", "Dropout", "Transpose", "MatMul", "Gemm",
                "BatchNormalization", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "Shape", "Constant"}
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8"}
_F32 = np.float32
#: accumulators are checked exhaustively against their threshold tables up to this many values
_VERIFY_EXHAUSTIVE = 1 << 22


def _fail(msg: str):
    raise ZakidError(" ".join(msg.split()))


def _domain(node) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def is_qonnx(model) -> bool:
    """Does the model contain a QONNX quantizer (Quant / BipolarQuant / Trunc in a QONNX domain)?"""
    return any(n.op_type in QUANTIZERS and n.domain in QONNX_DOMAINS for n in model.graph.node)


# --------------------------------------------------------------------------------------------------------
# qonnx arithmetic: ports of qonnx.custom_op.general.{intquant, bipolar_quant, trunc} (qonnx 1.0), float32
# in, float32 out, with the same operation order


def min_int(signed: bool, narrow: bool, bits: int) -> int:
    if signed:
        return -(2 ** (bits - 1)) + (1 if narrow else 0)
    return 0


def max_int(signed: bool, narrow: bool, bits: int) -> int:
    if signed:
        return 2 ** (bits - 1) - 1
    return 2**bits - (2 if narrow else 1)


def _round_up(x):
    return np.sign(x) * np.ceil(np.abs(x))


def _round_half_up(x):
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def _round_half_down(x):
    return np.sign(x) * np.ceil(np.abs(x) - 0.5)


ROUNDING = {"ROUND": np.round, "HALF_EVEN": np.round, "CEIL": np.ceil, "FLOOR": np.floor, "UP": _round_up,
            "DOWN": np.fix, "HALF_UP": _round_half_up, "HALF_DOWN": _round_half_down}


def _clamp(y, lo, hi):
    y = np.where(y > hi, np.asarray(hi, y.dtype), y)
    return np.where(y < lo, np.asarray(lo, y.dtype), y)


@dataclass
class QuantSpec:
    """One QONNX quantizer node with constant parameters. ``code(x)`` gives the integer codes (as float32)
    and ``value(code)`` the float32 tensor execute_onnx produces from them."""
    name: str
    op: str                 # "Quant", "BipolarQuant", "Trunc_v1", "Trunc_v2"
    scale: np.ndarray       # input scale
    zeropt: np.ndarray
    bits: int               # output bit width
    signed: bool
    narrow: bool
    rounding: str
    in_bits: np.ndarray | None = None     # Trunc
    out_scale: np.ndarray | None = None   # Trunc_v2
    trunc_scale: np.ndarray | None = None

    @property
    def bipolar(self) -> bool:
        return self.op == "BipolarQuant" or (self.op == "Quant" and self.bits == 1 and self.signed)

    def code(self, x):
        x = np.asarray(x, _F32)
        if self.op == "BipolarQuant":
            return np.where(x >= 0.0, _F32(1), _F32(-1))
        y = x / self.scale
        y = y + self.zeropt
        if self.op == "Quant":
            if self.bipolar:
                return np.where(y >= 0.0, _F32(1), _F32(-1)).astype(y.dtype)
            y = _clamp(y, min_int(self.signed, self.narrow, self.bits), max_int(self.signed, self.narrow, self.bits))
            return ROUNDING[self.rounding](y)
        y = np.round(y)  # Trunc
        y = y / self.trunc_scale
        if self.op == "Trunc_v2":
            y = _clamp(y, min_int(self.signed, self.narrow, self.bits), max_int(self.signed, self.narrow, self.bits))
        return ROUNDING[self.rounding](y)

    @property
    def code_zp(self) -> np.ndarray:
        """The zero point of the output codes: value = (code - code_zp) * value_scale."""
        if self.op == "BipolarQuant":
            return np.zeros((), _F32)
        if self.op == "Trunc_v2":
            return self.zeropt / self.trunc_scale
        return self.zeropt

    @property
    def value_scale(self) -> np.ndarray:
        return self.out_scale if self.op == "Trunc_v2" else self.scale

    def value(self, code):
        code = np.asarray(code, _F32)
        if self.op == "BipolarQuant":
            return code * self.scale
        return (code - self.code_zp) * self.value_scale

    def __call__(self, x):
        return self.value(self.code(x))

    @property
    def code_range(self) -> tuple[int, int] | None:
        """Smallest and largest code, when the quantizer clamps (Trunc v1 does not)."""
        if self.bipolar:
            return -1, 1
        if self.op == "Trunc_v1":
            return None
        return min_int(self.signed, self.narrow, self.bits), max_int(self.signed, self.narrow, self.bits)


# --------------------------------------------------------------------------------------------------------
# values of ONNX tensors during the lowering


@dataclass
class Host:
    """A float tensor on the host before the first quantizer: IR tensor ``name`` followed by ``steps``
    (IR affine steps not yet emitted)."""
    name: str
    shape: tuple
    steps: list = field(default_factory=list)


@dataclass
class Codes:
    """A quantized activation in IR tensor ``name`` (stored codes ``s``). The quantizer's integer code is
    ``s * mult + off`` and the float tensor execute_onnx holds is ``(code - zp) * scale``."""
    name: str
    scale: np.ndarray
    zp: np.ndarray
    lo: int                 # range of the stored codes
    hi: int
    mult: int = 1
    off: int = 0
    source: str = ""        # ONNX node that quantized it


@dataclass
class QConst:
    """A quantizer applied to a constant (weights): integer codes and the scale/zero point, all of the
    tensor's full shape, plus the float value execute_onnx computes."""
    codes: np.ndarray
    scale: np.ndarray
    zp: np.ndarray
    value: np.ndarray
    spec: QuantSpec


@dataclass
class Step:
    """One elementwise float32 step after a layer, on (rows, channels) arrays."""
    name: str
    fn: object              # f32 array -> f32 array
    sign: np.ndarray        # per channel (or scalar): +1 non-decreasing, -1 non-increasing, 0 constant
    affine: list | None     # IR affine steps computing fn exactly, or None
    quant: QuantSpec | None = None


@dataclass
class Chain:
    """The float result of a layer: ``steps`` applied to ``f32(acc) * unit`` (the float MatMul output)."""
    dense: Node
    unit: np.ndarray        # (N,) float32: the float value of one accumulator unit per channel
    steps: tuple = ()
    shape: tuple = ()

    def extend(self, step: Step) -> "Chain":
        return Chain(self.dense, self.unit, self.steps + (step,), self.shape)

    @property
    def last_quant(self) -> int | None:
        idx = [i for i, s in enumerate(self.steps) if s.quant is not None]
        return idx[-1] if idx else None


# --------------------------------------------------------------------------------------------------------
# onnxruntime, for constant folding


def ort_eval(node, arrays: dict, opset: int) -> list:
    """Run one standard ONNX node in onnxruntime on the given input arrays, as execute_onnx does."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    inputs = [helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(a.dtype), a.shape)
              for n, a in arrays.items()]
    outputs = [onnx.ValueInfoProto(name=o) for o in node.output if o]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset >= 15 else 7 if opset >= 12 else 6
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, arrays)


# --------------------------------------------------------------------------------------------------------
# the lowering


def import_qonnx(model) -> Graph:
    """Lower a QONNX model (already read and interface-checked) to an IR graph."""
    try:
        return QonnxImporter(model).run()
    except ZakidError:
        raise
    except Exception as e:  # numpy / onnxruntime errors must not escape raw
        _fail(f"could not import the QONNX model: {type(e).__name__}: {e}. This is probably a bug in "
              "zakid-hw's QONNX importer; please report it with the model attached.")


def _attrs(node) -> dict:
    from onnx import helper

    out = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        out[a.name] = v.decode() if isinstance(v, bytes) else v
    return out


def _is_po2(v) -> bool:
    v = np.asarray(v, np.float64)
    m, _ = np.frexp(v)
    return bool(np.all(v > 0) and np.all(m == 0.5) and np.all(v >= np.finfo(_F32).tiny))


class QonnxImporter:
    def __init__(self, model):
        from onnx import numpy_helper

        from .onnx_import import _graph_inputs, static_shape

        self.model = model
        self.opset = {(o.domain if o.domain != "ai.onnx" else ""): o.version for o in model.opset_import}
        self.consts = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.vals: dict[str, object] = {}
        self.materialized: dict[int, Codes] = {}
        self.notes: list[str] = []
        self.warnings: list[str] = []
        self.code_ranges: dict[str, tuple[int, int]] = {}
        self.layers: dict[str, dict] = {}
        self.names: set[str] = set()
        g = model.graph
        self.onnx_names = ({t.name for t in g.initializer} | {i.name for i in g.input}
                           | {o for n in g.node for o in n.output})
        inp, out = _graph_inputs(model)[0], model.graph.output[0]
        self.graph = Graph(name=model.graph.name or "model", inputs=[inp.name], outputs=[out.name],
                           tensors={}, nodes=[])
        dtype = _ONNX_DTYPES.get(inp.type.tensor_type.elem_type)
        if dtype != "float32":
            _fail(f"graph input {inp.name!r} is {dtype}; a QONNX model must take a float32 input.")
        shape = static_shape(inp, "graph input")
        self._tensor(inp.name, shape, "float32")
        self.vals[inp.name] = Host(inp.name, shape)
        self.current = None

    # ---- utilities

    def where(self, node=None) -> str:
        node = node or self.current
        if node is None:
            return "the graph output"
        return f"node {node.name or '<unnamed>'!r} ({node.op_type})"

    def _tensor(self, name, shape, dtype, scale=None, zp=None) -> str:
        if name in self.graph.tensors:
            _fail(f"tensor name {name!r} is produced twice ({self.where()}).")
        self.graph.tensors[name] = Tensor(name, tuple(int(s) for s in shape), dtype,
                                          None if scale is None else float(_F32(scale)),
                                          None if zp is None else int(zp))
        return name

    def _fresh(self, base: str) -> str:
        """An IR tensor name that is neither taken nor the name of any ONNX tensor."""
        name, i = base, 1
        while name in self.graph.tensors or name in self.onnx_names:
            name, i = f"{base}_{i}", i + 1
        return name

    def _emit(self, op, hint, inputs, outputs, /, **attrs) -> Node:
        name, i = hint or op, 1
        while name in self.names:
            name, i = f"{hint}_{i}", i + 1
        self.names.add(name)
        node = Node(op, name, list(inputs), list(outputs), attrs)
        self.graph.nodes.append(node)
        return node

    def const(self, name, what):
        if name not in self.consts:
            _fail(f"{self.where()}: its {what} {name!r} must be a constant (initializer), but it is computed "
                  "at run time.")
        return self.consts[name]

    def val(self, name):
        if name in self.vals:
            return self.vals[name]
        if name in self.consts:
            return self.consts[name]
        _fail(f"{self.where()} reads {name!r}, which no earlier supported node produced.")

    def _describe(self, v) -> str:
        return {Host: "a float tensor computed from the graph input", Codes: "a quantized tensor",
                QConst: "a quantized constant", Chain: "the float result of a MatMul/Gemm layer",
                np.ndarray: "a constant"}.get(type(v), type(v).__name__)

    # ---- checking

    def check_ops(self):
        """One ZakidError listing every node that is neither supported nor foldable to a constant."""
        const = set(self.consts)
        bad = []
        for n in self.model.graph.node:
            dom, ins = _domain(n), [i for i in n.input if i]
            if dom in QONNX_DOMAINS and n.op_type in QUANTIZERS:
                if ins and ins[0] in const:
                    const.update(n.output)
                continue
            if dom == "" and (n.op_type in ("Constant", "Shape") or (ins and all(i in const for i in ins))):
                const.update(n.output)
                continue
            if dom == "" and n.op_type in STANDARD_OPS:
                continue
            bad.append(f"{n.name or '<unnamed>'!r} ({dom + '.' if dom else ''}{n.op_type})")
        if bad:
            _fail(f"the QONNX model contains {len(bad)} unsupported node(s): {', '.join(bad)}. zakid-hw imports "
                  f"QONNX MLPs built from {', '.join(QUANTIZERS)} (domains {', '.join(QONNX_DOMAINS)}) and "
                  f"{', '.join(sorted(STANDARD_OPS))}, plus any standard op on constants.")

    # ---- driver

    def run(self) -> Graph:
        self.check_ops()
        for node in self.model.graph.node:
            self.current = node
            self.lower(node)
        self.current = None
        self.finish_output()
        self.prune()
        ops = [(_domain(n) + "." if _domain(n) else "") + n.op_type for n in self.model.graph.node]
        self.graph.meta = {
            "source_format": "qonnx",
            "opset": {(o.domain or "ai.onnx"): o.version for o in self.model.opset_import},
            "producer": f"{self.model.producer_name} {self.model.producer_version}".strip(),
            "onnx_ops": {op: ops.count(op) for op in sorted(set(ops))},
            "notes": self.notes,
            "warnings": self.warnings,
            "code_ranges": {k: v for k, v in self.code_ranges.items() if k in self.graph.tensors},
            "layers": self.layers,
        }
        return self.graph

    def lower(self, node):
        op, dom = node.op_type, _domain(node)
        ins = [i for i in node.input if i]
        if dom in QONNX_DOMAINS:
            return self.quantizer(node)
        if op == "Constant":
            return self.constant(node)
        if op == "Shape":
            return self.shape(node)
        if ins and isinstance(self.vals.get(ins[0]), QConst) and op in (
                "Transpose", "Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze") and all(
                i in self.consts for i in ins[1:]):
            return self.qconst_shape_op(node)
        if ins and all(i in self.consts for i in ins):
            return self.fold(node)
        handler = {"Reshape": self.reshape, "Flatten": self.reshape, "Identity": self.identity,
                   "Dropout": self.identity, "MatMul": self.matmul, "Gemm": self.gemm,
                   "BatchNormalization": self.batchnorm, "Add": self.arith, "Sub": self.arith,
                   "Mul": self.arith, "Div": self.arith, "Relu": self.relu, "Clip": self.clip}.get(op)
        if handler is None:
            _fail(f"{self.where()}: {op} on a run-time tensor is not supported.")
        handler(node)

    # ---- constants

    def constant(self, node):
        from onnx import numpy_helper

        a = {x.name: x for x in node.attribute}
        if "value" not in a:
            _fail(f"{self.where()}: only Constant nodes with a 'value' tensor are supported.")
        self.consts[node.output[0]] = numpy_helper.to_array(a["value"].t)

    def shape(self, node):
        v = self.val(node.input[0])
        shape = np.asarray(v).shape if isinstance(v, np.ndarray) else self.shape_of(node.input[0])
        a = _attrs(node)
        start, end = a.get("start", 0), a.get("end", None)
        self.consts[node.output[0]] = np.asarray(shape[start:end], np.int64)

    def fold(self, node):
        arrays = {i: np.asarray(self.consts[i]) for i in node.input if i}
        try:
            outs = ort_eval(node, arrays, self.opset.get("", 13))
        except Exception as e:
            _fail(f"{self.where()}: onnxruntime could not evaluate this node on its constant inputs: {e}")
        for name, arr in zip([o for o in node.output if o], outs):
            self.consts[name] = np.asarray(arr)

    def qconst_shape_op(self, node):
        """Transpose/Reshape/... of quantized weights: apply the op to codes, scale, zero point and value."""
        q = self.vals[node.input[0]]
        rest = {i: np.asarray(self.consts[i]) for i in node.input[1:] if i}
        parts = []
        for arr in (q.codes, q.scale, q.zp, q.value):
            arrays = {node.input[0]: np.ascontiguousarray(arr, _F32), **rest}
            parts.append(np.asarray(ort_eval(node, arrays, self.opset.get("", 13))[0]))
        self.vals[node.output[0]] = QConst(*parts, q.spec)
        self.consts[node.output[0]] = parts[3]

    # ---- quantizers

    def quant_spec(self, node) -> QuantSpec:
        op, a = node.op_type, _attrs(node)
        ins = list(node.input)

        def p(i, what):
            if len(ins) <= i or not ins[i]:
                _fail(f"{self.where()}: its {what} input is missing.")
            return np.asarray(self.const(ins[i], what))

        def bits_of(arr, what):
            if arr.size != 1 or float(arr.reshape(-1)[0]) != int(arr.reshape(-1)[0]):
                _fail(f"{self.where()}: its {what} must be a single integer, got {arr.ravel()[:4]}.")
            b = int(arr.reshape(-1)[0])
            if b < 1:
                _fail(f"{self.where()}: bit width {b} is not supported (at least 1).")
            return b

        if op == "BipolarQuant":
            scale = p(1, "scale")
            spec = QuantSpec(node.name, op, scale, np.zeros((), _F32), 1, True, False, "ROUND")
        elif op == "Quant":
            scale, zeropt, bits = p(1, "scale"), p(2, "zero point"), p(3, "bit width")
            mode = str(a.get("rounding_mode", "ROUND")).upper()
            if mode not in ROUNDING:
                _fail(f"{self.where()}: rounding_mode {mode!r} is not one of {sorted(ROUNDING)}.")
            spec = QuantSpec(node.name, op, scale, zeropt, bits_of(bits, "bit width"), bool(a.get("signed", 1)),
                             bool(a.get("narrow", 0)), mode)
        elif op == "Trunc":
            version = self.opset.get(node.domain, 1)
            mode = str(a.get("rounding_mode", "FLOOR")).upper()
            if mode not in ROUNDING:
                _fail(f"{self.where()}: rounding_mode {mode!r} is not one of {sorted(ROUNDING)}.")
            scale, zeropt, in_bits = p(1, "scale"), p(2, "zero point"), p(3, "input bit width")
            if version >= 2:
                out_scale, out_bits = p(4, "output scale"), p(5, "output bit width")
                trunc_scale = 2 ** np.round(np.log2(out_scale / scale))
                spec = QuantSpec(node.name, "Trunc_v2", scale, zeropt, bits_of(out_bits, "output bit width"),
                                 bool(a.get("signed", 1)), bool(a.get("narrow", 0)), mode, in_bits,
                                 out_scale, trunc_scale)
            else:
                out_bits = p(4, "output bit width")
                trunc_scale = 2.0 ** (in_bits - out_bits)
                spec = QuantSpec(node.name, "Trunc_v1", scale, zeropt, bits_of(out_bits, "output bit width"),
                                 True, False, mode, in_bits, None, trunc_scale)
        else:
            _fail(f"{self.where()}: unknown QONNX op {op}.")
        for what, arr in (("scale", spec.scale), ("output scale", spec.out_scale)):
            if arr is not None and (not np.all(np.isfinite(arr)) or np.any(np.asarray(arr) <= 0)):
                _fail(f"{self.where()}: its {what} must be positive and finite, got {np.ravel(arr)[:4]}.")
        if not np.all(np.isfinite(spec.zeropt)):
            _fail(f"{self.where()}: its zero point is not finite.")
        return spec

    def quantizer(self, node):
        if node.op_type not in QUANTIZERS:
            _fail(f"{self.where()}: unsupported QONNX op {node.op_type}.")
        spec = self.quant_spec(node)
        x_name = node.input[0]
        out = node.output[0]
        if x_name in self.consts:  # weights (a quantized constant is re-quantized from its float value)
            x = np.asarray(self.consts[x_name], _F32)
            codes = spec.code(x)
            value = spec.value(codes)
            full = value.shape
            self.vals[out] = QConst(codes, np.broadcast_to(np.asarray(spec.value_scale, _F32), full).copy(),
                                    np.broadcast_to(np.asarray(spec.code_zp, _F32), full).copy(), value, spec)
            self.consts[out] = value
            return
        x = self.val(x_name)
        if isinstance(x, Host):
            return self.input_quant(node, spec, x)
        if isinstance(x, Chain):
            self.vals[out] = x.extend(self.quant_step(node, spec, x.shape))
            return
        _fail(f"{self.where()}: cannot quantize {self._describe(x)}; a quantizer must act on the float input "
              "(after host-side scaling) or on the result of a MatMul/Gemm layer (after elementwise steps).")

    def input_quant(self, node, spec: QuantSpec, x: Host):
        """The input quantizer, on the host: [affine] -> quantize -> [clip]."""
        if spec.op != "Quant" or spec.bipolar:
            _fail(f"{self.where()}: the input quantizer must be a multi-bit Quant (got "
                  f"{'a bipolar 1-bit quantizer' if spec.bipolar else spec.op}); the host quantizer rounds half "
                  "to even into a range of codes.")
        if spec.rounding not in ("ROUND", "HALF_EVEN"):
            _fail(f"{self.where()}: the input quantizer uses rounding_mode {spec.rounding}; only ROUND (half to "
                  "even) is supported for the input.")
        if spec.bits > 8:
            _fail(f"{self.where()}: the input quantizer has {spec.bits} bits; at most 8 are supported.")
        zp = self._scalar_int(spec.zeropt, "zero point")
        lo, hi = spec.code_range
        dtype = "int8" if lo < 0 else "uint8"
        scale = np.asarray(spec.scale, _F32)
        self._check_broadcast(scale, x.shape, "scale")
        steps = list(x.steps)
        if scale.size == 1 and zp == 0:
            q_scale = _F32(scale.reshape(-1)[0])
        else:
            steps += [("div", scale)] + ([("add", np.asarray(spec.zeropt, _F32))] if zp else [])
            q_scale = _F32(1)
        src = self.flush_host(Host(x.name, x.shape, steps), node.name)
        out = node.output[0]
        q = self._fresh(out + "_q") if (lo, hi) != dtype_range(dtype) else out
        t_scale = scale.reshape(-1)[0] if scale.size == 1 else None
        self._tensor(q, x.shape, dtype, t_scale, zp)
        self._emit("quantize", node.name or "quantize", [src], [q], scale=q_scale, zero_point=0, dtype=dtype)
        if q != out:
            self._tensor(out, x.shape, dtype, t_scale, zp)
            self._emit("clip", f"{node.name or 'quantize'}_clip", [q], [out], lo=lo, hi=hi)
        self.code_ranges[out] = (lo, hi)
        self.vals[out] = Codes(out, scale, np.asarray(zp), lo, hi, source=node.name)

    def quant_step(self, node, spec: QuantSpec, shape) -> Step:
        for what, arr in (("scale", spec.scale), ("zero point", spec.zeropt), ("output scale", spec.out_scale)):
            if arr is not None:
                self._check_broadcast(arr, shape, what)
        return Step(node.name, spec, np.ones((), _F32), None, spec)

    def _scalar_int(self, arr, what) -> int:
        arr = np.asarray(arr)
        if arr.size != 1 or not np.all(arr == np.round(arr)):
            _fail(f"{self.where()}: its {what} must be a single integer here, got {arr.ravel()[:4]}.")
        return int(arr.reshape(-1)[0])

    # ---- host side

    def flush_host(self, x: Host, hint: str) -> str:
        """Emit the pending affine steps of a host value; return the IR tensor holding it."""
        if not x.steps:
            return x.name
        out = self._tensor(self._fresh(f"{hint}_in"), x.shape, "float32")
        self._emit("affine", f"{hint}_affine", [x.name], [out], steps=list(x.steps))
        return out

    def _check_broadcast(self, c, shape, what):
        c = np.asarray(c)
        try:
            b = np.broadcast_shapes(c.shape, tuple(shape))
        except ValueError:
            b = None
        if b != tuple(shape):
            _fail(f"{self.where()}: its {what} has shape {c.shape}, which does not broadcast to the tensor's "
                  f"shape {tuple(shape)}.")

    def _channel_const(self, c, shape, what):
        """A constant acting on a layer result of ``shape``: scalar, or one value per channel (last axis)."""
        c = np.asarray(c, _F32)
        self._check_broadcast(c, shape, what)
        if c.size == 1:
            return c.reshape(())
        full = np.broadcast_to(c, shape).reshape(-1, shape[-1])
        if not np.all(full == full[:1]):
            _fail(f"{self.where()}: its {what} varies along an axis other than the channel (last) axis.")
        return full[0].copy()

    # ---- shapes

    def shape_of(self, name):
        v = self.val(name)
        if isinstance(v, np.ndarray):
            return v.shape
        if isinstance(v, (Host, Chain)):
            return v.shape
        if isinstance(v, Codes):
            return self.graph.tensors[v.name].shape
        if isinstance(v, QConst):
            return v.codes.shape
        _fail(f"{self.where()}: the shape of {name!r} is unknown.")

    def reshape(self, node):
        shape_in = self.shape_of(node.input[0])
        if node.op_type == "Flatten":
            axis = _attrs(node).get("axis", 1)
            axis = axis + len(shape_in) if axis < 0 else axis
            shape = (int(np.prod(shape_in[:axis])), int(np.prod(shape_in[axis:])))
        else:
            spec = [int(s) for s in self.const(node.input[1], "shape")]
            allow_zero = _attrs(node).get("allowzero", 0)
            shape = [shape_in[i] if s == 0 and not allow_zero else s for i, s in enumerate(spec)]
            if shape.count(-1) == 1:
                known = int(np.prod([s for s in shape if s != -1]))
                shape[shape.index(-1)] = int(np.prod(shape_in)) // max(known, 1)
            shape = tuple(shape)
        if int(np.prod(shape)) != int(np.prod(shape_in)):
            _fail(f"{self.where()}: cannot reshape {tuple(shape_in)} to {tuple(shape)}.")
        x = self.val(node.input[0])
        out = node.output[0]
        if isinstance(x, Host):
            src = self.flush_host(x, node.name or "reshape")
            self._tensor(out, shape, "float32")
            self._emit("reshape", node.name or "reshape", [src], [out], shape=tuple(shape))
            self.vals[out] = Host(out, tuple(shape))
            return
        if isinstance(x, Chain):
            x = self.materialize(x, node.input[0])
        if not isinstance(x, Codes):
            _fail(f"{self.where()}: cannot reshape {self._describe(x)}.")
        if np.asarray(x.scale).size != 1 or np.asarray(x.zp).size != 1:
            _fail(f"{self.where()}: reshaping a tensor with per-channel quantization is not supported.")
        t = self.graph.tensors[x.name]
        self._tensor(out, shape, t.dtype, t.scale, t.zero_point)
        self._emit("reshape", node.name or "reshape", [x.name], [out], shape=tuple(shape))
        self.code_ranges[out] = (x.lo, x.hi)
        self.vals[out] = Codes(out, x.scale, x.zp, x.lo, x.hi, x.mult, x.off, x.source)

    def identity(self, node):
        if node.op_type == "Dropout" and len(node.output) > 1 and node.output[1]:
            _fail(f"{self.where()}: a Dropout whose mask output is used is not supported.")
        self.vals[node.output[0]] = self.val(node.input[0])

    # ---- layers

    def matmul(self, node):
        x = self.layer_input(node, node.input[0])
        w = self.vals.get(node.input[1])
        if not isinstance(w, QConst):
            _fail(f"{self.where()}: its second input {node.input[1]!r} must be weights quantized by a "
                  f"Quant/BipolarQuant node on a constant, got {self._describe(self.val(node.input[1]))}.")
        self.vals[node.output[0]] = self.layer(node, x, w, transpose=False)

    def gemm(self, node):
        a = _attrs(node)
        if a.get("transA", 0):
            _fail(f"{self.where()}: transA=1 is not supported (the input must be (1, K)).")
        if a.get("alpha", 1.0) != 1.0:
            _fail(f"{self.where()}: alpha={a['alpha']} is not supported; fold it into the weight scale.")
        x = self.layer_input(node, node.input[0])
        w = self.vals.get(node.input[1])
        if not isinstance(w, QConst):
            _fail(f"{self.where()}: its input B {node.input[1]!r} must be weights quantized by a "
                  f"Quant/BipolarQuant node on a constant, got {self._describe(self.val(node.input[1]))}.")
        chain = self.layer(node, x, w, transpose=bool(a.get("transB", 0)))
        if len(node.input) > 2 and node.input[2]:
            c = np.asarray(self.const(node.input[2], "bias C"), _F32)
            beta = _F32(a.get("beta", 1.0))
            if beta != 1.0:
                c = (beta * c).astype(_F32)
            c = self._channel_const(c, chain.shape, "bias C")
            # onnxruntime (M = 1) adds the bias once to the exact float product: f32(acc * unit + c)
            chain = chain.extend(Step(node.name, lambda v, c=c: v + c, np.ones((), _F32), [("add", c)]))
            self.notes.append(f"{node.name}: the float Gemm bias is an elementwise add after the exact product")
        self.vals[node.output[0]] = chain

    def layer_input(self, node, name) -> Codes:
        x = self.val(name)
        if isinstance(x, Chain):
            x = self.materialize(x, name)
        if not isinstance(x, Codes):
            _fail(f"{self.where()}: its input {name!r} must be a quantized tensor (the output of a Quant, "
                  f"BipolarQuant or Trunc), got {self._describe(x)}.")
        return x

    def layer(self, node, x: Codes, w: QConst, transpose: bool) -> Chain:
        codes, scale, zp = w.codes, w.scale, w.zp
        if codes.ndim != 2:
            _fail(f"{self.where()}: weights of shape {codes.shape} are not supported (2-D only).")
        if transpose:
            codes, scale, zp = codes.T, scale.T, zp.T
        k, n = codes.shape
        x_shape = self.graph.tensors[x.name].shape
        if x_shape[-1] != k:
            _fail(f"{self.where()}: input has {x_shape[-1]} features but the weights expect {k}.")
        spec = w.spec
        if spec.bits > 8:
            _fail(f"{self.where()}: weights quantized by {spec.name!r} have {spec.bits} bits; at most 8 are "
                  "supported.")
        for what, arr in (("weight scale", scale), ("weight zero point", zp)):
            if not np.all(arr == arr[:1]):
                _fail(f"{self.where()}: the {what} varies along the input (reduction) axis; only per-tensor "
                      "or per-output-channel values are supported.")
        sw, wzp = scale[0].astype(_F32), zp[0]
        if not np.all(wzp == np.round(wzp)):
            _fail(f"{self.where()}: the weight zero point must be an integer, got {wzp[:4]}.")
        w_int = (codes - wzp[None, :]).T.astype(np.int64)  # (N, K), zero point folded
        if not np.array_equal(w_int, (codes - wzp[None, :]).T):
            _fail(f"{self.where()}: weight codes are not integers.")
        sx = np.asarray(x.scale, _F32)
        if sx.size != 1:
            _fail(f"{self.where()}: the input {x.name!r} has per-channel scales (quantizer {x.source!r}); a "
                  "MatMul needs one scale for its whole input.")
        sx = _F32(sx.reshape(-1)[0])
        xzp = self._scalar_int(x.zp, f"input zero point (quantizer {x.source!r})")
        # integer code of the input: s * mult + off; acc = sum_k w[n, k] * (code_k - xzp)
        if x.mult == 1:
            weight, x_zp, bias = w_int, xzp - x.off, np.zeros(n, np.int64)
        else:
            weight, x_zp, bias = w_int * x.mult, 0, (x.off - xzp) * w_int.sum(axis=1)
        out_shape = (*x_shape[:-1], n)
        acc = self._tensor(self._fresh(f"{node.name or node.op_type}_acc"), out_shape, "int32")
        dense = self._emit("dense", node.name or node.op_type, [x.name], [acc], weight=np.ascontiguousarray(weight),
                           w_zp=0, x_zp=int(x_zp), bias=bias)
        unit = (sx * sw).astype(_F32)
        # exactness of the float MatMul: power-of-two scales, |sum of products| < 2**24 units
        span = max(abs(x.lo * x.mult + x.off - xzp), abs(x.hi * x.mult + x.off - xzp))
        worst = int((np.abs(w_int).sum(axis=1) * span).max()) if n else 0
        exact = (_is_po2(sx) and _is_po2(sw) and _is_po2(unit) and worst <= 2**24
                 and bool(np.all(np.isfinite(unit * _F32(2**24)))))
        if not exact:
            why = (f"the sums of products can reach {worst} > 2**24 units" if worst > 2**24 else
                   f"the scales (input {sx}, weights {np.unique(sw)[:4]}) are not all powers of two")
            self.warnings.append(
                f"layer {node.name!r}: {why}, so the float MatMul that execute_onnx runs rounds in an order "
                "zakid-hw does not reproduce; the layer is imported as f32(acc) * f32(x_scale * w_scale) and "
                "may differ from execute_onnx in rare cases.")
        w_bits = signed_bits(int(weight.min()), int(weight.max())) if weight.size else 1
        self.layers[dense.name] = {
            "weight_quantizer": spec.name, "weight_bits": spec.bits, "weight_range": (int(weight.min()),
                                                                                     int(weight.max())),
            "weight_bits_after_zp_folding": w_bits, "x_scale": float(sx),
            "w_scale": float(sw[0]) if np.all(sw == sw[0]) else sw.tolist(), "exact_float_matmul": bool(exact),
            "max_abs_sum": worst}
        self.code_ranges[acc] = None  # filled by materialize
        return Chain(dense, np.broadcast_to(unit, (n,)).copy(), (), out_shape)

    # ---- elementwise steps

    def arith(self, node):
        op = node.op_type
        a_name, b_name = node.input[0], node.input[1]
        a_const, b_const = a_name in self.consts, b_name in self.consts
        a = self.consts[a_name] if a_const else self.val(a_name)
        b = self.consts[b_name] if b_const else self.val(b_name)
        if a_const == b_const:
            _fail(f"{self.where()}: {op} of {self._describe(a)} and {self._describe(b)}; only a run-time tensor "
                  "and a constant are supported.")
        x, c, reverse = (b, a, True) if a_const else (a, b, False)
        c = np.asarray(c, _F32)
        if reverse and op == "Div":
            _fail(f"{self.where()}: dividing a constant by a tensor is not supported.")
        if isinstance(x, Host):
            self._check_broadcast(c, x.shape, "constant operand")
            name = {"Add": "add", "Sub": "sub", "Mul": "mul", "Div": "div"}[op]
            steps = [("mul", _F32(-1)), ("add", c)] if reverse and op == "Sub" else [(name, c)]
            self.vals[node.output[0]] = Host(x.name, x.shape, x.steps + steps)
            return
        if not isinstance(x, Chain):
            _fail(f"{self.where()}: {op} on {self._describe(x)} is not supported; elementwise steps may act on "
                  "the float input (host side) or on a MatMul/Gemm result before its quantizer.")
        c = self._channel_const(c, x.shape, "constant operand")
        sgn = np.sign(c).astype(_F32)
        if op == "Add":
            step = Step(node.name, lambda v, c=c: v + c, np.ones((), _F32), [("add", c)])
        elif op == "Sub" and not reverse:
            step = Step(node.name, lambda v, c=c: v - c, np.ones((), _F32), [("sub", c)])
        elif op == "Sub":  # c - x == (-x) + c exactly
            step = Step(node.name, lambda v, c=c: c - v, -np.ones((), _F32), [("mul", _F32(-1)), ("add", c)])
        elif op == "Mul":
            step = Step(node.name, lambda v, c=c: v * c, sgn, [("mul", c)])
        else:
            if np.any(c == 0):
                _fail(f"{self.where()}: division by zero.")
            step = Step(node.name, lambda v, c=c: v / c, sgn, [("div", c)])
        self.vals[node.output[0]] = x.extend(step)

    def batchnorm(self, node):
        if len([o for o in node.output if o]) > 1:
            _fail(f"{self.where()}: BatchNormalization in training mode (extra outputs) is not supported.")
        a = _attrs(node)
        gamma, beta, mean, var = (np.asarray(self.const(node.input[i], w), _F32) for i, w in
                                  ((1, "scale"), (2, "bias"), (3, "mean"), (4, "variance")))
        eps = _F32(a.get("epsilon", 1e-5))
        # onnxruntime's kernel (batch_norm.h): inv_std = 1 / sqrt(var + eps); s = inv_std * gamma;
        # b = beta - mean * s; y = x * s + b, every step rounded to float32 (checked against onnxruntime)
        inv_std = (_F32(1) / np.sqrt(var + eps)).astype(_F32)
        s = (inv_std * gamma).astype(_F32)
        b = (beta - mean * s).astype(_F32)
        x = self.val(node.input[0])
        if isinstance(x, Host):
            if len(x.shape) < 2 or x.shape[1] != s.size:
                _fail(f"{self.where()}: {s.size} channels for an input of shape {x.shape}.")
            bshape = (s.size,) + (1,) * (len(x.shape) - 2)
            self.vals[node.output[0]] = Host(x.name, x.shape, x.steps + [("mul", s.reshape(bshape)),
                                                                         ("add", b.reshape(bshape))])
            return
        if not isinstance(x, Chain):
            _fail(f"{self.where()}: BatchNormalization on {self._describe(x)} is not supported.")
        if len(x.shape) != 2 or x.shape[1] != s.size:
            _fail(f"{self.where()}: BatchNormalization of a {x.shape} layer result with {s.size} channels is not "
                  "supported (it must be (1, channels)).")
        step = Step(node.name, lambda v, s=s, b=b: v * s + b, np.sign(s).astype(_F32), [("mul", s), ("add", b)])
        self.vals[node.output[0]] = x.extend(step)

    def relu(self, node):
        x = self.val(node.input[0])
        if not isinstance(x, Chain):
            _fail(f"{self.where()}: Relu on {self._describe(x)} is not supported; it must act on a MatMul/Gemm "
                  "result before its quantizer.")
        self.vals[node.output[0]] = x.extend(Step(node.name, lambda v: np.maximum(v, _F32(0)),
                                                  np.ones((), _F32), None))

    def clip(self, node):
        x = self.val(node.input[0])
        if not isinstance(x, Chain):
            _fail(f"{self.where()}: Clip on {self._describe(x)} is not supported; it must act on a MatMul/Gemm "
                  "result before its quantizer.")
        a = _attrs(node)
        lo = self.const(node.input[1], "min") if len(node.input) > 1 and node.input[1] else a.get("min", -np.inf)
        hi = self.const(node.input[2], "max") if len(node.input) > 2 and node.input[2] else a.get("max", np.inf)
        lo, hi = _F32(np.asarray(lo).reshape(())), _F32(np.asarray(hi).reshape(()))
        self.vals[node.output[0]] = x.extend(Step(node.name, lambda v, lo=lo, hi=hi: np.minimum(np.maximum(v, lo), hi),
                                                  np.ones((), _F32), None))

    # ---- chains to thresholds

    def materialize(self, chain: Chain, onnx_name: str) -> Codes:
        """dense -> threshold for a chain that ends in a quantizer; returns the codes."""
        if id(chain) in self.materialized:
            return self.materialized[id(chain)]
        q = chain.last_quant
        if q is None or q != len(chain.steps) - 1:
            what = "has no quantizer" if q is None else f"continues after its quantizer {chain.steps[q].name!r}"
            _fail(f"{self.where()}: its input {onnx_name!r} is the float result of layer {chain.dense.name!r} "
                  f"that {what}; quantize it (Quant/BipolarQuant/Trunc) before the next layer.")
        spec = chain.steps[-1].quant
        dense = chain.dense
        n = dense.attrs["weight"].shape[0]
        sign = np.ones(n, _F32)
        for s in chain.steps:
            sign = sign * np.broadcast_to(s.sign, (n,))
        flip = sign < 0
        if "flipped" in dense.attrs and not np.array_equal(dense.attrs["flipped"], flip):
            _fail(f"{self.where()}: layer {dense.name!r} feeds two quantizers with opposite monotonicity.")
        if np.any(flip) and "flipped" not in dense.attrs:
            dense.attrs["weight"] = np.where(flip[:, None], -dense.attrs["weight"], dense.attrs["weight"])
            dense.attrs["bias"] = np.where(flip, -dense.attrs["bias"], dense.attrs["bias"])
            self.notes.append(f"{dense.name}: {int(flip.sum())} channel(s) with a decreasing activation function "
                              "have negated weights and bias")
        dense.attrs["flipped"] = flip
        x_lo, x_hi = self.code_ranges[dense.inputs[0]]
        lo, hi = _dense_bounds(dense, x_lo, x_hi)
        neg = np.where(flip, -1, 1).astype(np.int64)
        unit = chain.unit
        steps = chain.steps[:-1]

        def code_of(acc):
            v = (np.asarray(acc, np.int64) * neg).astype(_F32) * unit
            for st in steps:
                v = np.asarray(st.fn(v), _F32)
            return spec.code(v)

        if spec.bipolar:
            def g(acc):
                return ((code_of(acc) + 1) // 2).astype(np.int64)
            mult, off = 2, -1
        else:
            def g(acc):
                return code_of(acc).astype(np.int64)
            mult, off = 1, 0

        thr, base = staircase(g, lo, hi)
        c_lo, c_hi = int(g(lo[None]).min()), int(g(hi[None]).max())
        signed = spec.signed and not spec.bipolar
        dtype = "int8" if signed or c_lo < 0 else "uint8"
        d_lo, d_hi = dtype_range(dtype)
        if c_lo < d_lo or c_hi > d_hi:
            _fail(f"{self.where()}: quantizer {spec.name!r} produces codes {c_lo}..{c_hi}, outside {dtype}.")
        _verify(g, thr, base, lo, hi, spec.name)
        zp = np.asarray(spec.code_zp, _F32)
        scale = np.asarray(spec.value_scale, _F32)
        if not np.all(zp == np.round(zp)):
            _fail(f"{self.where()}: quantizer {spec.name!r} has a non-integer zero point {zp.ravel()[:4]}.")
        zp_c = self._channel_const(zp, chain.shape, "zero point")
        sc_c = self._channel_const(scale, chain.shape, "scale")
        out = onnx_name if onnx_name not in self.graph.tensors else self._fresh(onnx_name)
        t_scale = float(sc_c) if sc_c.size == 1 else None
        t_zp = int(zp_c) if (zp_c.size == 1 and mult == 1) else None
        self._tensor(out, chain.shape, dtype, t_scale, t_zp)
        self._emit("threshold", f"{dense.name}_threshold", [dense.outputs[0]], [out], thresholds=thr,
                   base=int(base), dtype=dtype, axis=-1)
        self.code_ranges[out] = (c_lo, c_hi)
        codes = Codes(out, sc_c, zp_c, c_lo, c_hi, mult, off, spec.name)
        self.layers[dense.name].update(act_quantizer=spec.name, act_bits=spec.bits, act_codes=(c_lo, c_hi),
                                       threshold_levels=int(thr.shape[1]))
        self.materialized[id(chain)] = codes
        return codes

    # ---- output

    def finish_output(self):
        out = self.graph.outputs[0]
        self.current = next((n for n in self.model.graph.node if out in n.output), None)
        v = self.vals.get(out)
        if v is None:
            _fail(f"graph output {out!r} is a constant or is not computed by a supported node.")
        if isinstance(v, Chain):
            q = v.last_quant
            if q is not None and q < len(v.steps) - 1:
                head = Chain(v.dense, v.unit, v.steps[:q + 1], v.shape)
                return self.codes_to_output(self.materialize(head, out + "_codes"), list(v.steps[q + 1:]), out)
            if q is not None:
                return self.codes_to_output(self.materialize(v, out + "_codes"), [], out)
            return self.acc_to_output(v, out)
        if isinstance(v, Codes):
            return self.codes_to_output(v, [], out)
        _fail(f"graph output {out!r} is {self._describe(v)}; it must be the result of a layer.")

    def _host_steps(self, steps) -> list:
        out = []
        for s in steps:
            if s.affine is None:
                _fail(f"node {s.name!r} after the last layer cannot run on the host: the IR's host-side float "
                      "steps are add/sub/mul/div by constants (no Relu/Clip/quantizer there).")
            out += s.affine
        return out

    def acc_to_output(self, chain: Chain, out: str):
        """Last layer without quantizer: int32 accumulators out of the accelerator, float steps on the host."""
        dense = chain.dense
        if np.any(dense.attrs.get("flipped", False)):
            _fail(f"{self.where()}: layer {dense.name!r} feeds both a quantizer and the graph output.")
        acc = dense.outputs[0]
        unit = chain.unit
        scalar_unit = bool(np.all(unit == unit[0]))
        steps = ([] if scalar_unit else [("mul", unit)]) + self._host_steps(chain.steps)
        name = self._fresh(out + "_f") if steps else out
        self._tensor(name, chain.shape, "float32")
        self._emit("dequantize", f"{dense.name}_dequantize", [acc], [name],
                   scale=_F32(unit[0]) if scalar_unit else _F32(1), zero_point=0)
        if steps:
            self._tensor(out, chain.shape, "float32")
            self._emit("affine", f"{dense.name}_affine", [name], [out], steps=steps)
        x_lo, x_hi = self.code_ranges[dense.inputs[0]]
        lo, hi = _dense_bounds(dense, x_lo, x_hi)
        self.code_ranges[acc] = (int(lo.min()), int(hi.max()))
        self.notes.append(f"{dense.name}: the accelerator returns the int32 accumulators; the host applies "
                          f"{len(steps)} float step(s) to them")

    def codes_to_output(self, codes: Codes, rest, out: str):
        """Quantized result to the float output: (code - zp) * scale as qonnx computes it, then ``rest``."""
        t = self.graph.tensors[codes.name]
        sc, zp = np.asarray(codes.scale, _F32), np.asarray(codes.zp, _F32)
        extra = self._host_steps(rest)
        if codes.mult == 1 and sc.size == 1 and zp.size == 1:
            steps = extra
            deq = dict(scale=_F32(sc.reshape(())), zero_point=int(zp.reshape(())) - codes.off)
        else:
            steps = ([("mul", _F32(codes.mult))] if codes.mult != 1 else []) + \
                    ([("add", _F32(codes.off))] if codes.off else []) + \
                    ([("sub", zp)] if np.any(zp) else []) + [("mul", sc)] + extra
            deq = dict(scale=_F32(1), zero_point=0)
        name = self._fresh(out + "_f") if steps else out
        self._tensor(name, t.shape, "float32")
        self._emit("dequantize", f"{codes.name}_dequantize", [codes.name], [name], **deq)
        if steps:
            self._tensor(out, t.shape, "float32")
            self._emit("affine", f"{codes.name}_affine", [name], [out], steps=steps)

    def prune(self):
        """Drop IR nodes whose results nothing uses; drop importer-only attributes."""
        while True:
            used = set(self.graph.outputs) | {i for n in self.graph.nodes for i in n.inputs}
            dead = [n for n in self.graph.nodes if not any(o in used for o in n.outputs)]
            if not dead:
                break
            for n in dead:
                self.graph.nodes.remove(n)
                for o in n.outputs:
                    self.graph.tensors.pop(o, None)
        for n in self.graph.nodes:
            n.attrs.pop("flipped", None)
        used = {t for n in self.graph.nodes for t in n.inputs + n.outputs} | set(self.graph.inputs)
        self.graph.tensors = {k: v for k, v in self.graph.tensors.items() if k in used}
        self.code_ranges = {k: v for k, v in self.code_ranges.items() if v is not None}


def _dense_bounds(dense: Node, x_lo: int, x_hi: int):
    """Exact per-channel accumulator range of a dense node for input codes in [x_lo, x_hi]."""
    a = dense.attrs
    w = np.asarray(a["weight"], np.int64) - np.asarray(a["w_zp"], np.int64).reshape(-1, 1)
    d = np.array([x_lo - a["x_zp"], x_hi - a["x_zp"]], np.int64)
    terms = w[:, :, None] * d[None, None, :]
    bias = np.asarray(a["bias"], np.int64)
    return terms.min(axis=2).sum(axis=1) + bias, terms.max(axis=2).sum(axis=1) + bias


def _verify(g, thr, base, lo, hi, what: str):
    """Check the threshold table against the activation function on every reachable accumulator (or, for
    wide ranges, on the boundaries and a deterministic sample)."""
    n = lo.size
    width = int((hi - lo).max()) + 1
    if width * n <= _VERIFY_EXHAUSTIVE:
        accs = lo[None, :] + np.arange(width)[:, None]
        accs = np.minimum(accs, hi[None, :])
    else:
        rng = np.random.default_rng(0)
        near = np.concatenate([thr.T - 1, thr.T], axis=0)
        accs = np.concatenate([lo[None], hi[None], np.clip(near, lo, hi),
                               rng.integers(lo, hi + 1, (4096, n))], axis=0)
    for i in range(0, accs.shape[0], 4096):
        a = accs[i:i + 4096]
        got = golden.threshold(a, thresholds=thr, base=base, dtype="int32", axis=-1)
        if not np.array_equal(got, g(a)):
            _fail(f"internal error: the threshold table for quantizer {what!r} does not reproduce its activation "
                  "function (the chain is not monotone?). Please report this with the model.")
