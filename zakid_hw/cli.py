"""``zakid-hw``: build, simulate and run quantized ONNX models on iCE40 FPGAs.

Every user mistake ends in one ``error:`` paragraph and exit status 2 (see :mod:`zakid_hw.errors`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from .errors import ZakidError


def model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", metavar="CALIB.npy",
                   help="calibration inputs for a float model (first axis indexes rows)")
    p.add_argument("--fpga", default="ice40", help="FPGA family (ice40)")
    p.add_argument("--device", help="device: up5k (default), hx8k, hx1k")
    p.add_argument("--board", help="board: icebreaker (default for up5k), ice40-hx8k-b-evn, icestick")
    p.add_argument("--lanes", type=int, help="MAC lanes (default: chosen by the design-space exploration)")
    p.add_argument("--dsp-pack", type=int, choices=(1, 2),
                   help="int8 products per DSP block: 1 (inferred 16x16 multiplier) or 2 (SB_MAC16 in its "
                        "two-8x8 mode; weights of at most 8 bits); default: chosen by the exploration")
    p.add_argument("--pixels", type=int, choices=(1, 2),
                   help="output pixels per weight word: 2 adds a second bank of lanes that works on the next "
                        "output pixel of a convolution with the same weights (every lane in DSP blocks, two per "
                        "block); default: chosen by the exploration")
    p.add_argument("--batch", type=int, default=1, metavar="N",
                   help="run N inferences at once (models of dense layers): the waits between layers and for "
                        "the last outputs come once per run instead of once per inference, so the MAC array "
                        "idles less; a run takes more cycles, an inference fewer, and a run's results come "
                        "together at its end (default 1)")
    p.add_argument("--objective", choices=("latency", "area"), default="latency",
                   help="what the exploration minimises among the configurations that fit (default latency)")
    p.add_argument("--clock", type=float, metavar="MHZ", help="clock frequency (default: per device)")
    p.add_argument("--baud", type=int, default=115200, help="UART baud rate (default 115200)")
    p.add_argument("--weights", choices=("auto", "ebr", "spram"), default="auto",
                   help="where the weights live: block RAM, or SPRAM loaded from SPI flash at start-up "
                        "(default auto: SPRAM only when block RAM is too small)")
    p.add_argument("--requantizer", choices=("auto", "tables", "affine"), default="auto",
                   help="how the requantizer stores its thresholds: whole tables, or affine tables (a line "
                        "plus a few bits per threshold, more logic, far less block RAM); default auto: "
                        "affine only when block RAM is still too small")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="zakid-hw", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="ONNX model -> verified RTL, bitstream and report")
    b.add_argument("model", help="ONNX model file")
    model_options(b)
    b.add_argument("--out", help="output folder (default build/<model name>)")
    b.add_argument("--seed", type=int, help="nextpnr placement seed")
    b.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="place and route with N seeds (1..N, or from --seed on) and keep the fastest")
    e = sub.add_parser("explore", help="cost every configuration for a device; print the Pareto front "
                                       "(latency vs logic cells) as a table and an SVG plot")
    e.add_argument("model", help="ONNX model file")
    model_options(e)
    e.add_argument("--plot", metavar="FILE.svg", help="where to write the plot (default <model>.pareto.svg)")
    e.add_argument("--all", action="store_true", help="list every configuration, not only the Pareto front")
    s = sub.add_parser("sim", help="run the generated RTL in simulation (cocotb + Verilator)")
    s.add_argument("model", help="ONNX model file")
    model_options(s)
    s.add_argument("--input", required=True, metavar="X.npy", help="inputs, first axis indexes inferences")
    s.add_argument("--output", metavar="Y.npy", help="where to write the outputs")
    s.add_argument("--check", action="store_true", help="compare every output with the golden model")
    s.add_argument("--uart", action="store_true", help="simulate the whole design behind its UART link")
    s.add_argument("--ignore-fit", action="store_true",
                   help="simulate even if the design is too big for the device (it cannot be built)")
    r = sub.add_parser("run", help="run inferences on a board over its UART")
    r.add_argument("build_dir", help="a folder written by 'zakid-hw build'")
    r.add_argument("--port", required=True, help="serial port of the board (e.g. /dev/ttyUSB1)")
    r.add_argument("--input", required=True, metavar="X.npy")
    r.add_argument("--output", metavar="Y.npy")
    r.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for an answer")
    return ap


#: the batch size ``explore`` costs for a model of dense layers, to show what ``--batch`` gains
BATCH_HINT = 8


def load_npy(path, what: str) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ZakidError(f"{what} file {path} does not exist") from None
    except Exception as e:
        raise ZakidError(f"cannot read {what} file {path} as a numpy .npy array: {e}") from None


def save_npy(path, arr) -> None:
    """Write atomically: a failure leaves no half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npy", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, arr)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def compile_from_args(a, model):
    from .compiler import compile_model
    calib = load_npy(a.calibration, "calibration") if a.calibration else None
    return compile_model(model, calibration=calib, fpga=a.fpga, device=a.device, board=a.board,
                         lanes=a.lanes, dsp_pack=a.dsp_pack, pixels=a.pixels, clock_mhz=a.clock, baud=a.baud, weights=a.weights,
                         requantizer=a.requantizer, objective=a.objective, batch=a.batch,
                         check_fit=not getattr(a, "ignore_fit", False) and a.command != "explore")


def cmd_build(a) -> int:
    from .build import build, text_report
    c = compile_from_args(a, a.model)
    out = Path(a.out) if a.out else Path("build") / Path(a.model).stem
    if a.seeds < 1:
        raise ZakidError(f"--seeds must be at least 1, got {a.seeds}")
    report = build(c, out, seed=a.seed, seeds=a.seeds, calibration_path=a.calibration)
    print(text_report(report), end="")
    print(f"wrote {out}/ ({Path(a.model).stem}.bin, {Path(a.model).stem}.v, report.json, report.txt)")
    return 0


def cmd_sim(a) -> int:
    from .simulate import golden_outputs, simulate_model
    c = compile_from_args(a, a.model)
    xs = load_npy(a.input, "input")
    res = simulate_model(c, xs, uart=a.uart)
    if a.output:
        save_npy(a.output, res.outputs.astype(np.float32 if res.outputs.dtype.kind == "f" else np.int64))
    cyc = sorted(set(res.cycles))
    n = c.program.batch
    per_run = cyc[0] if len(cyc) == 1 else cyc
    print(f"simulated {len(xs)} inferences of {Path(a.model).name} "
          f"({'whole design over UART' if a.uart else 'accelerator core'}): "
          + (f"{per_run} cycles per inference" if n == 1 else
             f"{len(res.cycles)} runs of {n}, {per_run} cycles per run"
             + (f" ({cyc[0] / n:g} per inference)" if len(cyc) == 1 else "")))
    if a.check:
        want = golden_outputs(c, xs)
        bad = int(np.sum(res.outputs.reshape(want.shape) != want))
        if bad:
            print(f"check FAILED: {bad} of {want.size} outputs differ from the golden model", file=sys.stderr)
            return 1
        print(f"check passed: all {want.size} outputs equal the golden model bit for bit")
    return 0


def cmd_explore(a) -> int:
    from . import explore
    c = compile_from_args(a, a.model)
    chosen = c.chosen if c.chosen.fits else None
    shown = c.designs if a.all else explore.pareto(c.designs)
    fits = sum(d.fits for d in c.designs)
    clocks = sorted({d.config.clock_mhz for d in c.designs})
    at = (f"latency at {clocks[0]:g} MHz" if len(clocks) == 1 else
          f"latency at each design's automatic clock ({' or '.join(f'{f:g}' for f in clocks)} MHz by predicted size)")
    print(f"{len(c.designs)} configurations of {Path(a.model).name} for {c.board.device.part}, {fits} fit; "
          f"{at}; LC predicted by the cost model (P: Pareto front, *: what build takes with "
          f"--objective {c.objective})"
          + (f"; cycles and latency per run of {c.program.batch} inferences" if c.program.batch > 1 else ""))
    print(explore.table(shown, chosen), end="")
    if not fits:
        print("no configuration fits the device; the problems of each are in the last column (--all)")
    elif c.program.batch == 1 and chosen is not None:
        n = BATCH_HINT
        best = explore.fastest_batch(c.board, c.lowered, c.candidates, c.config, n)
        if best is not None:
            print(f"this model can run in batches: with --batch {n}, {best.cycles} cycles per run of {n}, "
                  f"{best.cycles / n:g} per inference against {chosen.cycles} ({best.candidate.label()}; "
                  f"'explore --batch {n}' lists every configuration)")
    plot = Path(a.plot) if a.plot else Path(f"{Path(a.model).stem}.pareto.svg")
    svg = explore.svg_plot(c.designs, f"{Path(a.model).name} on {c.board.device.part}", chosen)
    tmp = plot.with_name(f".{plot.name}.tmp")
    try:
        tmp.write_text(svg)
        tmp.replace(plot)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ZakidError(f"cannot write the plot {plot}: {e}") from None
    print(f"wrote {plot}")
    return 0


def cmd_run(a) -> int:
    from . import protocol
    from .compiler import compile_model
    bdir = Path(a.build_dir)
    rep_path = bdir / "report.json"
    if not rep_path.is_file():
        raise ZakidError(f"{bdir} is not a build folder (no report.json); run 'zakid-hw build' first")
    try:
        rep = json.loads(rep_path.read_text())
        board, lanes, clock, baud = rep["board"], rep["mac_lanes"], rep["clock_mhz"], rep["host_link"]["baud"]
        weights = rep.get("weights_memory", "ebr")
        dsp_pack = rep.get("dsp_pack", 1)
        pixels = rep.get("pixels", 1)
        batch = rep.get("batch", 1)
        requantizer = rep.get("requantizer", "tables")
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ZakidError(f"{rep_path} is not a report written by 'zakid-hw build' ({type(e).__name__}: {e}); "
                         f"rebuild {bdir} with 'zakid-hw build'") from None
    calib = load_npy(bdir / "calibration.npy", "calibration") if (bdir / "calibration.npy").exists() else None
    c = compile_model(bdir / "model.onnx", calibration=calib, board=board, lanes=lanes, clock_mhz=clock,
                      weights=weights, requantizer=requantizer, dsp_pack=dsp_pack, pixels=pixels, batch=batch)
    from .simulate import from_codes, to_codes
    xs = load_npy(a.input, "input")
    codes = to_codes(c, xs)
    with protocol.SerialLink(a.port, baudrate=baud) as link:
        drv = protocol.Driver(link, in_dtype=c.in_dtype, out_dtype=c.out_dtype, timeout=a.timeout)
        info = drv.info()
        if (info.in_len, info.out_len, info.signature) != (c.program.in_len, c.program.out_len, c.signature):
            raise ZakidError(f"the board on {a.port} runs a different model (signature {info.signature:08x}, "
                             f"expected {c.signature:08x} from {bdir}); load {bdir}/*.bin onto it")
        outs, cycles = [], []
        for row in codes:
            out, cyc = drv.infer(row)
            outs.append(out)
            cycles.append(cyc)
    outputs = from_codes(c, outs, len(xs))
    if a.output:
        save_npy(a.output, outputs)
    runs = f" in {len(cycles)} runs of {c.program.batch}" if c.program.batch > 1 else ""
    print(f"ran {len(xs)} inferences{runs} on {a.port}: {sorted(set(cycles))} cycles per "
          f"{'run' if runs else 'inference'}")
    return 0


def main(argv=None) -> int:
    a = parser().parse_args(argv)
    try:
        return {"build": cmd_build, "sim": cmd_sim, "run": cmd_run, "explore": cmd_explore}[a.command](a)
    except ZakidError as e:
        print(f"error: {e}", file=sys.stderr)
        return ZakidError.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
