"""The compile flow shared by ``build``, ``sim`` and ``run``: ONNX -> IR -> passes -> program -> memory
image + configuration, with the fit check against the chosen device."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, replace

import numpy as np

from boards.boards import Board, select_board
from boards.pll import pll_config
from rtl_gen.config import AccelConfig
from rtl_gen.spram import spram_blocks

from . import passes, schedule
from .errors import ZakidError
from .ir import Graph
from .onnx_import import load_model

#: default clock per device family member: what nextpnr closes for the generated design with margin
DEFAULT_CLOCK_MHZ = {"up5k": 37.5, "hx8k": 36.0, "hx1k": 36.0}
DEFAULT_BAUD = 115200
#: requantizer stage memories smaller than this Yosys maps to logic (seen on UP5K builds: 704 bits in
#: logic, 1408 bits in block RAM)
SMALL_TABLE_BITS = 1024
#: EBR aspect ratios (depth, width) of SB_RAM40_4K
EBR_MODES = ((256, 16), (512, 8), (1024, 4), (2048, 2))
#: logic cells a shift-and-add 9x8 multiplier lane costs, measured on UP5K builds
LUT_LANE_LC = 110
#: weights this narrow (bipolar, ternary, 2-bit) always multiply in logic cells, in this many lanes
LUT_WEIGHT_BITS = 2
LOW_BIT_LANES = 16


@dataclass
class Compiled:
    model_path: str
    graph: Graph           # as imported
    lowered: Graph         # after the hardware passes
    program: schedule.Program
    image: schedule.AccelImage
    config: AccelConfig
    board: Board
    memories: dict         # name -> {"bits", "ebr"}
    signature: int
    clock_auto: bool = False  # no clock was asked for: build may lower it to what place and route closes
    baud: float = DEFAULT_BAUD

    def with_clock(self, f_mhz: float) -> "Compiled":
        """The same design at another clock (the PLL's nearest frequency; UART divisor recomputed)."""
        f_actual = pll_config(self.board.osc_mhz, f_mhz).f_out
        divisor = max(4, round(f_actual * 1e6 / self.baud))
        return replace(self, config=replace(self.config, clock_mhz=f_actual, uart_divisor=divisor))

    @property
    def in_dtype(self) -> str:
        return self.program.graph.tensors[self.program.accel_in].dtype

    @property
    def out_dtype(self) -> str:
        """How the host reads output bytes (raw accumulator bytes read as uint8)."""
        return self.program.out_code_dtype


def ebr_blocks(depth: int, width: int) -> int:
    """Block RAMs Yosys needs for one memory of this shape (best aspect ratio)."""
    if depth == 0 or width == 0:
        return 0
    return min(math.ceil(width / w) * math.ceil(depth / d) for d, w in EBR_MODES)


def memory_plan(image: schedule.AccelImage, weights_in_spram: bool = False) -> dict:
    """Every memory of the design with its size and placement (``ebr`` blocks, or ``spram`` blocks for
    weights in SPRAM); memories of fewer than 32 words, and requantizer stages of fewer than
    SMALL_TABLE_BITS bits, end up in logic."""
    mems = {
        "weights": (len(image.weight_words), image.weight_word_bits),
        "biases": (len(image.bias_values), image.b_width),
        "activations": (image.act_words, 8 * image.lanes),
    }
    if image.requantizer == "affine":
        at = image.affine
        mems["lines"] = (len(at.consts), at.n0_width + at.d_width + at.out_bits)
        stages, width = at.stages, at.e_width
    else:
        stages, width = image.threshold_stages, image.acc_width
    for s, stage in enumerate(stages):
        mems[f"thresholds{s}"] = (len(stage), width)
    plan = {name: {"depth": d, "width": w, "bits": d * w, "ebr": ebr_blocks(d, w), "spram": 0, "place": "ebr"}
            for name, (d, w) in mems.items()}
    for name, m in plan.items():
        small_table = (name.startswith("thresholds") or name == "lines") and m["bits"] < SMALL_TABLE_BITS
        if name != "weights" and (m["depth"] < 32 or small_table):
            m.update(ebr=0, place="logic")  # a few words: Yosys keeps them in logic
    if weights_in_spram:
        cols, rows = spram_blocks(image.weight_word_bits, len(image.weight_words))
        plan["weights"].update(ebr=0, spram=cols * rows, place="spram")
    return plan


def signature_of(image: schedule.AccelImage) -> int:
    """32-bit identifier of a compiled model (weights, biases, thresholds, layer table)."""
    h = zlib.crc32(repr((image.weight_words, image.bias_values, image.threshold_stages,
                         [vars(d) for d in image.layers], image.lanes, image.requantizer)).encode())
    return h & 0xFFFFFFFF


def lut_lane_lc(w_bits: int) -> int:
    """Logic cells of one shift-and-add MAC lane: a term per weight bit."""
    return math.ceil(LUT_LANE_LC * w_bits / 8)


def low_bit(program: schedule.Program) -> bool:
    """Weights of at most LUT_WEIGHT_BITS bits multiply in logic cells: a product is a couple of adds, a
    DSP block would be wasted on it."""
    return program.w_width <= LUT_WEIGHT_BITS


def default_lanes(board: Board, program: schedule.Program) -> int:
    """LOW_BIT_LANES logic-cell lanes for low-bit weights; otherwise one lane per DSP block on a device
    with DSPs (logic-cell lanes cost about LUT_LANE_LC each; ask for them with ``lanes``), 8 logic-cell
    lanes on a device without. Never more than twice the widest layer needs."""
    widest = max(l.n for l in program.layers)
    lanes = LOW_BIT_LANES if low_bit(program) else board.device.dsp or 8
    while lanes > 1 and lanes // 2 >= widest:
        lanes //= 2
    return lanes


def fit_check(board: Board, config: AccelConfig, plan: dict, w_bits: int = 8) -> None:
    dev = board.device
    problems = []
    ebr = sum(m["ebr"] for m in plan.values())
    if ebr > dev.ebr:
        biggest = sorted(plan.items(), key=lambda kv: -kv[1]["ebr"])[:3]
        detail = ", ".join(f"{n} {m['bits'] / 8192:.1f} KB ({m['ebr']} blocks)" for n, m in biggest)
        problems.append(f"needs {ebr} block RAMs ({sum(m['bits'] for m in plan.values() if m['place'] == 'ebr') / 8192:.1f} KB; "
                        f"largest: {detail}), device {dev.name} has {dev.ebr} ({dev.ebr_bits / 8192:.0f} KB of block RAM"
                        f"{'; the weights are already in SPRAM' if plan['weights']['place'] == 'spram' else ''}"
                        f"{'' if 'lines' in plan else '; --requantizer affine stores the thresholds in far fewer bits'})")
    spram = sum(m["spram"] for m in plan.values())
    if spram > dev.spram:
        problems.append(f"the weights need {spram} SPRAM blocks ({plan['weights']['bits'] / 8192:.1f} KB as "
                        f"{plan['weights']['depth']} words of {plan['weights']['width']} bits), device {dev.name} has "
                        f"{dev.spram}")
    if config.dsp_lanes > dev.dsp:
        problems.append(f"asks for {config.dsp_lanes} DSP lanes, device {dev.name} has {dev.dsp} DSP blocks")
    lut_lc = (config.lanes - config.dsp_lanes) * lut_lane_lc(w_bits)
    if lut_lc > 0.6 * dev.logic_cells:
        problems.append(f"{config.lanes - config.dsp_lanes} logic-cell MAC lanes need about {lut_lc} logic "
                        f"cells, more than 60% of the {dev.logic_cells} of device {dev.name}; use fewer --lanes")
    if problems:
        raise ZakidError(f"The model does not fit the {dev.part} on board {board.name}: " + "; ".join(problems) + ".")


def compile_model(model_path, *, calibration=None, fpga=None, device=None, board=None, lanes=None,
                  clock_mhz=None, baud=DEFAULT_BAUD, uart_divisor=None, weights="auto", requantizer="auto",
                  check_fit=True) -> Compiled:
    """Import, lower, schedule and size a model for a board. ``weights``: "auto" (block RAM, or SPRAM
    when block RAM is too small and the device has SPRAM), "ebr" or "spram". ``requantizer``: "auto"
    (whole threshold tables, or affine tables when block RAM is still too small), "tables" or "affine"
    (see :mod:`zakid_hw.threshold_tables`). ``check_fit=False`` lets a design that is too big for the
    device still be simulated."""
    brd = select_board(fpga, device, board)  # check names before the (slower) import
    if baud is None or not baud > 0:
        raise ZakidError(f"--baud must be a positive UART baud rate (e.g. 115200), got {baud}")
    graph = load_model(model_path, calibration=calibration)
    lowered = passes.lower_for_hardware(graph)
    sketch = schedule.make_program(lowered, 1)  # the layers, before the lane count is known
    if lanes is not None and (lanes < 1 or lanes & (lanes - 1)):
        raise ZakidError(f"--lanes must be a power of two (1, 2, 4, 8, 16, ...), got {lanes}")
    n_lanes = default_lanes(brd, sketch) if lanes is None else lanes
    dsp_lanes = 0 if low_bit(sketch) else min(n_lanes, brd.device.dsp)
    program = schedule.make_program(lowered, n_lanes)
    f = DEFAULT_CLOCK_MHZ.get(brd.device.name, brd.osc_mhz) if clock_mhz is None else float(clock_mhz)
    f_actual = brd.osc_mhz if math.isclose(f, brd.osc_mhz) else pll_config(brd.osc_mhz, f).f_out
    divisor = uart_divisor or max(4, round(f_actual * 1e6 / baud))
    config = AccelConfig(lanes=n_lanes, dsp_lanes=dsp_lanes, clock_mhz=f_actual, uart_divisor=divisor)
    if weights not in ("auto", "ebr", "spram"):
        raise ZakidError(f"--weights must be auto, ebr or spram, got {weights!r}")
    if weights == "spram" and not brd.device.spram:
        raise ZakidError(f"--weights spram: device {brd.device.name} has no SPRAM")
    if requantizer not in ("auto", "tables", "affine"):
        raise ZakidError(f"--requantizer must be auto, tables or affine, got {requantizer!r}")
    image = schedule.memory_image(program, n_lanes, "affine" if requantizer == "affine" else "tables")
    plan = memory_plan(image)

    def too_big(p):
        return sum(m["ebr"] for m in p.values()) > brd.device.ebr

    if weights == "spram" or (weights == "auto" and brd.device.spram and too_big(plan)):
        # weights move to SPRAM, loaded from the configuration flash at start-up
        config = replace(config, weights_in_spram=True)
        plan = memory_plan(image, weights_in_spram=True)
    if requantizer == "auto" and too_big(plan):
        # the requantizer's tables shrink to a line plus a few bits per threshold
        image = replace(image, requantizer="affine")
        plan = memory_plan(image, weights_in_spram=config.weights_in_spram)
    if check_fit:
        fit_check(brd, config, plan, image.w_width)
    return Compiled(str(model_path), graph, lowered, program, image, config, brd, plan, signature_of(image),
                    clock_auto=clock_mhz is None and uart_divisor is None, baud=baud)


def load_calibration(path):
    if path is None:
        return None
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises several types for a bad file
        raise ZakidError(f"cannot read calibration data {path}: {e}") from None
