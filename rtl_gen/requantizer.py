"""The requantizer: accumulator -> int8/uint8 code, bit-exact with onnxruntime's float32 rule.

It never multiplies. The compiler (:func:`zakid_hw.passes.requantize_to_threshold`) turns each layer's
requantization into ascending thresholds, found by binary search on the golden model's float32 formula;
this unit finds how many thresholds an accumulator reaches with a pipelined binary search, one stage per
output bit, each stage reading its own small table. Two forms of the tables
(:mod:`zakid_hw.threshold_tables`): :class:`ThresholdRequantizer` stores every threshold whole,
:class:`AffineRequantizer` stores a line per table and a few bits of correction per threshold.
"""

from amaranth import Cat, Const, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2


def requantizer_ports(width, tables, tag_width):
    """The signature both requantizer forms share (their docstrings list the ports)."""
    return {
        "i_valid": In(1), "i_acc": In(signed(width)), "i_table": In(max(1, ceil_log2(tables))),
        "i_base": In(8), "i_tag": In(tag_width),
        "o_valid": Out(1), "o_code": Out(8), "o_tag": Out(tag_width), "busy": Out(1),
    }


def drive_outputs(m, rq, last, valids):
    """The outputs both forms share, straight from the last stage's registers ``last`` (not registered
    again): the code is its base plus its prefix; ``busy`` while any stage's ``valids`` is set."""
    m.d.comb += [rq.o_valid.eq(last["valid"]), rq.o_code.eq(last["base"] + last["prefix"]),
                 rq.o_tag.eq(last["tag"]), rq.busy.eq(Cat(*valids).any())]


def stage_memories(m, stages, shape):
    """One memory per search stage (named ``thr<s>``); from stage 1 on each word holds the two candidates
    that share a prefix. Returns their synchronous read ports."""
    ports = []
    for s, entries in enumerate(stages):
        if s == 0:
            mem = Memory(shape=shape, depth=len(entries), init=entries)
        else:
            pairs = [[entries[i], entries[i + 1]] for i in range(0, len(entries), 2)]
            mem = Memory(shape=data.ArrayLayout(shape, 2), depth=len(pairs), init=pairs)
        m.submodules[f"thr{s}"] = mem
        ports.append(mem.read_port(domain="sync"))
    return ports


class ThresholdRequantizer(wiring.Component):
    """Pipelined multi-threshold unit: one accumulator in and one code out per cycle.

    Ports:
        i_valid: in, 1: an accumulator is presented this cycle.
        i_acc:   in, signed(width): the accumulator.
        i_table: in: which threshold table to use (a layer, or a layer's output channel).
        i_base:  in, 8: the code for "no threshold reached" (the layer's lowest output code).
        i_tag:   in, tag_width: carried through unchanged (the output's destination address).
        o_valid: out, 1: ``o_code``/``o_tag`` hold a result; ``out_bits + 1`` cycles after the input
                 (the code is the last stage's registers plus ``i_base``, not registered again).
        o_code:  out, 8: ``i_base`` plus the number of thresholds ``i_acc`` reaches, modulo 256.
        o_tag:   out, tag_width.
        busy:    out, 1: some accumulator is still in the pipeline.

    ``stages[s]`` is the table of stage ``s``: ``tables * 2**s`` thresholds, address ``table * 2**s + prefix``.
    """

    def __init__(self, *, width, out_bits, stages, tag_width):
        self.width, self.out_bits, self.stages, self.tag_width = width, out_bits, stages, tag_width
        self.tables = len(stages[0])
        super().__init__(requantizer_ports(width, self.tables, tag_width))

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
        mems = stage_memories(m, self.stages, signed(w))

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
        drive_outputs(m, self, cur, valids)
        return m


class AffineRequantizer(wiring.Component):
    """Pipelined binary search over affine tables (:class:`zakid_hw.threshold_tables.AffineTables`): one
    accumulator in and one code out per cycle, the same ports as :class:`ThresholdRequantizer`.

    Ports:
        i_valid: in, 1: an accumulator is presented this cycle.
        i_acc:   in, signed(width): the accumulator.
        i_table: in: which table to use (a layer, or a layer's output channel).
        i_base:  in, 8: the code for "no threshold reached".
        i_tag:   in, tag_width: carried through unchanged.
        o_valid: out, 1: ``o_code``/``o_tag`` hold a result; ``out_bits + 2`` cycles after the input
                 (not registered again, as in :class:`ThresholdRequantizer`).
        o_code:  out, 8: ``i_base`` plus the number of thresholds ``i_acc`` reaches, modulo 256.
        o_tag:   out, tag_width.
        busy:    out, 1: some accumulator is still in the pipeline.

    The first cycle reads the table's line (``N0``, ``D``, length ``T``), the second forms
    ``Q = acc * 2**F - N0 - 1``; then stage ``s`` decides one bit, ``Q >> F >= e - 1`` and candidate < ``T``,
    and moves ``Q`` by ``-/+ D * 2**(out_bits - s - 2)`` (both sums are formed while the bit is decided).
    """

    def __init__(self, *, width, tables, tag_width):
        self.width, self.tables, self.tag_width = width, tables, tag_width
        self.out_bits = tables.out_bits
        self.n_tables = len(tables.consts)
        super().__init__(requantizer_ports(width, self.n_tables, tag_width))

    def elaborate(self, platform):
        m = Module()
        at, b = self.tables, self.out_bits
        table_bits = ceil_log2(self.n_tables)
        f = at.frac_bits
        line = data.StructLayout({"n0": signed(at.n0_width), "d": at.d_width, "n": b})
        m.submodules.lines = lines = Memory(shape=line, depth=self.n_tables,
                                            init=[{"n0": n0, "d": d, "n": n} for n0, d, n in at.consts])
        line_rd = lines.read_port(domain="sync")
        mems = stage_memories(m, at.stages, signed(at.e_width))
        valids = []

        def regs(name, **shapes):
            r = {k: Signal(v, name=f"{name}_{k}") for k, v in shapes.items()}
            valids.append(r["valid"])
            return r

        def table_of(sig):
            return sig[:table_bits] if table_bits else Const(0, 0)

        common = dict(valid=1, table=max(1, table_bits), base=8, tag=self.tag_width)
        a = regs("a", acc=signed(self.width), **common)
        m.d.sync += [a["valid"].eq(self.i_valid), a["acc"].eq(self.i_acc), a["table"].eq(self.i_table),
                     a["base"].eq(self.i_base), a["tag"].eq(self.i_tag)]
        m.d.comb += [line_rd.addr.eq(table_of(self.i_table)), mems[0].addr.eq(table_of(a["table"]))]
        cur = regs("s0", q=signed(at.q_width), d=at.d_width, n=b, prefix=0, **common)
        m.d.sync += [cur["valid"].eq(a["valid"]), cur["table"].eq(a["table"]), cur["base"].eq(a["base"]),
                     cur["tag"].eq(a["tag"]), cur["d"].eq(line_rd.data.d), cur["n"].eq(line_rd.data.n),
                     cur["q"].eq((a["acc"] << f) - line_rd.data.n0 - 1)]
        for s in range(b):
            e = mems[0].data if s == 0 else Mux(cur["prefix"][0], mems[s].data[1], mems[s].data[0])
            # candidate c = prefix * 2**(b-s) + 2**(b-s-1) - 1 lies in the table when c + 1 <= T
            in_table = Cat(Const(1 << (b - s - 1), b - s), cur["prefix"]) <= cur["n"]
            bit = Signal(name=f"s{s}_bit")
            m.d.comb += bit.eq(in_table & ((cur["q"] >> f) >= e))
            if s + 1 < b:
                m.d.comb += mems[s + 1].addr.eq(Cat(cur["prefix"], table_of(cur["table"])))
            nxt = regs(f"s{s + 1}", q=signed(at.q_width), d=at.d_width, n=b, prefix=s + 1, **common)
            m.d.sync += [nxt[k].eq(cur[k]) for k in ("valid", "table", "base", "tag", "d", "n")]
            m.d.sync += nxt["prefix"].eq(Cat(bit, cur["prefix"]))
            if s + 1 < b:
                step = cur["d"] << (b - s - 2)
                down, up = Signal.like(cur["q"], name=f"s{s}_down"), Signal.like(cur["q"], name=f"s{s}_up")
                m.d.comb += [down.eq(cur["q"] - step), up.eq(cur["q"] + step)]
                m.d.sync += nxt["q"].eq(Mux(bit, down, up))
            cur = nxt
        drive_outputs(m, self, cur, valids)
        return m
