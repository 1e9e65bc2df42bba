"""The value-versus-compute curve: how much a generator's set is worth as its model trains longer.

Reads one full proof (`proof.py` or `proof_neu.py` with --seeds and --curve/--fractions: the baselines, the
real-only learning curve, and the generators' sets at the config's training steps) and any number of sets-only
proofs made with the same seeds and settings but the generators trained longer (`--sets-only --ddpm-steps N`).
Since every run of a seed trains with that seed, a set of a later proof pairs with the baselines of the first.
Per detector and per point (a generator at some training steps):

- the paired verdicts of real+SET against real alone and real+copy-paste, of the set alone against copy-paste and
  draem, and of each point against the same generator's first point (does more training change anything?);
- real+SET's worth in real defects on the real-only curve (the first headline metric);
- a plot: real+SET's gain over real alone (mean ± std over seeds) and the set alone's score against the
  generator's training minutes on the CPU, one line per generator, copy-paste and draem as bands.

    python benchmarks/proof.py --config cpu --masks real --detectors seg --generators cddpm,copypaste --seeds 3 \\
        --curve 0.25,0.5,1.0 --tag seg-3seeds                                      # the full proof (800 steps)
    python benchmarks/proof.py --config cpu --masks real --detectors seg --generators cddpm --seeds 3 --sets-only \\
        --ddpm-steps 3200 --mixed-precision bf16 --tag seg-3200                     # a later point
    python benchmarks/compute_curve.py --reference benchmarks/results/proof_cpu-seg-3seeds.json \\
        --points benchmarks/results/proof_cpu-seg-3200.json --tag magnetic-tile-seg

Results: benchmarks/results/compute_curve_<tag>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import command_line, fmt, provenance, rel, write_results  # noqa: E402
from defectgen.diffusion.models import PRESETS  # noqa: E402
from defectgen.evaluate.compare import METRIC_NAMES, RunSeeds, verdicts, worth  # noqa: E402
from defectgen.evaluate.verdicts import TWO_SE, Spread, worth_in_real_defects  # noqa: E402

BANDS = ("copypaste", "draem")  # the generators without a model: a band each, whatever the compute


@dataclass(frozen=True)
class Layout:
    """How a proof names its runs: `prefix` before every run of the set share (NEU-DET's "20% "), the set alone's
    name, the real-only curve, and the headline metrics (the first one places runs on the curve)."""

    prefix: str
    alone_suffix: str
    curve: tuple[str, ...] | None
    metrics: tuple[str, ...]
    model_suffix: str = ""  # NEU-DET names a model by its share too: cddpm-20

    def real(self) -> str:
        return f"{self.prefix}real"

    def mixed(self, generator: str) -> str:
        return f"{self.prefix}real+{generator}"

    def alone(self, generator: str) -> str:
        if generator == "draem" and not self.prefix:  # magnetic-tile's draem runs on Perlin masks, built in
            return "draem (Perlin masks, baseline)"
        return f"{self.prefix}{generator}{self.alone_suffix}"


def layout_of(proof: dict) -> Layout:
    if proof["benchmark"] == "proof_neu":
        pct = f"{round(proof['set_fractions'][0] * 100)}% "
        curve = tuple(f"{round(f * 100)}% real" for f in proof["fractions"])
        share = round(proof["set_fractions"][0] * 100)
        return Layout(pct, " only", curve, ("map50", "map"), f"-{share}" if share < 100 else "")
    return Layout("", "", None, ("pixel_ap", "aupro", "image_auroc"))


@dataclass(frozen=True)
class Point:
    """One generator trained for `steps` steps (`train_s` seconds on the proof's machine), its runs by detector."""

    generator: str  # with its sampling variant where the proof changed one: "cddpm g1"
    steps: int
    train_s: float | None
    mixed_precision: str
    kid: float | None
    source: str
    runs: dict[str, dict[str, RunSeeds]]

    @property
    def name(self) -> str:
        """"cddpm@3200 bf16": the precision named where it is not fp32, so a bf16 control at the reference's steps
        is its own point, paired with the fp32 one."""
        return f"{self.generator}@{self.steps}" + ("" if self.mixed_precision == "no" else f" {self.mixed_precision}")


def read_seeded(proof: dict, path: Path) -> dict[str, dict[str, RunSeeds]]:
    if "seeded" not in proof:
        raise SystemExit(f"{path}: no per-seed values ('seeded'); rerun it with this version of the proof script")
    return {d: {name: RunSeeds(r["values"], r["real_images"]) for name, r in runs.items()}
            for d, runs in proof["seeded"].items()}


# The timings' keys that make a point a variant, in the order its name lists them, and how each is written.
VARIANT_NAMES = {"guidance": "g{:g}", "weights": "{}", "context": "ctx{:g}", "target": "{}", "preset": "{}",
                 "variant": "{}"}


def points_of(proof: dict, path: Path, layout: Layout) -> list[Point]:
    """Every trained generator's point in `proof`: its steps, training time, KID and its runs."""
    seeded = read_seeded(proof, path)
    out = []
    for model, timing in proof["generation"].items():
        generator = model.removesuffix(layout.model_suffix) if layout.model_suffix else model
        if generator in BANDS or timing.get("train_s") == 0.0:
            continue
        steps = timing.get("steps") or proof["settings"]["ddpm_steps"]
        keys = (layout.mixed(generator), layout.alone(generator))
        quality = proof["quality"].get(generator, {})
        variant = [VARIANT_NAMES[k].format(timing[k]) for k in VARIANT_NAMES if timing.get(k) not in (None, "")]
        # a sampling variant (guidance), another read of the same run (raw weights), a training option (larger
        # windows, the residual target, a larger UNet) or a named rerun: a line of its own, paired with the default
        # at the same steps
        if variant:
            generator = " ".join([generator, *variant])
            keys = {k: k.replace(model.removesuffix(layout.model_suffix), generator, 1) for k in keys}
        else:
            keys = {k: k for k in keys}
        runs = {d: {keys[k]: r[k] for k in keys if k in r} for d, r in seeded.items()}
        if not any(runs.values()):  # a model trained only for another set (a transplant's DDPM)
            continue
        out.append(Point(generator, steps, timing.get("train_s"), timing.get("mixed_precision") or "no",
                         quality.get("kid"), rel(path), runs))
    return out


def check_same_protocol(reference: dict, other: dict, path: Path) -> None:
    """A later point pairs with the reference only when both ran the same detectors the same way."""
    keys = ("benchmark", "config", "seed", "seeds", "masks", "positive_quantile", "set_fractions")
    differ = [k for k in keys if reference.get(k) != other.get(k)]
    settings = {k for k in reference["settings"] if not k.startswith(("ddpm_", "ldm_"))}
    differ += [f"settings.{k}" for k in sorted(settings) if reference["settings"][k] != other["settings"].get(k)]
    if differ:
        raise SystemExit(f"{path}: ran with other {', '.join(differ)} than the reference; its runs do not pair")


RERUN = "rerun"  # the variant name of a default point trained and measured again (on another machine, say)


def judge(detector: str, reference: dict[str, RunSeeds], points: list[Point], layout: Layout) -> dict:
    """The verdicts, worth and plotted values of every point under one detector."""
    own = {k for p in points for k in p.runs.get(detector, {})}
    runs = {k: v for k, v in reference.items() if k not in own}
    for p in points:  # each point's runs under its own name, so that two points of one generator pair
        for key, seeds in p.runs.get(detector, {}).items():
            runs[key.replace(p.generator, p.name, 1)] = seeds
    head = layout.metrics[0]
    first = {}
    pairs = []
    for p in points:
        if layout.mixed(p.name) not in runs:
            continue
        first.setdefault(p.generator, p)
        pairs += [(layout.mixed(p.name), b) for b in (layout.real(), layout.mixed("copypaste"),
                                                      layout.mixed("draem")) if b in runs]
        pairs += [(layout.alone(p.name), layout.alone(b)) for b in BANDS
                  if layout.alone(b) in runs and layout.alone(p.name) in runs]
        # against the generator's first point (more training), and a variant against the default and, where the
        # default was run again on this variant's machine (`--variant rerun`), against that rerun too
        base = p.generator.split()[0]
        variant_of = [replace(p, generator=g).name for g in (base, f"{base} {RERUN}") if g != p.generator] \
            if " " in p.generator else []
        bases = [first[p.generator].name] + variant_of
        for base in (b for b in bases if b != p.name and layout.mixed(b) in runs):
            pairs += [(layout.mixed(p.name), layout.mixed(base))]
            if layout.alone(p.name) in runs and layout.alone(base) in runs:
                pairs += [(layout.alone(p.name), layout.alone(base))]
    judged = verdicts(runs, layout.metrics, pairs=pairs)
    curve = list(layout.curve) if layout.curve else None
    worths = {w.run: w for w in worth(runs, head, curve=curve)}
    real = runs[layout.real()].values[head]

    def gain(run: str) -> dict | None:
        if run not in runs:
            return None
        return Spread(tuple(a - b for a, b in zip(runs[run].values[head], real, strict=True))).to_json()

    def alone(run: str) -> dict | None:
        return Spread(tuple(runs[run].values[head])).to_json() if run in runs else None

    on_curve = curve or sorted((r for r in runs if r.startswith("real@")), key=lambda r: runs[r].real_images) + \
        [layout.real()]

    def mean_curve_worth(run: str) -> dict | None:
        """`run`'s worth read on the seeds' mean curve, and the interval its paired gain over real alone (mean ±
        2 SE) maps to through that curve: defined where a seed's own curve is flat or the run lies past it, and on
        one fixed curve a difference in worth is a difference in score, so its verdicts are the paired ones."""
        if run not in runs or len(on_curve) < 2:
            return None
        xs = [runs[c].real_images for c in on_curve]
        ys = [float(np.mean(runs[c].values[head])) for c in on_curve]
        g = Spread(tuple(a - b for a, b in zip(runs[run].values[head], real, strict=True)))
        base, half = float(np.mean(real)), TWO_SE * (g.se or 0.0)
        at = [worth_in_real_defects(xs, ys, base + g.mean + d, runs[run].real_images) for d in (0.0, -half, half)]
        return {"extra": at[0].extra, "position": at[0].position, "low": at[1].extra, "low_position": at[1].position,
                "high": at[2].extra, "high_position": at[2].position, "labeled": runs[run].real_images}

    lines = {}
    for p in points:
        if layout.mixed(p.name) not in runs:
            continue
        w = worths.get(layout.mixed(p.name))
        lines.setdefault(p.generator, []).append({
            "steps": p.steps, "train_minutes": None if p.train_s is None else p.train_s / 60,
            "mixed_precision": p.mixed_precision, "kid": p.kid, "source": p.source,
            "gain_over_real": gain(layout.mixed(p.name)), "alone": alone(layout.alone(p.name)),
            "worth": None if w is None else w.to_json(), "mean_curve_worth": mean_curve_worth(layout.mixed(p.name))})
    bands = {b: {"gain_over_real": gain(layout.mixed(b)), "alone": alone(layout.alone(b)),
                 "worth": None if layout.mixed(b) not in worths else worths[layout.mixed(b)].to_json(),
                 "mean_curve_worth": mean_curve_worth(layout.mixed(b))}
             for b in BANDS}
    return {"metric": head, "real": Spread(tuple(real)).to_json(), "lines": lines, "bands": bands,
            "verdicts": [v.to_json() for v in judged],
            "text": [v.line(METRIC_NAMES.get(v.metric, v.metric)) for v in judged]
            + [worths[k].line() for k in worths if "@" in k]}


def plot(detectors: dict, title: str, path: Path) -> Path:
    """Per detector, real+SET's gain over real alone (top) and the set alone (bottom) against training steps, each
    point labelled with its CPU minutes (steps are the comparable axis: the minutes depend on the precision and on
    what else ran on the machine). The generators' own lines and their larger UNets only: the ablations (guidance,
    raw weights, windows, the residual target, reruns) are in the tables, where they are paired."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, FormatStrFormatter, NullFormatter

    names = list(detectors)
    fig, axes = plt.subplots(2, len(names), figsize=(7.2 * len(names), 6.4), dpi=120, squeeze=False)
    colours = {"copypaste": "tab:orange", "draem": "tab:grey"}
    # every generator keeps its colour in every panel, none of them the bands' colours
    line_colours = ["tab:blue", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
    generators = sorted({g for d in detectors.values() for g in d["lines"] if _plotted(g)})
    line_colour = {g: line_colours[i % len(line_colours)] for i, g in enumerate(generators)}
    for col, detector in enumerate(names):
        d = detectors[detector]
        metric = METRIC_NAMES.get(d["metric"], d["metric"])
        for row, field in enumerate(("gain_over_real", "alone")):
            ax = axes[row][col]
            for band, values in d["bands"].items():
                s = values[field]
                if s is None:
                    continue
                low, high = s["mean"] - (s["std"] or 0), s["mean"] + (s["std"] or 0)
                ax.axhspan(low, high, color=colours[band], alpha=0.18, lw=0)
                ax.axhline(s["mean"], color=colours[band], lw=1, label=f"{band} (± std)")
            for generator, points in d["lines"].items():
                if not _plotted(generator):
                    continue
                xs = [p["steps"] for p in points if p[field] is not None]
                ys = [p[field]["mean"] for p in points if p[field] is not None]
                es = [p[field]["std"] or 0 for p in points if p[field] is not None]
                if not xs:
                    continue
                ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=generator, color=line_colour[generator])
                for p, x, y in zip([p for p in points if p[field] is not None], xs, ys, strict=True):
                    minutes = "" if p["train_minutes"] is None else f"{p['train_minutes']:.0f} min"
                    text = minutes + ("" if p["mixed_precision"] == "no" else f", {p['mixed_precision']}")
                    if field == "gain_over_real" and p["mean_curve_worth"]:
                        text += f"\n{_mean_worth(p['mean_curve_worth'], short=True)} real defects"
                    # each generator's labels in its colour, staggered so that points at one step stay legible
                    ax.annotate(text, (x, y), textcoords="offset points", fontsize=6, color=line_colour[generator],
                                xytext=(6, 4 - 14 * generators.index(generator)))
            if field == "gain_over_real":
                ax.axhline(0.0, color="black", lw=0.8, ls="--", label="real alone")
            ax.set_xscale("log")
            ticks = sorted({p["steps"] for line in d["lines"].values() for p in line})
            if ticks:  # the points' own minutes as ticks, room on the right for their labels
                ax.set_xlim(ticks[0] / 1.6, ticks[-1] * 3.0)
                ax.xaxis.set_major_locator(FixedLocator(ticks))
                ax.xaxis.set_major_formatter(FormatStrFormatter("%d"))
                ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_xlabel("generator training steps (labels: CPU minutes)")
            ax.set_ylabel(f"real+set − real, {metric}" if field == "gain_over_real" else f"set alone, {metric}")
            ax.set_title(detector, fontsize=10)
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # off the points' labels
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plotted(generator: str) -> bool:
    """A generator's own line, or its line at another UNet size (`--ddpm-preset`), not an ablation's."""
    return all(v in PRESETS for v in generator.split()[1:])


def _worth_text(w: dict) -> str:
    if w["defects"] is None:
        missing = [s["position"] for s in w["per_seed"] if s["defects"] is None]
        return f"none: {' / '.join(sorted(set(missing)))} ({len(missing)} of {len(w['per_seed'])} seeds)"
    extra = [v - w["labeled"] for v in w["defects"]["values"]]
    s = Spread(tuple(extra))
    return f"{s.mean:+.0f} ± {s.std or 0:.0f} real defects"


def markdown(out: dict) -> str:
    lines = [f"# Value against compute: {out['tag']}", "",
             "Reference: " + ", ".join(f"`{p}`" for p in out["reference"]) + "; later points: "
             + (", ".join(f"`{p}`" for p in out["points"]) or "none"), ""]
    for detector, d in out["detectors"].items():
        metric = METRIC_NAMES.get(d["metric"], d["metric"])
        lines += [f"## {detector} ({metric}; real alone {fmt(d['real']['mean'])} ± {fmt(d['real']['std'])})", "",
                  "| set | steps | train min | precision | KID | real+set − real | set alone | worth (per seed) | "
                  "worth on the mean curve [2 SE] |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for generator, points in d["lines"].items():
            for p in points:
                minutes = "-" if p["train_minutes"] is None else f"{p['train_minutes']:.1f}"
                kid = "-" if p["kid"] is None else f"{p['kid']:.2f}"
                lines.append(f"| {generator} | {p['steps']} | {minutes} | {p['mixed_precision']} | {kid} | "
                             f"{_pm(p['gain_over_real'])} | {_pm(p['alone'], sign='')} | "
                             f"{_worth_text(p['worth']) if p['worth'] else '-'} | "
                             f"{_mean_worth(p['mean_curve_worth'])} |")
        for band, b in d["bands"].items():
            lines.append(f"| {band} | - | 0 | - | - | {_pm(b['gain_over_real'])} | {_pm(b['alone'], sign='')} | "
                         f"{_worth_text(b['worth']) if b['worth'] else '-'} | {_mean_worth(b['mean_curve_worth'])} |")
        lines += ["", *[f"- {t}" for t in d["text"]], ""]
    return "\n".join(lines) + "\n"


def _mean_worth(w: dict | None, short: bool = False) -> str:
    """'+51 [+20, +90]' real defects, a side past the curve's reach named by its position."""
    if w is None:
        return "-"

    def one(extra, position):
        if extra is None:
            return position.removesuffix(" the curve") if short else position
        return f"{extra:+.0f}"
    return f"{one(w['extra'], w['position'])} [{one(w['low'], w['low_position'])}, " \
        f"{one(w['high'], w['high_position'])}]"


def _pm(s: dict | None, sign: str = "+") -> str:
    if s is None:
        return "-"
    mean = f"{s['mean']:{sign}.3f}"
    return f"{mean} ± {s['std']:.3f}" if s["std"] is not None else mean


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", required=True, help="full proof JSONs (baselines and curve), comma-separated: "
                        "one per detector, the same protocol")
    parser.add_argument("--points", default="", help="sets-only proof JSONs, comma-separated")
    parser.add_argument("--tag", required=True, help="suffix of the result files")
    args = parser.parse_args()
    started = time.perf_counter()

    references = [Path(p) for p in args.reference.split(",") if p.strip()]
    paths = [Path(p) for p in args.points.split(",") if p.strip()]
    reference = json.loads(references[0].read_text())
    layout = layout_of(reference)
    seeded: dict[str, dict[str, RunSeeds]] = {}
    points: dict[str, Point] = {}
    for path in references + paths:
        proof = json.loads(path.read_text())
        check_same_protocol(reference, proof, path)
        if path in references:
            seeded.update(read_seeded(proof, path))  # each detector's baselines from the reference that ran it
        for p in points_of(proof, path, layout):  # a point measured by several proofs: one per detector
            if p.name in points:
                p = replace(points[p.name], runs={**points[p.name].runs, **{d: r for d, r in p.runs.items() if r}})
            points[p.name] = p
    ordered = sorted(points.values(), key=lambda p: (p.generator, p.steps, p.mixed_precision != "no"))
    detectors = {d: judge(d, runs, ordered, layout) for d, runs in seeded.items()}
    name = f"compute_curve_{args.tag}"
    work = ROOT / "out"
    work.mkdir(exist_ok=True)
    figure = plot(detectors, f"{Path(reference['data']).name}: what a set adds against its generator's training",
                  work / f"{name}.png")
    out = {"benchmark": "compute_curve", "tag": args.tag, "reference": [rel(p) for p in references],
           "points": [rel(p) for p in paths], "data": reference["data"], **provenance(),
           "wall_time_s": time.perf_counter() - started, "detectors": detectors,
           "command": command_line("benchmarks/compute_curve.py", sys.argv[1:])}
    write_results(name, out, markdown(out), figure)


if __name__ == "__main__":
    main()
