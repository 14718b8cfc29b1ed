"""The controller alone in Amaranth's simulator. Its loop and descriptor registers have no reset (the idle
state loads them), so its step sequence must be the same for a start in the first idle cycle after an
inference and for a start right after a reset that cut an inference short."""

import re

import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.hdl import ResetInserter, Signal
from amaranth.sim import Simulator

import irzoo
from rtl_gen.controller import FIELDS, LOOP_COUNTS, Controller
from zakid_hw import cycle_model, passes, schedule

#: what the controller tells the rest of the accelerator every cycle
PORTS = ("busy", "issue", "first", "last", "layer", "rd_addr", "rd_valid", "w_addr", "o_addr", "ch_base",
         "group_n", "pair_b", "hold", "rd_b")


def run(make, lanes, pixels):
    g = passes.lower_for_hardware(make(np.random.default_rng(3), "int8"))
    image = schedule.memory_image(schedule.make_program(g, lanes, pixels), lanes, "tables")
    ctrl = Controller(descriptors=image.layers, lanes=lanes, w_depth=len(image.weight_words),
                      act_bytes=image.act_bytes)
    rst = Signal()
    traces = []

    async def bench(ctx):
        async def inference(cut_after=None):
            """Pulse start now; the ports of every cycle until done (or until ``cut_after`` cycles)."""
            trace = []
            ctx.set(ctrl.start, 1)
            await ctx.tick()
            ctx.set(ctrl.start, 0)
            while not ctx.get(ctrl.done):
                trace.append(tuple(ctx.get(getattr(ctrl, p)) for p in PORTS))
                if len(trace) == cut_after:
                    return trace
                await ctx.tick()
            return trace

        for _ in range(3):  # out of reset: idle
            await ctx.tick()
        traces.append(await inference())
        traces.append(await inference())  # started in the cycle done is seen: the first idle cycle
        cut = await inference(cut_after=len(traces[0]) // 2)
        assert len(cut) == len(traces[0]) // 2
        ctx.set(rst, 1)  # reset in the middle of the inference
        await ctx.tick()
        ctx.set(rst, 0)
        assert not ctx.get(ctrl.busy)
        traces.append(await inference())  # started in the first cycle after the reset

    sim = Simulator(ResetInserter(rst)(ctrl))
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()
    return image, traces


@pytest.mark.parametrize("make,lanes,pixels", [(irzoo.cnn_a, 4, 1), (irzoo.cnn_pw, 4, 2), (irzoo.cnn_pk, 8, 2),
                                               (irzoo.cnn_ps, 4, 2), (irzoo.cnn_pc, 4, 2), (irzoo.mlp_p, 4, 1),
                                               (irzoo.cnn_k1, 4, 1)])
def test_same_steps_after_an_inference_and_after_a_reset(make, lanes, pixels):
    image, (first, again, after_reset) = run(make, lanes, pixels)
    issue, layer = PORTS.index("issue"), PORTS.index("layer")
    issued = [sum(t[issue] for t in first if t[layer] == i) for i in range(len(image.layers))]
    assert issued == cycle_model.layer_steps(image)  # every step, once: the cycle model's MAC steps
    if pixels == 2:
        assert any(d.pair for d in image.layers)
    assert again == first
    assert after_reset == first


@pytest.mark.parametrize("make,lanes", [(irzoo.mlp_p, 4), (irzoo.cnn_a, 4), (irzoo.cnn_pc, 4)])
def test_only_levels_and_fields_that_vary_have_registers(make, lanes):
    """A loop level of one step in every layer has no counter (and the input channel level none when every
    layer has one kernel tap: it ends with the group); a descriptor field with the same value in every
    layer is a constant, not a register. A model of dense layers loses its kernel and pixel loops."""
    g = passes.lower_for_hardware(make(np.random.default_rng(3), "int8"))
    image = schedule.memory_image(schedule.make_program(g, lanes, 1), lanes, "tables")
    ctrl = Controller(descriptors=image.layers, lanes=lanes, w_depth=len(image.weight_words),
                      act_bytes=image.act_bytes)
    names = set(re.findall(r"^\s*wire .*\\(\S+)$", rtlil.convert(ctrl), re.M))
    d = image.layers
    one_tap = all(x.kw == x.kh == 1 for x in d)
    for n in LOOP_COUNTS:
        counted = any(getattr(x, n) != 1 for x in d) and not (n == "ci" and one_tap)
        assert (f"rem_{n}" in names) == counted, n
        assert (f"end_{n}" in names) == counted, n
    for f in FIELDS:
        assert (f"cfg_{f}" in names) == (len({getattr(x, f) for x in d}) > 1), f
    if make is irzoo.mlp_p:
        assert not {"rem_kw", "rem_kh", "rem_ow", "rem_oh", "rem_ci"} & names
        assert "rem_k" in names and "rem_groups" in names
