"""Exact integer forms of onnxruntime 1.32's quantized elementwise and pooling kernels (CPU execution provider,
default optimisation level), for the hardware's threshold requantizer (IR ``threshold``: code = base +
#{j : acc >= thr[j]}).

What onnxruntime computes (read from its sources, confirmed by running it on this x86-64 AVX2/FMA machine):

com.microsoft QLinearAdd (and QDQ ``DQ, DQ -> Add -> Q``, which onnxruntime fuses into it when the three
dtypes agree)
    With ``ra = f32(a_scale / y_scale)``, ``rb = f32(b_scale / y_scale)`` and the float32 constant
    ``F = f32(y_zp - fma(a_zp, ra, f32(rb * b_zp)))``, the AVX2 kernel computes per element
    ``y = saturate(rint(fma(a, ra, fma(b, rb, F))))`` on the *raw* codes a, b (two fused multiply-adds, each
    rounded once to float32). An A that is one code against a span of B codes (e.g. A (1, C, 1, 1) against B
    (1, C, H, W)) takes another path that rounds differently (``broadcast="a"``; seen: a few of the 65536 pairs
    differ in some parameter sets); a broadcast B gave the same codes as the general path in every set tried,
    but is tabulated on its own path too (``broadcast="b"``). NEON and SSE2 machines use different kernels
    (fixed point, or no FMA), so this module never assumes a formula: :func:`add_table` runs onnxruntime once
    on all 256 x 256 code pairs and :func:`add_form` finds integer multipliers for the IR ``add`` plus
    thresholds that reproduce that table exactly, or proves that none exist.

    A float Relu between Add and QuantizeLinear (``kind="qdq_relu"``) stops the fusion: onnxruntime then
    runs DequantizeLinear, Add, Relu, QuantizeLinear in float32 (``saturate(rint(f32(max(f32(da + db), 0) /
    y_scale)) + y_zp)``), which differs from a clamped QLinearAdd in about one parameter set in seven (one
    pair); it is tabulated the same way. In 1140 random parameter sets (scales log-uniform over 1e-6..10, both
    dtypes, equal scales, folded Relu, all kinds and broadcasts) every table had an exact form, with
    multipliers below 500.

com.microsoft QLinearAveragePool (and QDQ ``DQ -> AveragePool -> Q``, fused into it)
    Float32 arithmetic: ``v = f32(x_scale * (x - x_zp))`` per input, ``acc`` = float32 sum of the ``m``
    in-image values of the window (padding is skipped), ``acc = f32(acc / n)`` with ``n = m`` or the kernel size
    (count_include_pad), ``y = saturate(rint(f32(f32(acc / y_scale) + y_zp)))``. The result is *not* always a
    function of the integer sum ``S = sum(x - x_zp)``: each rounding of ``v`` and of the running sum depends
    on the individual codes, and where ``S * x_scale / (n * y_scale)`` lies within a few float32 ulps of a
    rounding boundary, two windows with the same S give different codes. That happens systematically when
    ``x_scale == y_scale`` and ``n`` is even (exact ties ``S / n = k + 1/2``). :func:`avgpool_form` therefore
    computes, for every S, the smallest and largest result over *all* windows (dynamic programming over the
    float32 partial sums: the running sum is monotone in its previous value, so per S only the extreme
    partial sums matter, which makes the search exact and fast) and returns thresholds only where the
    output is a function of S; elsewhere it raises :class:`ZakidError` (or, with ``strict=False``, rounds
    the exact rational average; :func:`avgpool_float_extremes` lists the sums where onnxruntime can differ).
    Measured on random unequal scales: 1 to 4 parameter sets in 100 have one to five such sums among the
    ~500-2300 possible sums (windows of 4 to 9); with equal scales and an even divisor, a sixth of all sums.

    When the kernel covers the whole input and there is no padding, onnxruntime switches to the integer
    global-average kernel below, which is always exact.

com.microsoft QLinearGlobalAveragePool (and QDQ ``DQ -> GlobalAveragePool -> Q``, fused into it)
    Integer: ``S = sum(x) - x_zp * N`` in int32, then ``y = saturate(rint(f32(f32(S) * m)) + y_zp)`` with
    ``m = f32(x_scale / f32(y_scale * f32(N)))``: the IR ``requantize`` rule, so its thresholds come from
    :func:`zakid_hw.passes.thresholds_for`.

com.microsoft QLinearSoftmax
    Host side; IR op ``qsoftmax``, bit for bit in :func:`zakid_hw.golden.qsoftmax`.
"""

from __future__ import annotations

import functools
from fractions import Fraction

import numpy as np

from .errors import ZakidError
from .ir import dtype_range

_NP = {"int8": np.int8, "uint8": np.uint8}
ADD_KINDS = ("qlinear", "qdq", "qdq_relu")


def _fail(msg: str):
    raise ZakidError(" ".join(msg.split()))


def _codes(dtype: str) -> np.ndarray:
    lo, hi = dtype_range(dtype)
    return np.arange(lo, hi + 1, dtype=np.int64)


def _check_dtype(dtype: str, what: str) -> None:
    if dtype not in _NP:
        _fail(f"{what} must be int8 or uint8, got {dtype!r}.")


def _check_zp(zp, dtype: str, what: str) -> int:
    lo, hi = dtype_range(dtype)
    if int(zp) != zp or not lo <= int(zp) <= hi:
        _fail(f"{what} {zp!r} is not a {dtype} value.")
    return int(zp)


def _check_scale(scale, what: str) -> float:
    s = float(np.float32(scale))
    if not np.isfinite(s) or s <= 0:
        _fail(f"{what} must be a positive finite float32, got {scale!r}.")
    return s


def _run_ort(model, feeds: dict) -> np.ndarray:
    """Run a one-output model in an onnxruntime CPU session at the default optimisation level."""
    import onnxruntime as ort

    model.ir_version = min(model.ir_version, 9)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _clip_range(dtype: str, qmin, qmax) -> tuple[int, int]:
    lo, hi = dtype_range(dtype)
    qmin = lo if qmin is None else int(qmin)
    qmax = hi if qmax is None else int(qmax)
    if not lo <= qmin <= qmax <= hi:
        _fail(f"clamp [{qmin}, {qmax}] does not lie inside the {dtype} range [{lo}, {hi}].")
    return qmin, qmax


# --------------------------------------------------------------------------------------------------------
# QLinearAdd


def add_table(a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, a_dtype, b_dtype, y_dtype, kind="qlinear",
              broadcast=None) -> np.ndarray:
    """onnxruntime's output code for every input pair: a read-only (256, 256) int64 array ``t[i, j]`` for
    ``a = lo_a + i``, ``b = lo_b + j``. One onnxruntime run per parameter set (cached).

    ``kind``: ``"qlinear"`` (com.microsoft QLinearAdd; the three dtypes must agree), ``"qdq"`` (DequantizeLinear
    on both inputs, Add, QuantizeLinear: what onnxruntime fuses or not is its business), ``"qdq_relu"`` (the same
    with a float Relu before QuantizeLinear, which onnxruntime does not fuse). ``broadcast``: None when both
    tensors have the same shape; ``"a"`` (``"b"``) when that input is one code against an inner span of the
    other (e.g. shape (1, C, 1, 1) against (1, C, H, W)), for which onnxruntime's kernel rounds differently.
    """
    if kind not in ADD_KINDS:
        _fail(f"add kind must be one of {ADD_KINDS}, got {kind!r}.")
    if broadcast not in (None, "a", "b"):
        _fail(f"broadcast must be None, 'a' or 'b', got {broadcast!r}.")
    for d, w in ((a_dtype, "input A dtype"), (b_dtype, "input B dtype"), (y_dtype, "output dtype")):
        _check_dtype(d, w)
    if kind == "qlinear" and not a_dtype == b_dtype == y_dtype:
        _fail(f"com.microsoft QLinearAdd needs one dtype for A, B and C, got {a_dtype}, {b_dtype}, {y_dtype}.")
    key = (_check_scale(a_scale, "A scale"), _check_zp(a_zp, a_dtype, "A zero point"),
           _check_scale(b_scale, "B scale"), _check_zp(b_zp, b_dtype, "B zero point"),
           _check_scale(y_scale, "output scale"), _check_zp(y_zp, y_dtype, "output zero point"),
           a_dtype, b_dtype, y_dtype, kind, broadcast)
    return _add_table(*key)


@functools.lru_cache(maxsize=512)
def _add_table(sa, za, sb, zb, sy, zy, da, db, dy, kind, broadcast) -> np.ndarray:
    from onnx import TensorProto, helper, numpy_helper

    tp = {"int8": TensorProto.INT8, "uint8": TensorProto.UINT8}
    av, bv = _codes(da).astype(_NP[da]), _codes(db).astype(_NP[db])
    # feeds whose output y[r, c] is f(a_r, b_c) (transposed back below for broadcast "b")
    if broadcast is None:
        a, b = np.repeat(av[:, None], 256, 1), np.repeat(bv[None, :], 256, 0)
    elif broadcast == "a":
        a, b = av[:, None].copy(), np.repeat(bv[None, :], 256, 0)
    else:  # B constant along each row: rows index b, columns a
        a, b = np.repeat(av[None, :], 256, 0), bv[:, None].copy()
    consts = {"sa": np.float32(sa), "za": _NP[da](za), "sb": np.float32(sb), "zb": _NP[db](zb),
              "sy": np.float32(sy), "zy": _NP[dy](zy)}
    inits = [numpy_helper.from_array(np.asarray(v), k) for k, v in consts.items()]
    if kind == "qlinear":
        nodes = [helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"],
                                  domain="com.microsoft")]
    else:
        nodes = [helper.make_node("DequantizeLinear", ["a", "sa", "za"], ["fa"]),
                 helper.make_node("DequantizeLinear", ["b", "sb", "zb"], ["fb"]),
                 helper.make_node("Add", ["fa", "fb"], ["s"])]
        if kind == "qdq_relu":
            nodes.append(helper.make_node("Relu", ["s"], ["r"]))
        nodes.append(helper.make_node("QuantizeLinear", [nodes[-1].output[0], "sy", "zy"], ["y"]))
    graph = helper.make_graph(nodes, "add_table",
                              [helper.make_tensor_value_info("a", tp[da], list(a.shape)),
                               helper.make_tensor_value_info("b", tp[db], list(b.shape))],
                              [helper.make_tensor_value_info("y", tp[dy], [256, 256])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13),
                                                    helper.make_opsetid("com.microsoft", 1)])
    y = np.asarray(_run_ort(model, {"a": a, "b": b}), np.int64)
    if broadcast == "b":
        y = y.T
    y = np.ascontiguousarray(y)
    y.flags.writeable = False
    return y


def _simplest_between(lo: Fraction, hi: Fraction | None) -> Fraction:
    """The fraction with the smallest denominator strictly between ``0 <= lo`` and ``hi`` (None: infinity)."""
    fl = lo.numerator // lo.denominator
    if hi is None or fl + 1 < hi:
        return Fraction(fl + 1)
    frac_lo, frac_hi = lo - fl, hi - fl  # 0 <= frac_lo < frac_hi <= 1
    y = _simplest_between(1 / frac_hi, None if frac_lo == 0 else 1 / frac_lo)
    return fl + 1 / y


def _ratio_bounds(y: np.ndarray):
    """Open interval (lo, hi) of ratios rho = a_mult / b_mult (b_mult > 0) for which every level set
    {y >= L} of the (monotone) table is cut off by a line a_mult * i + b_mult * j = const; None = unbounded.
    Returns ``(feasible, lo, hi, b_zero_ok)``; ``b_zero_ok``: ``b_mult = 0`` works too."""
    lo, hi, b_zero_ok = None, None, True
    n = y.shape[1]
    for level in range(int(y.min()) + 1, int(y.max()) + 1):
        below = (y < level).sum(axis=1)  # per a-index: how many b codes stay below the level
        # ``below`` is non-increasing in i. Among the lowest points reaching the level, (i, below[i]), only the
        # first of each run of equal ``below`` can bind; among the highest points under it, (i, below[i] - 1),
        # only the last of each run.
        first = np.r_[True, below[1:] != below[:-1]]
        last = np.r_[below[1:] != below[:-1], True]
        p = np.flatnonzero((below < n) & first)
        q = np.flatnonzero((below > 0) & last)
        if p.size == 0 or q.size == 0:
            continue
        da = p[:, None] - q[None, :]
        db = below[p][:, None] - below[q][None, :] + 1
        # need a_mult * da + b_mult * db > 0 for every pair
        if np.any((da <= 0) & (db <= 0)):
            return False, None, None, False
        b_zero_ok &= bool(np.all(da > 0))
        pos, neg = da > 0, da < 0
        if np.any(pos):
            r = np.where(pos, -db / np.where(pos, da, 1), -np.inf)
            k = np.unravel_index(np.argmax(r), r.shape)
            cand = Fraction(int(-db[k]), int(da[k]))
            lo = cand if lo is None or cand > lo else lo
        if np.any(neg):
            r = np.where(neg, db / np.where(neg, -da, 1), np.inf)
            k = np.unravel_index(np.argmin(r), r.shape)
            cand = Fraction(int(db[k]), int(-da[k]))
            hi = cand if hi is None or cand < hi else hi
        if lo is not None and hi is not None and lo >= hi:
            return False, None, None, False
    return True, lo, hi, b_zero_ok


def staircase_thresholds(acc: np.ndarray, y: np.ndarray):
    """Thresholds (1, T) and base with ``base + #{j: acc >= thr[j]} == y`` on every given (acc, y) pair, or
    None if ``y`` is not a non-decreasing function of ``acc`` on them."""
    acc, y = np.asarray(acc, np.int64).ravel(), np.asarray(y, np.int64).ravel()
    order = np.lexsort((y, acc))
    acc_s, y_s = acc[order], y[order]
    if np.any(np.diff(y_s) < 0) or np.any((np.diff(acc_s) == 0) & (np.diff(y_s) != 0)):
        return None
    base = int(y_s[0])
    levels = np.arange(base + 1, int(y_s[-1]) + 1)
    thr = acc_s[np.searchsorted(y_s, levels, side="left")]
    return thr.reshape(1, -1).astype(np.int64), base


def add_form(a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, a_dtype, b_dtype, y_dtype, qmin=None, qmax=None,
             kind="qlinear", broadcast=None):
    """Integer form of a quantized Add as onnxruntime runs it: ``(a_mult, b_mult, thresholds, base)`` such that
    IR ``threshold(add(a, b, a_zp, b_zp, a_mult, b_mult), thresholds, base)`` equals onnxruntime's output,
    clamped to ``[qmin, qmax]`` (a folded Relu/Clip), on all 65536 input pairs.

    ``a_mult`` and ``b_mult`` are the smallest non-negative integers whose ratio separates every output level
    (an exact interval computation on the tabulated outputs, :func:`add_table`; ``kind`` and ``broadcast`` as
    there); ``thresholds`` has shape (1, T) with T = (largest - smallest output code), ``base`` is the smallest
    output code. A constant output gives ``(0, 0, (1, 0) thresholds, base)``. Raises :class:`ZakidError` when no
    integer multipliers reproduce onnxruntime (its float rounding orders two pairs against every linear
    form)."""
    y = add_table(a_scale, a_zp, b_scale, b_zp, y_scale, y_zp, a_dtype, b_dtype, y_dtype, kind, broadcast)
    qmin, qmax = _clip_range(y_dtype, qmin, qmax)
    y = np.clip(y, qmin, qmax)
    where = (f"Add (scales {float(np.float32(a_scale)):.9g}, {float(np.float32(b_scale)):.9g} -> "
             f"{float(np.float32(y_scale)):.9g}, zero points {a_zp}, {b_zp} -> {y_zp}, {kind})")
    if np.any(np.diff(y, axis=0) < 0) or np.any(np.diff(y, axis=1) < 0):
        _fail(f"{where}: onnxruntime's output is not non-decreasing in both inputs, so no threshold requantizer "
              "can reproduce it.")
    base = int(y.min())
    if int(y.max()) == base:
        return 0, 0, np.zeros((1, 0), np.int64), base
    feasible, lo, hi, b_zero_ok = _ratio_bounds(y)
    if not feasible:
        _fail(f"{where}: no integer multipliers reproduce onnxruntime exactly: its float32 rounding orders two "
              "input pairs against every weighted sum of the inputs. Keep this Add on the host, or change "
              "the scales.")
    if b_zero_ok and hi is None:
        a_mult, b_mult = 1, 0
    elif lo is None or lo < 0:
        a_mult, b_mult = 0, 1
    else:
        rho = _simplest_between(lo, hi)
        a_mult, b_mult = rho.numerator, rho.denominator
    ua = _codes(a_dtype) - int(a_zp)
    ub = _codes(b_dtype) - int(b_zp)
    acc = ua[:, None] * a_mult + ub[None, :] * b_mult
    res = staircase_thresholds(acc, y)
    if res is None:  # the interval computation guarantees a staircase; this is a safety net
        _fail(f"{where}: internal error: multipliers {a_mult}, {b_mult} do not order onnxruntime's outputs.")
    return int(a_mult), int(b_mult), res[0], res[1]


# --------------------------------------------------------------------------------------------------------
# average pooling


def _norm2(v, n_spatial, what):
    v = [int(t) for t in np.atleast_1d(v)]
    if len(v) != n_spatial:
        _fail(f"average pooling: {what} {v} does not match the {n_spatial} spatial axes.")
    return v


def avgpool_window_sizes(input_hw, kernel, strides=None, pads=None, ceil_mode=0) -> np.ndarray:
    """Number of in-image inputs in each pooling window, an (OH, OW) int array, by onnxruntime's rule
    (``hend = min(hstart + kh, H)``, ``hstart = max(hstart, 0)``). 1-D pooling: pass 1-element lists."""
    from .golden import conv_out_size

    nsp = len(kernel)
    if nsp not in (1, 2):
        _fail(f"average pooling over {nsp} spatial axes is not supported (1 or 2).")
    k = _norm2(kernel, nsp, "kernel")
    hw = _norm2(input_hw, nsp, "input size")
    s = _norm2(strides if strides is not None else [1] * nsp, nsp, "strides")
    p = _norm2(pads if pads is not None else [0] * 2 * nsp, 2 * nsp, "pads")
    per_axis = []
    for ax in range(nsp):
        o = conv_out_size(hw[ax], k[ax], s[ax], p[ax], p[ax + nsp], 1, ceil_mode)
        start = np.arange(o) * s[ax] - p[ax]
        per_axis.append(np.minimum(start + k[ax], hw[ax]) - np.maximum(start, 0))
    if nsp == 1:
        return per_axis[0][None, :]
    return per_axis[0][:, None] * per_axis[1][None, :]


def avgpool_is_global(input_hw, kernel, pads=None) -> bool:
    """onnxruntime's QLinearAveragePool runs the integer global kernel when the kernel equals the input's
    spatial size and every pad is 0."""
    no_pads = pads is None or not np.any(np.asarray(pads))
    return [int(t) for t in np.atleast_1d(input_hw)] == [int(t) for t in np.atleast_1d(kernel)] and no_pads


def global_avgpool_multiplier(x_scale, y_scale, n: int) -> np.float32:
    """The float32 multiplier of onnxruntime's integer global average pool: ``f32(x_scale / f32(y_scale *
    f32(n)))``."""
    return np.float32(np.float32(x_scale) / np.float32(np.float32(y_scale) * np.float32(n)))


def avgpool_float_extremes(x_scale, x_zp, y_scale, y_zp, dtype, m: int, n: int):
    """For every integer window sum ``S = sum(x - x_zp)`` of ``m`` in-image codes (``S`` from ``m * (lo - x_zp)``
    to ``m * (hi - x_zp)``), the smallest and largest output code onnxruntime's float QLinearAveragePool gives
    over all windows with that sum, in any summation order, divided by ``n``. Returns ``(sums, lowest,
    highest)``, int64 arrays. Exact: the float32 running sum is non-decreasing in its previous value, so
    carrying only the smallest and largest running sum per partial integer sum covers every window."""
    lo, hi = dtype_range(dtype)
    d = _codes(dtype) - int(x_zp)
    v = (np.float32(x_scale) * d.astype(np.float32)).astype(np.float32)
    pmin = np.zeros(1, np.float32)
    pmax = np.zeros(1, np.float32)
    for _ in range(int(m)):
        size = pmin.size + d.size - 1
        nmin = np.full(size, np.inf, np.float32)
        nmax = np.full(size, -np.inf, np.float32)
        for j in range(d.size):  # next element has offset code d[j]; partial sums shift by j
            sl = slice(j, j + pmin.size)
            nmin[sl] = np.minimum(nmin[sl], (pmin + v[j]).astype(np.float32))
            nmax[sl] = np.maximum(nmax[sl], (pmax + v[j]).astype(np.float32))
        pmin, pmax = nmin, nmax

    def out(p):
        t = (p / np.float32(n)).astype(np.float32)
        t = ((t / np.float32(y_scale)).astype(np.float32) + np.float32(y_zp)).astype(np.float32)
        return np.clip(np.rint(t), lo, hi).astype(np.int64)

    sums = np.arange(pmin.size, dtype=np.int64) + int(m) * int(d[0])
    return sums, out(pmin), out(pmax)


def avgpool_form(x_scale, x_zp, y_scale, y_zp, dtype, *, kernel, input_hw, strides=None, pads=None,
                 count_include_pad=0, global_pool=False, qmin=None, qmax=None, strict=True):
    """Thresholds for an IR ``sumpool`` (sum of ``x - x_zp`` over the in-image part of each window) followed by
    ``threshold``, reproducing onnxruntime's com.microsoft QLinearAveragePool (``global_pool=False``; also the
    fused QDQ AveragePool) or QLinearGlobalAveragePool (``global_pool=True``, or a kernel equal to the input
    size without padding, which onnxruntime runs as the global kernel), clamped to ``[qmin, qmax]``.

    Returns a dict ``{m: (thresholds (1, T) int64, base)}`` with one entry per distinct number ``m`` of in-image
    inputs in a window (:func:`avgpool_window_sizes` maps output positions to ``m``; without padding there is
    one entry). The divisor is ``m``, or the kernel size with ``count_include_pad=1``.

    The global kernel is integer and always exact. The float kernel is exact wherever its result depends on
    the window sum alone (:func:`avgpool_float_extremes`); if for some sum two windows give different codes
    (typically equal input and output scales with an even divisor), ``strict`` raises :class:`ZakidError`,
    else those sums get the exact rational average rounded half to even (onnxruntime gives that or its
    neighbour, depending on the individual inputs)."""
    _check_dtype(dtype, "average pool dtype")
    xs, ys = _check_scale(x_scale, "input scale"), _check_scale(y_scale, "output scale")
    xz, yz = _check_zp(x_zp, dtype, "input zero point"), _check_zp(y_zp, dtype, "output zero point")
    qmin, qmax = _clip_range(dtype, qmin, qmax)
    lo, hi = dtype_range(dtype)
    kernel = list(np.atleast_1d(kernel))
    input_hw = list(np.atleast_1d(input_hw))
    if global_pool or avgpool_is_global(input_hw, kernel, pads):
        n = int(np.prod(input_hw))
        from .passes import thresholds_for

        mult = global_avgpool_multiplier(xs, ys, n)
        s_lo, s_hi = n * (lo - xz), n * (hi - xz)
        thr = thresholds_for(mult, yz, qmin, qmax, np.array([s_lo]), np.array([s_hi]))[0]
        # keep only the levels some sum reaches and some sum misses
        always, never = int((thr <= s_lo).sum()), int((thr > s_hi).sum())
        return {n: (thr[always:thr.size - never].reshape(1, -1).astype(np.int64), qmin + always)}
    sizes = np.unique(avgpool_window_sizes(input_hw, kernel, strides, pads))
    ksize = int(np.prod(kernel))
    forms = {}
    for m in (int(t) for t in sizes):
        n = ksize if count_include_pad else m
        sums, low, high = avgpool_float_extremes(xs, xz, ys, yz, dtype, m, n)
        amb = np.flatnonzero(low != high)
        if amb.size and strict:
            k = amb[0]
            _fail(f"QLinearAveragePool (scales {xs:.9g} -> {ys:.9g}, zero points {xz} -> {yz}, {m} inputs per "
                  f"window, divisor {n}): onnxruntime averages in float32 and its result is not a function of "
                  f"the window sum for {amb.size} of {sums.size} sums (e.g. sum {int(sums[k])} gives "
                  f"{int(low[k])} or {int(high[k])} depending on the inputs), so no integer requantizer "
                  "reproduces it exactly.")
        y = low
        if amb.size:  # exact rational average, rounded half to even
            exact = [Fraction(xs) * int(s) / (n * Fraction(ys)) + yz for s in sums[amb]]
            y = low.copy()
            y[amb] = np.clip([round(e) for e in exact], lo, hi)
        y = np.clip(y, qmin, qmax)
        res = staircase_thresholds(sums, y)
        if res is None:
            _fail(f"QLinearAveragePool with {m} inputs per window: onnxruntime's output is not non-decreasing "
                  "in the window sum.")
        forms[m] = res
    return forms
