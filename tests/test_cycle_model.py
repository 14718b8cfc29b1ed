"""The cycle model's arithmetic on its own (no simulation): the RTL tests check it against the simulated
core's counter on every design they run; these pin down how it adds up."""

from pathlib import Path

import numpy as np
import pytest

import irzoo
from zakid_hw import cycle_model, passes, schedule
from zakid_hw.compiler import compile_model

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits" / "digits_mlp_int8.onnx"


def test_digits_mlp_cycles_add_up():
    """124 cycles: the start cycle, 64 + 16 MAC steps on 16 lanes, and the waits for the requantized outputs."""
    image = compile_model(DIGITS).image
    assert cycle_model.layer_steps(image) == [64, 16]
    assert cycle_model.layer_cycles(image) == [80, 43]
    assert cycle_model.cycles_per_run(image) == 124
    first, last = image.layers
    # the second layer starts while the first drains: its step j reads output j, which leaves the drain j
    # cycles after the first and is written after the pipeline and the requantizer
    gap = cycle_model.PIPELINE_TO_DRAIN + image.requant_latency
    assert (first.chain_gap, last.chain_gap) == (0, gap) and cycle_model.layer_tails(image)[0] == gap
    assert 80 == 64 - 1 + gap
    # the last layer's tail: its 10 outputs leave the drain one per cycle, then the pipeline and requantizer
    assert cycle_model.layer_tails(image)[1] == (1 + 10 + cycle_model.PIPELINE_TO_DRAIN + image.requant_latency)
    assert 43 == 16 - 1 + cycle_model.layer_tails(image)[1]


def test_batch_shares_the_waits():
    """Eight inferences in one run take fewer than eight times one inference's cycles, and at least their
    MAC steps."""
    one = compile_model(DIGITS).image
    eight = compile_model(DIGITS, batch=8).image
    assert sum(cycle_model.layer_steps(eight)) == 8 * sum(cycle_model.layer_steps(one))
    run = cycle_model.cycles_per_run(eight)
    assert 8 * 80 < run < 8 * cycle_model.cycles_per_run(one)
    assert cycle_model.per_inference(run, 8) == pytest.approx(run / 8, abs=1e-3)


def test_per_inference_and_group_turn():
    assert cycle_model.per_inference(124, 1) == 124 and isinstance(cycle_model.per_inference(124, 1), int)
    assert cycle_model.per_inference(670, 8) == 83.75
    assert cycle_model.per_inference(10, 3) == 3.333
    assert cycle_model.group_turn(1) == cycle_model.GROUP_SPACING
    assert cycle_model.group_turn(cycle_model.GROUP_SPACING + 5) == cycle_model.GROUP_SPACING + 5


def test_only_pointwise_layers_chain():
    """A layer starts while the one before drains only if it is pointwise (one pixel at a time) and reads
    the previous layer's requantized output; its gap is at least MIN_CHAIN_GAP."""
    prog = schedule.make_program(passes.lower_for_hardware(irzoo.cnn_pw(np.random.default_rng(4))), 4, 1)
    image = schedule.memory_image(prog, 4)
    kinds = [l.kind for l in prog.layers]
    assert kinds == ["conv", "depthwise", "conv", "maxpool", "conv", "conv"]
    gaps = [d.chain_gap for d in image.layers]
    assert [bool(g) for g in gaps] == [False, False, True, False, True, False]
    assert all(g >= cycle_model.MIN_CHAIN_GAP for g in gaps if g)
    # a chained layer's gap is its previous layer's tail: the controller counts it instead of the drain
    tails = cycle_model.layer_tails(image)
    assert [tails[i - 1] for i, g in enumerate(gaps) if g] == [g for g in gaps if g]
    assert cycle_model.cycles_per_run(image) == 1 + sum(cycle_model.layer_cycles(image))
