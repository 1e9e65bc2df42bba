"""The conditional DDPM as a diffusers pipeline: `ConditionalDdpmPipeline`.

A folder is model_index.json, unet/, scheduler/ and condition/ (see ddpm.py for the folder with defectgen.json).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDPMScheduler, DiffusionPipeline, ImagePipelineOutput, UNet2DModel

from defectgen.diffusion.models import ConditionalDenoiser, ConditionEmbedding, box_geometry
from defectgen.diffusion.samplers import guided_inpaint


class ConditionalDdpmPipeline(DiffusionPipeline):
    """The conditional DDPM as a diffusers pipeline: `save_pretrained` writes model_index.json, unet/, scheduler/
    and condition/; `ConditionalDdpmPipeline.from_pretrained(folder)` opens it again (a local folder never touches
    the network). model_index.json names ConditionEmbedding by `defectgen.diffusion.ddpm`, which diffusers finds
    once that module is imported (`defectgen.diffusion.ddpm.load_model` opens a run folder that way).

    Calling it paints a defect of `class_labels` inside `mask_image` with classifier-free guidance; the outside
    keeps `image`. A model whose condition says `target: residual` paints the defect over the surface filled in
    under the mask (models.local_background). Every random draw of sample b comes from seeds[b] (default: b)."""

    def __init__(self, unet: UNet2DModel, scheduler: DDPMScheduler, condition: ConditionEmbedding):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler, condition=condition)

    @torch.no_grad()
    def __call__(
        self, image: torch.Tensor, mask_image: torch.Tensor, class_labels: torch.Tensor | list[int],
        guidance_scale: float = 3.0, num_inference_steps: int | None = None, sampler: str = "ddim",
        seeds: list[int] | None = None, boxes: torch.Tensor | None = None, output_type: str = "pt",
        return_dict: bool = True, strength: float = 1.0,
    ) -> ImagePipelineOutput | tuple:
        """image: B x C x H x W in [-1, 1]; mask_image: B x 1 x H x W in {0, 1}; class_labels: B class indices
        (the model's class_names order; num_classes is the null class). boxes default to the masks' extents when
        the model was trained with box geometry. strength < 1: start from `image` noised to strength * T inside
        the mask too (SDEdit), instead of from noise. Returns images B x C x H x W in [-1, 1] (output_type "pt") or
        B x H x W x C in [0, 1] ("np")."""
        device = self.unet.device
        x0 = image.to(device, torch.float32)
        mask = mask_image.to(device, torch.float32)
        classes = torch.as_tensor(class_labels, dtype=torch.long, device=device)
        if boxes is None and self.condition.box_embedding is not None:
            geo = [box_geometry(m[0].cpu().numpy() > 0.5) for m in mask]
            boxes = torch.from_numpy(np.stack(geo)).to(device)
        seeds = list(range(x0.shape[0])) if seeds is None else seeds
        denoiser = ConditionalDenoiser(self.unet, self.condition).eval()
        out = guided_inpaint(denoiser, self.scheduler, x0, mask, classes, self.condition.null_class, seeds,
                             guidance_scale, boxes, sampler, num_inference_steps, strength,
                             residual=self.condition.residual)
        if output_type == "np":
            out = ((out.float().cpu() + 1) / 2).permute(0, 2, 3, 1).numpy()
        return ImagePipelineOutput(images=out) if return_dict else (out,)
