"""A SPI NOR flash for cocotb benches (like a W25Q128 on the iCEBreaker), SPI mode 0, single I/O.

Usage in a bench::

    from sim.spi_flash_model import SpiFlashModel

    flash = SpiFlashModel(sck=dut.sck, cs_n=dut.cs_n, copi=dut.copi, cipo=dut.cipo, image=image)
    flash.start()
    ...
    assert [c.opcode for c in flash.commands] == [0xAB, 0x03]
    assert flash.commands[1].address == offset and not flash.violations

It answers two commands: 0xAB (release from deep power-down) and 0x03 (READ: 24-bit address, then data bytes
from that address on, for as long as SCK runs; past the image the bytes read 0xFF, like erased flash).
COPI is sampled on SCK's rising edge; CIPO changes on SCK's falling edge (the first data bit after the falling
edge that ends the address). Clocks while CS is high are ignored.

The flash starts in deep power-down (as the iCE40 may leave it after configuration) unless
``powered_down=False``: until then it answers only 0xAB, and any other command is recorded with
``ignored=True`` and reads as all ones. CS pulses without SCK edges are not recorded. A command that starts
less than ``t_res1_ns`` after the end of 0xAB, SCK high when CS falls, a transaction that does not end on a
byte boundary, and an unknown opcode are recorded in :attr:`SpiFlashModel.violations`.
"""

from dataclasses import dataclass

import cocotb
from cocotb.simtime import get_sim_time
from cocotb.triggers import FallingEdge, First, RisingEdge

__all__ = ["FlashCommand", "SpiFlashModel"]


@dataclass
class FlashCommand:
    """One transaction (CS low to CS high) the flash saw."""

    opcode: int | None  #: the first byte (None if CS rose before 8 bits)
    address: int | None = None  #: READ: the 24-bit address
    data_bytes: int = 0  #: READ: whole bytes clocked out
    bits: int = 0  #: SCK rising edges in the transaction
    start_ns: float = 0.0  #: CS fell
    end_ns: float = 0.0  #: CS rose
    ignored: bool = False  #: the flash was in deep power-down and did not answer


class SpiFlashModel:
    """SPI NOR flash holding ``image`` (bytes at address 0 on).

    :param sck, cs_n, copi: the DUT's output pins driving the flash.
    :param cipo: the DUT's input pin the flash drives.
    :param image: the flash contents.
    :param powered_down: start in deep power-down (only 0xAB is answered until then).
    :param t_res1_ns: time after 0xAB before the next command may start.
    """

    def __init__(self, *, sck, cs_n, copi, cipo, image: bytes, powered_down: bool = True, t_res1_ns: float = 3000):
        self.sck, self.cs_n, self.copi, self.cipo = sck, cs_n, copi, cipo
        self.image = bytes(image)
        self.powered_down = powered_down
        self.t_res1_ns = t_res1_ns
        self.commands: list[FlashCommand] = []  #: every transaction, in order
        self.violations: list[str] = []  #: protocol problems seen (empty for a correct controller)
        self.sck_high_ns: list[float] = []  #: duration of every SCK high phase while CS was low
        self.sck_low_ns: list[float] = []  #: duration of every SCK low phase between two SCK edges, CS low
        self._awake_at = None  # when 0xAB ended: the flash accepts commands t_res1_ns later
        self._task = None

    def start(self) -> None:
        """Drive CIPO high (idle) and start answering transactions."""
        self.cipo.value = 1
        if self._task is None:
            self._task = cocotb.start_soon(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def byte_at(self, address: int) -> int:
        return self.image[address] if address < len(self.image) else 0xFF

    async def _run(self) -> None:
        while True:
            if int(self.cs_n.value):
                await FallingEdge(self.cs_n)
            await self._transaction()

    async def _transaction(self) -> None:
        now = get_sim_time("ns")
        cmd = FlashCommand(opcode=None, start_ns=now)
        shift, last_edge = 0, None
        while True:
            await First(self.sck.value_change, RisingEdge(self.cs_n))
            now = get_sim_time("ns")
            if int(self.cs_n.value):  # CS rose (possibly together with an SCK edge): end of transaction
                break
            rising = bool(int(self.sck.value))
            if last_edge is None:  # the first SCK edge: a command starts
                self.commands.append(cmd)
                if self._awake_at is not None and cmd.start_ns - self._awake_at < self.t_res1_ns:
                    self.violations.append(f"command at {cmd.start_ns} ns, {cmd.start_ns - self._awake_at} ns "
                                           f"after 0xAB (tRES1 is {self.t_res1_ns} ns)")
                if not rising:
                    self.violations.append(f"command at {cmd.start_ns} ns: SCK was high when CS fell (not mode 0)")
            if last_edge is not None:
                (self.sck_low_ns if rising else self.sck_high_ns).append(now - last_edge)
            last_edge = now
            if rising:
                shift = ((shift << 1) | int(self.copi.value)) & 0xFFFFFFFF
                cmd.bits += 1
                if cmd.bits == 8:
                    cmd.opcode = shift & 0xFF
                elif cmd.bits == 32 and cmd.opcode == 0x03:
                    cmd.address = shift & 0xFFFFFF
            elif cmd.opcode == 0x03 and cmd.bits >= 32:  # falling edge in the data phase: next bit out
                n = cmd.bits - 32  # data bits already clocked out
                if self.powered_down:
                    cmd.ignored = True
                    self.cipo.value = 1
                else:
                    self.cipo.value = (self.byte_at(cmd.address + n // 8) >> (7 - n % 8)) & 1
        cmd.end_ns = now
        self.cipo.value = 1
        if last_edge is None:
            return  # CS pulse without SCK edges: nothing happened
        if cmd.opcode == 0x03:
            cmd.data_bytes = max(0, cmd.bits - 32) // 8
        if cmd.bits % 8:
            self.violations.append(f"transaction {len(self.commands) - 1} ended after {cmd.bits} bits, "
                                   f"not a whole number of bytes")
        if cmd.opcode == 0xAB and cmd.bits == 8:
            self.powered_down = False
            self._awake_at = now
        elif cmd.opcode == 0x03:
            cmd.ignored = cmd.ignored or self.powered_down
        else:
            self.violations.append(f"transaction {len(self.commands) - 1}: unsupported opcode {cmd.opcode}")
