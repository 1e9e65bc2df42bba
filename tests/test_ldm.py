"""Text-guided inpainting LDM: prompt library, tiny model training and loading, synthesis from a prompt, filters."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from defectgen.errors import DefectgenError
from defectgen.io import read_image, read_mask
from tests.conftest import square_mask, texture, write_png


@pytest.fixture(scope="module")
def labeled_dir(tmp_path_factory):
    rng = np.random.default_rng(1)
    root = tmp_path_factory.mktemp("labeled")
    for cls in ("scratch", "pit"):
        for i in range(3):
            write_png(root / cls / f"{i}.png", texture(rng, 32, 32))
            write_png(root / cls / f"{i}_mask.png", square_mask(32, 32, 8 + i, 10, 8))
    return root


@pytest.fixture(scope="module")
def normals_dir(tmp_path_factory):
    rng = np.random.default_rng(2)
    root = tmp_path_factory.mktemp("normals")
    for i in range(3):
        write_png(root / f"{i}.png", texture(rng, 40, 48))  # larger than the model: generated in a window
    return root


@pytest.fixture(scope="module")
def tiny_ldm(labeled_dir, tmp_path_factory):
    from defectgen.diffusion.train_ldm import train_ldm
    from defectgen.diffusion.training import TrainConfig

    out = tmp_path_factory.mktemp("runs") / "ldm"
    cfg = TrainConfig(steps=3, batch_size=2, lr=1e-3, warmup_steps=0, checkpoint_every=100, progress=False, seed=0)
    train_ldm(labeled_dir, out, config=cfg, resolution=32, vae_steps=3, lora_rank=2, log=lambda *_: None,
              prompts=None)
    return out


def test_prompt_library_names_and_free_text(tmp_path):
    from defectgen.prompts import load_library, load_material, resolve_prompt

    lib = load_library()
    assert {"metal", "steel", "tile", "fabric", "wood", "pcb"} <= set(lib)
    assert {"crack", "blowhole", "uneven"} <= set(lib["tile"].defects)
    assert {"crazing", "rolled-in_scale", "scratches"} <= set(lib["steel"].defects)
    r = resolve_prompt("tile/crack", lib)
    assert r.class_name == "crack" and r.prompt in lib["tile"].defects["crack"] and r.negative
    assert resolve_prompt("copper scratches", lib).class_name == "scratches"
    assert resolve_prompt("something odd", lib).class_name == "defect"
    with pytest.raises(DefectgenError, match="unknown defect 'nope'"):
        resolve_prompt("tile/nope", lib)
    with pytest.raises(DefectgenError, match="unknown prompt material"):
        resolve_prompt("marble/crack", lib)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DefectgenError, match="prompt library is empty"):
        load_library(tmp_path / "empty")
    (tmp_path / "bad.yaml").write_text("material: x\ndefects: {}\n")
    with pytest.raises(DefectgenError, match="bad.yaml"):
        load_material(tmp_path / "bad.yaml")


def test_tiny_ldm_loads_as_a_diffusers_inpainting_pipeline(tiny_ldm):
    from diffusers import StableDiffusionInpaintPipeline

    pipe = StableDiffusionInpaintPipeline.from_pretrained(str(tiny_ldm), safety_checker=None,
                                                          requires_safety_checker=False)
    assert pipe.unet.config.in_channels == 9
    meta = json.loads((tiny_ldm / "defectgen.json").read_text())
    assert meta["kind"] == "ldm" and meta["classes"] == ["pit", "scratch"] and meta["resolution"] == 32
    assert meta["lora_rank"] == 2 and not any("lora" in k for k in pipe.unet.state_dict())  # merged, plain UNet
    assert not (tiny_ldm / "_vae_stage").exists()


def test_synthesize_with_prompt_keeps_outside_and_follows_prompt_class(tiny_ldm, normals_dir, tmp_path):
    from defectgen.synth.ldm_generator import LdmGenerator
    from defectgen.synth.options import SynthesisOptions
    from defectgen.synth.pipeline import synthesize

    gen = LdmGenerator(tiny_ldm, prompt="tile/crack", steps=3, device="cpu")
    synthesize(gen, normals_dir, tmp_path / "out", 3,
               SynthesisOptions(masks="bbox", class_name=gen.default_class, seed=4, progress=False),
               log=lambda *_: None)
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["crack"]
    for im in coco["images"]:
        out = read_image(tmp_path / "out" / im["file_name"])
        mask = read_mask(tmp_path / "out" / im["mask_file"])
        normal = read_image(im["source"])
        assert out.shape == normal.shape == (40, 48, 1)  # gray in, gray out, full size
        assert np.array_equal(out[~mask], normal[~mask])
        assert np.abs(out[mask].astype(int) - normal[mask]).mean() > 1


def test_zero_one_and_zero_255_masks_give_the_same_result(tiny_ldm, normals_dir, tmp_path):
    from defectgen.synth.ldm_generator import LdmGenerator
    from defectgen.synth.options import SynthesisOptions
    from defectgen.synth.pipeline import synthesize

    for name, value in (("ones", 1), ("full", 255)):
        m = np.zeros((40, 48), np.uint8)
        m[10:20, 12:30] = value
        write_png(tmp_path / name / "m.png", m)
    gen = LdmGenerator(tiny_ldm, prompt="a dark spot", steps=2, device="cpu")
    for name in ("ones", "full"):
        synthesize(gen, normals_dir, tmp_path / f"out-{name}", 2,
                   SynthesisOptions(masks=tmp_path / name, seed=1, progress=False), log=lambda *_: None)
    for i in range(2):
        a = read_image(tmp_path / "out-ones" / "images" / f"{i:06d}.png")
        b = read_image(tmp_path / "out-full" / "images" / f"{i:06d}.png")
        assert np.array_equal(a, b)
        assert read_mask(tmp_path / "out-ones" / "masks" / f"{i:06d}.png").sum() == 10 * 18


def test_folder_that_is_no_inpainting_model_fails(tmp_path):
    from defectgen.diffusion.pipelines.pipeline_ldm_inpaint import load_inpaint_pipeline

    (tmp_path / "empty").mkdir()
    with pytest.raises(DefectgenError, match="no model_index.json"):
        load_inpaint_pipeline(tmp_path / "empty")
    (tmp_path / "ddpm").mkdir()
    (tmp_path / "ddpm" / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline"}))
    with pytest.raises(DefectgenError, match="ddpm"):
        load_inpaint_pipeline(tmp_path / "ddpm")


def build_tiny_clip(folder):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from defectgen.diffusion.models import byte_level_clip_tokenizer

    torch.manual_seed(0)
    tok = byte_level_clip_tokenizer(folder / "_tok")
    config = CLIPConfig(
        text_config={"vocab_size": len(tok), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 4, "max_position_embeddings": 77, "bos_token_id": tok.bos_token_id,
                     "eos_token_id": tok.eos_token_id, "pad_token_id": tok.pad_token_id},
        vision_config={"image_size": 32, "patch_size": 8, "hidden_size": 32, "intermediate_size": 64,
                       "num_hidden_layers": 1, "num_attention_heads": 4},
        projection_dim=16,
    )
    CLIPModel(config).save_pretrained(str(folder))
    processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32},
                                                                 crop_size={"height": 32, "width": 32}), tokenizer=tok)
    processor.save_pretrained(str(folder))
    return folder


def _fake_output(root, rng, n=6, unchanged=(1, 4)):
    """An output folder in the synthesize contract with known changed/unchanged samples."""
    from defectgen.io.coco import CocoBuilder

    coco = CocoBuilder(["crack"])
    for i in range(n):
        normal = texture(rng, 32, 32)
        write_png(root / "normals" / f"{i}.png", normal)
        mask = square_mask(32, 32, 8, 8, 10) > 0
        out = normal.copy()
        if i not in unchanged:
            out[mask] = 255 - out[mask]
        write_png(root / "out" / "images" / f"{i:06d}.png", out)
        write_png(root / "out" / "masks" / f"{i:06d}.png", mask.astype(np.uint8) * 255)
        image_id = coco.add_image(f"images/{i:06d}.png", 32, 32, image_id=i + 1, mask_file=f"masks/{i:06d}.png",
                                  source=str(root / "normals" / f"{i}.png"))
        coco.add_mask(image_id, mask, "crack")
    coco.save(root / "out" / "annotations.json")
    return root / "out"


def test_change_filter_rejects_unchanged_and_renumbers(tmp_path, rng):
    from pycocotools.coco import COCO

    from defectgen.synth.filters import ChangeFilter, filter_output

    out = _fake_output(tmp_path, rng)
    kept_sources = [json.loads((out / "annotations.json").read_text())["images"][i]["source"] for i in (0, 2, 3, 5)]
    summary = filter_output(out, [ChangeFilter(0.05)], log=lambda *_: None)
    assert (summary.total, summary.kept, summary.removed) == (6, 4, {"change": 2})
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{i:06d}.png" for i in range(4)]
    assert sorted(p.name for p in (out / "rejected" / "images").iterdir()) == ["000001.png", "000004.png"]
    rejected = json.loads((out / "rejected" / "scores.json").read_text())
    assert [r["scores"]["change"] for r in rejected] == [0.0, 0.0]
    coco = COCO(str(out / "annotations.json"))
    assert sorted(coco.getImgIds()) == [1, 2, 3, 4]
    assert [coco.imgs[i]["source"] for i in (1, 2, 3, 4)] == kept_sources
    for i in (1, 2, 3, 4):
        (ann,) = coco.loadAnns(coco.getAnnIds(imgIds=i))
        assert np.array_equal(coco.annToMask(ann).astype(bool), read_mask(out / coco.imgs[i]["mask_file"]))
    assert coco.dataset["info"]["defectgen"]["filters"]["change"]["removed"] == 2


def test_clip_filter_keeps_and_rejects_by_adaptive_threshold(tmp_path, rng):
    from defectgen.synth.filters import ClipFilter, filter_output

    clip_dir = build_tiny_clip(tmp_path / "clip")
    probe = ClipFilter(clip_dir, tau0=0.0)
    assert probe.threshold(0, 10) == 0.0 and probe.keep(0.01, 0, 10) and not ClipFilter(clip_dir, 1.0).keep(0.99, 0, 9)
    assert ClipFilter(clip_dir, tau0=0.8, lam=2.0).threshold(5, 10) == pytest.approx(0.8 * np.exp(-1.0))
    for case, lam in (("flat", 0.0), ("decaying", 3.0)):
        out = _fake_output(tmp_path / case, np.random.default_rng(7), n=8, unchanged=())
        scores = [probe.score(read_image(out / "images" / f"{i:06d}.png"),
                              read_mask(out / "masks" / f"{i:06d}.png"), "crack") for i in range(8)]
        assert all(0.0 < s < 1.0 for s in scores) and len(set(scores)) == 8
        tau0 = float(np.median(scores)) if lam == 0 else max(scores) + 1e-4
        expected = [i for i, s in enumerate(scores) if s > tau0 * np.exp(-lam * i / 8)]
        summary = filter_output(out, [ClipFilter(clip_dir, tau0=tau0, lam=lam)], log=lambda *_: None)
        assert summary.kept == len(expected) and 0 < len(expected) < 8, (case, scores, tau0)
        kept = json.loads((out / "annotations.json").read_text())["images"]
        assert [im["filter_scores"]["clip"] for im in kept] == pytest.approx([scores[i] for i in expected], abs=1e-5)


def test_cli_bad_inputs_fail_with_one_line(tiny_ldm, normals_dir, labeled_dir, tmp_path, run_cli):
    empty_prompts = tmp_path / "empty.yaml"
    empty_prompts.write_text("material: tile\ndefects: {}\n")
    not_inpaint = tmp_path / "not-inpaint"
    not_inpaint.mkdir()
    (not_inpaint / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionInpaintPipeline"}))
    cases = [
        (("synthesize", "--model", tiny_ldm, "--normals", normals_dir, "--n", "1", "--prompt", "tile/nope",
          "--out", tmp_path / "o1"), "unknown defect 'nope'"),
        (("synthesize", "--model", not_inpaint, "--normals", normals_dir, "--n", "1", "--prompt", "a crack",
          "--out", tmp_path / "o2"), "not-inpaint"),
        (("train-ldm", "--labeled", labeled_dir, "--prompts", empty_prompts, "--out", tmp_path / "o3"),
         "empty.yaml"),
        (("filter", tmp_path / "o4", "--filter", "clip"), "--clip-model"),
    ]
    for args, expected in cases:
        code, _, err = run_cli(*args)
        lines = [line for line in err.strip().splitlines() if line.startswith("error:")]
        assert code == 2 and len(lines) == 1 and expected in lines[0], (args, err)
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o3").exists()  # nothing half-made


def test_cli_synthesize_with_prompt_and_change_filter(tiny_ldm, normals_dir, tmp_path, run_cli):
    code, out, err = run_cli("synthesize", "--model", tiny_ldm, "--normals", normals_dir, "--n", "2", "--prompt",
                             "copper scratches", "--steps", "2", "--filter", "change", "--min-change", "0.0",
                             "--out", tmp_path / "s")
    assert code == 0, err
    coco = json.loads((tmp_path / "s" / "annotations.json").read_text())
    assert [c["name"] for c in coco["categories"]] == ["scratches"]
    assert coco["info"]["defectgen"]["filters"]["change"]["removed"] == 0 and "kept 2 of 2" in out
