"""The configuration object that drives hardware generation."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AccelConfig:
    """How to build the accelerator, independent of the model.

    lanes:        MAC lanes, i.e. output neurons computed in parallel.
    dsp_lanes:    how many of them multiply in DSP blocks (SB_MAC16); the others use shift-and-add
                  multipliers in logic cells. 0 on devices without DSPs.
    dsp_pack:     lanes per DSP block: 1 (a 16x16 multiplier inferred by Yosys) or 2 (SB_MAC16 instantiated
                  in its two-8x8 mode, for weights of at most 8 bits; see :mod:`rtl_gen.dsp`).
    pixels:       output pixels a weight word serves per cycle: 1, or 2 (a second bank of ``lanes``
                  accumulators works on the next output pixel of a convolution with the same weights,
                  see :func:`zakid_hw.schedule.pairable`; every lane of both banks in DSP blocks, two per
                  block).
    clock_mhz:    the clock the design runs at (the PLL output, or the board oscillator).
    uart_divisor: clock cycles per UART bit (clock / baud); simulation uses a small one.
    weights_in_spram: keep the weights in SPRAM (iCE40 UP5K), loaded from SPI flash at start-up by
                  :class:`rtl_gen.flash_loader.SpiFlashLoader`, instead of bitstream-initialised block RAM.
    flash_clk_div: clock cycles per SPI clock half period of that loader.
    """

    lanes: int = 8
    dsp_lanes: int = 8
    dsp_pack: int = 1
    clock_mhz: float = 12.0
    uart_divisor: int = 104
    weights_in_spram: bool = False
    flash_clk_div: int = 2
    pixels: int = 1

    def __post_init__(self):
        if self.lanes < 1:
            raise ValueError("lanes must be at least 1")
        if not 0 <= self.dsp_lanes <= self.lanes:
            raise ValueError("dsp_lanes must lie between 0 and lanes")
        if self.dsp_pack not in (1, 2) or self.dsp_lanes % self.dsp_pack:
            raise ValueError("dsp_pack must be 1 or 2, and divide dsp_lanes")
        if self.pixels not in (1, 2):
            raise ValueError("pixels must be 1 or 2")
        if self.pixels == 2 and (self.dsp_pack != 2 or self.dsp_lanes != self.lanes or self.lanes < 2):
            raise ValueError("pixels=2 needs every lane in DSP blocks, two per block (dsp_pack=2), and 2 lanes or more")
        if self.uart_divisor < 4:
            raise ValueError("uart_divisor must be at least 4")

    @property
    def dsp_blocks(self) -> int:
        """DSP blocks the MAC lanes use."""
        return self.dsp_lanes * self.pixels // self.dsp_pack

    @property
    def multipliers(self) -> int:
        """Products per cycle: lanes times pixels."""
        return self.lanes * self.pixels

    @property
    def primitives(self) -> bool:
        """The design instantiates iCE40 primitives (SPRAM, SB_MAC16) that Verilator simulates with Yosys's
        models (:func:`rtl_gen.spram.ice40_sim_models`)."""
        return self.weights_in_spram or self.dsp_pack == 2
