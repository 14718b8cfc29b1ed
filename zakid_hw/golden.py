"""Golden model: the executable specification of the integer IR, in numpy.

One op, one short function. Integer ops compute in int64 and are exact; the float steps are the float32
steps onnxruntime takes (see ``../shared/FACTS.md``), so the golden model equals onnxruntime bit for bit on
the same quantized model. RTL tests, the threshold pass, the cost model and the reports all call these
functions rather than re-deriving the arithmetic.
"""

from __future__ import annotations

import numpy as np

from .ir import OPS, OPTIONAL, Graph, Node, dtype_range


def quantize(x, *, scale, zero_point, dtype):
    """ONNX QuantizeLinear as onnxruntime computes it: ``saturate(rint(f32(x) / f32(scale)) + zp)``."""
    lo, hi = dtype_range(dtype)
    q = np.rint(np.asarray(x, np.float32) / np.float32(scale)).astype(np.float64) + int(zero_point)
    return np.clip(q, lo, hi).astype(np.int64)


def dequantize(q, *, scale, zero_point):
    """ONNX DequantizeLinear: ``f32(q - zp) * f32(scale)``."""
    return (np.asarray(q, np.int64) - int(zero_point)).astype(np.float32) * np.float32(scale)


def dense(x, *, weight, w_zp, x_zp, bias):
    """Integer fully connected layer: ``(x - x_zp) @ (weight - w_zp).T + bias`` over the last axis."""
    w = np.asarray(weight, np.int64) - np.asarray(w_zp, np.int64).reshape(-1, 1)
    return (np.asarray(x, np.int64) - int(x_zp)) @ w.T + np.asarray(bias, np.int64)


def requantize(acc, *, multiplier, zero_point, dtype, qmin, qmax, axis=-1):
    """onnxruntime's requantization: the float32 product of the accumulator and the float32 multiplier
    (scalar, or per channel along ``axis``), rounded half to even, plus the zero point, clipped to
    ``[qmin, qmax]`` (which lie inside the dtype)."""
    acc = np.asarray(acc, np.int64)
    mult = np.asarray(multiplier, np.float32)
    if mult.ndim == 1 and mult.size > 1 and acc.ndim >= 1:
        shape = [1] * acc.ndim
        shape[axis] = mult.size
        mult = mult.reshape(shape)
    prod = acc.astype(np.float32) * mult
    r = np.clip(np.rint(prod).astype(np.float64), -(2.0**40), 2.0**40).astype(np.int64)
    return np.clip(r + int(zero_point), qmin, qmax)


def relu(q, *, zero_point):
    """Relu on a quantized tensor: the real value is clamped at 0, i.e. the code at the zero point."""
    return np.maximum(np.asarray(q, np.int64), int(zero_point))


def threshold(acc, *, thresholds, base, dtype, axis=-1):
    """Multi-threshold activation: ``base`` plus the number of thresholds the accumulator reaches.

    ``thresholds`` has shape (C, T), ascending along T; C is 1 (shared by all channels) or the size of
    axis ``axis`` of ``acc``.
    """
    acc = np.moveaxis(np.asarray(acc, np.int64), axis, -1)
    thr = np.asarray(thresholds, np.int64)
    counts = (acc[..., None] >= thr).sum(axis=-1)  # broadcasts (…, C) against (C, T)
    return np.moveaxis(counts + int(base), -1, axis)


def reshape(x, *, shape):
    return np.asarray(x).reshape(shape)


def conv_out_size(size: int, kernel: int, stride: int, pad_begin: int, pad_end: int, dilation: int = 1,
                  ceil_mode: int = 0) -> int:
    """Output length of a convolution or pooling window along one axis (ONNX rule, incl. ``ceil_mode``:
    a last window that would start inside the end padding is dropped)."""
    span = size + pad_begin + pad_end - ((kernel - 1) * dilation + 1)
    n = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (n - 1) * stride >= size + pad_begin:
        n -= 1
    return n


def _windows(x, kernel, strides, pads, dilations, ceil_mode, fill):
    """Padded ``x`` (N, C, H, W) and, per kernel position (ky, kx), the strided view of the window
    element at that position: a list of (N, C, OH, OW) arrays."""
    (kh, kw), (sy, sx), (dy, dx) = kernel, strides, dilations
    pt, pl, pb, pr = pads
    _, _, h, w = x.shape
    oh = conv_out_size(h, kh, sy, pt, pb, dy, ceil_mode)
    ow = conv_out_size(w, kw, sx, pl, pr, dx, ceil_mode)
    need_h = (oh - 1) * sy + (kh - 1) * dy + 1 - (h + pt)
    need_w = (ow - 1) * sx + (kw - 1) * dx + 1 - (w + pl)
    xp = np.pad(x, ((0, 0), (0, 0), (pt, max(pb, need_h)), (pl, max(pr, need_w))), constant_values=fill)
    return [xp[:, :, ky * dy: ky * dy + (oh - 1) * sy + 1: sy, kx * dx: kx * dx + (ow - 1) * sx + 1: sx]
            for ky in range(kh) for kx in range(kw)]


def conv(x, *, weight, w_zp, x_zp, bias, strides, pads, dilations, group, pad_code=None):
    """Integer 2-D convolution (ONNX Conv / ConvInteger semantics) with an int64 accumulator. Padding
    reads the code ``pad_code`` (default ``x_zp``, i.e. a real 0; the zero-point folding pass keeps the
    original zero point here)."""
    pad = int(x_zp if pad_code is None else pad_code) - int(x_zp)
    x = np.asarray(x, np.int64) - int(x_zp)
    w = np.asarray(weight, np.int64) - np.asarray(w_zp, np.int64).reshape(-1, 1, 1, 1)
    m, cg, kh, kw = w.shape
    n, c = x.shape[:2]
    views = _windows(x, (kh, kw), strides, pads, dilations, 0, pad)
    wg = w.reshape(group, m // group, cg, kh * kw)
    out = 0
    for k, v in enumerate(views):
        vg = v.reshape(n, group, cg, *v.shape[2:])
        out = out + np.einsum("ngchw,gmc->ngmhw", vg, wg[..., k])
    out = out.reshape(n, m, *views[0].shape[2:])
    return out + np.asarray(bias, np.int64).reshape(1, -1, 1, 1)


def maxpool(x, *, kernel, strides, pads, dilations, ceil_mode):
    """Max pooling on codes (the largest code is the largest real value); padding never wins."""
    views = _windows(np.asarray(x, np.int64), kernel, strides, pads, dilations, ceil_mode, -(2**62))
    return np.max(np.stack(views), axis=0)


def sumpool(x, *, kernel, strides, pads, x_zp):
    """Sum of ``x - x_zp`` over each window; padded positions add 0."""
    views = _windows(np.asarray(x, np.int64) - int(x_zp), kernel, strides, pads, (1, 1), 0, 0)
    return np.sum(np.stack(views), axis=0)


def add(a, b, *, a_zp, b_zp, a_mult, b_mult):
    """Integer sum of two code tensors with integer multipliers: ``(a - a_zp) * a_mult + (b - b_zp) * b_mult``."""
    return ((np.asarray(a, np.int64) - int(a_zp)) * int(a_mult)
            + (np.asarray(b, np.int64) - int(b_zp)) * int(b_mult))


def concat(*xs, axis):
    return np.concatenate([np.asarray(x) for x in xs], axis=axis)


def transpose(x, *, perm):
    return np.transpose(np.asarray(x), perm)


def clip(q, *, lo, hi):
    return np.clip(np.asarray(q, np.int64), int(lo), int(hi))


_AFFINE = {"add": np.add, "sub": np.subtract, "mul": np.multiply, "div": np.divide}


def affine(x, *, steps):
    """Elementwise float32 steps, each rounded to float32 as ONNX Add/Sub/Mul/Div compute them."""
    x = np.asarray(x, np.float32)
    for op, c in steps:
        x = _AFFINE[op](x, np.asarray(c, np.float32)).astype(np.float32)
    return x


def softmax(x, *, axis):
    """Softmax in float32 (host side; computed as ``exp(x - max) / sum``, not bit-exact with any
    particular runtime's exp)."""
    x = np.asarray(x, np.float32)
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def _c_logf(v: np.float32) -> float:
    """The C library's ``logf`` (what onnxruntime calls; numpy's float32 log differs in the last bit for some
    arguments), falling back to numpy where no C math library can be loaded."""
    import ctypes
    import ctypes.util

    try:
        lib = ctypes.CDLL(ctypes.util.find_library("m") or "libm.so.6")
        lib.logf.restype, lib.logf.argtypes = ctypes.c_float, [ctypes.c_float]
        return float(lib.logf(float(v)))
    except (OSError, AttributeError):
        return float(np.log(np.float32(v)))


def qsoftmax_exp_table(x_scale, d: int) -> np.ndarray:
    """onnxruntime's QLinearSoftmax lookup table for rows of ``d`` codes: entry ``t + 255`` is
    ``f32(exp((t + shift) * x_scale))`` for ``t = x - max(row)`` in -255..0, computed in double, with
    ``shift = max(0, logf(f32(FLT_MAX / d)) - 5) / x_scale`` (keeps the float32 row sum finite)."""
    import math

    xs = float(np.float32(x_scale))
    shift = max(0.0, _c_logf(np.float32(np.finfo(np.float32).max) / np.float32(d)) - 5.0) / xs
    return np.array([math.exp((float(i) - 255 + shift) * xs) for i in range(256)]).astype(np.float32)


def qsoftmax(x, *, x_scale, x_zp, y_scale, y_zp, dtype, axis, opset):
    """com.microsoft QLinearSoftmax bit for bit as onnxruntime 1.32 (CPU) computes it: per row, ``e = table[x -
    max]`` (:func:`qsoftmax_exp_table`; ``x_zp`` cancels out), ``s`` = float32 sum of ``e`` in row order,
    ``y = saturate(rint(e * c / s) + y_zp)`` in double, with ``c = floor(f32(1 / y_scale))``. (onnxruntime 1.31
    formed ``f32(f32(e * c) / s)``, which overflows for rows of 1 or 2 codes with a tiny y_scale.) Rows run
    along ``axis`` (opset >= 13) or over all axes from ``axis`` on (opset < 13)."""
    x = np.asarray(x, np.int64)
    lo, hi = dtype_range(dtype)
    ax = axis % x.ndim
    moved = x if opset < 13 else np.moveaxis(x, ax, -1)
    rows = moved.reshape(-1, int(np.prod(x.shape[ax:])) if opset < 13 else x.shape[ax])
    e = qsoftmax_exp_table(x_scale, rows.shape[1])[rows - rows.max(axis=1, keepdims=True) + 255]
    total = np.zeros(len(rows), np.float32)
    for k in range(rows.shape[1]):
        total = (total + e[:, k]).astype(np.float32)
    c = float(np.floor(np.float32(1) / np.float32(y_scale)))
    q = np.rint(e.astype(np.float64) * c / total.astype(np.float64)[:, None])  # <= c: no overflow
    y = np.clip(q.astype(np.int64) + int(y_zp), lo, hi).reshape(moved.shape)
    return y if opset < 13 else np.moveaxis(y, -1, ax)


OP_FUNCS = {
    "quantize": quantize,
    "dequantize": dequantize,
    "dense": dense,
    "requantize": requantize,
    "relu": relu,
    "threshold": threshold,
    "reshape": reshape,
    "conv": conv,
    "maxpool": maxpool,
    "sumpool": sumpool,
    "add": add,
    "concat": concat,
    "transpose": transpose,
    "clip": clip,
    "affine": affine,
    "softmax": softmax,
    "qsoftmax": qsoftmax,
}


def run_node(node: Node, *args):
    """Evaluate one node; attributes beyond the op's own (annotations from passes) are ignored."""
    kwargs = {k: node.attrs[k] for k in OPS[node.op]}
    kwargs.update({k: node.attrs.get(k, v) for k, v in OPTIONAL.get(node.op, {}).items()})
    return OP_FUNCS[node.op](*args, **kwargs)


def run_nodes(nodes, feeds: dict) -> dict:
    """Evaluate ``nodes`` in order on the tensors in ``feeds``; return every tensor (feeds included)."""
    env = dict(feeds)
    for node in nodes:
        env[node.outputs[0]] = run_node(node, *(env[t] for t in node.inputs))
    return env


def run(graph: Graph, feeds: dict, keep_all: bool = False) -> dict:
    """Run the graph on one input set (arrays of the graph's own input shapes); return its outputs
    (or every tensor with ``keep_all``)."""
    env = run_nodes(graph.nodes, feeds)
    return env if keep_all else {t: env[t] for t in graph.outputs}


def run_batch(graph: Graph, xs: np.ndarray) -> np.ndarray:
    """Run a single-input, single-output graph on every row of ``xs`` (first axis indexes inferences;
    each row has the input's shape, or that shape without a leading batch dimension of 1)."""
    inp, out = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    rows = [run(graph, {inp.name: np.asarray(x).reshape(inp.shape)})[out.name] for x in xs]
    return np.stack(rows) if rows else np.zeros((0, *out.shape))
