"""Shared pieces of the ONNX importer (:mod:`zakid_hw.onnx_import`, :mod:`zakid_hw.onnx_cnn`): the lazy values
an ONNX tensor can have during lowering, onnxruntime sessions, and the exact arithmetic helpers (onnxruntime's
requantization multiplier, staircases, tabulation of elementwise "islands" with onnxruntime).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import ZakidError
from .ir import dtype_range

_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 6: "int32"}
#: onnx >= 1.20 writes IR version 14, which onnxruntime 1.31 refuses
ORT_MAX_IR_VERSION = 10


def _fail(msg: str):
    raise ZakidError(" ".join(msg.split()))


def _scalar(a, what: str):
    a = np.asarray(a)
    if a.size != 1:
        _fail(f"{what} must be a single value (per-tensor), got shape {a.shape}.")
    return a.reshape(()).item()


# --------------------------------------------------------------------------------------------------------
# values of ONNX tensors during lowering. ``shape`` is the ONNX shape where it differs from the IR tensor's
# (a 1-D convolution's (1, C, L) tensors are (1, C, 1, L) in the IR); None means "the IR tensor's shape".


@dataclass
class IRValue:
    """An ONNX tensor that exists in the IR graph under ``name``."""
    name: str
    shape: tuple | None = None


@dataclass
class DQValue:
    """DequantizeLinear of an IR integer tensor (kept lazy: only materialized if it reaches the output).
    ``dq_node`` is the ONNX DequantizeLinear node reading ONNX tensor ``dq_node.input[0]`` (which is IR tensor
    ``src``), or None after a shape change or pooling, when a DequantizeLinear is made up for tabulation."""
    src: str
    scale: np.float32
    zp: int
    dq_node: object = None
    shape: tuple | None = None


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
    """Float result of MatMul/Gemm/Conv on dequantized inputs (QDQ), to be requantized as onnxruntime's fused
    kernel does: real value ``acc * alpha * x_scale * w_scale``; per-channel scales run along ``axis``."""
    acc: str
    x_scale: np.float32
    w_scale: np.ndarray
    alpha: np.float32
    axis: int = -1
    shape: tuple | None = None


@dataclass
class Island:
    """Float elementwise function of the IR integer tensor ``src`` (fed to the ONNX ``nodes`` as ONNX tensor
    ``src_onnx`` of ONNX shape ``shape``); resolved by tabulation when it becomes integer again.
    ``through_max``: a max pooling was moved in front of it (valid only if the function is non-decreasing)."""
    src: str
    src_onnx: str
    nodes: list = field(default_factory=list)
    shape: tuple | None = None
    through_max: bool = False
    #: ONNX shape after Reshape/Flatten nodes in the island (they commute with elementwise maps)
    post_shape: tuple | None = None


@dataclass
class SoftmaxValue:
    """Float Softmax of a dequantized tensor: host-side softmax at the output, or com.microsoft QLinearSoftmax
    when a QuantizeLinear follows (onnxruntime fuses DQ -> Softmax -> Q)."""
    dq: DQValue
    axis: int
    node: object


# --------------------------------------------------------------------------------------------------------
# onnxruntime


def ort_session(model, optimized_model_filepath=None, level=None):
    """An onnxruntime CPU session (default optimisation level unless ``level``) for an in-memory model, with its
    IR version lowered to one onnxruntime reads."""
    import onnxruntime as ort

    m = type(model)()
    m.CopyFrom(model)
    m.ir_version = min(m.ir_version, ORT_MAX_IR_VERSION)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if level is not None:
        opts.graph_optimization_level = level
    if optimized_model_filepath:
        opts.optimized_model_filepath = str(optimized_model_filepath)
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------------------------------------
# arithmetic helpers


def multiplier(x_scale, w_scale, y_scale, alpha=1.0) -> np.ndarray:
    """onnxruntime's requantization multiplier, in its float32 operation order:
    ``f32(f32(f32(alpha * x_scale) * w_scale) / y_scale)`` (QGemm; QLinearMatMul and QLinearConv are the
    same with alpha 1)."""
    f = np.float32
    xa = f(f(alpha) * f(x_scale))
    return (f(xa) * np.asarray(w_scale, np.float32) / f(y_scale)).astype(np.float32)


def staircase(g, lo, hi):
    """Thresholds (C, T) and base reproducing a per-channel non-decreasing integer function ``g`` of the
    accumulator on [lo, hi]: ``g(acc) == base + #{j: acc >= thr[c, j]}``. ``g`` maps (rows, C) arrays."""
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


_ONNX_INT = {"int8": 3, "uint8": 2}


def run_code_map(opsets, nodes, inputs: dict, out: str, out_dtype: str, consts: dict, where: str):
    """Run ONNX ``nodes`` in onnxruntime once per code of the integer inputs.

    ``inputs``: ONNX name -> (dtype, shape); every input is filled with the same code on each run (all codes of
    the first input's dtype). Returns an array (codes, *output shape) of output codes."""
    from onnx import helper, numpy_helper

    needed = {i for n in nodes for i in n.input if i in consts and i not in inputs}
    graph = helper.make_graph(
        list(nodes), "island",
        [helper.make_tensor_value_info(k, _ONNX_INT[d], list(s)) for k, (d, s) in inputs.items()],
        [helper.make_tensor_value_info(out, _ONNX_INT[out_dtype], None)],
        [numpy_helper.from_array(np.asarray(consts[i]), i) for i in sorted(needed)])
    sub = helper.make_model(graph, opset_imports=list(opsets))
    dtype = next(iter(inputs.values()))[0]
    lo, hi = dtype_range(dtype)
    try:
        sess = ort_session(sub)
        rows = []
        for v in range(lo, hi + 1):
            feed = {k: np.full(s, v, np.int8 if d == "int8" else np.uint8) for k, (d, s) in inputs.items()}
            rows.append(np.asarray(sess.run(None, feed)[0]))
    except ZakidError:
        raise
    except Exception as e:
        _fail(f"{where}: onnxruntime could not run this elementwise part of the model: {e}")
    return np.stack(rows).astype(np.int64)


def channel_table(full: np.ndarray, shape, where: str):
    """Reduce a tabulated code map ``full`` (codes, *shape) to (table (codes, C), axis): C = 1 when it is the
    same everywhere (axis None), else one column per index of axis 1 or of the last axis."""
    shape = tuple(shape)
    if full.shape[1:] != shape:
        _fail(f"{where}: this elementwise operation changes the tensor's shape from {shape} to "
              f"{full.shape[1:]}; only per-channel elementwise operations are supported here.")
    flat = full.reshape(full.shape[0], -1)
    if np.all(flat == flat[:, :1]):
        return flat[:, :1], None
    for axis in ([1] if len(shape) > 2 else []) + [len(shape) - 1]:
        moved = np.moveaxis(full, axis + 1, -1).reshape(full.shape[0], -1, shape[axis])
        if np.all(moved == moved[:, :1, :]):
            return moved[:, 0, :], (1 if axis == 1 else -1)
    _fail(f"{where}: this elementwise operation does not act per channel (its constants vary along more "
          "than the channel axis), so it cannot be merged into a requantization.")
