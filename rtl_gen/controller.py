"""The controller: walks layers, output pixels, lane groups and kernel taps; issues one MAC step per cycle."""

from amaranth import Array, C, Module, Mux, Signal, signed
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import bits_for

from zakid_hw.cycle_model import group_turn
from zakid_hw.schedule import col_delays, pads_pixel_b, peeks

#: descriptor fields the controller latches at the start of each layer (see
#: :class:`zakid_hw.schedule.LayerDescriptor`); signed ones may be negative
FIELDS = ("chan", "ci", "kw", "kh", "groups", "ow", "oh", "start", "inc_kx", "inc_ky", "inc_ox", "inc_oy",
          "check", "iy0", "ix0", "sy", "sx", "dy", "dx", "h", "w", "out_base", "out_pitch", "n_last",
          "w_base", "out_group_step", "pair", "b_last", "pair_in", "k")


#: loop levels with a down-counter and an end flag; ``k`` counts a group's steps (ci * kw * kh), so the
#: group's last step is one registered flag instead of three
LOOP_COUNTS = ("ci", "kw", "kh", "k", "groups", "ow", "oh")


def counted_levels(descriptors) -> list[str]:
    """The loop levels that have a counter of their own in a controller for these layers: not a level of
    one step in every layer (always at its last index), nor the input channel level when every layer has
    one kernel tap (it ends with the group, ``k``)."""
    one_tap = all(x.kw == x.kh == 1 for x in descriptors)
    return [n for n in LOOP_COUNTS
            if any(getattr(x, n) != 1 for x in descriptors) and not (n == "ci" and one_tap)]


class Controller(wiring.Component):
    """Sequencer for ``for layer: for oy, ox: for lane group g: for ky, kx, ci: MAC``.

    Addresses are computed by adding per-layer steps (no multipliers): the byte address of each input
    read, whether it lies inside the input (else it is padding), the weight address (weights are laid
    out in issue order per group) and the byte address the group's first output goes to.

    Ports:
        start:    in, 1: pulse to begin an inference.
        busy:     out, 1: an inference is running.
        done:     out, 1: one-cycle pulse when the last layer's outputs are all written.
        issue:    out, 1: a MAC step is issued this cycle.
        first:    out, 1: the step starts a group (the lanes' sums restart).
        last:     out, 1: the step ends a group.
        layer:    out: index of the running layer.
        rd_addr:  out, signed: byte address of the input code(s) this step reads (in channel mode, the
                  first of the group's ``lanes`` channels).
        rd_valid: out, 1: the address lies inside the input; otherwise the step reads the padding code.
        rd_valid_b: out, 1: for a pair layer's step that reads pixel B's word (``rd_b``), whether B's
                  window position (A's one input column to the right) lies inside the input.
        w_addr:   out: weight memory address of this step.
        o_addr:   out: byte address of the group's first output (always inside the activation memory, so
                  unsigned and only as wide as its addresses).
        ch_base:  out: the group's first output channel.
        group_n:  out: how many lanes of the current group hold real outputs.
        pair_b:   out, 1: a pair layer's group whose second pixel (B) exists (see
                  :func:`zakid_hw.schedule.pairable`; it is missing from the last pair of an odd count, and
                  from a "col" layer's first row of pairs when its row count is odd).
        hold:     out, 1: a pair layer's step that uses the input word read at the word's first step
                  (every step but the first of ``lanes``): the word register keeps its value.
        rd_b:     out, 1: this step reads pixel B's word (the second step of each word of a "line" or
                  "row" pair layer; the B lanes take its bytes one cycle behind the A lanes), or, in a
                  "peek" pair layer (``pair_shift`` 2), the word A reads at the last kernel column, whose
                  next byte is B's tap there.

    The drain takes a group's sums one lane (or one raw byte) per cycle, ``n`` cycles for ``n`` of them,
    and may take the next group's sums in the cycle it hands on its last; it reads the group's output
    address and lane count from registers loaded at the group's last step, so two groups' last steps are
    at least :data:`zakid_hw.cycle_model.GROUP_SPACING` cycles apart. So a group of ``k`` steps opens right
    after the group before when ``k >= t``, ``t = max(n, GROUP_SPACING)`` of that group
    (:func:`zakid_hw.cycle_model.group_turn`), and otherwise waits ``t - k`` cycles (state GROUP), so that
    its last step comes ``t`` cycles after the group before's. What each step does next (the next input
    channel, kernel column or kernel row; at a group's last step the next group, pixel, row or the layer's
    end) is a one-hot register set a cycle ahead; because of that spacing, the outer ones and the sums the
    pixel and row steps load may follow the end flags and the registers a cycle late. After a layer's last
    step the controller loads the next layer's descriptor, sets up its counters and starts it the layer's
    ``tail`` cycles later
    (see :func:`zakid_hw.cycle_model.layer_tails`: when everything is written, or earlier for a pointwise layer
    that chains); after the last layer's tail it signals ``done``. The first layer's set-up is done while
    idle.
    """

    def __init__(self, *, descriptors, lanes, w_depth, act_bytes):
        self.descs, self.lanes = descriptors, lanes
        for i, x in enumerate(descriptors):
            if x.k != x.ci * x.kw * x.kh:
                raise ValueError(f"layer {i}: {x.k} steps per group, but ci * kw * kh = {x.ci * x.kw * x.kh}")
        vals = [abs(getattr(d, f)) for d in descriptors for f in FIELDS] + [act_bytes + 1]
        big = max(vals)
        # signed addresses with room for a window that starts before the input and steps past its end
        self.addr_width = bits_for(4 * big) + 1
        self.coord_width = bits_for(4 * max(max(d.h, d.w, d.oh * d.sy, d.ow * d.sx, abs(d.iy0), abs(d.ix0))
                                            + d.kh * d.dy + d.kw * d.dx for d in descriptors)) + 1
        self.ch_width = bits_for(max(d.groups for d in descriptors) * lanes)
        self.out_width = bits_for(max(act_bytes - 1, 1))
        super().__init__({
            "start": In(1),
            "busy": Out(1), "done": Out(1),
            "issue": Out(1), "first": Out(1), "last": Out(1),
            "layer": Out(bits_for(len(descriptors))),
            "rd_addr": Out(signed(self.addr_width)), "rd_valid": Out(1), "rd_valid_b": Out(1),
            "w_addr": Out(bits_for(max(w_depth - 1, 1))),
            "o_addr": Out(self.out_width), "ch_base": Out(self.ch_width),
            "group_n": Out(bits_for(lanes)),
            "pair_b": Out(1), "hold": Out(1), "rd_b": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        d, L = self.descs, self.lanes
        aw, cw = self.addr_width, self.coord_width
        n_layers = len(d)

        # Only the FSM, busy, done, layer, desc_layer and w_addr are reset: every other register is loaded in
        # IDLE, which the FSM is in from reset, or from the table entry of desc_layer (reset_less: no reset
        # term in their clock-enable logic, whose chains were the longest paths of the smaller designs)
        # the running layer's descriptor, from a constant table
        # loop bounds are kept as "last index" (count - 1) so that the end tests are plain equalities
        peek = peeks(d)
        col = any(col_delays(d))
        fields = FIELDS + ("pair_shift",) * peek + ("b_first", "out_row") * col
        minus = {f: int(f in LOOP_COUNTS) for f in fields}
        values = {f: [getattr(x, f) - minus[f] for x in d] for f in fields}
        # numbers the controller would otherwise work out at run time, per layer: the cycles a group waits
        # after a full group and after a pixel's last group (t - k, or 0), as GROUP's start count, its end
        # flag and whether it waits at all; and the FLUSH cycles after the first of the layer's tail
        for name, n_of in (("full", lambda x: L), ("last", lambda x: x.n_last)):
            w = [max(0, group_turn(x.drain_cycles(n_of(x))) - x.k) for x in d]
            values.update({f"wait_{name}_left": [max(v - 1, 0) for v in w],
                           f"wait_{name}_one": [int(v == 1) for v in w], f"wait_{name}_any": [int(v > 0) for v in w]})
        values.update(tail_left=[x.tail - 2 for x in d], tail_two=[int(x.tail == 2) for x in d])
        vw = max(aw, 1 + bits_for(max(abs(v) for vs in values.values() for v in vs)))
        table = {f: Array(C(v, signed(vw)) for v in vs) for f, vs in values.items()}
        # a field with the same value in every layer is a constant, not a register: synthesis then folds
        # the logic it feeds (a model of dense layers has no kernel or pixel loops, nor padding checks)
        fixed = {f for f, vs in values.items() if len(set(vs)) == 1}
        cfg = {f: table[f][0] if f in fixed else Signal(signed(vw), name=f"cfg_{f}", reset_less=True)
               for f in values}

        # Loop state. Each loop level has a down-counter of the steps left and a registered flag that says
        # the level is at its last index: the flags are computed a cycle ahead (from the counter, or from
        # the layer table when the level restarts), so the issue logic below only looks at registers.
        # Levels without a counter of their own: a level of one step in every layer is always at its last
        # index (its flag is the constant 1), and with one kernel tap in every layer the input channel
        # level ends with the group (its flag is k's).
        zero = {n: Array(C(int(getattr(x, n) == 1), 1) for x in d) for n in LOOP_COUNTS}
        counted = counted_levels(d)
        uncounted = set(LOOP_COUNTS) - set(counted)
        cfg_zero = {n: Signal(name=f"cfg_{n}_zero", reset_less=True) for n in counted}
        rem = {n: Signal(bits_for(max(getattr(x, n) for x in d)), name=f"rem_{n}", reset_less=True)
               for n in counted}
        end = {n: C(1, 1) if n in uncounted else Signal(name=f"end_{n}", reset_less=True) for n in LOOP_COUNTS}
        if all(x.kw == x.kh == 1 for x in d) and any(x.ci != 1 for x in d):
            end["ci"] = end["k"]  # one kernel tap in every layer: the channel level ends with the group
        first_cfg = {f: table[f][0] for f in values}  # the first layer's descriptor (constants)
        first_zero = {n: zero[n][0] for n in LOOP_COUNTS}

        # The descriptor registers take the table entry of `desc_layer` in every cycle, without an enable
        # (the enable shared by all of them, "idle or flushing", rooted the longest enable chains): it is
        # the running layer, the next one from a layer's last step (the last layer's own for the last),
        # and 0 from the cycle before IDLE, so they hold the right values from FLUSH's second cycle on,
        # and in time for a start in IDLE's first cycle.
        desc_layer = Signal(range(n_layers))
        m.d.sync += [*(cfg[f].eq(table[f][desc_layer]) for f in values if f not in fixed),
                     *(cfg_zero[n].eq(zero[n][desc_layer]) for n in counted)]

        def count_down(counter, at_end):  # a down-counter and its end flag, registered a cycle ahead
            return [counter.eq(counter - 1), at_end.eq(counter == 1)]

        def restart(n, src=cfg, src_zero=cfg_zero):
            return [] if n in uncounted else [rem[n].eq(src[n]), end[n].eq(src_zero[n])]

        def step(n):
            return [] if n in uncounted else count_down(rem[n], end[n])

        def restart_ci():  # the input channel loop from its first step
            return [ci.eq(0), ci_rd.eq(0), *restart("ci")]

        # What a step that is not its group's last does: the next input channel, kernel column or kernel
        # row. One-hot registers set in the cycle before, from the values the end flags take at the same
        # edge, so that the registers these steps load have a short enable instead of a chain through the
        # end flags (with the outer levels' `act` below, the controller's longest paths).
        take = {a: Signal(name=f"take_{a}", reset_less=True) for a in ("ci", "kw", "kh")}

        def end_after(n, how, src_zero=cfg_zero):  # the value end[n] takes at the next edge
            if n == "ci" and end["ci"] is end["k"]:
                n = "k"
            if how == "hold":
                return end[n]
            if n in uncounted:
                return C(1, 1)
            return rem[n] == 1 if how == "step" else src_zero[n]

        def takes(k, ci_, kw, src_zero=cfg_zero):  # take's next values: how k, ci and kw move at this edge
            e_k, e_ci, e_kw = (end_after(n, how, src_zero) for n, how in (("k", k), ("ci", ci_), ("kw", kw)))
            return [take["ci"].eq(~e_k & ~e_ci), take["kw"].eq(~e_k & e_ci & ~e_kw),
                    take["kh"].eq(~e_k & e_ci & e_kw)]

        m.d.sync += takes("hold", "hold", "hold")

        ci = Signal(signed(bits_for(max(x.ci for x in d)) + 1), reset_less=True)
        # the byte of the step's read within the pixel: ci, plus pair_in for B's
        ci_rd = Signal(bits_for(max(x.ci + x.pair_in for x in d)), reset_less=True)
        lg = (L - 1).bit_length()
        word_pos = ci[:lg] if lg else C(0, 1)  # the step's byte within its input word
        a_line, a_px, a_ky, a_kx = (Signal(signed(aw), name=n, reset_less=True)
                                    for n in ("a_line", "a_px", "a_ky", "a_kx"))
        iy_px, ix_px, iy_k, ix_k = (Signal(signed(cw), name=n, reset_less=True)
                                    for n in ("iy_px", "ix_px", "iy_k", "ix_k"))
        goff = Signal(self.ch_width, reset_less=True)
        # sums modulo the address range
        o_pix, ooff = Signal(self.out_width, reset_less=True), Signal(self.out_width, reset_less=True)
        # The outer levels' next values, the sums a group's last step loads, registered a cycle ahead: they
        # are in time, because a group's last step, which changes them, comes GROUP_SPACING cycles after
        # the one before, of whichever layer (FLUSH loads the next layer's registers by its second cycle).
        # Only in IDLE they are set with the registers, to the first layer's (constant) sums, for a start
        # in IDLE's first cycle.
        # name: (register, the descriptor field it starts a layer at, the fields added to it)
        ahead = {"px": (a_px, "start", ("inc_ox",)), "line": (a_line, "start", ("inc_oy",)),
                 "ix": (ix_px, "ix0", ("sx",)), "iy": (iy_px, "iy0", ("sy",)),
                 "opix": (o_pix, "out_base", ("out_pitch",))}
        if col:  # a "col" layer's next row of pairs, two rows down
            ahead["orow"] = (o_pix, "out_base", ("out_pitch", "out_row"))
        nx = {n: Signal.like(reg, name=f"next_{n}") for n, (reg, _, _) in ahead.items()}
        m.d.sync += [nx[n].eq(sum((cfg[f] for f in incs), reg)) for n, (reg, _, incs) in ahead.items()]
        first_nx = {n: getattr(d[0], f0) + sum(getattr(d[0], f) for f in incs) for n, (_, f0, incs) in ahead.items()}
        first = Signal(reset_less=True)  # the next step starts a group
        first_row = Signal(reset_less=True)  # a "col" pair layer's first row of pairs (its B may be missing)

        # a pair layer's group has its pixel B: not the last pair of an odd count, nor in a "col" layer's first
        # row of pairs when its row count is odd
        pair_b = cfg["pair"][0] & (~(end["ow"] & end["oh"]) | cfg["b_last"][0])
        if col:
            pair_b = pair_b & (~first_row | cfg["b_first"][0])
        rows_in = (iy_k >= 0) & (iy_k < cfg["h"])
        inside = rows_in & (ix_k >= 0) & (ix_k < cfg["w"])
        group_end = end["k"]

        m.d.comb += [
            self.first.eq(first),
            self.last.eq(group_end),
            self.rd_addr.eq(a_kx + Mux(cfg["chan"][0], goff, ci_rd)),
            self.pair_b.eq(pair_b),
            self.hold.eq(cfg["pair"][0] & (word_pos != 0)),
            self.rd_b.eq(cfg["pair"][0] & ((word_pos == 1) | (cfg["pair_shift"][1] & end["kw"] & self.issue))
                         if peek else cfg["pair"][0] & (word_pos == 1)),
            self.rd_valid.eq(~cfg["check"][0] | inside),
            self.rd_valid_b.eq(~cfg["check"][0] | (rows_in & (ix_k >= -1) & (ix_k < cfg["w"] - 1))
                               if pads_pixel_b(d) else 1),
            self.o_addr.eq(o_pix + ooff),
            self.ch_base.eq(goff),
            self.group_n.eq(Mux(end["groups"], cfg["n_last"], L)),
        ]
        m.d.sync += self.done.eq(0)

        def init_layer(src=cfg, src_zero=cfg_zero):
            ends = (end_after(n, "restart", src_zero) for n in ("groups", "ow", "oh"))
            return [ci.eq(0), ci_rd.eq(0), first.eq(1), *(s for n in LOOP_COUNTS for s in restart(n, src, src_zero)),
                    *actions_of(*ends), *takes("restart", "restart", "restart", src_zero),
                    a_line.eq(src["start"]), a_px.eq(src["start"]), a_ky.eq(src["start"]), a_kx.eq(src["start"]),
                    iy_px.eq(src["iy0"]), ix_px.eq(src["ix0"]), iy_k.eq(src["iy0"]), ix_k.eq(src["ix0"]),
                    goff.eq(0), ooff.eq(0), o_pix.eq(src["out_base"]), self.w_addr.eq(src["w_base"]),
                    *[first_row.eq(1)] * col]

        # What a group's last step does next, from the outer levels' end flags: the next group of the pixel,
        # the next pixel of the row, the next row, or the layer's end. One-hot registers, so the many
        # registers these steps load take a short enable instead of the chain through the end flags
        # (the CNNs' longest path before). They follow the end flags a cycle later, which is in time: the
        # flags change at a group's last step, and the next one comes GROUP_SPACING cycles later or after
        # FLUSH, where they are set together with the flags.
        act = {a: Signal(name=f"act_{a}", reset_less=True) for a in ("group", "ow", "oh", "end")}

        def actions_of(e_groups, e_ow, e_oh):
            return [act["group"].eq(~e_groups), act["ow"].eq(e_groups & ~e_ow),
                    act["oh"].eq(e_groups & e_ow & ~e_oh), act["end"].eq(e_groups & e_ow & e_oh)]

        m.d.sync += actions_of(end["groups"], end["ow"], end["oh"])

        wait = Signal(bits_for(max(x.tail for x in d)), reset_less=True)
        wait_end = Signal(reset_less=True)

        # GROUP: cycles left until the drain is free in time for the waiting group (see the class docstring)
        gwait = Signal(bits_for(max(values["wait_full_left"] + values["wait_last_left"])), reset_less=True)
        gwait_end = Signal(reset_less=True)
        m.d.sync += count_down(gwait, gwait_end)

        with m.FSM():
            with m.State("IDLE"):
                # the first layer's descriptor and counters are ready before start
                m.d.sync += [*init_layer(first_cfg, first_zero), *(nx[n].eq(v) for n, v in first_nx.items())]
                with m.If(self.start):
                    m.d.sync += [self.busy.eq(1), self.layer.eq(0)]
                    m.next = "ISSUE"
            with m.State("GROUP"):
                with m.If(gwait_end):
                    m.next = "ISSUE"
            with m.State("ISSUE"):
                m.d.comb += self.issue.eq(1)
                m.d.sync += [self.w_addr.eq(self.w_addr + 1), first.eq(group_end)]
                # take (one-hot, all clear at the group's last step) and group_end, each its own condition
                with m.If(~group_end):
                    m.d.sync += step("k")
                with m.If(take["ci"]):
                    # a pair layer's next step reads B's word when this one is its word's first
                    m.d.sync += [ci.eq(ci + 1),
                                 ci_rd.eq(ci + 1 + Mux(cfg["pair"][0] & (word_pos == 0), cfg["pair_in"], 0)),
                                 *step("ci"), *takes("step", "step", "hold")]
                with m.If(take["kw"]):
                    m.d.sync += [*restart_ci(), *step("kw"), a_kx.eq(a_kx + cfg["inc_kx"]),
                                 ix_k.eq(ix_k + cfg["dx"]), *takes("step", "restart", "step")]
                with m.If(take["kh"]):  # not the group's last step, so ci and kw end and kh does not
                    m.d.sync += [*restart_ci(), *restart("kw"), *step("kh"),
                                 a_ky.eq(a_ky + cfg["inc_ky"]), a_kx.eq(a_ky + cfg["inc_ky"]), ix_k.eq(ix_px),
                                 iy_k.eq(iy_k + cfg["dy"]), *takes("step", "restart", "restart")]
                with m.If(group_end):  # the group's last step
                    m.d.sync += [*restart_ci(), *restart("kw"), *restart("kh"), *restart("k"),
                                 *takes("restart", "restart", "restart")]
                    def gw(part):  # the wait after this group: after a full one, or after a pixel's last group
                        return Mux(act["group"], cfg[f"wait_full_{part}"], cfg[f"wait_last_{part}"])
                    with m.If(gw("any")[0]):  # GROUP for the wait's cycles, then the next group's first step
                        m.d.sync += [gwait.eq(gw("left")), gwait_end.eq(gw("one")[0])]
                        m.next = "GROUP"
                    # one of the four (act is one-hot), each its own condition: no priority chain
                    with m.If(act["group"]):
                        m.d.sync += [*step("groups"), goff.eq(goff + L), ooff.eq(ooff + cfg["out_group_step"]),
                                     a_ky.eq(a_px), a_kx.eq(a_px), iy_k.eq(iy_px), ix_k.eq(ix_px)]
                    with m.Else():  # the pixel's last group
                        m.d.sync += [*restart("groups"), goff.eq(0), ooff.eq(0), self.w_addr.eq(cfg["w_base"]),
                                     o_pix.eq(nx["opix"])]
                    with m.If(act["ow"]):
                        m.d.sync += [*step("ow"), a_px.eq(nx["px"]), a_ky.eq(nx["px"]), a_kx.eq(nx["px"]),
                                     ix_px.eq(nx["ix"]), ix_k.eq(nx["ix"]), iy_k.eq(iy_px)]
                    with m.If(act["oh"]):
                        if col:  # a "col" layer's next row of pairs: its A pixels are two rows down
                            m.d.sync += [first_row.eq(0), o_pix.eq(nx["orow"])]
                        m.d.sync += [*restart("ow"), *step("oh"), a_line.eq(nx["line"]), a_px.eq(nx["line"]),
                                     a_ky.eq(nx["line"]), a_kx.eq(nx["line"]), ix_px.eq(cfg["ix0"]),
                                     ix_k.eq(cfg["ix0"]), iy_px.eq(nx["iy"]), iy_k.eq(nx["iy"])]
                    with m.If(act["end"]):  # the layer's last step
                        m.d.sync += [wait.eq(cfg["tail_left"]), wait_end.eq(cfg["tail_two"][0]),
                                     desc_layer.eq(Mux(self.layer == n_layers - 1, self.layer, self.layer + 1))]
                        m.next = "FLUSH"
            with m.State("FLUSH"):
                # the descriptor registers take the next layer's entry (desc_layer); set up its counters
                # from them (from the second cycle on they hold the right values; the tail is at least
                # MIN_CHAIN_GAP cycles)
                m.d.sync += [*init_layer(), *count_down(wait, wait_end)]
                with m.If(wait_end & (self.layer == n_layers - 1)):
                    m.d.sync += [self.busy.eq(0), self.done.eq(1), desc_layer.eq(0)]
                    m.next = "IDLE"
                with m.Elif(wait_end):
                    m.d.sync += self.layer.eq(self.layer + 1)
                    m.next = "ISSUE"  # the tail leaves the drain free in time (cycle_model.layer_tails)
        return m
