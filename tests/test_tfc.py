"""FINN's TFC-w2a2 (2-bit QONNX MLP, 59k weights) on the accelerator: logic-cell multipliers, weights in SPRAM, the last layer's
raw accumulators scaled on the host; RTL simulation equals the golden model (= qonnx's execute_onnx, see
test_qonnx_import) bit for bit, and the reference image is classified as its label."""

from pathlib import Path

import numpy as np
import pytest

from zakid_hw import cycle_model
from zakid_hw.compiler import compile_model
from zakid_hw.simulate import golden_outputs, simulate_model

TFC = Path(__file__).resolve().parents[1].parent / "shared" / "models" / "tfc"
pytestmark = pytest.mark.skipif(not (TFC / "TFC_2W2A.onnx").exists(), reason="needs ../shared/models/tfc")


def test_tfc_w2a2_in_rtl_equals_golden():
    c = compile_model(TFC / "TFC_2W2A.onnx")
    assert c.image.w_width == 2 and c.image.out_bits == 2  # 2-bit weights, 2-bit activations
    # 2-bit products are a couple of adds: logic-cell lanes, no DSP block. The exploration takes 32 of them,
    # predicted at 4675 of the 5280 logic cells, under its 90% budget (a real build: 4880 cells and 41.63 MHz
    # at 40.5, bench/cost_calibration.json)
    assert (c.config.lanes, c.config.dsp_lanes) == (32, 0)
    assert c.config.weights_in_spram and c.memories["weights"]["spram"] == 4  # 64-bit words
    assert c.program.layers[-1].raw and c.program.host_post  # logits finished on the host
    x = np.load(TFC / "tfc_mnist_input.npy").astype(np.float32) / 255
    rng = np.random.default_rng(0)
    xs = np.concatenate([x, rng.random((3, 1, 28, 28), np.float32)])
    res = simulate_model(c, xs)
    want = golden_outputs(c, xs)
    np.testing.assert_array_equal(res.outputs.reshape(want.shape), want)
    assert int(np.argmax(res.outputs[0])) == int(np.load(TFC / "tfc_mnist_output.npy").reshape(-1)[0])
    assert set(res.cycles) == {cycle_model.cycles_per_run(c.image)}
