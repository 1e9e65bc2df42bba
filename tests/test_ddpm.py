"""DDPM training, saving and loading, resuming, and the samplers, on tiny models and 16x16 images (CPU, seconds)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from defectgen.diffusion.ddpm import build_model, load_model, model_at_checkpoint, save_model
from defectgen.diffusion.losses import conditional_loss, unconditional_loss
from defectgen.diffusion.pipelines.pipeline_cddpm import ConditionalDdpmPipeline
from defectgen.diffusion.samplers import guided_inpaint, make_scheduler, perturb_and_denoise
from defectgen.diffusion.train_ddpm import train_ddpm
from defectgen.diffusion.training import TrainConfig, checkpoints
from defectgen.errors import DefectgenError
from tests.conftest import write_png

R = 16




def stripes(rng: np.random.Generator, h: int = 24, w: int = 24, channels: int = 1) -> np.ndarray:
    """A learnable texture: horizontal stripes with a random phase and a little noise."""
    phase = rng.uniform(0, 2 * np.pi)
    y = np.arange(h)[:, None, None]
    img = 128 + 60 * np.sin(y * 0.8 + phase) + rng.normal(0, 5, (h, w, channels))
    img = np.clip(img, 0, 255).astype(np.uint8)
    return img[:, :, 0] if channels == 1 else img


@pytest.fixture
def normals_dir(tmp_path, rng):
    for i in range(8):
        write_png(tmp_path / "good" / f"{i}.png", stripes(rng))
    return tmp_path / "good"


@pytest.fixture
def labeled_dir(tmp_path, rng):
    """Two classes on the same texture: 'bright' squares (white) and 'dark' squares (black)."""
    for cls, value in (("bright", 255), ("dark", 0)):
        for i in range(4):
            img = stripes(rng, R, R)
            mask = np.zeros((R, R), np.uint8)
            y, x = rng.integers(2, 8, size=2)
            mask[y:y + 6, x:x + 6] = 255
            img[mask > 0] = value
            write_png(tmp_path / "labeled" / cls / f"{i}.png", img)
            write_png(tmp_path / "labeled" / cls / f"{i}_mask.png", mask)
    return tmp_path / "labeled"


def fixed_batch(channels: int = 1, b: int = 4, conditional: bool = False) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(123)
    x = torch.from_numpy(np.stack([stripes(rng, R, R, channels).reshape(R, R, channels) for _ in range(b)]))
    batch = {"image": x.permute(0, 3, 1, 2).float() / 127.5 - 1}
    if conditional:
        mask = torch.zeros(b, 1, R, R)
        mask[:, :, 4:10, 5:11] = 1
        batch.update(mask=mask, **{"class": torch.tensor([0, 1] * (b // 2))},
                     box=torch.tensor([[5 / R, 4 / R, 11 / R, 10 / R]] * b))
    return batch


def fixed_loss(loss_fn, module, batch) -> float:
    with torch.no_grad():
        return float(loss_fn(module, batch, generator=torch.Generator().manual_seed(0)))


def quick(steps: int, **kw) -> TrainConfig:
    base = dict(steps=steps, batch_size=4, lr=2e-3, warmup_steps=0, lr_schedule="constant", ema=False,
                checkpoint_every=0, progress=False, seed=0)
    return TrainConfig(**{**base, **kw})


def test_training_lowers_the_loss_on_a_fixed_batch(tmp_path, normals_dir):
    model = train_ddpm(tmp_path / "run", normals_dir, preset="tiny", resolution=R, config=quick(25), log=lambda m: None)
    assert model.kind == "ddpm" and model.channels == 1 and model.resolution == R  # gray data -> 1-channel model
    torch.manual_seed(0)
    initial = build_model("ddpm", R, 1, "tiny")  # the same initialisation train_ddpm started from
    loss_fn = unconditional_loss(model.scheduler)
    batch = fixed_batch()
    before, after = fixed_loss(loss_fn, initial.unet, batch), fixed_loss(loss_fn, model.unet, batch)
    assert after < 0.7 * before, (before, after)
    meta = json.loads((tmp_path / "run" / "defectgen.json").read_text())
    assert meta["data"]["fingerprint"]["files"] == 8 and len(meta["data"]["fingerprint"]["sha256"]) == 64
    assert meta["training"]["steps"] == 25 and meta["version"]


def test_conditional_training_lowers_its_loss_and_records_classes(tmp_path, labeled_dir, normals_dir):
    model = train_ddpm(tmp_path / "run", normals_dir, labeled_dir, preset="tiny", resolution=R, config=quick(25),
                       log=lambda m: None)
    assert model.kind == "cddpm" and model.class_names == ["bright", "dark"]
    assert model.unet.config.in_channels == 2 * 1 + 1
    assert model.meta["conditioning"]["box_geometry"] and model.meta["class_counts"] == {"bright": 4, "dark": 4}
    torch.manual_seed(0)
    initial = build_model("cddpm", R, 1, "tiny", ["bright", "dark"], box_geometry=True)
    loss_fn = conditional_loss(model.scheduler, null_class=2, class_dropout=0.0)
    batch = fixed_batch(conditional=True)
    assert fixed_loss(loss_fn, model.module(), batch) < 0.8 * fixed_loss(loss_fn, initial.module(), batch)


@pytest.mark.parametrize("kind", ["ddpm", "cddpm"])
def test_save_then_load_gives_identical_outputs(tmp_path, kind):
    torch.manual_seed(1)
    model = build_model(kind, R, 3, "tiny", ["a", "b"] if kind == "cddpm" else None, box_geometry=True)
    save_model(model, tmp_path / "m", note="x")
    loaded = load_model(tmp_path / "m")
    assert loaded.meta["note"] == "x" and loaded.channels == 3 and loaded.kind == kind
    x = torch.randn(2, 3, R, R, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 500])
    with torch.no_grad():
        if kind == "ddpm":
            a, b = model.unet(x, t).sample, loaded.unet(x, t).sample
        else:
            args = (x, t, torch.ones(2, 1, R, R), x * 0, torch.tensor([0, 2]), torch.rand(2, 4))
            a, b = model.module()(*args), loaded.module()(*args)
    assert torch.equal(a, b)
    if kind == "ddpm":  # the folder is a plain diffusers pipeline too
        from diffusers import DDPMPipeline

        pipe = DDPMPipeline.from_pretrained(tmp_path / "m")
        assert pipe.unet.config.sample_size == R


@pytest.mark.parametrize("save_on_interrupt", [True, False])
def test_resume_continues_at_the_saved_step_and_matches_an_uninterrupted_run(tmp_path, normals_dir,
                                                                             save_on_interrupt):
    """Ctrl-C after step 3 saves step 3 (or, like a killed run, leaves step 2); either way --resume ends with
    the weights of an uninterrupted run."""
    from defectgen.diffusion.training import Interrupted

    cfg = quick(4, checkpoint_every=2, ema=True, lr_schedule="cosine", warmup_steps=1)
    whole = train_ddpm(tmp_path / "whole", normals_dir, preset="tiny", resolution=R, config=cfg, log=lambda m: None)

    def crash(step, loss):
        if step == 3:
            raise KeyboardInterrupt

    cut_cfg = quick(4, checkpoint_every=2, ema=True, lr_schedule="cosine", warmup_steps=1,
                    save_on_interrupt=save_on_interrupt)
    with pytest.raises(Interrupted, match="interrupted at step 3") as info:
        train_ddpm(tmp_path / "cut", normals_dir, preset="tiny", resolution=R, config=cut_cfg, callback=crash,
                   log=lambda m: None)
    assert info.value.exit_code == 130
    saved = [3] if save_on_interrupt else []
    assert [s for s, _ in checkpoints(tmp_path / "cut")] == [2, *saved]
    seen, messages = [], []
    resumed = train_ddpm(tmp_path / "cut", normals_dir, preset="tiny", resolution=R, config=cfg, resume=True,
                         callback=lambda step, loss: seen.append(step), log=messages.append)
    assert seen == ([4] if save_on_interrupt else [3, 4])
    assert any(f"step {3 if save_on_interrupt else 2}" in m for m in messages)
    for p, q in zip(whole.unet.parameters(), resumed.unet.parameters(), strict=True):
        assert torch.equal(p, q)


def test_output_folder_is_not_replaced_without_overwrite(tmp_path, normals_dir):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("x")
    with pytest.raises(DefectgenError, match="not empty"):
        train_ddpm(tmp_path / "run", normals_dir, preset="tiny", resolution=R, config=quick(1))
    assert (tmp_path / "run" / "keep.txt").exists()


def test_load_rejects_folders_that_are_not_defectgen_models(tmp_path):
    with pytest.raises(DefectgenError, match="not a defectgen model"):
        load_model(tmp_path)
    (tmp_path / "defectgen.json").write_text(json.dumps({"kind": "ddpm", "resolution": 16, "channels": 1}))
    with pytest.raises(DefectgenError, match="cannot load the model weights"):
        load_model(tmp_path)


def test_trained_conditional_folder_is_a_diffusers_pipeline_and_old_folders_still_load(tmp_path, labeled_dir):
    train_ddpm(tmp_path / "run", labeled=labeled_dir, preset="tiny", resolution=R, config=quick(2),
               log=lambda m: None)
    index = json.loads((tmp_path / "run" / "model_index.json").read_text())
    assert index["_class_name"] == "ConditionalDdpmPipeline"
    assert index["condition"] == ["defectgen.diffusion.ddpm", "ConditionEmbedding"]
    pipe = ConditionalDdpmPipeline.from_pretrained(tmp_path / "run", local_files_only=True)
    x0 = torch.zeros(2, 1, R, R)
    mask = torch.zeros(2, 1, R, R)
    mask[:, :, 4:12, 4:12] = 1
    out = pipe(x0, mask, [0, 1], num_inference_steps=3, seeds=[1, 2]).images
    assert out.shape == (2, 1, R, R) and torch.isfinite(out).all()
    assert torch.equal(out * (1 - mask), x0 * (1 - mask)) and (out * mask).abs().sum() > 0
    as_np = pipe(x0, mask, [0, 1], num_inference_steps=3, seeds=[1, 2], output_type="np").images
    assert as_np.shape == (2, R, R, 1) and np.allclose(as_np, (out.numpy().transpose(0, 2, 3, 1) + 1) / 2)
    # A folder saved before conditional models were pipelines (no model_index.json) loads the same weights.
    (tmp_path / "run" / "model_index.json").unlink()
    old = load_model(tmp_path / "run")
    again = old.pipeline()(x0, mask, [0, 1], num_inference_steps=3, seeds=[1, 2]).images
    assert torch.equal(again, out)


@pytest.mark.parametrize("content", [b"{not json", b"[1, 2]", b"\xff\xfe{"], ids=["syntax", "list", "not-utf8"])
def test_corrupt_metadata_is_a_one_line_error_naming_the_file(tmp_path, content):
    from defectgen.diffusion.folder import read_metadata

    path = tmp_path / "defectgen.json"
    path.write_bytes(content)
    for read in (load_model, lambda folder: read_metadata(folder, required=False)):
        with pytest.raises(DefectgenError) as info:
            read(tmp_path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and "\n" not in message and "JSON" in message


def test_perturb_and_denoise_keeps_the_outside_and_depends_only_on_the_seed():
    torch.manual_seed(0)
    model = build_model("ddpm", R, 1, "tiny")
    x0 = torch.from_numpy(np.stack([stripes(np.random.default_rng(i), R, R)[None] for i in range(3)])).float()
    x0 = x0 / 127.5 - 1
    mask = torch.zeros(3, 1, R, R)
    mask[:, :, 4:12, 4:12] = 1
    for sampler in ("ddpm", "ddim", "dpm"):
        out = perturb_and_denoise(model.unet, model.scheduler, x0, mask, [1, 2, 3], 0.5, 1.0, sampler, 4)
        assert torch.allclose(out * (1 - mask), x0.clamp(-1, 1) * (1 - mask), atol=1e-6)
        assert (out - x0).abs()[mask.bool().expand_as(x0)].mean() > 0.05
        alone = perturb_and_denoise(model.unet, model.scheduler, x0[1:2], mask[1:2], [2], 0.5, 1.0, sampler, 4)
        assert torch.allclose(alone, out[1:2], atol=1e-4)


def test_guided_sampling_uses_the_class():
    torch.manual_seed(0)
    model = build_model("cddpm", R, 1, "tiny", ["a", "b"], box_geometry=True)
    with torch.no_grad():  # make the class embeddings clearly different
        model.condition.class_embedding.weight.mul_(20)
    den = model.module().eval()
    x0 = torch.zeros(2, 1, R, R)
    mask = torch.zeros(2, 1, R, R)
    mask[:, :, 4:12, 4:12] = 1
    boxes = torch.tensor([[0.25, 0.25, 0.75, 0.75]] * 2)

    def run(classes, guidance):
        return guided_inpaint(den, model.scheduler, x0, mask, torch.tensor(classes), 2, [5, 5], guidance, boxes,
                              "ddim", 4)

    guided = run([0, 1], 3.0)
    assert (guided[0] - guided[1]).abs().max() > 1e-3  # same seed and mask: only the class differs
    null_only = run([0, 1], 0.0)
    assert torch.allclose(null_only[0], null_only[1], atol=1e-6)  # guidance 0 ignores the class


class _Overshooting(torch.nn.Module):
    """A badly trained UNet's caricature: it sees half the noise there is, so its x0 estimates overshoot."""

    def forward(self, x, t):
        from types import SimpleNamespace

        return SimpleNamespace(sample=0.5 * x)


def test_every_sampler_clips_x0_estimates_as_the_training_scheduler_says():
    model = build_model("ddpm", R, 1, "tiny")
    assert model.scheduler.config.clip_sample
    x0 = torch.zeros(2, 1, R, R)
    mask = torch.ones(2, 1, R, R)
    saturated = {}
    for sampler in ("ddim", "dpm"):
        out = perturb_and_denoise(_Overshooting(), model.scheduler, x0, mask, [1, 2], 1.0, 0.0, sampler, 10)
        saturated[sampler] = float((out.abs() > 0.99).float().mean())
    # DPM-Solver has no clip_sample: without thresholding 91% of the pixels end saturated (noise). Its data-
    # prediction update still differs from DDIM's once x0 is clipped, so it stays above DDIM's 0%.
    assert make_scheduler("dpm", model.scheduler).config.thresholding
    assert saturated["ddim"] < 0.1 and saturated["dpm"] < 0.75, saturated


def test_a_checkpoint_gives_its_ema_or_trained_weights_and_saves_as_a_model(tmp_path, labeled_dir):
    cfg = quick(4, ema=True, checkpoint_every=2)
    final = train_ddpm(tmp_path / "run", labeled=labeled_dir, preset="tiny", resolution=R, config=cfg,
                       log=lambda m: None)
    params = lambda m: dict(m.module().named_parameters())  # noqa: E731
    ema = model_at_checkpoint(tmp_path / "run")  # the last checkpoint's EMA: what the run saved as its model
    assert all(torch.equal(v, params(ema)[k]) for k, v in params(final).items())
    raw = model_at_checkpoint(tmp_path / "run", ema=False)
    assert any(not torch.equal(v, params(raw)[k]) for k, v in params(final).items())
    early = model_at_checkpoint(tmp_path / "run", step=2, ema=False)
    assert any(not torch.equal(v, params(raw)[k]) for k, v in params(early).items())
    save_model(raw, tmp_path / "raw")
    again = load_model(tmp_path / "raw")
    assert again.meta["weights"] == {"run": str(tmp_path / "run"), "checkpoint": 4, "ema": False}
    assert all(torch.equal(v, params(again)[k]) for k, v in params(raw).items())
    with pytest.raises(DefectgenError, match="no checkpoint at step 3 .saved: 2, 4."):
        model_at_checkpoint(tmp_path / "run", step=3)


def test_a_checkpoint_without_ema_weights_is_a_clear_error(tmp_path, labeled_dir):
    train_ddpm(tmp_path / "run", labeled=labeled_dir, preset="tiny", resolution=R, config=quick(2, checkpoint_every=1),
               log=lambda m: None)
    assert model_at_checkpoint(tmp_path / "run", ema=False).meta["weights"]["ema"] is False
    with pytest.raises(DefectgenError, match="no EMA weights"):
        model_at_checkpoint(tmp_path / "run")
    (tmp_path / "run" / "checkpoints" / "step-00000002" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(DefectgenError, match="model.safetensors"):
        model_at_checkpoint(tmp_path / "run", ema=False)
