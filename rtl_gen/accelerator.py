"""The accelerator core: memories, controller, MAC array, drain and requantizer."""

from amaranth import Array, C, Cat, Module, Mux, Signal, signed
from amaranth.utils import exact_log2
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from .config import AccelConfig
from .controller import Controller
from .mac_array import MacArray
from .requantizer import AffineRequantizer, ThresholdRequantizer
from .spram import SpramMemory
from zakid_hw.flash_image import pack_words
from zakid_hw.schedule import COL, col_delays, pads_pixel_b, peeks


def weight_word_values(image) -> list[int]:
    """The weight memory's words as unsigned integers (lane j in bits ``j * w_width ..``)."""
    mask = (1 << image.w_width) - 1
    return [sum((v & mask) << (j * image.w_width) for j, v in enumerate(word)) for word in image.weight_words]


def weight_flash_bytes(image) -> bytes:
    """The weights as a design with its weights in SPRAM reads them from flash (see
    :mod:`zakid_hw.flash_image`)."""
    return pack_words(weight_word_values(image), image.weight_word_bits)


class Accelerator(wiring.Component):
    """Runs a DAG of quantized layers (convolutions, dense layers, pooling, adds) on codes in on-chip memory.

    Built from an :class:`~rtl_gen.config.AccelConfig` and the compiler's memory image
    (:class:`zakid_hw.schedule.AccelImage`): weights, biases, threshold tables and the layer table are
    initialised memories and constants; nothing else is model specific.

    Ports:
        in_we:    in, 1: write ``in_data`` to input position ``in_addr`` (only while not busy).
        in_addr:  in, addr_width: byte index within the input storage (see :mod:`zakid_hw.schedule`).
        in_data:  in, 8: an input code (int8 as two's complement, or uint8).
        start:    in, 1: pulse to run an inference on the codes written.
        busy:     out, 1: from the cycle after ``start`` until ``done``.
        done:     out, 1: one-cycle pulse when the outputs are ready.
        out_addr: in, addr_width: byte index within the output storage to read (while not busy).
        out_data: out, 8: the code at ``out_addr``, four cycles after the address (registers: the address
                  plus the outputs' base, the memory read, the input word, the byte the lanes' broadcast
                  code takes from it), so no path runs from the host through the memories' or the word's
                  multiplexer trees.
        cycles:   out, 32: cycles from ``start`` to ``done`` of the last inference, from ``done`` until the
                  next ``start`` (while an inference runs: its cycles so far).

    With ``config.weights_in_spram`` the weights live in SPRAM, which the bitstream cannot initialise;
    three more ports then fill it (before the first ``start``):

        load_we:   in, 1: write ``load_data`` to weight word ``load_addr``.
        load_addr: in: weight word index.
        load_data: in, lanes * w_width: the word, lane j in bits ``j * w_width ..`` (two's complement).

    Activations live in one memory of ``lanes``-byte words, written a byte at a time; every tensor has
    its own byte range (the compiler's allocation), so residual inputs stay alive and layers never read
    what they write.

    With ``config.pixels == 2`` a second MAC array (bank B) works beside the first (bank A) on the same
    weights, its activations a cycle behind (they skip its DSP blocks' input register, so both banks' sums
    are final in the same cycle): in a pair layer (:func:`zakid_hw.schedule.pairable`) bank A works on
    one output pixel and bank B on the next (see :func:`zakid_hw.schedule.pair_form`). Each input word is
    read twice per ``lanes`` steps, A's at the word's first step and B's at its second, and held in a
    register per bank while its bytes are used; in a "shift" pair layer (one input channel) bank B takes
    instead the code bank A takes a step later, and at each kernel row's last column either A's code of an
    extra column (zero weights) or, in a "peek" layer, the byte after A's in A's word (read again into B's
    word register); in a "col" pair layer (one input channel, pixel B above A) B takes the code A took
    ``pair_delay`` steps before, from a delay line. The drain writes A's outputs, then B's.
    """

    def __init__(self, config: AccelConfig, image):
        self.config, self.image = config, image
        self.addr_width = image.io_addr_width
        ports = {
            "in_we": In(1), "in_addr": In(self.addr_width), "in_data": In(8),
            "start": In(1), "busy": Out(1), "done": Out(1),
            "out_addr": In(self.addr_width), "out_data": Out(8),
            "cycles": Out(32),
        }
        if config.weights_in_spram:
            ports.update(load_we=In(1), load_addr=In(max(1, (len(image.weight_words) - 1).bit_length())),
                         load_data=In(image.weight_word_bits))
        super().__init__(ports)

    def elaborate(self, platform):
        m = Module()
        img, L = self.image, self.config.lanes
        descs = img.layers
        lg = exact_log2(L)
        words = img.act_words
        waw = max(1, (words - 1).bit_length())  # word address bits

        # --- memories -------------------------------------------------------------------------------
        w_layout = data.ArrayLayout(signed(img.w_width), L)
        acc_layout = data.ArrayLayout(signed(img.acc_width), L)
        if self.config.weights_in_spram:
            m.submodules.weights = spram = SpramMemory(img.weight_word_bits, len(img.weight_words), primitive=True)
            m.d.comb += [spram.we.eq(self.load_we), spram.waddr.eq(self.load_addr), spram.wdata.eq(self.load_data)]
            w_rd = data.View(w_layout, spram.rdata)
        else:
            m.submodules.weights = weights = Memory(
                shape=w_layout, depth=len(img.weight_words), init=img.weight_words)
            w_rd = weights.read_port(domain="sync")
        m.submodules.biases = biases = Memory(
            shape=signed(max(1, img.b_width)), depth=len(img.bias_values), init=img.bias_values)
        m.submodules.acts = acts = Memory(shape=8 * L, depth=words, init=[])
        b_rd = biases.read_port(domain="sync")
        a_rd = acts.read_port(domain="sync")
        a_wr = acts.write_port(granularity=8)

        m.submodules.ctrl = ctrl = Controller(descriptors=descs, lanes=L, w_depth=len(img.weight_words),
                                              act_bytes=img.act_bytes)
        m.submodules.macs = macs = MacArray(lanes=L, dsp_lanes=self.config.dsp_lanes, w_width=img.w_width,
                                            acc_width=img.acc_width, dsp_pack=self.config.dsp_pack)
        paired = self.config.pixels == 2
        if paired:  # bank B: convolutions only (no maxima)
            m.submodules.macs_b = macs_b = MacArray(lanes=L, dsp_lanes=L, w_width=img.w_width, acc_width=img.acc_width,
                                                    dsp_pack=2, max_pool=False, x_late=True)
        aw = ctrl.addr_width
        if img.requantizer == "affine":
            rq = AffineRequantizer(width=img.acc_width, tables=img.affine, tag_width=ctrl.out_width)
        else:
            rq = ThresholdRequantizer(width=img.acc_width, out_bits=img.out_bits, stages=img.threshold_stages,
                                      tag_width=ctrl.out_width)
        m.submodules.requant = rq

        def per_layer(field, width):
            return Array(C(getattr(d, field), width) for d in descs)

        in_signed, chan, is_max = per_layer("in_signed", 1), per_layer("chan", 1), per_layer("is_max", 1)
        pad_code = per_layer("pad_code", 8)
        table_base = per_layer("table_base", rq.i_table.shape().width)
        per_channel, base_code = per_layer("per_channel", 1), per_layer("base_code", 8)
        raw_bytes = per_layer("raw_bytes", 4)  # 0: requantize; n: write the accumulator as n bytes
        b_base = per_layer("b_base", max(1, len(img.bias_values).bit_length()))
        pair_out = Array(C(d.pair_out, signed(aw)) for d in descs)

        def word(byte_addr):
            return byte_addr[lg:lg + waw] if lg + waw <= len(byte_addr) else byte_addr[lg:]

        # --- stage 0: the controller's step, registered (its address sums stay off the memory inputs) ---
        s0 = dict(valid=Signal(), first=Signal(), last=Signal(), layer=Signal.like(ctrl.layer),
                  inb=Signal(), rd=Signal.like(ctrl.rd_addr), w=Signal.like(ctrl.w_addr), hold=Signal(), rdb=Signal())
        m.d.sync += [s0["valid"].eq(ctrl.issue), s0["first"].eq(ctrl.first), s0["last"].eq(ctrl.issue & ctrl.last),
                     s0["layer"].eq(ctrl.layer), s0["inb"].eq(ctrl.rd_valid), s0["rd"].eq(ctrl.rd_addr),
                     s0["w"].eq(ctrl.w_addr), s0["hold"].eq(ctrl.hold), s0["rdb"].eq(ctrl.rd_b)]
        # what the drain needs of a group (output address, first channel, real lanes, layer, pixel B), loaded
        # at its last step: the drain reads it when the sums arrive, before the next group's last step
        # (cycle_model.GROUP_SPACING), so it need not travel down the pipeline with every step
        grp = dict(base=Signal.like(ctrl.o_addr, name="g_base"), ch=Signal.like(ctrl.ch_base, name="g_ch"),
                   n=Signal.like(ctrl.group_n, name="g_n"), layer=Signal.like(ctrl.layer, name="g_layer"),
                   pb=Signal(name="g_pb"))
        with m.If(ctrl.issue & ctrl.last):
            m.d.sync += [grp["base"].eq(ctrl.o_addr), grp["ch"].eq(ctrl.ch_base), grp["n"].eq(ctrl.group_n),
                         grp["layer"].eq(ctrl.layer), grp["pb"].eq(ctrl.pair_b)]
        if self.config.weights_in_spram:
            # SPRAM is read a cycle later, so its data reaches the multipliers in the cycle block RAM's
            # registered data does, straight from the blocks (a register of the address instead of the
            # word; the blocks feed the lanes through at most a two-row multiplexer)
            w_s1 = Signal.like(s0["w"], name="s1_w")
            m.d.sync += w_s1.eq(s0["w"])
            m.d.comb += spram.raddr.eq(w_s1)
        else:
            m.d.comb += w_rd.addr.eq(s0["w"])
        m.d.comb += [ctrl.start.eq(self.start),
                     self.busy.eq(ctrl.busy), self.done.eq(ctrl.done)]
        host_rd = Signal(aw)
        m.d.sync += host_rd.eq(self.out_addr + img.out_base)
        rd_byte = Signal(aw)
        with m.If(ctrl.busy):
            m.d.comb += rd_byte.eq(s0["rd"])
        with m.Else():
            m.d.comb += rd_byte.eq(host_rd)
        m.d.comb += a_rd.addr.eq(word(rd_byte))
        sel = Signal(max(lg, 1))  # the byte within the word read (last cycle's address)
        m.d.sync += sel.eq(rd_byte[:lg] if lg else 0)

        # --- stage 1: the memories read; stage 2: their data, registered (block RAM spread over many
        # blocks reaches the lanes through a multiplexer tree; a register here keeps it off the MAC path) ---
        s1 = {k: Signal.like(v, name=f"s1_{k}") for k, v in s0.items() if k not in ("rd", "w")}
        m.d.sync += [s1[k].eq(s0[k]) for k in s1]
        s1["sel"] = sel
        s2 = {k: Signal.like(v, name=f"s2_{k}") for k, v in s1.items() if k not in ("hold", "rdb")}
        m.d.sync += [s2[k].eq(s1[k]) for k in s2]
        word_q = Signal.like(a_rd.data)  # bank A's input word (in a pair layer: held from the word's first step)
        w_q = Signal(w_layout)
        if self.config.weights_in_spram:
            m.d.comb += w_q.eq(w_rd)
        else:
            m.d.sync += w_q.eq(w_rd.data)
        with m.If(~s1["hold"]):
            m.d.sync += word_q.eq(a_rd.data)
        lay = s2["layer"]

        def lane_bytes(word):  # a memory word as its L bytes, one per lane, for a byte chosen at run time
            return Array(word[8 * i: 8 * i + 8] for i in range(L))

        q_bytes = lane_bytes(word_q)
        # the byte a broadcast layer's step reads; while idle, the one at the host's out_addr (word_q
        # follows the read data then: no pair layer's step holds it)
        byte_q = Signal(8)
        if any(d.pair for d in descs):  # a pair layer's step may use a held word (ctrl.hold)
            m.d.comb += byte_q.eq(q_bytes[s2["sel"]])
        else:
            # chosen from the read data in stage 1 and registered beside word_q: the lanes' byte multiplexer
            # (32:1 for 32 lanes) is then off the path into the MAC array, TFC-w2a2's longest before. (With
            # pair layers it would choose from the held word too: the C=64 DS-CNN then routed in up to
            # twice the time, bench/README "Clock")
            m.d.sync += byte_q.eq(lane_bytes(a_rd.data)[s1["sel"]])
        m.d.sync += self.out_data.eq(byte_q)

        def centered(code):  # an int8 code as it is; a uint8 code minus 128 (see schedule.CENTER)
            return Mux(in_signed[lay], code, code ^ 0x80).as_signed()

        codes = []
        for lane in range(L):
            code = Signal(8, name=f"code{lane}")
            codes.append(code)
            with m.If(~s2["inb"]):
                m.d.comb += code.eq(pad_code[lay])
            with m.Elif(chan[lay]):
                m.d.comb += code.eq(q_bytes[lane])
            with m.Else():
                m.d.comb += code.eq(byte_q)
            m.d.comb += macs.x[lane].eq(centered(code))
        m.d.comb += [macs.w.eq(w_q), macs.valid.eq(s2["valid"]),
                     macs.first.eq(s2["first"]), macs.is_max.eq(is_max[lay])]
        if paired:
            # bank B: pixel B's word (read at the word's second step), its bytes a cycle behind bank A's.
            # Its blocks take the weights with bank A's and the bytes a cycle later without an input
            # register (x_late), so both banks' sums are final in the same cycle.
            word_b = Signal.like(a_rd.data)
            with m.If(s1["rdb"]):
                m.d.sync += word_b.eq(a_rd.data)
            s3 = dict(sel=Signal.like(sel), layer=Signal.like(lay))
            sel_b = s2["sel"]
            peek = peeks(descs)
            if peek:
                # a "peek" pair layer: B's tap at the last kernel column is the byte after A's, in the word
                # A read there (rd_b); that step's flag follows it down the pipeline
                rdb = [Signal(name="s2_rdb"), Signal(name="s3_rdb")]
                m.d.sync += [rdb[0].eq(s1["rdb"]), rdb[1].eq(rdb[0])]
                sel_b = s2["sel"] + Array(C(int(x.pair_shift == 2), 1) for x in descs)[lay]
            m.d.sync += [s3["sel"].eq(sel_b), s3["layer"].eq(lay)]
            code_b = lane_bytes(word_b)[s3["sel"]]
            if pads_pixel_b(descs):  # B's window may reach outside the input
                inb_b = [Signal(name="s0_inb_b"), Signal(name="s1_inb_b"), Signal(name="inb_b")]
                m.d.sync += [inb_b[0].eq(ctrl.rd_valid_b), inb_b[1].eq(inb_b[0])]
                with m.If(s1["rdb"]):
                    m.d.sync += inb_b[2].eq(inb_b[1])
                code_b = Mux(inb_b[2], code_b, pad_code[s3["layer"]])
            x_b = Mux(in_signed[s3["layer"]], code_b, code_b ^ 0x80).as_signed()
            if any(x.pair_shift and x.pair_shift != COL for x in descs):
                # a "shift" pair layer (one input channel): B's tap is A's one kernel column on, the code
                # bank A takes this cycle, which is the next step's (but at a "peek" layer's last column)
                take_a = Array(C(int(x.pair_shift not in (0, COL)), 1) for x in descs)[s3["layer"]]
                x_b = Mux(take_a & ~rdb[1] if peek else take_a, macs.x[0], x_b)
            delays = col_delays(descs)
            if any(delays):
                # a "col" pair layer (one input channel): B, the pixel above, takes the code A took
                # pair_delay steps before, from a delay line (B's step is a cycle behind A's, so one more).
                # The line takes the code before it is centred (one logic level less in front of it)
                line = [Signal(8, name=f"col{i}") for i in range(max(delays) + 1)]
                m.d.sync += [line[0].eq(codes[0]), *(b.eq(a) for a, b in zip(line, line[1:]))]
                taps = sorted(set(x for x in delays if x))
                tap = line[taps[0]] if len(taps) == 1 else Array(line[x or taps[0]] for x in delays)[s3["layer"]]
                is_col = Array(C(int(x > 0), 1) for x in delays)[s3["layer"]]
                x_b = Mux(is_col, Mux(in_signed[s3["layer"]], tap, tap ^ 0x80).as_signed(), x_b)
            m.d.comb += [*(macs_b.x[lane].eq(x_b) for lane in range(L)), macs_b.w.eq(w_q),
                         macs_b.valid.eq(s2["valid"]), macs_b.first.eq(s2["first"]), macs_b.is_max.eq(0)]

        # the group's sums are final three cycles after its last step entered the MAC array
        last = s2["last"]
        for i in range(3):
            nxt = Signal(name=f"d{i}_last")
            m.d.sync += nxt.eq(last)
            last = nxt
        fin = dict(grp, last=last)

        # --- drain: the lanes' sums go one per cycle into the requantizer ----------------------------
        drain = Signal(acc_layout)
        d_count = Signal(range(L + 1))
        d_addr = Signal.like(ctrl.o_addr)
        d_ch = Signal.like(ctrl.ch_base)
        d_layer = Signal.like(ctrl.layer)
        # the bias memory address of the drained output, b_base[d_layer] + d_ch, kept as a register (no adder
        # in front of biases that Yosys puts in logic cells: mnist-8's longest path ran through one)
        d_bias = Signal.like(b_rd.addr)
        p_valid = Signal()  # the bias stage holds an output

        d_byte = Signal(3)  # raw layers: which byte of the lane's accumulator goes out this cycle
        raw = raw_bytes[d_layer] != 0
        lane_done = ~raw | (d_byte == raw_bytes[d_layer] - 1)

        def shifted(sums):
            """The drain after a lane leaves it: the next lane's sum at the bottom (a shift register packs
            each bit's multiplexer and flip-flop into one logic cell)."""
            return Cat(sums.as_value()[img.acc_width:], C(0, img.acc_width))

        if paired:
            # bank B's sums are final with bank A's; the drain hands them out after A's (pair layers are
            # requantized: one cycle per lane)
            drain_b = Signal(acc_layout)
            b_pend, in_b = Signal(), Signal()
            b_addr, b_ch, b_n, b_bias = Signal.like(d_addr), Signal.like(d_ch), Signal.like(d_count), Signal.like(d_bias)
        with m.If(fin["last"]):
            first_bias = b_base[fin["layer"]] + fin["ch"]  # the group's first channel's (A's and B's)
            m.d.sync += [drain.eq(macs.acc), d_count.eq(fin["n"]), d_addr.eq(fin["base"]), d_ch.eq(fin["ch"]),
                         d_layer.eq(fin["layer"]), d_byte.eq(0), d_bias.eq(first_bias)]
            if paired:
                m.d.sync += [drain_b.eq(macs_b.acc), in_b.eq(0), b_pend.eq(fin["pb"]), b_ch.eq(fin["ch"]),
                             b_n.eq(fin["n"]), b_addr.eq(fin["base"] + pair_out[fin["layer"]]),
                             b_bias.eq(first_bias)]
        with m.Elif(d_count != 0):
            m.d.sync += d_addr.eq(d_addr + 1)
            with m.If(lane_done):
                m.d.sync += [drain.eq(shifted(drain)), d_count.eq(d_count - 1), d_ch.eq(d_ch + 1), d_byte.eq(0),
                             d_bias.eq(d_bias + 1)]
                if paired:
                    with m.If(in_b):
                        m.d.sync += drain_b.eq(shifted(drain_b))
                    with m.If((d_count == 1) & b_pend):  # A's last: B's first next
                        m.d.sync += [d_count.eq(b_n), d_addr.eq(b_addr), d_ch.eq(b_ch), in_b.eq(1), b_pend.eq(0),
                                     d_bias.eq(b_bias)]
            with m.Else():
                m.d.sync += d_byte.eq(d_byte + 1)
        d_out = Mux(in_b, drain_b[0], drain[0]) if paired else drain[0]  # the sum handed to the bias stage
        # --- bias: the drained sum plus its output channel's bias ---------------------------------------
        p_acc, p_tag = Signal.like(drain[0]), Signal.like(d_addr)
        p_ch, p_layer, p_byte, p_raw = Signal.like(d_ch), Signal.like(d_layer), Signal.like(d_byte), Signal()
        m.d.comb += b_rd.addr.eq(d_bias)
        m.d.sync += [p_valid.eq(d_count != 0), p_acc.eq(d_out), p_tag.eq(d_addr), p_ch.eq(d_ch),
                     p_layer.eq(d_layer), p_byte.eq(d_byte), p_raw.eq(raw)]
        biased = Signal(signed(img.acc_width))
        m.d.comb += biased.eq(p_acc + b_rd.data)
        acc32 = Signal(signed(32))
        m.d.comb += acc32.eq(biased)
        acc_bytes = Array(acc32[8 * b: 8 * b + 8] for b in range(4))
        m.d.comb += [rq.i_valid.eq(p_valid & ~p_raw), rq.i_acc.eq(biased), rq.i_base.eq(base_code[p_layer]),
                     rq.i_table.eq(table_base[p_layer] + Mux(per_channel[p_layer], p_ch, 0)),
                     rq.i_tag.eq(p_tag)]

        # --- write back: requantizer results, or the host's input codes ------------------------------
        wr_byte = Signal(aw)
        wr_code = Signal(8)
        wr_en = Signal()
        with m.If(rq.o_valid):
            m.d.comb += [wr_en.eq(1), wr_byte.eq(rq.o_tag), wr_code.eq(rq.o_code)]
        with m.Elif(p_valid & p_raw):
            m.d.comb += [wr_en.eq(1), wr_byte.eq(p_tag), wr_code.eq(acc_bytes[p_byte])]
        with m.Elif(~ctrl.busy):
            m.d.comb += [wr_en.eq(self.in_we), wr_byte.eq(self.in_addr + img.in_base), wr_code.eq(self.in_data)]
        m.d.comb += [a_wr.addr.eq(word(wr_byte)), a_wr.data.eq(Cat(*([wr_code] * L))),
                     a_wr.en.eq(Mux(wr_en, C(1, L) << (wr_byte[:lg] if lg else C(0, 1)), 0))]

        # --- cycle counter -----------------------------------------------------------------------------
        # counts from ``start`` while busy and holds from ``done`` (busy falls with it) to the next ``start``
        with m.If(self.start):
            m.d.sync += self.cycles.eq(1)
        with m.Elif(ctrl.busy):
            m.d.sync += self.cycles.eq(self.cycles + 1)
        return m
