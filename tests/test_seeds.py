"""validate with several seeds, a real-only learning curve and the real baselines of every detector, on tiny data
made here (32x32 gray textures with bright squares; tiny random backbone; CPU)."""

from __future__ import annotations

import numpy as np
import pytest

from defectgen.evaluate import ValidationConfig, run_validation
from defectgen.io.coco import CocoBuilder
from tests.conftest import texture, write_png
from tests.test_seg import _square

S = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """MVTec layout: train/good 10, test good 4 + spot 4, labeled/spot 8; syn: 4 synthetic spots on the normals."""
    root = tmp_path_factory.mktemp("seeds")
    rng = np.random.default_rng(0)
    mv = root / "mv"
    train = [texture(rng, S, S) for _ in range(10)]
    for i, img in enumerate(train):
        write_png(mv / "train" / "good" / f"{i:03d}.png", img)
    for i in range(4):
        write_png(mv / "test" / "good" / f"{i:03d}.png", texture(rng, S, S))
        img, m, _ = _square(rng, texture(rng, S, S))
        write_png(mv / "test" / "spot" / f"{i:03d}.png", img)
        write_png(mv / "ground_truth" / "spot" / f"{i:03d}_mask.png", m.astype(np.uint8) * 255)
    for i in range(8):
        img, m, _ = _square(rng, texture(rng, S, S))
        write_png(mv / "labeled" / "spot" / f"l{i}.png", img)
        write_png(mv / "labeled" / "spot" / f"l{i}_mask.png", m.astype(np.uint8) * 255)
    syn, coco = root / "syn", CocoBuilder()
    for i in range(4):
        img, m, _ = _square(rng, train[i])
        write_png(syn / "images" / f"{i:06d}.png", img)
        coco.add_mask(coco.add_image(f"images/{i:06d}.png", S, S, source=str(mv / "train" / "good" / f"{i:03d}.png")),
                      m, "spot")
    coco.save(syn / "annotations.json")
    return root


def _seg(data, out, **kw):
    return run_validation(ValidationConfig(
        "seg", data / "mv" / "train" / "good", data / "mv", out, synthetic=data / "syn", real_labeled=data / "mv",
        resolution=S, steps=8, batch_size=4, n_overlays=0, progress=False, **kw))


def test_k_seeds_give_k_different_reproducible_results_and_paired_verdicts(data, tmp_path):
    res = _seg(data, tmp_path / "a", baselines=["real", "real+synthetic", "draem"], seeds=2, seed=3)
    runs = res["runs"]
    assert res["seeds"] == [3, 4]
    for name in ("synthetic", "real", "real+synthetic", "draem"):
        per_seed = runs[name]["per_seed"]
        assert [p["seed"] for p in per_seed] == [3, 4]
        assert per_seed[0]["metrics"] != per_seed[1]["metrics"], name  # each seed its own run
        spread = runs[name]["spread"]["pixel_ap"]
        assert spread["mean"] == pytest.approx(np.mean(spread["values"])) and spread["std"] is not None
        assert runs[name]["metrics"]["pixel_ap"] == pytest.approx(spread["mean"])
    again = _seg(data, tmp_path / "b", baselines=["real", "real+synthetic", "draem"], seeds=2, seed=3)
    assert [p["metrics"] for p in again["runs"]["draem"]["per_seed"]] == \
        [p["metrics"] for p in runs["draem"]["per_seed"]]
    pairs = {(v["run"], v["baseline"]) for v in res["verdicts"]}
    assert {("synthetic", "real"), ("synthetic", "draem"), ("real+synthetic", "real"), ("real+synthetic", "draem")} \
        <= pairs and ("real", "draem") not in pairs
    for v in res["verdicts"]:
        a = runs[v["run"]]["spread"][v["metric"]]["values"]
        b = runs[v["baseline"]]["spread"][v["metric"]]["values"]
        assert v["differences"] == pytest.approx(np.subtract(a, b).tolist()) and v["seeds"] == 2
        assert v["verdict"] in ("beats", "ties", "loses")
    md = (tmp_path / "a" / "report.md").read_text()
    assert "2 seeds (3, 4), mean ± std" in md and "Verdicts" in md
    assert md.index("- real+synthetic") < md.index("| run |")  # the verdicts open the report
    assert " ± " in md.split("| real |")[1].splitlines()[0]


def test_one_seed_gets_a_bootstrap_interval_over_test_images(data, tmp_path):
    res = _seg(data, tmp_path / "r", baselines=["real", "real+synthetic"])
    judged = {(v["run"], v["baseline"], v["metric"]): v for v in res["verdicts"]}
    boot = judged[("real+synthetic", "real", "pixel_ap")]
    low, high = boot["interval"]
    assert low <= boot["mean"] + 0.05 and boot["mean"] - 0.05 <= high and low < high
    assert judged[("real+synthetic", "real", "aupro")]["interval"] is None  # no bootstrap for AUPRO: one seed ties
    assert judged[("real+synthetic", "real", "aupro")]["verdict"] == "ties"


def test_curve_trains_real_on_shares_and_places_runs_on_it(data, tmp_path):
    res = _seg(data, tmp_path / "c", baselines=["real+synthetic", "copypaste"], curve=[0.25, 0.5, 1.0], seeds=2)
    runs = res["runs"]
    assert runs["real@25%"]["real_images"] == 2 and runs["real@50%"]["real_images"] == 4
    assert runs["real"]["real_images"] == 8  # added to the runs: the curve's top
    worth = {w["run"]: w for w in res["worth"]}
    assert set(worth) == {"real+synthetic", "copypaste"}
    for w in worth.values():
        assert w["labeled"] == 8 and len(w["per_seed"]) == 2
        assert all(p["position"] in ("on the curve", "above the curve", "far above the curve", "below the curve",
                                     "flat curve") for p in w["per_seed"])
    assert res["curve"] == {"shares": [0.25, 0.5, 1.0], "metric": "pixel_ap"}
    assert not any(v["baseline"].startswith("real@") for v in res["verdicts"])
    md = (tmp_path / "c" / "report.md").read_text()
    assert "copypaste" in md.split("| run |")[0]  # its worth line opens the report


@pytest.mark.parametrize("detector", ["exdd", "ast"])
def test_anomaly_detectors_get_the_real_baselines(detector, data, tmp_path):
    res = run_validation(ValidationConfig(
        detector, data / "mv" / "train" / "good", data / "mv", tmp_path / "r", synthetic=None,
        baselines=["none", "real"], real_labeled=data / "mv", resolution=S, steps=8, batch_size=4, n_overlays=0,
        coreset_ratio=0.5, progress=False))
    real, none = res["runs"]["real"], res["runs"]["none"]
    assert real["real_images"] == 8 and none["real_images"] == 0
    if detector == "exdd":  # the labeled defects' patches make the positive bank
        assert real["positive_bank"] > 0 and none["positive_bank"] == 0
    else:  # AST's head trains on the labeled pairs (clean images inpainted)
        assert real["train_images"] == 8 and "no defects" in none["stopped"]


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "seeds must be 1 or more"),
    (["--curve", "0,1.5", "--real-labeled", "{mv}"], "must lie in (0, 1]"),
    (["--curve", "half"], "--curve takes shares"),
    (["--curve", "0.5,1"], "curve trains the real run on shares of the labeled defects"),
])
def test_bad_seeds_and_curves_are_one_line_and_write_nothing(args, message, data, tmp_path, run_cli):
    out = tmp_path / "r"
    args = [a.replace("{mv}", str(data / "mv")) for a in args]
    code, _, err = run_cli("validate", "--detector", "seg", "--train", data / "mv" / "train" / "good", "--test",
                           data / "mv", "--synthetic", data / "syn", "--baselines", "draem", "--resolution", S,
                           "--out", out, *args)
    assert code == 2 and message in err and not out.exists(), err
    assert len([line for line in err.strip().splitlines() if line.startswith("error:")]) == 1, err
