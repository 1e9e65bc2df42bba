"""Paired verdicts between runs of different proofs that ran the same protocol with the same seeds: a rerun on
another machine against the reference it repeats, or a new set against a baseline run again beside it.

Each proof is given a label; a run is named LABEL:RUN (RUN as the proof's per-seed values name it, "real+cddpm").

    python benchmarks/pair_runs.py --proofs ref=benchmarks/results/proof_neu_cpu-det-3seeds.json,\
rerun=benchmarks/results/proof_neu_cpu-cddpm-800-rerun.json --detector det \
        --pairs "rerun:20% real+cddpm/ref:20% real+cddpm" --tag neu-rerun
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import command_line, provenance, rel, write_results  # noqa: E402
from benchmarks.compute_curve import check_same_protocol, layout_of, read_seeded  # noqa: E402
from defectgen.evaluate.compare import METRIC_NAMES, verdicts  # noqa: E402


def labeled_runs(proofs: dict[str, Path], detector: str) -> dict:
    """{LABEL:RUN: RunSeeds} of `detector` over every proof, each checked against the first one's protocol."""
    first = json.loads(next(iter(proofs.values())).read_text())
    runs = {}
    for label, path in proofs.items():
        proof = json.loads(path.read_text())
        check_same_protocol(first, proof, path)
        for name, seeds in read_seeded(proof, path).get(detector, {}).items():
            runs[f"{label}:{name}"] = seeds
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--proofs", required=True, help="LABEL=PATH,... proof JSONs with per-seed values")
    parser.add_argument("--detector", required=True)
    parser.add_argument("--pairs", required=True, help="RUN/BASE;... each LABEL:RUN (semicolon-separated)")
    parser.add_argument("--tag", required=True, help="suffix of the result files")
    args = parser.parse_args()
    started = time.perf_counter()
    proofs = {label: Path(path) for label, path in (p.split("=", 1) for p in args.proofs.split(","))}
    runs = labeled_runs(proofs, args.detector)
    pairs = [tuple(p.split("/", 1)) for p in args.pairs.split(";") if p.strip()]
    missing = sorted({r for pair in pairs for r in pair} - set(runs))
    if missing:
        raise SystemExit(f"no such run(s): {', '.join(missing)}; known: {', '.join(sorted(runs))}")
    metrics = list(layout_of(json.loads(next(iter(proofs.values())).read_text())).metrics)
    metrics = [m for m in metrics if all(m in runs[r].values for pair in pairs for r in pair)]
    judged = verdicts(runs, metrics, pairs=pairs)
    out = {"benchmark": "pair_runs", "tag": args.tag, "detector": args.detector,
           "proofs": {k: rel(v) for k, v in proofs.items()}, **provenance(),
           "verdicts": [v.to_json() for v in judged],
           "command": command_line("benchmarks/pair_runs.py", sys.argv[1:])}
    lines = [f"- {v.line(METRIC_NAMES.get(v.metric, v.metric))}" for v in judged]
    text = "\n".join([f"# Paired runs: {args.tag} ({args.detector})", "",
                      *(f"- {k}: `{rel(v)}`" for k, v in proofs.items()), "", *lines, ""])
    write_results(f"pair_runs_{args.tag}", {**out, "wall_time_s": time.perf_counter() - started}, text, None)


if __name__ == "__main__":
    main()
