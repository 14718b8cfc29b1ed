"""Split a hardware-ready graph into host work and accelerator layers, and lay the layers out in memory.

After :func:`zakid_hw.passes.lower_for_hardware` a supported graph reads
``[host pre: quantize/reshape/affine] -> accelerator part -> [host post: reshape/dequantize/affine/softmax]``.
The accelerator part is a DAG of *layers*, each one pass of the controller's loop nest
``for output pixel: for group of lanes: for kernel row, column (, input channel): MAC`` followed by the
threshold requantizer:

=========  ============  ==================================================================================
kind       lane mode     IR nodes
=========  ============  ==================================================================================
conv       broadcast     ``conv`` (group 1, or grouped with zero weights outside each group) or ``dense``,
                         then ``threshold``; every lane is one output channel and sees the same input code
depthwise  channel       ``conv`` with one input channel per output channel, then ``threshold``; lane j works
                         on channel ``g * lanes + j`` of the group
maxpool    channel, max  ``maxpool`` (the lanes keep a running maximum; an identity table requantizes)
sumpool    channel       ``sumpool`` then ``threshold`` (average pooling)
add        channel       ``add`` then ``threshold``: two "kernel taps", one per input tensor
=========  ============  ==================================================================================

``reshape``/``transpose`` that keep the data order, and ``concat`` along channels, move no data: they are
resolved into *storages*. A storage is one activation tensor in channel-last order (pixel after pixel, each
pixel ``pitch`` bytes holding its channels); ``pitch`` is the channel count rounded up to the lane count when a
channel-mode layer reads it (so lane groups are whole memory words), the channel count otherwise. A concat
is one storage that its inputs' producers write into at their channel offsets. Storages get byte addresses
in the activation memory by first-fit over their lifetimes (:func:`allocate`), which gives ping-pong
buffers for a chain and keeps a residual's input alive until its add.

:func:`memory_image` turns the layers plus the lane count into the contents of every on-chip memory and the
layer descriptor table (:class:`AccelImage`) that :mod:`rtl_gen` builds from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from . import golden
from .errors import ZakidError
from .ir import Graph, Node, dtype_range
from .cycle_model import REQUANT_EXTRA, chain_gaps, layer_tails
from .passes import accumulator_bounds
from .threshold_tables import AffineTables, affine_tables, signed_bits, threshold_tree

HOST_PRE_OPS = ("quantize", "clip", "reshape", "affine", "transpose")
HOST_POST_OPS = ("reshape", "dequantize", "affine", "softmax", "qsoftmax", "transpose")
VIEW_OPS = ("reshape", "transpose")
ACC_OPS = ("dense", "conv", "sumpool", "add")


def storage_chw(shape) -> tuple[int, int, int]:
    """(channels, height, width) of an IR tensor of shape (1, C, H, W), (1, C, L) or (1, N)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) >= 2 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 1:
        return shape[0], 1, 1
    if len(shape) == 2:
        return shape[0], 1, shape[1]
    if len(shape) == 3:
        return shape
    raise ZakidError(f"tensors of shape {shape} cannot be stored on the accelerator (batch 1, at most "
                     "channels x height x width)")


@dataclass
class Storage:
    """One activation buffer: ``h * w`` pixels of ``pitch`` bytes, channels ``0 .. c-1`` used."""
    name: str
    c: int
    h: int
    w: int
    dtype: str
    pitch: int = 0     # bytes per pixel
    value_bytes: int = 1  # bytes per value: >1 only for raw accumulators (little-endian two's complement)
    base: int = 0
    first: int = 0   # index of the layer that writes it first (-1: the host)
    last: int = 0    # index of the layer that reads it last (len(layers): the host)

    @property
    def nbytes(self) -> int:
        return self.h * self.w * self.pitch


@dataclass
class View:
    """Where an IR tensor lives: a storage, and the channel offset of its first channel."""
    storage: Storage
    offset: int = 0


@dataclass
class Layer:
    """One pass of the controller's loop nest (see the module docstring)."""
    name: str
    kind: str                  # conv, depthwise, maxpool, sumpool, add
    inputs: list[str]          # IR tensors read (two for add)
    output: str                # IR tensor written (codes)
    weight: np.ndarray         # (C_out, K) int, K in loop order (kernel row, column, input channel)
    bias: np.ndarray           # (C_out,) int
    thresholds: np.ndarray     # (C, T) int, C = 1 or C_out
    base: int                  # output code for "no threshold reached"
    in_dtype: str
    out_dtype: str
    acc_range: tuple[int, int]
    geometry: dict             # c_in, h, w, kh, kw, sy, sx, dy, dx, pt, pl, oh, ow, pad_code

    @property
    def channel_mode(self) -> bool:
        return self.kind != "conv"

    @property
    def raw(self) -> bool:
        """The layer writes its accumulators (no requantizer): the network's last layer, for the host."""
        return self.thresholds.shape[1] == 0

    @property
    def n(self) -> int:
        """Output channels."""
        return self.weight.shape[0]

    @property
    def k(self) -> int:
        """MAC steps per output (kernel taps times input channels for a broadcast layer)."""
        return self.weight.shape[1]

    @property
    def pixels(self) -> int:
        return self.geometry["oh"] * self.geometry["ow"]

    @property
    def macs(self) -> int:
        """Multiply-accumulates of the layer (maxima for max pooling)."""
        return self.pixels * self.weight.size


@dataclass
class Program:
    graph: Graph
    host_pre: list[Node]
    layers: list[Layer]
    host_post: list[Node]
    accel_in: str             # tensor names at the accelerator's boundary
    accel_out: str
    views: dict = field(default_factory=dict)       # IR tensor -> View
    storages: list = field(default_factory=list)    # every Storage, allocated
    act_bytes: int = 0        # bytes of activation memory the storages need
    pixels: int = 1           # output pixels per weight word (2: pairable layers run two pixels at once)
    batch: int = 1            # inferences per run (see make_program)

    @property
    def in_storage(self) -> Storage:
        return self.views[self.accel_in].storage

    @property
    def out_storage(self) -> Storage:
        return self.views[self.accel_out].storage

    @property
    def out_code_dtype(self) -> str:
        """How the host reads the output bytes: the output's dtype, or raw bytes ("uint8") for accumulators."""
        return "uint8" if self.out_storage.value_bytes > 1 or self.out_storage.dtype == "int32" else self.out_storage.dtype

    @property
    def in_len(self) -> int:
        return self.in_storage.nbytes

    @property
    def out_len(self) -> int:
        return self.out_storage.nbytes

    @property
    def macs(self) -> int:
        return sum(l.macs for l in self.layers)

    @property
    def w_width(self) -> int:
        """Bits of the widest weight of any layer (two's complement)."""
        return max(signed_bits(int(l.weight.min()), int(l.weight.max())) for l in self.layers)

    def to_codes(self, xs) -> np.ndarray:
        """Host side before the accelerator: ``batch`` model inputs (first axis indexes inferences) -> the
        input storage's bytes (inference i in pixel i of a batch)."""
        xs = np.asarray(xs)
        if len(xs) != self.batch:
            raise ValueError(f"a run takes {self.batch} inputs, got {len(xs)}")
        x_in = self.graph.inputs[0]
        vals = [np.asarray(golden.run_nodes(self.host_pre, {x_in: x.reshape(self.graph.tensors[x_in].shape)})
                           [self.accel_in]).reshape(-1) for x in xs]
        return to_storage(np.stack(vals, axis=-1), self.in_storage)

    def _split(self, codes: np.ndarray, tensor: str) -> list[np.ndarray]:
        """Storage bytes -> the tensor of each inference of the run."""
        vals = from_storage(codes, self.views[tensor].storage).reshape(-1, self.batch)
        return [vals[:, i].reshape(self.graph.tensors[tensor].shape) for i in range(self.batch)]

    def accel_golden(self, codes: np.ndarray) -> np.ndarray:
        """What the accelerator must compute: input storage bytes -> output storage bytes (the golden model,
        once per inference of the run)."""
        accel = [n for n in self.graph.nodes if n not in self.host_pre and n not in self.host_post]
        outs = [np.asarray(golden.run_nodes(accel, {self.accel_in: x})[self.accel_out]).reshape(-1)
                for x in self._split(codes, self.accel_in)]
        return to_storage(np.stack(outs, axis=-1), self.out_storage)

    def from_codes(self, codes: np.ndarray) -> np.ndarray:
        """Host side after the accelerator: output storage bytes -> the model's outputs, one per inference
        of the run (first axis)."""
        return np.stack([golden.run_nodes(self.host_post, {self.accel_out: y})[self.graph.outputs[0]]
                         for y in self._split(codes, self.accel_out)])


def to_storage(x: np.ndarray, s: Storage) -> np.ndarray:
    """A tensor (any shape with C*H*W elements in C, H, W order) -> the storage's bytes (unused channels 0;
    values of several bytes as unsigned bytes, little-endian)."""
    vals = np.asarray(x, np.int64).reshape(s.c, s.h * s.w).T
    if s.value_bytes > 1:
        vals = np.stack([(vals >> (8 * b)) & 0xFF for b in range(s.value_bytes)], axis=-1).reshape(s.h * s.w, -1)
    out = np.zeros((s.h * s.w, s.pitch), np.int64)
    out[:, : vals.shape[1]] = vals
    return out.reshape(-1)


def from_storage(codes: np.ndarray, s: Storage) -> np.ndarray:
    """The storage's bytes -> the tensor as (C, H, W)."""
    flat = np.asarray(codes, np.int64).reshape(s.h * s.w, s.pitch)[:, : s.c * s.value_bytes]
    if s.value_bytes > 1:
        parts = (flat.reshape(s.h * s.w, s.c, s.value_bytes) & 0xFF) << (8 * np.arange(s.value_bytes))
        flat = parts.sum(axis=-1)
        top = 1 << (8 * s.value_bytes - 1)
        flat = np.where(flat >= top, flat - 2 * top, flat)
    return flat.T.reshape(s.c, s.h, s.w)


# --------------------------------------------------------------------------------------------------------
# partition


#: ops a batched program (``make_program(batch=N)``) may run on the accelerator: layers of vectors
BATCH_OPS = ("dense", "threshold", "add", "concat") + VIEW_OPS


def make_program(graph: Graph, lanes: int = 8, pixels: int = 1, batch: int = 1) -> Program:
    """Partition a lowered graph (see module docstring) for ``lanes`` lanes and ``pixels`` output pixels
    per weight word (see :class:`rtl_gen.config.AccelConfig`); a ZakidError names any node that does not
    fit.

    ``batch`` > 1 runs that many inferences of a model of dense layers at once: every activation vector
    becomes a row of ``batch`` pixels (inference i in pixel i) and every dense layer a pointwise
    convolution over them. A layer's pixels follow each other with no wait (the drain empties one while
    the next is summed), and a layer starts on its first pixels while the layer before still drains its
    last (:func:`zakid_hw.cycle_model.can_chain`): the waits through the pipeline come once per run
    instead of once per inference. The host steps run per inference (:meth:`Program.to_codes`)."""
    if not isinstance(batch, int) or batch < 1:
        raise ZakidError(f"--batch must be a positive number of inferences, got {batch}")
    nodes = list(graph.nodes)
    i = 0
    while i < len(nodes) and nodes[i].op in HOST_PRE_OPS:
        i += 1
    pre = nodes[:i]
    j = len(nodes)
    while j > i and nodes[j - 1].op in HOST_POST_OPS:
        j -= 1
    post = nodes[j:]
    middle = nodes[i:j]
    accel_in = pre[-1].outputs[0] if pre else graph.inputs[0]
    accel_out = post[0].inputs[0] if post else graph.outputs[0]
    if not any(n.op in ACC_OPS + ("maxpool",) for n in middle):
        raise ZakidError("the model has no layer for the accelerator to run (no MatMul/Gemm/Conv/pooling)")
    for n in middle:
        if n.op in ("quantize", "dequantize", "affine", "softmax", "requantize", "relu", "clip"):
            raise ZakidError(f"node {n.name!r} ({n.op}) cannot run on the accelerator between its layers")

    if batch > 1:
        _check_batchable(graph, middle, batch)

    views: dict[str, View] = {}
    storages: list[Storage] = []

    def new_storage(tensor: str) -> View:
        t = graph.tensors[tensor]
        c, h, w = storage_chw(t.shape)
        s = Storage(tensor, c, h, w * batch, t.dtype)
        storages.append(s)
        return View(s)

    views[accel_in] = new_storage(accel_in)
    # concats first: their inputs become slices of the concat's storage
    for n in reversed(middle):
        if n.op == "concat":
            _plan_concat(graph, n, views, new_storage)

    layers: list[Layer] = []
    consumed: set[str] = set()  # threshold nodes that belong to the layer before them
    for n in middle:
        if n.name in consumed:
            continue
        if n.op in VIEW_OPS:
            views[n.outputs[0]] = views[n.inputs[0]] if batch > 1 else _view_of(graph, n, views)
            continue
        if n.op == "concat":
            continue
        out = n.outputs[0]
        thr = None
        if n.op in ACC_OPS:
            users = graph.consumers(out)
            if out == accel_out and n.op in ("dense", "conv"):
                pass  # the last layer may hand its raw accumulators to the host
            elif len(users) != 1 or users[0].op != "threshold" or out in graph.outputs:
                raise ZakidError(f"{n.op} node {n.name!r} is not followed by a requantization; the accelerator "
                                 "needs quantized (int8/uint8) outputs from every layer but the last")
            else:
                thr = users[0]
                consumed.add(thr.name)
                out = thr.outputs[0]
        if out not in views:
            views[out] = new_storage(out)
        layers.append(_make_layer(graph, n, thr, out, views, batch))
    if accel_out not in views:
        raise ZakidError(f"the accelerator's result {accel_out!r} is not produced by any of its layers")

    # lifetimes, pitches and addresses
    for layer in layers:
        for t in layer.inputs:
            if layer.channel_mode and views[t].offset % lanes:
                raise ZakidError(f"layer {layer.name!r} reads channels of {t!r} at offset {views[t].offset} of a "
                                 f"concatenation, not a multiple of the {lanes} lanes")
    for s in storages:
        writers = [i for i, l in enumerate(layers) if views[l.output].storage is s]
        readers = [i for i, l in enumerate(layers) if any(views[t].storage is s for t in l.inputs)]
        s.first = min(writers, default=-1)
        s.last = max(readers, default=s.first)
    views[accel_in].storage.first = -1
    views[accel_out].storage.last = len(layers)
    for s in storages:
        chan = any(l.channel_mode and views[t].storage is s for l in layers for t in l.inputs)
        s.pitch = -(-s.c // lanes) * lanes if chan else s.c * s.value_bytes
    for layer in layers:
        for t in layer.inputs[1:]:
            if views[t].storage.pitch != views[layer.inputs[0]].storage.pitch:
                raise ZakidError(f"add node {layer.name!r}: its inputs are stored with different channel layouts")
    act_bytes = allocate(storages, lanes, overlaps(layers, views, lanes, pixels))
    return Program(graph, pre, layers, post, accel_in, accel_out, views, storages, act_bytes, pixels, batch)


def _check_batchable(graph: Graph, middle: list[Node], batch: int) -> None:
    """A batch of inferences runs only on layers of vectors: every accelerator node a dense layer, its
    requantizer, an add, a channel concat or a view, every tensor between them (1, C) or (C,)."""
    for n in middle:
        if n.op not in BATCH_OPS:
            raise ZakidError(f"--batch {batch}: node {n.name!r} is a {n.op} layer; batches of inferences run on "
                             "models whose accelerator layers are all dense (MatMul/Gemm, with adds and concats "
                             "between them); leave out --batch for this model")
        for t in [*n.inputs, *n.outputs]:
            c, h, w = storage_chw(graph.tensors[t].shape)
            if (h, w) != (1, 1):
                raise ZakidError(f"--batch {batch}: tensor {t!r} of node {n.name!r} is a {c}x{h}x{w} feature map; "
                                 "batches of inferences run on models of dense layers over vectors only")


def _plan_concat(graph, n: Node, views, new_storage):
    if n.outputs[0] not in views:
        views[n.outputs[0]] = new_storage(n.outputs[0])
    dst = views[n.outputs[0]]
    t = graph.tensors[n.outputs[0]]
    if n.attrs["axis"] not in (1, 1 - len(t.shape)):
        raise ZakidError(f"concat node {n.name!r} joins along axis {n.attrs['axis']}; the accelerator joins "
                         "along channels (axis 1) only")
    off = dst.offset
    for src in n.inputs:
        c = storage_chw(graph.tensors[src].shape)[0]
        if src in views or graph.producer(src) is None or graph.producer(src).op in VIEW_OPS + ("concat",):
            raise ZakidError(f"concat node {n.name!r}: input {src!r} must come straight from a layer that is "
                             "used only by this concat")
        if len(graph.consumers(src)) != 1:
            raise ZakidError(f"concat node {n.name!r}: input {src!r} is also used elsewhere, which the "
                             "accelerator cannot do without copying it")
        views[src] = View(dst.storage, off)
        off += c


def _view_of(graph, n: Node, views) -> View:
    src = views[n.inputs[0]]
    s = src.storage
    out_shape = graph.tensors[n.outputs[0]].shape
    if n.op == "transpose":
        shape = graph.tensors[n.inputs[0]].shape
        moved = [shape[p] for p in n.attrs["perm"] if shape[p] != 1]
        if moved != [d for d in shape if d != 1]:
            raise ZakidError(f"transpose node {n.name!r} reorders data ({list(shape)} -> {list(out_shape)}); only "
                             "transposes that move axes of size 1 run on the accelerator")
    c, h, w = storage_chw(out_shape)
    if (c, h, w) == (s.c, s.h, s.w):
        return src
    if h == w == 1 and c == s.c * s.h * s.w:
        # flatten of a feature map: a dense layer reading it becomes a convolution over the whole map
        return View(s, src.offset)
    raise ZakidError(f"{n.op} node {n.name!r} changes the data layout ({s.c}x{s.h}x{s.w} -> {c}x{h}x{w}); the "
                     "accelerator supports only reshapes that flatten a feature map or change unit axes")


def _make_layer(graph: Graph, n: Node, thr: Node | None, out: str, views, batch: int = 1) -> Layer:
    a = n.attrs
    src = views[n.inputs[0]].storage
    in_dtype = graph.tensors[n.inputs[0]].dtype
    out_dtype = graph.tensors[out].dtype
    raw = thr is None and n.op in ("dense", "conv")
    for name, dt in (("input", in_dtype), ("output", "int8" if raw else out_dtype)):
        if dt not in ("int8", "uint8"):
            raise ZakidError(f"node {n.name!r}: only int8/uint8 activations run on the accelerator, its {name} "
                             f"is {dt}")
    geo = dict(c_in=src.c, h=src.h, w=src.w, kh=1, kw=1, sy=1, sx=1, dy=1, dx=1, pt=0, pl=0, pb=0, pr=0,
               oh=1, ow=1, pad_code=0, ceil_mode=0)
    inputs = [n.inputs[0]]
    if n.op in ("conv", "maxpool", "sumpool"):
        kh, kw = (a["weight"].shape[2:] if n.op == "conv" else a["kernel"])
        sy, sx = a["strides"]
        dy, dx = a.get("dilations", (1, 1))
        pt, pl, pb, pr = a["pads"]
        cm = int(a.get("ceil_mode", 0))
        geo.update(kh=int(kh), kw=int(kw), sy=int(sy), sx=int(sx), dy=int(dy), dx=int(dx), pt=int(pt), pl=int(pl),
                   pb=int(pb), pr=int(pr), ceil_mode=cm,
                   oh=golden.conv_out_size(src.h, int(kh), int(sy), int(pt), int(pb), int(dy), cm),
                   ow=golden.conv_out_size(src.w, int(kw), int(sx), int(pl), int(pr), int(dx), cm))
    if n.op == "dense" and batch > 1:
        # a batch of vectors (one inference per pixel): a pointwise convolution over the batch's pixels
        w = np.asarray(a["weight"], np.int64)
        geo.update(ow=src.w)
        kind, bias = "conv", np.asarray(a["bias"], np.int64)
    elif n.op == "dense":
        w = np.asarray(a["weight"], np.int64)
        if w.shape[1] != src.c * src.h * src.w:
            raise ZakidError(f"dense node {n.name!r} reads {w.shape[1]} values from a {src.c}x{src.h}x{src.w} tensor")
        # ONNX flatten order is (C, H, W); a dense layer on a feature map is a convolution over all of it
        w = w.reshape(-1, src.c, src.h, src.w).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
        geo.update(kh=src.h, kw=src.w)
        kind, bias = "conv", np.asarray(a["bias"], np.int64)
    elif n.op == "conv":
        w4 = np.asarray(a["weight"], np.int64)
        m, cg, kh, kw = w4.shape
        group = int(a["group"])
        geo["pad_code"] = int(a.get("pad_code", a["x_zp"]) if a.get("pad_code") is not None else a["x_zp"])
        if group > 1 and cg == 1 and m == src.c:
            kind, w = "depthwise", w4.reshape(m, kh * kw)
        else:
            kind = "conv"
            full = np.zeros((m, src.c, kh, kw), np.int64)  # grouped: zero weights outside each group
            mg = m // group
            for gi in range(group):
                full[gi * mg:(gi + 1) * mg, gi * cg:(gi + 1) * cg] = w4[gi * mg:(gi + 1) * mg]
            w = full.transpose(0, 2, 3, 1).reshape(m, -1)
        bias = np.asarray(a["bias"], np.int64)
        if np.any(np.asarray(a["w_zp"]) != 0) or a["x_zp"] != 0:
            raise ZakidError(f"conv node {n.name!r} still has zero points; run the hardware passes")
    elif n.op == "maxpool":
        kind = "maxpool"
        w = np.ones((src.c, geo["kh"] * geo["kw"]), np.int64)
        bias = np.zeros(src.c, np.int64)
        geo["pad_code"] = dtype_range(in_dtype)[0]
    elif n.op == "sumpool":
        kind = "sumpool"
        kk = geo["kh"] * geo["kw"]
        w = np.ones((src.c, kk), np.int64)
        bias = np.full(src.c, -int(a["x_zp"]) * kk, np.int64)
        geo["pad_code"] = int(a["x_zp"])
    elif n.op == "add":
        kind = "add"
        inputs = list(n.inputs)
        if graph.tensors[n.inputs[1]].dtype != in_dtype or tuple(graph.tensors[n.inputs[1]].shape) != tuple(
                graph.tensors[n.inputs[0]].shape):
            raise ZakidError(f"add node {n.name!r}: both inputs must have the same shape and dtype")
        w = np.tile(np.array([[a["a_mult"], a["b_mult"]]], np.int64), (src.c, 1))
        bias = np.full(src.c, -(int(a["a_zp"]) * int(a["a_mult"]) + int(a["b_zp"]) * int(a["b_mult"])), np.int64)
        geo.update(oh=src.h, ow=src.w, kw=2)
    else:
        raise ZakidError(f"node {n.name!r} ({n.op}) cannot run on the accelerator")
    if raw:  # the accumulators themselves go to the host, in as few bytes as hold them
        lo, hi = accumulator_bounds(graph, n)
        acc_range = (int(lo.min()), int(hi.max()))
        views[out].storage.value_bytes = -(-signed_bits(*acc_range) // 8)
        thresholds, base = np.zeros((1, 0), np.int64), 0
    elif thr is None:  # max pooling: the requantizer passes codes through
        lo, hi = dtype_range(out_dtype)
        thresholds, base = np.arange(lo + 1, hi + 1, dtype=np.int64)[None, :], lo
        acc_range = (lo, hi)
    else:
        t = thr.attrs
        thresholds, base = np.asarray(t["thresholds"], np.int64), int(t["base"])
        lo, hi = accumulator_bounds(graph, n)
        acc_range = (int(lo.min()), int(hi.max()))
    return Layer(n.name, kind, inputs, out, w, bias, thresholds, base, in_dtype, out_dtype, acc_range, geo)


def pairable(layer: Layer, src: View, dst: View, lanes: int, pixels: int) -> bool:
    """Whether a layer runs two output pixels at once on a design with ``pixels`` output pixels per weight
    word (only ``pixels=2`` has the second bank of lanes that one weight word feeds): a broadcast
    convolution with at least ``2 * lanes`` steps per group (:func:`pair_steps`, so the drain, two pixels'
    outputs, never holds a group up) whose pixels pair up in one of three ways (:func:`pair_form`):

    - "line": a pointwise layer (1x1 kernel, stride 1, no padding), so output pixel p reads input pixel p
      and the pixels pair up in row-major order across rows (an odd count leaves the last pair one pixel);
    - "row": any kernel, padding and dilation with column stride 1 and an even number of output columns:
      pixel B is A's right neighbour, its window A's shifted one input column (B's own padding check);
    - "shift": the same with one input channel and column dilation 1: B's tap at kernel column kx is A's at
      kx + 1, so B takes the code A takes a step later, and A's loop takes one more column (with zero
      weights) for B's last tap; or "peek" (:func:`shift_peeks`): B takes its last tap from A's input word;
    - "col": one input channel and row dilation 1, when the forms above do not apply (column stride 2, an
      odd number of output columns; :func:`col_pairs`): pixel B is the one above A, its window A's
      ``sy`` input rows up, so B takes the code A took ``sy * kw`` steps before (a delay line), and A's
      loop starts ``sy`` kernel rows higher (zero weights). The pairs walk rows two at a time; with an odd
      row count the first row of pairs has no B (the row above the output).

    "line" and "row" need whole memory words per input pixel (the second pixel's word is read in the cycle
    after the first's and both are held while their ``lanes`` bytes are used)."""
    return paired_form(layer, src, lanes, pixels) is not None


def paired_form(layer: Layer, src: View, lanes: int, pixels: int) -> str | None:
    """The form a layer's pixels pair up in (:func:`pair_form`) if it runs two output pixels at once
    (:func:`pairable`), else None."""
    form = pair_form(layer, src, lanes)
    if not (pixels == 2 and layer.kind == "conv" and not layer.raw and lanes >= 2 and layer.pixels >= 2
            and form is not None and pair_steps(layer, form) >= 2 * lanes):
        return None
    if form in ("shift", "peek", "col") or (layer.geometry["c_in"] % lanes == 0 and src.storage.pitch % lanes == 0
                                     and src.offset % lanes == 0):
        return form
    return None


def pair_form(layer: Layer, src: View | None = None, lanes: int = 0) -> str | None:
    """How a convolution's output pixels pair up (see :func:`pairable`): "line", "row", "shift", "peek"
    (with its input ``src`` in a memory of ``lanes``-byte words) or None."""
    g = layer.geometry
    if (g["kh"] == g["kw"] == g["sy"] == g["sx"] == 1 and g["pt"] == g["pl"] == 0
            and (g["oh"], g["ow"]) == (g["h"], g["w"])):
        return "line"
    if g["sx"] != 1 or g["ow"] % 2 or (g["c_in"] == 1 and g["dx"] != 1):
        return "col" if col_pairs(layer) else None
    if g["c_in"] == 1:
        return "peek" if src is not None and shift_peeks(layer, src, lanes) else "shift"
    return "row"


#: the most steps a "col" pair's bank B may lag bank A's codes (kernel rows skipped x kernel columns): the
#: length of its delay line
MAX_COL_DELAY = 16


def col_pairs(layer: Layer) -> bool:
    """Whether a one-input-channel convolution can pair each output pixel with the one above it ("col",
    see :func:`pairable`): row dilation 1, a delay of at most MAX_COL_DELAY steps, and fewer steps than
    one pixel at a time (an odd row count leaves the first row of pairs one pixel each)."""
    g = layer.geometry
    units = (g["oh"] + g["oh"] % 2) // 2
    return (g["c_in"] == 1 and g["dy"] == 1 and g["oh"] >= 2 and g["sy"] * g["kw"] <= MAX_COL_DELAY
            and units * (g["kh"] + g["sy"]) < g["oh"] * g["kh"])


def shift_peeks(layer: Layer, src: View, lanes: int) -> bool:
    """Whether a "shift" pair's bank B can take its tap at the last kernel column (A's one input column
    on, which A never reads) from the input word A reads for its own last column: the input's pixels are
    single bytes, the kernel is at least two columns wide (the word is held for bank B until the next
    kernel row's last column), and for every pair and kernel row where B's tap lies inside the input,
    A's byte and the next lie in one word. Then A's loop walks the kernel's own columns."""
    g = layer.geometry
    if src.storage.pitch != 1 or g["kw"] < 2 or lanes < 2:
        return False
    base = src.storage.base + src.offset
    iy = (np.arange(g["oh"])[:, None] * g["sy"] - g["pt"] + np.arange(g["kh"])[None, :] * g["dy"]).ravel()
    iy = iy[(iy >= 0) & (iy < g["h"])]
    ix_b = np.arange(0, g["ow"], 2) - g["pl"] + g["kw"]  # B's last tap (column stride and dilation 1)
    ix_b = ix_b[(ix_b >= 0) & (ix_b < g["w"])]
    a = base + iy[:, None] * g["w"] + ix_b[None, :] - 1  # A's byte (its tap may lie left of the input)
    return bool(np.all(a // lanes == (a + 1) // lanes))


def kernel_columns(layer: Layer, form: str | None) -> int:
    """Kernel columns the controller's loop walks: the layer's own, one more (with zero weights) for a
    "shift" pair."""
    return layer.geometry["kw"] + (form == "shift")


def kernel_rows(layer: Layer, form: str | None) -> int:
    """Kernel rows the controller's loop walks: the layer's own, and for a "col" pair as many more (with
    zero weights, first) as the rows between the two pixels' windows."""
    g = layer.geometry
    return g["kh"] + (g["sy"] if form == "col" else 0)


def pair_steps(layer: Layer, form: str | None) -> int:
    """MAC steps per lane group (see :func:`kernel_columns` and :func:`kernel_rows`)."""
    g = layer.geometry
    return layer.k // (g["kh"] * g["kw"]) * kernel_rows(layer, form) * kernel_columns(layer, form)


def peeks(descs) -> bool:
    """Whether some layer is a "peek" pair (:func:`shift_peeks`), so the controller and bank B carry its
    last-column logic."""
    return any(d.pair_shift == PEEK for d in descs)


def col_delays(descs) -> list[int]:
    """Each layer's "col" delay (steps bank B lags bank A's codes), 0 for the others."""
    return [d.pair_delay if d.pair_shift == COL else 0 for d in descs]


def pads_pixel_b(descs) -> bool:
    """Whether bank B needs its own padding check: some "row" or "peek" pair layer pads (a "line" pair
    never pads, a "shift" pair takes bank A's codes, padding included)."""
    return any(d.pair and d.check and d.pair_shift in (0, PEEK) for d in descs)


def issue_units(layer: Layer, form: str | None) -> list[list[int]]:
    """The output pixels (row-major indices) each step of the pixel loop works on, in issue order: one
    pixel, or a pair (see :func:`pairable`): 2p and 2p + 1, or for "col" a pixel and the one above it, two
    rows at a time (the first row of pairs alone when the row count is odd)."""
    g = layer.geometry
    n_px = g["oh"] * g["ow"]
    if form is None:
        return [[p] for p in range(n_px)]
    if form != "col":
        return [[p, p + 1][: n_px - p] for p in range(0, n_px, 2)]
    odd = g["oh"] % 2
    return [[a * g["ow"] + ox] + ([(a - 1) * g["ow"] + ox] if a else [])
            for a in range(1 - odd, g["oh"], 2) for ox in range(g["ow"])]


def in_place_offset(layer: Layer, src: Storage, dst: Storage, lanes: int, form: str | None = None) -> int:
    """How far below its input a layer's output may start (bytes, a multiple of ``lanes``; negative:
    above) so that no output is written over an input byte that a later lane group still reads. Outputs
    are written after their own group's reads, so a group may overwrite what only it and earlier groups
    read; that holds whatever the pipeline's timing. A pair layer (``form``, see :func:`pairable`) works
    on the pixels of :func:`issue_units` at once."""
    g = layer.geometry
    groups = -(-layer.n // lanes)
    oy, ky = np.arange(g["oh"])[:, None], np.arange(g["kh"])[None, :]
    ox, kx = np.arange(g["ow"])[:, None], np.arange(g["kw"])[None, :]
    iy = oy * g["sy"] - g["pt"] + ky * g["dy"]           # (oh, kh)
    ix = ox * g["sx"] - g["pl"] + kx * g["dx"]           # (ow, kw)
    big = 1 << 40
    # the first input pixel each output pixel reads: smallest valid row, then smallest valid column
    row = np.where((iy >= 0) & (iy < g["h"]), iy, big).min(axis=1)
    col = np.where((ix >= 0) & (ix < g["w"]), ix, big).min(axis=1)
    first_px = np.where((row[:, None] < big) & (col[None, :] < big), row[:, None] * g["w"] + col[None, :], big)
    lane_off = np.arange(groups) * lanes
    read_off = lane_off if layer.channel_mode else np.zeros_like(lane_off)  # broadcast: every channel
    units = issue_units(layer, form)
    first_px = first_px.ravel()
    last_px = np.array([max(u) for u in units])
    reads = np.array([first_px[u].min() for u in units]).reshape(-1, 1) * src.pitch + read_off[None, :]
    n_g = np.minimum(layer.n - lane_off, lanes)
    writes_end = (last_px[:, None] * dst.pitch + lane_off[None, :] + n_g[None, :]).ravel()
    later = np.minimum.accumulate(reads.ravel()[::-1])[::-1]  # smallest address read by group j or later
    need = int(np.max(writes_end[:-1] - later[1:], initial=-big))
    return -(-need // lanes) * lanes


def overlaps(layers: list[Layer], views: dict, lanes: int, pixels: int = 1) -> list[tuple]:
    """(input, output, offset) for every layer whose output may share memory with its dying input (see
    :func:`in_place_offset`): a single-input layer that is its input's last reader and its output's only
    writer, reading and writing whole storages."""
    pairs = []
    for i, l in enumerate(layers):
        src, dst = views[l.inputs[0]], views[l.output]
        if len(l.inputs) != 1 or l.raw or src.offset or dst.offset or src.storage is dst.storage:
            continue
        s, d = src.storage, dst.storage
        writers = [j for j, x in enumerate(layers) if views[x.output].storage is d]
        if s.last != i or writers != [i] or d.c != l.n:
            continue
        pairs.append((s, d, in_place_offset(l, s, d, lanes, paired_form(l, src, lanes, pixels))))
    return pairs


def _first_fit(items: list, align: int) -> int:
    """Give every item (``nbytes``, ``first``, ``last``, ``base``) a base address (a multiple of ``align``) so
    that no two items alive at the same time overlap: largest first, each at the lowest free address.
    Returns the bytes needed."""
    placed: list = []
    top = 0
    for s in sorted(items, key=lambda s: (-s.nbytes, s.first)):
        busy = sorted((p.base, p.base + p.nbytes) for p in placed if p.first <= s.last and s.first <= p.last)
        addr = 0
        for lo, hi in busy:
            if addr + s.nbytes <= lo:
                break
            addr = max(addr, -(-hi // align) * align)
        s.base = addr
        placed.append(s)
        top = max(top, addr + s.nbytes)
    return top


@dataclass
class _Block:
    """Storages chained by in-place layers, at fixed offsets from each other."""
    members: list
    nbytes: int
    first: int
    last: int
    base: int = 0


def allocate(storages: list[Storage], align: int, pairs: list[tuple] = ()) -> int:
    """Give every storage a base address (a multiple of ``align``): storages alive at the same time do not
    overlap, except an in-place layer's output, which may start ``offset`` bytes below its dying input
    (``pairs``, see :func:`overlaps`). Takes the in-place layout only where it needs less memory than
    separate buffers. Returns the bytes needed."""
    plain = _first_fit(storages, align)
    if not pairs:
        return plain
    plain_bases = [s.base for s in storages]
    # chains: each storage is the output of at most one pair and the input of at most one
    nxt = {id(a): (b, off) for a, b, off in pairs}
    is_out = {id(b) for _, b, _ in pairs}
    blocks = []
    for s in storages:
        if id(s) in is_out:
            continue
        members, pos, cur = [(s, 0)], 0, s
        while id(cur) in nxt:
            cur, off = nxt[id(cur)]
            pos -= off
            members.append((cur, pos))
        low = min(p for _, p in members)
        members = [(m, p - low) for m, p in members]
        blocks.append(_Block(members, max(p + m.nbytes for m, p in members), min(m.first for m, _ in members),
                             max(m.last for m, _ in members)))
    top = _first_fit(blocks, align)
    if top >= plain:
        for s, b in zip(storages, plain_bases):
            s.base = b
        return plain
    for b in blocks:
        for m, p in b.members:
            m.base = b.base + p
    return top


# --------------------------------------------------------------------------------------------------------
# memory image


#: LayerDescriptor.pair_shift of the pair forms that take bank A's codes (see pairable)
SHIFT, PEEK, COL = 1, 2, 4


@dataclass
class LayerDescriptor:
    """What the controller needs to know of one layer (all plain integers; addresses in bytes)."""
    chan: int          # 1: channel mode (lane j reads channel g*lanes + j), 0: broadcast
    is_max: int        # 1: lanes keep a running maximum instead of a sum
    in_signed: int
    ci: int            # input channels per kernel tap (broadcast) or 1
    kw: int
    kh: int
    groups: int        # lane groups per output pixel
    ow: int
    oh: int
    k: int             # MAC steps per group: kh * kw * ci
    start: int         # byte address of the window's top-left input for output pixel (0, 0) (may be < 0)
    inc_kx: int        # address step per kernel column (for add: from the first input to the second)
    inc_ky: int        # per kernel row
    inc_ox: int        # per output column
    inc_oy: int        # per output row
    check: int         # 1: some window reaches outside the input (padding)
    iy0: int           # input row of the window's top for output row 0 (= -pad top)
    ix0: int
    sy: int
    sx: int
    dy: int
    dx: int
    h: int             # input rows and columns (the padding check)
    w: int
    pad_code: int      # as an 8-bit pattern
    out_base: int
    out_pitch: int
    n_last: int        # lanes of the last group holding real outputs
    w_base: int
    b_base: int        # bias memory address of the layer's first output channel
    table_base: int
    per_channel: int
    base_code: int     # as an 8-bit two's complement pattern
    raw_bytes: int = 0  # >0: write each accumulator as this many bytes instead of requantizing it
    out_group_step: int = 0  # bytes between the outputs of consecutive lane groups
    chain_gap: int = 0  # >0: start this many cycles after the previous layer's last MAC step, while that
                        # layer still drains (see cycle_model.chain_gaps); 0: once the previous layer is all
                        # written
    tail: int = 0       # cycles from this layer's last MAC step to the next layer's first or to done
                        # (cycle_model.layer_tails)
    pair: int = 0       # 1: each group works on two output pixels, A (the loop's pixel) and B (the next one);
                        # the loop walks pairs (see pairable)
    b_last: int = 0     # pair layers: 1 if the last pair's B pixel exists (an even pixel count)
    pair_in: int = 0    # pair layers: bytes from pixel A's input to pixel B's
    pair_out: int = 0   # pair layers: bytes from pixel A's output to pixel B's
    pair_shift: int = 0  # "shift" pair layers (see pairable): bank B takes bank A's code of the next step;
                         # SHIFT: A walks one more kernel column, PEEK: B takes its last column's code
                         # from A's input word; COL: B takes A's code pair_delay steps before
    pair_delay: int = 0  # COL pair layers: steps between A's code and B's (sy * kw)
    b_first: int = 1    # pair layers: 0 if the first row of pairs has no B pixel (COL, an odd row count)
    out_row: int = 0    # bytes the output address skips at each new row of pairs (COL: one output row)

    @property
    def step_pixels(self) -> int:
        """Output pixels each MAC step works on: 2 for a pair layer (both banks), else 1."""
        return 2 if self.pair else 1

    def drain_cycles(self, n: int, has_b: bool = True) -> int:
        """Cycles the drain takes for a group with ``n`` real lanes (both pixels' outputs for a pair)."""
        return n * max(1, self.raw_bytes) * (2 if self.pair and has_b else 1)


@dataclass
class AccelImage:
    """Contents of every memory and the layer table: the model-specific input of :mod:`rtl_gen`."""
    lanes: int
    w_width: int
    acc_width: int                  # biased sums and thresholds fit this width; sums and biases wrap around in it
    act_bytes: int                  # activation memory in bytes (a multiple of lanes)
    out_bits: int                   # bits of the threshold search (8 for int8/uint8 codes)
    weight_words: list[list[int]]   # per address: one signed weight per lane
    bias_values: list[int]          # one signed bias per output channel (layer by layer, padded to whole groups),
                                    # with the centring correction (see centering_correction)
    threshold_stages: list[list[int]]  # stage s holds tables * 2**s entries, address = table * 2**s + prefix
    layers: list[LayerDescriptor] = field(default_factory=list)
    in_len: int = 0
    out_len: int = 0
    in_base: int = 0
    out_base: int = 0
    b_width: int = 0                # bias memory width (biases are sign-extended to acc_width)
    tables: list[list[int]] = field(default_factory=list)  # every requantizer table, in table order
    requantizer: str = "tables"     # how the tables are stored: "tables" (threshold_stages) or "affine"

    @cached_property
    def affine(self) -> AffineTables:
        """The tables in affine form (see :mod:`zakid_hw.threshold_tables`)."""
        lim = 1 << (self.acc_width - 1)
        return affine_tables([np.asarray(t, np.int64) for t in self.tables], self.out_bits, -lim, lim - 1)

    @property
    def requant_latency(self) -> int:
        """Cycles from the bias stage into the requantizer until its code is written."""
        return self.out_bits + REQUANT_EXTRA + (self.requantizer == "affine")

    @property
    def act_words(self) -> int:
        return max(1, self.act_bytes // self.lanes)

    @property
    def io_addr_width(self) -> int:
        """Bits of the host's input/output code index."""
        return max(1, (max(self.in_len, self.out_len) - 1).bit_length())

    @property
    def weight_word_bits(self) -> int:
        """Bits of one weight memory word: one weight per lane."""
        return self.lanes * self.w_width


#: the MAC array multiplies int8 codes: a uint8 code x enters as x - CENTER (its top bit flipped)
CENTER = 128


def centering_correction(layer: Layer) -> np.ndarray:
    """Per output channel, what the bias gains so that the MAC array may multiply ``x - CENTER`` instead
    of a uint8 input code ``x``: ``CENTER * sum(w)`` over the K steps of a sum (every step multiplies a code,
    the padding code included), ``CENTER * w`` for a max pooling (its weights are all 1). 0 for int8 inputs."""
    if layer.in_dtype != "uint8":
        return np.zeros(layer.n, np.int64)
    if layer.kind == "maxpool":
        return CENTER * layer.weight[:, 0]
    return CENTER * layer.weight.sum(axis=1)


def wrap(v, width: int):
    """``v`` as a ``width``-bit two's complement value (the sums wrap around at that width)."""
    half = 1 << (width - 1)
    return (np.asarray(v, np.int64) + half) % (2 * half) - half


def memory_image(program: Program, lanes: int, requantizer: str = "tables") -> AccelImage:
    """Every memory's contents and the layer table; ``requantizer`` picks the tables' form ("tables" or
    "affine", see :mod:`zakid_hw.threshold_tables`)."""
    if lanes < 1 or lanes & (lanes - 1):
        raise ZakidError(f"the lane count must be a power of two, got {lanes}")
    if requantizer not in ("tables", "affine"):
        raise ZakidError(f"the requantizer form must be tables or affine, got {requantizer!r}")
    layers = program.layers
    # The MAC array sums without the bias; the drain adds it (one bias per output channel). Sums wrap
    # around modulo 2**acc_width: only the biased result, which acc_range bounds, must fit (and the int8
    # products a max pooling compares).
    lo = min(min(l.acc_range[0], int(l.thresholds.min(initial=0)), -128) for l in layers)
    hi = max(max(l.acc_range[1], int(l.thresholds.max(initial=0)), 127) for l in layers) + 1
    acc_width = signed_bits(lo, hi)
    sentinel = hi
    w_width = program.w_width
    # threshold search depth: enough for the layer with the most output levels (8 bits for int8 codes,
    # 2 for 2-bit activations)
    out_bits = max(1, max(int(l.thresholds.shape[1]) for l in layers).bit_length())
    weight_words, bias_values, all_tables = [], [], []
    stages = [[] for _ in range(out_bits)]
    descs = []
    tables: dict[bytes, int] = {}  # identical tables (e.g. every max pooling's identity) are stored once
    n_tables = 0
    for l in layers:
        g = l.geometry
        src = program.views[l.inputs[0]]
        dst = program.views[l.output]
        groups = -(-l.n // lanes)
        form = paired_form(l, src, lanes, program.pixels)
        pair = form is not None
        kw, kh = kernel_columns(l, form), kernel_rows(l, form)
        w = np.zeros((groups * lanes, kh, kw, l.k // (g["kh"] * g["kw"])), np.int64)
        w[: l.n, kh - g["kh"]:, :g["kw"]] = l.weight.reshape(l.n, g["kh"], g["kw"], -1)
        w = w.reshape(groups * lanes, -1)
        k = w.shape[1]
        b = np.zeros(groups * lanes, np.int64)
        b[: l.n] = wrap(l.bias + centering_correction(l), acc_width)
        key = l.thresholds.tobytes() + bytes([l.thresholds.shape[0] > 1])
        if l.raw:
            tables.setdefault(key, 0)
        elif key not in tables:
            tables[key] = n_tables
            for c in range(l.thresholds.shape[0]):
                all_tables.append([int(v) for v in l.thresholds[c]])
                for s, entries in enumerate(threshold_tree(l.thresholds[c], out_bits, sentinel)):
                    stages[s].extend(entries)
            n_tables += l.thresholds.shape[0]
        pitch = src.storage.pitch
        s_base = src.storage.base + src.offset
        # the padding check is needed when a window starts before the input or its last one ends past it
        check = int(g["pt"] > 0 or g["pl"] > 0
                    or (g["oh"] - 1) * g["sy"] + (g["kh"] - 1) * g["dy"] - g["pt"] >= g["h"]
                    or (g["ow"] - 1) * g["sx"] + (kw - 1) * g["dx"] - g["pl"] >= g["w"])
        if l.kind == "add":
            other = program.views[l.inputs[1]]
            inc_kx = (other.storage.base + other.offset) - s_base
            check = 0
        else:
            inc_kx = g["dx"] * pitch
        # the output pixel loop: rows and columns; for a pair layer (see pairable) the pixels in pairs, row
        # after row as one line ("line"), each row's columns in pairs ("row", "shift", "peek"), or two rows
        # at a time ("col")
        o_pitch = dst.storage.pitch
        loop = dict(oh=g["oh"], ow=g["ow"], sx=g["sx"], inc_ox=g["sx"] * pitch, inc_oy=g["sy"] * g["w"] * pitch,
                    out_pitch=o_pitch)
        if form == "line":
            loop.update(oh=1, ow=-(-l.pixels // 2), inc_ox=2 * pitch, inc_oy=0, out_pitch=2 * o_pitch)
        elif form in ("row", "shift", "peek"):
            loop.update(ow=g["ow"] // 2, sx=2, inc_ox=2 * pitch, out_pitch=2 * o_pitch)
        rows = dict(iy0=-g["pt"], sy=g["sy"], out_base=dst.storage.base + dst.offset)
        col = {}
        if form == "col":
            # pairs of rows: A the lower pixel (its window the loop's, from kernel row sy on), B the one above;
            # with an odd row count the first pairs' B is the row above the output, which is not written
            odd = g["oh"] % 2
            loop.update(oh=(g["oh"] + odd) // 2, inc_oy=2 * g["sy"] * g["w"] * pitch)
            rows = dict(iy0=-odd * g["sy"] - g["pt"], sy=2 * g["sy"],
                        out_base=dst.storage.base + dst.offset + (1 - odd) * g["ow"] * o_pitch)
            col = dict(pair_delay=g["sy"] * kw * g["c_in"], b_first=1 - odd, out_row=g["ow"] * o_pitch)
            check = int(check or rows["iy0"] < 0
                        or rows["iy0"] + (loop["oh"] - 1) * rows["sy"] + (kh - 1) * g["dy"] >= g["h"])
        descs.append(LayerDescriptor(
            chan=int(l.channel_mode), is_max=int(l.kind == "maxpool"), in_signed=int(l.in_dtype == "int8"),
            ci=g["c_in"] if not l.channel_mode else 1, kw=kw, kh=kh, groups=groups, k=k,
            start=s_base + (rows["iy0"] * g["w"] - g["pl"]) * pitch,
            inc_kx=inc_kx, inc_ky=g["dy"] * g["w"] * pitch,
            check=check, ix0=-g["pl"], dy=g["dy"], dx=g["dx"],
            h=g["h"], w=g["w"], pad_code=g["pad_code"] & 0xFF, **rows, **loop, **col,
            n_last=l.n - (groups - 1) * lanes, w_base=len(weight_words), b_base=len(bias_values),
            table_base=tables[key], per_channel=int(l.thresholds.shape[0] > 1), base_code=l.base & 0xFF,
            raw_bytes=dst.storage.value_bytes if l.raw else 0,
            out_group_step=lanes * (dst.storage.value_bytes if l.raw else 1),
            pair=int(pair), b_last=int(pair and (form == "col" or l.pixels % 2 == 0)),
            pair_in=pitch if form in ("line", "row") else 0,
            pair_out=-g["ow"] * o_pitch if form == "col" else o_pitch if pair else 0,
            pair_shift={"shift": SHIFT, "peek": PEEK, "col": COL}.get(form, 0)))
        for gi in range(groups):
            for j in range(k):
                weight_words.append([int(v) for v in w[gi * lanes:(gi + 1) * lanes, j]])
        bias_values.extend(int(v) for v in b)
    b_width = signed_bits(min(bias_values), max(bias_values))
    image = AccelImage(lanes, w_width, acc_width, -(-program.act_bytes // lanes) * lanes, out_bits, weight_words,
                       bias_values, stages, descs, program.in_len, program.out_len,
                       program.in_storage.base, program.out_storage.base, b_width, all_tables, requantizer)
    # chaining needs every byte a layer reads written by the layer before it (no concat of several)
    st = [program.views[l.output].storage for l in layers]
    reads_prev = [i > 0 and program.views[l.inputs[0]].storage is st[i - 1] and sum(x is st[i - 1] for x in st) == 1
                  for i, l in enumerate(layers)]
    for d, gap in zip(descs, chain_gaps(descs, lanes, image.requant_latency, reads_prev)):
        d.chain_gap = gap
    for d, tail in zip(descs, layer_tails(image)):
        d.tail = tail
    return image
