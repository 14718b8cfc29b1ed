"""What a configuration costs before it is built: device resources, and the roofline its cycles are
measured against.

Cycles need no model here: :func:`zakid_hw.schedule.cycles_per_inference` is exact (every RTL test checks
it). Block RAM and SPRAM come from the memory plan (:func:`zakid_hw.compiler.memory_plan`). Logic cells
come from :func:`logic_cells`, a sum of the design's parts whose coefficients were fitted to real builds
(``python bench/calibrate_cost.py`` rebuilds them and writes ``bench/cost_calibration.json``; the tests
check the model against those builds and against a fresh one).
"""

from __future__ import annotations

import math

from rtl_gen.config import AccelConfig

#: logic cells per part of the design (fitted to the builds in bench/cost_calibration.json)
LC = {
    "base": 1605.0,        # host link, UART, controller, drain and bias stage, cycle counter, pipeline
    "lane": 20.0,          # per MAC lane: centring and padding multiplexers, read and weight registers (fixed)
    "acc_bit": 0.89,       # per lane and accumulator bit: accumulator, max compare, drain register
    "lut_mult_bit": 19.7,  # per logic-cell lane and weight bit: a shift-and-add multiplier term
    "mux_bit": 0.0,        # per activation word bit and block RAM row beyond the first (fitted: negligible)
    "affine": 300.0,       # the affine requantizer's extra arithmetic over whole tables (fixed)
    "logic_table_bit": 1.0,  # per bit of requantizer tables kept in logic cells (fixed)
    "spram": 407.0,        # the SPI flash loader and SPRAM glue
}
#: SPRAM bits per cycle per block, and EBR bits per cycle per block (16-bit read ports)
PORT_BITS = 16


def ebr_rows(depth: int, width: int) -> int:
    """Rows of block RAM a memory is split into (Yosys picks the widest mode that holds the width)."""
    from .compiler import EBR_MODES
    for d, w in reversed(EBR_MODES):
        if w >= min(width, 16):
            return math.ceil(depth / d)
    return math.ceil(depth / 256)


def lc_terms(image, config: AccelConfig, plan: dict) -> dict:
    """How many of each part of :data:`LC` the design has."""
    acts = plan["activations"]
    return {
        "base": 1,
        "lane": config.lanes,
        "acc_bit": config.lanes * image.acc_width,
        "lut_mult_bit": (config.lanes - config.dsp_lanes) * image.w_width,
        "mux_bit": acts["width"] * max(0, ebr_rows(acts["depth"], acts["width"]) - 1),
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
