"""``build --seeds N``: the place-and-route runs go side by side, one per core, and the fastest is kept; the
automatic seeds keep the first that meets the clock and stop the runs after it.

Synthesis and nextpnr are replaced by a stand-in that records the seeds and workers asked for, so these tests take
well under a second and show the scheduling, not the tools (the last tests run a stand-in tool to stop)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

import zakid_hw.build as build_mod
from zakid_hw import compiler, cycle_model
from zakid_hw.compiler import compile_model
from zakid_hw import synth
from zakid_hw.synth import RESOURCE_CELLS, ResourceUse, SynthResult, first_met, run_seeds, seed_dir

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "digits" / "digits_mlp_int8.onnx"


class FakeBuilds:
    """Stands in for :func:`zakid_hw.synth.build_bitstreams`: seed s at clock f achieves ``fmax(s, f)`` MHz.
    Records each call's seeds and clock (``calls``) and its seeds and workers (``batches``); with
    ``stop_when_met`` the seeds after the first that meets the clock give None (stopped), as there."""

    def __init__(self, fmax):
        self.fmax, self.calls, self.batches, self.stop_flags, self.gates = fmax, [], [], [], []

    def __call__(self, top, board, out, *, f_mhz, seeds=(None,), workers=1, name="top", stop_when_met=False,
                 later_after=None, **kw):
        for obj in (top, getattr(top, "clock", None)):  # never elaborated: no "created but never used"
            if obj is not None:
                obj._MustUse__used = True
        self.calls += [(s, f_mhz) for s in seeds]
        self.batches.append((list(seeds), workers))
        self.stop_flags.append(stop_when_met)
        self.gates.append(later_after)
        results = []
        for s in seeds:
            if stop_when_met and first_met(results) is not None:
                results.append(None)
                continue
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
    monkeypatch.setattr(build_mod, "_rtl_check", lambda c, log: [cycle_model.cycles_per_run(c.image)] * 2)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    out = tmp_path / "out"
    return build_mod.build(c, out, log=lambda *a: None, **kw), out


def test_seeds_run_side_by_side_and_the_fastest_is_kept(tmp_path, monkeypatch):
    fake = FakeBuilds(lambda s, f: f + {1: 0.5, 2: 3.5, 3: 2.0}[s])  # every seed meets the clock
    report, out = _build(tmp_path, monkeypatch, fake, seeds=3)
    assert fake.batches == [([1, 2, 3], 2)]        # one synthesis; two cores: two runs at once, never three
    assert fake.stop_flags == [False]              # seeds asked for: every run ends
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


def test_automatic_seeds_keep_the_first_that_meets_the_clock(tmp_path, monkeypatch):
    """Both automatic seeds meet the clock: seed 1 is kept although seed 2 is faster, and seed 2's run is
    stopped; the report says so."""
    fake = FakeBuilds(lambda s, f: f + s)
    report, out = _build(tmp_path, monkeypatch, fake)
    assert fake.stop_flags == [True]
    assert fake.gates[0].is_set()  # the later seeds waited for the RTL check, which is done
    assert (out / "digits_mlp_int8.bin").read_bytes() == b"seed 1" and report["fmax_mhz"] == report["clock_mhz"] + 1
    assert [(r["seed"], r["stopped"]) for r in report["place_and_route_runs"]] == [(1, False), (2, True)]


def test_one_run_without_a_seed_at_a_clock_asked_for(tmp_path, monkeypatch):
    fake = FakeBuilds(lambda s, f: f + 1)
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
    auto = compiler.SMALL_DESIGN_CLOCK_MHZ["up5k"]
    assert sorted(s for s, _ in first) == [1, 2] and {f for _, f in first} == {auto}  # the automatic clock
    assert sorted(s for s, _ in rebuild) == [1, 2] and fake.batches[1] == ([1, 2], 2)
    assert {f for _, f in rebuild} == {report["clock_mhz"]} and 38.0 * 0.97 - 0.75 < report["clock_mhz"] <= 38.0 * 0.97
    assert report["timing_met"] and (out / "digits_mlp_int8.bin").read_bytes() == b"seed 2"
    assert [r["seed"] for r in report["place_and_route_runs"]] == [1, 2, 1, 2]


def test_workers_follow_the_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert [build_mod.pnr_workers(n) for n in (1, 2, 4)] == [1, 2, 2]
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert build_mod.pnr_workers(4) == 1


def _met(i, ok=True):
    return SynthResult(name="top", board="b", device="d", out_dir=Path("."), bitstream=Path("x"), verilog=Path("v"),
                       report=Path("r"), logs={}, resources={}, f_target_mhz=30.0,
                       fmax_mhz=31.0 if ok else 29.0, sync_clock="clk", seed=i)


def test_a_later_seed_that_meets_the_clock_first_stops_only_the_seeds_after_it():
    """Seed 1 (index 1) ends first and meets the clock: seed 2's run is stopped, seed 0's goes on to its end
    (it was still running when seed 1 ended), so the first that meets the clock is the same whatever the order."""
    started, ended = threading.Barrier(3, timeout=10), threading.Event()

    def run(i, stop):
        started.wait()  # all three run at once
        if i == 1:
            return _met(1)
        if i == 2:
            if stop.wait(10):
                raise synth._Stopped
            return _met(2)
        assert ended.wait(10) and not stop.is_set()  # index 0: ends after seed 2 was stopped
        return _met(0, ok=False)

    def run_and_mark(i, stop):
        try:
            return run(i, stop)
        finally:
            if i == 2:
                ended.set()

    results = run_seeds(run_and_mark, 3, 3, stop_when_met=True)
    assert results[0].seed == 0 and results[2] is None and first_met(results).seed == 1


def test_seeds_after_one_that_meets_the_clock_never_start():
    calls = []

    def run(i, stop):
        calls.append(i)
        return _met(i)

    assert run_seeds(run, 3, 1, stop_when_met=True)[1:] == [None, None] and calls == [0]
    calls.clear()
    assert [r.seed for r in run_seeds(run, 3, 1, stop_when_met=False)] == [0, 1, 2] and calls == [0, 1, 2]


def test_a_stopped_run_kills_its_tool(tmp_path, monkeypatch):
    """A running place and route is killed when it is stopped (a stand-in nextpnr that would sleep a minute)."""
    tool = tmp_path / "fake-nextpnr"
    tool.write_text("#!/bin/sh\necho $$ > pid\nexec sleep 60\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("NEXTPNR_ICE40", str(tool))
    stop, error = threading.Event(), []

    def run():
        try:
            synth._run_tool(["nextpnr-ice40"], tmp_path, "top", None, None, {}, stop=stop)
        except BaseException as exc:  # noqa: BLE001 - handed to the test's thread
            error.append(exc)

    t = threading.Thread(target=run)
    t.start()
    while not (tmp_path / "pid").exists() or not (tmp_path / "pid").read_text().strip():
        assert t.is_alive()
    stop.set()
    t.join(30)
    assert not t.is_alive() and len(error) == 1 and isinstance(error[0], synth._Stopped)
    with pytest.raises(ProcessLookupError):
        os.kill(int((tmp_path / "pid").read_text()), 0)


def test_later_seeds_wait_for_the_gate():
    """With ``later_after``, only the first seed runs until the event is set (the build sets it when its RTL
    check is done, so the first seed has a core to itself)."""
    gate, second = threading.Event(), threading.Event()

    def run(i, stop):
        if i == 0:
            assert not second.wait(1)  # the second seed does not start before the gate opens
            gate.set()
        else:
            second.set()
        return _met(i, ok=False)

    assert [r.seed for r in run_seeds(run, 2, 2, stop_when_met=True, later_after=gate)] == [0, 1]
