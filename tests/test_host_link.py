"""HostLink + a fake core in Verilator, driven with zakid_hw.protocol's encode/decode functions."""

from pathlib import Path

import numpy as np
import pytest
from amaranth import Array, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from rtl_gen.host_link import HostLink
from sim.runner import simulate

REPO = Path(__file__).resolve().parents[1]


class FakeCore(wiring.Component):
    """Core-interface stand-in: ``output[i] = input[i] + 1`` (mod 256) for i < out_len, computed one code per
    cycle after ``start``, ``done`` ``latency`` cycles after ``start``, ``cycles`` = measured start-to-done."""

    def __init__(self, *, in_len, out_len, addr_width, latency):
        assert out_len <= in_len and latency > out_len + 1
        self.in_len, self.out_len, self.latency = in_len, out_len, latency
        super().__init__({
            "in_we": In(1), "in_addr": In(addr_width), "in_data": In(8),
            "start": In(1), "busy": Out(1), "done": Out(1),
            "out_addr": In(addr_width), "out_data": Out(8), "cycles": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        inp = Array(Signal(8, name=f"in{i}") for i in range(self.in_len))
        outp = Array(Signal(8, name=f"out{i}") for i in range(self.out_len))
        count = Signal(32)
        with m.If(self.in_we):
            m.d.sync += inp[self.in_addr].eq(self.in_data)
        addr, read, word = Signal.like(self.out_addr), Signal(8), Signal(8)  # the accelerator's read: four
        m.d.sync += [addr.eq(self.out_addr), read.eq(outp[addr]), word.eq(read), self.out_data.eq(word),
                     self.done.eq(0)]
        with m.If(self.start):
            m.d.sync += [self.busy.eq(1), count.eq(1)]
        with m.Elif(self.busy):
            m.d.sync += count.eq(count + 1)
            with m.If(count <= self.out_len):
                m.d.sync += outp[count - 1].eq(inp[count - 1] + 1)
            with m.If(count == self.latency - 1):
                # done rises at the edge that ends cycle start+latency-1: start-to-done = latency cycles
                m.d.sync += [self.busy.eq(0), self.done.eq(1), self.cycles.eq(count + 1)]
        return m


class LinkTop(wiring.Component):
    """HostLink wired to FakeCore; ports ``rx`` (in), ``tx`` (out)."""

    rx: In(1, init=1)
    tx: Out(1, init=1)

    def __init__(self, **kw):
        self.kw = kw
        super().__init__()

    def elaborate(self, platform):
        kw = self.kw
        m = Module()
        m.submodules.link = link = HostLink(in_len=kw["in_len"], out_len=kw["out_len"],
                                            signature=kw["signature"], divisor=kw["divisor"],
                                            addr_width=kw["addr_width"], rx_timeout_cycles=kw["rx_timeout_cycles"])
        m.submodules.core = core = FakeCore(in_len=kw["in_len"], out_len=kw["out_len"],
                                            addr_width=kw["addr_width"], latency=kw["latency"])
        m.d.comb += [link.rx.eq(self.rx), self.tx.eq(link.tx)]
        for name in ("in_we", "in_addr", "in_data", "start", "out_addr"):
            m.d.comb += getattr(core, name).eq(getattr(link, name))
        for name in ("busy", "done", "out_data", "cycles"):
            m.d.comb += getattr(link, name).eq(getattr(core, name))
        return m


CONFIG = dict(in_len=6, out_len=4, signature=0xC0DE1234, divisor=7, addr_width=3, latency=23,
              rx_timeout_cycles=7 * 10 * 3)


def test_host_link_protocol():
    runs = [np.array([-128, 127, -1, 0, 5, 100], dtype=np.int8),
            np.array([1, 2, 3, -4, -5, -6], dtype=np.int8)]
    res = simulate(LinkTop(**CONFIG), name="host_link_fake", test_module="host_link_bench",
                   test_dir=REPO / "sim" / "benches", build_dir=REPO / "build" / "sim",
                   parameters={"divisor": CONFIG["divisor"], "in_dtype": "int8", "out_dtype": "int8",
                               "runs": [r.tolist() for r in runs], "unknown": ord("X"),
                               "stall_cycles": 3 * CONFIG["rx_timeout_cycles"]},
                   timeout_s=120)
    info = {"in_len": 6, "out_len": 4, "signature": 0xC0DE1234}
    assert res["info"] == info
    assert res["unknown_answer"] == [ord("?")]
    for run, got in zip(runs, res["runs"]):
        expect = (run[:4].astype(np.int64) + 1 + 128) % 256 - 128  # int8 wrap-around
        assert got["codes"] == expect.tolist()
        assert got["cycles"] == CONFIG["latency"]
    assert res["after_stall"] == info
    assert res["frame_errors"] == 0


def test_host_link_rejects_bad_sizes():
    with pytest.raises(ValueError, match="in_len"):
        HostLink(in_len=9, out_len=4, signature=0, divisor=8, addr_width=3)
    with pytest.raises(ValueError, match="signature"):
        HostLink(in_len=4, out_len=4, signature=1 << 32, divisor=8, addr_width=3)
