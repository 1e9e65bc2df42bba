"""One file per pipeline, as diffusers keeps them (pipelines/ddpm/pipeline_ddpm.py): pipeline_cddpm (the conditional
DDPM, `ConditionalDdpmPipeline`) and pipeline_ldm_inpaint (the inpainting LDM: a diffusers
`StableDiffusionInpaintPipeline` built, loaded and saved). The unconditional DDPM is diffusers' own `DDPMPipeline`.
Nothing is imported here, so opening one pipeline does not load the other's dependencies.
"""
