"""The compile flow shared by ``build``, ``sim`` and ``run``: ONNX -> IR -> passes -> program -> memory
image + configuration, with the fit check against the chosen device."""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field, replace

import numpy as np

from boards.boards import Board, select_board
from boards.pll import pll_config
from rtl_gen.config import AccelConfig

from . import explore, passes, schedule
from .errors import ZakidError
from .ir import Graph
from .onnx_import import load_model

#: default clock per device family member: what nextpnr closes for the generated designs with margin
#: (bench/models_results.md: on the UP5K every reference model closes 40.5 MHz; on the HX8K, with no DSP
#: blocks and a faster fabric, the digits MLP and TFC-w2a2 close 60 MHz at 73.4 and 100.2 MHz; the HX1K
#: has the HX8K's fabric)
DEFAULT_CLOCK_MHZ = {"up5k": 40.5, "hx8k": 60.0, "hx1k": 60.0}
#: the default for a design predicted to use at most SMALL_DESIGN_FILL of the device's logic cells: less
#: congested, it closes a faster clock. Measured on the UP5K at 49.5 MHz at 0eda1a9, seeds 1 and 2
#: (``zakid-hw build MODEL --fpga ice40 --clock 49.5 --seeds 2``): the digits MLP (61 % of the logic cells)
#: 51.96 and 53.11 MHz, with ``--batch 8`` 50.64 and 48.95, the autoencoder 52.65 and 52.69; at 50.25 MHz
#: the digits MLP --batch 8 reached 50.72 and 52.23. Above the line the default stays: in the benchmark at
#: b189163 the C=64 DS-CNN's seed 1 reached 42.74 MHz, under the PLL's next step (42.75), and mnist-8's
#: Fmax moves by about 10 % with small changes to its netlist (bench/README, "Clock")
SMALL_DESIGN_CLOCK_MHZ = {"up5k": 49.5}
SMALL_DESIGN_FILL = 0.70
DEFAULT_BAUD = 115200
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
    designs: list = field(default_factory=list)  # every configuration considered (explore.Design)
    candidates: list = field(default_factory=list)  # the configurations asked for (explore.Candidate; designs
                                                    # leaves out two-pixel ones where no layer pairs)
    chosen: explore.Design | None = None          # the one of them this is
    objective: str = "latency"

    @property
    def predicted(self) -> dict:
        """Predicted resources of the chosen configuration (:mod:`zakid_hw.cost_model`)."""
        return self.chosen.resources

    def with_clock(self, f_mhz: float, at_most: bool = False) -> "Compiled":
        """The same design at another clock (see :func:`clock_and_divisor`; UART divisor recomputed)."""
        f_actual, divisor = clock_and_divisor(self.board, f_mhz, self.baud, at_most=at_most)
        return replace(self, config=replace(self.config, clock_mhz=f_actual, uart_divisor=divisor))

    @property
    def in_dtype(self) -> str:
        return self.program.graph.tensors[self.program.accel_in].dtype

    @property
    def out_dtype(self) -> str:
        """How the host reads output bytes (raw accumulator bytes read as uint8)."""
        return self.program.out_code_dtype


def signature_of(image: schedule.AccelImage) -> int:
    """32-bit identifier of a compiled model (weights, biases, thresholds, layer table)."""
    h = zlib.crc32(repr((image.weight_words, image.bias_values, image.threshold_stages,
                         [vars(d) for d in image.layers], image.lanes, image.requantizer)).encode())
    return h & 0xFFFFFFFF


def low_bit(program: schedule.Program) -> bool:
    """Weights of at most LUT_WEIGHT_BITS bits multiply in logic cells: a product is a couple of adds, a
    DSP block would be wasted on it."""
    return program.w_width <= LUT_WEIGHT_BITS


def default_lanes(board: Board, program: schedule.Program) -> int:
    """The lane count of the design the tool falls back to when no configuration fits (its fit problems are
    the ones reported): LOW_BIT_LANES for low-bit weights, else one lane per DSP block (8 on a device
    without), never more than twice the widest layer needs."""
    widest = max(l.n for l in program.layers)
    lanes = LOW_BIT_LANES if low_bit(program) else board.device.dsp or 8
    while lanes > 1 and lanes // 2 >= widest:
        lanes //= 2
    return lanes


def compile_model(model_path, *, calibration=None, fpga=None, device=None, board=None, lanes=None,
                  dsp_pack=None, clock_mhz=None, baud=DEFAULT_BAUD, uart_divisor=None, weights="auto",
                  requantizer="auto", objective="latency", check_fit=True, pixels=None, batch=1) -> Compiled:
    """Import, lower and schedule a model, and pick its configuration for a board: every candidate
    configuration (:mod:`zakid_hw.explore`) is costed and the fastest that fits (``objective="latency"``) or
    the smallest (``"area"``) is taken. ``lanes``, ``dsp_pack`` (1 or 2 int8 products per DSP block),
    ``pixels`` (1 or 2 output pixels per weight word), ``weights`` ("ebr" or "spram") and ``requantizer`` ("tables" or "affine", see
    :mod:`zakid_hw.threshold_tables`) pin a dimension instead ("auto" or None leaves it open).
    ``check_fit=False`` lets a design that is too big for the device still be simulated. ``batch`` > 1 builds
    for runs of that many inferences at once (models of dense layers; see :func:`schedule.make_program`)."""
    brd = select_board(fpga, device, board)  # check names before the (slower) import
    if baud is None or not baud > 0:
        raise ZakidError(f"--baud must be a positive UART baud rate (e.g. 115200), got {baud}")
    if lanes is not None and (lanes < 1 or lanes & (lanes - 1)):
        raise ZakidError(f"--lanes must be a power of two (1, 2, 4, 8, 16, ...), got {lanes}")
    if weights not in ("auto", "ebr", "spram"):
        raise ZakidError(f"--weights must be auto, ebr or spram, got {weights!r}")
    if weights == "spram" and not brd.device.spram:
        raise ZakidError(f"--weights spram: device {brd.device.name} has no SPRAM")
    if requantizer not in ("auto", "tables", "affine"):
        raise ZakidError(f"--requantizer must be auto, tables or affine, got {requantizer!r}")
    explore.order_key(objective)  # checks the name
    graph = load_model(model_path, calibration=calibration)
    lowered = passes.lower_for_hardware(graph)
    sketch = schedule.make_program(lowered, 1, batch=batch)  # the layers, before the lane count is known
    clock_auto = clock_mhz is None and uart_divisor is None
    f_actual, divisor = clock_and_divisor(brd, DEFAULT_CLOCK_MHZ.get(brd.device.name, brd.osc_mhz)
                                          if clock_mhz is None else float(clock_mhz), baud, uart_divisor)
    base = AccelConfig(clock_mhz=f_actual, uart_divisor=divisor)
    cands = explore.candidates(brd, sketch, lanes=lanes, dsp_pack=dsp_pack, weights=weights,
                               requantizer=requantizer, low_bit=low_bit(sketch), pixels=pixels)
    designs = explore.evaluate(brd, lowered, cands, base_config=base, batch=batch, clock_for=(
        (lambda lc: clock_and_divisor(brd, automatic_clock_mhz(brd, lc), baud)) if clock_auto else None))
    if not designs:
        raise ZakidError("--pixels 2: no layer of this model can run two output pixels at once (that needs a "
                         "convolution with at least twice as many steps as lanes that is either pointwise (1x1 "
                         "kernel, stride 1, no padding) with input channels a multiple of the lanes, or has column "
                         "stride 1, an even number of output columns and input channels a multiple of the lanes "
                         "or one (then with column dilation 1))")
    best = explore.choose(designs, objective)
    if best is None:
        # report the problems of the plainest design: the default lane count, saving the most block RAM; or the
        # fewest lanes, when even those need more logic cells than the device has (fewer lanes would not help)
        n = default_lanes(brd, sketch) if lanes is None else lanes
        fewest = min(designs, key=lambda d: (d.candidate.lanes, d.resources["lc"]))
        if lanes is None and explore.too_many_logic_cells(fewest.resources, brd.device):
            n = fewest.candidate.lanes
        best = min(designs, key=lambda d: (d.candidate.lanes != n, d.candidate.dsp_pack, d.candidate.pixels, len(d.problems),
                                           d.resources["ebr"]))
        if check_fit:
            hint = (f" With --batch {batch} the activations of {batch} inferences are kept at once: a smaller "
                    "batch needs less memory." if batch > 1 else "")
            raise ZakidError(f"The model does not fit the {brd.device.part} on board {brd.name}: "
                             + "; ".join(best.problems) + "." + hint)
    return Compiled(str(model_path), graph, lowered, best.program, best.image, best.config, brd, best.plan,
                    signature_of(best.image), clock_auto=clock_auto, baud=baud,
                    designs=designs, candidates=cands, chosen=best, objective=objective)


def clock_and_divisor(board: Board, f_mhz: float, baud: float, uart_divisor: int | None = None, *,
                      at_most: bool = False) -> tuple[float, int]:
    """The clock ``board`` makes for ``f_mhz`` (its oscillator, or the PLL's nearest frequency, with
    ``at_most`` the nearest not above ``f_mhz``) and the UART divisor there (``uart_divisor`` if given)."""
    if math.isclose(f_mhz, board.osc_mhz):
        f_actual = board.osc_mhz
    else:
        f_actual = pll_config(board.osc_mhz, f_mhz, at_most=at_most).f_out
    return f_actual, uart_divisor or max(4, round(f_actual * 1e6 / baud))


def automatic_clock_mhz(board: Board, lc: int) -> float:
    """The clock a design predicted to use ``lc`` logic cells runs at when none is asked for: the device's
    default, or its faster one for a small design (:data:`SMALL_DESIGN_CLOCK_MHZ`)."""
    dev = board.device
    fast = SMALL_DESIGN_CLOCK_MHZ.get(dev.name)
    if fast and lc <= SMALL_DESIGN_FILL * dev.logic_cells:
        return fast
    return DEFAULT_CLOCK_MHZ.get(dev.name, board.osc_mhz)


def load_calibration(path):
    if path is None:
        return None
    try:
        return np.load(path, allow_pickle=False)
    except Exception as e:  # numpy raises several types for a bad file
        raise ZakidError(f"cannot read calibration data {path}: {e}") from None
