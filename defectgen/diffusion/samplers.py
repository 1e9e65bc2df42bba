"""Sampling with diffusers schedulers: perturb-and-denoise (unconditional DDPM) and guided inpainting (conditional).

Images are B x C x H x W tensors in [-1, 1], masks B x 1 x H x W in {0, 1}. Every random draw of sample b comes
from its own CPU `torch.Generator` seeded with seeds[b], so a sample depends only on its seed, not on its batch.
The known region (outside the mask) is re-imposed after every step from x0 noised to the step reached
(RePaint-style), using the training DDPM's alphas so that the noise level matches for every scheduler.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

from defectgen.diffusion.models import denoising_target, from_target

SAMPLERS = ("ddpm", "ddim", "dpm")
DEFAULT_STEPS = {"ddpm": 1000, "ddim": 50, "dpm": 20}


def make_scheduler(name: str, train_scheduler: DDPMScheduler):
    """The sampling scheduler `name` (ddpm | ddim | dpm) on the training scheduler's noise schedule."""
    config = train_scheduler.config
    if name == "ddpm":
        return DDPMScheduler.from_config(config)
    if name == "ddim":
        return DDIMScheduler.from_config(config)
    if name == "dpm":
        # DPM-Solver has no clip_sample; thresholding with a maximum of clip_sample_range clips its x0 estimates
        # the same way. Without it an undertrained model's estimates run away into saturated noise.
        clip = bool(config.get("clip_sample", False))
        return DPMSolverMultistepScheduler.from_config(
            config, algorithm_type="dpmsolver++", thresholding=clip,
            sample_max_value=float(config.get("clip_sample_range", 1.0)) if clip else 1.0)
    raise ValueError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")


def generators(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def seeded_randn(shape: tuple[int, ...], gens: list[torch.Generator], device, dtype=torch.float32) -> torch.Tensor:
    """One normal draw per sample from its own generator (on the CPU, so results do not depend on the device)."""
    return torch.stack([torch.randn(shape, generator=g, dtype=torch.float32) for g in gens]).to(device, dtype)


def _noised(train: DDPMScheduler, x0: torch.Tensor, t: int | None, gens: list[torch.Generator]) -> torch.Tensor:
    """x0 diffused to integer step t with fresh noise (t None: x0 itself, the end of sampling)."""
    if t is None or t < 0:
        return x0
    noise = seeded_randn(tuple(x0.shape[1:]), gens, x0.device, x0.dtype)
    return train.add_noise(x0, noise, torch.full((x0.shape[0],), int(t), device=x0.device, dtype=torch.long))


def _reverse(
    eps_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    scheduler, train: DDPMScheduler, x: torch.Tensor, x0: torch.Tensor, mask: torch.Tensor,
    timesteps: torch.Tensor, gens: list[torch.Generator],
) -> torch.Tensor:
    ts = [int(t) for t in timesteps]
    for i, t in enumerate(ts):
        model_in = scheduler.scale_model_input(x, t)
        eps = eps_fn(model_in, torch.full((x.shape[0],), t, device=x.device, dtype=torch.long))
        x = scheduler.step(eps, t, x, generator=gens).prev_sample
        t_prev = ts[i + 1] if i + 1 < len(ts) else None
        x = mask * x + (1 - mask) * _noised(train, x0, t_prev, gens)
    return x


def _truncated(sampler: str, train_scheduler: DDPMScheduler, steps: int | None, strength: float, device):
    """The sampler's scheduler and its timesteps from t0 = strength * T down (SDEdit): the last `strength` share
    of `steps`, at least one."""
    if not 0 < strength <= 1:
        raise ValueError("strength must lie in (0, 1]")
    steps = steps or DEFAULT_STEPS[sampler]
    scheduler = make_scheduler(sampler, train_scheduler)
    scheduler.set_timesteps(steps, device=device)
    n_run = max(1, min(steps, round(steps * strength)))
    start = (steps - n_run) * scheduler.order
    if hasattr(scheduler, "set_begin_index"):
        scheduler.set_begin_index(start)
    return scheduler, scheduler.timesteps[start:]


@torch.no_grad()
def perturb_and_denoise(
    unet, train_scheduler: DDPMScheduler, x0: torch.Tensor, mask: torch.Tensor, seeds: list[int],
    strength: float = 0.5, sigma: float = 1.0, sampler: str = "ddim", steps: int | None = None,
) -> torch.Tensor:
    """Method 1: diffuse x0 to t0 = strength * T, add Gaussian noise of constant std `sigma` inside the mask, and
    run the reverse process with the normal model while the outside follows x0. Returns B x C x H x W in [-1, 1]."""
    scheduler, timesteps = _truncated(sampler, train_scheduler, steps, strength, x0.device)
    gens = generators(seeds)
    x = _noised(train_scheduler, x0, int(timesteps[0]), gens)
    x = x + sigma * mask * seeded_randn(tuple(x0.shape[1:]), gens, x0.device, x0.dtype)

    def eps_fn(x_t, t):
        return unet(x_t, t).sample

    return _reverse(eps_fn, scheduler, train_scheduler, x, x0, mask, timesteps, gens).clamp(-1, 1)


@torch.no_grad()
def guided_inpaint(
    denoiser, train_scheduler: DDPMScheduler, x0: torch.Tensor, mask: torch.Tensor, classes: torch.Tensor,
    null_class: int, seeds: list[int], guidance: float = 3.0, boxes: torch.Tensor | None = None,
    sampler: str = "ddim", steps: int | None = None, strength: float = 1.0, residual: bool = False,
) -> torch.Tensor:
    """Method 2: paint a defect of `classes` inside the mask with the conditional model and classifier-free
    guidance eps = eps_null + guidance * (eps_class - eps_null). guidance 1 = no guidance, 0 = null class only.
    strength 1 starts inside the mask from pure noise; below 1 the reverse process starts at t0 = strength * T
    from x0 noised (SDEdit), so what x0 holds inside the mask (a pasted real defect) shapes the result.
    `residual`: the model diffuses the defect over the local background of x0 (models.denoising_target)."""
    scheduler, timesteps = _truncated(sampler, train_scheduler, steps, strength, x0.device)
    gens = generators(seeds)
    x0, known = denoising_target(x0, mask, residual)  # from here on x0 is what the model diffuses
    if strength >= 1:
        x = seeded_randn(tuple(x0.shape[1:]), gens, x0.device, x0.dtype) * scheduler.init_noise_sigma
        x = mask * x + (1 - mask) * _noised(train_scheduler, x0, int(timesteps[0]), gens)
    else:
        x = _noised(train_scheduler, x0, int(timesteps[0]), gens)
    null = torch.full_like(classes, null_class)
    guided = guidance != 1.0

    def eps_fn(x_t, t):
        if not guided:
            return denoiser(x_t, t, mask, known, classes, boxes)
        two = lambda v: None if v is None else torch.cat([v, v])  # noqa: E731
        eps = denoiser(two(x_t), two(t), two(mask), two(known), torch.cat([classes, null]), two(boxes))
        eps_c, eps_u = eps.chunk(2)
        return eps_u + guidance * (eps_c - eps_u)

    sample = _reverse(eps_fn, scheduler, train_scheduler, x, x0, mask, timesteps, gens)
    return from_target(sample, known, residual).clamp(-1, 1)
