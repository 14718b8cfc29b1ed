"""Benchmark: build the digits 64-16-10 MLP for the iCEBreaker (UP5K) and record what it costs and how
fast it is. Every number comes from this run: cycles from RTL simulation, resources and Fmax from nextpnr.

    python bench/run_bench.py            # writes bench/results.json and bench/results.md

Extra configurations can be given as "lanes@MHz", e.g. ``python bench/run_bench.py 8@30 16@27``.
"""

import json
import sys
import tempfile
import time
from pathlib import Path

from zakid_hw.build import build
from zakid_hw.compiler import compile_model
from zakid_hw.errors import ZakidError

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "digits" / "digits_mlp_int8.onnx"
#: elastic-ai.creator 0.67 on the same 64-16-10 shape (../shared/FACTS.md)
REFERENCE = {"tool": "elastic-ai.creator 0.67", "cycles": 1211, "fmax_mhz": 21, "latency_us": 57, "lc": 1210}


def run(lanes, mhz):
    c = compile_model(MODEL, lanes=lanes, clock_mhz=mhz)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as d:
        try:
            r = build(c, Path(d) / "digits", log=lambda *a: None)
        except ZakidError as e:
            return {"lanes": lanes, "clock_mhz": mhz, "error": str(e)}
    res = r["resources"]
    return {"lanes": r["mac_lanes"], "dsp_lanes": r["dsp_lanes"], "clock_mhz": r["clock_mhz"],
            "cycles_per_inference": r["cycles_per_inference"], "mac_bound_cycles": r["mac_bound_cycles"],
            "fmax_mhz": r["fmax_mhz"], "latency_us": r["latency_us"], "inferences_per_s": r["inferences_per_s"],
            "lc": res["lc"]["used"], "dsp": res["dsp"]["used"], "ebr": res["ebr"]["used"],
            "speedup_vs_reference": round(REFERENCE["latency_us"] / r["latency_us"], 2),
            "build_wall_s": round(time.monotonic() - t0, 1)}


def main(argv):
    configs = [tuple(float(v) if "." in v else int(v) for v in a.split("@")) for a in argv] or [(None, None)]
    rows = [run(l, f) for l, f in configs]
    out = {"model": "digits 64-16-10 MLP (examples/digits/digits_mlp_int8.onnx)", "device": "up5k",
           "board": "icebreaker", "reference": REFERENCE, "results": rows,
           "command": "python bench/run_bench.py " + " ".join(argv)}
    (ROOT / "bench" / "results.json").write_text(json.dumps(out, indent=2) + "\n")
    head = "| lanes (DSP) | clock MHz | Fmax MHz | cycles | MAC bound | latency µs | inf/s | LC | DSP | EBR | vs elastic-ai |"
    lines = [f"# Digits 64-16-10 MLP on iCE40 UP5K (iCEBreaker)", "", f"Command: `{out['command'].strip()}`", "",
             head, "|" + "---|" * 11]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['lanes']} | {r['clock_mhz']} | failed: {r['error']} |")
            continue
        lines.append(f"| {r['lanes']} ({r['dsp_lanes']}) | {r['clock_mhz']} | {r['fmax_mhz']} | "
                     f"{r['cycles_per_inference']} | {r['mac_bound_cycles']} | {r['latency_us']} | "
                     f"{r['inferences_per_s']:.0f} | {r['lc']} | {r['dsp']} | {r['ebr']} | "
                     f"{r['speedup_vs_reference']}x |")
    lines += ["", f"Reference: {REFERENCE['tool']}: {REFERENCE['cycles']} cycles at about {REFERENCE['fmax_mhz']} MHz "
              f"= {REFERENCE['latency_us']} µs, about {REFERENCE['lc']} LCs (from ../shared/FACTS.md).", ""]
    (ROOT / "bench" / "results.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main(sys.argv[1:])
