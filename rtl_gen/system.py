"""The accelerator behind its UART host link: the component a board top level instantiates."""

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .accelerator import Accelerator
from .host_link import HostLink

CORE_PORTS = ("in_we", "in_addr", "in_data", "start", "out_addr")   # link -> core
LINK_PORTS = ("busy", "done", "out_data", "cycles")                  # core -> link


class AcceleratorSystem(wiring.Component):
    """:class:`~rtl_gen.accelerator.Accelerator` plus :class:`~rtl_gen.host_link.HostLink`.

    Ports:
        rx: in, 1: UART receive pin (idle high).
        tx: out, 1: UART transmit pin (idle high).
    """

    def __init__(self, config, image, signature: int):
        self.config, self.image, self.model_signature = config, image, signature
        super().__init__({"rx": In(1), "tx": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = Accelerator(self.config, self.image)
        m.submodules.link = link = HostLink(in_len=self.image.in_len, out_len=self.image.out_len,
                                            signature=self.model_signature, divisor=self.config.uart_divisor,
                                            addr_width=core.addr_width)
        m.d.comb += [link.rx.eq(self.rx), self.tx.eq(link.tx)]
        m.d.comb += [getattr(core, p).eq(getattr(link, p)) for p in CORE_PORTS]
        m.d.comb += [getattr(link, p).eq(getattr(core, p)) for p in LINK_PORTS]
        return m
