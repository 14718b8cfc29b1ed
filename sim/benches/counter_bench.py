"""Bench for the toy counter of ``tests/test_sim_runner.py`` (ports ``en`` in, ``count`` out).

Parameters: ``cycles`` (clock cycles with ``en`` high), ``expect`` (optional: assert the count equals it),
``echo`` (returned unchanged), ``hang`` (optional: never finish, to test timeouts).
Result: ``count``, ``echo``.
"""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge, Timer

from sim.runner import bench_params, bench_result


@cocotb.test()
async def count_cycles(dut):
    p = bench_params()
    Clock(dut.clk, 10, unit="ns").start()
    if p.get("hang"):
        await Timer(10**15, unit="ns")
    dut.en.value = 0
    dut.rst.value = 1
    await ClockCycles(dut.clk, 2)
    dut.rst.value = 0
    dut.en.value = 1
    await ClockCycles(dut.clk, p["cycles"])
    dut.en.value = 0
    await RisingEdge(dut.clk)
    await ReadOnly()
    count = int(dut.count.value)
    if "expect" in p:
        assert count == p["expect"], f"counter reads {count}, expected {p['expect']}"
    bench_result(count=count, echo=p.get("echo"))
