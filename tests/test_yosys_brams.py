"""The faster block-RAM map (zakid_hw/yosys_brams.py) gives the block RAMs Yosys's own map gives."""

import json
import subprocess

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import Cat, Module
from amaranth.lib import wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from zakid_hw.synth import tool_command
from zakid_hw.yosys_brams import MAP_FILE, fast_brams_map, map_ram_overrides, yosys_share_dir

#: (width, depth) of the test memories: the four iCE40 block-RAM widths, one split over two blocks in
#: width and one in depth, and an odd width
SHAPES = [(16, 256), (8, 512), (4, 1024), (2, 2048), (12, 200), (32, 256), (8, 1024)]


class Roms(wiring.Component):
    """One initialised memory per SHAPES entry, read at ``addr``; ``data`` is all their words."""

    addr: In(11)
    data: Out(sum(w for w, _ in SHAPES))

    def elaborate(self, platform):
        m = Module()
        rng = np.random.default_rng(5)
        words = []
        for i, (width, depth) in enumerate(SHAPES):
            init = [int(v) for v in rng.integers(0, 1 << width, depth, dtype=np.uint64)]
            m.submodules[f"rom{i}"] = mem = Memory(shape=width, depth=depth, init=init)
            port = mem.read_port()
            m.d.comb += port.addr.eq(self.addr)
            words.append(port.data)
        m.d.comb += self.data.eq(Cat(*words))
        return m


def _synthesize(tmp_path, script_lines, json_name):
    (tmp_path / f"{json_name}.ys").write_text("\n".join(["read_rtlil roms.il", *script_lines,
                                                         f"write_json {json_name}.json"]) + "\n")
    subprocess.run([tool_command("yosys"), "-q", f"{json_name}.ys"], cwd=tmp_path, check=True,
                   capture_output=True)
    cells = json.loads((tmp_path / f"{json_name}.json").read_text())["modules"]["roms"]["cells"]
    return {name: (c["type"], c["parameters"], c["connections"]) for name, c in cells.items()
            if c["type"].startswith("SB_RAM40_4K")}


@pytest.fixture(scope="module")
def both_maps(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("brams")
    (tmp / "roms.il").write_text(rtlil.convert(Roms(), name="roms"))
    fast = fast_brams_map(yosys_share_dir())
    assert fast is not None, "the installed Yosys's ice40/brams_map.v was not rewritten"
    (tmp / MAP_FILE).write_text(fast)
    yosys = _synthesize(tmp, ["synth_ice40 -top roms"], "yosys")
    first, rest = map_ram_overrides([], "roms")
    ours = _synthesize(tmp, [" ".join(["synth_ice40", *first, "-top", "roms"]), *rest.splitlines()], "ours")
    return yosys, ours


def test_same_block_rams(both_maps):
    yosys, ours = both_maps
    assert len(yosys) >= len(SHAPES)                     # every memory went to block RAM
    inits = {name: p["INIT_0"] for name, (_, p, _) in yosys.items()}
    assert len(set(inits.values())) == len(inits)         # distinct contents, so one template each
    assert set(ours) == set(yosys)
    for name, (kind, params, _) in yosys.items():
        assert ours[name][0] == kind
        assert ours[name][1] == params, name                # INIT_0..INIT_F, READ_MODE, WRITE_MODE


def test_template_not_known():
    assert fast_brams_map(None) is None


def test_changed_template_is_not_rewritten(tmp_path):
    share = yosys_share_dir()
    text = (share / "ice40" / "brams_map.v").read_text()
    (tmp_path / "ice40").mkdir()
    (tmp_path / "ice40" / "brams_map.v").write_text(text.replace("ri[0], ri[1], ri[2], ri[3]", "ri[3:0]"))
    assert fast_brams_map(tmp_path) is None
    assert fast_brams_map(tmp_path / "missing") is None


def test_map_ram_overrides_follow_synth_ice40():
    first, rest = map_ram_overrides(["-dsp"], "top")
    assert first == ["-dsp", "-run", ":map_ram"]
    assert rest.splitlines() == [
        "memory_libmap -lib +/ice40/brams.txt -lib +/ice40/spram.txt -no-auto-huge",
        f"techmap -map {MAP_FILE} -map +/ice40/spram_map.v",
        "ice40_braminit",
        "synth_ice40 -dsp -top top -run map_ffram:"]
    assert map_ram_overrides(["-dsp"], "top", until="map_luts")[1].splitlines()[-1] == \
        "synth_ice40 -dsp -top top -run map_ffram:map_luts"
    assert "-no-auto-huge" not in map_ram_overrides(["-spram"], "top")[1]
    assert "-no-auto-block" in map_ram_overrides(["-nobram"], "top")[1]
