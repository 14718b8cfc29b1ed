"""Target devices, boards, the clock and the board top level."""

from .devices import (DEVICES, EBR_BITS, FPGA_FAMILIES, SPRAM_BITS, Device, check_fpga_family,
                      get_device, known_device_names)
from .boards import (BOARDS, DEFAULT_BOARD, Board, default_board_for, get_board,
                     known_board_names, select_board)
from .pll import PllClock, PllConfig, pll_config
from .top import BoardTop

__all__ = [
    "Device", "DEVICES", "EBR_BITS", "SPRAM_BITS", "FPGA_FAMILIES", "get_device",
    "check_fpga_family", "known_device_names",
    "Board", "BOARDS", "DEFAULT_BOARD", "get_board", "default_board_for", "select_board",
    "known_board_names",
    "PllClock", "PllConfig", "pll_config",
    "BoardTop",
]

