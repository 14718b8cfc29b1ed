"""The requantizer: accumulator -> int8/uint8 code, bit-exact with onnxruntime's float32 rule.

It never multiplies. The compiler (:func:`zakid_hw.passes.requantize_to_threshold`) turns each layer's
requantization into ascending thresholds, found by binary search on the golden model's float32 formula;
this unit finds how many thresholds an accumulator reaches with a pipelined binary search, one stage per
output bit, each stage reading its own small table (:func:`zakid_hw.schedule.threshold_tree`).
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2


class ThresholdRequantizer(wiring.Component):
    """Pipelined multi-threshold unit: one accumulator in and one code out per cycle.

    Ports:
        i_valid: in, 1: an accumulator is presented this cycle.
        i_acc:   in, signed(width): the accumulator.
        i_table: in: which threshold table to use (a layer, or a layer's output channel).
        i_base:  in, 8: the code for "no threshold reached" (the layer's lowest output code).
        i_tag:   in, tag_width: carried through unchanged (the output's destination address).
        o_valid: out, 1: ``o_code``/``o_tag`` hold a result; ``out_bits + 2`` cycles after the input.
        o_code:  out, 8: ``i_base`` plus the number of thresholds ``i_acc`` reaches, modulo 256.
        o_tag:   out, tag_width.
        busy:    out, 1: some accumulator is still in the pipeline.

    ``stages[s]`` is the table of stage ``s``: ``tables * 2**s`` thresholds, address ``table * 2**s + prefix``.
    """

    def __init__(self, *, width, out_bits, stages, tag_width):
        self.width, self.out_bits, self.stages, self.tag_width = width, out_bits, stages, tag_width
        self.tables = len(stages[0])
        super().__init__({
            "i_valid": In(1),
            "i_acc": In(signed(width)),
            "i_table": In(max(1, ceil_log2(self.tables))),
            "i_base": In(8),
            "i_tag": In(tag_width),
            "o_valid": Out(1),
            "o_code": Out(8),
            "o_tag": Out(tag_width),
            "busy": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        table_bits = ceil_log2(self.tables)
        w = self.width
        valids = []

        def stage_regs(s):
            r = dict(valid=Signal(name=f"s{s}_valid"), acc=Signal(signed(w), name=f"s{s}_acc"),
                     table=Signal(max(1, table_bits), name=f"s{s}_table"), base=Signal(8, name=f"s{s}_base"),
                     tag=Signal(self.tag_width, name=f"s{s}_tag"), prefix=Signal(s, name=f"s{s}_prefix"))
            valids.append(r["valid"])
            return r

        def table_of(sig):
            return sig[:table_bits] if table_bits else Const(0, 0)

        # Stage s compares with threshold ``prefix`` of its table. Its memory is read one cycle ahead,
        # addressed by the previous stage's registered prefix: for s >= 1 each word holds both
        # candidates (prefix ending in 0 and in 1), and the stage picks one with the bit the previous
        # stage registered. So no path runs from a comparison to a memory address.
        mems = []
        for s, entries in enumerate(self.stages):
            if s == 0:
                mem = Memory(shape=signed(w), depth=len(entries), init=entries)
            else:
                pairs = [[entries[i], entries[i + 1]] for i in range(0, len(entries), 2)]
                mem = Memory(shape=data.ArrayLayout(signed(w), 2), depth=len(pairs), init=pairs)
            m.submodules[f"thr{s}"] = mem
            mems.append(mem.read_port(domain="sync"))

        cur = stage_regs(0)
        m.d.sync += [cur["valid"].eq(self.i_valid), cur["acc"].eq(self.i_acc), cur["table"].eq(self.i_table),
                     cur["base"].eq(self.i_base), cur["tag"].eq(self.i_tag)]
        m.d.comb += mems[0].addr.eq(table_of(self.i_table))
        for s in range(self.out_bits):
            if s == 0:
                thr = mems[0].data
            else:
                thr = Mux(cur["prefix"][0], mems[s].data[1], mems[s].data[0])
            if s + 1 < self.out_bits:
                m.d.comb += mems[s + 1].addr.eq(Cat(cur["prefix"], table_of(cur["table"])))
            nxt = stage_regs(s + 1)
            m.d.sync += [nxt["valid"].eq(cur["valid"]), nxt["acc"].eq(cur["acc"]), nxt["table"].eq(cur["table"]),
                         nxt["base"].eq(cur["base"]), nxt["tag"].eq(cur["tag"]),
                         nxt["prefix"].eq(Cat(cur["acc"] >= thr, cur["prefix"]))]
            cur = nxt
        m.d.sync += [self.o_valid.eq(cur["valid"]), self.o_code.eq(cur["base"] + cur["prefix"]),
                     self.o_tag.eq(cur["tag"])]
        m.d.comb += self.busy.eq(Cat(*valids, self.o_valid).any())
        return m
