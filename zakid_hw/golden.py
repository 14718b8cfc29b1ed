"""Golden model: the executable specification of the integer IR, in numpy.

One op, one short function. Integer ops compute in int64 and are exact; the float steps are the float32
steps onnxruntime takes (see ``../shared/FACTS.md``), so the golden model equals onnxruntime bit for bit on
the same quantized model. RTL tests, the threshold pass, the cost model and the reports all call these
functions rather than re-deriving the arithmetic.
"""

from __future__ import annotations

import numpy as np

from .ir import OPS, Graph, Node, dtype_range


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


def requantize(acc, *, multiplier, zero_point, dtype, qmin, qmax):
    """onnxruntime's requantization: the float32 product of the accumulator and the float32 multiplier,
    rounded half to even, plus the zero point, clipped to ``[qmin, qmax]`` (which lie inside the dtype)."""
    prod = np.asarray(acc, np.int64).astype(np.float32) * np.asarray(multiplier, np.float32)
    r = np.clip(np.rint(prod).astype(np.float64), -(2.0**40), 2.0**40).astype(np.int64)
    return np.clip(r + int(zero_point), qmin, qmax)


def relu(q, *, zero_point):
    """Relu on a quantized tensor: the real value is clamped at 0, i.e. the code at the zero point."""
    return np.maximum(np.asarray(q, np.int64), int(zero_point))


def threshold(acc, *, thresholds, base, dtype):
    """Multi-threshold activation: ``base`` plus the number of thresholds the accumulator reaches.

    ``thresholds`` has shape (C, T), ascending along T; C is 1 (shared by all channels) or the size of
    the last axis of ``acc``.
    """
    acc = np.asarray(acc, np.int64)
    thr = np.asarray(thresholds, np.int64)
    counts = (acc[..., None] >= thr).sum(axis=-1)  # broadcasts (…, C) against (C, T)
    return counts + int(base)


def reshape(x, *, shape):
    return np.asarray(x).reshape(shape)


OP_FUNCS = {
    "quantize": quantize,
    "dequantize": dequantize,
    "dense": dense,
    "requantize": requantize,
    "relu": relu,
    "threshold": threshold,
    "reshape": reshape,
}


def run_node(node: Node, *args):
    """Evaluate one node; attributes beyond the op's own (annotations from passes) are ignored."""
    return OP_FUNCS[node.op](*args, **{k: node.attrs[k] for k in OPS[node.op]})


def run(graph: Graph, feeds: dict, keep_all: bool = False) -> dict:
    """Run the graph on one input set (arrays of the graph's own input shapes); return its outputs
    (or every tensor with ``keep_all``)."""
    env = dict(feeds)
    for node in graph.nodes:
        env[node.outputs[0]] = run_node(node, *(env[t] for t in node.inputs))
    return env if keep_all else {t: env[t] for t in graph.outputs}


def run_batch(graph: Graph, xs: np.ndarray) -> np.ndarray:
    """Run a single-input, single-output graph on every row of ``xs`` (first axis indexes inferences;
    each row has the input's shape, or that shape without a leading batch dimension of 1)."""
    inp, out = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    rows = [run(graph, {inp.name: np.asarray(x).reshape(inp.shape)})[out.name] for x in xs]
    return np.stack(rows) if rows else np.zeros((0, *out.shape))
