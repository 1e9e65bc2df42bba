"""The synthesize pipeline and verb: output contract, bit-exact outside, COCO round trip, resume, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from defectgen.diffusion.ddpm import build_model, save_model
from defectgen.diffusion.train_ddpm import train_ddpm
from defectgen.diffusion.training import TrainConfig
from defectgen.errors import DefectgenError
from defectgen.io.images import read_image, read_mask
from defectgen.io.sample import Sample
from defectgen.synth.base import GENERATORS, generator_names, register_generator
from defectgen.synth.options import SynthesisOptions
from defectgen.synth.pipeline import load_generator, sample_seed, synthesize
from tests.conftest import square_mask, texture, write_png

R = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Untrained tiny models are enough to test the plumbing: ddpm (1 channel), cddpm (1 channel, 2 classes)."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    save_model(build_model("ddpm", R, 1, "tiny"), root / "ddpm")
    model = build_model("cddpm", R, 1, "tiny", ["crack", "spot"], box_geometry=True)
    save_model(model, root / "cddpm", class_counts={"crack": 3, "spot": 1})
    return {"ddpm": root / "ddpm", "cddpm": root / "cddpm"}


@pytest.fixture
def normals(tmp_path, rng) -> Path:
    """Mixed normals: 8-bit gray larger than the model, 16-bit RGB, and one smaller than the model."""
    folder = tmp_path / "good"
    write_png(folder / "a.png", texture(rng, 40, 48))
    write_png(folder / "b.png", (texture(rng, 24, 24, 3).astype(np.uint16) * 257))
    write_png(folder / "c.png", texture(rng, 12, 14))
    return folder


def gen(models, kind="ddpm", **kw):
    return load_generator(models[kind], sampler="ddim", steps=3, device="cpu", **kw)


def outputs(out: Path, normals: Path):
    coco = json.loads((out / "annotations.json").read_text())
    for im in coco["images"]:
        image = read_image(out / im["file_name"])
        mask = read_mask(out / im["mask_file"])
        yield im, image, mask, read_image(im["source"])


def test_outside_the_mask_is_bit_exact_and_inside_changes(tmp_path, models, normals):
    result = synthesize(gen(models), normals, tmp_path / "out", 9,
                        SynthesisOptions(batch_size=4, seed=3, progress=False))
    assert result.written == 9
    out = tmp_path / "out"
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == ["annotations.json", "contact_sheet.png", "images", "masks"]
    assert len(list((out / "images").glob("*.png"))) == 9 and len(list((out / "masks").glob("*.png"))) == 9
    sources = set()
    for _, image, mask, normal in outputs(out, normals):
        sources.add(Path(_["source"]).name)
        assert image.shape == normal.shape and image.dtype == normal.dtype
        assert mask.shape == image.shape[:2] and mask.any()
        assert np.array_equal(image[~mask], normal[~mask])
        assert np.any(image[mask] != normal[mask])
    assert sources == {"a.png", "b.png", "c.png"}  # every size, channel count and bit depth was exercised


def test_coco_round_trips_through_pycocotools(tmp_path, models, normals):
    synthesize(gen(models), normals, tmp_path / "out", 4, SynthesisOptions(masks="bbox", seed=1, progress=False))
    coco = COCO(str(tmp_path / "out" / "annotations.json"))
    info = coco.dataset["info"]["defectgen"]
    assert info["sampler"] == "ddim" and info["steps"] == 3 and info["seed"] == 1 and info["version"]
    assert info["model"] == str(models["ddpm"])
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["defect"]
    assert sorted(coco.getImgIds()) == [1, 2, 3, 4]  # the one id base of every writer
    assert sorted(coco.getAnnIds()) == list(range(1, len(coco.getAnnIds()) + 1))
    for image_id in coco.getImgIds():
        im = coco.loadImgs(image_id)[0]
        mask = read_mask(tmp_path / "out" / im["mask_file"])
        regions = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)[0] - 1
        assert len(coco.getAnnIds(imgIds=image_id)) == regions  # one annotation per connected region
        union = np.zeros_like(mask)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image_id)):
            part = coco.annToMask(ann).astype(bool)
            ys, xs = np.nonzero(part)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["area"] == part.sum() and ann["iscrowd"] == 0
            union |= part
        assert np.array_equal(union, mask)


def test_same_seed_same_samples_whatever_the_batch_size(tmp_path, models, normals):
    synthesize(gen(models), normals, tmp_path / "a", 4, SynthesisOptions(batch_size=1, seed=5, progress=False))
    synthesize(gen(models), normals, tmp_path / "b", 4, SynthesisOptions(batch_size=4, seed=5, progress=False))
    for i in range(4):
        a = read_image(tmp_path / "a" / "images" / f"{i:06d}.png").astype(int)
        b = read_image(tmp_path / "b" / "images" / f"{i:06d}.png").astype(int)
        assert np.abs(a - b).max() <= 1  # float rounding may differ by batch; the sample does not


def test_resume_completes_an_interrupted_run(tmp_path, models, normals):
    out = tmp_path / "out"
    synthesize(gen(models), normals, out, 5, SynthesisOptions(seed=2, progress=False))
    before = {i: (out / "images" / f"{i:06d}.png").read_bytes() for i in range(5)}
    coco_before = json.loads((out / "annotations.json").read_text())
    (out / "images" / "000003.png").unlink()  # as if killed while writing sample 3 ...
    (out / "images" / ".000004.png.x.tmp").write_bytes(b"half")  # ... leaving a temporary behind
    with pytest.raises(DefectgenError, match="not empty"):
        synthesize(gen(models), normals, out, 5, SynthesisOptions(seed=2, progress=False))
    with pytest.raises(DefectgenError, match="different settings"):
        synthesize(gen(models), normals, out, 5, SynthesisOptions(seed=99, resume=True, progress=False))
    result = synthesize(gen(models), normals, out, 5, SynthesisOptions(seed=2, resume=True, progress=False))
    assert result.written == 1 and result.skipped_existing == 4
    assert not list(out.rglob(".*.tmp"))
    for i in range(5):
        assert (out / "images" / f"{i:06d}.png").read_bytes() == before[i]
    assert json.loads((out / "annotations.json").read_text())["annotations"] == coco_before["annotations"]
    result = synthesize(gen(models), normals, out, 2, SynthesisOptions(seed=2, overwrite=True, progress=False))
    assert len(list((out / "images").glob("*.png"))) == 2


def test_conditional_model_paints_the_chosen_or_drawn_classes(tmp_path, models, normals):
    synthesize(gen(models, "cddpm", guidance=2.0), normals, tmp_path / "one", 3,
               SynthesisOptions(class_name="spot", progress=False))
    coco = json.loads((tmp_path / "one" / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["spot"]
    assert coco["info"]["defectgen"]["settings"]["generator"]["guidance"] == 2.0
    for _, image, mask, normal in outputs(tmp_path / "one", normals):
        assert np.array_equal(image[~mask], normal[~mask]) and np.any(image[mask] != normal[mask])
    synthesize(gen(models, "cddpm"), normals, tmp_path / "drawn", 12, SynthesisOptions(progress=False))
    names = {c["name"] for c in json.loads((tmp_path / "drawn" / "annotations.json").read_text())["categories"]}
    assert names == {"crack", "spot"}
    with pytest.raises(DefectgenError, match="knows no class"):
        synthesize(gen(models, "cddpm"), normals, tmp_path / "bad", 1,
                   SynthesisOptions(class_name="hole", progress=False))


def test_trained_conditional_model_follows_the_class(tmp_path, rng):
    """Bright and dark defects on a flat surface: after a short training, guided samples of each class come out
    brighter / darker inside the mask."""
    for cls, value in (("bright", 250), ("dark", 5)):
        for i in range(6):
            img = np.full((R, R), 128, np.uint8)
            mask = square_mask(R, R, *rng.integers(2, 8, size=2), 6)
            img[mask > 0] = value
            write_png(tmp_path / "labeled" / cls / f"{i}.png", img)
            write_png(tmp_path / "labeled" / cls / f"{i}_mask.png", mask)
        write_png(tmp_path / "good" / f"{cls}.png", np.full((R, R), 128, np.uint8))
    cfg = TrainConfig(steps=120, batch_size=8, lr=3e-3, warmup_steps=0, lr_schedule="constant", ema=False,
                      checkpoint_every=0, progress=False)
    train_ddpm(tmp_path / "run", None, tmp_path / "labeled", preset="tiny", resolution=R, config=cfg,
               class_dropout=0.2, log=lambda m: None)
    means = {}
    for cls in ("bright", "dark"):
        g = load_generator(tmp_path / "run", sampler="ddim", steps=10, guidance=3.0, device="cpu")
        synthesize(g, tmp_path / "good", tmp_path / cls, 4,
                   SynthesisOptions(masks="bbox", class_name=cls, progress=False))
        means[cls] = np.mean([image[mask].mean() for _, image, mask, _ in outputs(tmp_path / cls, None)])
    assert means["bright"] > means["dark"] + 40, means


def test_pipeline_is_generic_over_generators(tmp_path, normals):
    """Any DefectGenerator plugs in through the registry: here one without a model folder or fixed size."""

    class Invert:
        name, resolution, channels = "invert", None, None

        def __init__(self, model, **options):
            self.options = options

        def info(self):
            return {"model": "invert"}

        def generate(self, normals, masks, seeds, class_names):
            return [1.0 - x for x in normals]

    assert {"draem", "copypaste"} <= set(generator_names())  # the built-ins register themselves
    register_generator("invert", Invert)
    try:
        g = load_generator("invert", strength=None, prompt="p")
        assert g.options == {"prompt": "p"}
        synthesize(g, normals, tmp_path / "out", 3, SynthesisOptions(prompt="p", progress=False))
    finally:
        GENERATORS.pop("invert")
    with pytest.raises(DefectgenError, match="copypaste, draem"):
        load_generator(tmp_path / "no-such-model")
    for _, image, mask, normal in outputs(tmp_path / "out", normals):
        peak = 255 if normal.dtype == np.uint8 else 65535
        assert np.array_equal(image[mask], peak - normal[mask])
        assert np.array_equal(image[~mask], normal[~mask])


def test_cli_synthesize_writes_the_set(tmp_path, models, normals, run_cli):
    code, out, err = run_cli("synthesize", "--model", models["ddpm"], "--normals", normals, "--n", "3",
                             "--sampler", "dpm", "--steps", "3", "--strength", "0.6", "--sigma", "1.5",
                             "--device", "cpu", "--out", tmp_path / "out")
    assert code == 0, err
    assert "wrote 3 sample(s)" in out
    info = json.loads((tmp_path / "out" / "annotations.json").read_text())["info"]["defectgen"]
    assert info["sampler"] == "dpm" and info["settings"]["generator"]["strength"] == 0.6


def one_line_error(code: int, err: str, path: Path) -> None:
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) <= 2 and lines[0].startswith("error:") and str(path.name) in err  # rich may wrap once


def test_cli_bad_input_fails_with_one_line_naming_the_file(tmp_path, models, normals, run_cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ("--n", "2", "--steps", "2", "--device", "cpu")
    one_line_error(*run_cli("synthesize", "--model", models["ddpm"], "--normals", empty, "--out", tmp_path / "o1",
                            *args)[:3:2], empty)
    not_model = tmp_path / "not-a-model"
    (not_model / "unet").mkdir(parents=True)
    one_line_error(*run_cli("synthesize", "--model", not_model, "--normals", normals, "--out", tmp_path / "o2",
                            *args)[:3:2], not_model)
    masks = tmp_path / "masks"
    write_png(masks / "m0.png", square_mask(10, 10, 2, 2, 4))  # no normal image is 10x10
    one_line_error(*run_cli("synthesize", "--model", models["ddpm"], "--normals", normals, "--masks", masks,
                            "--out", tmp_path / "o3", *args)[:3:2], masks / "m0.png")
    one_line_error(*run_cli("train-ddpm", "--normals", empty, "--out", tmp_path / "o4", "--preset", "tiny",
                            "--steps", "1")[:3:2], empty)


def test_cli_masks_from_a_labeled_set_reuse_the_real_masks(mvtec_dir, tmp_path, run_cli):
    import cv2

    code, out, err = run_cli("synthesize", "--model", "draem", "--normals", mvtec_dir / "train" / "good", "--n", "4",
                             "--masks-from", mvtec_dir / "labeled", "--out", tmp_path / "real")
    assert code == 0, err
    info = json.loads((tmp_path / "real" / "annotations.json").read_text())["info"]["defectgen"]
    assert info["settings"]["masks"]["kind"] == "real" and info["settings"]["masks"]["masks"] == {"scratch": 2}
    for path in sorted((tmp_path / "real" / "masks").glob("*.png")):
        m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) > 0  # the labeled masks are 4x4 squares on 32x32 images
        ys, xs = np.nonzero(m)
        assert m.sum() == 16 and np.ptp(ys) == 3 and np.ptp(xs) == 3
    code, _, err = run_cli("synthesize", "--model", "draem", "--normals", mvtec_dir / "train" / "good", "--n", "2",
                           "--masks-from", tmp_path / "missing", "--out", tmp_path / "o2")
    assert code == 2 and "missing" in err and len(err.strip().splitlines()) == 1


def test_filter_redraws_the_contact_sheet_from_the_kept_samples(tmp_path, normals):
    """A generator that paints only the samples of even seed: the change filter rejects the others, and the contact
    sheet afterwards shows the kept samples only (fewer tiles than before)."""
    from defectgen.evaluate.report import contact_sheet
    from defectgen.synth.filters import ChangeFilter, filter_output

    class EvenOnly:
        name, resolution, channels = "even", None, None

        def info(self):
            return {"model": "even"}

        def generate(self, normals, masks, seeds, class_names):
            return [1.0 - x if s % 2 == 0 else x for x, s in zip(normals, seeds, strict=True)]

    n, seed = 6, 0
    painted = [i for i in range(n) if sample_seed(seed, i) % 2 == 0]
    assert 0 < len(painted) < n
    out = tmp_path / "out"
    synthesize(EvenOnly(), normals, out, n, SynthesisOptions(seed=seed, progress=False))
    before = read_image(out / "contact_sheet.png")
    summary = filter_output(out, [ChangeFilter(0.02)], log=lambda *_: None)
    assert summary.kept == len(painted)
    after = read_image(out / "contact_sheet.png")
    assert after.shape != before.shape  # fewer tiles: the old sheet kept all n
    coco = json.loads((out / "annotations.json").read_text())
    kept = [Sample(read_image(out / im["file_name"]), read_mask(out / im["mask_file"]), "defect",
                   source=Path(im["source"])) for im in coco["images"]]
    assert np.array_equal(after, contact_sheet(kept, columns=4, zoom=True))
    assert [im["id"] for im in coco["images"]] == list(range(1, len(painted) + 1))
    assert [a["id"] for a in coco["annotations"]] == list(range(1, len(coco["annotations"]) + 1))


def test_contact_sheet_zooms_a_tiny_defect_beside_its_normal(tmp_path):
    from defectgen.evaluate.report import contact_sheet
    from defectgen.io.sample import Sample

    normal = np.full((256, 256, 3), 60, np.uint8)
    write_png(tmp_path / "normal.png", normal)
    image, mask = normal.copy(), np.zeros((256, 256), bool)
    image[100:103, 150:153] = 250  # 3 x 3 pixels: under a pixel at thumbnail size
    mask[100:103, 150:153] = True
    sample = Sample(image, mask, "dot", source=tmp_path / "normal.png")
    tile = 64
    sheet = contact_sheet([sample], tile=tile, zoom=True)
    assert sheet.shape[1] == 3 * (tile + 2) + 2  # thumbnail, zoomed defect, zoomed normal
    cells = [sheet[2:2 + tile, 2 + k * (tile + 2): 2 + k * (tile + 2) + tile] for k in range(3)]
    bright = [(c.min(axis=2) > 200).mean() for c in cells]  # white-ish: the defect (outlines are red)
    assert bright[1] > 0.02 > bright[0], bright  # the zoom shows the defect large, the thumbnail cannot
    assert bright[2] == 0  # the same crop of the normal: no defect
    plain = contact_sheet([sample], tile=tile)
    assert plain.shape[1] == tile + 4


@pytest.fixture
def crack_set(tmp_path, rng) -> Path:
    """An MVTec-style root whose labeled/ split holds two 'crack' defects with masks."""
    root = tmp_path / "labeled-set"
    for i in range(2):
        write_png(root / "train" / "good" / f"g{i}.png", texture(rng, 32, 32))
        image = texture(rng, 32, 32)
        image[10:16, 8:20] = 250
        write_png(root / "labeled" / "crack" / f"l{i}.png", image)
        write_png(root / "labeled" / "crack" / f"l{i}_mask.png", square_mask(32, 32, 10, 8 + i, 6))
    return root


@pytest.mark.parametrize("kind", ["ddpm", "cddpm"])
def test_transplant_redraws_the_pasted_defect_inside_its_own_mask(tmp_path, models, normals, crack_set, kind):
    paste = load_generator("copypaste", labeled=crack_set, augment="flips")  # the transplant's paste
    plant = gen(models, kind, labeled=crack_set, strength=0.7)
    assert plant.name == f"transplant-{kind}" and plant.class_distribution == {"crack": 1.0}
    synthesize(paste, normals, tmp_path / "paste", 4, SynthesisOptions(seed=5, progress=False))
    for run in ("t1", "t2"):
        synthesize(plant, normals, tmp_path / run, 4, SynthesisOptions(seed=5, progress=False))
    changed = 0
    for (_im, image, mask, normal), (_, pasted, pasted_mask, _), (_, again, _, _) in zip(
            outputs(tmp_path / "t1", normals), outputs(tmp_path / "paste", normals),
            outputs(tmp_path / "t2", normals), strict=True):
        assert np.array_equal(mask, pasted_mask)  # the real defect's mask, placed as copy-paste places it
        assert np.array_equal(image[~mask], normal[~mask])
        assert np.array_equal(image, again)  # sample i depends only on (seed, i)
        changed += int(np.any(image[mask] != pasted[mask]))
    assert changed == 4  # the model re-drew every pasted defect
    info = json.loads((tmp_path / "t1" / "annotations.json").read_text())
    assert {c["name"] for c in info["categories"]} == {"crack"}
    assert info["info"]["defectgen"]["settings"]["generator"]["strength"] == 0.7


def test_transplant_keep_core_keeps_the_pasted_core_and_redraws_the_rim(tmp_path, models, normals, crack_set):
    from defectgen.synth.transplant import core_weight

    synthesize(load_generator("copypaste", labeled=crack_set, augment="flips"), normals, tmp_path / "paste", 4,
               SynthesisOptions(seed=5, progress=False))
    synthesize(gen(models, "ddpm", labeled=crack_set, strength=0.7, keep_core=1.0), normals, tmp_path / "core", 4,
               SynthesisOptions(seed=5, progress=False))
    rim_changed = 0
    for (_, image, mask, normal), (_, pasted, pasted_mask, _) in zip(
            outputs(tmp_path / "core", normals), outputs(tmp_path / "paste", normals), strict=True):
        assert np.array_equal(mask, pasted_mask) and np.array_equal(image[~mask], normal[~mask])
        weight = core_weight(mask, 1.0)
        core, rim = weight == 1, mask & (weight == 0)
        assert core.any() and rim.any()
        assert np.array_equal(image[core], pasted[core])  # the real defect's deepest pixels, as pasted
        rim_changed += int(np.any(image[rim] != pasted[rim]))
    assert rim_changed == 4  # the model re-drew every seam


def test_core_weight_rises_from_each_regions_edge():
    from defectgen.synth.transplant import core_weight

    mask = np.zeros((20, 30), bool)
    mask[2:13, 2:13] = True  # an 11 px square: depth 1 at its edge, 6 at its centre
    mask[16, 5:25] = True  # a one-pixel line: all edge
    weight = core_weight(mask, 0.5)
    assert weight[~mask].max() == 0 and weight[16].max() == 0
    assert weight[2, 2:13].max() == 0 and weight[7, 7] == 1  # edge 0, centre 1
    assert 0 < weight[4, 7] < 1  # two pixels in: part way
    assert np.array_equal(core_weight(mask, 0.5) >= core_weight(mask, 1.0), np.ones_like(mask))  # a smaller
    # core reaches full weight sooner


def test_cli_transplant_and_its_strength_check(tmp_path, models, normals, crack_set, run_cli):
    args = ("synthesize", "--model", models["cddpm"], "--labeled", crack_set, "--normals", normals, "--n", "2",
            "--steps", "2", "--device", "cpu")
    code, out, err = run_cli(*args, "--strength", "0.5", "--out", tmp_path / "out")
    assert code == 0, err
    assert json.loads((tmp_path / "out" / "annotations.json").read_text())["info"]["defectgen"]["model"] == \
        "transplant-cddpm"
    code, _, err = run_cli(*args, "--strength", "1.5", "--out", tmp_path / "bad")
    assert code == 2 and "--strength" in err and not (tmp_path / "bad").exists(), err
    code, _, err = run_cli(*args, "--keep-core", "0", "--out", tmp_path / "bad")
    assert code == 2 and "--keep-core" in err and not (tmp_path / "bad").exists(), err
    no_paste = [a for a in args if a not in ("--labeled", crack_set)]
    code, _, err = run_cli(*no_paste, "--keep-core", "0.5", "--out", tmp_path / "bad")
    assert code == 2 and "--keep-core" in err and "--labeled" in err and not (tmp_path / "bad").exists(), err


def test_a_model_with_more_context_is_trained_and_synthesizes_on_its_wider_windows(tmp_path, rng, normals,
                                                                                   monkeypatch):
    from defectgen.diffusion.ddpm import load_model
    from defectgen.io.images import mask_window
    from defectgen.synth import pipeline

    # the window: at least context x resolution native pixels, still around the mask and inside the image
    mask = np.zeros((64, 80), bool)
    mask[30:33, 40:44] = True
    assert mask_window(64, 80, mask, 16)[2:] == (16, 16)
    y0, x0, h, w = mask_window(64, 80, mask, 16, context=2.5)
    assert (h, w) == (40, 40) and y0 <= 30 and y0 + h >= 33 and x0 <= 40 and x0 + w >= 44
    assert mask_window(64, 80, mask, 16, context=8)[2:] == (64, 80)
    with pytest.raises(ValueError, match="at least 1"):
        mask_window(64, 80, mask, 16, context=0.5)

    for i in range(2):
        write_png(tmp_path / "labeled" / "crack" / f"{i}.png", texture(rng, 40, 48))
        write_png(tmp_path / "labeled" / "crack" / f"{i}_mask.png", square_mask(40, 48, 18, 20, 3))
    cfg = TrainConfig(steps=2, batch_size=2, warmup_steps=0, ema=False, checkpoint_every=0, progress=False)
    train_ddpm(tmp_path / "run", None, tmp_path / "labeled", preset="tiny", resolution=R, context=2.0, config=cfg,
               log=lambda m: None)
    assert load_model(tmp_path / "run").context == 2.0
    generator = load_generator(tmp_path / "run", sampler="ddim", steps=3, device="cpu")
    assert generator.context == 2.0 and generator.info()["context"] == 2.0
    windows = []

    def spy(*args, **kw):
        windows.append(kw.get("context", 1.0))
        return mask_window(*args, **kw)
    monkeypatch.setattr(pipeline, "mask_window", spy)
    runs = []
    for name in ("a", "b"):
        synthesize(generator, normals, tmp_path / name, 3, SynthesisOptions(seed=4, progress=False))
        runs.append(list(outputs(tmp_path / name, normals)))
    for (_, image, mask, normal), (_, again, mask_again, _) in zip(*runs, strict=True):
        assert np.array_equal(image[~mask], normal[~mask]) and np.any(image[mask] != normal[mask])
        assert np.array_equal(mask, mask_again) and np.array_equal(image, again)  # a seed gives its sample
    assert windows and set(windows) == {2.0}  # every window was cut as the model was trained
    with pytest.raises(DefectgenError, match="context"):
        train_ddpm(tmp_path / "bad", None, tmp_path / "labeled", preset="tiny", resolution=R, context=0.5,
                   config=cfg, log=lambda m: None)


def test_local_background_keeps_the_outside_and_fills_the_mask_from_around_it():
    from defectgen.diffusion.models import denoising_target, from_target, local_background

    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 5:11, 4:9] = 1
    flat = torch.full((1, 2, 16, 16), 0.3)
    assert torch.allclose(local_background(flat, mask), flat)  # a plain surface fills with itself
    ramp = torch.linspace(-1, 1, 16).expand(1, 1, 16, 16).clone()  # brightness rising left to right
    image = ramp.clone()
    image[mask.bool()] = -1.0  # a dark defect
    background = local_background(image, mask)
    assert torch.equal(background[mask == 0], image[mask == 0])  # the outside, bit for bit
    inside = background[0, 0, 5:11, 4:9]
    assert (inside > -0.8).all() and (inside[:, -1] > inside[:, 0]).all()  # the ramp, not the defect
    assert (inside - ramp[0, 0, 5:11, 4:9]).abs().max() < 0.35
    assert torch.equal(local_background(image, torch.ones_like(mask)), torch.zeros_like(image))  # nothing known

    target, known = denoising_target(image, mask, residual=True)
    assert torch.equal(known, background) and torch.equal(target[mask.expand_as(target) == 0],
                                                          torch.zeros(int((mask == 0).sum())))
    assert (target[mask.bool()] < 0).all()  # the defect is darker than the surface it sits on
    assert torch.allclose(from_target(target, known, residual=True), image, atol=1e-6)
    target, known = denoising_target(image, mask, residual=False)
    assert torch.equal(target, image) and torch.equal(known, image * (1 - mask))


def test_a_residual_model_learns_and_paints_the_defect_over_its_local_background(tmp_path, rng, normals,
                                                                                  crack_set):
    from defectgen.diffusion.ddpm import load_model
    from defectgen.diffusion.losses import conditional_loss
    from defectgen.diffusion.models import local_background
    from defectgen.diffusion.samplers import guided_inpaint

    cfg = TrainConfig(steps=2, batch_size=2, warmup_steps=0, ema=False, checkpoint_every=0, progress=False)
    labeled = crack_set / "labeled"
    train_ddpm(tmp_path / "run", None, labeled, preset="tiny", resolution=R, target="residual", config=cfg,
               log=lambda m: None)
    model = load_model(tmp_path / "run")
    assert model.condition.residual and model.meta["conditioning"]["target"] == "residual"
    generator = load_generator(tmp_path / "run", sampler="ddim", steps=3, device="cpu")
    for name in ("a", "b"):
        synthesize(generator, normals, tmp_path / name, 3, SynthesisOptions(seed=4, progress=False))
    for (_, image, mask, normal), (_, again, mask_again, _) in zip(
            outputs(tmp_path / "a", normals), outputs(tmp_path / "b", normals), strict=True):
        assert np.array_equal(image[~mask], normal[~mask]) and np.any(image[mask] != normal[mask])
        assert np.array_equal(mask, mask_again) and np.array_equal(image, again)  # a seed gives its sample
    plant = load_generator(tmp_path / "run", labeled=crack_set, strength=0.5, sampler="ddim", steps=3, device="cpu")
    synthesize(plant, normals, tmp_path / "plant", 3, SynthesisOptions(seed=4, progress=False))
    for _, image, mask, normal in outputs(tmp_path / "plant", normals):
        assert np.array_equal(image[~mask], normal[~mask])

    # What the network is told is known, in training and in sampling: the background filled in under the mask.
    x0 = torch.linspace(-1, 1, R).expand(2, 1, R, R).clone()
    mask = torch.zeros(2, 1, R, R)
    mask[..., 4:10, 5:11] = 1
    seen = []

    def spy(x_t, t, m, known, classes, boxes=None):
        seen.append(known[: x0.shape[0]].clone())
        return torch.zeros_like(x_t)
    batch = {"image": x0, "mask": mask, "class": torch.zeros(2, dtype=torch.long)}
    conditional_loss(model.scheduler, 1, residual=True)(spy, batch)
    guided_inpaint(spy, model.scheduler, x0, mask, torch.zeros(2, dtype=torch.long), 1, [0, 1], guidance=1.0,
                   steps=2, residual=True)
    conditional_loss(model.scheduler, 1)(spy, batch)
    background = local_background(x0, mask)
    assert background[mask.bool()].abs().min() > 0  # the fill is the ramp, not the image's zeroed inside
    assert torch.equal(seen[0], background) and torch.equal(seen[1], background)
    assert torch.equal(seen[-1], x0 * (1 - mask))  # the image target keeps the zeroed inside

    with pytest.raises(DefectgenError, match="conditional"):
        train_ddpm(tmp_path / "bad", normals, None, preset="tiny", resolution=R, target="residual", config=cfg,
                   log=lambda m: None)
    with pytest.raises(DefectgenError, match="target"):
        train_ddpm(tmp_path / "bad", None, labeled, preset="tiny", resolution=R, target="edges", config=cfg,
                   log=lambda m: None)


def test_a_conditional_model_saved_before_targets_paints_the_image(tmp_path, models):
    from defectgen.diffusion.ddpm import load_model

    old = tmp_path / "old"
    shutil.copytree(models["cddpm"], old)
    config = old / "condition" / "config.json"
    fields = json.loads(config.read_text())
    fields.pop("target")
    config.write_text(json.dumps(fields))
    model = load_model(old)
    assert not model.condition.residual and model.meta["conditioning"].get("target", "image") == "image"
