"""Semi-supervised seg with pseudo-labels (`defectgen.detect.semi`, `validate --semi`), on tiny data made here
(32x32 gray textures, bright squares as defects; tiny random backbone; CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from defectgen.detect.base import DetectorOptions, get_detector
from defectgen.detect.seg import IGNORE
from defectgen.detect.semi import DefectReference, PseudoLabelRule, pseudo_label
from defectgen.errors import DefectgenError
from tests.conftest import texture, write_png

S = 64  # the tiny backbone's finest level has stride 4: a 12-20 px square spans a few of its patches


def _square(rng, img, value=250):
    size = int(rng.integers(12, 21))
    y, x = (int(v) for v in rng.integers(1, S - size - 1, 2))
    img, m = img.copy(), np.zeros((S, S), bool)
    img[y:y + size, x:x + size] = value
    m[y:y + size, x:x + size] = True
    return img, m


def _normals(rng, n):
    return np.stack([texture(rng, S, S) for _ in range(n)])[..., None]


def _defects(rng, n):
    pairs = [_square(rng, img) for img in _normals(rng, n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


@pytest.fixture(scope="module")
def trained():
    """A seg model fitted on bright squares, the backbone, its training defects and normals."""
    from defectgen.detect import load_backbone

    bb = load_backbone("tiny")
    rng = np.random.default_rng(0)
    normals = _normals(rng, 12)
    defects, masks = _defects(rng, 12)
    det = get_detector("seg").from_options(bb, DetectorOptions(steps=120, batch_size=8, lr=3e-3))
    det.fit(normals, defects, masks, class_names=["spot"])
    return det, bb, defects, masks, normals


def test_teacher_is_the_moving_average_and_finds_what_the_student_finds(trained):
    det, *_ = trained
    teacher = det.teacher()
    assert teacher.backbone is det.backbone and teacher.class_names == ["spot"]
    student_w, teacher_w = det.head.weight.detach(), teacher.head.weight.detach()
    assert not np.allclose(student_w.numpy(), teacher_w.numpy())  # an average, not a copy of the last step
    rng = np.random.default_rng(5)
    held, held_masks = _defects(rng, 4)
    from defectgen.metrics import pixel_auroc

    assert pixel_auroc(held_masks, teacher.predict(held)[0]) > 0.9
    with pytest.raises(RuntimeError, match="fitted"):
        get_detector("seg").from_options(det.backbone, DetectorOptions()).teacher()


def test_pseudo_labels_only_above_the_threshold(trained):
    det, *_ = trained
    rng = np.random.default_rng(7)
    squares, square_masks = _defects(rng, 6)
    unlabeled = np.concatenate([squares, _normals(rng, 4)])
    teacher = det.teacher()
    prob, _ = teacher.predict_labels(unlabeled)
    loose, loose_counts = pseudo_label(teacher, unlabeled, PseudoLabelRule(threshold=0.5, feature_share=0))
    strict, strict_counts = pseudo_label(teacher, unlabeled, PseudoLabelRule(threshold=0.95, feature_share=0))
    assert loose_counts["kept"] >= 4 and strict_counts["kept"] < loose_counts["kept"]
    assert strict_counts["dropped_confidence"] == strict_counts["regions"] - strict_counts["kept"]
    for data in (loose, strict):
        if data["images"] is None:
            continue
        for img, mask in zip(data["images"], data["masks"], strict=True):
            i = next(k for k in range(len(unlabeled)) if np.array_equal(unlabeled[k], img))
            assert prob[i][mask].mean() >= (0.5 if data is loose else 0.95) - 1e-6
    # the kept regions lie mostly on the planted squares (a teacher may still err on a normal)
    on_squares = 0
    for img, mask in zip(loose["images"], loose["masks"], strict=True):
        i = next(k for k in range(len(unlabeled)) if np.array_equal(unlabeled[k], img))
        on_squares += i < 6 and (mask & square_masks[i]).sum() > 0.5 * mask.sum()
    assert on_squares >= 4 and on_squares >= 0.75 * len(loose["images"])
    assert set(np.unique(loose["labels"])) <= {0, 1, IGNORE} and loose["class_names"] == ["spot"]
    nothing, counts = pseudo_label(teacher, unlabeled, PseudoLabelRule(threshold=1.0, feature_share=0))
    assert nothing["images"] is None and counts["kept"] == 0 and counts["images_used"] == 0


def test_feature_check_drops_a_planted_normal_looking_region(trained):
    det, bb, defects, masks, normals = trained
    reference = DefectReference(bb, defects, masks, normals)
    rng = np.random.default_rng(11)
    img = texture(rng, S, S)[..., None]
    square, stain = np.zeros((S, S), bool), np.zeros((S, S), bool)
    square[6:22, 6:22] = True
    stain[40:56, 40:56] = True  # a plain patch of texture, away from the square
    img[square] = 250
    teacher = det.teacher()
    prob = np.zeros((1, S, S), np.float32)
    prob[0][square | stain] = 0.95  # a confident teacher on both: only the feature check can tell them apart
    teacher.predict_labels = lambda images: (prob[:len(images)], np.zeros((len(images), S, S), int))
    data, counts = pseudo_label(teacher, img[None], PseudoLabelRule(threshold=0.7, feature_share=0.5), reference)
    assert counts["regions"] == 2 and counts["kept"] == 1 and counts["dropped_feature"] == 1
    assert np.array_equal(data["masks"][0], square)
    assert (data["labels"][0][stain] == IGNORE).all()  # a dropped region is left out, not called normal
    with pytest.raises(DefectgenError, match="semi_threshold"):
        PseudoLabelRule(threshold=1.5)


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """mv: MVTec layout (train/good 8, test good 3 + spot 3, labeled/spot 3); unlabeled: 6 spots and 2 normals
    as plain images."""
    root = tmp_path_factory.mktemp("semi")
    rng = np.random.default_rng(3)
    mv = root / "mv"
    for i in range(8):
        write_png(mv / "train" / "good" / f"{i:03d}.png", texture(rng, S, S))
    for i in range(3):
        write_png(mv / "test" / "good" / f"{i:03d}.png", texture(rng, S, S))
        for split, name in (("test", f"{i:03d}"), ("labeled", f"l{i}")):
            img, m = _square(rng, texture(rng, S, S))
            write_png(mv / split / "spot" / f"{name}.png", img)
            mask_dir = mv / "ground_truth" / "spot" if split == "test" else mv / "labeled" / "spot"
            write_png(mask_dir / f"{name}_mask.png", m.astype(np.uint8) * 255)
    for i in range(8):
        img = texture(rng, S, S) if i >= 6 else _square(rng, texture(rng, S, S))[0]
        write_png(root / "unlabeled" / f"u{i}.png", img)
    (root / "empty").mkdir()
    return root


def test_cli_semi_adds_a_pseudo_twin_per_run(sets, tmp_path, run_cli):
    out = tmp_path / "report"
    code, stdout, stderr = run_cli(
        "validate", "--detector", "seg", "--train", sets / "mv" / "train" / "good", "--test", sets / "mv",
        "--synthetic", "none", "--real-labeled", sets / "mv", "--baselines", "real", "--semi", sets / "unlabeled",
        "--semi-threshold", "0.5", "--semi-feature-share", "0", "--resolution", S, "--steps", 60,
        "--batch-size", 4, "--lr", "3e-3", "--overlays", 0, "--out", out)
    assert code == 0, stdout + stderr
    report = json.loads((out / "report.json").read_text())
    assert report["config"]["semi"] == str(sets / "unlabeled")
    assert report["config"]["semi_rule"] == {"threshold": 0.5, "feature_share": 0.0, "ignore_above": 0.3}
    assert list(report["runs"]) == ["real", "real+pseudo"]
    c = report["runs"]["real+pseudo"]["pseudo"]
    assert c["unlabeled_images"] == 8 and 1 <= c["images_used"] <= 8
    assert c["regions"] == c["kept"] + c["dropped_confidence"] + c["dropped_feature"]
    assert report["runs"]["real+pseudo"]["real_images"] == 3
    assert "Pseudo-labels of `real+pseudo`" in (out / "report.md").read_text()


def _one_line_exit_2(run_cli, out, *args):
    code, stdout, stderr = run_cli("validate", *args, "--resolution", S, "--steps", 2, "--overlays", 0, "--out", out)
    lines = [x for x in (stdout + stderr).strip().splitlines() if x.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error:"), stdout + stderr
    assert not out.exists()
    return lines[0]


def test_semi_bad_input_exit_2_with_one_line(sets, tmp_path, run_cli):
    base = ["--train", sets / "mv" / "train" / "good", "--test", sets / "mv", "--synthetic", "none",
            "--real-labeled", sets / "mv"]
    line = _one_line_exit_2(run_cli, tmp_path / "o1", "--detector", "seg", *base, "--baselines", "real",
                            "--semi", sets / "empty")
    assert "empty" in line and "no images" in line
    line = _one_line_exit_2(run_cli, tmp_path / "o2", "--detector", "exdd", *base, "--baselines", "draem",
                            "--semi", sets / "unlabeled")
    assert "--semi" in line and "exdd" in line
    line = _one_line_exit_2(run_cli, tmp_path / "o3", "--detector", "seg", *base, "--baselines", "real",
                            "--semi", sets / "unlabeled", "--tile", 32)
    assert "--semi" in line and "--tile" in line
