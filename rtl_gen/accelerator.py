"""The accelerator core: memories, controller, MAC array, drain and requantizer."""

from amaranth import Array, C, Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .controller import Controller
from .mac_array import X_WIDTH, MacArray
from .requantizer import ThresholdRequantizer


class Accelerator(wiring.Component):
    """Runs a chain of quantized dense layers on codes held in on-chip memory.

    Built from an :class:`~rtl_gen.config.AccelConfig` and the compiler's memory image
    (:class:`zakid_hw.schedule.AccelImage`): weights, biases, threshold tables and the layer table are
    initialised memories and constants; nothing else is model specific.

    Ports:
        in_we:    in, 1: write ``in_data`` to input position ``in_addr`` (only while not busy).
        in_addr:  in, addr_width.
        in_data:  in, 8: an input code (int8 as two's complement, or uint8).
        start:    in, 1: pulse to run an inference on the codes written.
        busy:     out, 1: from the cycle after ``start`` until ``done``.
        done:     out, 1: one-cycle pulse when the outputs are ready.
        out_addr: in, addr_width: output position to read (while not busy).
        out_data: out, 8: the code at ``out_addr``, one cycle after the address.
        cycles:   out, 32: cycles from ``start`` to ``done`` of the last inference.

    Activations live in one memory of two banks (ping-pong): layer i reads bank i % 2 and writes bank
    (i + 1) % 2; the host writes bank 0 and reads the last layer's bank.
    """

    def __init__(self, config: AccelConfig, image):
        self.config, self.image = config, image
        self.addr_width = image.act_addr_width
        super().__init__({
            "in_we": In(1), "in_addr": In(self.addr_width), "in_data": In(8),
            "start": In(1), "busy": Out(1), "done": Out(1),
            "out_addr": In(self.addr_width), "out_data": Out(8),
            "cycles": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        img, L = self.image, self.config.lanes
        descs = img.layers
        aw = self.addr_width

        # --- memories -------------------------------------------------------------------------------
        w_layout = data.ArrayLayout(signed(img.w_width), L)
        b_layout = data.ArrayLayout(signed(img.acc_width), L)
        m.submodules.weights = weights = Memory(
            shape=w_layout, depth=len(img.weight_words), init=img.weight_words)
        m.submodules.biases = biases = Memory(
            shape=b_layout, depth=len(img.bias_words), init=img.bias_words)
        m.submodules.acts = acts = Memory(shape=8, depth=img.act_mem_depth, init=[])
        w_rd = weights.read_port(domain="sync")
        b_rd = biases.read_port(domain="sync")
        a_rd = acts.read_port(domain="sync")
        a_wr = acts.write_port()

        m.submodules.ctrl = ctrl = Controller(descriptors=descs, lanes=L, w_depth=len(img.weight_words),
                                              b_depth=len(img.bias_words))
        m.submodules.macs = macs = MacArray(lanes=L, dsp_lanes=self.config.dsp_lanes, w_width=img.w_width,
                                            acc_width=img.acc_width)
        tag_width = aw + 1
        m.submodules.requant = rq = ThresholdRequantizer(width=img.acc_width, out_bits=img.out_bits,
                                                         stages=img.threshold_stages, tag_width=tag_width)

        in_bank = Array(C(i % 2, 1) for i in range(len(descs)))
        in_signed = Array(C(d.in_signed, 1) for d in descs)
        table_base = Array(C(d.table_base, rq.i_table.shape().width) for d in descs)
        per_channel = Array(C(d.per_channel, 1) for d in descs)
        base_code = Array(C(d.base_code, 8) for d in descs)

        # --- issue: addresses to the memories --------------------------------------------------------
        m.d.comb += [w_rd.addr.eq(ctrl.w_addr), b_rd.addr.eq(ctrl.b_addr), ctrl.start.eq(self.start),
                     self.busy.eq(ctrl.busy), self.done.eq(ctrl.done)]
        # addresses within a bank, at exactly the bank's width, so the bank bit lands in the right place
        k_addr, d_bank_addr = Signal(aw), Signal(aw)
        with m.If(ctrl.busy):
            m.d.comb += [k_addr.eq(ctrl.k), a_rd.addr.eq(Cat(k_addr, in_bank[ctrl.layer]))]
        with m.Else():
            m.d.comb += a_rd.addr.eq(Cat(self.out_addr, C(img.out_bank, 1)))
        m.d.comb += self.out_data.eq(a_rd.data)

        # --- stage 1: memory data -> MAC array -------------------------------------------------------
        s1 = dict(valid=Signal(), first=Signal(), last=Signal(), signed_=Signal(), layer=Signal.like(ctrl.layer),
                  base=Signal.like(ctrl.group_base), n=Signal.like(ctrl.group_n))
        m.d.sync += [s1["valid"].eq(ctrl.issue), s1["first"].eq(ctrl.first), s1["last"].eq(ctrl.issue & ctrl.last),
                     s1["signed_"].eq(in_signed[ctrl.layer]), s1["layer"].eq(ctrl.layer),
                     s1["base"].eq(ctrl.group_base), s1["n"].eq(ctrl.group_n)]
        x = Signal(signed(X_WIDTH))
        m.d.comb += x.eq(Mux(s1["signed_"], a_rd.data.as_signed(), a_rd.data))
        m.d.comb += [macs.x.eq(x), macs.w.eq(w_rd.data), macs.bias.eq(b_rd.data),
                     macs.valid.eq(s1["valid"]), macs.first.eq(s1["first"])]

        # the group's sums are final three cycles after its last step entered the MAC array
        delay = [s1]
        for i in range(3):
            prev = delay[-1]
            nxt = {k: Signal.like(v, name=f"d{i}_{k}") for k, v in prev.items()}
            m.d.sync += [nxt[k].eq(prev[k]) for k in prev]
            delay.append(nxt)
        fin = delay[-1]

        # --- drain: the lanes' sums go one per cycle into the requantizer ----------------------------
        drain = Signal(b_layout)
        d_count = Signal(range(L + 1))
        d_addr = Signal.like(ctrl.group_base)
        d_layer = Signal.like(ctrl.layer)
        pending = Signal(2)
        group_issued = ctrl.issue & ctrl.last
        group_drained = (d_count == 1)
        m.d.sync += pending.eq(pending + group_issued - group_drained)
        m.d.comb += [ctrl.pending.eq(pending), ctrl.idle.eq((pending == 0) & ~rq.busy)]

        with m.If(fin["last"]):
            m.d.sync += [drain.eq(macs.acc), d_count.eq(fin["n"]), d_addr.eq(fin["base"]), d_layer.eq(fin["layer"])]
        with m.Elif(d_count != 0):
            m.d.sync += [drain.eq(Cat(drain.as_value()[img.acc_width:], C(0, img.acc_width))),
                         d_count.eq(d_count - 1), d_addr.eq(d_addr + 1)]
        out_bank = ~in_bank[d_layer]
        m.d.comb += [rq.i_valid.eq(d_count != 0), rq.i_acc.eq(drain[0]), rq.i_base.eq(base_code[d_layer]),
                     rq.i_table.eq(table_base[d_layer] + Mux(per_channel[d_layer], d_addr, 0)),
                     d_bank_addr.eq(d_addr), rq.i_tag.eq(Cat(d_bank_addr, out_bank))]

        # --- write back: requantizer results, or the host's input codes ------------------------------
        with m.If(rq.o_valid):
            m.d.comb += [a_wr.en.eq(1), a_wr.addr.eq(rq.o_tag), a_wr.data.eq(rq.o_code)]
        with m.Elif(~ctrl.busy):
            m.d.comb += [a_wr.en.eq(self.in_we), a_wr.addr.eq(Cat(self.in_addr, C(0, 1))),
                         a_wr.data.eq(self.in_data)]

        # --- cycle counter -----------------------------------------------------------------------------
        count = Signal(32)
        with m.If(self.start):
            m.d.sync += count.eq(1)
        with m.Elif(ctrl.busy):
            m.d.sync += count.eq(count + 1)
        with m.If(ctrl.done):
            m.d.sync += self.cycles.eq(count)
        return m
