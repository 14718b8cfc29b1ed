"""Real builds for the resource model: each configuration below is synthesised, placed and routed for the
UP5K, and its measured resources are written with the model's inputs to ``bench/cost_calibration.json``.

    python bench/calibrate_cost.py            # all builds (their recorded build_seconds: 11 minutes on 2 cores)
    python bench/calibrate_cost.py mnist-8    # only the builds of these models (configs()' names)
    python bench/calibrate_cost.py --fit      # refit zakid_hw.cost_model.LC from the recorded builds
                                              # (these and bench/models_results.json's)

``tests/test_explore.py`` checks the model's predictions against these recorded builds (within 15%).
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from boards.top import BoardTop  # noqa: E402
from run_models import mnist_inputs  # noqa: E402
from rtl_gen.system import AcceleratorSystem  # noqa: E402
from zakid_hw import cost_model, datasets  # noqa: E402
from zakid_hw.compiler import compile_model  # noqa: E402
from zakid_hw.synth import build_bitstream  # noqa: E402

MODELS = ROOT / "bench" / "models"
OUT = ROOT / "bench" / "cost_calibration.json"
TFC = ROOT.parent / "shared" / "models" / "tfc" / "TFC_2W2A.onnx"


def configs():
    """The builds this script makes: (model_files() key, compile options)."""
    return [
        ("digits", dict(lanes=16, dsp_pack=2, requantizer="tables", weights="ebr")),
        ("digits", dict(lanes=8, dsp_pack=1, requantizer="tables", weights="ebr")),
        ("digits", dict(lanes=16, dsp_pack=1, requantizer="tables", weights="ebr")),
        ("digits", dict(lanes=4, dsp_pack=1, requantizer="affine", weights="ebr")),
        ("digits", dict(lanes=8, dsp_pack=1, requantizer="tables", weights="spram")),
        ("tfc", dict(lanes=32, requantizer="affine")),
        ("tfc", dict(lanes=32, requantizer="tables")),
        ("tfc", dict(lanes=16)),
        ("tfc", dict(lanes=8)),
        ("kws_c64", dict(lanes=8)),
        ("kws_c32", dict(lanes=8)),
        ("ad_small", dict(lanes=8)),
        ("mnist-8", dict(lanes=8, pixels=2, requantizer="affine", weights="spram")),
        ("mnist-8", dict(lanes=8, pixels=2, requantizer="tables", weights="spram")),
    ]


#: model names in the recorded builds -> (ONNX file, calibration file)
def model_files() -> dict:
    digits = ROOT / "examples" / "digits" / "digits_mlp_int8.onnx"
    kws_cal, ad_cal = MODELS / "kws_calib.npy", MODELS / "ad_calib.npy"
    return {"digits": (digits, None), "tfc": (TFC, None), "mnist-8": (None, "mnist8"),
            "kws_c64": (MODELS / "kws_dscnn.onnx", kws_cal), "kws_c32": (MODELS / "kws_dscnn_c32.onnx", kws_cal),
            "ad_small": (MODELS / "ad_autoencoder_small.onnx", ad_cal)}


#: bench/models_results.json's model titles -> model_files() keys
BENCH_NAMES = {"digits": "digits", "mnist-8": "mnist-8", "TFC-w2a2": "tfc", "DS-CNN keyword spotter C=32": "kws_c32",
               "DS-CNN keyword spotter C=64": "kws_c64", "dense autoencoder": "ad_small"}


def recorded() -> list[dict]:
    """Every recorded real build with its measured resources: these (cost_calibration.json) and the
    benchmark's (models_results.json), each with ``key`` (a model_files() key) and the compile options
    that rebuild its configuration."""
    rows = []
    for r in json.loads(OUT.read_text()):
        pinned = dict(dsp_pack=r["dsp_pack"], requantizer=r["requantizer"], pixels=r.get("pixels", 1),
                      weights="spram" if r["weights_in_spram"] else "ebr")
        rows.append({"key": r["model"], "options": {**pinned, **r["options"]}, "measured": r["measured"]})
    bench = json.loads((ROOT / "bench" / "models_results.json").read_text())
    for r in bench["results"] + bench.get("hx8k", []):
        if "measured" not in r:
            continue
        key = next(v for k, v in BENCH_NAMES.items() if r["model"].startswith(k))
        rows.append({"key": key, "measured": r["measured"],
                     "options": dict(device=r["device"], lanes=r["lanes"], dsp_pack=r["dsp_pack"],
                                     pixels=r.get("pixels", 1), weights=r["weights"], requantizer=r["requantizer"],
                                     batch=r.get("batch", 1))})
    return rows


def compile_recorded(row):
    """The recorded build's configuration, compiled with the current cost model."""
    path, cal = model_files()[row["key"]]
    if cal == "mnist8":  # the benchmark's 100 calibration images
        path, cal = datasets.mnist8_path(), mnist_inputs(np.arange(100))[0]
    elif cal is not None:
        cal = np.load(cal)
    return compile_model(path, calibration=cal, check_fit=False, **row["options"])


def features(c) -> dict:
    return {"lanes": c.config.lanes, "dsp_lanes": c.config.dsp_lanes, "dsp_pack": c.config.dsp_pack, "pixels": c.config.pixels,
            "weights_in_spram": c.config.weights_in_spram, "requantizer": c.image.requantizer,
            "acc_width": c.image.acc_width, "w_width": c.image.w_width,
            "terms": cost_model.lc_terms(c.image, c.config, c.memories), "predicted": c.predicted}


def run(only=()):
    rows = json.loads(OUT.read_text()) if OUT.exists() else []
    unknown = set(only) - {name for name, _ in configs()}
    if unknown:
        sys.exit(f"no builds of {', '.join(sorted(unknown))}; the models are {', '.join(model_files())}")
    for name, kw in configs():
        if only and name not in only:
            continue
        path = model_files()[name][0]
        if path is not None and not Path(path).exists():
            print(f"skip {name}: {path} missing")
            continue
        c = compile_recorded({"key": name, "options": kw})
        t = time.time()
        with tempfile.TemporaryDirectory() as d:
            top = BoardTop(c.board, c.config.clock_mhz, lambda: AcceleratorSystem(c.config, c.image, c.signature))
            r = build_bitstream(top, c.board, Path(d), f_mhz=c.config.clock_mhz, name="cal")
        row = {"model": name, "options": kw, **features(c),
               "measured": {k: r.resources[k].used for k in ("lc", "dsp", "ebr", "spram")},
               "fmax_mhz": round(r.fmax_mhz, 2), "build_seconds": round(time.time() - t, 1)}
        print(json.dumps(row))
        rows = [x for x in rows if (x["model"], x["options"]) != (name, kw)] + [row]
        OUT.write_text(json.dumps(rows, indent=1) + "\n")


#: coefficients the builds cannot separate from the others (too few builds vary them): set by hand
FIXED = {"lane": 20.0, "acc_bit": 2.675, "col_delay_bit": 1.0, "col": 43.0}


def fit():
    """Least-squares logic-cell coefficients from the recorded builds (each configuration compiled again,
    so the terms are the current model's), relative errors weighted equally; the FIXED ones are held."""
    rows = recorded()
    terms = [cost_model.lc_terms((c := compile_recorded(r)).image, c.config, c.memories) for r in rows]
    free = [k for k in cost_model.LC if k not in FIXED]
    measured = np.array([r["measured"]["lc"] for r in rows], float)
    a = np.array([[t[k] for k in free] for t in terms], float) / measured[:, None]
    rest = np.array([sum(v * t[k] for k, v in FIXED.items()) for t in terms], float)
    coef, *_ = np.linalg.lstsq(a, (measured - rest) / measured, rcond=None)
    lc = {**FIXED, **dict(zip(free, coef))}
    for k in cost_model.LC:
        print(f"    {k!r}: {lc[k]:.4g},")
    for r, t in zip(rows, terms):
        pred = sum(lc[k] * t[k] for k in cost_model.LC)
        print(f"{r['key']:10} {r['options']} measured {r['measured']['lc']} fitted "
              f"{pred:.0f} ({pred / r['measured']['lc'] - 1:+.1%})")


if __name__ == "__main__":
    fit() if "--fit" in sys.argv else run(sys.argv[1:])
