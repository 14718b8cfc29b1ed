"""``build --seeds N``: the place-and-route runs go side by side, one per core, and the fastest is kept.

nextpnr is replaced by a stand-in that records how many runs are under way at once, so these tests take
well under a second and show the scheduling, not the tools."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import zakid_hw.build as build_mod
from zakid_hw import schedule
from zakid_hw.compiler import compile_model
from zakid_hw.synth import RESOURCE_CELLS, ResourceUse, SynthResult

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "digits" / "digits_mlp_int8.onnx"


class FakePlaceAndRoute:
    """Stands in for :func:`zakid_hw.synth.build_bitstream`: seed s at clock f achieves ``fmax(s, f)`` MHz."""

    def __init__(self, fmax):
        self.fmax, self.lock, self.active, self.peak, self.calls = fmax, threading.Lock(), 0, 0, []

    def __call__(self, top, board, out, *, f_mhz, seed=None, name="top", **kw):
        for obj in (top, getattr(top, "clock", None)):  # never elaborated: no "created but never used"
            if obj is not None:
                obj._MustUse__used = True
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
            self.calls.append((seed, f_mhz))
        time.sleep(0.2)
        with self.lock:
            self.active -= 1
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.bin").write_bytes(f"seed {seed}".encode())
        (out / f"{name}.v").write_text("module top(); endmodule\n")
        return SynthResult(name=name, board=board.name, device=board.device.name, out_dir=out,
                           bitstream=out / f"{name}.bin", verilog=out / f"{name}.v", report=out / "r.json",
                           logs={}, resources={k: ResourceUse(1, 10) for k in RESOURCE_CELLS},
                           f_target_mhz=f_mhz, fmax_mhz=self.fmax(seed, f_mhz), sync_clock="clk", seed=seed)


def _build(tmp_path, monkeypatch, fake, clock_mhz=None, **kw):
    c = compile_model(MODEL, clock_mhz=clock_mhz)
    monkeypatch.setattr(build_mod, "build_bitstream", fake)
    monkeypatch.setattr(build_mod, "_rtl_check", lambda c, log: [schedule.cycles_per_inference(c.image)] * 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    out = tmp_path / "out"
    return build_mod.build(c, out, log=lambda *a: None, **kw), out


def test_seeds_run_side_by_side_and_the_fastest_is_kept(tmp_path, monkeypatch):
    fake = FakePlaceAndRoute(lambda s, f: f + {1: 0.5, 2: 3.5, 3: 2.0}[s])  # every seed meets the clock
    report, out = _build(tmp_path, monkeypatch, fake, seeds=3)
    assert fake.peak == 2                          # two cores: two runs at once, never three
    assert sorted(s for s, _ in fake.calls) == [1, 2, 3]
    assert [r["seed"] for r in report["place_and_route_runs"]] == [1, 2, 3]  # reported in seed order
    assert report["fmax_mhz"] == report["clock_mhz"] + 3.5
    assert (out / "digits_mlp_int8.bin").read_bytes() == b"seed 2"


def test_automatic_clock_tries_two_seeds_at_once(tmp_path, monkeypatch):
    """No clock and no seed asked for: the first place and route runs seeds 1 and 2 side by side and keeps
    the one that meets the clock."""
    fake = FakePlaceAndRoute(lambda s, f: f + (1 if s == 2 else -1))
    report, out = _build(tmp_path, monkeypatch, fake)
    assert sorted(fake.calls) == [(1, report["clock_mhz"]), (2, report["clock_mhz"])] and fake.peak == 2
    assert report["timing_met"] and (out / "digits_mlp_int8.bin").read_bytes() == b"seed 2"


def test_one_run_without_a_seed_at_a_clock_asked_for(tmp_path, monkeypatch):
    fake = FakePlaceAndRoute(lambda s, f: 45.0)
    report, out = _build(tmp_path, monkeypatch, fake, clock_mhz=30)
    assert fake.calls == [(None, 30)] and fake.peak == 1
    report, out = _build(tmp_path / "seed", monkeypatch, fake, seed=7)  # a seed asked for: that one alone
    assert fake.calls[1:] == [(7, report["clock_mhz"])]


def test_a_rebuild_at_a_lower_clock_tries_two_seeds_at_once(tmp_path, monkeypatch):
    """Both seeds miss the automatic clock: the rebuild at the PLL's fastest frequency not above 97 % of the
    better Fmax runs seeds 1 and 2 side by side (two cores) and keeps the one that meets timing."""
    fake = FakePlaceAndRoute(lambda s, f: {1: 37.5, 2: 38.0}[s] if f > 40 else {1: f - 1, 2: f + 1}[s])
    report, out = _build(tmp_path, monkeypatch, fake)
    first, rebuild = fake.calls[:2], fake.calls[2:]
    assert sorted(s for s, _ in first) == [1, 2] and {f for _, f in first} == {45.0}  # the automatic clock
    assert sorted(s for s, _ in rebuild) == [1, 2] and fake.peak == 2
    assert {f for _, f in rebuild} == {report["clock_mhz"]} and 38.0 * 0.97 - 0.75 < report["clock_mhz"] <= 38.0 * 0.97
    assert report["timing_met"] and (out / "digits_mlp_int8.bin").read_bytes() == b"seed 2"
    assert [r["seed"] for r in report["place_and_route_runs"]] == [1, 2, 1, 2]


def test_workers_follow_the_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert [build_mod.pnr_workers(n) for n in (1, 2, 4)] == [1, 2, 2]
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert build_mod.pnr_workers(4) == 1
