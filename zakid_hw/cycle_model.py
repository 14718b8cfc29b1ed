"""The exact cycle model: how many cycles each layer of an :class:`~zakid_hw.schedule.AccelImage` takes on
the generated accelerator, from its first MAC step to the next layer's (or to ``done``).

Every RTL test checks it against the simulated core's own cycle counter, so the exploration, the reports
and the benchmark take cycles from here instead of simulating. It also gives the controller the numbers it
counts instead of watching the pipeline: each layer's ``chain_gap`` (when a layer may start while the one
before still drains) and ``tail`` (:func:`chain_gaps`, :func:`layer_tails`, used by
:func:`zakid_hw.schedule.memory_image`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .schedule import AccelImage, LayerDescriptor

#: cycles from a group's last MAC step until its first sum enters the drain (step register, memory read,
#: read data register, MAC input register, product register, accumulate, copy to the drain); then one cycle adds the channel's bias, and
#: the requantizer takes its stages plus REQUANT_EXTRA
PIPELINE_TO_DRAIN = 7
REQUANT_EXTRA = 2
#: cycles after the last raw byte leaves the drain until the layer ends (the bias stage)
RAW_EXTRA = 1
#: cycles from a group's last MAC step to the write of its first raw byte (the bias stage's output)
RAW_WRITE = PIPELINE_TO_DRAIN + RAW_EXTRA
#: the fewest cycles from a group's last MAC step to the next group's (of any layer): the drain takes a
#: group's output address, first channel, lane count and layer from registers the accelerator loads at
#: the group's last step, and reads them PIPELINE_TO_DRAIN - 1 cycles later
GROUP_SPACING = PIPELINE_TO_DRAIN - 1


def group_turn(drain: int) -> int:
    """The fewest cycles from a group's last MAC step to the next group's, for a group whose sums take
    ``drain`` cycles to leave the drain (the next group's sums reach it when it is free) and at least
    :data:`GROUP_SPACING`."""
    return max(drain, GROUP_SPACING)


#: the fewest cycles from a layer's last step to a chained layer's first (the controller loads the next
#: descriptor, then sets up its counters)
MIN_CHAIN_GAP = 3


def can_chain(prev: LayerDescriptor, desc: LayerDescriptor, reads_prev_output: bool) -> bool:
    """Whether ``desc`` may start while ``prev`` still drains: it is pointwise (a dense layer on a vector, or
    a 1x1 convolution over one or more pixels, one pixel at a time: step j of output pixel p's groups reads
    byte ``start + offset(p) + j``, so every input byte has a known earliest read, see
    :func:`_first_reads`), its input is ``prev``'s output, ``prev`` is requantized (one byte per lane), and
    ``desc`` has at least as many steps as ``prev``'s last group has lanes (so its own first write comes
    after all of ``prev``'s; a layer of raw bytes, which skip the requantizer, also waits for that, see
    :func:`_timeline`)."""
    pointwise = not desc.chan and desc.kh == desc.kw == 1 and not desc.check and not desc.pair
    return reads_prev_output and pointwise and not desc.is_max and not prev.raw_bytes and desc.k >= prev.n_last


def _first_reads(desc: LayerDescriptor):
    """(first byte, steps before it) for each output pixel of a layer that may chain (:func:`can_chain`):
    pixel p's first group reads bytes ``first .. first + k - 1``, step j at least ``p * groups * k + j``
    cycles after the layer's first step (a group that waits for the drain only reads later)."""
    p = 0
    for oy in range(desc.oh):
        for ox in range(desc.ow):
            yield desc.start + oy * desc.inc_oy + ox * desc.inc_ox, p * desc.groups * desc.k
            p += 1


def _timeline(descs, lanes: int, requant_latency: int, may_chain=None) -> tuple[list[int], list[int]]:
    """Per layer: its cycles (first step to the next layer's first step, or to ``done``), its chain
    gap (0, or cycles from the previous layer's last step to its first; see :func:`layer_cycles`).

    With ``may_chain`` (per layer, :func:`can_chain`'s answer) the gaps are worked out; without it the
    descriptors' ``chain_gap`` is used."""
    prev = None  # (last step, group_turn) of the group before, of whichever layer
    t, cycles, gaps = 0, [], [0]
    for i, desc in enumerate(descs):
        origin = t
        writes = []  # (first output byte, first lane's write cycle, lanes) per group and pixel
        units = desc.oh * desc.ow
        for p in range(units):
            # pair layers: the group's pixel B exists (not in the last pair of an odd count, nor in a "col"
            # layer's first row of pairs with an odd row count)
            has_b = (p < units - 1 or desc.b_last) and (p >= desc.ow or desc.b_first)
            for g in range(desc.groups):
                lanes_g = desc.n_last if g == desc.groups - 1 else lanes
                n = desc.drain_cycles(lanes_g, has_b)
                if prev is not None:
                    may = prev[0] + 1 + max(0, prev[1] - desc.k)  # its last step at least prev[1] after
                    if t < may:
                        if g == p == 0:
                            raise AssertionError(f"layer {i} starts before the drain is free")  # see chain_gaps
                        t = may
                last_step = t + desc.k - 1
                prev = (last_step, group_turn(n))
                t = last_step + 1
                o = desc.out_base + p * desc.out_pitch + p // desc.ow * desc.out_row + g * desc.out_group_step
                w0 = last_step + PIPELINE_TO_DRAIN + requant_latency
                writes.append((o, w0, lanes_g))
                if desc.pair and has_b:  # B's outputs follow A's through the drain
                    writes.append((o + desc.pair_out, w0 + lanes_g, lanes_g))
        nxt = descs[i + 1] if i + 1 < len(descs) else None
        gap = 0
        if nxt is not None and may_chain is None:
            gap = nxt.chain_gap
        elif nxt is not None and may_chain[i + 1]:
            # pixel p's step j reads byte first + j at least before + j cycles after the layer's first step; a
            # group's lane l (byte o + l) is written at w0 + l, in a cycle before the one that reads it when
            # the layer starts at w0 - o + first - before or later
            late = np.full(max(o for o, _, _ in writes) + lanes, -(1 << 40), np.int64)  # per byte: w0 - o
            for o, w0, _ in writes:
                late[o:o + lanes] = np.maximum(late[o:o + lanes], w0 - o)
            need = max((int(late[max(first, 0):first + nxt.k].max(initial=-(1 << 40))) + first - before
                        for first, before in _first_reads(nxt)), default=0)
            if nxt.raw_bytes:
                # its raw bytes skip the requantizer, and a write from the requantizer wins the memory port:
                # its first (RAW_WRITE cycles after its first group's last step) must follow this layer's last
                need = max(need, max(w0 + n - 1 for _, w0, n in writes) + 1 - (nxt.k - 1) - RAW_WRITE)
            need = max(need, 0)
            gap = max(MIN_CHAIN_GAP, need - last_step, 1 + prev[1] - nxt.k)  # (the last: its last step group_turn after)
        t = last_step + (gap or _drained(desc, requant_latency))
        cycles.append(t - origin)
        if nxt is not None:
            gaps.append(gap)
    return cycles, gaps


def chain_gaps(descs, lanes: int, requant_latency: int, reads_prev_output) -> list[int]:
    """Each layer's ``chain_gap``: the fewest cycles after the previous layer's last step at which every
    input byte it reads is written in a cycle before the one that reads it (0: it waits until all is
    written). The write times come from the same timeline as :func:`layer_cycles`."""
    ok = [False] + [can_chain(p, d, r) for p, d, r in zip(descs, descs[1:], reads_prev_output[1:])]
    return _timeline(descs, lanes, requant_latency, ok)[1]


def _drained(desc: LayerDescriptor, requant_latency: int) -> int:
    """Cycles from a layer's last MAC step until its last output is written and the drain is free."""
    tail = RAW_EXTRA if desc.raw_bytes else requant_latency
    return 1 + desc.drain_cycles(desc.n_last, desc.b_last) + PIPELINE_TO_DRAIN + tail


def layer_tails(image: AccelImage) -> list[int]:
    """Per layer, the cycles from its last MAC step to the next layer's first (or to ``done``): the
    controller counts them instead of watching the drain and the requantizer empty. The next layer's
    ``chain_gap`` when it chains, else until the layer is all written."""
    nxt = [*image.layers[1:], None]
    return [n.chain_gap if n is not None and n.chain_gap else _drained(d, image.requant_latency)
            for d, n in zip(image.layers, nxt)]


def layer_cycles(image: AccelImage) -> list[int]:
    """Exact cycles of each layer, from its first MAC step to the next layer's (to ``done`` for the last);
    tests check the sum against RTL simulation.

    Each group (an output pixel's lane group) costs one cycle per MAC step. Its sums reach the drain
    ``PIPELINE_TO_DRAIN`` cycles after its last step and leave it one lane (or raw byte) per cycle, and
    consecutive groups' last steps are at least ``GROUP_SPACING`` cycles apart, so a group of k steps after
    one of n lanes opens right after it only when k >= t = max(n, GROUP_SPACING) (:func:`group_turn`);
    otherwise it opens t - k cycles later (the group before may be the previous layer's); lane l's code is
    written ``PIPELINE_TO_DRAIN + requant_latency + l`` cycles after that step. After the last group the
    next layer starts ``chain_gap`` cycles after the last step, or once the drain is empty and the
    requantizer has finished."""
    return _timeline(image.layers, image.lanes, image.requant_latency)[0]


def layer_steps(image: AccelImage) -> list[int]:
    """Per layer, the cycles in which the MAC array takes one of its steps (every group of every output
    pixel, or pixel pair, takes ``k``); the rest of :func:`layer_cycles` is waiting: for a group's turn
    at the drain, for the previous layer's outputs, or for the last sums to leave the pipeline."""
    return [d.oh * d.ow * d.groups * d.k for d in image.layers]


def cycles_per_run(image: AccelImage) -> int:
    """Cycles from ``start`` to ``done`` (the core's own counter) for one run of the image's batch: the
    start cycle plus every layer."""
    return 1 + sum(layer_cycles(image))


def per_inference(cycles_per_run: int, batch: int) -> int | float:
    """Cycles per inference of a run of ``batch`` inferences (to three decimals; the run's own count for
    one inference)."""
    return cycles_per_run if batch == 1 else round(cycles_per_run / batch, 3)
