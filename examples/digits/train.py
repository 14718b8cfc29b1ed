#!/usr/bin/env python3
"""Train, export and quantize the shipped example model: a 64-16-10 MLP on scikit-learn's digits.

Deterministic: the numpy RNG is seeded, training is full batch (no shuffling), and the split is
fixed (first 1200 images train, remaining 597 test).  Running it twice writes identical files.

Writes, next to this script:
  digits_mlp.onnx       float model  (x: float32 [1,64] -> Gemm -> Relu -> Gemm -> logits: float32 [1,10])
  digits_mlp_int8.onnx  the same model quantized by onnxruntime quantize_static (QOperator,
                        int8 activations, int8 symmetric per-tensor weights, MinMax calibration)
  calib.npy             calibration inputs: the first 200 training images, float32 [200,64]
  digits_x.npy          all 1797 inputs, float32 [1797,64], scaled x/16
  digits_y.npy          all 1797 labels, int64 [1797]

Usage:  python examples/digits/train.py
"""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 0
N_TRAIN = 1200      # first 1200 rows train, rows 1200..1796 test
N_CALIB = 200       # first 200 training rows calibrate the quantizer
HIDDEN = 16
EPOCHS = 400
LR = 0.01
WEIGHT_DECAY = 1e-4


def load_data():
    from sklearn.datasets import load_digits
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)          # (1797, 64), values 0..1
    y = d.target.astype(np.int64)                    # (1797,)
    return x, y


def forward(params, x):
    w1, b1, w2, b2 = params
    h_pre = x @ w1.T + b1
    h = np.maximum(h_pre, 0.0)
    return h_pre, h, h @ w2.T + b2


def train(x, y):
    """Full-batch Adam on softmax cross-entropy (+ small L2), float64. Weights in (out, in) layout."""
    rng = np.random.default_rng(SEED)
    n_in, n_out = x.shape[1], 10
    w1 = rng.normal(0.0, np.sqrt(2.0 / n_in), (HIDDEN, n_in))
    b1 = np.zeros(HIDDEN)
    w2 = rng.normal(0.0, np.sqrt(2.0 / HIDDEN), (n_out, HIDDEN))
    b2 = np.zeros(n_out)
    params = [w1, b1, w2, b2]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    b1m, b2m, eps = 0.9, 0.999, 1e-8

    xd = x.astype(np.float64)
    onehot = np.eye(n_out)[y]
    n = xd.shape[0]
    for t in range(1, EPOCHS + 1):
        h_pre, h, logits = forward(params, xd)
        z = logits - logits.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        g_logits = (p - onehot) / n
        g_w2 = g_logits.T @ h + WEIGHT_DECAY * params[2]
        g_b2 = g_logits.sum(axis=0)
        g_h = g_logits @ params[2]
        g_h[h_pre <= 0.0] = 0.0
        g_w1 = g_h.T @ xd + WEIGHT_DECAY * params[0]
        g_b1 = g_h.sum(axis=0)
        grads = [g_w1, g_b1, g_w2, g_b2]
        for i, g in enumerate(grads):
            m[i] = b1m * m[i] + (1 - b1m) * g
            v[i] = b2m * v[i] + (1 - b2m) * g * g
            mh = m[i] / (1 - b1m ** t)
            vh = v[i] / (1 - b2m ** t)
            params[i] = params[i] - LR * mh / (np.sqrt(vh) + eps)
        if t % 100 == 0:
            loss = -np.mean(np.log(p[np.arange(n), y] + 1e-12))
            print(f"epoch {t:4d}  loss {loss:.4f}")
    return [p.astype(np.float32) for p in params]


def export_onnx(params, path):
    w1, b1, w2, b2 = params
    inits = [
        numpy_helper.from_array(w1, "fc1.weight"),   # (16, 64), used with transB=1
        numpy_helper.from_array(b1, "fc1.bias"),
        numpy_helper.from_array(w2, "fc2.weight"),   # (10, 16), used with transB=1
        numpy_helper.from_array(b2, "fc2.bias"),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "fc1.weight", "fc1.bias"], ["fc1_out"], name="fc1", transB=1),
        helper.make_node("Relu", ["fc1_out"], ["relu_out"], name="relu"),
        helper.make_node("Gemm", ["relu_out", "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "digits_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="zakid-hw examples/digits/train.py")
    model.ir_version = 10   # onnx>=1.20 writes 14; onnxruntime 1.31 reads at most 13
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return model


def quantize(float_path, int8_path, calib):
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self, data):
            self.it = iter([{"x": row[None, :]} for row in data])

        def get_next(self):
            return next(self.it, None)

    quantize_static(
        float_path, int8_path, Reader(calib),
        quant_format=QuantFormat.QOperator,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=False,
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    m = onnx.load(int8_path)
    onnx.checker.check_model(m)
    return m


def ort_accuracy(path, x, y):
    import onnxruntime as ort
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    pred = np.array([int(np.argmax(sess.run(None, {"x": x[i:i + 1]})[0])) for i in range(len(x))])
    return float(np.mean(pred == y))


def main():
    x, y = load_data()
    xtr, ytr, xte, yte = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]
    params = train(xtr, ytr)

    pred = lambda xs: np.argmax(forward(params, xs)[2], axis=1)
    print(f"numpy float32: train acc {np.mean(pred(xtr) == ytr):.4f} ({N_TRAIN} images), "
          f"test acc {np.mean(pred(xte) == yte):.4f} ({len(yte)} images)")

    calib = np.ascontiguousarray(xtr[:N_CALIB], dtype=np.float32)
    np.save(os.path.join(HERE, "calib.npy"), calib)
    np.save(os.path.join(HERE, "digits_x.npy"), x)
    np.save(os.path.join(HERE, "digits_y.npy"), y)

    float_path = os.path.join(HERE, "digits_mlp.onnx")
    int8_path = os.path.join(HERE, "digits_mlp_int8.onnx")
    export_onnx(params, float_path)
    qmodel = quantize(float_path, int8_path, calib)
    print("quantized nodes:", ", ".join(f"{n.op_type}[{n.domain or 'ai.onnx'}]" for n in qmodel.graph.node))

    for name, path in (("float", float_path), ("int8", int8_path)):
        acc_all = ort_accuracy(path, x, y)
        acc_te = ort_accuracy(path, xte, yte)
        print(f"onnxruntime {name:5s}: accuracy {acc_all:.4f} on all 1797 images, "
              f"{acc_te:.4f} on the {len(yte)} test images")


if __name__ == "__main__":
    main()
