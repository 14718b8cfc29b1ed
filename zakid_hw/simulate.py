"""Run the generated RTL of a compiled model in cocotb + Verilator.

Two levels: the accelerator core (inputs written into its memory directly; fast), or the whole system
behind its UART host link (the same bytes on the wire as a board, with a short UART bit time).
Compiled Verilator models are cached in ``$ZAKID_HW_CACHE`` (default ``~/.cache/zakid-hw``), so a second
run of the same design only simulates.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from rtl_gen.accelerator import Accelerator, weight_flash_bytes, weight_word_values
from rtl_gen.flash_loader import load_cycles
from rtl_gen.spram import sim_sources
from rtl_gen.system import AcceleratorSystem, weight_loader_params
from sim.runner import SimulationError, simulate

from . import golden
from .compiler import Compiled
from .errors import ZakidError
from .flash_image import flash_image

BENCHES = Path(__file__).resolve().parents[1] / "sim" / "benches"
SIM_UART_DIVISOR = 8


def cache_dir() -> Path:
    return Path(os.environ.get("ZAKID_HW_CACHE", Path.home() / ".cache" / "zakid-hw")) / "sim"


@dataclass
class SimResult:
    codes: np.ndarray      # (runs, out_len) output codes as the accelerator wrote them
    outputs: np.ndarray    # (inferences, *output shape) in the model's own type and meaning
    cycles: list[int]      # per run (of ``batch`` inferences), from the core's cycle counter


def to_codes(compiled: Compiled, xs) -> np.ndarray:
    """Model inputs (first axis indexes inferences) -> accelerator input codes, one row per run, checking
    the shape. A design for batches of N inferences (``--batch``) takes them N at a time; the last run is
    filled up with copies of the last input (:func:`from_codes` drops their outputs)."""
    t = compiled.graph.tensors[compiled.graph.inputs[0]]
    xs = np.asarray(xs)
    want = tuple(t.shape)
    row_shapes = {want, want[1:] if want and want[0] == 1 else want}
    if xs.ndim == 0 or tuple(xs.shape[1:]) not in row_shapes:
        raise ZakidError(f"input data of shape {xs.shape} does not match model input {t.name!r} of shape "
                         f"{want}: the first axis indexes inferences, each row has shape {want}"
                         + (f" or {want[1:]}" if want and want[0] == 1 else ""))
    n = compiled.program.batch
    if len(xs) % n:
        xs = np.concatenate([xs, np.repeat(xs[-1:], n - len(xs) % n, axis=0)])
    runs = [compiled.program.to_codes(xs[i:i + n]) for i in range(0, len(xs), n)]
    return np.stack(runs) if runs else np.zeros((0, compiled.program.in_len), np.int64)


def from_codes(compiled: Compiled, out_codes, count: int) -> np.ndarray:
    """Output code rows of the runs -> the first ``count`` model outputs (first axis indexes inferences)."""
    outs = [compiled.program.from_codes(c) for c in out_codes]
    return np.concatenate(outs)[:count] if outs else np.zeros((0,))


def signed_codes(raw, dtype: str) -> np.ndarray:
    raw = np.asarray(raw, np.int64)
    return np.where(raw > 127, raw - 256, raw) if dtype == "int8" else raw


def simulate_codes(compiled: Compiled, codes: np.ndarray, *, uart: bool = False,
                   jobs: int | None = None) -> tuple[np.ndarray, list[int]]:
    """Run input code rows through the RTL; returns output code rows and cycles per row. ``jobs``: compiler
    processes for the Verilator model, if it needs building (default: one per core)."""
    rows = [[int(c) for c in r] for r in codes]
    spram = compiled.config.weights_in_spram
    sources = sim_sources(compiled.config)
    try:
        if uart:
            config = replace(compiled.config, uart_divisor=SIM_UART_DIVISOR)
            dut = AcceleratorSystem(config, compiled.image, compiled.signature)
            params = dict(divisor=SIM_UART_DIVISOR, in_dtype=compiled.in_dtype, out_dtype=compiled.out_dtype,
                          runs=rows, unknown=ord("x"))
            if spram:
                # the flash as the board's would hold it; the bitstream part before the weights is never read
                image = flash_image(b"", weight_flash_bytes(compiled.image))
                params["flash"] = {"image": image.hex(),
                                   "load_cycles": load_cycles(**weight_loader_params(config, compiled.image))}
            res = simulate(dut, name="zakid_system", test_module="host_link_bench", test_dir=BENCHES,
                           build_dir=cache_dir(), parameters=params, extra_sources=sources, jobs=jobs)
            if res["info"]["signature"] != compiled.signature:
                raise ZakidError("the simulated design reported a different model signature")
            out = np.array([r["codes"] for r in res["runs"]], np.int64).reshape(len(rows), -1)
            return out, [r["cycles"] for r in res["runs"]]
        dut = Accelerator(compiled.config, compiled.image)
        params = {"rows": rows, "out_len": compiled.program.out_len}
        if spram:
            params["weights"] = weight_word_values(compiled.image)
        res = simulate(dut, name="zakid_core", test_module="core_bench", test_dir=BENCHES,
                       build_dir=cache_dir(), parameters=params, extra_sources=sources, jobs=jobs)
    except SimulationError as e:
        raise ZakidError(f"RTL simulation failed: {e}") from None
    out = signed_codes(np.array(res["outputs"], np.int64).reshape(len(rows), -1), compiled.out_dtype)
    return out, list(res["cycles"])


def simulate_model(compiled: Compiled, xs, *, uart: bool = False) -> SimResult:
    codes = to_codes(compiled, xs)
    out_codes, cycles = simulate_codes(compiled, codes, uart=uart)
    return SimResult(out_codes, from_codes(compiled, out_codes, len(xs)), cycles)


def golden_outputs(compiled: Compiled, xs) -> np.ndarray:
    """The golden model on the imported graph (before any hardware pass)."""
    return golden.run_batch(compiled.graph, np.asarray(xs))


def verification_rows(compiled: Compiled, n: int = 12, seed: int = 0) -> np.ndarray:
    """Input code rows for the built-in RTL check: the extremes of the input type and random codes."""
    lo, hi = (-128, 127) if compiled.in_dtype == "int8" else (0, 255)
    rng = np.random.default_rng(seed)
    rows = rng.integers(lo, hi + 1, (n, compiled.program.in_len))
    rows[0], rows[1] = lo, hi
    return rows
