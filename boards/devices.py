"""The iCE40 parts zakid-hw targets: one table, the one source of truth for their resources.

Numbers are the ones in the project's FACTS.md (Lattice data sheets): logic cells (one LUT4 plus one
flip-flop each, nextpnr's ``ICESTORM_LC``), SB_MAC16 DSP blocks (``ICESTORM_DSP``), 4 Kbit block RAMs
(EBR, ``ICESTORM_RAM``) and 256 Kbit single-port RAMs (``ICESTORM_SPRAM``).
"""

from __future__ import annotations

from dataclasses import dataclass

from zakid_hw.errors import ZakidError

__all__ = ["Device", "DEVICES", "FPGA_FAMILIES", "EBR_BITS", "SPRAM_BITS", "get_device",
           "known_device_names"]

#: Bits in one iCE40 block RAM (SB_RAM40_4K): 256 x 16, 512 x 8, 1024 x 4 or 2048 x 2.
EBR_BITS = 4096
#: Bits in one UltraPlus single-port RAM (SB_SPRAM256KA): 16384 x 16.
SPRAM_BITS = 256 * 1024

#: FPGA families known to ``--fpga``.
FPGA_FAMILIES = ("ice40",)


@dataclass(frozen=True)
class Device:
    """One iCE40 part.

    ``name`` is the short name used on the command line (``--device up5k``); ``part`` is the
    Lattice/Amaranth device name (``iCE40UP5K``); ``nextpnr_flag`` selects the part in nextpnr-ice40.
    """

    name: str
    family: str
    part: str
    logic_cells: int
    dsp: int
    ebr: int
    spram: int
    packages: tuple[str, ...]
    nextpnr_flag: str

    @property
    def ebr_bits(self) -> int:
        return self.ebr * EBR_BITS

    @property
    def spram_bits(self) -> int:
        return self.spram * SPRAM_BITS

    @property
    def totals(self) -> dict[str, int]:
        """Resource totals keyed like :class:`zakid_hw.synth.SynthResult` resources."""
        return {"lc": self.logic_cells, "dsp": self.dsp, "ebr": self.ebr, "spram": self.spram}


DEVICES: dict[str, Device] = {
    d.name: d for d in (
        Device(name="up5k", family="ice40", part="iCE40UP5K",
               logic_cells=5280, dsp=8, ebr=30, spram=4,
               packages=("sg48", "uwg30"), nextpnr_flag="--up5k"),
        Device(name="hx8k", family="ice40", part="iCE40HX8K",
               logic_cells=7680, dsp=0, ebr=32, spram=0,
               packages=("ct256", "cb132", "cm225", "bg121"), nextpnr_flag="--hx8k"),
        Device(name="hx1k", family="ice40", part="iCE40HX1K",
               logic_cells=1280, dsp=0, ebr=16, spram=0,
               packages=("tq144", "vq100", "cb132"), nextpnr_flag="--hx1k"),
    )
}


def known_device_names() -> list[str]:
    return list(DEVICES)


def _normalise(name: str) -> str:
    key = str(name).strip().lower()
    if key.startswith("ice40") and key[5:] in DEVICES:  # accept "iCE40UP5K" as well as "up5k"
        key = key[5:]
    return key


def check_fpga_family(fpga: str) -> str:
    """Return the canonical family name, or raise ZakidError listing the known ones."""
    key = str(fpga).strip().lower()
    if key not in FPGA_FAMILIES:
        raise ZakidError(f"Unknown FPGA family {fpga!r} (--fpga). Known families: "
                         f"{', '.join(FPGA_FAMILIES)}.")
    return key


def get_device(name: str) -> Device:
    """Look up a device by its short name (``up5k``, ``hx8k``, ``hx1k``) or part name."""
    key = _normalise(name)
    try:
        return DEVICES[key]
    except KeyError:
        raise ZakidError(f"Unknown device {name!r} (--device). Known devices: "
                         f"{', '.join(DEVICES)}.") from None
