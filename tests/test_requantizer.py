"""Both requantizer forms against np.searchsorted: the affine tables' Python search, and the RTL of each
form in Amaranth's simulator (one accumulator per cycle, fixed latency)."""

import numpy as np
import pytest
from amaranth.sim import Simulator

from rtl_gen.requantizer import AffineRequantizer, ThresholdRequantizer
from zakid_hw.golden import requantize
from zakid_hw.threshold_tables import affine_search, affine_tables, signed_bits, threshold_tree


def ort_thresholds(scale, zp, lo=-128, hi=127):
    """Ascending thresholds of onnxruntime's float32 requantization ``rint(acc * scale) + zp``."""
    acc = np.arange(-(1 << 18), 1 << 18)
    codes = requantize(acc, multiplier=np.float32(scale), zero_point=zp, dtype="int8", qmin=lo, qmax=hi)
    return np.array([acc[np.argmax(codes >= c)] for c in range(lo + 1, hi + 1)], np.int64)


def tables_under_test():
    rng = np.random.default_rng(5)
    tabs = [ort_thresholds(s, z) for s, z in ((0.0123, -3), (0.00071, 10), (0.25, 0), (1 / 3, -128))]
    tabs.append(np.sort(rng.choice(np.arange(-3000, 3000), size=100, replace=False)))  # no line at all
    tabs.append(np.array([5]))      # one threshold
    tabs.append(np.arange(0, 60))   # a short identity-like table (fewer thresholds than codes)
    return tabs


def test_affine_search_equals_searchsorted():
    tabs = tables_under_test()
    at = affine_tables(tabs, 8, -(1 << 18), (1 << 18) - 1)
    assert at.e_width > 2  # the random table needs wide corrections; the others share them
    rng = np.random.default_rng(0)
    for i, t in enumerate(tabs):
        accs = [int(v) for v in rng.integers(-(1 << 18), 1 << 18, 200)] + [int(v) + d for v in t for d in (-1, 0)]
        for a in accs:
            assert affine_search(a, i, at) == np.searchsorted(t, a, side="right"), (i, a)


def test_scale_tables_need_two_bits_of_correction():
    tabs = tables_under_test()[:4]
    at = affine_tables(tabs, 8, -(1 << 18), (1 << 18) - 1)
    assert at.e_width <= 2
    full = sum(len(s) for s in threshold_tree(tabs[0], 8, 0)) * signed_bits(-(1 << 18), 1 << 18) * len(tabs)
    assert at.bits * 8 < full


def run_requantizer(dut, accs, tables, latency):
    out = []

    async def bench(ctx):
        for i in range(len(accs) + latency + 2):
            if i < len(accs):
                ctx.set(dut.i_valid, 1)
                ctx.set(dut.i_acc, accs[i][0])
                ctx.set(dut.i_table, accs[i][1])
                ctx.set(dut.i_base, 0x80)
                ctx.set(dut.i_tag, i)
            else:
                ctx.set(dut.i_valid, 0)
            if ctx.get(dut.o_valid):
                out.append((ctx.get(dut.o_tag), ctx.get(dut.o_code), i))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    assert len(out) == len(accs)
    for tag, code, cycle in out:
        acc, table = accs[tag]
        assert cycle - tag == latency
        assert code == (0x80 + np.searchsorted(tables[table], acc, side="right")) & 0xFF, (tag, acc, table)


@pytest.mark.parametrize("form", ["affine", "full"])
def test_requantizer_rtl(form):
    tabs = tables_under_test()
    lo, hi = -(1 << 18), (1 << 18) - 1
    rng = np.random.default_rng(1)
    accs = [(int(rng.integers(lo, hi + 1)), int(rng.integers(len(tabs)))) for _ in range(150)]
    accs += [(int(v) + d, i) for i, t in enumerate(tabs) for v in t[::7] for d in (-1, 0)]
    width = signed_bits(lo, hi + 1)
    if form == "affine":
        dut = AffineRequantizer(width=width, tables=affine_tables(tabs, 8, lo, hi), tag_width=12)
        latency = 8 + 2
    else:
        stages = [[] for _ in range(8)]
        for t in tabs:
            for s, entries in enumerate(threshold_tree(t, 8, hi + 1)):
                stages[s].extend(entries)
        dut = ThresholdRequantizer(width=width, out_bits=8, stages=stages, tag_width=12)
        latency = 8 + 1
    run_requantizer(dut, accs, tabs, latency)
