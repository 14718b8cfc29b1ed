"""What a configuration costs before it is built: device resources, and the roofline its cycles are
measured against.

Cycles need no model here: :func:`zakid_hw.cycle_model.cycles_per_run` is exact (every RTL test checks
it). Block RAM and SPRAM come from the memory plan (:func:`memory_plan`), which follows Yosys's own rule
for putting a memory in block RAM or in logic (:func:`ebr_blocks`). Logic cells
come from :func:`logic_cells`, a sum of the design's parts whose coefficients were fitted to real builds
(``python bench/calibrate_cost.py`` rebuilds them and writes ``bench/cost_calibration.json``; the tests
check the model against those builds and against a fresh one).
"""

from __future__ import annotations

import math

from rtl_gen.accelerator import weight_word_values
from rtl_gen.config import AccelConfig
from rtl_gen.controller import FIELDS, counted_levels
from rtl_gen.spram import spram_blocks

from . import schedule

#: logic cells per part of the design: ``python bench/calibrate_cost.py --fit`` on the builds recorded in
#: bench/cost_calibration.json and bench/models_results.json, each compiled again (the ones marked fixed
#: are set by hand: too few builds vary them)
LC = {
    "base": 257.8,         # host link, UART, controller, drain and bias stage, cycle counter, pipeline
    "lane": 20.0,          # per MAC lane: centring and padding multiplexers, read and weight registers (fixed)
    "acc_bit": 2.675,      # per lane and accumulator bit: accumulator, max compare, drain register (fixed)
    "lut_mult_bit": 17.54,  # per logic-cell lane and weight bit: a shift-and-add multiplier term
    "affine": 635.1,       # the affine requantizer's arithmetic (the DS-CNNs, some TFC and digits builds)
    "logic_rom_bit": 0.2335,  # per kept bit of a read-only memory (tables, biases) Yosys puts in logic cells
    "spram": 360.8,        # the SPI flash loader and SPRAM glue
    "descriptor_bit": 0.7975,  # per bit of the layer table that differs between layers (descriptor_bits)
    "loop_level": 179.4,     # per loop level with a counter of its own (rtl_gen.controller.counted_levels)
    # a "col" pair layer (schedule.col_pairs): per bit of bank B's delay line, and the rest (B's code
    # multiplexer, the controller's row skip and first-row flag); fixed from the DS-CNNs' builds with and
    # without them (the same design otherwise): 4,580 -> 4,700 logic cells (C=64), 4,415 -> 4,524 (C=32)
    "col_delay_bit": 1.0,
    "col": 43.0,
}
#: SPRAM bits per cycle per block, and EBR bits per cycle per block (16-bit read ports)
PORT_BITS = 16

#: EBR aspect ratios (depth, width) of SB_RAM40_4K
EBR_MODES = ((256, 16), (512, 8), (1024, 4), (2048, 2))
#: how Yosys's memory_libmap weighs a memory's mappings (its defaults, and ``cost 64`` in
#: techlibs/ice40/brams.txt): a block RAM costs 64, a bit in logic 1 when the memory is written and 1/16
#: when it is read-only, every extra address range adds half a read-multiplexer input per data bit and
#: half a write-enable decoder per enable; the cheapest mapping wins, logic on a tie
BLOCK_COST = 64
LOGIC_COST_RAM, LOGIC_COST_ROM = 1.0, 1.0 / 16
MUX_FACTOR = 0.5


def used_width(words, width: int) -> int:
    """Bit columns of a read-only memory that are not the same in every word (Yosys drops the others
    before it maps the memory)."""
    mask = (1 << width) - 1
    ones, zeros = mask, mask
    for v in words:
        v = int(v) & mask
        ones &= v
        zeros &= ~v & mask
    return width - bin(ones | zeros).count("1") if len(words) else 0


def ebr_blocks(depth: int, width: int, read_only: bool = True, write_enables: int = 1) -> int:
    """Block RAMs Yosys maps one memory of this shape to, 0 when it keeps the memory in logic (see
    BLOCK_COST; ``width`` counts only the columns it keeps, :func:`used_width`)."""
    if depth == 0 or width == 0:
        return 0
    logic = int(depth * width * (LOGIC_COST_ROM if read_only else LOGIC_COST_RAM))
    best_cost, best_blocks = None, 0
    for d, w in EBR_MODES:
        ranges = math.ceil(depth / d)
        blocks = math.ceil(ranges * width / w)
        cost = BLOCK_COST * blocks + MUX_FACTOR * (ranges - 1) * width
        if not read_only and ranges > 1:
            cost += MUX_FACTOR * ranges * write_enables
        if best_cost is None or cost < best_cost:
            best_cost, best_blocks = cost, blocks
    return best_blocks if best_cost < logic else 0


def memory_plan(image: schedule.AccelImage, weights_in_spram: bool = False) -> dict:
    """Every memory of the design with its size and placement: ``ebr`` blocks or logic as Yosys decides
    (:func:`ebr_blocks`), or ``spram`` blocks for weights in SPRAM. Every memory but the activations is
    read-only."""
    mems = {  # name: (depth, declared width, words as integers or None for the written memory)
        "weights": (len(image.weight_words), image.weight_word_bits, weight_word_values(image)),
        "biases": (len(image.bias_values), max(1, image.b_width), image.bias_values),
        "activations": (image.act_words, 8 * image.lanes, None),
    }
    if image.requantizer == "affine":
        at = image.affine
        mems["lines"] = (len(at.consts), at.n0_width + at.d_width + at.out_bits,
                         [(n0 & ((1 << at.n0_width) - 1)) | (d << at.n0_width) | (n << (at.n0_width + at.d_width))
                          for n0, d, n in at.consts])
        stages, width = at.stages, at.e_width
    else:
        stages, width = image.threshold_stages, image.acc_width
    for s, stage in enumerate(stages):
        if s == 0:
            mems[f"thresholds{s}"] = (len(stage), width, stage)
        else:  # a word holds the two candidates that share a prefix (rtl_gen.requantizer.stage_memories)
            mask = (1 << width) - 1
            pairs = [(stage[i] & mask) | ((stage[i + 1] & mask) << width) for i in range(0, len(stage), 2)]
            mems[f"thresholds{s}"] = (len(pairs), 2 * width, pairs)
    plan = {}
    for name, (d, w, words) in mems.items():
        rom = words is not None
        kept = used_width(words, w) if rom else w
        blocks = ebr_blocks(d, kept, read_only=rom, write_enables=image.lanes)
        plan[name] = {"depth": d, "width": w, "bits": d * w, "kept_bits": d * kept, "read_only": rom,
                      "ebr": blocks, "spram": 0, "place": "ebr" if blocks else "logic"}
    if weights_in_spram:
        cols, rows = spram_blocks(image.weight_word_bits, len(image.weight_words))
        plan["weights"].update(ebr=0, spram=cols * rows, place="spram")
    return plan


def descriptor_bits(image) -> int:
    """Bits of the controller's layer table (:data:`rtl_gen.controller.FIELDS`, each as wide as its largest
    magnitude plus a sign) that are not the same in every layer: each one is logic that selects the
    running layer's value and loop or address logic that Yosys cannot fold into a constant. A dense
    model's table varies in a few fields, a CNN's in most."""
    total = 0
    for f in FIELDS:
        values = [getattr(d, f) for d in image.layers]
        width = max(abs(v) for v in values).bit_length() + 1
        total += used_width([v & ((1 << width) - 1) for v in values], width)
    return total


def lc_terms(image, config: AccelConfig, plan: dict) -> dict:
    """How many of each part of :data:`LC` the design has."""
    delay = max(schedule.col_delays(image.layers))  # a "col" pair layer's delay line (0: none)
    return {
        "base": 1,
        "lane": config.multipliers,
        "acc_bit": config.multipliers * image.acc_width,
        "lut_mult_bit": (config.lanes - config.dsp_lanes) * image.w_width,
        "affine": int(image.requantizer == "affine"),
        "logic_rom_bit": sum(m["kept_bits"] for m in plan.values() if m["read_only"] and m["place"] == "logic"),
        "spram": int(config.weights_in_spram),
        "descriptor_bit": descriptor_bits(image),
        "loop_level": len(counted_levels(image.layers)),
        "col_delay_bit": 8 * (delay + 1) if delay else 0,
        "col": int(delay > 0),
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


def layer_rooflines(config: AccelConfig, image, plan: dict, layers) -> list[int]:
    """Each layer's roofline: its MACs over the lanes the weight memory feeds (:func:`fed_lanes`), twice
    as many products for a layer that runs two pixels on each weight word (``pair``)."""
    fed = fed_lanes(config, image, plan)
    return [layer_roofline(l.macs, fed * d.step_pixels) for l, d in zip(layers, image.layers)]


def device_multipliers(device, w_bits: int) -> int:
    """int8 products per cycle a device can do at most: two per DSP block in the two-8x8 mode (FACTS.md);
    devices without DSPs are counted with their logic-cell lanes (16)."""
    return 2 * device.dsp if device.dsp and w_bits <= 8 else (device.dsp or 16)


def device_limit(device, macs: int, w_bits: int) -> int:
    """Fewest cycles ``macs`` multiply-accumulates can take on the device (:func:`device_multipliers`)."""
    return layer_roofline(macs, device_multipliers(device, w_bits))


def efficiency(roofline: int, cycles: int) -> float:
    """The share of a roofline a measured or modelled cycle count reaches (to three decimals)."""
    return round(roofline / cycles, 3)
