"""Stable Diffusion 1.x / 2.x diffusers folders in gdlib (the JDiffusion part of the course, on stock Jittor).

So far: `tokenizer` (the CLIP byte-level BPE tokenizer read from a folder's tokenizer/ files, pure Python).
The UNet, VAE and text encoder ports are the next pieces (DESIGN.md, notebook 09).
"""
