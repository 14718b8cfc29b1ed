"""Quantize a float model (MLP or CNN) with onnxruntime's ``quantize_static`` so that :mod:`zakid_hw.onnx_import` can import it.

Default scheme (:data:`DEFAULT_SCHEME`, recorded in ``graph.meta["quantization"]``):

* QOperator format: the layers become com.microsoft QGemm nodes (explicit integer kernels: what the file says
  is what onnxruntime runs, no fusion involved);
* int8 activations (asymmetric, zero point from the calibrated range, so a folded Relu costs nothing) and
  int8 weights (symmetric, zero point 0), the natural operands of signed 8x8 multipliers;
* per-tensor weight scales (onnxruntime's own default): one requantization multiplier per layer, so the
  hardware requantizer needs one threshold table per layer; per-channel scales would need one table per
  output neuron, which costs far more block RAM than the weights of a small MLP;
* MinMax calibration over every calibration row.

Before quantizing, the float graph is put in a canonical form (:func:`prepare`):

* models older than opset 13 are converted to opset 13 (integer MaxPool needs opset 12; quantize_static's
  per-channel and QDQ support needs 13);
* nodes whose inputs are all constants (e.g. a Reshape of a weight, as in the ONNX model zoo's mnist-8) are
  evaluated once and become initializers;
* a BatchNormalization after a Conv or Gemm (or MatMul by a constant) is folded into its weight and bias, in
  float64 then rounded to float32: ``w' = w * s``, ``b' = (b - mean) * s + beta`` with
  ``s = gamma / sqrt(var + eps)``; a constant per-channel Add after a Conv becomes its bias;
* MatMul + constant Add becomes one Gemm (transB=1) so that the bias lands in the int32 accumulator instead of a
  separate QLinearAdd, and Gemm's alpha/beta are folded into its weight and bias.

The quantized model is the reference the importer is bit-exact with; these float rewrites only change how
closely it follows the original float model (by float32 rounding).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile

import numpy as np

from .errors import ZakidError

DEFAULT_SCHEME = {
    "format": "qoperator",
    "activation_type": "int8",
    "weight_type": "int8",
    "per_channel": False,
    "reduce_range": False,
    "weight_symmetric": True,
    "activation_symmetric": False,
    "calibration_method": "minmax",
}


def _fail(msg: str):
    raise ZakidError(" ".join(msg.split()))


def calibration_rows(calibration, shape, name: str) -> np.ndarray:
    """The calibration array as float32 rows of exactly ``shape``; accepts rows of ``shape`` or of ``shape``
    without its leading batch 1 (first axis indexes rows)."""
    try:
        arr = np.asarray(calibration, dtype=np.float32)
    except (TypeError, ValueError) as e:
        _fail(f"calibration data is not a numeric array: {e}.")
    shape = tuple(shape)
    ok = [shape] + ([shape[1:]] if len(shape) > 1 and shape[0] == 1 else [])
    if arr.ndim == 0 or tuple(arr.shape[1:]) not in ok or arr.shape[0] == 0:
        alts = " or ".join(str((-1,) + s).replace("-1", "rows") for s in ok)
        _fail(f"calibration data has shape {arr.shape}, but input {name!r} has shape {shape}: pass an array of "
              f"shape {alts} with at least one row (the first axis indexes rows).")
    if not np.all(np.isfinite(arr)):
        _fail("calibration data contains NaN or infinite values.")
    return arr.reshape((arr.shape[0],) + shape)


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def upgrade_opset(model, target: int = 13):
    """Convert a model older than opset ``target`` with onnx's version converter (unchanged if it fails or is
    newer)."""
    import onnx
    from onnx import version_converter

    version = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), target)
    if version >= target:
        return model
    try:
        m = version_converter.convert_version(model, target)
        m.ir_version = max(m.ir_version, 7)  # opset 13 needs IR 7; initializers then need no graph input
        onnx.checker.check_model(m)
        return m
    except Exception as e:
        _fail(f"the float model uses ONNX opset {version}; converting it to opset {target} (needed to quantize "
              f"pooling layers on integers) failed: {e}. Convert it yourself (onnx.version_converter) first.")


def fold_constants(model):
    """Evaluate (with onnx's reference evaluator) every node whose inputs are all initializers."""
    import onnx
    from onnx import helper, numpy_helper
    from onnx.reference import ReferenceEvaluator

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    graph_inputs = {i.name for i in g.input} - set(inits)
    keep = []
    for n in g.node:
        ins = [i for i in n.input if i]
        if n.op_type in ("Constant",) or (ins and all(i in inits and i not in graph_inputs for i in ins)
                                          and n.domain in ("", "ai.onnx")):
            sub = helper.make_model(helper.make_graph(
                [n], "fold", [], [helper.make_tensor_value_info(o, 0, None) for o in n.output],
                [numpy_helper.from_array(inits[i], i) for i in ins]), opset_imports=list(m.opset_import))
            try:
                outs = ReferenceEvaluator(sub).run(None, {})
            except Exception:
                keep.append(n)
                continue
            for o, v in zip(n.output, outs):
                inits[o] = np.asarray(v)
                g.initializer.append(numpy_helper.from_array(np.asarray(v), o))
            continue
        keep.append(n)
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    inputs = [i for i in g.input if i.name not in inits or i.name in used]
    del g.input[:]
    g.input.extend([i for i in inputs if i.name not in inits])  # initializers need no graph input entry
    return m


def fold_batchnorm(model):
    """Fold BatchNormalization (and a constant per-channel Add) into the Conv/Gemm before it, when that layer's
    output has no other user."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    users = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}
    producer = {o: n for n in g.node for o in n.output}
    drop = set()
    changed = {}

    def layer_of(t):
        p = producer.get(t)
        if p is None or t in outputs or len(users.get(t, [])) != 1 or id(p) in drop:
            return None
        if p.op_type == "Conv" and p.input[1] in inits and (len(p.input) < 3 or p.input[2] in inits):
            return p
        if p.op_type == "Gemm" and not _attrs(p).get("transA", 0) and all(i in inits for i in p.input[1:] if i):
            return p
        return None

    def weights(p):
        """(weight as (out, ...) float64, bias (out,) float64) of a layer, and a setter."""
        w = changed.get(p.input[1], inits[p.input[1]]).astype(np.float64)
        a = _attrs(p)
        if p.op_type == "Gemm":
            w = (w if a.get("transB", 0) else w.T) * a.get("alpha", 1.0)
        n_out = w.shape[0]
        b = np.zeros(n_out)
        if len(p.input) > 2 and p.input[2]:
            b = np.broadcast_to(changed.get(p.input[2], inits[p.input[2]]).astype(np.float64).reshape(-1),
                                (n_out,)) * (a.get("beta", 1.0) if p.op_type == "Gemm" else 1.0)
        return w, b

    def set_weights(p, w, b):
        base = p.name or p.output[0]
        wn, bn = f"{base}_folded_weight", f"{base}_folded_bias"
        inits[wn], inits[bn] = w.astype(np.float32), b.astype(np.float32)
        changed[wn], changed[bn] = inits[wn], inits[bn]
        new_inputs = [p.input[0], wn, bn]
        del p.input[:]
        p.input.extend(new_inputs)
        if p.op_type == "Gemm":
            del p.attribute[:]
            p.attribute.extend([helper.make_attribute("transB", 1)])

    for n in g.node:
        if n.op_type == "BatchNormalization" and len(n.output) == 1 and all(i in inits for i in n.input[1:5]):
            p = layer_of(n.input[0])
            if p is None:
                continue
            gamma, beta, mean, var = (inits[i].astype(np.float64) for i in n.input[1:5])
            s = gamma / np.sqrt(var + _attrs(n).get("epsilon", 1e-5))
            w, b = weights(p)
            if w.shape[0] != s.size:
                continue
            set_weights(p, w * s.reshape(-1, *([1] * (w.ndim - 1))), (b - mean) * s + beta)
        elif n.op_type == "Add" and len(n.input) == 2:
            p = layer_of(n.input[0]) or layer_of(n.input[1])
            other = n.input[1] if p is not None and n.input[0] in p.output else n.input[0]
            if p is None or p.op_type != "Conv" or other not in inits:
                continue
            c = inits[other]
            w, b = weights(p)
            shape = (1,) * (w.ndim - c.ndim) + c.shape
            if len(shape) != w.ndim or any(d != 1 for i, d in enumerate(shape) if i != 1) \
                    or shape[1] not in (1, w.shape[0]):
                continue
            set_weights(p, w, b + np.broadcast_to(c.astype(np.float64).reshape(-1), b.shape))
        else:
            continue
        p.output[0] = n.output[0]  # the layer now writes the folded node's output
        producer[n.output[0]] = p
        drop.add(id(n))
    keep = [n for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(keep)
    g.initializer.extend(numpy_helper.from_array(v, k) for k, v in changed.items())
    used = {i for n in g.node for i in n.input}
    kept = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(kept)
    onnx.checker.check_model(m)
    return m


def prepare(model):
    """The float rewrites applied before quantization (see the module docstring)."""
    return canonicalize(fold_batchnorm(fold_constants(upgrade_opset(model))))


def canonicalize(model):
    """Return a copy in which every Gemm is ``Gemm(x, W (N, K), b (N,), transB=1)`` with alpha and beta
    folded into W and b, and every MatMul by a constant followed by the Add of a constant bias is such a Gemm
    (only for a 2-D MatMul input, as Gemm requires). transA=1 raises ZakidError."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    inferred = onnx.shape_inference.infer_shapes(m).graph
    rank = {v.name: len(v.type.tensor_type.shape.dim) for v in [*inferred.input, *inferred.value_info]}
    users = {}
    for n in g.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}

    def new_init(arr, base):
        name = base
        while name in inits:
            name += "_"
        inits[name] = arr
        g.initializer.append(numpy_helper.from_array(np.ascontiguousarray(arr, np.float32), name))
        return name

    def gemm(n, x, w_nk, bias, out):
        ins = [x, new_init(w_nk, n.input[1] + "_nk")]
        if bias is not None:
            ins.append(new_init(np.broadcast_to(np.reshape(bias, -1), (w_nk.shape[0],)), n.input[1] + "_bias"))
        return helper.make_node("Gemm", ins, [out], name=n.name, transB=1)

    nodes, fused = [], set()
    for n in g.node:
        if id(n) in fused:
            continue
        if n.op_type == "Gemm":
            a = {x.name: helper.get_attribute_value(x) for x in n.attribute}
            if a.get("transA", 0):
                _fail(f"node {n.name!r} (Gemm) has transA=1, which is not supported (the input must be (1, K)).")
            consts = [inits.get(i) for i in n.input[1:] if i]
            if any(c is None for c in consts):
                _fail(f"node {n.name!r} (Gemm): its weight and bias must be constants (initializers).")
            w = consts[0] if a.get("transB", 0) else consts[0].T
            bias = consts[1] * np.float32(a.get("beta", 1.0)) if len(consts) > 1 else None
            n = gemm(n, n.input[0], w * np.float32(a.get("alpha", 1.0)), bias, n.output[0])
        elif n.op_type == "MatMul" and n.input[1] in inits and inits[n.input[1]].ndim == 2 \
                and rank.get(n.input[0]) == 2 and n.output[0] not in outputs \
                and [u.op_type for u in users.get(n.output[0], [])] == ["Add"]:
            add = users[n.output[0]][0]
            other = [i for i in add.input if i != n.output[0]]
            b = inits.get(other[0]) if len(other) == 1 else None
            w = inits[n.input[1]]
            if b is not None and b.size in (1, w.shape[1]) and b.shape[:-1] in ((), (1,)):
                n = gemm(n, n.input[0], w.T, b, add.output[0])
                fused.add(id(add))
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
    return m


class _Rows:
    def __init__(self, name, rows):
        self._it = iter([{name: r} for r in rows])

    def get_next(self):
        return next(self._it, None)


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantizer logs advice through the root logger; keep it off the user's console."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def quantize_float(model, calibration, scheme: dict | None = None):
    """Quantize a float ONNX model with ``quantize_static``; return (quantized ModelProto, scheme dict)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, \
        quantize_static

    from .onnx_common import ORT_MAX_IR_VERSION
    from .onnx_import import _graph_inputs, static_shape

    scheme = dict(DEFAULT_SCHEME, **(scheme or {}))
    inp = _graph_inputs(model)[0]
    shape = static_shape(inp, "graph input")
    rows = calibration_rows(calibration, shape, inp.name)
    fmodel = prepare(model)
    fmodel.ir_version = min(fmodel.ir_version, ORT_MAX_IR_VERSION)

    class Reader(_Rows, CalibrationDataReader):
        pass

    types = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    with tempfile.TemporaryDirectory(prefix="zakid_quant_") as tmp:
        src, dst = os.path.join(tmp, "float.onnx"), os.path.join(tmp, "quantized.onnx")
        onnx.save(fmodel, src)
        try:
            with _quiet():
                quantize_static(
                    src, dst, Reader(inp.name, rows),
                    quant_format={"qoperator": QuantFormat.QOperator, "qdq": QuantFormat.QDQ}[scheme["format"]],
                    activation_type=types[scheme["activation_type"]], weight_type=types[scheme["weight_type"]],
                    per_channel=scheme["per_channel"], reduce_range=scheme["reduce_range"],
                    calibrate_method=methods[scheme["calibration_method"]],
                    extra_options={"WeightSymmetric": scheme["weight_symmetric"],
                                   "ActivationSymmetric": scheme["activation_symmetric"]})
        except ZakidError:
            raise
        except Exception as e:
            _fail(f"onnxruntime's quantize_static failed on this model: {type(e).__name__}: {e}.")
        qmodel = onnx.load(dst)
    qmodel.ir_version = min(qmodel.ir_version, ORT_MAX_IR_VERSION)
    return qmodel, dict(scheme, calibration_rows=int(rows.shape[0]), preprocessing="opset>=13, constants folded, BatchNormalization folded, MatMul+Add fused to Gemm")
