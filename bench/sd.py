"""Benchmark: gdlib.sd (Jittor) against diffusers / PyTorch on the same tiny Stable Diffusion folder, same CPU.

gdlib.sd.tiny writes one tiny SD 1.x-style folder (random weights); gdlib.sd.loader.load_pipeline and diffusers'
StableDiffusionPipeline.from_pretrained both load it, so the two frameworks run the same network with the same
weights. The outputs are checked equal first; then
  train   one UNet step: forward + MSE loss + backward + AdamW on every UNet parameter (batch --batch);
  sample  --steps DDIM steps with classifier-free guidance + VAE decode for --sample-batch prompts
are timed in alternating rounds and the medians and the median of the per-round Jittor / PyTorch ratios printed
(lower is better for Jittor). Needs the bench or parity extra (torch, diffusers, transformers).

    python bench/sd.py --latent 16 --batch 4 --repeats 5 --threads 2
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latent", type=int, default=16, help="latent side of the tiny folder (images are 2x)")
    p.add_argument("--batch", type=int, default=4, help="train-step batch")
    p.add_argument("--sample-batch", type=int, default=2, help="prompts sampled together (UNet batch is 2x with CFG)")
    p.add_argument("--steps", type=int, default=4, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=3.0, help="CFG scale")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (each: one Jittor run, one PyTorch run)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both frameworks (default: all cores)")
    p.add_argument("--folder", default=None, help="an SD folder to use instead of the tiny one (needs the RAM)")
    a = p.parse_args(argv)
    threads = a.threads or os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(threads)   # Jittor's oneDNN / OpenMP threads, set before it loads
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from gdlib import runtime
    from gdlib.timing import paired

    jt = runtime.setup_jittor()
    import numpy as np
    try:
        import diffusers
        import torch
    except ImportError as e:
        print(f"bench/sd.py needs torch and diffusers ({e.name} is missing): pip install -e '.[bench]'", file=sys.stderr)
        return 2
    from gdlib.kernels import AdamW
    from gdlib.sd import loader as L
    from gdlib.sd import pipeline as P
    from gdlib.sd import tiny

    torch.set_num_threads(threads)
    folder = Path(a.folder) if a.folder else tiny.write_tiny_folder(
        Path(tempfile.mkdtemp(prefix="gdlib_bench_sd_")) / "tiny-sd", sample_size=a.latent)
    ours = L.load_pipeline(folder)
    ref = diffusers.StableDiffusionPipeline.from_pretrained(folder, safety_checker=None)   # float32
    ref.scheduler = diffusers.DDIMScheduler.from_config(ref.scheduler.config)
    ref.set_progress_bar_config(disable=True)
    n_unet = sum(int(np.prod(v.shape)) for v in ours.unet.state_dict().values())
    C, h, w = ours.latent_shape
    print(f"folder {folder}: UNet {n_unet:,} parameters, latent {C}x{h}x{w} (images {ours.vae_scale_factor * h} px); "
          f"train batch {a.batch}, sample batch {a.sample_batch} x {a.steps} DDIM steps, CFG {a.guidance}; "
          f"threads {threads}, torch {torch.__version__}, diffusers {diffusers.__version__}, jittor {jt.__version__}")

    rng = np.random.default_rng(0)
    B, D = a.batch, ours.unet.config.cross_attention_dim
    x = rng.standard_normal((B, C, h, w)).astype(np.float32)
    t = rng.integers(0, 1000, B).astype(np.int64)
    ctx = rng.standard_normal((B, 77, D)).astype(np.float32)
    target = rng.standard_normal(x.shape).astype(np.float32)
    prompts = (["a watercolor painting of a cat", "a pixel painting of a castle"] * a.sample_batch)[:a.sample_batch]
    x_T = np.random.default_rng(1).standard_normal((a.sample_batch, C, h, w)).astype(np.float32)
    tx, tt, tctx, ttg = (torch.from_numpy(v) for v in (x, t, ctx, target))
    jx, jctx, jtg = jt.array(x), jt.array(ctx), jt.array(target)

    # equality first: the same network with the same weights
    with torch.no_grad():
        r = ref.unet(tx, tt, tctx).sample.numpy()
        img_ref = ref(prompt=prompts, latents=torch.from_numpy(x_T), num_inference_steps=a.steps,
                      guidance_scale=a.guidance, output_type="np").images
    with jt.no_grad():
        o = ours.unet(jx, t, jctx).numpy()
    img = P.sample(ours, prompts, x_T, steps=a.steps, guidance_scale=a.guidance)
    err = float(np.abs(o - r).max() / (np.abs(r).max() + 1e-12))
    img_err = float(np.abs(img - img_ref).max())
    print(f"UNet: max |jittor - torch| / max |torch| = {err:.2e}; {a.steps}-step images: max |diff| = {img_err:.2e}")
    if err > 1e-3 or img_err > 1e-3:
        print("outputs differ: not benchmarking a different network", file=sys.stderr)
        return 1

    t_opt = torch.optim.AdamW(ref.unet.parameters(), 1e-4)
    ref.unet.train()

    def torch_step():
        t_opt.zero_grad()
        loss = ((ref.unet(tx, tt, tctx).sample - ttg) ** 2).mean()
        loss.backward()
        t_opt.step()

    opt = AdamW(ours.unet.parameters(), 1e-4)

    def jt_step():
        loss = ((ours.unet(jx, t, jctx) - jtg) ** 2).mean()
        opt.step(loss)
        jt.sync_all()  # the parameter and moment updates too (lazy), as torch_step's are done when it returns

    def torch_sample():
        with torch.no_grad():
            return ref(prompt=prompts, latents=torch.from_numpy(x_T), num_inference_steps=a.steps,
                       guidance_scale=a.guidance, output_type="np").images

    def jt_sample():
        return P.sample(ours, prompts, x_T, steps=a.steps, guidance_scale=a.guidance)   # ends in .numpy(): synced

    print(f"\n{a.repeats} rounds, Jittor and PyTorch alternating; medians, and the median of the per-round ratios")
    print(f"{'':8s}{'jittor s':>10s}{'torch s':>10s}{'ratio':>8s}")
    jt_train, torch_train, r_train = paired(jt_step, torch_step, a.repeats)
    print(f"train   {jt_train:10.3f}{torch_train:10.3f}{r_train:8.2f}   (UNet forward + backward + AdamW, batch {B})")
    jt_s, torch_s, r_s = paired(jt_sample, torch_sample, a.repeats)
    print(f"sample  {jt_s:10.3f}{torch_s:10.3f}{r_s:8.2f}   ({a.steps} DDIM steps, CFG, {a.sample_batch} prompts, "
          "text encoder + VAE decode included)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
