"""Bitstream builds with the YoWASP tools (a few seconds each once YoWASP's cache is warm)."""

import json

import pytest
from amaranth.hdl import Cat, Instance, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from boards import BoardTop, get_board
from zakid_hw.errors import ZakidError
from zakid_hw import synth
from zakid_hw.synth import (LUT_MAP_WIRE_DELAY_PS, MAP_LUTS, ResourceUse, build_bitstream, build_bitstreams,
                            installed_map_luts, lut_map_script, parse_nextpnr_report, seed_dir)


class ToyCore(wiring.Component):
    """rx shifts into a register that is multiplied by a free-running counter; tx is the product's
    parity. Everything reaches a pin, so nothing is optimised away; the 16x16 product should map
    to an SB_MAC16 on the UP5K."""

    rx: In(1)
    tx: Out(1)

    def __init__(self, n_mults=1):
        super().__init__()
        self.n_mults = n_mults

    def elaborate(self, platform):
        m = Module()
        shift = Signal(16)
        count = Signal(16)
        m.d.sync += [shift.eq(Cat(self.rx, shift[:-1])), count.eq(count + 1)]
        parity = self.rx
        for i in range(self.n_mults):
            prod = Signal(32, name=f"prod{i}")
            m.d.sync += prod.eq(shift * (count + i))
            parity = parity ^ prod.xor()
        # a small FSM (rx steps it through three states) whose state reaches tx
        with m.FSM(name="toy") as fsm:
            for state, nxt in (("A", "B"), ("B", "C"), ("C", "A")):
                with m.State(state):
                    with m.If(self.rx):
                        m.next = nxt
        m.d.sync += self.tx.eq(parity ^ fsm.ongoing("B"))
        return m


@pytest.fixture(scope="module")
def icebreaker_build(tmp_path_factory):
    board = get_board("icebreaker")
    out = tmp_path_factory.mktemp("icebreaker_30")
    top = BoardTop(board, 30, ToyCore)
    return build_bitstream(top, board, out, f_mhz=30, seed=1)


def test_build_icebreaker_pll_30mhz(icebreaker_build):
    r = icebreaker_build
    assert r.bitstream.name == "top.bin" and r.bitstream.stat().st_size > 0
    # UP5K bitstreams are 104090 bytes.
    assert r.bitstream.stat().st_size > 100_000
    assert r.verilog.exists() and "module top" in r.verilog.read_text()
    assert r.report.exists() and "utilization" in json.loads(r.report.read_text())
    for key in ("yosys", "yosys-log", "nextpnr-ice40", "nextpnr-ice40-log", "icepack"):
        assert r.logs[key].exists(), key
    assert r.logs["nextpnr-ice40-log"].name == "top.tim"

    assert r.lc.total == 5280 and 0 < r.lc.used < 5280
    assert r.dsp.total == 8 and r.dsp.used >= 1  # synth_ice40 -dsp is on
    assert r.ebr.total == 30
    assert r.spram.total == 4
    assert r.pll == ResourceUse(1, 1)
    assert r.io.used == 3  # clock pad, rx, tx
    assert r.f_target_mhz == pytest.approx(30.0)
    assert r.sync_clock == "clk"
    assert r.fmax_mhz is not None and r.fmax_mhz > 0
    assert r.timing_met == (r.fmax_mhz >= 30.0)
    assert r.tool_seconds["nextpnr-ice40"] > 0
    assert "icebreaker" in r.summary()


def test_fsm_state_is_recoded(icebreaker_build):
    """The FSM's state register loses its init attribute before synth_ice40 (synth.FSM_SCRIPT), so Yosys
    extracts the FSM and re-encodes it (one-hot); with the attribute it leaves it alone."""
    log = icebreaker_build.logs["yosys-log"].read_text()
    assert "Register has an initialization value" not in log
    recoded = [line for line in log.splitlines() if line.startswith("Recoding FSM") and "toy_state" in line]
    assert recoded, "the toy FSM was not extracted"


def test_map_luts_is_synth_ice40s_own():
    """MAP_LUTS is the installed Yosys's map_luts step but for abc9's wire delay (a Yosys whose step
    differs fails here; its builds run synth_ice40's own step)."""
    assert installed_map_luts() == tuple(c.format(wire=250) for c in MAP_LUTS)
    assert f"abc9 -W {LUT_MAP_WIRE_DELAY_PS}" in lut_map_script(["-dsp"], "top").splitlines()


def test_another_map_luts_is_left_alone(monkeypatch, tmp_path):
    """When the installed step is not MAP_LUTS, the build runs synth_ice40 from map_ffram to the end."""
    monkeypatch.setattr(synth, "installed_map_luts", lambda: ("abc9 -W 300",))
    assert synth.lut_map_script(["-dsp"], "top") is None
    board = get_board("icebreaker")
    build_bitstream(BoardTop(board, 30, ToyCore), board, tmp_path, f_mhz=30, seed=1)
    script = (tmp_path / "top.ys").read_text()
    assert "abc9" not in script and script.rstrip().splitlines()[-2].endswith("-run map_ffram:")


def test_build_maps_luts_with_the_wire_delay(icebreaker_build):
    """The build's Yosys script stops synth_ice40 before map_luts and runs the step with abc9 -W
    LUT_MAP_WIRE_DELAY_PS, then the rest; the log shows abc9 ran once."""
    script = next(icebreaker_build.verilog.parent.glob("*.ys")).read_text()
    assert "-run map_ffram:map_luts" in script
    assert lut_map_script(["-dsp"], "top") in script and f"abc9 -W {LUT_MAP_WIRE_DELAY_PS}" in script
    assert icebreaker_build.logs["yosys-log"].read_text().count("Executing ABC9 pass") == 1


def test_seeds_share_one_synthesis(tmp_path):
    """build_bitstreams runs Yosys once and nextpnr and icepack once per seed, each in its own folder, on
    that one netlist; the seeds give different placements."""
    board = get_board("icebreaker")
    runs = build_bitstreams(BoardTop(board, 30, ToyCore), board, tmp_path, f_mhz=30, seeds=[1, 2], workers=2)
    assert [r.seed for r in runs] == [1, 2]
    assert [r.out_dir for r in runs] == [seed_dir(tmp_path, 1).resolve(), seed_dir(tmp_path, 2).resolve()]
    assert sorted(p.name for p in tmp_path.rglob("top.rpt")) == ["top.rpt"] and (tmp_path / "top.rpt").exists()
    for r in runs:
        assert r.verilog == (tmp_path / "top.v").resolve() and r.logs["yosys-log"] == (tmp_path / "top.rpt").resolve()
        assert r.logs["nextpnr-ice40-log"].parent == r.out_dir and r.bitstream.stat().st_size > 100_000
        assert r.tool_seconds["yosys"] == runs[0].tool_seconds["yosys"] and r.fmax_mhz > 0
    asc = [(r.out_dir / "top.asc").read_text() for r in runs]
    assert asc[0] != asc[1]


def test_a_seed_that_meets_the_clock_stops_the_later_seeds(tmp_path):
    """With stop_when_met, seed 1 meets 30 MHz, so seed 2 (waiting for the one worker) never runs."""
    board = get_board("icebreaker")
    runs = build_bitstreams(BoardTop(board, 30, ToyCore), board, tmp_path, f_mhz=30, seeds=[1, 2], workers=1,
                            stop_when_met=True)
    assert runs[0].timing_met and runs[0].bitstream.exists() and runs[1] is None
    assert runs[0].out_dir == seed_dir(tmp_path, 1).resolve() and not seed_dir(tmp_path, 2).exists()


def test_parse_nextpnr_report(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({
        "fmax": {"clk": {"achieved": 55.5, "constraint": 30.0}},
        "utilization": {
            "ICESTORM_LC": {"available": 7680, "used": 100},
            "ICESTORM_RAM": {"available": 32, "used": 2},
            "ICESTORM_PLL": {"available": 2, "used": 1},
            "SB_IO": {"available": 206, "used": 3},
        },
    }))
    rep = parse_nextpnr_report(path)
    assert rep.resources["lc"] == ResourceUse(100, 7680)
    assert rep.resources["ebr"] == ResourceUse(2, 32)
    assert rep.resources["dsp"] == ResourceUse(0, 0)  # HX parts have no DSP
    assert rep.fmax["clk"].achieved_mhz == 55.5 and rep.fmax["clk"].constraint_mhz == 30.0
    with pytest.raises(ZakidError):
        parse_nextpnr_report(tmp_path / "missing.json")


class MissingCellCore(wiring.Component):
    rx: In(1)
    tx: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.ghost = Instance("NO_SUCH_CELL", i_A=self.rx, o_Y=self.tx)
        return m


def test_yosys_failure_names_the_tool(tmp_path):
    board = get_board("icebreaker")
    with pytest.raises(ZakidError) as info:
        build_bitstream(BoardTop(board, 12, MissingCellCore), board, tmp_path, f_mhz=12)
    msg = str(info.value)
    assert msg.startswith("yosys failed") and "NO_SUCH_CELL" in msg


def test_nextpnr_failure_names_the_tool(tmp_path):
    # Nine 16x16 multipliers need nine SB_MAC16s; the UP5K has eight.
    board = get_board("icebreaker")
    with pytest.raises(ZakidError) as info:
        build_bitstream(BoardTop(board, 12, lambda: ToyCore(n_mults=9)), board, tmp_path, f_mhz=12)
    msg = str(info.value)
    assert msg.startswith("nextpnr-ice40 failed") and "ICESTORM_DSP" in msg


def test_require_timing(tmp_path):
    # 200 MHz from the PLL is far above what the toy core's multiplier path reaches.
    board = get_board("icebreaker")
    with pytest.raises(ZakidError, match=r"does not meet timing.*201 MHz.*nearest to 200.*--clock"):
        build_bitstream(BoardTop(board, 200, ToyCore), board, tmp_path, f_mhz=200,
                        require_timing=True)
    assert (tmp_path / "top.bin").stat().st_size > 0  # the bitstream is still written
