"""The accelerator behind its UART host link: the component a board top level instantiates."""

from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from .accelerator import Accelerator
from .flash_loader import SpiFlashLoader, wake_cycles_for
from .host_link import HostLink
from zakid_hw.flash_image import WEIGHTS_OFFSET

CORE_PORTS = ("in_we", "in_addr", "in_data", "start")   # link -> core, through a register
READ_PORTS = ("out_addr",)                               # link -> core, direct
LINK_PORTS = ("busy", "done", "out_data", "cycles")                  # core -> link


def weight_loader_params(config, image) -> dict:
    """Parameters of the SPI flash loader that fills the weight SPRAM of a design with ``config`` and ``image``."""
    return dict(offset=WEIGHTS_OFFSET, n_words=len(image.weight_words), word_bits=image.weight_word_bits,
                clk_div=config.flash_clk_div, wake_cycles=wake_cycles_for(config.clock_mhz * 1e6))


class AcceleratorSystem(wiring.Component):
    """:class:`~rtl_gen.accelerator.Accelerator` plus :class:`~rtl_gen.host_link.HostLink`.

    Ports:
        rx: in, 1: UART receive pin (idle high).
        tx: out, 1: UART transmit pin (idle high).

    With ``config.weights_in_spram`` a :class:`~rtl_gen.flash_loader.SpiFlashLoader` first copies the weights
    from SPI flash (at :data:`zakid_hw.flash_image.WEIGHTS_OFFSET`) into the core's SPRAM; until it is done
    the host link sees an idle line (a host's request during the load goes unanswered; ask again). Then:
        flash_sck, flash_cs_n, flash_copi: out, 1: SPI flash pins (mode 0).
        flash_cipo: in, 1.
    """

    def __init__(self, config, image, signature: int):
        self.config, self.image, self.model_signature = config, image, signature
        ports = {"rx": In(1), "tx": Out(1)}
        if config.weights_in_spram:
            ports.update(flash_sck=Out(1), flash_cs_n=Out(1, init=1), flash_copi=Out(1), flash_cipo=In(1))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = Accelerator(self.config, self.image)
        link = HostLink(in_len=self.image.in_len, out_len=self.image.out_len, signature=self.model_signature,
                        divisor=self.config.uart_divisor, addr_width=core.addr_width)
        m.submodules.link = link
        m.d.comb += self.tx.eq(link.tx)
        # the link's input writes and its start reach the core through a register, a cycle later (the link
        # sits by the UART pins, the activation memory may be across the chip: the receiver's timer to the
        # memory's write enable was TFC-w2a2's critical path); the last write still comes before start
        m.d.sync += [getattr(core, p).eq(getattr(link, p)) for p in CORE_PORTS]
        m.d.comb += [getattr(core, p).eq(getattr(link, p)) for p in READ_PORTS]
        m.d.comb += [getattr(link, p).eq(getattr(core, p)) for p in LINK_PORTS]
        if self.config.weights_in_spram:
            m.submodules.loader = loader = SpiFlashLoader(**weight_loader_params(self.config, self.image))
            m.d.comb += [self.flash_sck.eq(loader.sck), self.flash_cs_n.eq(loader.cs_n),
                         self.flash_copi.eq(loader.copi), loader.cipo.eq(self.flash_cipo),
                         core.load_we.eq(loader.mem_we), core.load_addr.eq(loader.mem_addr),
                         core.load_data.eq(loader.mem_data)]
            # an idle line rather than a reset: a reset held by `ready` would reach the link's enable logic
            # from the loader through a long route (measured as the critical path of the C=64 DS-CNN)
            m.d.comb += link.rx.eq(self.rx | ~loader.ready)
        else:
            m.d.comb += link.rx.eq(self.rx)
        return m
