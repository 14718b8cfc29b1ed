"""The ``sync`` clock: the board oscillator, or an SB_PLL40 multiplying it.

:func:`pll_config` is a pure re-implementation of IceStorm's ``icepll`` search for SIMPLE feedback
(the mode ``icepll`` uses by default): the phase detector runs at ``f_in / (DIVR + 1)`` (10-133 MHz),
the VCO at ``f_pfd * (DIVF + 1)`` (533-1066 MHz), the output at ``f_vco / 2**DIVQ`` (DIVQ 1-6,
16-275 MHz); the closest output wins, the first found on ties, and FILTER_RANGE follows from f_pfd.

:class:`PllClock` makes the ``sync`` domain from it and holds the domain in reset until the PLL is
locked and a further ~15 us have passed (iCE40 block RAMs read as zero for ~3 us after
configuration; this is the delay Amaranth's own iCE40 platform uses). The reset is released through
a :class:`~amaranth.lib.cdc.ResetSynchronizer`.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import (ClockDomain, ClockSignal, Const, Elaboratable, Instance, Module, Signal)
from amaranth.lib import io
from amaranth.lib.cdc import FFSynchronizer, ResetSynchronizer

from zakid_hw.errors import ZakidError

__all__ = ["PllConfig", "pll_config", "PllClock", "LIMIT_IN", "LIMIT_PFD", "LIMIT_VCO", "LIMIT_OUT"]

# Frequency limits (MHz) as in icepll.cc.
LIMIT_IN = (10.0, 133.0)
LIMIT_PFD = (10.0, 133.0)
LIMIT_VCO = (533.0, 1066.0)
LIMIT_OUT = (16.0, 275.0)

#: Relative error between requested and achieved frequency that pll_config accepts by default.
DEFAULT_MAX_ERROR = 0.02


@dataclass(frozen=True)
class PllConfig:
    """SB_PLL40 parameters for SIMPLE feedback, and the frequencies they give (MHz)."""

    f_in: float
    f_req: float
    f_out: float
    divr: int
    divf: int
    divq: int
    filter_range: int
    f_pfd: float
    f_vco: float
    feedback_path: str = "SIMPLE"

    def instance_params(self) -> dict:
        """Parameters for an Amaranth ``Instance`` of SB_PLL40_PAD / SB_PLL40_CORE."""
        return dict(
            p_FEEDBACK_PATH=self.feedback_path,
            p_PLLOUT_SELECT="GENCLK",
            p_DIVR=Const(self.divr, 4),
            p_DIVF=Const(self.divf, 7),
            p_DIVQ=Const(self.divq, 3),
            p_FILTER_RANGE=Const(self.filter_range, 3),
        )


def _filter_range(f_pfd: float) -> int:
    return (1 if f_pfd < 17 else 2 if f_pfd < 26 else 3 if f_pfd < 44 else
            4 if f_pfd < 66 else 5 if f_pfd < 101 else 6)


def pll_config(f_in_mhz: float, f_req_mhz: float, *,
               max_error: float = DEFAULT_MAX_ERROR, at_most: bool = False) -> PllConfig:
    """DIVR/DIVF/DIVQ/FILTER_RANGE for ``f_req_mhz`` from ``f_in_mhz``, as ``icepll`` chooses them (the
    closest output; with ``at_most``, the closest that is not above the request).

    Raises ZakidError if either frequency is outside the PLL's range, or if the closest achievable
    output is more than ``max_error`` (relative) away from the request.
    """
    f_in = float(f_in_mhz)
    f_req = float(f_req_mhz)
    if not LIMIT_IN[0] <= f_in <= LIMIT_IN[1]:
        raise ZakidError(f"PLL input frequency {f_in:g} MHz is outside the iCE40 PLL's "
                         f"{LIMIT_IN[0]:g}-{LIMIT_IN[1]:g} MHz input range.")
    if not LIMIT_OUT[0] <= f_req <= LIMIT_OUT[1]:
        raise ZakidError(f"Clock frequency {f_req:g} MHz cannot be made by the iCE40 PLL (its output "
                         f"range is {LIMIT_OUT[0]:g}-{LIMIT_OUT[1]:g} MHz); use the oscillator "
                         f"frequency {f_in:g} MHz or a frequency in that range.")
    best = None
    for divr in range(16):
        f_pfd = f_in / (divr + 1)
        if not LIMIT_PFD[0] <= f_pfd <= LIMIT_PFD[1]:
            continue
        for divf in range(128):
            f_vco = f_pfd * (divf + 1)
            if not LIMIT_VCO[0] <= f_vco <= LIMIT_VCO[1]:
                continue
            for divq in range(1, 7):
                f_out = f_vco / (1 << divq)
                if at_most and f_out > f_req:
                    continue
                if best is None or abs(f_out - f_req) < abs(best[0] - f_req):
                    best = (f_out, divr, divf, divq, f_pfd, f_vco)
    if best is None:
        raise ZakidError(f"No iCE40 PLL configuration makes {f_req:g} MHz from {f_in:g} MHz.")
    f_out, divr, divf, divq, f_pfd, f_vco = best
    if abs(f_out - f_req) > max_error * f_req:
        raise ZakidError(f"The iCE40 PLL cannot make {f_req:g} MHz from {f_in:g} MHz: the closest it "
                         f"gets is {f_out:.4g} MHz, more than {max_error:.0%} away. Ask for "
                         f"{f_out:.4g} MHz instead.")
    return PllConfig(f_in=f_in, f_req=f_req, f_out=f_out, divr=divr, divf=divf, divq=divq,
                     filter_range=_filter_range(f_pfd), f_pfd=f_pfd, f_vco=f_vco)


class PllClock(Elaboratable):
    """Creates the ``sync`` clock domain at ``f_mhz`` on ``board``.

    If ``f_mhz`` is the oscillator frequency, the oscillator drives ``sync`` directly; otherwise an
    SB_PLL40_PAD (oscillator on the PLL pad) or SB_PLL40_CORE (oscillator through a global buffer)
    makes it. ``sync`` is held in reset until the PLL reports LOCK and ``por_us`` microseconds more.

    With ``define_domain=False`` the ``sync`` domain must be defined by a parent (as
    :class:`~boards.top.BoardTop` does, so that sibling modules may use it: Amaranth 0.6 will
    not let a module use a domain defined in a sibling); PllClock then only drives its clock
    and reset.

    Attributes: ``config`` (a :class:`PllConfig`, None when the PLL is bypassed), ``f_actual_mhz``.
    """

    def __init__(self, board, f_mhz: float, *, por_us: float = 15.0,
                 max_error: float = DEFAULT_MAX_ERROR, define_domain: bool = True):
        self.board = board
        self.define_domain = define_domain
        self.f_req_mhz = float(f_mhz)
        self.por_us = por_us
        if abs(self.f_req_mhz - board.osc_mhz) < 1e-9:
            self.config = None
            self.f_actual_mhz = float(board.osc_mhz)
        else:
            try:
                self.config = pll_config(board.osc_mhz, self.f_req_mhz, max_error=max_error)
            except ZakidError:
                self._MustUse__silence = True  # no "created but never used" warning on top
                raise
            self.f_actual_mhz = self.config.f_out

    @property
    def uses_pll(self) -> bool:
        return self.config is not None

    def elaborate(self, platform):
        if platform is None:
            raise ZakidError("PllClock needs a board platform (it drives real clock pins); "
                             "simulate the core with its own clock instead.")
        m = Module()
        clk = Signal()
        lock = Signal()

        clk_port = platform.request(self.board.clock_resource, 0, dir="-")
        if self.config is None:
            m.submodules.clk_buf = clk_buf = io.Buffer("i", clk_port)
            m.d.comb += [clk.eq(clk_buf.i), lock.eq(1)]
        else:
            if self.board.pll_primitive == "SB_PLL40_PAD":
                # The oscillator pin is the PLL's own pad: the PLL takes it without any SB_IO.
                ref = {"io_PACKAGEPIN": clk_port.io}
            elif self.board.pll_primitive == "SB_PLL40_CORE":
                m.submodules.clk_buf = clk_buf = io.Buffer("i", clk_port)
                ref = {"i_REFERENCECLK": clk_buf.i}
            else:  # pragma: no cover - table error
                raise ValueError(f"unknown PLL primitive {self.board.pll_primitive!r}")
            m.submodules.pll = Instance(self.board.pll_primitive, **self.config.instance_params(), **ref,
                                        i_RESETB=Const(1), i_BYPASS=Const(0), o_PLLOUTGLOBAL=clk, o_LOCK=lock)

        # No clock constraint is added for `clk`: nextpnr derives the PLL output's frequency from the
        # oscillator's constraint ("Derived frequency constraint of ... for net clk").

        # Power-on reset: count por_us after LOCK (re-armed if LOCK drops), then release `sync`.
        m.domains.por = ClockDomain("por", reset_less=True, local=True)
        m.d.comb += ClockSignal("por").eq(clk)
        delay = max(2, int(self.por_us * self.f_actual_mhz))
        locked = Signal()
        m.submodules.lock_sync = FFSynchronizer(lock, locked, o_domain="por")
        timer = Signal(range(delay + 1))
        ready = Signal()
        with m.If(~locked):
            m.d.por += [timer.eq(0), ready.eq(0)]
        with m.Elif(timer == delay):
            m.d.por += ready.eq(1)
        with m.Else():
            m.d.por += timer.eq(timer + 1)

        if self.define_domain:
            m.domains.sync = ClockDomain("sync")
        m.d.comb += ClockSignal("sync").eq(clk)
        m.submodules.reset_sync = ResetSynchronizer(~ready, domain="sync")
        return m
