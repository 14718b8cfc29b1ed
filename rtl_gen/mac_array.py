"""The MAC array: ``lanes`` multiply-accumulate units, one activation per lane per cycle."""

from amaranth import Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from .dsp import DualMul8

X_WIDTH = 8  # an int8 activation code (uint8 codes arrive centred, see zakid_hw.schedule.CENTER)


def shift_add_product(x, w, w_width):
    """``x * w`` for signed ``x`` and signed ``w`` built from shifted adds, so Yosys maps it to logic
    cells rather than a DSP block."""
    terms = [Mux(w[i], x, 0) << i for i in range(w_width)]
    return sum(terms[:-1]) - terms[-1]


class MacArray(wiring.Component):
    """``lanes`` accumulators, each ``acc = sum(x * w)`` (or ``max(x * w)``) over one sequence of products
    (the bias is added later, one output at a time, in the accelerator's drain).

    Ports:
        x:      in, one signed(8) activation per lane (the same code in every lane for a broadcast layer);
                with ``x_late``, one cycle after the ``w``, ``valid``, ``first`` it goes with.
        w:      in, one signed(w_width) weight per lane.
        valid:  in, 1: take the product of ``x`` and ``w`` this cycle.
        first:  in, 1: this product starts a new sum (the accumulator restarts from zero).
        is_max: in, 1: keep the largest product instead of the sum (max pooling, whose weights are all 1:
                the products and their maximum are int8 codes, compared on 8 bits).
        acc:    out, one signed(acc_width) accumulator per lane; a product entered in cycle t is included
                from cycle t+3 on (input register, product register, accumulator).

    Lanes ``0 .. dsp_lanes-1`` multiply in DSP blocks: with ``dsp_pack=1`` an inferred multiplier each
    (Yosys maps it to one SB_MAC16 on iCE40 UP5K), with ``dsp_pack=2`` two lanes per SB_MAC16 in its
    two-8x8 mode (:class:`rtl_gen.dsp.DualMul8`, weights of at most 8 bits). The other lanes use
    :func:`shift_add_product`. With ``max_pool=False`` the lanes only sum (``is_max`` is ignored) and keep no
    running maximum. With ``x_late`` (every lane in a DSP block, two per block) the activations arrive a
    cycle after their weights and go into the multipliers without the blocks' input register, so the
    products are summed in the same cycles as without it.
    """

    def __init__(self, *, lanes, dsp_lanes, w_width, acc_width, dsp_pack=1, max_pool=True, x_late=False):
        if dsp_pack not in (1, 2) or (dsp_pack == 2 and (w_width > 8 or dsp_lanes % 2)):
            raise ValueError(f"dsp_pack={dsp_pack} needs 1, or 2 with weights of at most 8 bits and an even "
                             f"number of DSP lanes (w_width={w_width}, dsp_lanes={dsp_lanes})")
        if x_late and (dsp_pack != 2 or dsp_lanes != lanes):
            raise ValueError("x_late needs every lane in a DSP block, two per block")
        self.lanes, self.dsp_lanes, self.w_width, self.acc_width = lanes, dsp_lanes, w_width, acc_width
        self.dsp_pack, self.max_pool, self.x_late = dsp_pack, max_pool, x_late
        super().__init__({
            "x": In(data.ArrayLayout(signed(X_WIDTH), lanes)),
            "w": In(data.ArrayLayout(signed(w_width), lanes)),
            "valid": In(1),
            "first": In(1),
            "is_max": In(1),
            "acc": Out(data.ArrayLayout(signed(acc_width), lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        # input register: keeps memory read paths and the multipliers in separate cycles
        x = Signal.like(self.x)
        w = Signal.like(self.w)
        valid_i, first_i, max_i = Signal(), Signal(), Signal()
        m.d.sync += [x.eq(self.x), w.eq(self.w), valid_i.eq(self.valid),
                     first_i.eq(self.first), max_i.eq(self.is_max)]
        valid_d, first_d, max_d = Signal(), Signal(), Signal()
        m.d.sync += [valid_d.eq(valid_i), first_d.eq(first_i), max_d.eq(max_i)]
        held_max = Signal()  # the accumulators hold maxima (the flag of the last product taken)
        with m.If(valid_d):
            m.d.sync += held_max.eq(max_d)
        prods = [Signal(signed(X_WIDTH + self.w_width), name=f"prod{lane}") for lane in range(self.lanes)]
        if self.dsp_pack == 2:
            # input and product registers inside the DSP block: the same two cycles as below
            for pair in range(self.dsp_lanes // 2):
                lo, hi = 2 * pair, 2 * pair + 1
                m.submodules[f"dsp{pair}"] = dsp = DualMul8(a_reg=not self.x_late)
                m.d.comb += [dsp.a0.eq(self.x[lo]), dsp.a1.eq(self.x[hi]), dsp.b0.eq(self.w[lo]),
                             dsp.b1.eq(self.w[hi]), prods[lo].eq(dsp.p0), prods[hi].eq(dsp.p1)]
        for lane in range(self.lanes):
            prod = prods[lane]
            if lane < self.dsp_lanes:
                if self.dsp_pack == 1:
                    m.d.sync += prod.eq(x[lane] * w[lane])
            else:
                m.d.sync += prod.eq(shift_add_product(x[lane], w[lane], self.w_width))
            # the running sum, and apart from it the running maximum on 8 bits (short compare path)
            total, top = Signal(signed(self.acc_width), name=f"sum{lane}"), Signal(signed(X_WIDTH), name=f"max{lane}")
            code = prod[:X_WIDTH].as_signed()
            with m.If(valid_d):
                m.d.sync += total.eq(Mux(first_d, 0, total) + prod)
                if self.max_pool:
                    m.d.sync += top.eq(Mux(first_d | (code > top), code, top))
            m.d.comb += self.acc[lane].eq(Mux(held_max, top, total) if self.max_pool else total)
        return m
