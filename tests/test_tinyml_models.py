"""The MLPerf Tiny shapes built in bench/models: a DS-CNN keyword spotter (strided 10x4 conv with
asymmetric padding, depthwise 3x3 + pointwise blocks, global average pooling, dense, QLinearSoftmax on the
host) and a dense autoencoder, quantized by the tool from calibration data; RTL simulation equals the
golden model (itself equal to onnxruntime, see test_onnx_import_cnn) bit for bit."""

from pathlib import Path

import numpy as np
import pytest

from zakid_hw import cycle_model
from zakid_hw.compiler import compile_model
from zakid_hw.errors import ZakidError
from zakid_hw.simulate import golden_outputs, simulate_model

MODELS = Path(__file__).resolve().parents[1] / "bench" / "models"


def test_dscnn_c32_in_rtl_equals_golden():
    calib = np.load(MODELS / "kws_calib.npy")
    with pytest.raises(ZakidError, match=r"does not fit.*largest: .*thresholds7.*--requantizer affine"):
        # whole threshold tables do not fit; the fit check names the largest consumers
        compile_model(MODELS / "kws_dscnn_c32.onnx", calibration=calib, requantizer="tables")
    c = compile_model(MODELS / "kws_dscnn_c32.onnx", calibration=calib)
    # it fits the UP5K: weights in SPRAM, affine requantizer tables, activations laid out in place (about
    # 0.6 of two whole 25x5x32 maps), pointwise layers on two pixels per weight word
    assert c.config.weights_in_spram and c.image.requantizer == "affine" and c.config.pixels == 2
    assert c.image.act_bytes < 0.65 * 2 * 25 * 5 * 32
    kinds = [l.kind for l in c.program.layers]
    assert kinds == ["conv"] + ["depthwise", "conv"] * 4 + ["sumpool", "conv"]
    xs = np.load(MODELS / "kws_x.npy")[:3]
    res = simulate_model(c, xs)
    np.testing.assert_array_equal(res.outputs.reshape(-1), golden_outputs(c, xs).reshape(-1))
    assert set(res.cycles) == {cycle_model.cycles_per_run(c.image)}


def test_autoencoder_in_rtl_equals_golden():
    c = compile_model(MODELS / "ad_autoencoder_small.onnx", calibration=np.load(MODELS / "ad_calib.npy"))
    assert c.config.weights_in_spram
    xs = np.load(MODELS / "ad_x.npy")[[0, 1, 150]]
    res = simulate_model(c, xs)
    np.testing.assert_array_equal(res.outputs.reshape(-1), golden_outputs(c, xs).reshape(-1))
    assert set(res.cycles) == {cycle_model.cycles_per_run(c.image)}
