"""The UART host link: speaks :mod:`zakid_hw.protocol` on ``rx``/``tx`` and drives an accelerator core.

Core interface (all ``sync`` domain; HostLink is the master side):

* ``in_we`` / ``in_addr`` / ``in_data``: write input code ``in_data`` at ``in_addr`` of the input buffer.
* ``start``: one-cycle pulse that starts an inference; ``busy`` is high from the next cycle until ``done``;
  ``done`` is a one-cycle pulse at the end.
* ``out_addr`` / ``out_data``: synchronous read of output code ``out_addr``, valid four cycles after.
* ``cycles``: cycles of the last inference (start to done), stable until the next ``start``.
"""

from amaranth import Array, Const, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from zakid_hw.protocol import CMD_INFO, CMD_RUN, MAX_LEN, RESP_UNKNOWN, encode_info_response

from .uart import UartRx, UartTx

__all__ = ["HostLink"]


class HostLink(wiring.Component):
    """UART protocol engine between a host and an accelerator core.

    Protocol (see :mod:`zakid_hw.protocol`): ``I`` -> ``I`` + in_len (u16) + out_len (u16) + signature (u32);
    ``R`` + in_len codes -> the codes are written to the core, ``start`` is pulsed, and after ``done`` the
    answer is ``R`` + out_len codes (read back from the core) + cycles (u32); any other first byte -> ``?``.
    Bytes that arrive while an answer is being computed or sent are ignored. If a run request stalls (no
    byte for ``rx_timeout_cycles``), the partial request is dropped without an answer and the link returns
    to idle, so a host can recover by retrying.

    Ports:

    * ``rx`` (in, 1, idle high): UART receive pin (from the host).
    * ``tx`` (out, 1, idle high): UART transmit pin (to the host).
    * ``in_we`` (out, 1): write strobe for one input code.
    * ``in_addr`` (out, ``addr_width``): input code index, 0 .. in_len-1.
    * ``in_data`` (out, 8): input code (the raw byte: int8 two's complement or uint8).
    * ``start`` (out, 1): one-cycle pulse after the last input code is written.
    * ``busy`` (in, 1): the core is running (not needed by the link; present for the interface).
    * ``done`` (in, 1): one-cycle pulse when the core has finished.
    * ``out_addr`` (out, ``addr_width``): output code index, 0 .. out_len-1.
    * ``out_data`` (in, 8): output code at the ``out_addr`` of four cycles before.
    * ``cycles`` (in, 32): cycles of the last inference.

    :param in_len: number of input codes (1 .. 65535, at most ``2**addr_width``).
    :param out_len: number of output codes (1 .. 65535, at most ``2**addr_width``).
    :param signature: 32-bit model identifier returned by ``I`` (kept as ``model_signature``; ``signature``
        is the Amaranth interface signature).
    :param divisor: clock cycles per UART bit (>= 4), e.g. 104 for 115200 baud at 12 MHz.
    :param addr_width: width of ``in_addr`` and ``out_addr``.
    :param rx_timeout_cycles: cycles without a byte after which a partial run request is dropped; default
        4096 byte times (about 0.36 s at 115200 baud); 0 disables the timeout.
    """

    def __init__(self, *, in_len: int, out_len: int, signature: int, divisor: int, addr_width: int,
                 rx_timeout_cycles: int | None = None):
        problems = []
        if not isinstance(addr_width, int) or addr_width < 1:
            problems.append(f"addr_width must be a positive int, not {addr_width!r}")
        else:
            for name, v in (("in_len", in_len), ("out_len", out_len)):
                if not isinstance(v, int) or not 1 <= v <= min(MAX_LEN, 2 ** addr_width):
                    problems.append(f"{name}={v!r} must be an int in 1 .. min({MAX_LEN}, 2**addr_width)")
        if not isinstance(signature, int) or not 0 <= signature <= 0xFFFFFFFF:
            problems.append(f"signature={signature!r} must fit 32 bits unsigned")
        if not isinstance(divisor, int) or divisor < 4:
            problems.append(f"divisor={divisor!r} must be an int >= 4")
        if rx_timeout_cycles is None and not problems:
            rx_timeout_cycles = divisor * 10 * 4096
        if not isinstance(rx_timeout_cycles, int) or rx_timeout_cycles < 0:
            problems.append(f"rx_timeout_cycles={rx_timeout_cycles!r} must be an int >= 0")
        if problems:
            self._MustUse__silence = True
            raise ValueError("HostLink: " + "; ".join(problems))
        self.in_len = in_len
        self.out_len = out_len
        self.model_signature = signature
        self.divisor = divisor
        self.addr_width = addr_width
        self.rx_timeout_cycles = rx_timeout_cycles
        super().__init__({
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "in_we": Out(1),
            "in_addr": Out(addr_width),
            "in_data": Out(8),
            "start": Out(1),
            "busy": In(1),
            "done": In(1),
            "out_addr": Out(addr_width),
            "out_data": In(8),
            "cycles": In(32),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.uart_rx = urx = UartRx(self.divisor)
        m.submodules.uart_tx = utx = UartTx(self.divisor)
        m.d.comb += [urx.rx.eq(self.rx), self.tx.eq(utx.tx)]

        info = encode_info_response(self.in_len, self.out_len, self.model_signature)
        info_rom = Array(Const(b, 8) for b in info)

        idx = Signal(range(max(self.in_len, self.out_len, len(info)) + 1))
        txb = Signal(8)  # latched output code
        m.d.comb += [
            self.in_addr.eq(idx),
            self.out_addr.eq(idx),
            self.in_data.eq(urx.data),
        ]

        # idx's end tests for the requests and answers, registered: there idx changes on a UART byte, a
        # frame or at least three cycles before the next test (INFO, whose first byte may go out in its
        # first cycle, tests idx directly)
        in_end, out_end, cycles_end = Signal(), Signal(), Signal()
        m.d.sync += [in_end.eq(idx == self.in_len - 1), out_end.eq(idx == self.out_len - 1), cycles_end.eq(idx == 3)]

        # a run request's quiet cycles, counted down from timeout - 1: it has stalled when the count is
        # negative (its top bit, so no wide comparison sits in front of the state register)
        timeout = self.rx_timeout_cycles
        silent = Signal(range(-1, timeout), name="silent") if timeout else None
        stalled = silent[-1] if timeout else None

        with m.FSM(name="host_link"):
            with m.State("IDLE"):
                with m.If(urx.valid):
                    m.d.sync += idx.eq(0)
                    if silent is not None:
                        m.d.sync += silent.eq(timeout - 1)
                    with m.Switch(urx.data):
                        with m.Case(CMD_INFO[0]):
                            m.next = "INFO"
                        with m.Case(CMD_RUN[0]):
                            m.next = "RECV"
                        with m.Default():
                            m.next = "UNKNOWN"

            with m.State("INFO"):
                m.d.comb += [utx.data.eq(info_rom[idx]), utx.valid.eq(1)]
                with m.If(utx.ready):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(idx == len(info) - 1):
                        m.next = "IDLE"

            with m.State("UNKNOWN"):
                m.d.comb += [utx.data.eq(RESP_UNKNOWN[0]), utx.valid.eq(1)]
                with m.If(utx.ready):
                    m.next = "IDLE"

            with m.State("RECV"):
                with m.If(urx.valid):
                    m.d.comb += self.in_we.eq(1)
                    m.d.sync += idx.eq(idx + 1)
                    if silent is not None:
                        m.d.sync += silent.eq(timeout - 1)
                    with m.If(in_end):
                        m.next = "START"
                if silent is not None:
                    with m.Elif(stalled):
                        m.next = "IDLE"  # stalled request: drop it
                    with m.Else():
                        m.d.sync += silent.eq(silent - 1)

            with m.State("START"):
                m.d.comb += self.start.eq(1)
                m.next = "WAIT"

            with m.State("WAIT"):
                with m.If(self.done):
                    m.next = "ANSWER"

            with m.State("ANSWER"):
                m.d.comb += [utx.data.eq(CMD_RUN[0]), utx.valid.eq(1)]
                with m.If(utx.ready):
                    m.d.sync += idx.eq(0)
                    m.next = "FETCH"

            with m.State("FETCH"):  # out_addr = idx is presented from this cycle on
                m.next = "ADDR"

            with m.State("ADDR"):  # the core registers the address
                m.next = "READ"

            with m.State("READ"):  # the core reads its memory
                m.next = "WORD"

            with m.State("WORD"):  # the core registers the word read, then its code
                m.next = "LATCH"

            with m.State("LATCH"):  # out_data is valid in this cycle
                m.d.sync += txb.eq(self.out_data)
                m.next = "SEND"

            with m.State("SEND"):
                m.d.comb += [utx.data.eq(txb), utx.valid.eq(1)]
                with m.If(utx.ready):
                    with m.If(out_end):
                        m.d.sync += idx.eq(0)
                        m.next = "CYCLES"
                    with m.Else():
                        m.d.sync += idx.eq(idx + 1)
                        m.next = "FETCH"

            with m.State("CYCLES"):
                m.d.comb += [utx.data.eq(self.cycles.word_select(idx[:2], 8)), utx.valid.eq(1)]
                with m.If(utx.ready):
                    m.d.sync += idx.eq(idx + 1)
                    with m.If(cycles_end):
                        m.next = "IDLE"
        return m
