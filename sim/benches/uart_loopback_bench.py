"""Bench for ``tests/test_uart.py``: UartTx -> UartRx loopbacks, one per divisor, in one design.

The top level has, for each divisor ``d`` in the parameter ``divisors``, the ports ``d<d>_tx_data``,
``d<d>_tx_valid``, ``d<d>_tx_ready`` (transmitter side) and ``d<d>_rx_data``, ``d<d>_rx_valid`` (receiver
side), with the transmitter's pin wired to the receiver's pin inside.

Parameters: ``divisors`` (list of int), ``bytes`` (list of int, sent back-to-back through every loopback).
Result: ``received`` ({str(d): list of int}) and ``cycles`` ({str(d): clock cycles from the first byte
accepted to the last byte received}).
"""

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, ReadOnly, RisingEdge

from sim.runner import bench_params, bench_result


async def loopback(dut, d, data):
    """Offer ``data`` to the transmitter back-to-back and collect what the receiver outputs."""
    clk = dut.clk
    tx_data, tx_valid, tx_ready = (getattr(dut, f"d{d}_tx_{n}") for n in ("data", "valid", "ready"))
    rx_data, rx_valid = getattr(dut, f"d{d}_rx_data"), getattr(dut, f"d{d}_rx_valid")
    received, idx, cycle, first_accept = [], 0, 0, None
    timeout = (len(data) + 2) * 10 * d + 100
    while len(received) < len(data):
        assert cycle < timeout, f"divisor {d}: received {len(received)} of {len(data)} bytes in {cycle} cycles"
        offering = idx < len(data)
        tx_valid.value = int(offering)
        tx_data.value = data[idx] if offering else 0
        await ReadOnly()  # this cycle's settled values; ready depends only on the transmitter's state
        taken = offering and int(tx_ready.value) == 1
        if int(rx_valid.value):
            received.append(int(rx_data.value))
        await RisingEdge(clk)
        cycle += 1
        if taken:
            if first_accept is None:
                first_accept = cycle
            idx += 1
    tx_valid.value = 0
    return received, cycle - first_accept


@cocotb.test()
async def loopback_all(dut):
    p = bench_params()
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    for d in p["divisors"]:
        getattr(dut, f"d{d}_tx_valid").value = 0
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    await ClockCycles(dut.clk, 2)
    tasks = {d: cocotb.start_soon(loopback(dut, d, p["bytes"])) for d in p["divisors"]}
    received, cycles = {}, {}
    for d, task in tasks.items():
        received[str(d)], cycles[str(d)] = await task
    bench_result(received=received, cycles=cycles)
    for d in p["divisors"]:
        assert received[str(d)] == p["bytes"], f"divisor {d}: loopback corrupted the bytes"
