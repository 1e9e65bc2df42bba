"""The training losses, apart from the networks and the data (as anomalib keeps each model's loss.py). Each
factory returns `loss_fn(model, batch, generator=None)` -> a scalar tensor, what training.train_loop calls.

  unconditional_loss  noise prediction of the unconditional DDPM
  conditional_loss    noise prediction of the conditional DDPM, weighted towards the mask, class dropout
  inpaint_loss        noise (or v) prediction of the inpainting LDM's UNet on latents
  vae_loss            the LDM's VAE: reconstruction plus a small KL term (stage 1 of a from-scratch LDM)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch import nn

from defectgen.diffusion.models import denoising_target


def unconditional_loss(scheduler: DDPMScheduler):
    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        x0 = batch["image"]
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator,
                          device=x0.device)
        pred = model(scheduler.add_noise(x0, noise, t), t).sample
        return F.mse_loss(pred.float(), noise.float())
    return loss_fn


def conditional_loss(scheduler: DDPMScheduler, null_class: int, class_dropout: float = 0.1,
                     outside_weight: float = 0.1, residual: bool = False):
    """Noise-prediction loss, weighted towards the mask (the outside is given to the model as input). `residual`:
    the model diffuses the defect over its local background (models.denoising_target)."""
    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        mask, cls = batch["mask"], batch["class"]
        x0, known = denoising_target(batch["image"], mask, residual)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],), generator=generator,
                          device=x0.device)
        drop = torch.rand(cls.shape, generator=generator, device=cls.device) < class_dropout
        cls = torch.where(drop, torch.full_like(cls, null_class), cls)
        pred = model(scheduler.add_noise(x0, noise, t), t, mask, known, cls, batch.get("box"))
        weight = mask + outside_weight * (1 - mask)
        err = (pred.float() - noise.float()) ** 2 * weight
        return err.sum() / (weight.sum() * x0.shape[1]).clamp_min(1.0)
    return loss_fn


def inpaint_loss(scheduler):
    """Noise-prediction loss of a 9-channel inpainting UNet on (latents + noise, mask, masked-image latents).
    The model holds `unet`, `vae` and `text_encoder` (train_ldm.InpaintTrainer)."""

    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        m = model.module if hasattr(model, "module") else model
        pixels, mask = batch["pixels"], batch["mask"]
        sf = m.vae.config.scaling_factor
        with torch.no_grad():
            latents = m.vae.encode(pixels).latent_dist.sample() * sf
            # As StableDiffusionInpaintPipeline does: the masked image keeps the outside, zero (mid-gray) inside.
            masked = m.vae.encode(pixels * (mask < 0.5)).latent_dist.mode() * sf
        text = m.text_encoder(batch["input_ids"])[0]
        small_mask = F.interpolate(mask, size=latents.shape[-2:], mode="nearest")
        noise = torch.randn_like(latents)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
        noisy = scheduler.add_noise(latents, noise, t)
        pred = m.unet(torch.cat([noisy, small_mask, masked], dim=1), t, encoder_hidden_states=text).sample
        target = scheduler.get_velocity(latents, noise, t) if scheduler.config.prediction_type == "v_prediction" \
            else noise
        return F.mse_loss(pred.float(), target.float())

    return loss_fn


def vae_loss(kl_weight: float = 1e-6):
    def loss_fn(model: nn.Module, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None):
        vae = model.module if hasattr(model, "module") else model
        posterior = vae.encode(batch["pixels"]).latent_dist
        recon = vae.decode(posterior.sample()).sample
        return F.l1_loss(recon, batch["pixels"]) + F.mse_loss(recon, batch["pixels"]) \
            + kl_weight * posterior.kl().mean()

    return loss_fn
