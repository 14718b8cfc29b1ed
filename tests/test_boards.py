"""Devices, boards, board selection and the PLL (no synthesis tools except the optional icepll check)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from boards import (BOARDS, BoardTop, PllClock, default_board_for, get_board,
                    get_device, pll_config, select_board)
from boards.pll import LIMIT_OUT, LIMIT_PFD, LIMIT_VCO
from zakid_hw.errors import ZakidError


# -- devices and boards ---------------------------------------------------------------------------

def test_device_table():
    up5k, hx8k, hx1k = get_device("up5k"), get_device("hx8k"), get_device("hx1k")
    assert (up5k.logic_cells, up5k.dsp, up5k.ebr, up5k.spram) == (5280, 8, 30, 4)
    assert (hx8k.logic_cells, hx8k.dsp, hx8k.ebr, hx8k.spram) == (7680, 0, 32, 0)
    assert (hx1k.logic_cells, hx1k.dsp, hx1k.ebr, hx1k.spram) == (1280, 0, 16, 0)
    assert up5k.ebr_bits == 30 * 4096 and up5k.spram_bits == 4 * 256 * 1024
    assert [d.nextpnr_flag for d in (up5k, hx8k, hx1k)] == ["--up5k", "--hx8k", "--hx1k"]
    assert get_device("iCE40UP5K") is up5k and get_device(" HX8K ") is hx8k


def test_boards_match_their_platforms():
    for board in BOARDS.values():
        plat = board.platform()
        assert plat.device == board.device.part
        assert plat.package.lower() == board.package
        assert plat.default_clk == board.clock_resource
        assert plat.default_clk_frequency == board.osc_mhz * 1e6
        name, number = board.uart_resource
        res = plat.lookup(name, number)
        dirs = {sub.name: sub.ios[0].dir for sub in res.ios if hasattr(sub, "name")}
        assert dirs["rx"] == "i" and dirs["tx"] == "o"
        assert plat._nextpnr_device_options[plat.device] == board.device.nextpnr_flag


def test_board_lookup_and_defaults():
    assert get_board("icebreaker").device.name == "up5k"
    assert get_board("ICE40_HX8K_B_EVN").name == "ice40-hx8k-b-evn"
    assert get_board("icestick").device.name == "hx1k"
    assert default_board_for("ice40").name == "icebreaker"
    assert default_board_for("ice40", "up5k").name == "icebreaker"
    assert default_board_for("ice40", "hx8k").name == "ice40-hx8k-b-evn"
    assert default_board_for("ice40", "hx1k").name == "icestick"
    assert select_board().name == "icebreaker"
    assert select_board(device="hx1k").name == "icestick"
    assert select_board("ice40", "hx8k", "ice40-hx8k-b-evn").name == "ice40-hx8k-b-evn"


@pytest.mark.parametrize("call, must_name", [
    (lambda: get_device("ecp5"), ["up5k", "hx8k", "hx1k"]),
    (lambda: get_board("ulx3s"), ["icebreaker", "ice40-hx8k-b-evn", "icestick"]),
    (lambda: default_board_for("xilinx"), ["ice40"]),
    (lambda: select_board(fpga="gowin"), ["ice40"]),
    (lambda: select_board(device="lp384"), ["up5k", "hx8k", "hx1k"]),
    (lambda: select_board(board="nope"), ["icebreaker", "icestick"]),
])
def test_unknown_names_list_the_known_ones(call, must_name):
    with pytest.raises(ZakidError) as info:
        call()
    for name in must_name:
        assert name in str(info.value)


def test_board_device_mismatch():
    with pytest.raises(ZakidError, match=r"icestick.*hx8k"):
        select_board(device="hx8k", board="icestick")
    with pytest.raises(ZakidError, match="icebreaker"):
        select_board(device="up5k", board="ice40-hx8k-b-evn")


# -- PLL configuration ----------------------------------------------------------------------------

# icepll -i 12 -o F (IceStorm) gives these: (DIVR, DIVF, DIVQ, FILTER_RANGE, achieved MHz).
ICEPLL_12MHZ = {
    30: (0, 79, 5, 1, 30.0),
    36: (0, 47, 4, 1, 36.0),
    40: (0, 52, 4, 1, 39.75),
    48: (0, 63, 4, 1, 48.0),
    25: (0, 66, 5, 1, 25.125),
    100: (0, 66, 3, 1, 100.5),
}


@pytest.mark.parametrize("f_req", sorted(ICEPLL_12MHZ))
def test_pll_config_icebreaker(f_req):
    cfg = pll_config(12, f_req)
    assert (cfg.divr, cfg.divf, cfg.divq, cfg.filter_range, cfg.f_out) == ICEPLL_12MHZ[f_req]
    assert abs(cfg.f_out - f_req) <= 0.01 * f_req
    assert 0 <= cfg.divr <= 15 and 0 <= cfg.divf <= 127 and 1 <= cfg.divq <= 6
    assert LIMIT_PFD[0] <= cfg.f_pfd <= LIMIT_PFD[1]
    assert LIMIT_VCO[0] <= cfg.f_vco <= LIMIT_VCO[1]
    assert cfg.f_out == pytest.approx(12 / (cfg.divr + 1) * (cfg.divf + 1) / 2 ** cfg.divq)
    assert cfg.feedback_path == "SIMPLE"


def test_pll_config_other_inputs():
    cfg = pll_config(100, 50)  # needs DIVR > 0 (PFD <= 133 MHz is fine, but VCO range forces it)
    assert cfg.f_out == pytest.approx(50)
    assert LIMIT_VCO[0] <= cfg.f_vco <= LIMIT_VCO[1]
    assert pll_config(12, LIMIT_OUT[0] + 0.5).f_out == pytest.approx(16.5)


def test_pll_config_at_most():
    """A rebuild asks for the fastest frequency not above a limit: 43.27 MHz from 12 MHz is 43.5 at the
    closest, 42.75 at most."""
    assert pll_config(12, 43.27).f_out == 43.5
    assert pll_config(12, 43.27, at_most=True).f_out == 42.75
    assert pll_config(12, 45, at_most=True).f_out == 45  # exactly reachable


@pytest.mark.parametrize("f_in, f_req", [(12, 5), (12, 400), (5, 30), (200, 30)])
def test_pll_config_unreachable(f_in, f_req):
    with pytest.raises(ZakidError, match="MHz"):
        pll_config(f_in, f_req)


def test_pll_config_too_far_from_request():
    # 12 MHz in: 40 MHz comes out as 39.75 MHz, 0.6% off; refused when only 0.1% is allowed.
    with pytest.raises(ZakidError, match="39.75"):
        pll_config(12, 40, max_error=0.001)


def _icepll():
    exe = shutil.which("yowasp-icepll") or Path(sys.executable).parent / "yowasp-icepll"
    return str(exe) if Path(exe).exists() else None


@pytest.mark.skipif(_icepll() is None, reason="yowasp-icepll not installed")
@pytest.mark.parametrize("f_in, f_req", [(12, 30), (12, 40), (12, 62.5), (12, 150),
                                         (100, 50), (25, 33), (48, 20)])
def test_pll_config_matches_icepll(f_in, f_req):
    out = subprocess.run([_icepll(), "-i", str(f_in), "-o", str(f_req)], capture_output=True,
                         text=True, timeout=300, check=True).stdout
    want = {k: int(v) for k, v in re.findall(r"^(DIVR|DIVF|DIVQ|FILTER_RANGE):\s+(\d+)", out, re.M)}
    achieved = float(re.search(r"F_PLLOUT:\s+([\d.]+) MHz \(achieved\)", out).group(1))
    cfg = pll_config(f_in, f_req, max_error=1.0)
    assert (cfg.divr, cfg.divf, cfg.divq, cfg.filter_range) == \
        (want["DIVR"], want["DIVF"], want["DIVQ"], want["FILTER_RANGE"])
    assert cfg.f_out == pytest.approx(achieved, abs=1e-3)  # icepll prints 3 decimals


# -- clock and top level elaborate onto each board (no tools run) ----------------------------------

class _Loop(wiring.Component):
    rx: In(1)
    tx: Out(1)

    def elaborate(self, platform):
        m = Module()
        m.d.sync += self.tx.eq(self.rx)
        return m


@pytest.mark.parametrize("board_name, primitive", [
    ("icebreaker", "SB_PLL40_PAD"),
    ("ice40-hx8k-b-evn", "SB_PLL40_CORE"),
    ("icestick", "SB_PLL40_CORE"),
])
@pytest.mark.parametrize("f_mhz", [12, 30])
def test_board_top_elaborates(tmp_path, board_name, primitive, f_mhz):
    board = get_board(board_name)
    top = BoardTop(board, f_mhz, _Loop)
    plan = board.platform().build(top, name="top", build_dir=str(tmp_path), do_build=False)
    rtlil = plan.files["top.il"]
    pcf = plan.files["top.pcf"]
    if f_mhz == board.osc_mhz:
        assert not top.clock.uses_pll and "SB_PLL40" not in rtlil
    else:
        assert top.clock.uses_pll and top.f_actual_mhz == pytest.approx(30.0)
        assert f"cell \\{primitive} " in rtlil
    assert "uart_0__rx__io" in pcf and "uart_0__tx__io" in pcf and "clk12_0__io" in pcf


def test_board_top_rejects_bad_core():
    class NoPorts(wiring.Component):
        a: In(1)

        def elaborate(self, platform):
            return Module()

    board = get_board("icebreaker")
    with pytest.raises(TypeError, match="rx"):
        board.platform().build(BoardTop(board, 12, NoPorts), do_build=False)


def test_pll_clock_rejects_bad_frequency():
    with pytest.raises(ZakidError):
        PllClock(get_board("icebreaker"), 500)
