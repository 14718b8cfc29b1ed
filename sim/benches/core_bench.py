"""cocotb bench for the accelerator core: writes input codes, starts, waits, reads output codes.

Parameters: ``rows`` (list of lists of input codes), ``out_len``, and for a core with its weights in SPRAM
``weights`` (the weight words as integers, written through the load port first).
Result: ``outputs`` (list of lists of raw 8-bit output codes), ``cycles`` (per row, from the core's
cycle counter) and ``sim_cycles`` (per row, counted by the bench from start to done).
"""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge

from sim.runner import bench_params, bench_result


async def reset(dut):
    dut.rst.value = 1
    dut.in_we.value = 0
    dut.start.value = 0
    dut.out_addr.value = 0
    for _ in range(3):
        await RisingEdge(dut.clk)
    dut.rst.value = 0
    await RisingEdge(dut.clk)


async def load_weights(dut, words):
    for i, w in enumerate(words):
        dut.load_we.value = 1
        dut.load_addr.value = i
        dut.load_data.value = int(w)
        await RisingEdge(dut.clk)
    dut.load_we.value = 0
    await RisingEdge(dut.clk)


async def infer(dut, codes, out_len):
    for i, c in enumerate(codes):
        dut.in_we.value = 1
        dut.in_addr.value = i
        dut.in_data.value = int(c) & 0xFF
        await RisingEdge(dut.clk)
    dut.in_we.value = 0
    dut.start.value = 1
    await RisingEdge(dut.clk)
    dut.start.value = 0
    started = cocotb.utils.get_sim_time("ns")
    await RisingEdge(dut.done)
    sim_cycles = round((cocotb.utils.get_sim_time("ns") - started) / 10) + 1  # counting the start cycle
    await RisingEdge(dut.clk)  # the core latches its cycle counter at the end of the done cycle
    await ReadOnly()
    cycles = int(dut.cycles.value)
    await RisingEdge(dut.clk)
    out = []
    for i in range(out_len):
        dut.out_addr.value = i
        await RisingEdge(dut.clk)  # the address is registered
        await RisingEdge(dut.clk)  # the read port samples it
        await RisingEdge(dut.clk)  # the word is registered
        await RisingEdge(dut.clk)  # its byte is registered
        await ReadOnly()
        out.append(int(dut.out_data.value))
        await FallingEdge(dut.clk)
    await RisingEdge(dut.clk)
    return out, cycles, sim_cycles


@cocotb.test()
async def run_rows(dut):
    p = bench_params()
    cocotb.start_soon(Clock(dut.clk, 10, unit="ns").start())
    await reset(dut)
    if p.get("weights"):
        await load_weights(dut, p["weights"])
    outputs, cycles, sim_cycles = [], [], []
    for row in p["rows"]:
        out, c, s = await infer(dut, row, p["out_len"])
        outputs.append(out)
        cycles.append(c)
        sim_cycles.append(s)
    bench_result(outputs=outputs, cycles=cycles, sim_cycles=sim_cycles)
