"""Bench for ``tests/test_flash_loader.py``: SpiFlashLoader + SpramMemory channels, and a SpramMemory pair.

The top level has, for each channel ``i``, a loader wired to its own memory: ports ``c<i>_sck``,
``c<i>_cs_n``, ``c<i>_copi`` (out), ``c<i>_cipo`` (in) to the flash; ``c<i>_ready``, ``c<i>_we``,
``c<i>_waddr`` (out: the loader's ready and write port, to monitor); ``c<i>_raddr`` (in), ``c<i>_rdata``
(out: the memory's read port). It also has two memories of one shape side by side, the SB_SPRAM256KA one and
the behavioural one, with shared inputs ``m_we``, ``m_waddr``, ``m_wdata``, ``m_raddr`` and outputs
``m_rdata_prim``, ``m_rdata_beh``.

Parameters: ``period_ns``; ``channels``: list of {``image`` (hex of the flash image), ``n_words``,
``clk_div``, ``t_res1_ns``, ``limit_cycles`` (ready must come sooner)}; ``mem``: {``depth``, ``width``,
``ops``, ``seed``}.
Result: ``channels``: list of {``words`` (read back, unsigned), ``writes`` (waddr of each write strobe, in
order), ``write_cycles``, ``ready_cycle`` (clock edges after reset release until ready is high),
``ready_dropped``, ``commands``, ``violations``, ``sck_high_ns``, ``sck_low_ns`` (sets of phase lengths)};
``mem``: {``checked``, ``mismatches``, ``rows_written``}.
"""

import random

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import ClockCycles, FallingEdge, ReadOnly, RisingEdge

from sim.runner import bench_params, bench_result
from sim.spi_flash_model import SpiFlashModel


def pin(dut, i, name):
    return getattr(dut, f"c{i}_{name}")


async def reset(dut, p):
    Clock(dut.clk, p["period_ns"], unit="ns").start()
    dut.rst.value = 1
    await ClockCycles(dut.clk, 3)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


@cocotb.test()
async def load_and_read_back(dut):
    p = bench_params()
    chans = p["channels"]
    for i in range(len(chans)):
        pin(dut, i, "raddr").value = 0
    flashes = []
    for i, c in enumerate(chans):
        f = SpiFlashModel(sck=pin(dut, i, "sck"), cs_n=pin(dut, i, "cs_n"), copi=pin(dut, i, "copi"),
                          cipo=pin(dut, i, "cipo"), image=bytes.fromhex(c["image"]), t_res1_ns=c["t_res1_ns"])
        f.start()
        flashes.append(f)
    await reset(dut, p)

    # Watch every cycle: the write strobes and ready (cycle n follows the n-th clock edge after reset release).
    obs = [dict(writes=[], write_cycles=[], ready_cycle=None, ready_dropped=False) for _ in chans]
    limit = max(c["limit_cycles"] for c in chans)
    cycle = 0
    while any(o["ready_cycle"] is None for o in obs) or cycle < 20 + max(o["ready_cycle"] for o in obs):
        assert cycle < limit, f"not all loaders ready after {cycle} cycles: {[o['ready_cycle'] for o in obs]}"
        await RisingEdge(dut.clk)
        await ReadOnly()
        cycle += 1
        for i, o in enumerate(obs):
            if int(pin(dut, i, "we").value):
                o["writes"].append(int(pin(dut, i, "waddr").value))
                o["write_cycles"].append(cycle)
            ready = int(pin(dut, i, "ready").value)
            if ready and o["ready_cycle"] is None:
                o["ready_cycle"] = cycle
            if not ready and o["ready_cycle"] is not None:
                o["ready_dropped"] = True

    await FallingEdge(dut.clk)
    for i, c in enumerate(chans):
        words = []
        for a in range(c["n_words"]):
            pin(dut, i, "raddr").value = a
            await RisingEdge(dut.clk)  # the memory takes the address at this edge
            await FallingEdge(dut.clk)
            words.append(int(pin(dut, i, "rdata").value))
        f = flashes[i]
        obs[i].update(
            words=words,
            commands=[dict(opcode=k.opcode, address=k.address, data_bytes=k.data_bytes, bits=k.bits,
                           start_ns=k.start_ns, end_ns=k.end_ns, ignored=k.ignored) for k in f.commands],
            violations=f.violations,
            sck_high_ns=sorted(set(f.sck_high_ns)),
            sck_low_ns=sorted(set(f.sck_low_ns)),
        )
    bench_result(channels=obs)


@cocotb.test()
async def memory_random_access(dut):
    """Random writes and reads, many at the row boundary, on both memories; reads of written words only."""
    p = bench_params()["mem"]
    rng = random.Random(p["seed"])
    depth, width = p["depth"], p["width"]
    hot = [0, 1, depth - 1, 16383, 16384, 16385] + [rng.randrange(depth) for _ in range(20)]
    hot = [a for a in hot if a < depth]
    dut.m_we.value = 0
    dut.m_raddr.value = 0
    await reset(dut, bench_params())
    model, checked, mismatches, rows = {}, 0, [], set()
    pending = None  # (address, expected word) of the read in the previous cycle
    for k in range(p["ops"] + 1):
        # at a falling edge: next cycle's inputs first, then the previous cycle's read, so a memory whose rdata
        # followed this cycle's address instead of the last one's would be caught
        write, addr = False, 0
        if k < p["ops"]:
            addr = rng.choice(hot)
            write = rng.random() < 0.4 or addr not in model
            value = rng.randrange(1 << width)
            dut.m_waddr.value = dut.m_raddr.value = addr
            dut.m_wdata.value = value
        dut.m_we.value = int(write)
        await ReadOnly()
        if pending is not None:
            got = (int(dut.m_rdata_prim.value), int(dut.m_rdata_beh.value))
            checked += 1
            if got != (pending[1], pending[1]):
                mismatches.append([*pending, *got])
        pending = None
        if write:
            model[addr] = value
            rows.add(addr // 16384)
        elif k < p["ops"]:
            pending = (addr, model[addr])
        await RisingEdge(dut.clk)
        await FallingEdge(dut.clk)
    dut.m_we.value = 0
    bench_result(mem=dict(checked=checked, mismatches=mismatches, rows_written=sorted(rows)))
