"""Small integer-IR graphs of CNN shapes, built directly (as an importer would produce them) with random
weights, for tests of the passes, the scheduler and the RTL."""

from __future__ import annotations

import numpy as np

from zakid_hw import golden
from zakid_hw.ir import Graph, Node, Tensor, dtype_range


class IRBuilder:
    """Appends layers to a graph whose input is a code tensor; each method returns the new tensor name."""

    def __init__(self, rng, shape, dtype="int8", name="cnn"):
        self.rng, self.name = rng, name
        self.tensors = {"x": Tensor("x", tuple(shape), dtype, 0.05, 0)}
        self.nodes: list[Node] = []
        self.n = 0

    def _t(self, shape, dtype):
        self.n += 1
        name = f"t{self.n}"
        zp = int(self.rng.integers(-10, 10)) if dtype == "int8" else int(self.rng.integers(0, 20))
        self.tensors[name] = Tensor(name, tuple(int(s) for s in shape), dtype, 0.05, zp)
        return name

    def _shape_of(self, node, inputs):
        env = {t: np.zeros(self.tensors[t].shape, np.int64) for t in inputs}
        return golden.run_node(node, *(env[t] for t in inputs)).shape

    def _requant(self, acc, out_dtype, scale, relu, per_channel, channels):
        lo, hi = dtype_range(out_dtype)
        y = self._t(self.tensors[acc].shape, out_dtype)
        zp = self.tensors[y].zero_point
        mult = np.float32(scale * self.rng.uniform(0.7, 1.3, channels if per_channel else None))
        self.nodes.append(Node("requantize", f"rq_{y}", [acc], [y], dict(
            multiplier=mult, zero_point=zp, dtype=out_dtype, qmin=zp if relu else lo, qmax=hi, axis=1)))
        return y

    def _acc(self, op, inputs, attrs):
        node = Node(op, f"{op}{self.n + 1}", list(inputs), ["?"], attrs)
        shape = self._shape_of(node, inputs)
        acc = self._t(shape, "int32")
        node.outputs = [acc]
        self.nodes.append(node)
        return acc

    def conv(self, x, m, k=(3, 3), strides=(1, 1), pads=(1, 1, 1, 1), dil=(1, 1), group=1, out_dtype="int8",
             relu=True, per_channel=True, w_zp=0):
        c = self.tensors[x].shape[1]
        w = self.rng.integers(-60, 61, (m, c // group, *k))
        x_zp = self.tensors[x].zero_point
        acc = self._acc("conv", [x], dict(weight=w, w_zp=w_zp, x_zp=x_zp, bias=self.rng.integers(-2000, 2000, m),
                                          strides=strides, pads=pads, dilations=dil, group=group))
        kk = w[0].size
        return self._requant(acc, out_dtype, 40 / (2600 * np.sqrt(kk)), relu, per_channel, m)

    def dense(self, x, n, out_dtype="int8", relu=False):
        k = int(np.prod(self.tensors[x].shape))
        w = self.rng.integers(-60, 61, (n, k))
        acc = self._acc("dense", [x], dict(weight=w, w_zp=0, x_zp=self.tensors[x].zero_point,
                                           bias=self.rng.integers(-2000, 2000, n)))
        return self._requant(acc, out_dtype, 40 / (2600 * np.sqrt(k)), relu, False, n)

    def maxpool(self, x, k=(2, 2), strides=(2, 2), pads=(0, 0, 0, 0), dil=(1, 1), ceil_mode=0):
        node = Node("maxpool", f"mp{self.n + 1}", [x], ["?"], dict(kernel=k, strides=strides, pads=pads,
                                                                   dilations=dil, ceil_mode=ceil_mode))
        t = self.tensors[x]
        y = self._t(self._shape_of(node, [x]), t.dtype)
        self.tensors[y].zero_point = t.zero_point
        node.outputs = [y]
        self.nodes.append(node)
        return y

    def avgpool(self, x, k=None, strides=(1, 1), pads=(0, 0, 0, 0), out_dtype="int8"):
        k = k or tuple(self.tensors[x].shape[2:])  # global
        acc = self._acc("sumpool", [x], dict(kernel=k, strides=strides, pads=pads, x_zp=self.tensors[x].zero_point))
        return self._requant(acc, out_dtype, float(np.float32(1.0 / (k[0] * k[1]))), False, False, 1)

    def add(self, a, b, out_dtype="int8"):
        acc = self._acc("add", [a, b], dict(a_zp=self.tensors[a].zero_point, b_zp=self.tensors[b].zero_point,
                                            a_mult=int(self.rng.integers(200, 400)),
                                            b_mult=int(self.rng.integers(-400, 400))))
        return self._requant(acc, out_dtype, 1 / 500, False, False, 1)

    def concat(self, xs):
        node = Node("concat", f"cat{self.n + 1}", list(xs), ["?"], dict(axis=1))
        y = self._t(self._shape_of(node, xs), self.tensors[xs[0]].dtype)
        node.outputs = [y]
        self.nodes.append(node)
        return y

    def flatten(self, x):
        shape = (1, int(np.prod(self.tensors[x].shape)))
        node = Node("reshape", f"flat{self.n + 1}", [x], ["?"], dict(shape=shape))
        y = self._t(shape, self.tensors[x].dtype)
        node.outputs = [y]
        self.nodes.append(node)
        return y

    def graph(self, out) -> Graph:
        return Graph(self.name, ["x"], [out], dict(self.tensors), list(self.nodes))


def cnn_a(rng, dtype="int8"):
    """conv 3x3 (3 -> 5 channels), max pool, strided conv with asymmetric padding and dilation, dense."""
    b = IRBuilder(rng, (1, 3, 9, 8), dtype, "cnn_a")
    t = b.conv("x", 5, out_dtype="uint8")
    t = b.maxpool(t, k=(2, 2), strides=(2, 2), ceil_mode=1)
    t = b.conv(t, 6, k=(3, 2), strides=(2, 1), pads=(0, 1, 2, 0), dil=(1, 2))
    t = b.dense(b.flatten(t), 7)
    return b.graph(t)


def cnn_b(rng, dtype="int8"):
    """depthwise 3x3 over 10 channels (more than a lane group), pointwise 1x1, global average pool, dense."""
    b = IRBuilder(rng, (1, 10, 5, 4), dtype, "cnn_b")
    t = b.conv("x", 10, group=10, relu=True)
    t = b.conv(t, 12, k=(1, 1), pads=(0, 0, 0, 0))
    t = b.avgpool(t)
    t = b.dense(b.flatten(t), 4)
    return b.graph(t)


def cnn_c(rng, dtype="int8"):
    """a residual add, a channel concat, a 1-D convolution (height 1), max pool with padding."""
    b = IRBuilder(rng, (1, 4, 1, 12), dtype, "cnn_c")
    a = b.conv("x", 8, k=(1, 3), pads=(0, 1, 0, 1))
    c = b.conv(a, 8, k=(1, 3), pads=(0, 1, 0, 1))
    s = b.add(a, c)
    q = b.conv(s, 3, k=(1, 5), strides=(1, 2), pads=(0, 2, 0, 2))
    r = b.conv(s, 8, k=(1, 5), strides=(1, 2), pads=(0, 2, 0, 2))
    t = b.concat([r, q])
    t = b.maxpool(t, k=(1, 3), strides=(1, 1), pads=(0, 1, 0, 1))
    t = b.conv(t, 6, k=(1, 2), pads=(0, 0, 0, 0))
    return b.graph(t)


def cnn_pw(rng, dtype="int8"):
    """pointwise layers that can run two pixels at once with 4 lanes: 15 pixels (the last pair has no second
    pixel) with 12 outputs (a partial lane group), a depthwise layer between, 6 pixels after a max pool (whole
    pairs), then a dense layer."""
    b = IRBuilder(rng, (1, 8, 3, 5), dtype, "cnn_pw")
    t = b.conv("x", 12, k=(1, 1), pads=(0, 0, 0, 0))
    t = b.conv(t, 12, group=12)
    t = b.conv(t, 16, k=(1, 1), pads=(0, 0, 0, 0), out_dtype="uint8")
    t = b.maxpool(t, k=(1, 2), strides=(1, 2))
    t = b.conv(t, 8, k=(1, 1), pads=(0, 0, 0, 0))
    t = b.dense(b.flatten(t), 5)
    return b.graph(t)


def cnn_pk(rng, dtype="int8"):
    """convolutions with kernels whose output columns pair up with 4 lanes (see schedule.pair_form): 3x3
    with padding on every side, 2x3 with row stride 2, column dilation 2 and uneven padding, 3x3 on uint8
    inputs into 6 outputs (a partial lane group); then a 1x2 one with an odd column count and input
    channels that fill no whole word (unpaired), and a dense layer."""
    b = IRBuilder(rng, (1, 4, 5, 6), dtype, "cnn_pk")
    t = b.conv("x", 8, k=(3, 3), pads=(1, 1, 1, 1))
    t = b.conv(t, 8, k=(2, 3), strides=(2, 1), pads=(0, 2, 1, 2), dil=(1, 2), out_dtype="uint8")
    t = b.conv(t, 6, k=(3, 3), pads=(1, 1, 1, 1))
    t = b.conv(t, 5, k=(1, 2), pads=(0, 0, 0, 0))
    t = b.dense(b.flatten(t), 5)
    return b.graph(t)


def cnn_ps(rng, dtype="int8"):
    """a one-channel input whose first convolution pairs output columns by shifting, bank B's last tap
    peeked from bank A's word (see schedule.pair_form and shift_peeks: every such byte pair lies in one
    word): 3x5 kernel, row stride 2, uneven padding, 6 outputs (a partial lane group with 4 lanes); then an
    unpaired 3x3 convolution and a dense layer."""
    b = IRBuilder(rng, (1, 1, 6, 8), dtype, "cnn_ps")
    t = b.conv("x", 6, k=(3, 5), strides=(2, 1), pads=(1, 2, 0, 2))
    t = b.conv(t, 8, k=(3, 3), pads=(1, 1, 1, 1))
    t = b.dense(b.flatten(t), 5)
    return b.graph(t)


def cnn_pc(rng, dtype="int8"):
    """a one-channel input whose first convolution pairs output columns by shifting with one more kernel
    column: rows of 7 bytes, so some of bank B's last taps lie in the word after bank A's (see
    schedule.shift_peeks); 2x4 kernel, padding on three sides, 6 outputs; then a dense layer."""
    b = IRBuilder(rng, (1, 1, 5, 7), dtype, "cnn_pc")
    t = b.conv("x", 6, k=(2, 4), pads=(0, 1, 1, 1))
    t = b.dense(b.flatten(t), 5)
    return b.graph(t)


def cnn_pv(rng, dtype="int8"):
    """one-channel convolutions whose pixels pair with the pixel above ("col", see schedule.pair_form):
    4x3 kernel, stride 2 both ways, padding, 7x3 outputs (an odd row count: the first row of pairs has
    no second pixel), 6 outputs (a partial lane group with 4 lanes); a 1x1 convolution down to one
    channel; then 2x4 with column stride 2 and uneven padding, 6x2 outputs (an even row count), another
    delay; and a dense layer."""
    b = IRBuilder(rng, (1, 1, 13, 6), dtype, "cnn_pv")
    t = b.conv("x", 6, k=(4, 3), strides=(2, 2), pads=(2, 1, 1, 1))
    t = b.conv(t, 1, k=(1, 1), pads=(0, 0, 0, 0))
    t = b.conv(t, 5, k=(2, 4), strides=(1, 2), pads=(0, 1, 0, 2))
    t = b.dense(b.flatten(t), 5)
    return b.graph(t)


def cnn_k1(rng, dtype="int8"):
    """layers of one MAC step per lane group, so that a pixel's last group comes right at the start of a
    layer or a lane group's turn at the drain after the one before (the controller registers what the next
    pixel and row take a cycle ahead): a 1x1 convolution of a one-channel input into 3 channels (one lane
    group with 4 lanes), first, as the controller starts it from idle; a depthwise 1x1 one; 1x1 into 6
    channels (two lane groups); 1x1 down to one channel; 1x1 with stride 2 into 3 channels, after a layer;
    and a dense layer."""
    b = IRBuilder(rng, (1, 1, 4, 5), dtype, "cnn_k1")
    t = b.conv("x", 3, k=(1, 1), pads=(0, 0, 0, 0))
    t = b.conv(t, 3, k=(1, 1), pads=(0, 0, 0, 0), group=3)
    t = b.conv(t, 6, k=(1, 1), pads=(0, 0, 0, 0))
    t = b.conv(t, 1, k=(1, 1), pads=(0, 0, 0, 0))
    t = b.conv(t, 3, k=(1, 1), strides=(2, 2), pads=(0, 0, 0, 0))
    t = b.dense(b.flatten(t), 4)
    return b.graph(t)


def cnn_raw(rng, dtype="int8"):
    """a conv whose last dense layer hands its raw accumulators to the host (as QONNX models end)."""
    b = IRBuilder(rng, (1, 2, 4, 4), dtype, "cnn_raw")
    t = b.conv("x", 6)
    w = b.rng.integers(-60, 61, (5, 6 * 16))
    acc = b._acc("dense", [b.flatten(t)], dict(weight=w, w_zp=0, x_zp=b.tensors[t].zero_point,
                                              bias=b.rng.integers(-2000, 2000, 5)))
    return b.graph(acc)


def mlp_b(rng, dtype="int8"):
    """dense layers for batches of inferences (schedule.make_program's batch): 24 -> 12 (more outputs than
    4 lanes), 12 -> 4 (fewer steps than the pipeline takes, so each layer's start waits for the last
    pixel of the one before), a residual add, and a last layer that hands its raw accumulators to the host."""
    b = IRBuilder(rng, (1, 24), dtype, "mlp_b")
    a = b.dense("x", 12, relu=True)
    c = b.dense(a, 4)
    s = b.add(c, b.dense(c, 4, out_dtype=b.tensors[c].dtype))
    w = b.rng.integers(-60, 61, (3, 4))
    acc = b._acc("dense", [s], dict(weight=w, w_zp=0, x_zp=b.tensors[s].zero_point,
                                    bias=b.rng.integers(-2000, 2000, 3)))
    return b.graph(acc)


def mlp_p(rng, dtype="int8"):
    """dense layers whose batches pair up with 4 lanes (schedule.pair_form "line": inputs a multiple of the
    lanes, at least twice as many steps as lanes): 24 -> 12 -> 8, then 3 raw accumulators."""
    b = IRBuilder(rng, (1, 24), dtype, "mlp_p")
    t = b.dense(b.dense("x", 12, relu=True), 8)
    w = b.rng.integers(-60, 61, (3, 8))
    acc = b._acc("dense", [t], dict(weight=w, w_zp=0, x_zp=b.tensors[t].zero_point,
                                    bias=b.rng.integers(-2000, 2000, 3)))
    return b.graph(acc)
