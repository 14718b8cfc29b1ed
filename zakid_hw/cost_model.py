"""What a configuration costs before it is built: device resources, and the roofline its cycles are
measured against.

Cycles need no model here: :func:`zakid_hw.schedule.cycles_per_inference` is exact (every RTL test checks
it). Block RAM and SPRAM come from the memory plan (:func:`memory_plan`). Logic cells
come from :func:`logic_cells`, a sum of the design's parts whose coefficients were fitted to real builds
(``python bench/calibrate_cost.py`` rebuilds them and writes ``bench/cost_calibration.json``; the tests
check the model against those builds and against a fresh one).
"""

from __future__ import annotations

import math

from rtl_gen.config import AccelConfig
from rtl_gen.spram import spram_blocks

from . import schedule

#: logic cells per part of the design: ``python bench/calibrate_cost.py --fit`` on the builds recorded in
#: bench/cost_calibration.json and bench/models_results.json (the ones marked fixed are set by hand)
LC = {
    "base": 1042.0,        # host link, UART, controller, drain and bias stage, cycle counter, pipeline
    "lane": 20.0,          # per MAC lane: centring and padding multiplexers, read and weight registers (fixed)
    "acc_bit": 2.675,      # per lane and accumulator bit: accumulator, max compare, drain register
    "lut_mult_bit": 19.28,  # per logic-cell lane and weight bit: a shift-and-add multiplier term
    "affine": 300.0,       # the affine requantizer's extra arithmetic over whole tables (fixed)
    "logic_table_bit": 1.0,  # per bit of requantizer tables kept in logic cells (fixed)
    "spram": 626.4,        # the SPI flash loader and SPRAM glue
}
#: SPRAM bits per cycle per block, and EBR bits per cycle per block (16-bit read ports)
PORT_BITS = 16

#: requantizer stage memories smaller than this Yosys maps to logic (seen on UP5K builds: 704 bits in
#: logic, 1408 bits in block RAM)
SMALL_TABLE_BITS = 1024
#: EBR aspect ratios (depth, width) of SB_RAM40_4K
EBR_MODES = ((256, 16), (512, 8), (1024, 4), (2048, 2))


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


def lc_terms(image, config: AccelConfig, plan: dict) -> dict:
    """How many of each part of :data:`LC` the design has."""
    return {
        "base": 1,
        "lane": config.lanes,
        "acc_bit": config.lanes * image.acc_width,
        "lut_mult_bit": (config.lanes - config.dsp_lanes) * image.w_width,
        "affine": int(image.requantizer == "affine"),
        "logic_table_bit": sum(m["bits"] for n, m in plan.items()
                               if (n.startswith("thresholds") or n == "lines") and m["place"] == "logic"),
        "spram": int(config.weights_in_spram),
    }


def logic_cells(image, config: AccelConfig, plan: dict) -> int:
    """Predicted nextpnr ``ICESTORM_LC`` count of the whole design (accelerator and host link)."""
    return round(sum(LC[k] * n for k, n in lc_terms(image, config, plan).items()))


def resources(image, config: AccelConfig, plan: dict) -> dict:
    """Predicted ``lc``, ``dsp``, ``ebr`` and ``spram`` use, keyed like a build report's resources."""
    return {"lc": logic_cells(image, config, plan), "dsp": config.dsp_blocks,
            "ebr": sum(m["ebr"] for m in plan.values()), "spram": sum(m["spram"] for m in plan.values())}


def fed_lanes(config: AccelConfig, image, plan: dict) -> int:
    """MAC lanes the weight memory can feed every cycle: all of them from block RAM (one word per cycle
    whatever its width), at most SPRAM blocks x 16 bits / weight bits from SPRAM."""
    if not config.weights_in_spram:
        return config.lanes
    return min(config.lanes, plan["weights"]["spram"] * PORT_BITS // max(1, image.w_width))


def layer_roofline(macs: int, lanes: int) -> int:
    """Fewest cycles a layer of ``macs`` multiply-accumulates can take on ``lanes`` multipliers."""
    return -(-macs // max(1, lanes))


def device_multipliers(device, w_bits: int) -> int:
    """int8 products per cycle a device can do at most: two per DSP block in the two-8x8 mode (FACTS.md);
    devices without DSPs are counted with their logic-cell lanes (16)."""
    return 2 * device.dsp if device.dsp and w_bits <= 8 else (device.dsp or 16)
