"""The boards zakid-hw builds bitstreams for, and how to pick one from ``--fpga/--device/--board``.

Each :class:`Board` names its amaranth-boards platform class, its oscillator, the resource that
carries the host link (the board's USB-serial bridge, an FTDI FT2232H on all three boards) and which
SB_PLL40 variant can take the oscillator's pin:

* iCEBreaker: the 12 MHz clock enters on pin 35 (IOT_46b_G0), the PLL's dedicated pad, so the PLL
  is ``SB_PLL40_PAD`` driven straight from the pad.
* HX8K breakout (pin J3) and iCEstick (pin 21): the oscillator is on a left-bank global-buffer
  pin that is not a PLL pad, so the clock goes through a global buffer into ``SB_PLL40_CORE``.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth_boards.ice40_hx8k_b_evn import ICE40HX8KBEVNPlatform
from amaranth_boards.icebreaker import ICEBreakerPlatform
from amaranth_boards.icestick import ICEStickPlatform

from zakid_hw.errors import ZakidError

from .devices import DEVICES, Device, check_fpga_family, get_device

__all__ = ["Board", "BOARDS", "DEFAULT_BOARD", "get_board", "default_board_for", "select_board",
           "known_board_names"]


@dataclass(frozen=True)
class Board:
    """A development board: a device in a package, an oscillator and a USB-serial link."""

    name: str
    description: str
    device: Device
    package: str
    platform_cls: type
    osc_mhz: float
    clock_resource: str
    pll_primitive: str              # "SB_PLL40_PAD" or "SB_PLL40_CORE"
    uart_resource: tuple[str, int]  # amaranth-boards resource (name, number); subsignals rx (i), tx (o)
    default_baud: int = 115200

    def platform(self):
        """A fresh amaranth-boards platform instance (one per build: platforms are single-use)."""
        return self.platform_cls()


BOARDS: dict[str, Board] = {
    b.name: b for b in (
        Board(name="icebreaker",
              description="1BitSquared iCEBreaker (iCE40UP5K-SG48, 12 MHz, FT2232H UART)",
              device=DEVICES["up5k"], package="sg48",
              platform_cls=ICEBreakerPlatform, osc_mhz=12.0, clock_resource="clk12",
              pll_primitive="SB_PLL40_PAD", uart_resource=("uart", 0)),
        Board(name="ice40-hx8k-b-evn",
              description="Lattice iCE40-HX8K Breakout Board (iCE40HX8K-CT256, 12 MHz, FT2232H UART)",
              device=DEVICES["hx8k"], package="ct256",
              platform_cls=ICE40HX8KBEVNPlatform, osc_mhz=12.0, clock_resource="clk12",
              pll_primitive="SB_PLL40_CORE", uart_resource=("uart", 0)),
        Board(name="icestick",
              description="Lattice iCEstick (iCE40HX1K-TQ144, 12 MHz, FT2232H UART)",
              device=DEVICES["hx1k"], package="tq144",
              platform_cls=ICEStickPlatform, osc_mhz=12.0, clock_resource="clk12",
              pll_primitive="SB_PLL40_CORE", uart_resource=("uart", 0)),
    )
}

DEFAULT_BOARD = "icebreaker"

#: The board used when only ``--device`` is given.
_DEFAULT_BOARD_FOR_DEVICE = {"up5k": "icebreaker", "hx8k": "ice40-hx8k-b-evn", "hx1k": "icestick"}


def _check_table():
    for board in BOARDS.values():
        plat = board.platform_cls
        assert plat.device == board.device.part, board.name
        assert plat.package.lower() == board.package, board.name
        assert board.package in board.device.packages, board.name
    assert set(_DEFAULT_BOARD_FOR_DEVICE) == set(DEVICES)


_check_table()


def known_board_names() -> list[str]:
    return list(BOARDS)


def get_board(name: str) -> Board:
    """Look up a board by name (case-insensitive; ``_`` and ``-`` are interchangeable)."""
    key = str(name).strip().lower().replace("_", "-")
    try:
        return BOARDS[key]
    except KeyError:
        raise ZakidError(f"Unknown board {name!r} (--board). Known boards: "
                         f"{', '.join(BOARDS)}.") from None


def default_board_for(fpga_family: str = "ice40", device: str | None = None) -> Board:
    """The board to build for when the user gives only ``--fpga`` and perhaps ``--device``."""
    check_fpga_family(fpga_family)
    if device is None:
        return BOARDS[DEFAULT_BOARD]
    dev = get_device(device)
    if dev.family != fpga_family.strip().lower():
        raise ZakidError(f"Device {dev.name!r} is not in FPGA family {fpga_family!r}.")
    return BOARDS[_DEFAULT_BOARD_FOR_DEVICE[dev.name]]


def select_board(fpga: str | None = None, device: str | None = None,
                 board: str | None = None) -> Board:
    """Resolve ``--fpga``, ``--device`` and ``--board`` (any of them may be None) to one board.

    Raises ZakidError on an unknown name or when a given board does not carry the given device.
    """
    fpga = "ice40" if fpga is None else check_fpga_family(fpga)
    if board is None:
        return default_board_for(fpga, device)
    b = get_board(board)
    if b.device.family != fpga:
        raise ZakidError(f"Board {b.name!r} carries an {b.device.part}, not an {fpga!r} FPGA.")
    if device is not None:
        dev = get_device(device)
        if dev is not b.device:
            fitting = [n for n, x in BOARDS.items() if x.device is dev]
            raise ZakidError(
                f"Board {b.name!r} carries an {b.device.part} ({b.device.name}), not the requested "
                f"--device {dev.name}. Boards with a {dev.name}: {', '.join(fitting) or 'none'}; "
                f"or drop --device.")
    return b
