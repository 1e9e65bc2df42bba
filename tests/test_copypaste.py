"""The copy-paste baseline: exact masks, classes from the labeled set, placement on the part, determinism, errors,
and the validation helper `copypaste_set`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO

from defectgen.errors import DefectgenError
from defectgen.io.images import read_image, read_mask
from defectgen.io.sample import Box, Sample
from defectgen.synth.copypaste import CopyPasteGenerator, copypaste_set, defects_from
from defectgen.synth.options import SynthesisOptions
from defectgen.synth.pipeline import load_generator, synthesize
from tests.conftest import square_mask, texture, write_png


def check_set(out: Path) -> COCO:
    """pycocotools reads the set; each mask is its annotations' union and exactly where the image may differ from
    its source normal: nothing outside it differs, most of it does."""
    coco = COCO(str(out / "annotations.json"))
    assert coco.getImgIds()
    for image_id in coco.getImgIds():
        im = coco.loadImgs(image_id)[0]
        image, mask = read_image(out / im["file_name"]), read_mask(out / im["mask_file"])
        normal = read_image(im["source"])
        assert image.shape == normal.shape and image.dtype == normal.dtype and mask.any()
        union = np.zeros_like(mask)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            union |= coco.annToMask(ann).astype(bool)
        assert np.array_equal(union, mask)
        differs = np.any(image != normal, axis=2)
        assert not differs[~mask].any()
        assert differs[mask].mean() > 0.5
    return coco


def labeled_pairs(root: Path, rng, classes=(("bright", 250), ("dark", 5)), size=32, side=6, per_class=3) -> Path:
    """Pairs layout: flat defects of a known value on a texture, one folder per class."""
    for cls, value in classes:
        for i in range(per_class):
            img = texture(rng, size, size)
            mask = square_mask(size, size, 4 + 3 * i, 6 + 2 * i, side)
            img[mask > 0] = value
            write_png(root / cls / f"{i}.png", img)
            write_png(root / cls / f"{i}_mask.png", mask)
    return root


def half_dark_normals(folder: Path, rng, n=3, h=48, w=64) -> Path:
    """A part on the right half, dark background on the left."""
    for i in range(n):
        img = np.zeros((h, w), np.uint8) + rng.integers(0, 12, (h, w), dtype=np.uint8)
        img[:, w // 2:] = texture(rng, h, w - w // 2)
        write_png(folder / f"{i}.png", img)
    return folder


def test_cli_writes_an_exact_coco_set_with_the_labeled_classes(mvtec_dir, tmp_path, run_cli):
    normals = mvtec_dir / "train" / "good"
    args = ("synthesize", "--model", "copypaste", "--labeled", mvtec_dir, "--normals", normals, "--n", "8")
    code, out, err = run_cli(*args, "--out", tmp_path / "s")
    assert code == 0, err
    assert "wrote 8 sample(s)" in out
    coco = check_set(tmp_path / "s")
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["scratch"]  # from labeled/scratch
    info = coco.dataset["info"]["defectgen"]
    assert info["generator"] == "copypaste" and info["settings"]["masks"]["kind"] == "copypaste"
    assert info["settings"]["masks"]["masks"] == {"scratch": 2}  # the labeled/ split, not test/

    assert run_cli(*args, "--out", tmp_path / "again")[0] == 0
    assert run_cli(*args, "--seed", "1", "--out", tmp_path / "other")[0] == 0
    for sub in ("images", "masks"):
        names = sorted(p.name for p in (tmp_path / "s" / sub).iterdir())
        assert len(names) == 8
        for name in names:
            assert (tmp_path / "s" / sub / name).read_bytes() == (tmp_path / "again" / sub / name).read_bytes()
    first = [json.loads((tmp_path / d / "annotations.json").read_text())["annotations"] for d in ("s", "again")]
    assert first[0] == first[1]
    assert any((tmp_path / "s" / "images" / n).read_bytes() != (tmp_path / "other" / "images" / n).read_bytes()
               for n in names)


def one_line_error(result: tuple[int, str, str], *words: str) -> None:
    code, _, err = result
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) <= 2 and lines[0].startswith("error:"), err  # rich may wrap a long line once
    for word in words:
        assert word in err.replace("\n", " "), err


def test_cli_errors(mvtec_dir, tmp_path, run_cli):
    base = ("synthesize", "--model", "copypaste", "--normals", mvtec_dir / "train" / "good", "--n", "2")
    one_line_error(run_cli(*base, "--out", tmp_path / "o1"), "--labeled")
    one_line_error(run_cli(*base, "--labeled", tmp_path / "missing", "--out", tmp_path / "o2"), "missing")
    one_line_error(run_cli(*base, "--labeled", mvtec_dir / "train" / "good", "--out", tmp_path / "o3"),
                   "no defects")  # normal images only
    one_line_error(run_cli(*base, "--labeled", mvtec_dir, "--masks-from", mvtec_dir, "--out", tmp_path / "o4"),
                   "own masks")
    one_line_error(run_cli(*base, "--labeled", mvtec_dir, "--blend", "soft", "--out", tmp_path / "o5"), "soft")
    assert not any((tmp_path / f"o{k}").exists() and any((tmp_path / f"o{k}").iterdir()) for k in range(1, 6))


def test_load_generator_errors(tmp_path):
    with pytest.raises(DefectgenError, match="`labeled`"):
        load_generator("copypaste")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DefectgenError, match="empty"):
        load_generator("copypaste", labeled=tmp_path / "empty")


def test_defects_land_on_the_part_with_their_class(tmp_path, rng):
    labeled = labeled_pairs(tmp_path / "labeled", rng)
    normals = half_dark_normals(tmp_path / "good", rng)
    for blend in ("paste", "seamless"):
        out = tmp_path / blend
        synthesize(load_generator("copypaste", labeled=labeled, blend=blend), normals, out, 10,
                   SynthesisOptions(seed=4, progress=False))
        coco = check_set(out)
        assert {c["name"] for c in coco.loadCats(coco.getCatIds())} == {"bright", "dark"}
        inside = {"bright": [], "dark": []}
        for image_id in coco.getImgIds():
            im = coco.loadImgs(image_id)[0]
            mask = read_mask(out / im["mask_file"])
            assert not mask[:, :32].any(), f"{blend}: a defect on the dark background in {im['file_name']}"
            (cat,) = {a["category_id"] for a in coco.loadAnns(coco.getAnnIds(imgIds=image_id))}
            inside[coco.loadCats(cat)[0]["name"]].append(read_image(out / im["file_name"])[mask])
        assert all(inside.values())
        bright, dark = (float(np.concatenate(inside[c]).mean()) for c in ("bright", "dark"))
        assert bright > dark + 60, (blend, bright, dark)  # the class names the defect that was pasted


def test_channels_bit_depth_and_oversized_defects(tmp_path, rng):
    """RGB labeled defects larger than the normal go onto 16-bit gray normals: converted, scaled down to fit."""
    big = rng.integers(0, 255, (60, 70, 3), dtype=np.uint8)
    mask = np.zeros((60, 70), bool)
    mask[2:58, 3:68] = True
    gen = CopyPasteGenerator([Sample(big, mask, "stain")], rotate=0, elastic=0)
    normal = (texture(rng, 20, 24)[:, :, None].astype(np.uint16) * 257)
    flt = (normal / 65535.0).astype(np.float32)
    for seed in range(4):
        m = gen.make_mask(normal, "stain", seed)
        assert m.shape == (20, 24) and m.sum() > 0.5 * 20 * 24
        out = gen.generate([flt], [m], [seed], ["stain"])[0]
        assert out.shape == (20, 24, 1)
        assert np.array_equal(out[~m], flt[~m]) and np.any(out[m] != flt[m])
    other = np.zeros_like(m)
    other[5:9, 5:9] = True  # not the defect's mask: it would be filled only in part
    with pytest.raises(ValueError, match="make_mask"):
        gen.generate([flt], [other], [3], ["stain"])
    with pytest.raises(DefectgenError, match="knows no class"):
        gen.check_class("hole")


def test_defects_from_boxes_and_coco_like_samples(rng):
    img = rng.integers(0, 255, (30, 40, 1), dtype=np.uint8)
    voc = Sample(img, None, "crack", [Box(2, 3, 10, 8, "crack"), Box(20, 10, 30, 25, "spot")])
    found = defects_from([voc, Sample(img, None, "good")])
    assert [d.class_name for d in found] == ["crack", "spot"]
    assert found[0].mask.sum() == 5 * 8  # the whole box region
    assert np.array_equal(found[0].image[found[0].mask], img[3:8, 2:10].reshape(-1, 1))
    seg = np.zeros((30, 40), bool)
    seg[4:6, 4:9] = True
    seg[15:20, 22:25] = True
    coco = Sample(img, seg, "crack", [Box(4, 4, 9, 6, "crack"), Box(22, 15, 25, 20, "spot")])
    found = defects_from([coco])
    assert [(d.class_name, int(d.mask.sum())) for d in found] == [("crack", 10), ("spot", 15)]


def test_copypaste_set_for_validation(rng):
    """Labeled images twice the normals' size: defects come at the normals' scale; sample i depends on (seed, i)."""
    labeled = []
    for i, cls in enumerate(("pit", "pit", "scuff")):
        img = rng.integers(0, 120, (64, 64, 3), dtype=np.uint8)
        mask = np.zeros((64, 64), bool)
        mask[10 + i:26 + i, 20:36] = True  # 16 x 16: 8 x 8 at the normals' scale
        img[mask] = 255
        labeled.append(Sample(img, mask, cls))
    normals = rng.integers(100, 140, (4, 32, 32, 3), dtype=np.uint8)
    images, masks, cleans, names = copypaste_set(normals, labeled, 6, seed=2)
    assert images.shape == (6, 32, 32, 3) and images.dtype == np.uint8
    assert masks.shape == (6, 32, 32) and masks.dtype == bool and cleans.shape == images.shape
    assert len(names) == 6 and set(names) <= {"pit", "scuff"}
    for image, mask, clean in zip(images, masks, cleans, strict=True):
        assert any(np.array_equal(clean, x) for x in normals)
        assert np.array_equal(image[~mask], clean[~mask])
        assert np.any(image != clean, axis=2)[mask].mean() > 0.5
        assert 20 < mask.sum() < 130  # 64 px at scale, times the zoom range; 256 if not rescaled
    again = copypaste_set(normals, labeled, 3, seed=2)
    assert np.array_equal(again[0], images[:3]) and np.array_equal(again[1], masks[:3]) and again[3] == names[:3]
    assert not np.array_equal(copypaste_set(normals, labeled, 3, seed=3)[1], masks[:3])


def test_flips_paste_the_defect_as_recorded_and_full_varies_it(rng):
    image = np.full((32, 32), 100, np.uint8)
    mask = np.zeros((32, 32), np.uint8)
    mask[8:20, 10:14] = 255  # an L: no flip maps it onto itself
    mask[16:20, 14:22] = 255
    image[mask > 0] = (np.arange(32 * 32).reshape(32, 32) % 97 + 150)[mask > 0]  # values tell pixels apart
    labeled = [Sample(image=image[..., None], mask=mask > 0, class_name="l")]
    ys, xs = np.nonzero(mask)
    crop = image[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    crop_mask = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1] > 0
    allowed = [(f(crop), f(crop_mask)) for f in (lambda a: a, np.fliplr, np.flipud, lambda a: a[::-1, ::-1])]
    normal = np.full((48, 48, 1), 0.2, np.float32)
    for augment, faithful in (("flips", True), ("full", False)):
        gen = CopyPasteGenerator(labeled, augment=augment)
        exact = 0
        for seed in range(6):
            m = gen.make_mask(normal, "l", seed)
            out = np.round(gen.generate([normal], [m], [seed], ["l"])[0][..., 0] * 255).astype(np.uint8)
            my, mx = np.nonzero(m)
            got, got_mask = out[my.min():my.max() + 1, mx.min():mx.max() + 1], m[my.min():my.max() + 1,
                                                                                mx.min():mx.max() + 1]
            exact += any(got.shape == c.shape and np.array_equal(got_mask, cm) and np.array_equal(got[cm], c[cm])
                         for c, cm in allowed)
        assert exact == (6 if faithful else 0), augment
    with pytest.raises(DefectgenError, match="augment"):
        CopyPasteGenerator(labeled, augment="some")
