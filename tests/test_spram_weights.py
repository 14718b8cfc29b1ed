"""Weights in SPRAM: the core (weights written through its load port) and the whole system (weights read
from a SPI flash model by the loader, then inference over the UART) equal the golden model in RTL
simulation with Yosys's SB_SPRAM256KA model."""

import numpy as np
import pytest

from zakid_hw.compiler import compile_model
from zakid_hw.simulate import simulate_codes, verification_rows

DIGITS = "examples/digits/digits_mlp_int8.onnx"


@pytest.fixture(scope="module")
def compiled():
    c = compile_model(DIGITS, weights="spram")
    assert c.config.weights_in_spram and c.memories["weights"]["place"] == "spram"
    return c


@pytest.mark.parametrize("uart", [False, True])
def test_spram_design_matches_golden(compiled, uart):
    rows = verification_rows(compiled, n=3 if uart else 8)
    got, cycles = simulate_codes(compiled, rows, uart=uart)
    want = np.stack([compiled.program.accel_golden(r) for r in rows])
    np.testing.assert_array_equal(got, want)


def test_weights_go_to_spram_only_when_asked_or_needed():
    c = compile_model(DIGITS)
    assert not c.config.weights_in_spram and c.memories["weights"]["spram"] == 0
