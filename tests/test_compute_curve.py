"""benchmarks/compute_curve.py: a sets-only proof's runs pair with a full proof's baselines seed by seed, each point
of a generator is judged against its first point, and worth is read on the reference's real-only curve."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import compute_curve as cc

JITTER = (0.0, 0.01, -0.01)  # per seed, the same in every run: paired differences then carry no noise


def _runs(**means: tuple[float, int]) -> dict:
    return {name: {"values": {m: [mean + j for j in JITTER] for m in ("pixel_ap", "aupro", "image_auroc")},
                   "real_images": real} for name, (mean, real) in means.items()}


def _proof(generation: dict, seeded: dict, seeds: int = 3, sets_only: bool = False) -> dict:
    return {"benchmark": "proof", "config": "cpu", "seed": 0, "seeds": seeds, "masks": "real",
            "positive_quantile": 0.999, "data": "../shared/datasets/magnetic-tile", "sets_only": sets_only,
            "settings": {"ddpm_steps": 800, "det_res": 128, "n": 60},
            "generation": generation, "quality": {"cddpm": {"kid": 9.0}}, "seeded": {"seg": seeded}}


@pytest.fixture
def proofs(tmp_path):
    reference = _proof({"cddpm": {"train_s": 360.0}, "copypaste": {"train_s": 0.0}}, _runs(
        **{"real@25%": (0.30, 29), "real@50%": (0.40, 58), "real": (0.50, 117), "real+cddpm": (0.45, 117),
           "cddpm": (0.20, 0), "real+copypaste": (0.48, 117), "copypaste": (0.25, 0),
           "draem (Perlin masks, baseline)": (0.15, 0)}))
    later = _proof({"cddpm": {"train_s": 1440.0, "steps": 3200, "mixed_precision": "bf16"}},
                   _runs(**{"real+cddpm": (0.55, 117), "cddpm": (0.30, 0)}), sets_only=True)
    paths = []
    for name, proof in (("reference", reference), ("later", later)):
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(proof))
        paths.append(path)
    return paths


def _judged(paths):
    layout = cc.layout_of(json.loads(paths[0].read_text()))
    points = [p for path in paths for p in cc.points_of(json.loads(path.read_text()), path, layout)]
    reference = cc.read_seeded(json.loads(paths[0].read_text()), paths[0])
    return cc.judge("seg", reference["seg"], sorted(points, key=lambda p: p.steps), layout)


def test_points_pair_with_the_reference_and_with_each_other(proofs):
    judged = _judged(proofs)
    line = judged["lines"]["cddpm"]
    assert [p["steps"] for p in line] == [800, 3200]
    assert [p["train_minutes"] for p in line] == [6.0, 24.0]
    assert line[1]["mixed_precision"] == "bf16"
    assert line[0]["gain_over_real"]["mean"] == pytest.approx(-0.05)
    assert line[1]["gain_over_real"]["mean"] == pytest.approx(0.05)
    assert line[1]["alone"]["mean"] == pytest.approx(0.30)
    found = {(v["run"], v["baseline"], v["metric"]): v["verdict"] for v in judged["verdicts"]}
    assert found[("real+cddpm@3200 bf16", "real+cddpm@800", "pixel_ap")] == "beats"
    assert found[("real+cddpm@800", "real", "pixel_ap")] == "loses"
    assert found[("cddpm@3200 bf16", "draem (Perlin masks, baseline)", "pixel_ap")] == "beats"
    assert found[("real+cddpm@3200 bf16", "real+copypaste", "aupro")] == "beats"
    # worth on the reference's curve: 0.45 lies between 58 (0.40) and 117 (0.50) defects, seed by seed
    worth = line[0]["worth"]
    assert all(58 < d < 117 for d in worth["defects"]["values"])
    assert np.exp((np.log(58) + np.log(117)) / 2) == pytest.approx(worth["defects"]["mean"], rel=0.01)
    assert all(s["position"] == "above the curve" for s in line[1]["worth"]["per_seed"])
    # on the seeds' mean curve, with the paired gain's 2-SE interval (zero here: the jitter cancels)
    mean_worth = line[0]["mean_curve_worth"]
    assert mean_worth["extra"] == pytest.approx(worth["defects"]["mean"] - 117, rel=0.01)
    assert mean_worth["low"] == pytest.approx(mean_worth["extra"]) and mean_worth["high"] == mean_worth["low"]
    assert line[1]["mean_curve_worth"]["position"] == "above the curve" and line[1]["mean_curve_worth"]["extra"] > 0
    assert judged["bands"]["copypaste"]["gain_over_real"]["mean"] == pytest.approx(-0.02)
    assert judged["bands"]["draem"]["alone"]["mean"] == pytest.approx(0.15)


def test_plot_and_markdown(proofs, tmp_path):
    judged = {"seg": _judged(proofs)}
    png = cc.plot(judged, "test", tmp_path / "curve.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = cc.markdown({"tag": "t", "reference": ["r.json"], "points": ["p.json"], "detectors": judged})
    assert "| cddpm | 3200 | 24.0 | bf16 | 9.00 | +0.050 ± 0.000 | 0.300 ± 0.010 |" in text
    assert "real+cddpm@3200 bf16 beats real+cddpm@800 on pixel AP" in text


def test_a_point_with_other_seeds_does_not_pair(proofs, tmp_path):
    other = json.loads(proofs[1].read_text())
    other["seeds"] = 5
    path = tmp_path / "five.json"
    path.write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="five.json: ran with other seeds"):
        cc.check_same_protocol(json.loads(proofs[0].read_text()), other, path)


def test_a_proof_without_per_seed_values_is_refused(proofs, tmp_path):
    old = json.loads(proofs[0].read_text())
    del old["seeded"]
    with pytest.raises(SystemExit, match="no per-seed values"):
        cc.read_seeded(old, tmp_path / "old.json")


def test_a_sampling_variant_is_its_own_line(proofs, tmp_path):
    variant = json.loads(proofs[1].read_text())
    variant["generation"]["cddpm"]["guidance"] = 1.0
    variant["seeded"]["seg"]["real+cddpm"]["values"]["pixel_ap"] = [0.6, 0.61, 0.59]
    path = tmp_path / "g1.json"
    path.write_text(json.dumps(variant))
    judged = _judged([*proofs, path])
    assert [p["steps"] for p in judged["lines"]["cddpm"]] == [800, 3200]
    assert [p["steps"] for p in judged["lines"]["cddpm g1"]] == [3200]
    assert judged["lines"]["cddpm g1"][0]["gain_over_real"]["mean"] == pytest.approx(0.10)
    assert judged["lines"]["cddpm"][1]["gain_over_real"]["mean"] == pytest.approx(0.05)
    found = {(v["run"], v["baseline"], v["metric"]): v["mean"] for v in judged["verdicts"]}
    assert found[("real+cddpm g1@3200 bf16", "real+cddpm@3200 bf16", "pixel_ap")] == pytest.approx(0.05)


def test_a_precision_control_at_the_reference_steps_pairs_with_it(proofs, tmp_path):
    control = json.loads(proofs[1].read_text())
    control["generation"]["cddpm"].update(steps=800, train_s=180.0)
    path = tmp_path / "bf16-800.json"
    path.write_text(json.dumps(control))
    judged = _judged([proofs[0], path])
    assert [(p["steps"], p["mixed_precision"]) for p in judged["lines"]["cddpm"]] == [(800, "no"), (800, "bf16")]
    found = {(v["run"], v["baseline"], v["metric"]) for v in judged["verdicts"]}
    assert ("real+cddpm@800 bf16", "real+cddpm@800", "pixel_ap") in found


def test_a_runs_raw_weights_pair_with_its_ema_and_a_transplants_ddpm_is_no_point(proofs, tmp_path):
    raw = json.loads(proofs[1].read_text())
    raw["generation"]["cddpm"]["weights"] = "raw"
    raw["seeded"]["seg"]["real+cddpm"]["values"]["pixel_ap"] = [0.53, 0.54, 0.52]
    transplant = json.loads(proofs[1].read_text())  # its cddpm made no set of its own: only the transplant's
    transplant["generation"]["transplant-cddpm"] = dict(transplant["generation"]["cddpm"], strength=0.2)
    transplant["seeded"]["seg"] = {f"{k[:-5]}transplant-cddpm": v for k, v in transplant["seeded"]["seg"].items()}
    paths = []
    for name, proof in (("raw", raw), ("transplant", transplant)):
        paths.append(tmp_path / f"{name}.json")
        paths[-1].write_text(json.dumps(proof))
    judged = _judged([*proofs, *paths])
    assert [p["steps"] for p in judged["lines"]["cddpm raw"]] == [3200]
    assert [p["steps"] for p in judged["lines"]["cddpm"]] == [800, 3200]  # no empty cddpm point from the transplant
    assert [p["steps"] for p in judged["lines"]["transplant-cddpm"]] == [3200]
    found = {(v["run"], v["baseline"], v["metric"]): v["mean"] for v in judged["verdicts"]}
    assert found[("real+cddpm raw@3200 bf16", "real+cddpm@3200 bf16", "pixel_ap")] == pytest.approx(-0.02)
    assert found[("real+transplant-cddpm@3200 bf16", "real+copypaste", "pixel_ap")] == pytest.approx(0.07)


def test_a_training_variant_pairs_with_the_default_and_with_its_rerun(proofs, tmp_path):
    def variant(name: str, record: dict, pixel_ap: float) -> object:
        proof = json.loads(proofs[1].read_text())
        proof["generation"]["cddpm"].update(steps=800, mixed_precision="no", train_s=300.0, **record)
        proof["seeded"]["seg"]["real+cddpm"]["values"]["pixel_ap"] = [pixel_ap + j for j in JITTER]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(proof))
        return path

    paths = [variant("residual", {"target": "residual"}, 0.47), variant("small", {"preset": "small"}, 0.52),
             variant("rerun", {"variant": cc.RERUN}, 0.46)]
    judged = _judged([proofs[0], *paths])
    assert {"cddpm residual", "cddpm small", f"cddpm {cc.RERUN}"} <= set(judged["lines"])
    found = {(v["run"], v["baseline"], v["metric"]): v["mean"] for v in judged["verdicts"]}
    assert found[("real+cddpm residual@800", "real+cddpm@800", "pixel_ap")] == pytest.approx(0.02)
    assert found[("real+cddpm residual@800", "real+cddpm rerun@800", "pixel_ap")] == pytest.approx(0.01)
    assert found[("real+cddpm small@800", "real+cddpm rerun@800", "pixel_ap")] == pytest.approx(0.06)
    assert found[("real+cddpm rerun@800", "real+cddpm@800", "pixel_ap")] == pytest.approx(0.01)  # the machine
    assert not any(base == "real+cddpm rerun@800" for run, base, _ in found if run == "real+cddpm rerun@800")


def test_pair_runs_names_each_proofs_runs_by_its_label_and_refuses_another_protocol(proofs, tmp_path):
    from benchmarks.pair_runs import labeled_runs
    from defectgen.evaluate.compare import verdicts

    runs = labeled_runs({"ref": proofs[0], "new": proofs[1]}, "seg")
    assert {"ref:real+cddpm", "new:real+cddpm", "ref:real+copypaste"} <= set(runs)
    (judged,) = verdicts(runs, ["pixel_ap"], pairs=[("new:real+cddpm", "ref:real+copypaste")])
    assert judged.verdict == "beats" and judged.spread.mean == pytest.approx(0.07)
    other = json.loads(proofs[1].read_text())
    other["masks"] = "perlin"
    (tmp_path / "perlin.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match="perlin.json: ran with other masks"):
        labeled_runs({"ref": proofs[0], "perlin": tmp_path / "perlin.json"}, "seg")


def test_the_plot_draws_generators_and_their_larger_unets_not_the_ablations():
    assert cc._plotted("cddpm") and cc._plotted("transplant-cddpm") and cc._plotted("cddpm small")
    assert not any(cc._plotted(g) for g in ("cddpm residual", "cddpm rerun", "cddpm g1", "cddpm small residual"))
