"""In-place activation layout: a layer's output may start below its dying input. Checked here by brute
force, byte by byte in issue order, against the rule the RTL relies on: no lane group writes a byte that a
later group of the same layer reads. (The RTL tests of these graphs check the results themselves.)"""

import numpy as np
import pytest

import irzoo
from zakid_hw import passes, schedule


def group_bytes(layer, src, dst, lanes, form=None):
    """Per lane group in issue order: (bytes read, bytes written), relative to the storages' bases. A pair
    layer (``form``, see schedule.pair_form) works on output pixels 2p and 2p + 1 in row-major order (across
    rows for a pointwise layer, within each row of an even column count otherwise), or for "col" on a
    pixel and the one above it, two rows at a time from the bottom of the first pair (the first row alone
    when the row count is odd)."""
    g = layer.geometry
    groups = -(-layer.n // lanes)
    outs = [(oy, ox) for oy in range(g["oh"]) for ox in range(g["ow"])]
    if form == "col":
        units = [[(oy, ox), (oy - 1, ox)][:1 + (oy > 0)] for oy in range(1 - g["oh"] % 2, g["oh"], 2)
                 for ox in range(g["ow"])]
    elif form:
        units = [outs[i:i + 2] for i in range(0, len(outs), 2)]
    else:
        units = [[o] for o in outs]
    for unit in units:
        pixels = [iy * g["w"] + ix for oy, ox in unit
                  for ky in range(g["kh"]) for kx in range(g["kw"])
                  for iy in [oy * g["sy"] - g["pt"] + ky * g["dy"]] for ix in [ox * g["sx"] - g["pl"] + kx * g["dx"]]
                  if 0 <= iy < g["h"] and 0 <= ix < g["w"]]
        for gi in range(groups):
            n = min(lanes, layer.n - gi * lanes)
            chans = range(gi * lanes, gi * lanes + lanes) if layer.channel_mode else range(g["c_in"])
            reads = {p * src.pitch + c for p in pixels for c in chans}
            writes = {(oy * g["ow"] + ox) * dst.pitch + gi * lanes + j for oy, ox in unit for j in range(n)}
            yield reads, writes


def check_no_hazard(prog, lanes):
    pairs = schedule.overlaps(prog.layers, prog.views, lanes, prog.pixels)
    for layer in prog.layers:
        src, dst = prog.views[layer.inputs[0]].storage, prog.views[layer.output].storage
        if not any(a is src and b is dst for a, b, _ in pairs):
            continue
        form = schedule.paired_form(layer, prog.views[layer.inputs[0]], lanes, prog.pixels)
        seq = list(group_bytes(layer, src, dst, lanes, form))
        later_reads: set[int] = set()
        for reads, writes in reversed(seq):
            assert not {dst.base + w for w in writes} & later_reads, layer.name
            later_reads |= {src.base + r for r in reads}
    return pairs


@pytest.mark.parametrize("make,lanes,pixels,in_place", [
    (irzoo.cnn_a, 4, 1, True), (irzoo.cnn_b, 8, 1, False), (irzoo.cnn_c, 4, 1, False), (irzoo.cnn_c, 8, 1, False),
    (irzoo.cnn_pw, 4, 2, True), (irzoo.cnn_pk, 4, 2, True), (irzoo.cnn_ps, 4, 2, True), (irzoo.cnn_pv, 4, 2, True)])
def test_in_place_layers_never_overwrite_what_a_later_group_reads(make, lanes, pixels, in_place):
    prog = schedule.make_program(passes.lower_for_hardware(make(np.random.default_rng(3), "int8")), lanes, pixels)
    pairs = check_no_hazard(prog, lanes)
    shared = [a for a, b, _ in pairs if not (a.base + a.nbytes <= b.base or b.base + b.nbytes <= a.base)]
    assert bool(shared) == in_place  # the layout is taken only where it saves memory
    # storages alive at the same time overlap only as an in-place pair allows
    pairs = {(id(a), id(b)) for a, b, _ in schedule.overlaps(prog.layers, prog.views, lanes, pixels)}
    ss = prog.storages
    for i, a in enumerate(ss):
        for b in ss[i + 1:]:
            alive = a.first <= b.last and b.first <= a.last
            apart = a.base + a.nbytes <= b.base or b.base + b.nbytes <= a.base
            assert apart or not alive or (id(a), id(b)) in pairs or (id(b), id(a)) in pairs, (a.name, b.name)


def test_in_place_offsets_of_a_chain():
    """A 3x3 depthwise layer over a 5-column map needs one row plus one pixel of room below its input; a
    pointwise layer only the lane groups of one pixel before the last."""
    from zakid_hw.schedule import Layer, Storage, in_place_offset
    geo = dict(c_in=32, h=25, w=5, kh=3, kw=3, sy=1, sx=1, dy=1, dx=1, pt=1, pl=1, pb=1, pr=1, oh=25, ow=5,
               pad_code=0, ceil_mode=0)
    src = Storage("a", 32, 25, 5, "int8", pitch=32)
    dst = Storage("b", 32, 25, 5, "int8", pitch=32)
    empty = np.zeros((1, 0), np.int64)
    dw = Layer("dw", "depthwise", ["a"], "b", np.zeros((32, 9), np.int64), np.zeros(32, np.int64), empty, 0,
               "int8", "int8", (0, 0), geo)
    assert in_place_offset(dw, src, dst, 8) == (5 + 1) * 32
    pw = Layer("pw", "conv", ["a"], "b", np.zeros((32, 32), np.int64), np.zeros(32, np.int64), empty, 0,
               "int8", "int8", (0, 0), dict(geo, kh=1, kw=1, pt=0, pl=0, pb=0, pr=0))
    assert in_place_offset(pw, src, dst, 8) == 24
    # on two pixels at once a group writes the second pixel's channels before the pair's next group reads them
    assert in_place_offset(pw, src, dst, 8, "line") == 32 + 24


@pytest.mark.parametrize("geo,c_in,form,laid_out,steps,pairs", [
    (dict(kh=1, kw=1, pt=0, pl=0, oh=5, ow=5, w=5), 16, "line", "line", 16, True),  # pointwise: pixels in a line
    (dict(kh=1, kw=1, pt=0, pl=0, oh=5, ow=5, w=5), 8, "line", "line", 8, False),   # too few steps for the drain
    (dict(kh=3, kw=3, oh=5, ow=4), 16, "row", "row", 144, True),                # each row's columns in pairs
    (dict(kh=3, kw=3, oh=5, ow=4), 12, "row", "row", 108, False),               # channels fill no whole words
    (dict(kh=3, kw=3, oh=5, ow=5), 16, None, None, 144, False),                 # an odd column count
    (dict(kh=3, kw=3, oh=5, ow=2, sx=2, w=4), 16, None, None, 144, False),      # column stride 2
    # one channel: B's last tap (A's byte + 1) in A's word, rows of 4 bytes (a column more: 12 steps)
    (dict(kh=3, kw=3, oh=5, ow=4), 1, "shift", "peek", 9, False),               # 9 steps < 16
    (dict(kh=5, kw=5, oh=5, ow=4), 1, "shift", "peek", 25, True),               # (B's last taps are padding)
    (dict(kh=5, kw=5, oh=5, ow=4, w=7), 1, "shift", "shift", 30, True),         # rows of 7: some cross words
    # one channel, no "shift" (dilated or strided columns, an odd column count): B is the pixel above
    (dict(kh=5, kw=5, oh=5, ow=4, dx=2), 1, "col", "col", 30, True),            # dilated columns
    (dict(kh=4, kw=4, oh=5, ow=3, sx=2, sy=2, h=12, w=8), 1, "col", "col", 24, True),  # as the DS-CNN's first
    (dict(kh=3, kw=3, oh=5, ow=2, sx=2, w=4), 1, "col", "col", 12, False),     # 12 steps < 16
    (dict(kh=3, kw=3, oh=5, ow=3, sx=2, sy=3, h=15, w=8), 1, None, None, 9, False),  # no fewer steps
    (dict(kh=2, kw=9, oh=5, ow=3, sx=2, sy=2, h=10, w=24), 1, None, None, 18, False),  # B 18 steps behind
    (dict(kh=3, kw=3, oh=5, ow=3, dy=2, sx=2, h=12, w=8), 1, None, None, 9, False),  # dilated rows
])
def test_pair_forms(geo, c_in, form, laid_out, steps, pairs):
    """Which convolutions run two output pixels per weight word (8 lanes), how (by geometry, then with the
    input at address 0), and in how many steps."""
    from zakid_hw.schedule import Layer, Storage, View, pair_form, pair_steps, pairable
    g = dict(c_in=c_in, h=5, w=4, kh=3, kw=3, sy=1, sx=1, dy=1, dx=1, pt=1, pl=1, pb=1, pr=1, oh=5, ow=4,
             pad_code=0, ceil_mode=0)
    g.update(geo)
    k = g["kh"] * g["kw"] * c_in
    thresholds = np.arange(-127, 128)[None, :]  # requantized (a raw last layer never pairs)
    conv = Layer("c", "conv", ["a"], "b", np.zeros((8, k), np.int64), np.zeros(8, np.int64), thresholds, -128,
                 "int8", "int8", (0, 0), g)
    src = View(Storage("a", c_in, g["h"], g["w"], "int8", pitch=c_in))
    dst = View(Storage("b", 8, g["oh"], g["ow"], "int8", pitch=8))
    assert pair_form(conv) == form and pair_form(conv, src, 8) == laid_out and pair_steps(conv, laid_out) == steps
    assert pairable(conv, src, dst, 8, 2) == pairs
    assert not pairable(conv, src, dst, 8, 1)  # one pixel per weight word: no second bank
