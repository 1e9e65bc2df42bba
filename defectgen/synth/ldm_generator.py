"""The text-guided generator: any diffusers inpainting pipeline (ours from `train-ldm`, or Stable Diffusion
inpainting from a folder or hub id) painting from a prompt inside the mask."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from defectgen.diffusion.folder import read_metadata
from defectgen.diffusion.pipelines.pipeline_ldm_inpaint import load_inpaint_pipeline
from defectgen.diffusion.samplers import generators, make_scheduler
from defectgen.prompts import ResolvedPrompt, resolve_prompt
from defectgen.runtime import pick_device
from defectgen.synth.base import Abilities


class LdmGenerator:
    """DefectGenerator for inpainting LDMs.

    prompt: free text or `material/defect` from the prompt library (one template drawn per sample seed); without
    a prompt, each sample's class (from --class or the model's classes) gets the caption the model was trained on.
    mask_crop: None -> the synthesis pipeline cuts a window at model resolution around the mask; PAD -> diffusers'
    own `padding_mask_crop` (a crop of the mask's extent plus PAD pixels, generated at model resolution and pasted
    back by the pipeline).
    """

    name = "ldm"
    channels = None  # 3-channel model; gray images go in as RGB and come back gray
    # the class's caption (or the prompt) guides it; a library prompt (material/defect) names the class
    abilities = Abilities(conditional=True, takes_prompt=True, prompt_names_class=True)

    def __init__(self, model: str | Path, *, prompt: str | None = None, negative_prompt: str | None = None,
                 guidance: float = 7.5, steps: int = 30, strength: float = 1.0, sampler: str = "dpm",
                 mask_crop: int | None = None, device: str | None = None, dtype: torch.dtype | None = None, **_: Any):
        # Resolve the prompt first: an unknown library name fails before minutes of model loading.
        self.resolved: ResolvedPrompt | None = resolve_prompt(prompt) if prompt else None
        self.model = str(model)
        self.meta = read_metadata(model, required=False)  # {} for a diffusers folder or hub id not trained here
        dev = str(pick_device(device))
        if dtype is None and dev == "cuda":
            dtype = torch.float16
        self.pipe = load_inpaint_pipeline(model, dev, dtype)
        if sampler:
            self.pipe.scheduler = make_scheduler(sampler, self.pipe.scheduler)
        self.sampler = sampler
        self.guidance, self.steps, self.strength = float(guidance), int(steps), float(strength)
        self.mask_crop = mask_crop
        native = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        self.model_resolution = int(self.meta.get("resolution") or native)
        self.resolution = None if mask_crop is not None else self.model_resolution
        self.prompt_text = prompt
        self.negative_prompt = negative_prompt
        classes = self.meta.get("classes") or []
        self.class_distribution = None if self.resolved else ({c: 1 / len(classes) for c in classes} or None)

    @property
    def default_class(self) -> str | None:
        return self.resolved.class_name if self.resolved else None

    def check_class(self, class_name: str | None) -> None:
        return None  # a text-guided model paints any class its prompt names

    def info(self) -> dict[str, Any]:
        return {"model": self.model, "kind": "ldm", "sampler": self.sampler, "steps": self.steps,
                "guidance": self.guidance, "strength": self.strength, "prompt": self.prompt_text,
                "negative_prompt": self._negative(), "mask_crop": self.mask_crop,
                "resolution": self.model_resolution}

    def _negative(self) -> str:
        if self.negative_prompt is not None:
            return self.negative_prompt
        if self.resolved is not None:
            return self.resolved.negative
        return str(self.meta.get("negative_prompt") or "")

    def _prompt_for(self, class_name: str | None, seed: int) -> str:
        rng = np.random.default_rng(seed)
        if self.prompt_text:
            return resolve_prompt(self.prompt_text, rng=rng).prompt  # redraw the template per sample
        captions = self.meta.get("captions") or {}
        if class_name and class_name in captions:
            return captions[class_name]
        return f"a photo of a surface with {(class_name or 'a').replace('_', ' ')} defect"

    def generate(self, normals: list[np.ndarray], masks: list[np.ndarray], seeds: list[int],
                 class_names: list[str | None]) -> list[np.ndarray]:
        prompts = [self._prompt_for(c, s) for c, s in zip(class_names, seeds, strict=True)]
        rgb = [np.repeat(x, 3, axis=2) if x.shape[2] == 1 else x for x in normals]
        gens = generators(seeds)
        common = {"negative_prompt": None, "num_inference_steps": self.steps, "guidance_scale": self.guidance,
                  "strength": self.strength, "output_type": "np"}
        negative = self._negative() or None
        if self.mask_crop is None:
            r = self.model_resolution
            image = torch.from_numpy(np.stack(rgb).transpose(0, 3, 1, 2)).float()
            mask = torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))
            common["negative_prompt"] = [negative or ""] * len(prompts) if negative else None
            out = self.pipe(prompt=prompts, image=image, mask_image=mask, height=r, width=r, generator=gens,
                            **common).images
            results = list(out)
        else:
            from PIL import Image

            results = []
            for x, m, p, g in zip(rgb, masks, prompts, gens, strict=True):
                # diffusers' mask crop works on PIL images only (8 bits; the pipeline restores the outside anyway)
                common.update(negative_prompt=negative, output_type="pil")
                h, w = m.shape
                out = self.pipe(prompt=p, image=Image.fromarray((x * 255).round().astype(np.uint8)),
                                mask_image=Image.fromarray(m.astype(np.uint8) * 255), height=self.model_resolution,
                                width=self.model_resolution, padding_mask_crop=self.mask_crop, generator=g,
                                **common).images[0]
                out = np.asarray(out, np.float32) / 255.0
                if out.shape[:2] != (h, w):  # diffusers pastes the crop back at full size; guard odd sizes
                    import cv2

                    out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR)
                results.append(out)
        final = []
        for x, out in zip(normals, results, strict=True):
            out = np.clip(np.asarray(out, np.float32), 0, 1)
            if x.shape[2] == 1:
                out = out.mean(axis=2, keepdims=True)
            final.append(out)
        return final
