"""A host-side UART for cocotb benches: bit-bangs a DUT's ``rx`` pin and decodes its ``tx`` pin (8N1).

Usage in a bench::

    from sim.uart_model import UartModel
    from zakid_hw import protocol

    uart = UartModel(dut.clk, rx=dut.rx, tx=dut.tx, divisor=p["divisor"])
    await uart.start()                       # measures the clock period, drives rx idle, starts the monitor
    await uart.send(protocol.encode_info_request())
    info = protocol.decode_info(await uart.recv(protocol.INFO_RESPONSE_LEN))

Timing uses :class:`cocotb.triggers.Timer` (a few triggers per bit, not one per clock), so long transfers at
realistic divisors (e.g. 104) stay fast. The sender changes ``rx`` at falling clock edges, so it never races the
DUT's sampling edge. The monitor runs all the time from :meth:`UartModel.start` on, so answers that begin
while the host is still sending its stop bit are not missed; bytes are buffered until :meth:`recv`.
"""

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.triggers import FallingEdge, RisingEdge, Timer

__all__ = ["UartModel", "UartTimeout"]


class UartTimeout(AssertionError):
    """The DUT did not send the expected number of bytes in time (fails the cocotb test)."""


class UartModel:
    """Host side of a UART link to a DUT.

    :param clk: the DUT clock (must already be running when :meth:`start` is awaited).
    :param rx: the DUT's UART input pin (driven by this model).
    :param tx: the DUT's UART output pin (monitored by this model); may be ``None`` for a sender only.
    :param divisor: DUT clock cycles per bit.
    """

    def __init__(self, clk, *, rx, tx, divisor: int):
        self.clk, self.rx, self.tx, self.divisor = clk, rx, tx, divisor
        self.period_steps = None
        self.received = bytearray()  #: bytes decoded from ``tx`` and not yet taken by :meth:`recv`
        self.frame_errors = 0  #: frames on ``tx`` whose stop bit was low
        self.glitches = 0  #: falling edges on ``tx`` that were not a start bit
        self._monitor = None

    async def start(self) -> None:
        """Measure the clock period, drive ``rx`` high (idle) and start monitoring ``tx``."""
        self.rx.value = 1
        await RisingEdge(self.clk)
        t0 = get_sim_time("step")
        await RisingEdge(self.clk)
        self.period_steps = get_sim_time("step") - t0
        if self.tx is not None and self._monitor is None:
            self._monitor = cocotb.start_soon(self._monitor_tx())

    def stop(self) -> None:
        """Stop the monitor (optional; the test's end stops it anyway)."""
        if self._monitor is not None:
            self._monitor.cancel()
            self._monitor = None

    def _steps(self, cycles: float) -> int:
        if self.period_steps is None:
            raise RuntimeError("await UartModel.start() first")
        return max(1, int(round(cycles * self.period_steps)))

    async def wait_cycles(self, cycles: float) -> None:
        """Wait ``cycles`` clock periods of simulated time."""
        await Timer(self._steps(cycles), unit="step")

    async def send(self, data: bytes, *, bit_cycles: float | None = None, gap_bits: float = 0) -> None:
        """Send ``data`` on ``rx``; returns when the last stop bit is complete.

        :param bit_cycles: clock cycles per bit on the wire (default: ``divisor``); a fractional value models a
            host whose baud rate differs from the DUT's.
        :param gap_bits: extra idle time between bytes, in bits.
        """
        bit = self._steps(self.divisor if bit_cycles is None else bit_cycles)
        gap = self._steps(gap_bits * self.divisor) if gap_bits else 0
        await FallingEdge(self.clk)
        for byte in bytes(data):
            for level in [0] + [(byte >> i) & 1 for i in range(8)] + [1]:
                self.rx.value = level
                await Timer(bit, unit="step")
            if gap:
                await Timer(gap, unit="step")

    async def _monitor_tx(self) -> None:
        bit = self._steps(self.divisor)
        half = self._steps(self.divisor / 2)
        while True:
            await FallingEdge(self.tx)
            await Timer(half, unit="step")
            if int(self.tx.value) != 0:
                self.glitches += 1
                continue
            byte = 0
            for i in range(8):
                await Timer(bit, unit="step")
                byte |= int(self.tx.value) << i
            await Timer(bit, unit="step")
            if int(self.tx.value) == 1:
                self.received.append(byte)
            else:
                self.frame_errors += 1

    async def recv(self, n: int, *, timeout_cycles: int | None = None) -> bytes:
        """The next ``n`` bytes from ``tx``.

        :param timeout_cycles: clock cycles to wait at most (default: the time of ``n`` frames plus 64 frames
            of slack); raises :class:`UartTimeout` with what did arrive.
        """
        if self._monitor is None:
            raise RuntimeError("UartModel has no tx monitor: pass tx= and await start()")
        if timeout_cycles is None:
            timeout_cycles = (n + 64) * 10 * self.divisor
        poll = self._steps(self.divisor)
        deadline = get_sim_time("step") + self._steps(timeout_cycles)
        while len(self.received) < n:
            if get_sim_time("step") >= deadline:
                raise UartTimeout(
                    f"expected {n} bytes from the DUT within {timeout_cycles} cycles, got {len(self.received)}: "
                    f"{bytes(self.received).hex(' ')}")
            await Timer(poll, unit="step")
        out = bytes(self.received[:n])
        del self.received[:n]
        return out

    async def expect_silence(self, cycles: int) -> None:
        """Wait ``cycles`` clock cycles and assert that the DUT sent nothing meanwhile."""
        before = len(self.received)
        await self.wait_cycles(cycles)
        if len(self.received) != before:
            raise AssertionError(f"the DUT sent unexpected bytes: {bytes(self.received[before:]).hex(' ')}")

    def take_all(self) -> bytes:
        """All bytes received and not yet taken."""
        out = bytes(self.received)
        self.received.clear()
        return out
