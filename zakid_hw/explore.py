"""Design-space exploration: every configuration worth building for a model and a device, its exact cycles
and predicted resources, the Pareto front of latency against logic cells, and the choice ``build`` makes.

A configuration (:class:`Candidate`) is a lane count, the DSP packing (one or two int8 products per
SB_MAC16), the output pixels a weight word serves (two: a second bank of lanes for convolutions),
where the weights live (block RAM or SPRAM) and the requantizer's table form. Cycles come from
the exact cycle model (:func:`zakid_hw.cycle_model.cycles_per_run`), resources from
:mod:`zakid_hw.cost_model`. Latency is cycles at the design's clock: the one asked for, or with none asked
for the device's default for the design's predicted size (:func:`zakid_hw.compiler.automatic_clock_mhz`),
so a smaller design may run at a faster clock than a larger one.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field, replace

from rtl_gen.config import AccelConfig

from . import cost_model, cycle_model, schedule
from .errors import ZakidError

#: lane counts explored (powers of two; fewer than twice the widest layer's outputs)
LANE_CHOICES = (1, 2, 4, 8, 16, 32)
#: a design is taken only if its predicted logic cells stay below this share of the device
LC_BUDGET = 0.9
OBJECTIVES = ("latency", "area")


@dataclass(frozen=True)
class Candidate:
    lanes: int
    dsp_lanes: int
    dsp_pack: int      # int8 products per DSP block (1 or 2)
    weights: str       # "ebr" or "spram"
    requantizer: str   # "tables" or "affine"
    pixels: int = 1    # output pixels per weight word (2: two banks of lanes, see AccelConfig)

    def label(self) -> str:
        dsp = self.dsp_lanes * self.pixels
        mult = f"{dsp} DSP{' x2' if self.dsp_pack == 2 else ''}" if dsp else "0 DSP"
        lut = self.lanes - self.dsp_lanes
        banks = " x 2 pixels" if self.pixels == 2 else ""
        return (f"{self.lanes} lanes{banks} ({mult}{f' + {lut} LUT' if lut else ''}), weights {self.weights}, "
                f"{self.requantizer}")


@dataclass
class Design:
    candidate: Candidate
    program: schedule.Program
    image: schedule.AccelImage
    config: AccelConfig
    plan: dict
    cycles: int
    resources: dict
    problems: list[str] = field(default_factory=list)

    @property
    def fits(self) -> bool:
        return not self.problems

    @property
    def latency_us(self) -> float:
        """Cycles at the design's clock (with no clock asked for, each design has its own, see
        :func:`evaluate`)."""
        return self.cycles / self.config.clock_mhz


def lane_choices(program: schedule.Program, lanes: int | None) -> list[int]:
    if lanes is not None:
        return [lanes]
    widest = max(l.n for l in program.layers)
    return [L for L in LANE_CHOICES if L == 1 or L // 2 < widest]


def dsp_options(device, w_width: int, low_bit: bool, dsp_pack: int | None) -> list[int]:
    """DSP packings to try: none on devices without DSPs or for low-bit weights (logic-cell lanes)."""
    if dsp_pack is not None:
        if dsp_pack not in (1, 2):
            raise ZakidError(f"--dsp-pack must be 1 or 2, got {dsp_pack}")
        if dsp_pack == 2 and not device.dsp:
            raise ZakidError(f"--dsp-pack 2: device {device.name} has no DSP blocks")
        if dsp_pack == 2 and w_width > 8:
            raise ZakidError(f"--dsp-pack 2 needs weights of at most 8 bits; this model's widest weight has "
                             f"{w_width} bits")
        return [dsp_pack]
    if not device.dsp or low_bit:
        return [1]
    return [1, 2] if w_width <= 8 else [1]


def pixel_options(pixels: int | None) -> tuple:
    if pixels is None:
        return (1, 2)
    if pixels not in (1, 2):
        raise ZakidError(f"--pixels must be 1 or 2, got {pixels}")
    return (pixels,)


def candidates(board, program, *, lanes=None, dsp_pack=None, weights="auto", requantizer="auto",
               low_bit=False, pixels=None) -> list[Candidate]:
    """Every configuration to cost. Two pixels per weight word need every lane of both banks in DSP
    blocks, two per block."""
    dev = board.device
    out = []
    for L in lane_choices(program, lanes):
        for pack in dsp_options(dev, program.w_width, low_bit, dsp_pack):
            dsp_lanes = 0 if (low_bit or not dev.dsp) else min(L, dev.dsp * pack) // pack * pack
            if pack == 2 and dsp_lanes < 2:
                continue
            for px in pixel_options(pixels):
                if px == 2 and not (pack == 2 and dsp_lanes == L and L <= dev.dsp):
                    continue
                for w in (("ebr", "spram") if dev.spram else ("ebr",)) if weights == "auto" else (weights,):
                    for rq in ("tables", "affine") if requantizer == "auto" else (requantizer,):
                        out.append(Candidate(L, dsp_lanes, pack, w, rq, px))
    if not out and pixels == 2:
        raise ZakidError("--pixels 2 needs a device with DSP blocks, weights of at most 8 bits and at most as "
                         f"many lanes as DSP blocks ({dev.name} has {dev.dsp})")
    return out


def evaluate(board, lowered, cands, *, base_config: AccelConfig, clock_for=None, batch: int = 1) -> list[Design]:
    """Cycles, resources and fit problems of each candidate. Candidates that differ only in DSP packing
    share their image, cycles and memory plan (each is worked out once). Two-pixel candidates of a model
    with no layer that can pair (:func:`zakid_hw.schedule.pairable`) are left out.

    Every design runs at ``base_config``'s clock, or with ``clock_for`` (no clock asked for) at
    ``clock_for(predicted logic cells)``, a ``(clock_mhz, uart_divisor)`` pair. Cycles are per run of ``batch``
    inferences."""
    programs, images, cycles, plans, designs = {}, {}, {}, {}, []
    for c in cands:
        pk = (c.lanes, c.pixels)
        if pk not in programs:
            programs[pk] = schedule.make_program(lowered, c.lanes, c.pixels, batch)
        key = (c.lanes, c.pixels, c.requantizer)
        if key not in images:
            images[key] = schedule.memory_image(programs[pk], c.lanes, c.requantizer)
            cycles[key] = cycle_model.cycles_per_run(images[key])
        image = images[key]
        if c.pixels == 2 and not any(d.pair for d in image.layers):
            continue
        if (key, c.weights) not in plans:
            plans[key, c.weights] = cost_model.memory_plan(image, weights_in_spram=c.weights == "spram")
        plan = plans[key, c.weights]
        config = AccelConfig(lanes=c.lanes, dsp_lanes=c.dsp_lanes, dsp_pack=c.dsp_pack, pixels=c.pixels,
                             clock_mhz=base_config.clock_mhz, uart_divisor=base_config.uart_divisor,
                             weights_in_spram=c.weights == "spram")
        res = cost_model.resources(image, config, plan)
        if clock_for is not None:
            f, divisor = clock_for(res["lc"])
            config = replace(config, clock_mhz=f, uart_divisor=divisor)
        problems = fit_problems(board, config, plan, res)
        designs.append(Design(c, programs[pk], image, config, plan, cycles[key], res, problems))
    return designs


def too_many_logic_cells(res: dict, device) -> bool:
    """Whether predicted resources ``res`` exceed the logic-cell budget (:data:`LC_BUDGET`) of ``device``."""
    return res["lc"] > LC_BUDGET * device.logic_cells


def fit_problems(board, config: AccelConfig, plan: dict, res: dict) -> list[str]:
    """What keeps a configuration off the device (empty if it fits): block RAM, SPRAM, DSP blocks and
    predicted logic cells (``res``, from :func:`zakid_hw.cost_model.resources`)."""
    dev = board.device
    problems = []
    ebr = sum(m["ebr"] for m in plan.values())
    if ebr > dev.ebr:
        biggest = sorted(plan.items(), key=lambda kv: -kv[1]["ebr"])[:3]
        detail = ", ".join(f"{n} {m['bits'] / 8192:.1f} KB ({m['ebr']} blocks)" for n, m in biggest)
        problems.append(f"needs {ebr} block RAMs ({sum(m['bits'] for m in plan.values() if m['place'] == 'ebr') / 8192:.1f} KB; "
                        f"largest: {detail}), device {dev.name} has {dev.ebr} ({dev.ebr_bits / 8192:.0f} KB of block RAM"
                        f"{'; the weights are already in SPRAM' if plan['weights']['place'] == 'spram' else ''}"
                        f"{'' if 'lines' in plan else '; --requantizer affine stores the thresholds in far fewer bits'})")
    spram = sum(m["spram"] for m in plan.values())
    if spram > dev.spram:
        problems.append(f"the weights need {spram} SPRAM blocks ({plan['weights']['bits'] / 8192:.1f} KB as "
                        f"{plan['weights']['depth']} words of {plan['weights']['width']} bits), device {dev.name} has "
                        f"{dev.spram}")
    if config.dsp_blocks > dev.dsp:
        problems.append(f"asks for {config.dsp_lanes} DSP lanes ({config.dsp_blocks} DSP blocks), device "
                        f"{dev.name} has {dev.dsp} DSP blocks")
    if too_many_logic_cells(res, dev):
        lut = config.lanes - config.dsp_lanes
        problems.append(f"needs about {res['lc']} logic cells ({lut} of its {config.lanes} MAC lanes in logic "
                        f"cells), more than {LC_BUDGET:.0%} of the {dev.logic_cells} of device {dev.name}; "
                        + ("use fewer --lanes" if config.lanes > 1 else
                           "even one lane is too many: the controller, requantizer and host link alone do not fit, "
                           "so choose a larger device"))
    return problems


def order_key(objective: str):
    if objective not in OBJECTIVES:
        raise ZakidError(f"--objective must be latency or area, got {objective!r}")
    if objective == "latency":
        return lambda d: (d.latency_us, d.resources["lc"], d.resources["ebr"])
    return lambda d: (d.resources["lc"], d.resources["dsp"], d.resources["ebr"], d.latency_us)


def choose(designs: list[Design], objective: str = "latency") -> Design | None:
    """The best design that fits, or None."""
    fitting = [d for d in designs if d.fits]
    return min(fitting, key=order_key(objective)) if fitting else None


def fastest_batch(board, lowered, cands: list[Candidate], base_config: AccelConfig, batch: int) -> Design | None:
    """The configuration among ``cands`` that runs ``batch`` inferences in the fewest cycles per run and
    still fits (fewer logic cells on a tie); None for a model that cannot run in batches (see
    :func:`zakid_hw.schedule.make_program`) or when none fits."""
    try:
        schedule.make_program(lowered, 1, 1, batch)
    except ZakidError:
        return None
    fitting = [d for d in evaluate(board, lowered, cands, base_config=base_config, batch=batch) if d.fits]
    return min(fitting, key=lambda d: (d.cycles, d.resources["lc"]), default=None)


def pareto(designs: list[Design]) -> list[Design]:
    """The fitting designs no other fitting design beats on both latency and logic cells, fastest first."""
    fitting = sorted((d for d in designs if d.fits), key=lambda d: (d.latency_us, d.resources["lc"]))
    front, best_lc = [], None
    for d in fitting:
        if best_lc is None or d.resources["lc"] < best_lc:
            front.append(d)
            best_lc = d.resources["lc"]
    return front


def table(designs: list[Design], chosen: Design | None = None) -> str:
    """The designs as a markdown table: Pareto-optimal ones marked, the chosen one starred."""
    front = {id(d) for d in pareto(designs)}
    lines = ["| | lanes | pixels | DSP lanes | per DSP | weights | requantizer | cycles | MHz | latency µs | LC | DSP | "
             "EBR | SPRAM | fits |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for d in sorted(designs, key=lambda d: (not d.fits, d.latency_us, d.resources["lc"])):
        c, r = d.candidate, d.resources
        mark = ("*" if d is chosen else "") + ("P" if id(d) in front else "")
        lines.append(f"| {mark} | {c.lanes} | {c.pixels} | {c.dsp_lanes} | {c.dsp_pack} | {c.weights} | {c.requantizer} | "
                     f"{d.cycles} | {d.config.clock_mhz:g} | {d.latency_us:.2f} | {r['lc']} | {r['dsp']} | {r['ebr']} | "
                     f"{r['spram']} | {'yes' if d.fits else 'no: ' + '; '.join(d.problems)} |")
    return "\n".join(lines) + "\n"


def svg_plot(designs: list[Design], title: str, chosen: Design | None = None) -> str:
    """Latency against logic cells as an SVG image: every fitting design a grey dot, the Pareto front a
    line, the chosen design circled."""
    pts = [d for d in designs if d.fits]
    W, H, ml, mr, mt, mb = 640, 420, 80, 20, 40, 60
    if not pts:
        return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}"><text x="20" y="40">'
                f'{html.escape(title)}: no configuration fits</text></svg>\n')
    xs = [d.resources["lc"] for d in pts]
    ys = [d.latency_us for d in pts]
    x0, x1 = 0, max(xs) * 1.1
    y0, y1 = 0, max(ys) * 1.1

    def px(x):
        return ml + (x - x0) / (x1 - x0) * (W - ml - mr)

    def py(y):
        return H - mb - (y - y0) / (y1 - y0) * (H - mt - mb)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
           f'font-size="12">', f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="14">{html.escape(title)}</text>',
           f'<line x1="{ml}" y1="{H - mb}" x2="{W - mr}" y2="{H - mb}" stroke="black"/>',
           f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{H - mb}" stroke="black"/>',
           f'<text x="{(W + ml) / 2}" y="{H - 15}" text-anchor="middle">logic cells (predicted)</text>',
           f'<text x="18" y="{(H - mb + mt) / 2}" text-anchor="middle" transform="rotate(-90 18 '
           f'{(H - mb + mt) / 2})">latency µs, each design at its clock</text>']
    for i in range(6):
        xv, yv = x0 + (x1 - x0) * i / 5, y0 + (y1 - y0) * i / 5
        out.append(f'<text x="{px(xv):.1f}" y="{H - mb + 16}" text-anchor="middle">{xv:.0f}</text>')
        out.append(f'<text x="{ml - 6}" y="{py(yv) + 4:.1f}" text-anchor="end">{yv:.3g}</text>')
    front = pareto(designs)
    out.append('<polyline fill="none" stroke="#c33" stroke-width="2" points="' +
               " ".join(f"{px(d.resources['lc']):.1f},{py(d.latency_us):.1f}" for d in front) + '"/>')
    for d in pts:
        on = d in front
        out.append(f'<circle cx="{px(d.resources["lc"]):.1f}" cy="{py(d.latency_us):.1f}" '
                   f'r="{4 if on else 3}" fill="{"#c33" if on else "#999"}"><title>{html.escape(d.candidate.label())}: '
                   f'{d.cycles} cycles</title></circle>')
    if chosen is not None:
        out.append(f'<circle cx="{px(chosen.resources["lc"]):.1f}" cy="{py(chosen.latency_us):.1f}" '
                   f'r="9" fill="none" stroke="black" stroke-width="1.5"/>')
        out.append(f'<text x="{px(chosen.resources["lc"]) + 12:.1f}" y="{py(chosen.latency_us) - 8:.1f}">'
                   f'chosen: {html.escape(chosen.candidate.label())}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
