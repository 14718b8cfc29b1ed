"""Lowering of convolutional-network ops to the integer IR: a mixin of :class:`zakid_hw.onnx_import.Importer`.

Handled here (see :mod:`zakid_hw.onnx_import` for the forms and the exactness argument):

* QLinearConv, float Conv between DequantizeLinear and QuantizeLinear (QDQ; onnxruntime fuses it into
  QLinearConv), ConvInteger, MatMulInteger: IR ``conv``/``dense`` + ``requantize`` along axis 1 (conv outputs
  are NCHW). 1-D convolutions are 2-D with H = 1; their (1, C, L) ONNX tensors are (1, C, 1, L) in the IR
  (an ONNX *view*: :attr:`IRValue.shape`), reshaped back where the ONNX shape matters.
* MaxPool / GlobalMaxPool on codes (IR ``maxpool``). On a dequantized tensor the pooling moves in front of
  the DequantizeLinear: max commutes with the non-decreasing code maps.
* AveragePool, GlobalAveragePool, com.microsoft QLinearAveragePool / QLinearGlobalAveragePool: IR ``sumpool``
  + ``threshold`` from :func:`zakid_hw.ort_arith.avgpool_form`.
* Add of two activations (QLinearAdd, DQ + DQ -> Add -> Q): IR ``add`` + ``threshold`` from
  :func:`zakid_hw.ort_arith.add_form`.
* Concat (QLinearConcat, DQ... -> Concat -> Q, Concat of codes): inputs whose scale differs from the output's
  are requantized by a tabulated code map merged into their producing layer; then IR ``concat``.
* Transpose (IR ``transpose``), Softmax at the output (host ``dequantize`` + ``softmax``), QLinearSoftmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .golden import conv_out_size
from .ir import dtype_range
from .errors import ZakidError
from .onnx_common import AccValue, DQValue, Island, IRValue, SoftmaxValue, _fail, _scalar


def window_geometry(where: str, in_spatial, kernel, a: dict, pool: bool = False):
    """ONNX Conv/pooling window attributes -> IR 2-D (kernel, strides, pads (top, left, bottom, right),
    dilations); 1-D windows become 2-D with H = 1. auto_pad follows onnxruntime (conv_attributes.h)."""
    r = len(kernel)
    strides = list(a.get("strides") or [1] * r)
    dil = list(a.get("dilations") or [1] * r)
    auto = a.get("auto_pad", "NOTSET") or "NOTSET"
    if len(strides) != r or len(dil) != r:
        _fail(f"{where}: strides {strides} / dilations {dil} do not match the {r}-D kernel {tuple(kernel)}.")
    if min(strides + dil + list(kernel)) < 1:
        _fail(f"{where}: kernel, strides and dilations must be positive.")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(in_spatial, kernel, strides, dil):
            need = (-(-size // s) - 1) * s + (k - 1) * d + 1 - size
            if need < 0:
                _fail(f"{where}: auto_pad={auto} with a stride larger than the (dilated) kernel is not supported; "
                      "give explicit pads.")
            head = (need + 1) // 2 if auto == "SAME_LOWER" else need // 2
            begin.append(head)
            end.append(need - head)
    elif auto == "VALID":
        begin, end = [0] * r, [0] * r
    elif auto == "NOTSET":
        pads = list(a.get("pads") or [0] * (2 * r))
        if len(pads) != 2 * r or min(pads) < 0:
            _fail(f"{where}: pads {pads} do not fit a {r}-D window.")
        begin, end = pads[:r], pads[r:]
    else:
        _fail(f"{where}: unknown auto_pad {auto!r}.")
    if r == 1:
        return (1, kernel[0]), (1, strides[0]), (0, begin[0], 0, end[0]), (1, dil[0])
    return tuple(kernel), tuple(strides), (begin[0], begin[1], end[0], end[1]), tuple(dil)


@dataclass
class PendingAdd:
    """DQ(a) + DQ(b), lowered at the QuantizeLinear that follows (onnxruntime fuses it into QLinearAdd)."""
    a: DQValue
    b: DQValue
    node: object

    def lower_at_quantize(self, imp, q, scale, zp, dtype):
        imp.emit_residual_add(self.node, self.a, self.b, scale, zp, dtype, q)


@dataclass
class PendingConcat:
    """Concat of dequantized tensors, lowered at the QuantizeLinear that follows."""
    parts: list
    names: list
    axis: int
    node: object

    def lower_at_quantize(self, imp, q, scale, zp, dtype):
        imp.emit_dq_concat(self, q, scale, zp, dtype)


class CnnOps:
    """Handlers for convolutional-network ops (mixed into the Importer)."""

    # ---- inputs

    def conv_input(self, name, what="input"):
        """(IR tensor (N, C, H, W), ONNX spatial rank) of an int8/uint8 input of a 1-D or 2-D window op."""
        v = self.val(name)
        if not (isinstance(v, IRValue) and self.graph.tensors[v.name].dtype in ("int8", "uint8")):
            _fail(f"{self.where()}: its {what} {name!r} must be an int8/uint8 tensor computed by the graph, got "
                  f"{self._describe(v)}.")
        return self._as_4d(v)

    def _as_4d(self, v: IRValue):
        shape = self.shape(v)
        t = self.graph.tensors[v.name]
        if len(shape) not in (3, 4) or shape[0] != 1:
            _fail(f"{self.where()}: expects a (1, C, L) or (1, C, H, W) tensor, got shape {shape}; 3-D "
                  "convolutions and batches are not supported.")
        if len(t.shape) == 4:
            return t, len(shape) - 2
        name = self._fresh(f"{v.name}_2d")
        self._like(name, t, shape=(shape[0], shape[1], 1, shape[2]))
        self._emit("reshape", f"{v.name}_as_2d", [v.name], [name], shape=(shape[0], shape[1], 1, shape[2]))
        return self.graph.tensors[name], 1

    @staticmethod
    def _view(shape4, rank):
        """The ONNX view of an IR (N, C, H, W) tensor for a ``rank``-D op (None when it is the same)."""
        return None if rank == 2 else (shape4[0], shape4[1], shape4[3])

    # ---- convolution

    def emit_conv(self, node, x, x_zp, w, w_zp, bias, rank):
        """IR conv of x (N, C, H, W) with integer weights w (M, C/group, k...) -> int32 accumulator name."""
        from .onnx_import import _per_channel

        a = self.attrs(node)
        w = np.asarray(w)
        if w.ndim != rank + 2:
            _fail(f"{self.where(node)}: weight has shape {w.shape}, which does not fit a {rank}-D convolution.")
        if rank == 1:
            w = w.reshape(w.shape[0], w.shape[1], 1, w.shape[2])
        m, cg = w.shape[:2]
        group = int(a.get("group", 1))
        c = x.shape[1]
        if group < 1 or cg * group != c or m % group:
            _fail(f"{self.where(node)}: group={group} does not fit {c} input channels and weight shape "
                  f"{tuple(w.shape)}.")
        ks = a.get("kernel_shape")
        if ks is not None and tuple(ks) != tuple(w.shape[2:][-rank:]):
            _fail(f"{self.where(node)}: kernel_shape {ks} differs from the weight's {tuple(w.shape[2:])}.")
        spatial = x.shape[2:] if rank == 2 else x.shape[3:]
        kern, strides, pads, dil = window_geometry(self.where(node), spatial, w.shape[2:][-rank:], a)
        oh = conv_out_size(x.shape[2], kern[0], strides[0], pads[0], pads[2], dil[0])
        ow = conv_out_size(x.shape[3], kern[1], strides[1], pads[1], pads[3], dil[1])
        if oh < 1 or ow < 1:
            _fail(f"{self.where(node)}: the window does not fit the input {x.shape}.")
        w_zp = _per_channel(w_zp, m, f"{self.where(node)}: weight zero point")
        bias = np.zeros(m, np.int32) if bias is None else np.broadcast_to(
            np.asarray(bias, np.int32).reshape(-1), (m,)).copy()
        acc = self._tensor(self._fresh(f"{node.name or node.op_type}_acc"), (x.shape[0], m, oh, ow), "int32")
        self._emit("conv", node.name or node.op_type, [x.name], [acc], weight=np.ascontiguousarray(w), w_zp=w_zp,
                   x_zp=int(x_zp), bias=bias, strides=strides, pads=pads, dilations=dil, group=group)
        return acc

    def _conv_weight(self, node, w, scale, zp):
        if w.dtype not in (np.int8, np.uint8):
            _fail(f"{self.where(node)}: its weight must be an int8/uint8 constant, got {w.dtype}.")
        m = w.shape[0]
        for name, arr in (("scale", scale), ("zero point", zp)):
            if np.asarray(arr).size not in (1, m):
                _fail(f"{self.where(node)}: weight {name} has {np.asarray(arr).size} values; expected 1 or one "
                      f"per output channel ({m}).")
        return np.asarray(scale, np.float32).reshape(-1), np.asarray(zp).astype(np.int64).reshape(-1)

    def qlinear_conv(self, node):
        x, rank = self.conv_input(node.input[0])
        xs, xzp = self.const(node.input[1]), self.const(node.input[2])
        w, ws, wzp = (self.const(node.input[i], "weight") for i in (3, 4, 5))
        ys, yzp = self.const(node.input[6]), self.const(node.input[7])
        ws, wzp = self._conv_weight(node, w, ws, wzp)
        bias = self.opt_const(node, 8)
        if bias is not None and (bias.dtype != np.int32 or bias.size != w.shape[0]):
            _fail(f"{self.where()}: bias B must be int32 with one value per output channel, got {bias.dtype} "
                  f"{bias.shape}.")
        acc = self.emit_conv(node, x, _scalar(xzp, "x_zero_point"), w, wzp, bias, rank)
        self.emit_requantize(node, acc, self._out_name(node), np.float32(_scalar(xs, "x_scale")), ws,
                             np.float32(_scalar(ys, "y_scale")), _scalar(yzp, "y_zero_point"), str(yzp.dtype),
                             axis=1, view=self._view(self.graph.tensors[acc].shape, rank))

    def conv(self, node):
        """Float Conv on DequantizeLinear'd input and weight (QDQ): onnxruntime runs it as QLinearConv."""
        x, w = self._dq_operands(node, node.input[0], node.input[1])
        if w.scale.size > 1 and w.axis != 0:
            _fail(f"{self.where()}: per-channel weight scales must run along the output-channel axis (axis=0).")
        ws, wzp = self._conv_weight(node, w.q, w.scale, w.zp)
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = self._dq_bias(node, node.input[2], x.scale, ws)
        xt, rank = self._as_4d(IRValue(x.src, x.shape))
        acc = self.emit_conv(node, xt, x.zp, w.q, wzp, bias, rank)
        self.vals[node.output[0]] = AccValue(acc, x.scale, ws, np.float32(1), axis=1,
                                             shape=self._view(self.graph.tensors[acc].shape, rank))

    def conv_integer(self, node):
        x, rank = self.conv_input(node.input[0])
        w = self.const(node.input[1], "weight")
        if w.dtype not in (np.int8, np.uint8):
            _fail(f"{self.where()}: its weight must be an int8/uint8 constant, got {w.dtype}.")
        xzp = self.opt_const(node, 2, np.zeros((), np.int64))
        wzp = self.opt_const(node, 3, np.zeros((), np.int64))
        acc = self.emit_conv(node, x, _scalar(xzp, "x_zero_point"), w, wzp, None, rank)
        self.vals[node.output[0]] = IRValue(acc, self._view(self.graph.tensors[acc].shape, rank))

    def matmul_integer(self, node):
        x = self.int_input(node.input[0])
        w = self.const(node.input[1], "weight")
        if w.dtype not in (np.int8, np.uint8) or w.ndim != 2:
            _fail(f"{self.where()}: its weight B must be a 2-D int8/uint8 constant, got {w.dtype} {w.shape}.")
        xzp = self.opt_const(node, 2, np.zeros((), np.int64))
        wzp = self.opt_const(node, 3, np.zeros((), np.int64))
        acc = self.emit_dense(node, x, _scalar(xzp, "a_zero_point (per-row zero points are not supported)"),
                              w.T, wzp, None)
        self.vals[node.output[0]] = IRValue(acc)

    # ---- pooling

    def _pool_window(self, node, x, rank, global_pool=False):
        a = self.attrs(node)
        spatial = x.shape[2:] if rank == 2 else x.shape[3:]
        if global_pool:
            return (x.shape[2], x.shape[3]), (1, 1), (0, 0, 0, 0), (1, 1), 0
        kernel = a.get("kernel_shape")
        if kernel is None or len(kernel) != rank:
            _fail(f"{self.where()}: kernel_shape {kernel} does not fit a {rank}-D input.")
        kern, strides, pads, dil = window_geometry(self.where(), spatial, list(kernel), a, pool=True)
        return kern, strides, pads, dil, int(a.get("ceil_mode", 0))

    def emit_maxpool(self, node, x, rank, global_pool=False):
        kern, strides, pads, dil, ceil = self._pool_window(node, x, rank, global_pool)
        oh = conv_out_size(x.shape[2], kern[0], strides[0], pads[0], pads[2], dil[0], ceil)
        ow = conv_out_size(x.shape[3], kern[1], strides[1], pads[1], pads[3], dil[1], ceil)
        if oh < 1 or ow < 1:
            _fail(f"{self.where()}: the pooling window does not fit the input {x.shape}.")
        name = self._fresh(f"{node.output[0]}_codes")
        self._like(name, x, shape=(x.shape[0], x.shape[1], oh, ow))
        self._emit("maxpool", node.name or node.op_type, [x.name], [name], kernel=kern, strides=strides, pads=pads,
                   dilations=dil, ceil_mode=ceil)
        return name

    def maxpool(self, node, global_pool=False):
        if len(node.output) > 1 and node.output[1]:
            _fail(f"{self.where()}: the Indices output of MaxPool is not supported.")
        if self.attrs(node).get("storage_order", 0) not in (0,):
            pass  # only affects Indices
        v = self.val(node.input[0])
        if isinstance(v, IRValue) and self.graph.tensors[v.name].dtype in ("int8", "uint8"):
            x, rank = self._as_4d(v)
            name = self.emit_maxpool(node, x, rank, global_pool)
            self.vals[node.output[0]] = IRValue(name, self._view(self.graph.tensors[name].shape, rank))
        elif isinstance(v, (DQValue, Island)) and getattr(v, "post_shape", None) is None:
            # pool the codes: max commutes with non-decreasing code maps
            src = v.src
            x, rank = self._as_4d(IRValue(src, self.shape(v)))
            name = self.emit_maxpool(node, x, rank, global_pool)
            view = self._view(self.graph.tensors[name].shape, rank)
            shape = view or self.graph.tensors[name].shape
            if isinstance(v, DQValue):
                self.vals[node.output[0]] = DQValue(name, v.scale, v.zp, None, view)
            else:  # the island's float result now names the pooled tensor
                from onnx import helper

                rename = helper.make_node("Identity", [node.input[0]], [node.output[0]], name=f"{node.name}_moved")
                self.vals[node.output[0]] = Island(name, v.src_onnx, v.nodes + [rename], shape, through_max=True)
        else:
            _fail(f"{self.where()}: MaxPool on {self._describe(v)} is not supported.")

    def global_maxpool(self, node):
        self.maxpool(node, global_pool=True)

    def average_pool(self, node, global_pool=False):
        """Float AveragePool/GlobalAveragePool between DequantizeLinear and QuantizeLinear: onnxruntime fuses it
        into QLinearAveragePool; lowered when the QuantizeLinear arrives."""
        v = self.val(node.input[0])
        if not isinstance(v, DQValue):
            _fail(f"{self.where()}: a float {node.op_type} must read a DequantizeLinear and feed a QuantizeLinear "
                  f"(onnxruntime then runs it as QLinearAveragePool); it reads {self._describe(v)}.")
        self.vals[node.output[0]] = PendingPool(v, node, global_pool)

    def global_average_pool(self, node):
        self.average_pool(node, global_pool=True)

    def qlinear_average_pool(self, node, global_pool=False):
        a = self.attrs(node)
        if a.get("channels_last", 0):
            _fail(f"{self.where()}: channels_last=1 is not supported.")
        v = self.val(node.input[0])
        if not (isinstance(v, IRValue) and self.graph.tensors[v.name].dtype in ("int8", "uint8")):
            _fail(f"{self.where()}: its input must be an int8/uint8 tensor computed by the graph.")
        xs, xzp = self.const(node.input[1]), self.opt_const(node, 2)
        ys, yzp = self.const(node.input[3]), self.opt_const(node, 4)
        t = self.graph.tensors[v.name]
        xzp = 0 if xzp is None else _scalar(xzp, "x_zero_point")
        ydtype = t.dtype if yzp is None else str(yzp.dtype)
        yzp = 0 if yzp is None else _scalar(yzp, "y_zero_point")
        self.emit_avgpool(node, v, np.float32(_scalar(xs, "x_scale")), xzp, np.float32(_scalar(ys, "y_scale")),
                          yzp, ydtype, global_pool, node.output[0])

    def qlinear_global_average_pool(self, node):
        self.qlinear_average_pool(node, global_pool=True)

    def emit_avgpool(self, node, v: IRValue, xs, xzp, ys, yzp, ydtype, global_pool, onnx_out):
        """IR sumpool + threshold reproducing onnxruntime's quantized average pooling
        (:func:`zakid_hw.ort_arith.avgpool_form`)."""
        from . import ort_arith

        a = self.attrs(node)
        x, rank = self._as_4d(v)
        if x.dtype != ydtype:
            _fail(f"{self.where(node)}: average pooling from {x.dtype} to {ydtype} is not supported (onnxruntime's "
                  "kernels keep the dtype).")
        kern, strides, pads, dil, ceil = self._pool_window(node, x, rank, global_pool)
        if dil != (1, 1):
            _fail(f"{self.where(node)}: dilated average pooling is not supported.")
        oh = conv_out_size(x.shape[2], kern[0], strides[0], pads[0], pads[2])
        ow = conv_out_size(x.shape[3], kern[1], strides[1], pads[1], pads[3])
        if ceil and (oh, ow) != (conv_out_size(x.shape[2], kern[0], strides[0], pads[0], pads[2], 1, 1),
                                 conv_out_size(x.shape[3], kern[1], strides[1], pads[1], pads[3], 1, 1)):
            _fail(f"{self.where(node)}: average pooling with ceil_mode=1 that adds a partial window is not "
                  "supported.")
        if oh < 1 or ow < 1:
            _fail(f"{self.where(node)}: the pooling window does not fit the input {x.shape}.")
        try:  # strict: where onnxruntime's float32 average is not a function of the window sum, refuse
            forms = ort_arith.avgpool_form(xs, xzp, ys, yzp, x.dtype, kernel=kern, input_hw=tuple(x.shape[2:]),
                                           strides=strides, pads=pads,
                                           count_include_pad=int(a.get("count_include_pad", 0)),
                                           global_pool=global_pool)
        except ZakidError as e:
            _fail(f"{self.where(node)}: {e} (A kernel covering the whole input without padding, or "
                  "GlobalAveragePool, runs onnxruntime's integer kernel, which is always exact.)")
        thresholds, base = _merge_pool_forms(forms, x.dtype, int(xzp))
        if thresholds is None:
            _fail(f"{self.where(node)}: with this padding the pooling windows hold {len(forms)} different numbers of "
                  f"in-image inputs ({sorted(forms)}) and onnxruntime's averages differ between them; the IR "
                  "threshold op has one table per channel, not per output position. Use no padding (or "
                  "count_include_pad=1).")
        acc = self._tensor(self._fresh(f"{node.name or node.op_type}_sum"), (x.shape[0], x.shape[1], oh, ow), "int32")
        self._emit("sumpool", node.name or node.op_type, [x.name], [acc], kernel=kern, strides=strides, pads=pads,
                   x_zp=int(xzp))
        out = onnx_out if onnx_out not in self.graph.tensors else self._fresh(onnx_out)
        self._tensor(out, (x.shape[0], x.shape[1], oh, ow), ydtype, ys, yzp)
        self._emit("threshold", f"{node.name or node.op_type}_threshold", [acc], [out],
                   thresholds=np.asarray(thresholds, np.int64).reshape(1, -1), base=int(base), dtype=ydtype, axis=1)
        self.vals[onnx_out] = IRValue(out, self._view((x.shape[0], x.shape[1], oh, ow), rank))

    # ---- residual Add

    def residual_add_qlinear(self, node):
        """com.microsoft QLinearAdd of two computed tensors."""
        ta = self._add_operand(node.input[0])
        tb = self._add_operand(node.input[3])
        c_zp = self.opt_const(node, 7)
        params = [np.float32(_scalar(self.const(node.input[i]), "scale")) for i in (1, 4, 6)]
        zps = [_scalar(self.opt_const(node, i, np.zeros(())), "zero point") for i in (2, 5)]
        ydtype = ta[1].dtype if c_zp is None else str(c_zp.dtype)
        yzp = 0 if c_zp is None else _scalar(c_zp, "C_zero_point")
        self._emit_add(node, ta, tb, params[0], zps[0], params[1], zps[1], params[2], yzp, ydtype, node.output[0],
                       "qlinear")

    def _add_operand(self, name):
        v = self.val(name)
        if not (isinstance(v, IRValue) and self.graph.tensors[v.name].dtype in ("int8", "uint8")):
            _fail(f"{self.where()}: its operand {name!r} must be an int8/uint8 tensor computed by the graph, got "
                  f"{self._describe(v)}.")
        return v, self.graph.tensors[v.name]

    def residual_add_dq(self, node):
        a, b = self.val(node.input[0]), self.val(node.input[1])
        if not (isinstance(a, DQValue) and isinstance(b, DQValue)):
            _fail(f"{self.where()}: adds {self._describe(a)} and {self._describe(b)}; an Add of two computed tensors "
                  "must read two DequantizeLinear outputs and feed a QuantizeLinear (onnxruntime then runs it as "
                  "QLinearAdd).")
        self.vals[node.output[0]] = PendingAdd(a, b, node)

    def emit_residual_add(self, node, a: DQValue, b: DQValue, ys, yzp, ydtype, q):
        ta = (IRValue(a.src, a.shape), self.graph.tensors[a.src])
        tb = (IRValue(b.src, b.shape), self.graph.tensors[b.src])
        self._emit_add(node, ta, tb, a.scale, a.zp, b.scale, b.zp, ys, yzp, ydtype, q.output[0], "qdq")

    def _emit_add(self, node, ta, tb, a_s, a_zp, b_s, b_zp, ys, yzp, ydtype, onnx_out, kind):
        from . import ort_arith

        (va, xa), (vb, xb) = ta, tb
        if self.shape(va) != self.shape(vb):
            _fail(f"{self.where(node)}: adds tensors of shapes {self.shape(va)} and {self.shape(vb)}; only the "
                  "addition of two tensors of the same shape (a residual connection) is supported.")
        if xa.shape != xb.shape:  # one is a 1-D convolution's 4-D view, the other is not
            a_name, b_name = self.materialize(va), self.materialize(vb)
            view = None
        else:
            a_name, b_name, view = va.name, vb.name, va.shape
        try:
            a_mult, b_mult, thresholds, base = ort_arith.add_form(
                np.float32(a_s), int(a_zp), np.float32(b_s), int(b_zp), np.float32(ys), int(yzp),
                self.graph.tensors[a_name].dtype, self.graph.tensors[b_name].dtype, ydtype, kind=kind)
        except ZakidError as e:
            _fail(f"{self.where(node)}: {e}")
        shape = self.graph.tensors[a_name].shape
        acc = self._tensor(self._fresh(f"{node.name or node.op_type}_sum"), shape, "int32")
        self._emit("add", node.name or node.op_type, [a_name, b_name], [acc], a_zp=int(a_zp), b_zp=int(b_zp),
                   a_mult=int(a_mult), b_mult=int(b_mult))
        out = onnx_out if onnx_out not in self.graph.tensors else self._fresh(onnx_out)
        self._tensor(out, shape, ydtype, ys, yzp)
        self._emit("threshold", f"{node.name or node.op_type}_threshold", [acc], [out],
                   thresholds=np.asarray(thresholds, np.int64).reshape(1, -1), base=int(base), dtype=ydtype,
                   **({"axis": 1} if len(shape) >= 2 else {}))
        self.vals[onnx_out] = IRValue(out, view)

    # ---- Concat

    def _concat_axis(self, node, rank):
        axis = int(self.attrs(node).get("axis", 1))
        axis = axis + rank if axis < 0 else axis
        if not 0 <= axis < rank:
            _fail(f"{self.where()}: axis {axis} is out of range for rank {rank}.")
        return axis

    def qlinear_concat(self, node):
        """com.microsoft QLinearConcat(Y_scale, Y_zero_point, (X, X_scale, X_zero_point)...)."""
        from onnx import helper

        ys, yzp = self.const(node.input[0]), self.const(node.input[1])
        ys, ydtype, yzp = np.float32(_scalar(ys, "Y_scale")), str(yzp.dtype), _scalar(yzp, "Y_zero_point")
        parts = []
        for k in range(2, len(node.input), 3):
            name = node.input[k]
            v = self.val(name)
            if not (isinstance(v, IRValue) and self.graph.tensors[v.name].dtype in ("int8", "uint8")):
                _fail(f"{self.where()}: its input {name!r} must be an int8/uint8 tensor computed by the graph.")
            xs = np.float32(_scalar(self.const(node.input[k + 1]), "X_scale"))
            xzp = _scalar(self.const(node.input[k + 2]), "X_zero_point")
            t = self.graph.tensors[v.name]
            if (xs, xzp, t.dtype) != (ys, yzp, ydtype):
                one = helper.make_node("QLinearConcat", [node.input[0], node.input[1], "__zakid_island_input",
                                                         node.input[k + 1], node.input[k + 2]],
                                       [f"{node.output[0]}__part{k}"], domain="com.microsoft",
                                       axis=int(self.attrs(node).get("axis", 1)))
                out = self._fresh(f"{name}_requant")
                self.resolve_island(Island(v.name, "__zakid_island_input", [one], self.shape(v)), out, ydtype, ys, yzp,
                                    onnx_out=one.output[0])
                v = self.vals.pop(one.output[0])
            parts.append(v)
        self._emit_concat(node, parts, ys, yzp, ydtype, node.output[0])

    def concat(self, node):
        vs = [self.val(i) for i in node.input]
        if all(isinstance(v, DQValue) for v in vs):
            rank = len(self.shape(vs[0]))
            self.vals[node.output[0]] = PendingConcat(vs, list(node.input), self._concat_axis(node, rank), node)
            return
        if all(isinstance(v, IRValue) and self.graph.tensors[v.name].dtype in ("int8", "uint8") for v in vs):
            ts = [self.graph.tensors[v.name] for v in vs]
            if len({(t.dtype, t.scale, t.zero_point) for t in ts}) != 1:
                _fail(f"{self.where()}: concatenates integer tensors with different types or quantization "
                      "parameters; use QLinearConcat or DequantizeLinear/QuantizeLinear around it.")
            self._emit_concat(node, vs, ts[0].scale, ts[0].zero_point, ts[0].dtype, node.output[0])
            return
        if all(isinstance(v, np.ndarray) for v in vs):
            self.consts[node.output[0]] = np.concatenate(vs, axis=int(self.attrs(node).get("axis", 1)))
            return
        _fail(f"{self.where()}: Concat of {', '.join(self._describe(v) for v in vs)} is not supported; its inputs "
              "must all be quantized tensors or all DequantizeLinear outputs.")

    def emit_dq_concat(self, pc: PendingConcat, q, scale, zp, dtype):
        from onnx import helper

        parts = []
        for v, name in zip(pc.parts, pc.names):
            island = self._island_from(v, name)
            one = helper.make_node("Concat", [name], [pc.node.output[0]], axis=pc.axis)
            out = self._fresh(f"{name}_requant")
            self.resolve_island(Island(island.src, island.src_onnx, island.nodes + [one, q], island.shape), out,
                                dtype, scale, zp, onnx_out=q.output[0])
            parts.append(self.vals.pop(q.output[0]))
        self._emit_concat(pc.node, parts, scale, zp, dtype, q.output[0])

    def _emit_concat(self, node, parts, scale, zp, dtype, onnx_out):
        shapes = [tuple(self.shape(v)) for v in parts]
        rank = len(shapes[0])
        axis = self._concat_axis(node, rank)
        if any(len(s) != rank or s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:] for s in shapes):
            _fail(f"{self.where(node)}: cannot concatenate shapes {shapes} along axis {axis}.")
        views = {v.shape is not None and tuple(v.shape) != self.graph.tensors[v.name].shape for v in parts}
        if views == {True}:  # all 1-D convolution views: join the IR tensors (axis 2 of the view is IR axis 3)
            names, ir_axis = [v.name for v in parts], axis + (1 if axis >= 2 else 0)
        else:
            names, ir_axis = [self.materialize(v) for v in parts], axis
        ir_shapes = [self.graph.tensors[n].shape for n in names]
        out_shape = list(ir_shapes[0])
        out_shape[ir_axis] = sum(s[ir_axis] for s in ir_shapes)
        out = onnx_out if onnx_out not in self.graph.tensors else self._fresh(onnx_out)
        self._tensor(out, out_shape, dtype, scale, zp)
        self._emit("concat", node.name or "concat", names, [out], axis=ir_axis)
        view = None
        if views == {True}:
            view = list(shapes[0])
            view[axis] = sum(s[axis] for s in shapes)
            view = tuple(view)
        self.vals[onnx_out] = IRValue(out, view)

    # ---- Transpose

    def transpose(self, node):
        v = self.val(node.input[0])
        if isinstance(v, np.ndarray):
            self.consts[node.output[0]] = np.transpose(v, self.attrs(node).get("perm"))
            return
        if isinstance(v, DQValue):
            src = IRValue(v.src, v.shape)
        elif isinstance(v, IRValue):
            src = v
        else:
            _fail(f"{self.where()}: Transpose of {self._describe(v)} is not supported.")
        name = self.materialize(src)
        t = self.graph.tensors[name]
        perm = tuple(int(p) for p in (self.attrs(node).get("perm") or range(len(t.shape))[::-1]))
        if sorted(perm) != list(range(len(t.shape))):
            _fail(f"{self.where()}: perm {perm} does not fit shape {t.shape}.")
        out = self._fresh(f"{node.output[0]}_codes") if isinstance(v, DQValue) else self._out_name(node)
        self._like(out, t, shape=tuple(t.shape[p] for p in perm))
        self._emit("transpose", node.name or "transpose", [name], [out], perm=perm)
        self.vals[node.output[0]] = DQValue(out, v.scale, v.zp) if isinstance(v, DQValue) else IRValue(out)

    # ---- Softmax

    def softmax(self, node):
        v = self.val(node.input[0])
        if not isinstance(v, DQValue):
            _fail(f"{self.where()}: Softmax must read a DequantizeLinear output (a quantized model's output "
                  f"probabilities); it reads {self._describe(v)}.")
        rank = len(self.shape(v))
        axis = int(self.attrs(node).get("axis", -1 if self._opset() >= 13 else 1))
        axis = axis + rank if axis < 0 else axis
        if self._opset() < 13 and axis != rank - 1:
            _fail(f"{self.where()}: Softmax before opset 13 flattens from axis {axis}; only the last axis is "
                  "supported on the host.")
        self.vals[node.output[0]] = SoftmaxValue(v, axis, node)

    def _opset(self):
        return next((o.version for o in self.model.opset_import if o.domain in ("", "ai.onnx")), 13)

    def host_softmax(self, v: SoftmaxValue, out: str):
        """Softmax computing the graph output: IR dequantize + softmax, on the host."""
        src = self.materialize(IRValue(v.dq.src, v.dq.shape))
        t = self.graph.tensors[src]
        f = self._fresh(f"{out}_logits")
        self._tensor(f, t.shape, "float32")
        self._emit("dequantize", f"{v.node.name or 'softmax'}_dequantize", [src], [f], scale=v.dq.scale,
                   zero_point=v.dq.zp)
        self._tensor(out, t.shape, "float32")
        self._emit("softmax", v.node.name or "softmax", [f], [out], axis=v.axis)
        self.notes.append(f"{v.node.name or 'Softmax'!r}: float Softmax on the host (not bit-exact with "
                          "onnxruntime's exp)")

    def quantized_softmax(self, q, v: SoftmaxValue, ys, yzp, ydtype):
        """DQ -> Softmax -> Q, which onnxruntime fuses into com.microsoft QLinearSoftmax."""
        self.emit_qlinear_softmax(v.node, IRValue(v.dq.src, v.dq.shape), v.dq.scale, v.dq.zp, ys, yzp, ydtype, v.axis,
                                  q.output[0], self._opset())

    def qlinear_softmax(self, node):
        v = self.val(node.input[0])
        if not (isinstance(v, IRValue) and self.graph.tensors[v.name].dtype in ("int8", "uint8")):
            _fail(f"{self.where()}: its input must be an int8/uint8 tensor computed by the graph.")
        a = self.attrs(node)
        rank = len(self.shape(v))
        axis = int(a.get("axis", -1))
        axis = axis + rank if axis < 0 else axis
        xs, xzp = self.const(node.input[1]), self.opt_const(node, 2)
        ys, yzp = self.const(node.input[3]), self.opt_const(node, 4)
        t = self.graph.tensors[v.name]
        self.emit_qlinear_softmax(node, v, np.float32(_scalar(xs, "x_scale")),
                                  0 if xzp is None else _scalar(xzp, "x_zero_point"),
                                  np.float32(_scalar(ys, "y_scale")), 0 if yzp is None else _scalar(yzp, "y_zp"),
                                  t.dtype if yzp is None else str(yzp.dtype), axis, node.output[0],
                                  int(a.get("opset", 13)))

    def emit_qlinear_softmax(self, node, v: IRValue, xs, xzp, ys, yzp, ydtype, axis, onnx_out, opset=13):
        """com.microsoft QLinearSoftmax on the host: IR ``qsoftmax`` (:func:`zakid_hw.golden.qsoftmax`)."""
        src = self.materialize(v)
        t = self.graph.tensors[src]
        out = onnx_out if onnx_out not in self.graph.tensors else self._fresh(onnx_out)
        self._tensor(out, t.shape, ydtype, ys, yzp)
        self._emit("qsoftmax", node.name or "qlinear_softmax", [src], [out], x_scale=np.float32(xs), x_zp=int(xzp),
                   y_scale=np.float32(ys), y_zp=int(yzp), dtype=ydtype, axis=int(axis), opset=int(opset))
        self.vals[onnx_out] = IRValue(out)

    # ---- com.microsoft elementwise ops on codes: code maps tabulated with onnxruntime

    def qlinear_unary(self, node):
        v = self.val(node.input[0])
        if not (isinstance(v, IRValue) and self.graph.tensors[v.name].dtype in ("int8", "uint8")):
            _fail(f"{self.where()}: its input must be an int8/uint8 tensor computed by the graph.")
        t = self.graph.tensors[v.name]
        yzp = self.opt_const(node, 4)
        ydtype = t.dtype if yzp is None else str(yzp.dtype)
        self.resolve_island(Island(v.name, node.input[0], [node], self.shape(v)), self._out_name(node), ydtype,
                            np.float32(_scalar(self.const(node.input[3]), "Y_scale")),
                            0 if yzp is None else _scalar(yzp, "Y_zero_point"), onnx_out=node.output[0])


def _merge_pool_forms(forms: dict, dtype: str, x_zp: int):
    """One (thresholds, base) valid for every window size ``m`` of :func:`zakid_hw.ort_arith.avgpool_form`'s
    result (each valid on the sums ``m`` inputs can reach), or (None, None) if the sizes need different tables."""
    lo, hi = dtype_range(dtype)
    m_max = max(forms)
    thr, base = forms[m_max]
    for m, (t, b) in forms.items():
        sums = np.arange(m * (lo - x_zp), m * (hi - x_zp) + 1)
        mine = b + (sums[:, None] >= np.asarray(t).reshape(1, -1)).sum(axis=1)
        theirs = base + (sums[:, None] >= np.asarray(thr).reshape(1, -1)).sum(axis=1)
        if not np.array_equal(mine, theirs):
            return None, None
    return thr, base


@dataclass
class PendingPool:
    """Float (Global)AveragePool of a dequantized tensor, lowered at the QuantizeLinear that follows."""
    dq: DQValue
    node: object
    global_pool: bool

    def lower_at_quantize(self, imp, q, scale, zp, dtype):
        imp.emit_avgpool(self.node, IRValue(self.dq.src, self.dq.shape), self.dq.scale, self.dq.zp, scale, zp, dtype,
                         self.global_pool, q.output[0])


LOWER_CNN = {
    "QLinearConv": CnnOps.qlinear_conv,
    "Conv": CnnOps.conv,
    "ConvInteger": CnnOps.conv_integer,
    "MatMulInteger": CnnOps.matmul_integer,
    "MaxPool": CnnOps.maxpool,
    "GlobalMaxPool": CnnOps.global_maxpool,
    "AveragePool": CnnOps.average_pool,
    "GlobalAveragePool": CnnOps.global_average_pool,
    "QLinearAveragePool": CnnOps.qlinear_average_pool,
    "QLinearGlobalAveragePool": CnnOps.qlinear_global_average_pool,
    "QLinearConcat": CnnOps.qlinear_concat,
    "Concat": CnnOps.concat,
    "Transpose": CnnOps.transpose,
    "Softmax": CnnOps.softmax,
    "QLinearSoftmax": CnnOps.qlinear_softmax,
    "QLinearSigmoid": CnnOps.qlinear_unary,
    "QLinearLeakyRelu": CnnOps.qlinear_unary,
}
