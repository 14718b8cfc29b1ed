"""Graph transformations: each a named function from :class:`Graph` to a new :class:`Graph`.

They run in :data:`HARDWARE_PIPELINE` order to turn an imported graph into the form the accelerator
executes. Every pass keeps the golden model's results identical (tests check each one on its own).

- :func:`fold_relu`: a ``relu`` after a ``requantize`` becomes the requantizer's lower clip.
- :func:`fold_weight_zero_point`: ``dense`` weights become ``weight - w_zp`` with ``w_zp = 0``.
- :func:`fold_input_zero_point`: ``dense`` with ``x_zp != 0`` gets ``bias - x_zp * sum(weight)`` and
  ``x_zp = 0``, so the MAC lanes multiply raw activation codes.
- :func:`requantize_to_threshold`: a ``requantize`` after a ``dense`` becomes a ``threshold`` whose
  thresholds are found by binary search on :func:`zakid_hw.golden.requantize` over the accumulator's
  reachable range (:func:`accumulator_bounds`), so the hardware requantizer equals the float32 rule of
  onnxruntime exactly, with no multiplier.
"""

from __future__ import annotations

import numpy as np

from . import golden
from .errors import ZakidError
from .ir import Graph, Node, dtype_range


def fold_relu(graph: Graph) -> Graph:
    g = graph.copy()
    for node in list(g.nodes):
        if node.op != "relu":
            continue
        prod = g.producer(node.inputs[0])
        if prod is None or prod.op != "requantize" or len(g.consumers(node.inputs[0])) != 1:
            continue
        if prod.attrs["zero_point"] != node.attrs["zero_point"]:
            continue
        prod.attrs["qmin"] = max(prod.attrs["qmin"], node.attrs["zero_point"])
        _bypass(g, node)
    return g


MAC_OPS = ("dense", "conv")
#: ops whose int32 result a ``requantize``/``threshold`` turns back into codes
ACC_OPS = MAC_OPS + ("sumpool", "add")


def effective_weight(node: Node) -> np.ndarray:
    """``weight - w_zp`` of a ``dense`` or ``conv`` node, as (output channels, inputs per output)."""
    w = np.asarray(node.attrs["weight"], np.int64)
    w = w.reshape(w.shape[0], -1)
    return w - np.asarray(node.attrs["w_zp"], np.int64).reshape(-1, 1)


def fold_weight_zero_point(graph: Graph) -> Graph:
    g = graph.copy()
    for node in g.nodes:
        if node.op in MAC_OPS:
            a = node.attrs
            a["weight"] = effective_weight(node).reshape(np.shape(a["weight"]))
            a["w_zp"] = 0
    return g


def fold_input_zero_point(graph: Graph) -> Graph:
    """Exact for convolutions too: padding reads the code ``x_zp``, whose term the folded bias cancels."""
    g = graph.copy()
    for node in g.nodes:
        if node.op in MAC_OPS:
            a = node.attrs
            a["bias"] = np.asarray(a["bias"], np.int64) - int(a["x_zp"]) * effective_weight(node).sum(axis=1)
            if node.op == "conv":
                a["pad_code"] = a.get("pad_code", a["x_zp"])
            a["x_zp"] = 0
    return g


def accumulator_bounds(graph: Graph, node: Node) -> tuple[np.ndarray, np.ndarray]:
    """Per output channel, the smallest and largest value a ``dense``/``conv``/``sumpool``/``add`` node can
    produce for any input codes of its input dtypes. Exact for dense layers (each product term is bounded
    independently); a safe enclosure where padding or pooling windows repeat inputs."""
    a = node.attrs
    lo_x, hi_x = dtype_range(graph.tensors[node.inputs[0]].dtype)
    if node.op == "sumpool":
        n = int(np.prod(a["kernel"]))
        return np.array([n * min(lo_x - a["x_zp"], 0)]), np.array([n * max(hi_x - a["x_zp"], 0)])
    if node.op == "add":
        lo_b, hi_b = dtype_range(graph.tensors[node.inputs[1]].dtype)
        ta = np.array([lo_x - a["a_zp"], hi_x - a["a_zp"]]) * int(a["a_mult"])
        tb = np.array([lo_b - a["b_zp"], hi_b - a["b_zp"]]) * int(a["b_mult"])
        return np.array([ta.min() + tb.min()]), np.array([ta.max() + tb.max()])
    xs = np.array([lo_x, hi_x], np.int64) - int(a["x_zp"])
    w = effective_weight(node)
    terms = w[:, :, None] * xs[None, None, :]  # (N, K, 2)
    bias = np.asarray(a["bias"], np.int64)
    return terms.min(axis=2).sum(axis=1) + bias, terms.max(axis=2).sum(axis=1) + bias


def thresholds_for(multiplier, zero_point, qmin, qmax, lo, hi) -> np.ndarray:
    """Thresholds (C, qmax - qmin) such that ``threshold(acc) == requantize(acc)`` for every integer
    ``acc`` in ``[lo, hi]``; thresholds never reached are ``hi + 1``. ``multiplier`` is a scalar
    (C = 1) or per channel."""
    mult = np.atleast_1d(np.asarray(multiplier, np.float32))
    if np.any(~np.isfinite(mult)) or np.any(mult <= 0):
        raise ZakidError(f"requantization multiplier must be positive and finite, got {mult}")
    levels = np.arange(1, qmax - qmin + 1, dtype=np.int64)[None, :]
    shape = (mult.size, levels.size)
    low = np.broadcast_to(np.asarray(lo, np.int64).reshape(-1, 1), shape).copy()
    high = np.broadcast_to(np.asarray(hi, np.int64).reshape(-1, 1) + 1, shape).copy()
    m = mult.reshape(-1, 1)
    while np.any(low < high):
        mid = (low + high) // 2
        q = golden.requantize(mid, multiplier=m, zero_point=zero_point, dtype="int32",
                              qmin=qmin, qmax=qmax)
        reached = q >= qmin + levels
        high = np.where(reached, mid, high)
        low = np.where(reached, low, mid + 1)
    return low


def requantize_to_threshold(graph: Graph) -> Graph:
    g = graph.copy()
    for node in g.nodes_of("requantize"):
        prod = g.producer(node.inputs[0])
        if prod is None or prod.op not in ACC_OPS:
            raise ZakidError(f"requantize node {node.name!r} does not follow a dense, conv, pooling or add "
                             "layer")
        lo, hi = accumulator_bounds(g, prod)
        a = node.attrs
        if np.ndim(a["multiplier"]) == 0 or np.size(a["multiplier"]) == 1:
            lo, hi = lo.min(keepdims=True), hi.max(keepdims=True)
        thr = thresholds_for(a["multiplier"], a["zero_point"], a["qmin"], a["qmax"], lo, hi)
        node.op = "threshold"
        node.attrs = {"thresholds": thr, "base": int(a["qmin"]), "dtype": a["dtype"],
                      "axis": 1 if len(g.tensors[node.inputs[0]].shape) >= 2 else -1}
    return g


def _bypass(g: Graph, node: Node) -> None:
    """Remove a single-input node, renaming its output to its input everywhere."""
    src, dst = node.inputs[0], node.outputs[0]
    g.nodes.remove(node)
    for n in g.nodes:
        n.inputs = [src if t == dst else t for t in n.inputs]
    g.outputs = [src if t == dst else t for t in g.outputs]
    g.tensors.pop(dst, None)


HARDWARE_PIPELINE = (fold_relu, fold_weight_zero_point, fold_input_zero_point, requantize_to_threshold)


def lower_for_hardware(graph: Graph) -> Graph:
    for p in HARDWARE_PIPELINE:
        graph = p(graph)
    return graph
