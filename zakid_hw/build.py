"""``build``: verify the generated RTL against the golden model, synthesize, place, route and pack, and
write the output folder atomically (everything goes to a temporary sibling folder that is renamed into
place only when every step has succeeded)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from boards.top import BoardTop
from rtl_gen.accelerator import weight_flash_bytes
from rtl_gen.system import AcceleratorSystem

from . import cost_model, cycle_model
from .compiler import Compiled
from .errors import ZakidError
from .flash_image import WEIGHTS_OFFSET, flash_image
from .simulate import simulate_codes, verification_rows
from .synth import build_bitstreams, first_met


def build(compiled: Compiled, out_dir, *, seed=None, seeds=1, calibration_path=None, log=print) -> dict:
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        report = _build_into(compiled, tmp, seed=seed, seeds=seeds, calibration_path=calibration_path, log=log)
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            out_dir.rename(old / "x")
            tmp.rename(out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out_dir)
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def seed_list(seed, seeds: int) -> list:
    """nextpnr seeds to try: ``seeds`` of them from ``seed`` (or 1) on; [None] (nextpnr's default) for one
    run without a seed."""
    if seeds <= 1:
        return [seed]
    first = 1 if seed is None else seed
    return list(range(first, first + seeds))


#: seeds the first place and route at the automatic clock tries (when no seed was asked for), and a rebuild
#: at a lower clock, when the cores allow (see pnr_workers): one run's Fmax varies by several MHz with the
#: seed (the digits MLP at 45 MHz: 44.6 MHz with nextpnr's default, 46.4, 44.2, 47.1, 47.1 with seeds 1-4).
#: The first seed that meets the clock is kept, and runs of later seeds stop when it does
#: (synth.build_bitstreams' stop_when_met): the same seed whichever run ends first, so builds are reproducible
AUTO_RUNS = 2


def pnr_workers(runs: int) -> int:
    """Place-and-route runs to have going at once: one per core, at most ``runs``."""
    return max(1, min(runs, os.cpu_count() or 1))


def _rtl_check(c: Compiled, log) -> list[int]:
    """Simulate the generated RTL on :func:`verification_rows` and compare it with the golden model and the
    cycle model; returns the simulated cycles per row. The Verilator model compiles with one job: Yosys runs
    beside it (see _build_into)."""
    rows = verification_rows(c)
    got, cycles = simulate_codes(c, rows, jobs=1)
    want = np.stack([c.program.accel_golden(r) for r in rows])
    mismatches = int((got != want).sum())
    if mismatches:
        raise ZakidError(f"internal error: the generated RTL differs from the golden model on {mismatches} "
                         f"outputs of {want.size}; please report this with the model")
    predicted = cycle_model.cycles_per_run(c.image)
    if len(set(cycles)) != 1 or cycles[0] != predicted:
        raise ZakidError(f"internal error: simulated cycles {sorted(set(cycles))} differ from the cycle model "
                         f"({predicted}); please report this with the model")
    n = c.program.batch
    what = "inferences" if n == 1 else f"runs of {n} inferences"
    log(f"      {len(rows)} {what} bit-exact, {cycles[0]} cycles each")
    return cycles


def _build_into(compiled: Compiled, out: Path, *, seed, seeds, calibration_path, log) -> dict:
    c = compiled
    name = Path(c.model_path).stem
    tried = []  # (seed, Fmax) of every place-and-route run

    first_that_meets = seeds <= 1

    def place_and_route(c, runs, later_after=None):
        # one synthesis, then nextpnr once per seed: side by side, as many at a time as there are cores.
        # Seeds asked for (--seeds): the highest Fmax is kept. Automatic ones: the first that meets the clock.
        top = BoardTop(c.board, c.config.clock_mhz, lambda: AcceleratorSystem(c.config, c.image, c.signature))
        results = build_bitstreams(top, c.board, out / "hw", f_mhz=c.config.clock_mhz, seeds=runs,
                                   workers=pnr_workers(len(runs)), name=name, stop_when_met=first_that_meets,
                                   later_after=later_after)
        for s, r in zip(runs, results):
            tried.append({"seed": s, "clock_mhz": c.config.clock_mhz,
                          "fmax_mhz": round(r.fmax_mhz, 2) if r is not None and r.fmax_mhz else None,
                          "stopped": r is None})
            if len(runs) > 1:
                log(f"      seed {s}: " + ("stopped (an earlier seed met the clock)" if r is None
                                           else f"Fmax {r.fmax_mhz:.2f} MHz"))
        done = [r for r in results if r is not None]
        best = max(done, key=lambda r: r.fmax_mhz or 0)  # the first of equals
        return (first_met(done) or best) if first_that_meets else best

    # The RTL check (Verilator) and the first synthesis, place and route (Yosys, nextpnr) are separate
    # programs: they run side by side, one core each (the check compiles with one job), and the first seed's
    # place and route follows Yosys on its core; the other seeds start once the check is done. (Measured on
    # the C=32 DS-CNN: two compile jobs beside Yosys cost it 9 s; the check beside two nextpnr runs slows
    # them.) An RTL check that fails still waits for the other.
    log("[1/3] RTL simulation: checking the generated design against the golden model")
    log(f"[2/3] Synthesis, place and route for {c.board.name} ({c.board.device.part}) at {c.config.clock_mhz:g} MHz"
        " (alongside the RTL check)")
    with ThreadPoolExecutor(max_workers=1) as pool:
        auto = seed is None and seeds <= 1 and c.clock_auto
        first = pnr_workers(AUTO_RUNS) if auto else seeds
        checked = threading.Event()
        first_run = pool.submit(place_and_route, c, seed_list(seed, first), checked)
        try:
            cycles = _rtl_check(c, log)
        finally:
            checked.set()
        synth = first_run.result()
    for _ in range(3):
        if synth.timing_met or not c.clock_auto or not synth.fmax_mhz:
            break
        # no clock was asked for: run at a PLL frequency a little below what place and route achieved (not
        # above 97 % of it), with at least as many seeds side by side as there are cores (no longer than one run)
        c = c.with_clock(synth.fmax_mhz * 0.97, at_most=True)
        log(f"      Fmax {synth.fmax_mhz:.2f} MHz is below the clock: rebuilding at {c.config.clock_mhz:g} MHz")
        synth = place_and_route(c, seed_list(seed, max(seeds, pnr_workers(AUTO_RUNS))))
    if not synth.timing_met:
        fmax = "unknown" if synth.fmax_mhz is None else f"{synth.fmax_mhz:.2f} MHz"
        raise ZakidError(f"The design does not meet timing on {c.board.name}: the sync clock runs at "
                         f"{c.config.clock_mhz:g} MHz but nextpnr achieved Fmax {fmax}. Ask for a lower clock "
                         "frequency (--clock), or try another --seed.")
    shutil.copy(synth.bitstream, out / f"{name}.bin")
    if c.config.weights_in_spram:
        # SPRAM is not initialised by the bitstream: the design reads the weights from flash at start-up
        weights = weight_flash_bytes(c.image)
        (out / f"{name}.weights.bin").write_bytes(weights)
        (out / f"{name}.flash.bin").write_bytes(flash_image(Path(synth.bitstream).read_bytes(), weights))
    shutil.copy(synth.verilog, out / f"{name}.v")
    shutil.copy(c.model_path, out / "model.onnx")
    if calibration_path is not None:
        shutil.copy(calibration_path, out / "calibration.npy")

    log("[3/3] Report")
    report = make_report(c, cycles[0], synth, len(cycles))
    report["place_and_route_runs"] = tried
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.txt").write_text(text_report(report))
    return report


def make_report(c: Compiled, cycles: int, synth, verified_rows: int) -> dict:
    """The build's report; ``cycles`` per run (of ``batch`` inferences; cycles, steps and rooflines are per run,
    ``cycles_per_inference`` and ``inferences_per_s`` per inference)."""
    clock = c.config.clock_mhz
    batch = c.program.batch
    latency_us = cycles / clock
    bytes_per_run = 1 + c.program.in_len + 1 + c.program.out_len + 4
    baud = clock * 1e6 / c.config.uart_divisor
    uart_s = bytes_per_run * 10 / baud
    res = {k: {"used": v.used, "total": v.total} for k, v in synth.resources.items()
           if k in ("lc", "dsp", "ebr", "spram", "io", "pll")}
    layers = []
    roofs = cost_model.layer_rooflines(c.config, c.image, c.memories, c.program.layers)
    roofline = sum(roofs)
    steps = cycle_model.layer_steps(c.image)
    for l, d, cyc, roof, st in zip(c.program.layers, c.image.layers, cycle_model.layer_cycles(c.image), roofs, steps):
        g = l.geometry
        layers.append({"name": l.name, "op": l.kind, "input": [g["c_in"], g["h"], g["w"]],
                       "output": [l.n, g["oh"], g["ow"]], "kernel": [g["kh"], g["kw"]], "steps_per_output": l.k,
                       "macs": l.macs, "mac_bound_cycles": cost_model.layer_roofline(l.macs, c.image.lanes * d.step_pixels),
                       "two_pixels": bool(d.pair),
                       "lane_groups": d.groups * d.oh * d.ow,
                       "cycles": cyc, "mac_steps": st, "wait_cycles": cyc - st, "overlaps_previous": bool(d.chain_gap),
                       "roofline_cycles": roof, "efficiency": cost_model.efficiency(roof, cyc),
                       "input_type": l.in_dtype, "output_type": l.out_dtype,
                       "requantizer_tables": int(l.thresholds.shape[0])})
    return {
        "model": Path(c.model_path).name,
        "source_format": c.graph.meta.get("source_format"),
        "quantization": c.graph.meta.get("quantization"),
        "warnings": c.graph.meta.get("warnings", []),
        "device": c.board.device.name,
        "board": c.board.name,
        "macs": c.program.macs,
        "mac_lanes": c.config.lanes,
        "dsp_lanes": c.config.dsp_lanes,
        "dsp_pack": c.config.dsp_pack,
        "pixels": c.config.pixels,
        "exploration": {"objective": c.objective, "configurations": len(c.designs),
                        "fitting": sum(d.fits for d in c.designs), "predicted_resources": c.predicted},
        "roofline_cycles": roofline,
        "efficiency": cost_model.efficiency(roofline, cycles),
        "device_limit_cycles": cost_model.device_limit(c.board.device, c.program.macs, c.image.w_width),
        "batch": batch,
        "cycles_per_run": cycles,
        "cycles_per_inference": cycle_model.per_inference(cycles, batch),
        "mac_steps": sum(steps),
        "mac_bound_cycles": sum(l["mac_bound_cycles"] for l in layers),
        "clock_mhz": round(clock, 3),
        "fmax_mhz": round(synth.fmax_mhz, 2) if synth.fmax_mhz else None,
        "timing_met": synth.timing_met,
        "latency_us": round(latency_us, 3),
        "inferences_per_s": round(batch * 1e6 / latency_us, 1),
        "host_link": {"interface": "uart", "baud": round(baud), "bytes_per_run": bytes_per_run,
                      "transfer_ms": round(uart_s * 1e3, 3),
                      "inferences_per_s_over_uart": round(batch / (uart_s + latency_us * 1e-6), 1)},
        "resources": res,
        "memories": c.memories,
        "weights_memory": "spram" if c.config.weights_in_spram else "ebr",
        "requantizer": c.image.requantizer,
        "flash_image": ({"file": f"{Path(c.model_path).stem}.flash.bin", "weights_file": f"{Path(c.model_path).stem}.weights.bin",
                         "weights_offset": WEIGHTS_OFFSET, "weights_bytes": len(weight_flash_bytes(c.image))}
                        if c.config.weights_in_spram else None),
        "activation_bytes": c.image.act_bytes,
        "accumulator_bits": c.image.acc_width,
        "weight_bits": c.image.w_width,
        "layers": layers,
        "host_steps": {"before": [n.op for n in c.program.host_pre], "after": [n.op for n in c.program.host_post]},
        "signature": f"{c.signature:08x}",
        "verification": {"rtl_rows_checked": verified_rows, "rtl_inferences_checked": verified_rows * batch,
                         "mismatches": 0},
        "build_seconds": round(synth.build_seconds, 1),
        "tool_seconds": {k: round(v, 1) for k, v in synth.tool_seconds.items()},
    }


def text_report(r: dict) -> str:
    res = r["resources"]
    per_run = "" if r["batch"] == 1 else f" per run of {r['batch']}"
    lines = [
        f"zakid-hw build of {r['model']} for {r['board']} ({r['device']})",
        f"  model:       {r['macs']} MACs{per_run} in {len(r['layers'])} layers ({r['source_format']})",
        f"  accelerator: {r['mac_lanes']} MAC lanes ({r['dsp_lanes']} in DSPs"
        f"{', two per SB_MAC16' if r.get('dsp_pack') == 2 else ''})"
        f"{', x 2 output pixels in paired convolutions' if r.get('pixels') == 2 else ''}, clock {r['clock_mhz']} MHz "
        f"(Fmax {r['fmax_mhz']} MHz{'' if r['timing_met'] else ', TIMING NOT MET'})",
        f"  speed:       {r['cycles_per_run']} cycles = {r['latency_us']} us per "
        + ("inference, " if r["batch"] == 1 else
           f"run of {r['batch']} inferences ({r['cycles_per_inference']:g} cycles each), ")
        + f"{r['inferences_per_s']:.0f} inferences/s (roofline {r['roofline_cycles']} cycles, "
        f"{r['efficiency']:.1%} of it; device limit {r['device_limit_cycles']})",
        f"  cycles:      {r['mac_steps']} in MAC steps, {r['cycles_per_run'] - r['mac_steps']} waiting (the "
        f"start; a layer's turn at the drain; outputs the next layer reads; the last outputs)",
        f"  chosen:      {'fastest' if r['exploration']['objective'] == 'latency' else 'smallest'} of "
        f"{r['exploration']['fitting']} fitting configurations of "
        f"{r['exploration']['configurations']} (objective {r['exploration']['objective']}; "
        f"'zakid-hw explore' lists them)",
        f"  host link:   UART {r['host_link']['baud']} baud, {r['host_link']['transfer_ms']} ms transfer, "
        f"{r['host_link']['inferences_per_s_over_uart']:.0f} inferences/s end to end",
        "  resources:   " + ", ".join(f"{k} {v['used']}/{v['total']}" for k, v in res.items()),
        "  tools:       " + ", ".join(f"{k} {v:g} s" for k, v in r["tool_seconds"].items())
        + " (the place-and-route run kept)",
        f"  memories:    weights in {r['weights_memory'].upper()}, requantizer with "
        f"{'affine' if r['requantizer'] == 'affine' else 'whole'} threshold tables, "
        f"{r['activation_bytes']} bytes of activations",
        "  layers:",
    ]
    for l in r["layers"]:
        shape = lambda s: "x".join(map(str, s))
        lines.append(f"    {l['name']} ({l['op']}): {shape(l['input'])} -> {shape(l['output'])}, {l['macs']} MACs, "
                     f"{l['cycles']} cycles = {l['mac_steps']} MAC steps + {l['wait_cycles']} waiting "
                     f"(MAC bound {l['mac_bound_cycles']}, roofline {l['roofline_cycles']}: "
                     f"{l['efficiency']:.1%})")
    if r.get("flash_image"):
        f = r["flash_image"]
        lines.append(f"  flash:       weights in SPRAM, loaded at start-up from flash offset 0x{f['weights_offset']:X} "
                     f"({f['weights_bytes']} bytes); program {f['file']} (bitstream + weights) with iceprog")
    for w in r["warnings"]:
        lines.append(f"  warning: {w}")
    return "\n".join(lines) + "\n"
