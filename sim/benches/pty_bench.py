"""Bench that exposes a design's UART on a pseudo-terminal, so real host software can talk to the simulation.

Works for any top level with ``clk``, ``rst``, ``rx`` (in) and ``tx`` (out). The bench opens a pty pair,
writes the slave's path (e.g. ``/dev/pts/7``) into ``port_file``, and then bridges bytes both ways: what a
host program writes to that path goes into ``rx`` (:meth:`UartModel.send`), what the design sends on ``tx``
is written back to the pty as soon as each byte's stop bit is decoded. Host programs open the path like a
serial port (``zakid-hw run BUILD --port /dev/pts/7``); the pty ignores the baud rate.

Parameters: ``divisor`` (clock cycles per UART bit), ``port_file``, ``stop_file`` (the bench ends when this
file exists), ``max_seconds`` (wall-clock limit; the bench ends then too, without failing).
Result: ``to_device`` / ``from_device`` (bytes forwarded each way), ``sim_cycles``, ``frame_errors``,
``glitches``, ``stopped_by`` ("stop_file" or "max_seconds").
"""

import os
import time
import tty

import cocotb
from cocotb.clock import Clock
from cocotb.simtime import get_sim_time
from cocotb.triggers import ClockCycles

from sim.runner import bench_params, bench_result
from sim.uart_model import UartModel


def _read_master(fd: int) -> bytes:
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""
    except OSError:  # EIO: no process has the slave open (we keep it open, so this is rare)
        return b""


def _write_master(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            time.sleep(0.001)
            continue
        view = view[n:]


@cocotb.test()
async def pty_bridge(dut):
    p = bench_params()
    divisor = int(p["divisor"])
    Clock(dut.clk, 10, unit="ns").start()
    dut.rx.value = 1
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    dut.rst.value = 0
    uart = UartModel(dut.clk, rx=dut.rx, tx=dut.tx, divisor=divisor)
    await uart.start()

    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    port_file = p["port_file"]
    tmp = port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(os.ttyname(slave))
    os.replace(tmp, port_file)  # the host sees the whole path or nothing

    counts = {"to_device": 0, "from_device": 0}
    running = True

    async def forward_tx():
        # poll every byte time, so an answer reaches the host right after its last stop bit
        while running:
            data = uart.take_all()
            if data:
                _write_master(master, data)
                counts["from_device"] += len(data)
            await uart.wait_cycles(divisor * 10)

    forwarder = cocotb.start_soon(forward_tx())
    deadline = time.monotonic() + float(p.get("max_seconds", 300))
    stop_file = p["stop_file"]
    stopped_by = "max_seconds"
    polls = 0
    try:
        while time.monotonic() < deadline:
            data = _read_master(master)
            if data:
                counts["to_device"] += len(data)
                await uart.send(data)
                continue
            polls += 1
            if polls % 64 == 0 and os.path.exists(stop_file):
                stopped_by = "stop_file"
                break
            await uart.wait_cycles(divisor * 10)
        # let a last answer in flight reach the host
        await uart.wait_cycles(divisor * 10 * 4)
    finally:
        running = False
        await uart.wait_cycles(divisor * 10)
        forwarder.cancel()
        tail = uart.take_all()
        if tail:
            _write_master(master, tail)
            counts["from_device"] += len(tail)
        os.close(master)
        os.close(slave)
    bench_result(counts, sim_cycles=int(get_sim_time("ns") // 10), frame_errors=uart.frame_errors,
                 glitches=uart.glitches, stopped_by=stopped_by)
    assert uart.frame_errors == 0 and uart.glitches == 0
