"""The integer IR: one small graph form that every ONNX flavour lowers to.

A :class:`Graph` is a list of :class:`Node` in topological order over named :class:`Tensor` values. Op
semantics live in :mod:`zakid_hw.golden` (one numpy function per op); this module only holds data and the
table of ops with their attributes, so that importers, passes, the golden model, the cost model and the
hardware generator all agree on names.

Ops (``attrs`` in brackets; per-channel arrays run along the last axis):

``quantize``    float32 -> int8/uint8   [scale (f32), zero_point, dtype]
``dequantize``  int8/uint8 -> float32   [scale (f32), zero_point]
``dense``       int8/uint8 -> int32 accumulator
                ``acc = (x - x_zp) @ (weight - w_zp).T + bias``  [weight (N, K) int, w_zp (scalar or N),
                x_zp, bias (N,) int]
``requantize``  int32 -> int8/uint8
                ``q = clip(rint_half_even(f32(f32(acc) * multiplier)) + zero_point, qmin, qmax)``
                [multiplier (f32, scalar or per channel), zero_point, dtype, qmin, qmax]
``relu``        int8/uint8 -> same, ``max(q, zero_point)``  [zero_point]
``threshold``   int32 -> int8/uint8, ``q = base + #{j : acc >= thresholds[c, j]}``
                [thresholds (C, T) int, base, dtype]; C is 1 (shared) or the channel count
``reshape``     any -> same dtype, new shape  [shape]
``conv``        int8/uint8 (1, C, H, W) -> int32 (1, M, OH, OW): 2-D convolution of ``x - x_zp`` (padding
                contributes 0, i.e. the code ``x_zp``) with ``weight - w_zp``, plus bias; 1-D convolutions
                are 2-D with H = 1  [weight (M, C/group, KH, KW), w_zp (scalar or M), x_zp, bias (M,),
                strides (sy, sx), pads (top, left, bottom, right), dilations (dy, dx), group]
``maxpool``     int8/uint8 (1, C, H, W) -> same: maximum of the codes in each window; padding never wins
                [kernel (kh, kw), strides, pads, dilations, ceil_mode]
``sumpool``     int8/uint8 (1, C, H, W) -> int32: sum of ``x - x_zp`` over each window (padding adds 0)
                [kernel, strides, pads, x_zp]; with a ``threshold`` after it, this is average pooling
``add``         two int8/uint8 tensors -> int32: ``(a - a_zp) * a_mult + (b - b_zp) * b_mult`` (integer
                multipliers)  [a_zp, b_zp, a_mult, b_mult]
``concat``      int8/uint8 tensors -> same, joined along ``axis``  [axis]
``transpose``   any -> same dtype  [perm]
``clip``        int8/uint8 -> same, ``clip(q, lo, hi)``  [lo, hi]
``affine``      float32 -> float32: elementwise steps ``x = f32(x <op> c)`` in order, op one of add, sub,
                mul, div, c broadcast against x  [steps: list of (op, array)]
``softmax``     float32 -> float32 along ``axis`` (host side only)  [axis]
``qsoftmax``    int8/uint8 -> same dtype along ``axis``: com.microsoft QLinearSoftmax exactly as onnxruntime 1.32
                computes it (host side only; see :func:`zakid_hw.golden.qsoftmax`)  [x_scale, x_zp, y_scale,
                y_zp, dtype, axis, opset]; ``opset`` < 13 normalises over all axes from ``axis`` on

Optional attributes (with defaults, see :data:`OPTIONAL`): ``threshold`` and ``requantize`` take ``axis``
(the channel axis of per-channel tables or multipliers, default -1; conv outputs use 1); ``conv`` takes
``pad_code``, the code padding reads (default ``x_zp``; kept by the zero-point folding pass).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np

DTYPES = {
    "float32": (None, None),
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int32": (-(2**31), 2**31 - 1),
}

OPS = {
    "quantize": ("scale", "zero_point", "dtype"),
    "dequantize": ("scale", "zero_point"),
    "dense": ("weight", "w_zp", "x_zp", "bias"),
    "requantize": ("multiplier", "zero_point", "dtype", "qmin", "qmax"),
    "relu": ("zero_point",),
    "threshold": ("thresholds", "base", "dtype"),
    "reshape": ("shape",),
    "conv": ("weight", "w_zp", "x_zp", "bias", "strides", "pads", "dilations", "group"),
    "maxpool": ("kernel", "strides", "pads", "dilations", "ceil_mode"),
    "sumpool": ("kernel", "strides", "pads", "x_zp"),
    "add": ("a_zp", "b_zp", "a_mult", "b_mult"),
    "concat": ("axis",),
    "transpose": ("perm",),
    "clip": ("lo", "hi"),
    "affine": ("steps",),
    "softmax": ("axis",),
    "qsoftmax": ("x_scale", "x_zp", "y_scale", "y_zp", "dtype", "axis", "opset"),
}

#: attributes an op may carry, with the value meant when they are absent
OPTIONAL = {
    "threshold": {"axis": -1},
    "requantize": {"axis": -1},
    "conv": {"pad_code": None},
}


def dtype_range(dtype: str) -> tuple[int, int]:
    """Smallest and largest value of an integer dtype name."""
    lo, hi = DTYPES[dtype]
    if lo is None:
        raise ValueError(f"{dtype} has no integer range")
    return lo, hi


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    #: for int8/uint8 tensors: the real value is (q - zero_point) * scale
    scale: float | None = None
    zero_point: int | None = None


@dataclass
class Node:
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.op not in OPS:
            raise ValueError(f"unknown IR op {self.op!r} (node {self.name!r})")
        missing = [a for a in OPS[self.op] if a not in self.attrs]
        if missing:
            raise ValueError(f"IR node {self.name!r} ({self.op}) lacks attributes {missing}")


@dataclass
class Graph:
    name: str
    inputs: list[str]
    outputs: list[str]
    tensors: dict[str, Tensor]
    nodes: list[Node]
    #: free-form facts about where the graph came from (source format, quantization scheme, ...)
    meta: dict = field(default_factory=dict)

    def copy(self) -> "Graph":
        return copy.deepcopy(self)

    def producer(self, tensor: str) -> Node | None:
        for n in self.nodes:
            if tensor in n.outputs:
                return n
        return None

    def consumers(self, tensor: str) -> list[Node]:
        return [n for n in self.nodes if tensor in n.inputs]

    def nodes_of(self, op: str) -> list[Node]:
        return [n for n in self.nodes if n.op == op]

    def summary(self) -> str:
        lines = [f"graph {self.name}: inputs {self.inputs} outputs {self.outputs}"]
        for n in self.nodes:
            shapes = [self.tensors[t].shape for t in n.outputs]
            lines.append(f"  {n.name}: {n.op} {n.inputs} -> {n.outputs} {shapes}")
        return "\n".join(lines)


def as_f32(x) -> np.ndarray:
    return np.asarray(x, dtype=np.float32)
