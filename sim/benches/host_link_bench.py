"""Bench for ``tests/test_host_link.py``: talks :mod:`zakid_hw.protocol` to a design with ``rx``/``tx`` pins.

Works for any top level that has ``clk``, ``rst``, ``rx`` (in) and ``tx`` (out) and a HostLink behind them.

Parameters: ``divisor``, ``in_dtype``/``out_dtype`` ("int8"/"uint8"), ``runs`` (list of input code lists),
``unknown`` (a command byte the device must answer with ``?``), ``stall_cycles`` (optional: send a truncated
run request, wait this long, and check the link answers ``I`` again afterwards), ``run_timeout_cycles``.
Result: ``info`` {in_len, out_len, signature}, ``unknown_answer`` (list of bytes), ``runs`` [{codes, cycles}],
``after_stall`` (info dict, if stall_cycles was given).
"""

import cocotb
import numpy as np
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles

from sim.runner import bench_params, bench_result
from sim.uart_model import UartModel
from zakid_hw import protocol


async def query_info(uart):
    await uart.send(protocol.encode_info_request())
    return protocol.decode_info(await uart.recv(protocol.INFO_RESPONSE_LEN))


async def run_inference(uart, info, codes, in_dtype, out_dtype, timeout_cycles=None):
    await uart.send(protocol.encode_run_request(np.asarray(codes), in_dtype, in_len=info.in_len))
    answer = await uart.recv(protocol.run_response_len(info.out_len), timeout_cycles=timeout_cycles)
    return protocol.decode_run_response(answer, info.out_len, out_dtype)


@cocotb.test()
async def host_link(dut):
    p = bench_params()
    Clock(dut.clk, 10, unit="ns").start()
    dut.rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    if p.get("flash"):  # weights in SPRAM: the design loads them from this flash first
        from sim.spi_flash_model import SpiFlashModel

        flash = SpiFlashModel(sck=dut.flash_sck, cs_n=dut.flash_cs_n, copi=dut.flash_copi, cipo=dut.flash_cipo,
                              image=bytes.fromhex(p["flash"]["image"]), t_res1_ns=0)
        flash.start()
    dut.rst.value = 0
    if p.get("flash"):
        await ClockCycles(dut.clk, p["flash"]["load_cycles"] + 2)
    uart = UartModel(dut.clk, rx=dut.rx, tx=dut.tx, divisor=p["divisor"])
    await uart.start()

    info = await query_info(uart)
    result = {"info": {"in_len": info.in_len, "out_len": info.out_len, "signature": info.signature}}

    await uart.send(bytes([p["unknown"]]))
    result["unknown_answer"] = list(await uart.recv(1))

    runs = []
    for codes in p["runs"]:
        out, cycles = await run_inference(uart, info, codes, p["in_dtype"], p["out_dtype"],
                                          p.get("run_timeout_cycles"))
        runs.append({"codes": out.tolist(), "cycles": cycles})
    result["runs"] = runs

    if p.get("stall_cycles"):
        partial = protocol.encode_run_request(np.asarray(p["runs"][0]), p["in_dtype"])[:-2]
        await uart.send(partial)
        await uart.expect_silence(p["stall_cycles"])
        again = await query_info(uart)
        result["after_stall"] = {"in_len": again.in_len, "out_len": again.out_len, "signature": again.signature}

    await uart.expect_silence(20 * p["divisor"])
    result["frame_errors"] = uart.frame_errors
    result["glitches"] = uart.glitches
    bench_result(result)
    assert result["unknown_answer"] == list(protocol.RESP_UNKNOWN)
    assert uart.frame_errors == 0 and uart.glitches == 0
