"""Stable Diffusion 1.x / 2.x diffusers folders in gdlib (the JDiffusion part of the course, on stock Jittor).

Modules (each checked against diffusers / transformers / peft on tiny random pipelines, tests/test_sd_*.py):
  tokenizer     the CLIP byte-level BPE tokenizer from a folder's tokenizer/ files (pure Python; special tokens
                such as SD 2.x's pad "!" split out of a prompt as transformers does)
  text_encoder  the CLIP text transformer (transformers' CLIPTextModel names)
  layers        the blocks the UNet and the VAE share (GroupNorm, Attention, Transformer2DModel, ResnetBlock2D,
                Down/Upsample2D, the timestep embedding)
  unet          UNet2DConditionModel (diffusers' names: peft-style adapter targets line up with gdlib.adapters)
  vae           AutoencoderKL
  loader        load_pipeline(folder): a diffusers folder (safetensors, fp16/fp32) -> StableDiffusion
  pipeline      sample(pipe, prompts, latents, ...): CFG + DDIM + VAE decode, as diffusers' StableDiffusionPipeline
  lora          LoRA / DoRA trained with gdlib.adapters saved so that diffusers / peft load them
                (imported on use: `from gdlib.sd import lora`)
"""
