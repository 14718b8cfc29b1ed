"""``build --seeds N``: the place-and-route runs go side by side, one per core, and the fastest is kept.

Synthesis and nextpnr are replaced by a stand-in that records the seeds and workers asked for, so these tests take
well under a second and show the scheduling, not the tools."""

from __future__ import annotations

import os
from pathlib import Path

import zakid_hw.build as build_mod
from zakid_hw import schedule
from zakid_hw.compiler import compile_model
from zakid_hw.synth import RESOURCE_CELLS, ResourceUse, SynthResult, seed_dir

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "digits" / "digits_mlp_int8.onnx"


class FakeBuilds:
    """Stands in for :func:`zakid_hw.synth.build_bitstreams`: seed s at clock f achieves ``fmax(s, f)`` MHz.
    Records each call's seeds and clock (``calls``) and its seeds and workers (``batches``)."""

    def __init__(self, fmax):
        self.fmax, self.calls, self.batches = fmax, [], []

    def __call__(self, top, board, out, *, f_mhz, seeds=(None,), workers=1, name="top", **kw):
        for obj in (top, getattr(top, "clock", None)):  # never elaborated: no "created but never used"
            if obj is not None:
                obj._MustUse__used = True
        self.calls += [(s, f_mhz) for s in seeds]
        self.batches.append((list(seeds), workers))
        results = []
        for s in seeds:
            d = Path(out) if len(seeds) == 1 else seed_dir(out, s)
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{name}.bin").write_bytes(f"seed {s}".encode())
            (Path(out) / f"{name}.v").write_text("module top(); endmodule\n")
            results.append(SynthResult(
                name=name, board=board.name, device=board.device.name, out_dir=d, bitstream=d / f"{name}.bin",
                verilog=Path(out) / f"{name}.v", report=d / "r.json", logs={},
                resources={k: ResourceUse(1, 10) for k in RESOURCE_CELLS}, f_target_mhz=f_mhz,
                fmax_mhz=self.fmax(s, f_mhz), sync_clock="clk", seed=s))
        return results


def _build(tmp_path, monkeypatch, fake, clock_mhz=None, **kw):
    c = compile_model(MODEL, clock_mhz=clock_mhz)
    monkeypatch.setattr(build_mod, "build_bitstreams", fake)
    monkeypatch.setattr(build_mod, "_rtl_check", lambda c, log: [schedule.cycles_per_inference(c.image)] * 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    out = tmp_path / "out"
    return build_mod.build(c, out, log=lambda *a: None, **kw), out


def test_seeds_run_side_by_side_and_the_fastest_is_kept(tmp_path, monkeypatch):
    fake = FakeBuilds(lambda s, f: f + {1: 0.5, 2: 3.5, 3: 2.0}[s])  # every seed meets the clock
    report, out = _build(tmp_path, monkeypatch, fake, seeds=3)
    assert fake.batches == [([1, 2, 3], 2)]        # one synthesis; two cores: two runs at once, never three
    assert [r["seed"] for r in report["place_and_route_runs"]] == [1, 2, 3]  # reported in seed order
    assert report["fmax_mhz"] == report["clock_mhz"] + 3.5
    assert (out / "digits_mlp_int8.bin").read_bytes() == b"seed 2"


def test_automatic_clock_tries_two_seeds_at_once(tmp_path, monkeypatch):
    """No clock and no seed asked for: the first place and route runs seeds 1 and 2 side by side and keeps
    the one that meets the clock."""
    fake = FakeBuilds(lambda s, f: f + (1 if s == 2 else -1))
    report, out = _build(tmp_path, monkeypatch, fake)
    assert sorted(fake.calls) == [(1, report["clock_mhz"]), (2, report["clock_mhz"])]
    assert fake.batches == [([1, 2], 2)]
    assert report["timing_met"] and (out / "digits_mlp_int8.bin").read_bytes() == b"seed 2"


def test_one_run_without_a_seed_at_a_clock_asked_for(tmp_path, monkeypatch):
    fake = FakeBuilds(lambda s, f: 45.0)
    report, out = _build(tmp_path, monkeypatch, fake, clock_mhz=30)
    assert fake.calls == [(None, 30)] and fake.batches == [([None], 1)]
    report, out = _build(tmp_path / "seed", monkeypatch, fake, seed=7)  # a seed asked for: that one alone
    assert fake.calls[1:] == [(7, report["clock_mhz"])]


def test_a_rebuild_at_a_lower_clock_tries_two_seeds_at_once(tmp_path, monkeypatch):
    """Both seeds miss the automatic clock: the rebuild at the PLL's fastest frequency not above 97 % of the
    better Fmax runs seeds 1 and 2 side by side (two cores) and keeps the one that meets timing."""
    fake = FakeBuilds(lambda s, f: {1: 37.5, 2: 38.0}[s] if f > 40 else {1: f - 1, 2: f + 1}[s])
    report, out = _build(tmp_path, monkeypatch, fake)
    first, rebuild = fake.calls[:2], fake.calls[2:]
    assert sorted(s for s, _ in first) == [1, 2] and {f for _, f in first} == {45.0}  # the automatic clock
    assert sorted(s for s, _ in rebuild) == [1, 2] and fake.batches[1] == ([1, 2], 2)
    assert {f for _, f in rebuild} == {report["clock_mhz"]} and 38.0 * 0.97 - 0.75 < report["clock_mhz"] <= 38.0 * 0.97
    assert report["timing_met"] and (out / "digits_mlp_int8.bin").read_bytes() == b"seed 2"
    assert [r["seed"] for r in report["place_and_route_runs"]] == [1, 2, 1, 2]


def test_workers_follow_the_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert [build_mod.pnr_workers(n) for n in (1, 2, 4)] == [1, 2, 2]
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert build_mod.pnr_workers(4) == 1
