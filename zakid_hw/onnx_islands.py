"""Elementwise "islands" of the ONNX importer: a mixin of :class:`zakid_hw.onnx_import.Importer`.

A float elementwise function between a DequantizeLinear and a QuantizeLinear (Add/Mul/... of a constant, Relu,
Clip, BatchNormalization, Sigmoid, a change of scale, com.microsoft QLinearAdd of a constant, QLinearSigmoid,
QLinearLeakyRelu, the requantization of a QLinearConcat input) is a per-channel map of the 256 input codes. Its
kernels differ between CPUs (AVX2 uses FMA, NEON fixed point), so the importer *tabulates* it by running exactly
those ONNX nodes in onnxruntime on every code (:func:`zakid_hw.onnx_common.run_code_map`), and then:

* an identity table removes the island, a clamp at one code becomes IR ``relu``;
* otherwise the table is composed with the producing layer's requantization into one IR ``threshold`` on that
  layer's accumulator (dense, conv, sumpool or add): an exact staircase found by binary search. Max pooling and
  channel-preserving reshapes between the layer and the island commute with non-decreasing per-channel maps and
  are re-emitted after the threshold. A channel whose map decreases (e.g. a negative BatchNormalization scale)
  has its weights and bias negated (dense/conv only).

Channels run along axis 1 (NCHW, and the features of a (1, N) tensor) or the last axis.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from . import golden
from .ir import Node, dtype_range
from .onnx_common import (AccValue, DQConst, DQValue, Island, IRValue, _fail, _scalar, channel_table,
                          run_code_map, staircase)
from .passes import ACC_OPS, accumulator_bounds


class IslandOps:
    # ---- tabulated elementwise islands

    def resolve_island(self, island: Island, out: str, out_dtype: str, scale, zp, onnx_out=None):
        """Tabulate ``island`` (ending in ONNX tensor ``onnx_out``, IR tensor ``out``) with onnxruntime and
        lower it."""
        onnx_out = onnx_out or out
        src = self.graph.tensors[island.src]
        shape = island.shape or src.shape
        full = run_code_map(self.model.opset_import, island.nodes, {island.src_onnx: (src.dtype, shape)},
                            onnx_out, out_dtype, self.consts, self.where())
        if island.post_shape is not None:  # reshapes inside the island: undo them to see the channels
            if full[0].size != int(np.prod(shape)):
                _fail(f"{self.where()}: a reshape inside this float part of the model changes the element count.")
            full = full.reshape(full.shape[0], *shape)
        table, axis = channel_table(full, shape, self.where())
        lo = dtype_range(src.dtype)[0]
        codes = np.arange(lo, lo + table.shape[0])[:, None]
        names = ", ".join(repr(n.name or n.op_type) for n in island.nodes)
        view = island.shape if island.shape is not None and tuple(island.shape) != src.shape else None
        if out_dtype == src.dtype and np.array_equal(table, np.broadcast_to(codes, table.shape)):
            self.vals[onnx_out] = IRValue(island.src, view)  # identity
            self.notes.append(f"{names}: identity on the integer codes, removed")
            return self._post_reshape(island, onnx_out)
        z = int(table[0, 0])
        if out_dtype == src.dtype and np.array_equal(table, np.broadcast_to(np.maximum(codes, z), table.shape)):
            self._tensor(out, src.shape, out_dtype, scale, zp)
            self._emit("relu", island.nodes[-1].name or "relu", [island.src], [out], zero_point=z)
            self.vals[onnx_out] = IRValue(out, view)
            self.notes.append(f"{names}: a clamp at code {z}, lowered to relu")
            return self._post_reshape(island, onnx_out)
        self.compose_threshold(island.src, table, axis, out, out_dtype, scale, zp, island.through_max)
        self.vals[onnx_out] = IRValue(out, view)
        self.notes.append(f"{names}: tabulated with onnxruntime and merged into threshold node for {out!r}")
        self._post_reshape(island, onnx_out)

    def _post_reshape(self, island: Island, onnx_out: str):
        """Apply the reshapes inside a resolved island to its integer result."""
        if island.post_shape is None:
            return
        v = self.vals[onnx_out]
        src = self.materialize(v)
        t = self.graph.tensors[src]
        name = self._fresh(f"{onnx_out}_reshaped")
        self._like(name, t, shape=island.post_shape)
        self._emit("reshape", f"{island.nodes[-1].name or 'island'}_reshape", [src], [name],
                   shape=tuple(island.post_shape))
        self.vals[onnx_out] = IRValue(name)

    def compose_threshold(self, src: str, table, axis, out: str, out_dtype: str, scale, zp, through_max=False):
        """Replace the IR chain acc -> (requantize|relu|threshold|clip|maxpool|reshape)* -> ``src`` followed by
        the code map ``table`` (rows: codes of src; columns: channels along ``axis``, or one shared column) by
        acc -> threshold -> (maxpool|reshape)* -> ``out``, where acc is a dense, conv, sumpool or add result.
        Max pooling and channel-preserving reshapes commute with the non-decreasing per-channel maps; a channel
        whose map is non-increasing has its weights and bias negated (dense/conv only)."""
        chain, t = [], src
        while True:  # walk up from src to the accumulating layer; every tensor on the way has a single user
            p = self.graph.producer(t)
            if p is None or p.op not in ACC_OPS + ("requantize", "relu", "threshold", "clip", "maxpool", "reshape"):
                _fail(f"{self.where()}: this elementwise operation on {src!r} can only follow a MatMul, Gemm, Conv, "
                      "average pooling or Add layer (it is merged into that layer's requantization), but its input "
                      f"comes from {'the graph input' if p is None else p.op + ' ' + repr(p.name)}.")
            if len(self.graph.consumers(t)) != (0 if t == src else 1):
                _fail(f"{self.where()}: tensor {t!r} is used more than once; cannot merge the elementwise operation "
                      f"on {src!r} into its layer.")
            if p.op in ACC_OPS:
                break
            chain.insert(0, p)
            t = p.inputs[0]
        base = p
        acc_t = self.graph.tensors[base.outputs[0]]
        ch_axis = -1 if base.op == "dense" else 1
        n_ch = acc_t.shape[ch_axis]
        values = [n for n in chain if n.op not in ("maxpool", "reshape")]
        layout = [n for n in chain if n.op in ("maxpool", "reshape")]
        if table.shape[1] > 1:
            ok = (axis == 1 and ch_axis == 1) or (axis == -1 and ch_axis == -1) or (
                len(acc_t.shape) == 2 and axis in (1, -1))
            if not ok or table.shape[1] != n_ch:
                _fail(f"{self.where()}: its per-channel constants run along a different axis than the channels of "
                      f"layer {base.name!r}; cannot merge it into that layer's requantization.")
            for n in layout:
                if n.op == "reshape" and tuple(self.graph.tensors[n.outputs[0]].shape[:2]) != acc_t.shape[:2]:
                    _fail(f"{self.where()}: per-channel operation after reshape {n.name!r}, which moves the "
                          "channels; cannot merge it into the layer's requantization.")
        # direction of each channel's map
        d = np.diff(table, axis=0)
        inc, dec = np.all(d >= 0, axis=0), np.all(d <= 0, axis=0)
        if not np.all(inc | dec):
            _fail(f"{self.where()}: this elementwise operation is not monotonic in its input, so it cannot be "
                  "merged into a requantization.")
        flip = dec & ~inc
        if np.any(flip):
            if base.op not in ("dense", "conv") or through_max or any(n.op == "maxpool" for n in layout):
                _fail(f"{self.where()}: this elementwise operation decreases with its input (e.g. a negative "
                      "BatchNormalization scale); that is supported only right after a MatMul/Gemm/Conv layer "
                      "without pooling in between.")
            flip = np.broadcast_to(flip, (n_ch,))
            sign = np.where(flip, -1, 1).astype(np.int64)
            self._negate_channels(base, sign)
            self.notes.append(f"layer {base.name!r}: weights and bias of {int(flip.sum())} channel(s) negated "
                              "(their elementwise map decreases)")
        else:
            sign = np.ones(n_ch, np.int64)
        lo_code = dtype_range(self.graph.tensors[src].dtype)[0]
        lo, hi = accumulator_bounds(self.graph, base)
        shared = table.shape[1] == 1 and not np.any(sign < 0) and all(
            np.size(n.attrs.get("multiplier", 1)) == 1 and np.shape(n.attrs.get("thresholds", [[0]]))[0] == 1
            for n in values)
        if shared:
            lo, hi, cols, sgn = lo.min(keepdims=True), hi.max(keepdims=True), np.zeros(1, np.int64), sign[:1]
        else:
            lo, hi = np.broadcast_to(lo, (n_ch,)), np.broadcast_to(hi, (n_ch,))
            cols = np.arange(n_ch) if table.shape[1] > 1 else np.zeros(n_ch, np.int64)
            sgn = sign

        def g(acc):  # the exact integer function acc -> out code, per channel (last axis of acc)
            v = np.asarray(acc, np.int64) * sgn
            for n in values:
                v = golden.run_node(n, v)
            return table[np.asarray(v, np.int64) - lo_code, cols]

        thresholds, base_level = staircase(g, np.asarray(lo, np.int64), np.asarray(hi, np.int64))
        layout_shapes = [self.graph.tensors[n.outputs[0]].shape for n in layout]
        for n in chain:
            self.graph.nodes.remove(n)
            for o in n.outputs:
                del self.graph.tensors[o]
                self._forget(o)
        cur = out if not layout else self._fresh(f"{out}_pre")
        self._tensor(cur, acc_t.shape, out_dtype, scale, zp)
        self._emit("threshold", f"{base.name}_threshold", [base.outputs[0]], [cur], thresholds=thresholds,
                   base=int(base_level), dtype=out_dtype, **({"axis": 1} if ch_axis == 1 else {}))
        for i, (n, shape) in enumerate(zip(layout, layout_shapes)):  # re-emit pooling and reshapes after it
            nxt = out if i == len(layout) - 1 else self._fresh(f"{out}_{n.op}")
            self._tensor(nxt, shape, out_dtype, scale, zp)
            self.graph.nodes.append(Node(n.op, n.name, [cur], [nxt], dict(n.attrs)))
            cur = nxt

    def _negate_channels(self, base: Node, sign):
        from .passes import effective_weight

        a = base.attrs
        w = effective_weight(base) * sign[:, None]
        dtype = np.int8 if w.min() >= -128 and w.max() <= 127 else np.int16
        a["weight"] = w.reshape(np.shape(a["weight"])).astype(dtype)
        a["w_zp"] = 0
        a["bias"] = (np.asarray(a["bias"], np.int64) * sign).astype(np.int32)

    def island_op(self, node):
        """A float elementwise op (Add/Mul/... of a constant, Relu, Clip, BatchNormalization, ...) on a
        dequantized tensor: becomes part of an island; other operands must be constants."""
        x = self.val(node.input[0])
        others = [i for i in node.input[1:] if i]
        if node.op_type in ("Add", "Mul", "Sub", "Div") and isinstance(x, (np.ndarray, DQConst)):
            x = self.val(node.input[1])
            others = [node.input[0]]
        if node.op_type == "Add" and isinstance(x, (DQValue, Island)) and any(
                isinstance(self.val(o), (DQValue, Island)) for o in others):
            return self.residual_add_dq(node)
        if node.op_type == "Relu" and isinstance(x, IRValue) and self.graph.tensors[x.name].dtype in ("int8", "uint8"):
            t = self.graph.tensors[x.name]  # ONNX Relu on integers: max(q, 0)
            out = self._out_name(node)
            self._like(out, t)
            self._emit("relu", node.name or "relu", [x.name], [out], zero_point=0)
            self.vals[node.output[0]] = IRValue(out, x.shape)
            return
        if node.op_type == "Clip" and isinstance(x, IRValue) and self.graph.tensors[x.name].dtype in ("int8", "uint8"):
            return self.int_clip(node, x)
        if not isinstance(x, (DQValue, Island)):
            if isinstance(x, AccValue):
                _fail(f"{self.where()}: a float {node.op_type} right after MatMul/Gemm/Conv without QuantizeLinear "
                      "between them is not fused by onnxruntime into an integer kernel; put the bias into the "
                      "layer (int32 bias) or quantize the layer output first.")
            _fail(f"{self.where()}: {node.op_type} on {self._describe(x)} is not supported; in a quantized model "
                  "it must act on a dequantized tensor (between DequantizeLinear and QuantizeLinear) with "
                  "constant other operands.")
        island = self._island_from(x, node.input[0]) if isinstance(x, DQValue) else x
        nodes = list(island.nodes)
        for o in others:
            c = self.val(o)
            if isinstance(c, DQConst):
                nodes.append(c.dq_node)
            elif not isinstance(c, np.ndarray):
                _fail(f"{self.where()}: its operand {o!r} must be a constant, got {self._describe(c)}.")
        self.vals[node.output[0]] = replace(island, nodes=nodes + [node])

    def int_clip(self, node, x: IRValue):
        t = self.graph.tensors[x.name]
        a = self.attrs(node)
        lo_t, hi_t = dtype_range(t.dtype)
        lo = self.opt_const(node, 1, a.get("min"))
        hi = self.opt_const(node, 2, a.get("max"))
        lo = lo_t if lo is None else max(lo_t, int(np.ceil(_scalar(lo, "Clip min"))))
        hi = hi_t if hi is None else min(hi_t, int(np.floor(_scalar(hi, "Clip max"))))
        out = self._out_name(node)
        self._like(out, t)
        self._emit("clip", node.name or "clip", [x.name], [out], lo=lo, hi=hi)
        self.vals[node.output[0]] = IRValue(out, x.shape)
