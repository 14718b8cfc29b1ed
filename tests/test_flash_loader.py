"""Weights in SPRAM, loaded from SPI flash: the flash byte layout, SpramMemory, SpiFlashLoader.

The Verilator bench loads several loader + SpramMemory channels from the cocotb flash model
(``sim/spi_flash_model.py``) with images built by ``zakid_hw.flash_image``, so the byte layout is checked end to
end; the SB_SPRAM256KA instances run on Yosys's own simulation model of the primitive.
"""

import random
import re
import subprocess
from pathlib import Path

import pytest
from amaranth.back import verilog
from amaranth.lib import wiring
from amaranth.hdl import Module
from amaranth.lib.wiring import In, Out

from rtl_gen.flash_loader import CMD_READ, CMD_RELEASE_POWER_DOWN, SpiFlashLoader, wake_cycles_for
from rtl_gen.spram import SpramMemory, ice40_sim_models
from sim.runner import simulate
from zakid_hw.errors import ZakidError
from zakid_hw.flash_image import (UP5K_BITSTREAM_BYTES, WEIGHTS_OFFSET, bytes_per_word, flash_image, pack_words,
                                  unpack_words, weights_from_image)
from zakid_hw.synth import tool_command

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------------
# flash_image: pure Python


def test_pack_words_layout():
    assert pack_words([0x1234, -1, -0x8000], 16) == bytes([0x34, 0x12, 0xFF, 0xFF, 0x00, 0x80])
    # 18 bits take 3 bytes; two's complement within 18 bits, bits above them are 0
    assert pack_words([-1, 0x2ABCD], 18) == bytes([0xFF, 0xFF, 0x03, 0xCD, 0xAB, 0x02])
    assert pack_words([5, -16], 5) == bytes([5, 16])
    assert bytes_per_word(64) == 8 and bytes_per_word(65) == 9 and bytes_per_word(1) == 1
    for bad in ([1 << 16], [-(1 << 15) - 1]):
        with pytest.raises(ValueError, match="does not fit 16 bits"):
            pack_words(bad, 16)


@pytest.mark.parametrize("word_bits", [1, 5, 8, 16, 18, 64])
def test_pack_unpack_round_trip(word_bits):
    rng = random.Random(word_bits)
    low, high = -(1 << (word_bits - 1)), (1 << (word_bits - 1)) - 1
    words = [low, high, 0, -1] + [rng.randint(low, high) for _ in range(50)]
    data = pack_words(words, word_bits)
    assert len(data) == len(words) * bytes_per_word(word_bits)
    assert unpack_words(data, word_bits, signed=True) == words
    assert unpack_words(data, word_bits) == [w % (1 << word_bits) for w in words]


def test_unpack_rejects_bad_data():
    with pytest.raises(ValueError, match="whole number"):
        unpack_words(bytes(5), 18)
    with pytest.raises(ValueError, match="above bit 17"):
        unpack_words(bytes([0, 0, 4]), 18)


def test_flash_image_pads_and_places_weights():
    bitstream = bytes(range(1, 11))
    weights = pack_words([1, -2, 300], 12)
    image = flash_image(bitstream, weights, offset=16)
    assert image[:10] == bitstream and image[10:16] == b"\xff" * 6 and image[16:] == weights
    assert weights_from_image(image, 3, 12, offset=16, signed=True) == [1, -2, 300]
    assert flash_image(bitstream, weights, offset=10)[10:] == weights  # a bitstream may end at the offset
    with pytest.raises(ValueError, match="ends before"):
        weights_from_image(image, 4, 12, offset=16)
    # the default offset leaves room for a UP5K bitstream
    full = flash_image(bytes(UP5K_BITSTREAM_BYTES), weights)
    assert len(full) == WEIGHTS_OFFSET + len(weights) and full[WEIGHTS_OFFSET:] == weights


def test_flash_image_refuses_overlap_and_overflow():
    with pytest.raises(ZakidError, match=r"bitstream \(11 bytes\) does not fit below .*0x00000A"):
        flash_image(bytes(11), b"\1", offset=10)
    with pytest.raises(ZakidError, match="past the 16777216-byte flash"):
        flash_image(b"", bytes(2), offset=(1 << 24) - 1)
    with pytest.raises(ZakidError, match="past the 1024-byte flash"):
        flash_image(b"", bytes(25), offset=1000, flash_bytes=1024)


# ---------------------------------------------------------------------------------------------------------
# parameter checks


def test_spram_memory_limits():
    with pytest.raises(ValueError, match=r"needs 6 SB_SPRAM256KA blocks \(2 for the width x 3 for the depth.*has 4"):
        SpramMemory(20, 40000, primitive=True)
    with pytest.raises(ValueError, match="needs 5 SB_SPRAM256KA"):
        SpramMemory(65, 100, primitive=False)
    with pytest.raises(ValueError, match="width must be a positive int"):
        SpramMemory(0, 100, primitive=True)
    m = SpramMemory(16, 65536, primitive=True)  # four blocks stacked
    m._MustUse__silence = True
    assert (m.cols, m.rows, m.addr_width) == (1, 4, 16)


def test_loader_parameter_checks():
    with pytest.raises(ValueError, match="clk_div must be an int >= 1"):
        SpiFlashLoader(offset=0, n_words=4, word_bits=8, clk_div=0, wake_cycles=10)
    with pytest.raises(ValueError, match="past the 16 MiB"):
        SpiFlashLoader(offset=(1 << 24) - 7, n_words=4, word_bits=16, clk_div=1, wake_cycles=10)
    assert wake_cycles_for(12e6) == 37  # 3 us at 12 MHz = 36 cycles, plus one


# ---------------------------------------------------------------------------------------------------------
# Verilator: loader + memory channels, and SB_SPRAM256KA against the behavioural memory

PERIOD_NS = 10
WAKE = wake_cycles_for(1e9 / PERIOD_NS)

CHANNELS = [  # word_bits, n_words, offset, bitstream bytes, clk_div, SB_SPRAM256KA?
    dict(word_bits=16, n_words=40, offset=WEIGHTS_OFFSET, bitstream=UP5K_BITSTREAM_BYTES, clk_div=2, primitive=True),
    dict(word_bits=64, n_words=24, offset=0x2A5, bitstream=0x2A5, clk_div=1, primitive=True),
    dict(word_bits=18, n_words=33, offset=0x10001, bitstream=1000, clk_div=3, primitive=True),
    # behavioural memory; the padding bits above the 5 word bits are set in the flash: the loader ignores them
    dict(word_bits=5, n_words=50, offset=0x40, bitstream=7, clk_div=2, primitive=False, dirty_padding=True),
]
MEM = dict(width=17, depth=20000, ops=600, seed=3)  # 2 x 2 blocks: both splits


class LoaderTop(wiring.Component):
    """Per channel ``i``: SpiFlashLoader -> SpramMemory with ports ``c<i>_sck/cs_n/copi`` (out), ``c<i>_cipo``
    (in), ``c<i>_ready/we/waddr`` (out, the loader's), ``c<i>_raddr`` (in) and ``c<i>_rdata`` (out, the
    memory's read port). Plus two ``mem`` memories (SB_SPRAM256KA and behavioural) sharing ``m_we``,
    ``m_waddr``, ``m_wdata``, ``m_raddr`` (in), with outputs ``m_rdata_prim`` and ``m_rdata_beh``."""

    def __init__(self, channels, mem):
        self.channels, self.mem = channels, mem
        members = {}
        for i, c in enumerate(channels):
            aw = max(1, (c["n_words"] - 1).bit_length())
            members.update({f"c{i}_sck": Out(1), f"c{i}_cs_n": Out(1, init=1), f"c{i}_copi": Out(1),
                            f"c{i}_cipo": In(1), f"c{i}_ready": Out(1), f"c{i}_we": Out(1),
                            f"c{i}_waddr": Out(aw), f"c{i}_raddr": In(aw), f"c{i}_rdata": Out(c["word_bits"])})
        aw = (mem["depth"] - 1).bit_length()
        members.update({"m_we": In(1), "m_waddr": In(aw), "m_wdata": In(mem["width"]), "m_raddr": In(aw),
                        "m_rdata_prim": Out(mem["width"]), "m_rdata_beh": Out(mem["width"])})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        for i, c in enumerate(self.channels):
            m.submodules[f"loader{i}"] = ld = SpiFlashLoader(offset=c["offset"], n_words=c["n_words"],
                                                             word_bits=c["word_bits"], clk_div=c["clk_div"],
                                                             wake_cycles=WAKE)
            m.submodules[f"mem{i}"] = mem = SpramMemory(c["word_bits"], c["n_words"], c["primitive"])
            port = lambda name: getattr(self, f"c{i}_{name}")  # noqa: E731
            m.d.comb += [
                port("sck").eq(ld.sck), port("cs_n").eq(ld.cs_n), port("copi").eq(ld.copi), ld.cipo.eq(port("cipo")),
                port("ready").eq(ld.ready), port("we").eq(ld.mem_we), port("waddr").eq(ld.mem_addr),
                mem.we.eq(ld.mem_we), mem.waddr.eq(ld.mem_addr), mem.wdata.eq(ld.mem_data),
                mem.raddr.eq(port("raddr")), port("rdata").eq(mem.rdata),
            ]
        for kind, primitive in (("prim", True), ("beh", False)):
            m.submodules[f"m_{kind}"] = mem = SpramMemory(self.mem["width"], self.mem["depth"], primitive)
            m.d.comb += [mem.we.eq(self.m_we), mem.waddr.eq(self.m_waddr), mem.wdata.eq(self.m_wdata),
                         mem.raddr.eq(self.m_raddr), getattr(self, f"m_rdata_{kind}").eq(mem.rdata)]
        return m


def channel_words(i, c):
    rng = random.Random(100 + i)
    bits = c["word_bits"]
    low, high = (0, (1 << bits) - 1) if bits == 64 else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return [low, high] + [rng.randint(low, high) for _ in range(c["n_words"] - 2)]


def load_cycles(c):
    loader = SpiFlashLoader(offset=c["offset"], n_words=c["n_words"], word_bits=c["word_bits"], clk_div=c["clk_div"],
                            wake_cycles=WAKE)
    loader._MustUse__silence = True  # only asked for its timing, never elaborated
    return loader.load_cycles


@pytest.fixture(scope="module")
def sim_result():
    params = {"period_ns": PERIOD_NS, "mem": MEM, "channels": []}
    for i, c in enumerate(CHANNELS):
        rng = random.Random(i)
        bitstream = bytes(rng.randrange(256) for _ in range(c["bitstream"]))
        weights = pack_words(channel_words(i, c), c["word_bits"])
        if c.get("dirty_padding"):
            weights = bytes(b | 0xE0 for b in weights)
        image = flash_image(bitstream, weights, c["offset"])
        params["channels"].append({"image": image.hex(), "n_words": c["n_words"], "clk_div": c["clk_div"],
                                   "t_res1_ns": 3000, "limit_cycles": load_cycles(c) + 100})
    return simulate(LoaderTop(CHANNELS, MEM), name="flash_loader_top", test_module="flash_loader_bench",
                    test_dir=REPO / "sim" / "benches", build_dir=REPO / "build" / "sim", parameters=params,
                    timeout_s=300, extra_sources=[ice40_sim_models()])


@pytest.mark.parametrize("i", range(len(CHANNELS)))
def test_loader_fills_memory(sim_result, i):
    c, got = CHANNELS[i], sim_result["channels"][i]
    # the words as the memory holds them: the image's bytes (built by pack_words), assembled by the loader
    assert got["words"] == [w % (1 << c["word_bits"]) for w in channel_words(i, c)]
    assert got["writes"] == list(range(c["n_words"]))
    # ready rises the cycle after the last write, not before, and stays high
    assert got["ready_cycle"] == got["write_cycles"][-1] + 1 == load_cycles(c)
    assert not got["ready_dropped"]


@pytest.mark.parametrize("i", range(len(CHANNELS)))
def test_loader_spi_protocol(sim_result, i):
    c, got = CHANNELS[i], sim_result["channels"][i]
    assert got["violations"] == []
    wake, read = got["commands"]
    assert (wake["opcode"], wake["bits"]) == (CMD_RELEASE_POWER_DOWN, 8)
    assert (read["opcode"], read["address"], read["ignored"]) == (CMD_READ, c["offset"], False)
    assert read["data_bytes"] == c["n_words"] * bytes_per_word(c["word_bits"])
    assert read["bits"] == 32 + 8 * read["data_bytes"]
    assert wake["start_ns"] >= WAKE * PERIOD_NS  # CS high after reset first
    assert read["start_ns"] - wake["end_ns"] == WAKE * PERIOD_NS  # tRES1 (the model checks >= 3 us)
    # SCK = clock / (2 * clk_div), equal halves
    assert got["sck_high_ns"] == got["sck_low_ns"] == [c["clk_div"] * PERIOD_NS]


def test_spram_primitive_matches_behavioural(sim_result):
    r = sim_result["mem"]
    assert r["mismatches"] == []
    assert r["checked"] > 150 and r["rows_written"] == [0, 1]


# ---------------------------------------------------------------------------------------------------------
# synthesis


def test_spram_memory_synthesises_to_spram_cells(tmp_path):
    src = tmp_path / "spram_top.v"
    src.write_text(verilog.convert(SpramMemory(20, 30000, primitive=True), name="spram_top"))
    proc = subprocess.run([tool_command("yosys"), "-q", "-p", "synth_ice40 -top spram_top; tee -o stat.txt stat",
                           src.name], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stat = (tmp_path / "stat.txt").read_text()
    cells = dict((name, int(n)) for n, name in re.findall(r"^\s+(\d+)\s+(?:\S+\s+)?(SB_\w+)\s*$", stat, re.M))
    assert cells.get("SB_SPRAM256KA") == 4, stat  # 2 for 20 bits x 2 for 30000 words
    assert "SB_RAM40_4K" not in cells, stat
