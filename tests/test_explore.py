"""Design-space exploration and the cost model: candidates, the choice, the Pareto front, the CLI, and the
resource predictions against real builds (bench/cost_calibration.json)."""

import subprocess
import sys
from pathlib import Path

import pytest

from zakid_hw import cost_model, explore
from zakid_hw.compiler import compile_model
from zakid_hw.errors import ZakidError

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits" / "digits_mlp_int8.onnx"


def test_latency_objective_takes_the_fewest_cycles_that_fit():
    c = compile_model(DIGITS)
    fitting = [d for d in c.designs if d.fits]
    assert c.config.lanes == 16 and c.config.dsp_pack == 2  # 8 DSP blocks, two int8 products each
    assert schedule_cycles(c) == c.chosen.cycles == min(d.cycles for d in fitting)
    # nothing that fits is faster, and nothing as fast is smaller
    assert c.chosen.latency_us == min(d.latency_us for d in fitting)
    assert all(d.resources["lc"] >= c.predicted["lc"] for d in fitting if d.latency_us == c.chosen.latency_us)


def schedule_cycles(c):
    from zakid_hw import cycle_model
    return cycle_model.cycles_per_run(c.image)


def test_area_objective_takes_the_fewest_logic_cells():
    c = compile_model(DIGITS, objective="area")
    assert c.config.lanes == 1
    assert c.predicted["lc"] == min(d.resources["lc"] for d in c.designs if d.fits)


def test_automatic_clock_follows_the_predicted_fill(monkeypatch):
    from zakid_hw import compiler
    c = compile_model(DIGITS)  # 16 lanes, predicted at about 63 % of the UP5K's logic cells
    assert c.predicted["lc"] <= compiler.SMALL_DESIGN_FILL * 5280
    assert c.config.clock_mhz == compiler.SMALL_DESIGN_CLOCK_MHZ["up5k"] and c.clock_auto
    assert c.config.uart_divisor == round(c.config.clock_mhz * 1e6 / c.baud)
    # every configuration considered runs at its own automatic clock, and its latency is taken there
    for d in c.designs:
        assert d.config.clock_mhz == compiler.automatic_clock_mhz(c.board, d.resources["lc"])
        assert d.latency_us == d.cycles / d.config.clock_mhz
    # 32 lanes do not stay under the line
    assert {d.config.clock_mhz for d in c.designs} == {compiler.DEFAULT_CLOCK_MHZ["up5k"], compiler.SMALL_DESIGN_CLOCK_MHZ["up5k"]}
    # a clock asked for is kept, and so is the default for a design above the line or on another device
    assert compile_model(DIGITS, clock_mhz=30).config.clock_mhz == 30
    assert compile_model(DIGITS, device="hx8k").config.clock_mhz == compiler.DEFAULT_CLOCK_MHZ["hx8k"]
    monkeypatch.setattr(compiler, "SMALL_DESIGN_FILL", 0.5)
    assert compile_model(DIGITS).config.clock_mhz == compiler.DEFAULT_CLOCK_MHZ["up5k"]


def test_pinned_options_leave_one_candidate():
    c = compile_model(DIGITS, lanes=4, dsp_pack=1, weights="ebr", requantizer="affine")
    assert len(c.designs) == 1
    assert (c.config.lanes, c.config.dsp_lanes, c.config.dsp_pack, c.image.requantizer) == (4, 4, 1, "affine")


def test_pareto_front_is_not_dominated():
    c = compile_model(DIGITS)
    front = explore.pareto(c.designs)
    assert front and all(d.fits for d in front)
    for d in front:
        assert not any(o.fits and o.cycles <= d.cycles and o.resources["lc"] < d.resources["lc"]
                       for o in c.designs)
    cycles = [d.cycles for d in front]
    lcs = [d.resources["lc"] for d in front]
    assert cycles == sorted(cycles) and lcs == sorted(lcs, reverse=True)


def test_designs_that_do_not_fit_say_why():
    c = compile_model(DIGITS)
    wide = [d for d in c.designs if d.candidate.lanes == 16 and d.candidate.weights == "spram"]
    assert wide and all(not d.fits and "SPRAM blocks" in d.problems[0] for d in wide)


@pytest.mark.parametrize("kw,msg", [
    (dict(dsp_pack=3), "--dsp-pack must be 1 or 2"),
    (dict(dsp_pack=2, device="hx8k"), "has no DSP blocks"),
    (dict(objective="speed"), "--objective must be latency or area"),
    (dict(pixels=3), "--pixels must be 1 or 2"),
    (dict(pixels=2, device="hx8k"), "--pixels 2 needs a device with DSP blocks"),
    (dict(pixels=2), "no layer of this model can run two output pixels"),  # an MLP has no pointwise conv
])
def test_bad_exploration_options(kw, msg):
    with pytest.raises(ZakidError, match=msg):
        compile_model(DIGITS, **kw)


def test_explore_command_prints_the_front_and_writes_a_plot(tmp_path):
    r = subprocess.run([sys.executable, "-m", "zakid_hw.cli", "explore", str(DIGITS), "--plot", "front.svg"],
                       cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "| *P | 16 | 1 | 16 | 2 | ebr | tables |" in r.stdout
    # a model of dense layers: what --batch 8 would take with the chosen configuration
    assert "with --batch 8, 670 cycles per run of 8, 83.75 per inference against 124 (16 lanes" in r.stdout
    svg = (tmp_path / "front.svg").read_text()
    assert svg.startswith("<svg") and "polyline" in svg and "chosen: 16 lanes" in svg


def test_explore_command_on_a_model_that_fits_nowhere(tmp_path):
    r = subprocess.run([sys.executable, "-m", "zakid_hw.cli", "explore", str(DIGITS), "--device", "hx1k",
                        "--lanes", "32", "--all"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "no configuration fits" in r.stdout and "logic cells" in r.stdout


sys.path.insert(0, str(ROOT / "bench"))
from calibrate_cost import compile_recorded, recorded  # noqa: E402

REAL = recorded()


@pytest.mark.parametrize("row", REAL, ids=[f"{r['key']}-{r['options'].get('device', 'up5k')}-{r['options']['lanes']}-"
                                            f"{r['options']['dsp_pack']}-batch{r['options'].get('batch', 1)}"
                                            for r in REAL])
def test_resource_model_within_15_percent_of_real_builds(row):
    """The cost model's predictions for each recorded real build's configuration, compiled again, against
    nextpnr's counts (issue 4: logic cells and block RAMs within 15%; DSP and SPRAM blocks exactly)."""
    p, m = compile_recorded(row).predicted, row["measured"]
    assert abs(p["lc"] - m["lc"]) <= 0.15 * m["lc"], (p, m)
    assert abs(p["ebr"] - m["ebr"]) <= 0.15 * m["ebr"], (p, m)
    assert (p["dsp"], p["spram"]) == (m["dsp"], m["spram"])


def test_real_builds_cover_the_design_space():
    opts = [r["options"] for r in REAL]
    assert len(REAL) >= 5
    assert {o["dsp_pack"] for o in opts} == {1, 2}
    assert {o["weights"] for o in opts} == {"ebr", "spram"} and {o["requantizer"] for o in opts} == {"tables", "affine"}
    assert any(r["measured"]["dsp"] == 0 for r in REAL)  # logic-cell lanes only


def test_block_ram_rule_follows_yosys():
    """Yosys keeps a memory in logic when that is cheaper: 64 per block RAM against 1/16 per bit of a
    read-only memory and 1 per bit of a written one."""
    assert cost_model.ebr_blocks(64, 40) == 0                 # 2560 bits / 16 = 160 < 3 blocks (192)
    assert cost_model.ebr_blocks(128, 40) == 3                # 320 > 192
    assert cost_model.ebr_blocks(8, 128, read_only=False) == 8  # written: 1024 > 8 blocks (512)
    assert cost_model.ebr_blocks(2, 128, read_only=False) == 0  # 256 < 512
    assert cost_model.used_width([0b0101, 0b0111, 0b0001], 4) == 2  # bits 0 and 3 never change


def test_seed_list():
    from zakid_hw.build import seed_list
    assert seed_list(None, 1) == [None] and seed_list(7, 1) == [7]
    assert seed_list(None, 3) == [1, 2, 3] and seed_list(10, 2) == [10, 11]


def test_pointwise_layers_run_two_pixels_per_weight_word():
    """The DS-CNN's weights stream from SPRAM (8 int8 weights a cycle); its pointwise layers take each
    weight word for two output pixels, so they run at twice the products per cycle, and its first layer
    (one input channel, stride 2, 25x5 outputs) for a pixel and the one above it, in 48 steps for two
    instead of 80 (two more kernel rows; the first row of pairs has one pixel)."""
    import numpy as np
    from zakid_hw import cycle_model, schedule
    models = ROOT / "bench" / "models"
    cal = np.load(models / "kws_calib.npy")
    two = compile_model(models / "kws_dscnn_c32.onnx", calibration=cal)
    one = compile_model(models / "kws_dscnn_c32.onnx", calibration=cal, pixels=1)
    assert (two.config.pixels, two.config.lanes, two.config.dsp_blocks, two.config.weights_in_spram) == (2, 8, 8, True)
    assert [d.pair for d in two.image.layers] == [int(l.kind == "conv" and l.pixels > 1 and (
        l.geometry["kh"] == 1 or l.geometry["c_in"] == 1)) for l in two.program.layers]
    assert two.image.layers[0].pair_shift == schedule.COL and two.image.layers[0].k == (10 + 2) * 4
    c2, c1 = cycle_model.layer_cycles(two.image), cycle_model.layer_cycles(one.image)
    s2, s1 = cycle_model.layer_steps(two.image), cycle_model.layer_steps(one.image)
    for d, a, b, sa, sb in zip(two.image.layers, c2, c1, s2, s1):
        # (the one-pixel design's pointwise layers start while the layer before drains, so that one's cycles
        # differ by the wait; its steps do not)
        if d.pair_shift == schedule.COL:  # 13 rows of pairs of 48 steps for 25 rows of 40
            assert sa == 13 * 48 * 5 * 4 and sb == 25 * 40 * 5 * 4
        else:
            assert (a < 0.52 * b) if d.pair else (sa == sb)
    roof = cost_model.layer_rooflines(two.config, two.image, two.memories, two.program.layers)
    assert all(r == -(-l.macs // 16) for r, l, d in zip(roof, two.program.layers, two.image.layers) if d.pair)


@pytest.mark.parametrize("model,hint", [
    ("ad_autoencoder_small", "with --batch 8, 45990 cycles per run of 8, 5748.75 per inference against 11442 "
                             "(8 lanes x 2 pixels"),  # each weight word from SPRAM serves two inferences
    ("kws_dscnn_c32", None),  # convolutions: no batches
])
def test_explore_says_what_batches_gain(model, hint, tmp_path):
    models = ROOT / "bench" / "models"
    cal = models / ("ad_calib.npy" if model.startswith("ad") else "kws_calib.npy")
    r = subprocess.run([sys.executable, "-m", "zakid_hw.cli", "explore", str(models / f"{model}.onnx"),
                        "--calibration", str(cal), "--plot", "front.svg"], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    if hint is None:
        assert "batches" not in r.stdout
    else:
        assert hint in r.stdout
