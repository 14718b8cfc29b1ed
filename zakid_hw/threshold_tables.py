"""How requantization thresholds are stored for the hardware's binary search (:mod:`rtl_gen.requantizer`).

A requantizer table is ``T < 2**b`` ascending thresholds; the output code is the layer's lowest code plus
how many of them the accumulator reaches. Both hardware forms search it in ``b`` pipelined stages; stage
``s`` compares with candidate ``c = p * 2**(b-s) + 2**(b-s-1) - 1`` for the ``s``-bit prefix ``p`` decided
so far.

* **Full tables** (:func:`threshold_tree`): stage ``s`` stores every candidate it may need, a whole
  threshold each. Cheapest in logic; ``T`` accumulator-wide words per table in block RAM.
* **Affine tables** (:func:`affine_tables`): thresholds of a scale-and-round requantization lie on a line
  up to a rounding step, so each table is stored as a line ``floor((A + c * D) / 2**F)`` (two integers
  per table) plus a small signed correction ``e_c`` per threshold, a few bits wide instead of an
  accumulator wide. The hardware keeps ``Q = acc * 2**F - (A + c * D) - 1`` and moves ``c`` by adding or
  subtracting ``D * 2**(b-s-2)``; ``acc`` reaches threshold ``c`` exactly when ``Q >> F >= e_c - 1`` and
  ``c < T``. :func:`affine_search` is that algorithm in Python, the reference the RTL is tested against.

Any ascending table has an affine form (in the worst case the corrections are as wide as the thresholds);
the compiler picks the form that fits the device.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: fractional bits tried for the line's slope
MAX_FRAC_BITS = 16


def signed_bits(lo: int, hi: int) -> int:
    """Bits of a two's complement number holding every value in [lo, hi]."""
    n = 1
    while not (-(1 << (n - 1)) <= lo and hi <= (1 << (n - 1)) - 1):
        n += 1
    return n


def candidate(s: int, prefix: int, out_bits: int) -> int:
    """The threshold index stage ``s`` compares with after the bits ``prefix``."""
    return (prefix << (out_bits - s)) + (1 << (out_bits - s - 1)) - 1


def threshold_tree(thresholds: np.ndarray, out_bits: int, sentinel: int) -> list[list[int]]:
    """Lay one table (T ascending thresholds, T < 2**out_bits) out as binary-search stages, padding the
    missing top thresholds with ``sentinel`` (a value no accumulator reaches)."""
    full = np.full(2**out_bits - 1, sentinel, np.int64)
    full[: len(thresholds)] = thresholds
    return [[int(full[candidate(s, p, out_bits)]) for p in range(2**s)] for s in range(out_bits)]


@dataclass
class AffineTables:
    """Every table of a design in affine form (see the module docstring)."""
    out_bits: int
    frac_bits: int                 # F
    consts: list[tuple[int, int, int]]  # per table: (N0 = A + c0 * D for the first candidate c0, D, T)
    stages: list[list[int]]        # stage s: tables * 2**s entries e_c - 1 (0 past the table's end)
    e_width: int                   # bits of the stored corrections
    q_width: int                   # bits of the running Q
    n0_width: int
    d_width: int                   # unsigned

    @property
    def bits(self) -> int:
        """Block RAM bits of the corrections."""
        return sum(len(s) for s in self.stages) * self.e_width


def _line(t: np.ndarray, frac: int) -> tuple[int, int, np.ndarray]:
    """(A, D, e) with ``t_k = floor((A + k * D) / 2**frac) + e_k``, the corrections' range as small as a
    few candidate lines make it."""
    n = len(t)
    k = np.arange(n, dtype=object)
    tt = np.array([int(v) for v in t], dtype=object)
    if n == 1:
        return int(tt[0]) << frac, 0, np.zeros(1, dtype=object)
    span = (int(tt[-1]) - int(tt[0])) << frac
    best = None
    for d in {span // (n - 1), -(-span // (n - 1)), (2 * span + n - 1) // (2 * (n - 1))}:
        for a_off in (0, 1 << max(frac - 1, 0)):
            a = (int(tt[0]) << frac) + a_off
            e = tt - (a + k * d) // (1 << frac)
            r = (int(e.min()), int(e.max()))
            if best is None or r[1] - r[0] < best[0]:
                best = (r[1] - r[0], a, d, e)
    return best[1], best[2], best[3]


def affine_tables(tables: list[np.ndarray], out_bits: int, acc_lo: int, acc_hi: int) -> AffineTables:
    """The affine form of ``tables`` (each ascending, fewer than ``2**out_bits`` thresholds) for
    accumulators in ``[acc_lo, acc_hi]``, with the fractional bits that make the corrections narrowest."""
    best = None
    for frac in range(MAX_FRAC_BITS + 1):
        lines = [_line(np.asarray(t), frac) if len(t) else (0, 0, np.zeros(0, dtype=object)) for t in tables]
        es = [int(v) - 1 for _, _, e in lines for v in e]
        e_width = signed_bits(min(es, default=0), max(es, default=0))
        if best is None or e_width < best[0]:
            best = (e_width, frac, lines)
        if e_width <= 2:
            break
    e_width, frac, lines = best
    c0 = candidate(0, 0, out_bits)
    last = 2**out_bits - 2
    consts, stages = [], [[] for _ in range(out_bits)]
    q_lo, q_hi, n0s = 0, 0, []
    for t, (a, d, e) in zip(tables, lines):
        n = len(t)
        consts.append((a + c0 * d, d, n))
        n0s.append(a + c0 * d)
        for s in range(out_bits):
            for p in range(2**s):
                c = candidate(s, p, out_bits)
                stages[s].append(int(e[c]) - 1 if c < n else 0)
        # Q = acc * 2**F - N(c) - 1 over every candidate the search may visit
        n_lo, n_hi = min(a, a + last * d), max(a, a + last * d)
        q_lo = min(q_lo, (acc_lo << frac) - n_hi - 1)
        q_hi = max(q_hi, (acc_hi << frac) - n_lo - 1)
    steps_max = max((d for _, d, _ in consts), default=0) << max(out_bits - 2, 0)
    return AffineTables(out_bits, frac, consts, stages, e_width,
                        q_width=signed_bits(q_lo - steps_max, q_hi + steps_max),
                        n0_width=signed_bits(min(n0s, default=0), max(n0s, default=0)),
                        d_width=max(1, max((d for _, d, _ in consts), default=0).bit_length()))


def affine_search(acc: int, table: int, at: AffineTables) -> int:
    """How many thresholds of ``table`` the accumulator reaches, computed as the hardware does."""
    n0, d, n = at.consts[table]
    b, f = at.out_bits, at.frac_bits
    q = (acc << f) - n0 - 1
    prefix = 0
    for s in range(b):
        c = candidate(s, prefix, b)
        e1 = at.stages[s][(table << s) + prefix]
        bit = int(c < n and (q >> f) >= e1)
        if s + 1 < b:
            step = d << (b - s - 2)
            q = q - step if bit else q + step
        prefix = (prefix << 1) | bit
    return prefix
