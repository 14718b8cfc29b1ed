"""Copy words from the board's SPI NOR flash into a memory at start-up (e.g. weights into SPRAM)."""

import math

from amaranth import Cat, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from zakid_hw.flash_image import bytes_per_word

__all__ = ["SpiFlashLoader", "CMD_RELEASE_POWER_DOWN", "CMD_READ", "T_RES1_S", "wake_cycles_for"]

CMD_RELEASE_POWER_DOWN = 0xAB  #: "release from deep power-down" of SPI NOR flashes
CMD_READ = 0x03  #: "read data": 24-bit address, then bytes until CS rises
T_RES1_S = 3e-6  #: time from the end of 0xAB until the flash accepts commands (tRES1, W25Q128: 3 us)


def wake_cycles_for(clock_hz: float, t_s: float = T_RES1_S) -> int:
    """Clock cycles that cover ``t_s`` seconds (default tRES1) at ``clock_hz``: the loader's ``wake_cycles``."""
    return math.ceil(t_s * clock_hz) + 1


def load_cycles(*, n_words: int, word_bits: int, clk_div: int, wake_cycles: int, offset: int = 0) -> int:
    """Clock cycles a :class:`SpiFlashLoader` with these parameters takes from reset release until ``ready``:
    two CS-high waits, 8 + 32 + 8 * bytes SCK periods, and one cycle for the last write (``offset`` does not
    matter; it is accepted so that a loader's parameter dict can be passed as it is)."""
    total_bits = 8 + 32 + 8 * n_words * bytes_per_word(word_bits)
    return 2 * wake_cycles + total_bits * 2 * clk_div + 1


class SpiFlashLoader(wiring.Component):
    """Reads ``n_words`` words from a SPI NOR flash after reset and writes them to a memory write port.

    Sequence: CS high for ``wake_cycles``; command 0xAB (release from deep power-down: the iCE40 may leave the
    flash powered down after configuration); CS high for ``wake_cycles`` (tRES1); then READ (0x03) with the
    24-bit address ``offset`` and ``n_words * ceil(word_bits / 8)`` bytes clocked in, in one transaction; CS
    high; ``ready`` rises and stays high. The byte layout is :mod:`zakid_hw.flash_image`'s: each word is
    ``ceil(word_bits / 8)`` bytes, little-endian (byte 0 = bits 0..7); bits above ``word_bits`` are ignored.

    SPI mode 0, MSB first: SCK idles low and has ``clk_div`` clock cycles high and ``clk_div`` low per bit
    (SCK = clock / (2 * clk_div)); COPI changes with SCK's falling edge (the flash samples it on the rising
    edge); CIPO is sampled at the end of each high phase, by the clock edge that makes SCK fall, a whole SCK
    period after the falling edge at which the flash put that bit out, which leaves the flash's clock-to-output
    time and the pad delays ample margin. All outputs come straight from flip-flops (glitch-free).

    Ports:

    * ``sck`` (out, 1): SPI clock, idle low.
    * ``cs_n`` (out, 1, idle high): flash chip select, active low.
    * ``copi`` (out, 1): controller out, peripheral in (flash DI / IO0).
    * ``cipo`` (in, 1): controller in, peripheral out (flash DO / IO1).
    * ``mem_we`` (out, 1): one-cycle write strobe, once per word, for words 0, 1, .. ``n_words - 1`` in order.
    * ``mem_addr`` (out, ``addr_width``): the word's index, valid with ``mem_we``.
    * ``mem_data`` (out, ``word_bits``): the word, valid with ``mem_we``.
    * ``ready`` (out, 1): all words are written; rises the cycle after the last ``mem_we`` and stays high
      until reset. The flash is idle (CS high) by then. That is :attr:`load_cycles` cycles after reset.

    ``addr_width`` is ``ceil(log2(n_words))`` (at least 1).

    :param offset: flash byte address of word 0 (e.g. :data:`zakid_hw.flash_image.WEIGHTS_OFFSET`).
    :param n_words: words to load, >= 1.
    :param word_bits: bits per word, >= 1.
    :param clk_div: clock cycles per SCK half period, >= 1; with clock / (2 * clk_div) within the flash's
        READ (0x03) limit (W25Q128: 50 MHz).
    :param wake_cycles: clock cycles of CS high before 0xAB and between 0xAB and READ; must cover tRES1, see
        :func:`wake_cycles_for`.
    """

    def __init__(self, *, offset: int, n_words: int, word_bits: int, clk_div: int, wake_cycles: int):
        problems = []
        for name, v, low in (("n_words", n_words, 1), ("word_bits", word_bits, 1), ("clk_div", clk_div, 1),
                             ("wake_cycles", wake_cycles, 1), ("offset", offset, 0)):
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                problems.append(f"{name} must be an int >= {low}, not {v!r}")
        if not problems and offset + n_words * bytes_per_word(word_bits) > 1 << 24:
            problems.append(f"{n_words} words of {bytes_per_word(word_bits)} bytes at offset 0x{offset:X} reach past "
                            f"the 16 MiB a 24-bit flash address can reach")
        if problems:
            self._MustUse__silence = True
            raise ValueError("SpiFlashLoader: " + "; ".join(problems))
        self.offset, self.n_words, self.word_bits = offset, n_words, word_bits
        self.clk_div, self.wake_cycles = clk_div, wake_cycles
        self.word_bytes = bytes_per_word(word_bits)
        self.addr_width = max(1, ceil_log2(n_words))
        super().__init__({
            "sck": Out(1),
            "cs_n": Out(1, init=1),
            "copi": Out(1),
            "cipo": In(1),
            "mem_we": Out(1),
            "mem_addr": Out(self.addr_width),
            "mem_data": Out(word_bits),
            "ready": Out(1),
        })

    @property
    def load_cycles(self) -> int:
        """Clock cycles from reset release until ``ready`` is high (see :func:`load_cycles`)."""
        return load_cycles(n_words=self.n_words, word_bits=self.word_bits, clk_div=self.clk_div,
                           wake_cycles=self.wake_cycles)

    def elaborate(self, platform):
        m = Module()
        nbytes = self.word_bytes

        out = Signal(32)  # bits still to send, MSB first; zeros follow the command
        m.d.comb += self.copi.eq(out[31])
        bits = Signal(range(33))  # command bits still to send
        wait = Signal(range(self.wake_cycles))
        half = Signal(range(self.clk_div))  # cycles left in this SCK half period
        rx = Signal(8)  # bits of the current byte, MSB first
        rx_bit = Signal(3)
        byte_i = Signal(range(nbytes))
        word_i = Signal(self.addr_width)
        # the last byte of a word, the last word: registered flags, so the end tests are single bits
        byte_last, word_last = Signal(init=nbytes == 1), Signal(init=self.n_words == 1)
        word = Signal(8 * nbytes)  # bytes of the current word, the latest at the top; complete with mem_we
        m.d.comb += self.mem_data.eq(word[:self.word_bits])
        rx_next = Cat(self.cipo, rx[:7])
        word_next = Cat(word[8:], rx_next)

        m.d.sync += self.mem_we.eq(0)

        def clock_bit(on_fall):
            """Run SCK; ``on_fall()`` adds what happens at the edge where SCK falls (the bit is complete)."""
            with m.If(half != 0):
                m.d.sync += half.eq(half - 1)
            with m.Else():
                m.d.sync += [half.eq(self.clk_div - 1), self.sck.eq(~self.sck)]
                with m.If(self.sck):
                    on_fall()

        def start(value, n):
            """CS low and start sending the ``n``-bit command ``value``."""
            m.d.sync += [self.cs_n.eq(0), out.eq(value << (32 - n)), bits.eq(n), half.eq(self.clk_div - 1)]

        def send_bit():
            m.d.sync += [out.eq(out << 1), bits.eq(bits - 1)]

        with m.FSM(name="flash_loader"):
            with m.State("POWER_UP"):  # CS high (reset value)
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == self.wake_cycles - 1):
                    m.d.sync += wait.eq(0)
                    start(CMD_RELEASE_POWER_DOWN, 8)
                    m.next = "WAKE"

            with m.State("WAKE"):
                def wake_fall():
                    send_bit()
                    with m.If(bits == 1):
                        m.d.sync += self.cs_n.eq(1)
                        m.next = "T_RES1"
                clock_bit(wake_fall)

            with m.State("T_RES1"):
                m.d.sync += wait.eq(wait + 1)
                with m.If(wait == self.wake_cycles - 1):
                    start(Const((CMD_READ << 24) | self.offset, 32), 32)
                    m.next = "COMMAND"

            with m.State("COMMAND"):
                def command_fall():
                    send_bit()
                    with m.If(bits == 1):
                        m.next = "DATA"
                clock_bit(command_fall)

            with m.State("DATA"):
                def data_fall():
                    m.d.sync += [rx.eq(rx_next), rx_bit.eq(rx_bit + 1)]
                    with m.If(rx_bit == 7):  # a byte is complete
                        m.d.sync += [word.eq(word_next), byte_i.eq(byte_i + 1),
                                     byte_last.eq(byte_i == nbytes - 2)]
                        with m.If(byte_last):  # a word is complete
                            m.d.sync += [byte_i.eq(0), byte_last.eq(nbytes == 1), word_i.eq(word_i + 1),
                                         word_last.eq(word_i == self.n_words - 2), self.mem_we.eq(1),
                                         self.mem_addr.eq(word_i)]
                            with m.If(word_last):
                                m.d.sync += self.cs_n.eq(1)
                                m.next = "DONE"
                clock_bit(data_fall)

            with m.State("DONE"):  # the last word is written in this cycle
                m.d.sync += self.ready.eq(1)
        return m
