"""The controller: walks layers, lane groups and inputs, and issues one MAC step per cycle."""

from amaranth import Array, C, Module, Signal
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for


class Controller(wiring.Component):
    """Sequencer for ``for layer: for group of lanes: for k in inputs: MAC``.

    Each issued step reads input ``k`` of the current layer and the next word of the weight memory
    (weights are laid out in issue order, so the weight address is a plain counter; biases likewise,
    one word per group).

    Ports:
        start:     in, 1: pulse to begin an inference.
        pending:   in, 2: groups issued whose results have not all left the drain yet.
        idle:      in, 1: no MAC, drain or requantizer work is in flight.
        busy:      out, 1: an inference is running.
        done:      out, 1: one-cycle pulse when the last layer's outputs are all written.
        issue:     out, 1: a MAC step is issued this cycle.
        first:     out, 1: the step starts a group (lanes restart from the bias).
        last:      out, 1: the step ends a group.
        layer:     out: index of the running layer.
        k:         out: the input index read by this step.
        w_addr:    out: weight memory address of this step.
        b_addr:    out: bias memory address (the group's).
        group_base: out: the first output index of the current group.
        group_n:   out: how many lanes of the current group hold real outputs.

    A new group starts only when the previous one will have left the drain before this one ends
    (``pending == 0``, or ``pending == 1`` when the layer has at least as many inputs as there are lanes).
    """

    def __init__(self, *, descriptors, lanes, w_depth, b_depth):
        self.descs, self.lanes = descriptors, lanes
        kmax = max(d.k for d in descriptors)
        nmax = max(d.n for d in descriptors)
        self.k_bits = bits_for(kmax)
        super().__init__({
            "start": In(1), "pending": In(2), "idle": In(1),
            "busy": Out(1), "done": Out(1),
            "issue": Out(1), "first": Out(1), "last": Out(1),
            "layer": Out(bits_for(len(descriptors))), "k": Out(self.k_bits),
            "w_addr": Out(bits_for(max(w_depth - 1, 1))), "b_addr": Out(bits_for(max(b_depth - 1, 1))),
            "group_base": Out(bits_for(nmax + lanes)), "group_n": Out(bits_for(lanes)),
        })

    def elaborate(self, platform):
        m = Module()
        d = self.descs
        L = self.lanes
        ks = Array(C(x.k - 1, self.k_bits) for x in d)
        groups = Array(C(x.groups - 1, bits_for(x.groups)) for x in d)
        last_n = Array(C(x.n - (x.groups - 1) * L, bits_for(L)) for x in d)
        overlap_ok = Array(C(int(x.k >= L), 1) for x in d)
        group = Signal(range(max(x.groups for x in d) + 1))
        n_layers = len(d)

        m.d.comb += [self.first.eq(self.k == 0), self.last.eq(self.k == ks[self.layer]),
                     self.group_n.eq(C(L, bits_for(L)))]
        with m.If(group == groups[self.layer]):
            m.d.comb += self.group_n.eq(last_n[self.layer])
        m.d.sync += self.done.eq(0)

        with m.FSM():
            with m.State("IDLE"):
                with m.If(self.start):
                    m.d.sync += [self.busy.eq(1), self.layer.eq(0), group.eq(0), self.group_base.eq(0),
                                 self.k.eq(0), self.w_addr.eq(0), self.b_addr.eq(0)]
                    m.next = "GROUP"
            with m.State("GROUP"):
                with m.If((self.pending == 0) | ((self.pending == 1) & overlap_ok[self.layer])):
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += self.issue.eq(1)
                m.d.sync += [self.k.eq(self.k + 1), self.w_addr.eq(self.w_addr + 1)]
                with m.If(self.last):
                    m.d.sync += [self.k.eq(0), self.b_addr.eq(self.b_addr + 1)]
                    with m.If(group == groups[self.layer]):
                        m.next = "FLUSH"
                    with m.Else():
                        m.d.sync += [group.eq(group + 1), self.group_base.eq(self.group_base + L)]
                        m.next = "GROUP"
            with m.State("FLUSH"):
                with m.If(self.idle):
                    with m.If(self.layer == n_layers - 1):
                        m.d.sync += [self.busy.eq(0), self.done.eq(1)]
                        m.next = "IDLE"
                    with m.Else():
                        m.d.sync += [self.layer.eq(self.layer + 1), group.eq(0), self.group_base.eq(0)]
                        m.next = "GROUP"
        return m
