"""sim.runner.simulate(): parameters in, results out, cached builds, failures raise."""

import logging
from pathlib import Path

import pytest
from amaranth import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from sim.runner import SimulationError, build, simulate

REPO = Path(__file__).resolve().parents[1]
BENCHES = REPO / "sim" / "benches"
BUILD = REPO / "build" / "sim"


class Counter(wiring.Component):
    """Toy counter. Ports: ``en`` (in, 1): count this cycle; ``count`` (out, 16): cycles counted."""

    en: In(1)
    count: Out(16)

    def elaborate(self, platform):
        m = Module()
        with m.If(self.en):
            m.d.sync += self.count.eq(self.count + 1)
        return m


def run(**params):
    return simulate(Counter(), name="toy_counter", test_module="counter_bench", test_dir=BENCHES,
                    build_dir=BUILD, parameters=params, timeout_s=120)


def test_values_round_trip_and_build_is_reused():
    assert run(cycles=5, echo={"a": [1, 2, 3]}) == {"count": 5, "echo": {"a": [1, 2, 3]}}
    # same Verilog: the cached model is reused, only the simulation runs again
    assert build(Counter(), name="toy_counter", build_dir=BUILD).compiled is False
    assert run(cycles=37, expect=37, echo="x") == {"count": 37, "echo": "x"}


def test_failing_assertion_raises():
    with pytest.raises(SimulationError, match="counter reads 9, expected 10"):
        run(cycles=9, expect=10)


def test_missing_module_raises():
    with pytest.raises(SimulationError, match="not found"):
        simulate(Counter(), name="toy_counter", test_module="no_such_bench", test_dir=BENCHES,
                 build_dir=BUILD, parameters={})


def test_timeout_raises():
    with pytest.raises(SimulationError, match="timed out"):
        simulate(Counter(), name="toy_counter", test_module="counter_bench", test_dir=BENCHES,
                 build_dir=BUILD, parameters={"hang": True}, timeout_s=3)


def test_only_the_top_module_is_visible():
    """Verilator compiles the model with the top module's signals public, not every signal (which cocotb's
    runner asks for and which made large models compile twice as long)."""
    run(cycles=2)
    # Verilator keeps its command line in the model's Vtop__verFiles.dat, on the line that starts with C
    dat = (build(Counter(), name="toy_counter", build_dir=BUILD).path / "Vtop__verFiles.dat").read_text()
    command = next(line for line in dat.splitlines() if line.startswith("C "))
    assert "--public-depth 1" in command and "--public-flat-rw" not in command


def test_jobs_sets_the_compile_jobs(tmp_path, caplog):
    """``jobs`` is make's -j for the Verilator model (the build's RTL check compiles with one job beside
    Yosys); by default cocotb asks for one per core."""
    with caplog.at_level(logging.INFO):
        build(Counter(), name="toy_counter", build_dir=tmp_path, jobs=1)
    makes = [r.getMessage() for r in caplog.records if "Running command make" in r.getMessage()]
    assert len(makes) == 1 and " -j 1 " in makes[0]
