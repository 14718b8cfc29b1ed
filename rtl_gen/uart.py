"""8N1 UART receiver and transmitter (Amaranth 0.5 components, ``sync`` domain).

``divisor`` is the number of clock cycles per bit, e.g. ``round(12e6 / 115200) = 104`` on a 12 MHz iCEBreaker.
The bit-period error of the rounding must stay within about +-4 % over the 10 bits of a frame.
"""

from amaranth import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["UartRx", "UartTx", "MIN_DIVISOR"]

#: Smallest supported clock cycles per bit.
MIN_DIVISOR = 4


def _check_divisor(owner, divisor) -> int:
    if not isinstance(divisor, int) or isinstance(divisor, bool) or divisor < MIN_DIVISOR:
        owner._MustUse__silence = True  # never elaborated: no "created but never used" warning
        raise ValueError(f"UART divisor must be an int >= {MIN_DIVISOR} clock cycles per bit, not {divisor!r}")
    return divisor


class UartRx(wiring.Component):
    """8N1 UART receiver.

    The ``rx`` pin passes through a two-flop synchroniser. A falling edge starts a frame; the start bit is
    sampled again half a bit later and the frame is abandoned if the line is high by then (a glitch, not a
    start bit). Data bits are sampled in the middle of each bit, LSB first, then the stop bit. The receiver is
    ready for the next start bit from the middle of the stop bit on, so it tolerates a slightly fast sender.

    Ports:

    * ``rx`` (in, 1, idle high): the serial input pin (asynchronous to the clock).
    * ``data`` (out, 8): the last byte received; valid while ``valid`` is high and held until the next byte.
    * ``valid`` (out, 1): one-cycle pulse when a byte with a good stop bit has been received.
    * ``frame_error`` (out, 1): one-cycle pulse when the stop bit was low (the byte is dropped).

    :param divisor: clock cycles per bit, at least 4.
    """

    rx: In(1, init=1)
    data: Out(8)
    valid: Out(1)
    frame_error: Out(1)

    def __init__(self, divisor: int):
        self.divisor = _check_divisor(self, divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        d = self.divisor

        sync1 = Signal(init=1)
        line = Signal(init=1)  # synchronised rx
        m.d.sync += [sync1.eq(self.rx), line.eq(sync1)]

        timer = Signal(range(d))
        bit = Signal(range(8))
        shreg = Signal(8)

        m.d.sync += [self.valid.eq(0), self.frame_error.eq(0)]

        with m.FSM(name="uart_rx"):
            with m.State("IDLE"):
                with m.If(~line):
                    # the line went low this cycle: the middle of the start bit is d//2 cycles from here
                    m.d.sync += timer.eq(d // 2 - 1)
                    m.next = "START"
            with m.State("START"):
                with m.If(timer == 0):
                    with m.If(line):
                        m.next = "IDLE"  # false start
                    with m.Else():
                        m.d.sync += [timer.eq(d - 1), bit.eq(0)]
                        m.next = "DATA"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("DATA"):
                with m.If(timer == 0):
                    m.d.sync += [timer.eq(d - 1), shreg.eq(Cat(shreg[1:], line)), bit.eq(bit + 1)]
                    with m.If(bit == 7):
                        m.next = "STOP"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
            with m.State("STOP"):
                with m.If(timer == 0):
                    with m.If(line):
                        m.d.sync += [self.data.eq(shreg), self.valid.eq(1)]
                    with m.Else():
                        m.d.sync += self.frame_error.eq(1)
                    m.next = "IDLE"
                with m.Else():
                    m.d.sync += timer.eq(timer - 1)
        return m


class UartTx(wiring.Component):
    """8N1 UART transmitter.

    A byte is accepted in a cycle where ``valid`` and ``ready`` are both high, into a one-byte buffer; the
    shifter takes it from there the next cycle if it is idle, or else in the last cycle of the current stop bit,
    and its frame (start bit, 8 data bits LSB first, stop bit) starts on ``tx`` the cycle after, each bit lasting
    ``divisor`` cycles. So a byte accepted while the line is idle starts two cycles later, and back-to-back
    bytes take exactly ``10 * divisor`` cycles each. ``ready`` depends only on this unit's registers (the
    buffer keeps the sender's logic out of the shifter's), and ``tx`` is driven from a flip-flop
    (glitch-free).

    Ports:

    * ``data`` (in, 8): byte to send, sampled when ``valid & ready``.
    * ``valid`` (in, 1): ``data`` holds a byte to send.
    * ``ready`` (out, 1): the transmitter accepts a byte this cycle.
    * ``tx`` (out, 1, idle high): the serial output pin.

    :param divisor: clock cycles per bit, at least 4.
    """

    data: In(8)
    valid: In(1)
    ready: Out(1)
    tx: Out(1, init=1)

    def __init__(self, divisor: int):
        self.divisor = _check_divisor(self, divisor)
        super().__init__()

    def elaborate(self, platform):
        m = Module()
        d = self.divisor

        busy = Signal()
        timer = Signal(range(d))
        bit_end = Signal()  # timer == 0, kept in a register (set a cycle ahead) to keep the logic shallow
        bits_left = Signal(range(10))  # bits still to put on the line after the current one
        last_bit = Signal()  # bits_left == 0, likewise
        shreg = Signal(9)  # data bits then the stop bit, LSB first
        full = Signal()  # the buffer holds a byte
        buf = Signal(8)

        take = Signal()  # the shifter takes the buffer's byte at this edge
        m.d.comb += [take.eq(full & (~busy | (bit_end & last_bit))), self.ready.eq(~full | take)]

        with m.If(self.valid & self.ready):
            m.d.sync += [buf.eq(self.data), full.eq(1)]
        with m.Elif(take):
            m.d.sync += full.eq(0)

        with m.If(take):
            m.d.sync += [
                busy.eq(1),
                self.tx.eq(0),  # start bit
                shreg.eq(Cat(buf, Const(1, 1))),
                bits_left.eq(9), last_bit.eq(0),
                timer.eq(d - 1), bit_end.eq(0),
            ]
        with m.Elif(busy):
            with m.If(bit_end):
                with m.If(last_bit):
                    m.d.sync += busy.eq(0)  # tx is already high (stop bit)
                with m.Else():
                    m.d.sync += [
                        self.tx.eq(shreg[0]),
                        shreg.eq(shreg >> 1),
                        bits_left.eq(bits_left - 1), last_bit.eq(bits_left == 1),
                        timer.eq(d - 1), bit_end.eq(0),
                    ]
            with m.Else():
                m.d.sync += [timer.eq(timer - 1), bit_end.eq(timer == 1)]
        return m
