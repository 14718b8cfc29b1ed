"""The top level of a bitstream: clock, UART pins and the user's core.

``make_core()`` must return an Elaboratable with a 1-bit input ``rx`` and a 1-bit output ``tx``
(e.g. an ``amaranth.lib.wiring.Component`` with ``rx: In(1), tx: Out(1)``) running in the ``sync``
domain. BoardTop wires them to the board's USB-serial pins; ``rx`` idles high (UART mark).
"""

from __future__ import annotations

from typing import Callable

from amaranth.hdl import ClockDomain, Elaboratable, Module
from amaranth.lib import io

from .pll import PllClock

__all__ = ["BoardTop"]


class BoardTop(Elaboratable):
    """Board top level: :class:`PllClock` at ``f_mhz`` + UART pins + ``make_core()``.

    After construction ``clock`` is the PllClock (``clock.f_actual_mhz`` is the real frequency);
    after elaboration ``core`` is the core instance.
    """

    def __init__(self, board, f_mhz: float, make_core: Callable[[], Elaboratable]):
        self.board = board
        self.f_mhz = float(f_mhz)
        self.make_core = make_core
        # Validates f_mhz now (ZakidError). The domain is defined here, not in the PllClock, so
        # that the core (a sibling of the clock) may use it.
        try:
            self.clock = PllClock(board, f_mhz, define_domain=False)
        except Exception:
            self._MustUse__silence = True
            raise
        self.core = None

    @property
    def f_actual_mhz(self) -> float:
        return self.clock.f_actual_mhz

    def elaborate(self, platform):
        if self.core is None:
            self.core = self.make_core()
        core = self.core
        for port in ("rx", "tx"):
            if not hasattr(core, port) or len(getattr(core, port)) != 1:
                core._MustUse__silence = self.clock._MustUse__silence = True
                raise TypeError(f"the core made by make_core() must have a 1-bit port {port!r}")

        m = Module()
        m.domains.sync = ClockDomain("sync")
        m.submodules.clock = self.clock

        # Only rx and tx get buffers; the HX boards' flow-control lines (rts/cts/dtr/dsr/dcd) stay
        # unconnected, so the FPGA does not drive them.
        name, number = self.board.uart_resource
        uart = platform.request(name, number, dir="-")
        m.submodules.uart_rx = uart_rx = io.Buffer("i", uart.rx)
        m.submodules.uart_tx = uart_tx = io.Buffer("o", uart.tx)

        m.submodules.core = core
        m.d.comb += [
            core.rx.eq(uart_rx.i),
            uart_tx.o.eq(core.tx),
        ]
        if hasattr(core, "flash_sck"):  # a core that loads its weights from the configuration flash
            flash = platform.request("spi_flash_1x", 0, dir="-")
            m.submodules.flash_cs = cs = io.Buffer("o", flash.cs)        # PinsN: the buffer inverts
            m.submodules.flash_clk = clk = io.Buffer("o", flash.clk)
            m.submodules.flash_copi = copi = io.Buffer("o", flash.copi)
            m.submodules.flash_cipo = cipo = io.Buffer("i", flash.cipo)
            m.d.comb += [cs.o.eq(~core.flash_cs_n), clk.o.eq(core.flash_sck), copi.o.eq(core.flash_copi),
                         core.flash_cipo.eq(cipo.i)]
            for pin in ("wp", "hold"):  # active-low pins, driven inactive (high)
                if hasattr(flash, pin):
                    buf = io.Buffer("o", getattr(flash, pin))
                    m.submodules[f"flash_{pin}"] = buf
                    m.d.comb += buf.o.eq(0)
        return m
