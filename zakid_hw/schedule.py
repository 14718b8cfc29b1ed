"""Split a hardware-ready graph into host work and accelerator layers, and lay the layers out in memory.

After :func:`zakid_hw.passes.lower_for_hardware` a supported graph reads
``[host pre: quantize/reshape] -> (dense -> threshold)+ -> [host post: reshape/dequantize]``;
reshapes between layers do not move data (row-major order is kept), so the accelerator sees each layer
as a flat vector. The host pre/post parts are run by the driver with the golden model's own functions.

:func:`memory_image` turns the layers plus an :class:`rtl_gen.config.AccelConfig` into the contents of
every on-chip memory and the layer descriptor table (:class:`AccelImage`) that :mod:`rtl_gen` builds from.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import golden
from .errors import ZakidError
from .ir import Graph, Node
from .passes import accumulator_bounds

HOST_PRE_OPS = ("quantize", "reshape")
HOST_POST_OPS = ("reshape", "dequantize")


@dataclass
class Layer:
    """One dense layer with its threshold requantizer, as the accelerator runs it."""
    name: str
    weight: np.ndarray       # (N, K) int, zero points folded
    bias: np.ndarray         # (N,) int
    thresholds: np.ndarray   # (C, T) int, C = 1 or N
    base: int                # output code for "no threshold reached"
    in_dtype: str
    out_dtype: str
    acc_range: tuple[int, int]

    @property
    def k(self) -> int:
        return self.weight.shape[1]

    @property
    def n(self) -> int:
        return self.weight.shape[0]

    @property
    def macs(self) -> int:
        return self.weight.size


@dataclass
class Program:
    graph: Graph
    host_pre: list[Node]
    layers: list[Layer]
    host_post: list[Node]
    accel_in: str             # tensor names at the accelerator's boundary
    accel_out: str

    @property
    def in_len(self) -> int:
        return self.layers[0].k

    @property
    def out_len(self) -> int:
        return self.layers[-1].n

    @property
    def macs(self) -> int:
        return sum(l.macs for l in self.layers)

    def to_codes(self, x: np.ndarray) -> np.ndarray:
        """Host side before the accelerator: model input (one row) -> flat input codes."""
        env = {self.graph.inputs[0]: np.asarray(x).reshape(self.graph.tensors[self.graph.inputs[0]].shape)}
        for node in self.host_pre:
            env[node.outputs[0]] = golden.run_node(node, *(env[t] for t in node.inputs))
        return np.asarray(env[self.accel_in], np.int64).reshape(-1)

    def accel_golden(self, codes: np.ndarray) -> np.ndarray:
        """What the accelerator must compute: flat input codes -> flat output codes (golden model)."""
        t = self.graph.tensors[self.accel_in]
        env = {self.accel_in: np.asarray(codes, np.int64).reshape(t.shape)}
        for node in self.graph.nodes:
            if node not in self.host_pre and node not in self.host_post:
                env[node.outputs[0]] = golden.run_node(node, *(env[t] for t in node.inputs))
        return np.asarray(env[self.accel_out], np.int64).reshape(-1)

    def from_codes(self, codes: np.ndarray) -> np.ndarray:
        """Host side after the accelerator: flat output codes -> the model's output (one row)."""
        t = self.graph.tensors[self.accel_out]
        env = {self.accel_out: np.asarray(codes, np.int64).reshape(t.shape)}
        for node in self.host_post:
            env[node.outputs[0]] = golden.run_node(node, *(env[t] for t in node.inputs))
        return env[self.graph.outputs[0]]


def make_program(graph: Graph) -> Program:
    """Partition a lowered graph (see module docstring); a ZakidError names any node that does not fit."""
    nodes = list(graph.nodes)
    i = 0
    pre = []
    while i < len(nodes) and nodes[i].op in HOST_PRE_OPS:
        pre.append(nodes[i])
        i += 1
    layers = []
    accel_in = pre[-1].outputs[0] if pre else graph.inputs[0]
    cur = accel_in
    while i < len(nodes) and nodes[i].op in ("dense", "reshape"):
        node = nodes[i]
        if node.op == "reshape":
            cur = node.outputs[0]
            i += 1
            continue
        if i + 1 >= len(nodes) or nodes[i + 1].op != "threshold":
            raise ZakidError(f"dense node {node.name!r} is not followed by a requantization; the "
                             "accelerator needs quantized (int8/uint8) outputs from every layer")
        thr = nodes[i + 1]
        a, t = node.attrs, thr.attrs
        if a["x_zp"] != 0 or np.any(np.asarray(a["w_zp"]) != 0):
            raise ZakidError(f"dense node {node.name!r} still has zero points; run the hardware passes")
        layers.append(Layer(node.name, np.asarray(a["weight"], np.int64), np.asarray(a["bias"], np.int64),
                            np.asarray(t["thresholds"], np.int64), int(t["base"]),
                            graph.tensors[node.inputs[0]].dtype, t["dtype"], _acc_range(graph, node)))
        cur = thr.outputs[0]
        i += 2
    if not layers:
        raise ZakidError("the model has no dense (MatMul/Gemm) layer for the accelerator to run")
    accel_out = cur
    post_start = i
    while i < len(nodes) and nodes[i].op in HOST_POST_OPS:
        i += 1
    if i != len(nodes):
        rest = ", ".join(f"{n.name} ({n.op})" for n in nodes[i:])
        raise ZakidError(f"these nodes cannot run on the accelerator in this position: {rest}")
    post = nodes[post_start:]
    for prev, nxt in zip(layers, layers[1:]):
        if prev.n != nxt.k:
            raise ZakidError(f"layer {nxt.name!r} reads {nxt.k} values but {prev.name!r} writes {prev.n}")
    return Program(graph, pre, layers, post, accel_in, accel_out)


def _acc_range(graph: Graph, dense: Node) -> tuple[int, int]:
    lo, hi = accumulator_bounds(graph, dense)
    return int(lo.min()), int(hi.max())


def signed_bits(lo: int, hi: int) -> int:
    """Bits of a two's complement number holding every value in [lo, hi]."""
    n = 1
    while not (-(1 << (n - 1)) <= lo and hi <= (1 << (n - 1)) - 1):
        n += 1
    return n


@dataclass
class LayerDescriptor:
    """What the controller needs to know of one layer (all plain integers)."""
    k: int
    n: int
    groups: int
    w_base: int
    b_base: int
    in_signed: int
    table_base: int
    per_channel: int
    base_code: int  # as an 8-bit two's complement pattern


@dataclass
class AccelImage:
    """Contents of every memory and the layer table: the model-specific input of :mod:`rtl_gen`."""
    lanes: int
    w_width: int
    acc_width: int                  # accumulators, biases and thresholds share this width
    act_depth: int                  # one activation bank; there are two (ping-pong)
    out_bits: int                   # bits of the threshold search (8 for int8/uint8 codes)
    weight_words: list[list[int]]   # per address: one signed weight per lane
    bias_words: list[list[int]]     # per group: one signed bias per lane
    threshold_stages: list[list[int]]  # stage s holds tables * 2**s entries, address = table * 2**s + prefix
    layers: list[LayerDescriptor] = field(default_factory=list)
    in_len: int = 0
    out_len: int = 0

    @property
    def act_addr_width(self) -> int:
        """Address bits within one activation bank (banks are a power of two deep)."""
        return max(1, (self.act_depth - 1).bit_length())

    @property
    def act_mem_depth(self) -> int:
        """Depth of the activation memory: two banks."""
        return 2 << self.act_addr_width

    @property
    def out_bank(self) -> int:
        return len(self.layers) % 2

    @property
    def weight_bits(self) -> int:
        return len(self.weight_words) * self.lanes * self.w_width

    @property
    def threshold_bits(self) -> int:
        return sum(len(s) for s in self.threshold_stages) * self.acc_width


def threshold_tree(thresholds: np.ndarray, out_bits: int, sentinel: int) -> list[list[int]]:
    """Lay one table (T ascending thresholds, T < 2**out_bits) out as binary-search stages, padding the
    missing top thresholds with ``sentinel`` (a value no accumulator reaches)."""
    full = np.full(2**out_bits - 1, sentinel, np.int64)
    full[: len(thresholds)] = thresholds
    stages = []
    for s in range(out_bits):
        step = 2 ** (out_bits - s)
        stages.append([int(full[p * step + step // 2 - 1]) for p in range(2**s)])
    return stages


def memory_image(program: Program, lanes: int) -> AccelImage:
    layers = program.layers
    lo = min(min(l.acc_range[0], int(l.thresholds.min())) for l in layers)
    hi = max(max(l.acc_range[1], int(l.thresholds.max())) for l in layers) + 1
    acc_width = signed_bits(lo, hi)
    sentinel = hi
    w_width = max(signed_bits(int(l.weight.min()), int(l.weight.max())) for l in layers)
    out_bits = 8
    for l in layers:
        if l.out_dtype not in ("int8", "uint8") or l.in_dtype not in ("int8", "uint8"):
            raise ZakidError(f"layer {l.name!r}: only int8/uint8 activations are supported on the "
                             f"accelerator (got {l.in_dtype} -> {l.out_dtype})")
    weight_words, bias_words = [], []
    stages = [[] for _ in range(out_bits)]
    descs = []
    table = 0
    for l in layers:
        groups = -(-l.n // lanes)
        w = np.zeros((groups * lanes, l.k), np.int64)
        w[: l.n] = l.weight
        b = np.zeros(groups * lanes, np.int64)
        b[: l.n] = l.bias
        descs.append(LayerDescriptor(
            k=l.k, n=l.n, groups=groups, w_base=len(weight_words), b_base=len(bias_words),
            in_signed=int(l.in_dtype == "int8"), table_base=table, per_channel=int(l.thresholds.shape[0] > 1),
            base_code=l.base & 0xFF))
        for g in range(groups):
            for k in range(l.k):
                weight_words.append([int(v) for v in w[g * lanes:(g + 1) * lanes, k]])
            bias_words.append([int(v) for v in b[g * lanes:(g + 1) * lanes]])
        for c in range(l.thresholds.shape[0]):
            for s, entries in enumerate(threshold_tree(l.thresholds[c], out_bits, sentinel)):
                stages[s].extend(entries)
        table += l.thresholds.shape[0]
    act_depth = max(max(l.k, l.n) for l in layers)
    return AccelImage(lanes, w_width, acc_width, act_depth, out_bits, weight_words, bias_words, stages,
                      descs, program.in_len, program.out_len)


#: cycles from a group's last MAC step until its first sum enters the requantizer (memory read, MAC input
#: register, product register, accumulate, copy to the drain), and the requantizer's latency beyond its stages
PIPELINE_TO_DRAIN = 5
REQUANT_EXTRA = 2


def layer_cycles(desc: LayerDescriptor, lanes: int, out_bits: int) -> int:
    """Exact cycles the controller spends on one layer (tests check it against RTL simulation): one
    cycle to open each group plus one per input; groups overlap with the previous group's drain when the
    layer has at least as many inputs as lanes, otherwise they wait for it; then the last group drains
    and the requantizer empties."""
    if desc.k >= lanes:
        issue = desc.groups * (1 + desc.k)
    else:
        issue = (1 + desc.k) + (desc.groups - 1) * (desc.k + PIPELINE_TO_DRAIN + lanes)
    last_n = desc.n - (desc.groups - 1) * lanes
    return issue + last_n + PIPELINE_TO_DRAIN + out_bits + REQUANT_EXTRA


def cycles_per_inference(image: AccelImage) -> int:
    """Cycles from ``start`` to ``done`` (the core's own counter): the start cycle plus every layer."""
    return 1 + sum(layer_cycles(d, image.lanes, image.out_bits) for d in image.layers)
