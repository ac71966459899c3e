"""Benchmark: gdlib.sd (Jittor) against diffusers / PyTorch on the same tiny Stable Diffusion folder, same CPU.

gdlib.sd.tiny writes one tiny SD 1.x-style folder (random weights); gdlib.sd.loader.load_pipeline and diffusers'
StableDiffusionPipeline.from_pretrained both load it, so the two frameworks run the same network with the same
weights. The outputs are checked equal first; then
  train   one UNet step: forward + MSE loss + backward + AdamW on every UNet parameter (batch --batch);
  sample  --steps DDIM steps with classifier-free guidance + VAE decode for --sample-batch prompts
are timed in alternating rounds and the medians and the median of the per-round Jittor / PyTorch ratios printed
(lower is better for Jittor). Needs the bench or parity extra (torch, diffusers, transformers).

    python bench/sd.py --latent 16 --batch 4 --repeats 5 --threads 2

--size sd15 / sd21 builds the UNet and VAE of Stable Diffusion 1.5 / 2.1 (their published configs, random weights)
in each framework, each in its own subprocess (so that peak RSS is per framework), and times ONE UNet call with the
classifier-free-guidance batch of 2 at 64x64 latents (512 px; sd21 also 96x96, 768 px) and one VAE decode of one
latent, after an untimed first call (Jittor compiles its kernels there). It prints seconds per UNet call, the
Jittor / PyTorch ratio, the implied seconds per image for 25 DDIM steps (25 UNet calls + one decode; the text
encoder is left out) and each framework's peak RSS. It needs ~4 GB of RAM per framework and minutes:

    python bench/sd.py --size sd15 --dry-run     # parameter counts of both builds, nothing allocated
    python bench/sd.py --size sd15 --threads 2
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

# diffusers' configs of the real models (runwayml/stable-diffusion-v1-5 and stabilityai/stable-diffusion-2-1 unet/
# and vae/config.json); the fields not listed are diffusers' defaults, which both models use.
SD_DOWN = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
SD_UP = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
UNET_CONFIGS = {
    "sd15": dict(sample_size=64, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                 layers_per_block=2, down_block_types=SD_DOWN, up_block_types=SD_UP, cross_attention_dim=768,
                 attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0,
                 downsample_padding=1, mid_block_scale_factor=1.0),
    "sd21": dict(sample_size=96, in_channels=4, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                 layers_per_block=2, down_block_types=SD_DOWN, up_block_types=SD_UP, cross_attention_dim=1024,
                 attention_head_dim=(5, 10, 20, 20), use_linear_projection=True, upcast_attention=True,
                 norm_num_groups=32, norm_eps=1e-5, flip_sin_to_cos=True, freq_shift=0, downsample_padding=1,
                 mid_block_scale_factor=1.0),
}
VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                  layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, scaling_factor=0.18215)
LATENTS = {"sd15": (64,), "sd21": (64, 96)}   # latent sides timed (x8 = image pixels)
DDIM_STEPS = 25


def peak_rss_gb() -> float:
    """This process's peak resident set size, GB (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def n_params(shapes) -> int:
    """Total element count of an iterable of shapes."""
    total = 0
    for shape in shapes:
        n = 1
        for d in shape:
            n *= int(d)
        total += n
    return total


def build(framework: str, size: str, meta: bool = False):
    """(unet, vae) of `size` in `framework` ("jittor": gdlib.sd, lazily initialised; "torch": diffusers, on the
    meta device when `meta`, i.e. without memory)."""
    if framework == "jittor":
        from gdlib.sd.unet import UNet2DConditionModel, UNetConfig
        from gdlib.sd.vae import AutoencoderKL, VAEConfig
        return UNet2DConditionModel(UNetConfig(**UNET_CONFIGS[size])), AutoencoderKL(VAEConfig(**VAE_CONFIG))
    import diffusers
    import torch
    with torch.device("meta" if meta else "cpu"):
        return diffusers.UNet2DConditionModel(**UNET_CONFIGS[size]), diffusers.AutoencoderKL(**VAE_CONFIG)


def shapes(framework: str, module) -> dict[str, tuple[int, ...]]:
    """Parameter name -> shape (Jittor's state_dict / torch's named_parameters)."""
    if framework == "jittor":
        return {k: tuple(v.shape) for k, v in module.state_dict().items()}
    return {k: tuple(v.shape) for k, v in module.named_parameters()}


def dry_run(size: str) -> int:
    """Build both frameworks' SD networks without computing or allocating weights; print and compare parameter counts."""
    ok = True
    built = {fw: build(fw, size, meta=True) for fw in ("jittor", "torch")}
    for i, part in enumerate(("unet", "vae")):
        s = {fw: shapes(fw, built[fw][i]) for fw in built}
        same = s["jittor"] == s["torch"]
        ok &= same
        print(f"{size} {part}: gdlib {n_params(s['jittor'].values()):,} parameters, diffusers "
              f"{n_params(s['torch'].values()):,}; names and shapes {'identical' if same else 'DIFFER'}")
        if not same:
            diff = sorted(set(s["jittor"].items()) ^ set(s["torch"].items()))
            print(f"  first differences: {diff[:6]}", file=sys.stderr)
    return 0 if ok else 1


def time_framework(framework: str, size: str, repeats: int, threads: int) -> dict:
    """Seconds of one CFG-batched UNet call per latent side and of one VAE decode, and the peak RSS, in this process."""
    import numpy as np
    from gdlib.timing import cold_warm
    unet, vae = build(framework, size)
    D = UNET_CONFIGS[size]["cross_attention_dim"]
    rng = np.random.default_rng(0)
    out = {"framework": framework, "unet": {}, "vae": {}}
    for side in LATENTS[size]:
        x = rng.standard_normal((2, 4, side, side)).astype(np.float32)   # CFG: unconditional + conditional
        ctx = rng.standard_normal((2, 77, D)).astype(np.float32)
        z = rng.standard_normal((1, 4, side, side)).astype(np.float32)
        if framework == "jittor":
            from gdlib import runtime
            jt = runtime.setup_jittor()
            jx, jctx, jz = jt.array(x), jt.array(ctx), jt.array(z)

            def unet_call():
                with jt.no_grad():
                    return unet(jx, np.array([500, 500]), jctx).numpy()

            def vae_call():
                with jt.no_grad():
                    return vae.decode(jz).numpy()
        else:
            import torch
            torch.set_num_threads(threads)
            tx, tctx, tz, tt = (torch.from_numpy(v) for v in (x, ctx, z, np.array([500, 500])))
            unet.eval(), vae.eval()

            def unet_call():
                with torch.no_grad():
                    return unet(tx, tt, tctx).sample.numpy()

            def vae_call():
                with torch.no_grad():
                    return vae.decode(tz).sample.numpy()
        out["unet"][side] = cold_warm(unet_call, repeats)
        out["vae"][side] = cold_warm(vae_call, repeats)
    out["peak_rss_gb"] = peak_rss_gb()
    return out


def run_sd_size(a, threads: int) -> int:
    """--size sd15 / sd21: one subprocess per framework, then the table."""
    if a.framework:   # a child: time one framework, print one JSON line
        print("RESULT " + json.dumps(time_framework(a.framework, a.size, a.repeats or 1, threads)), flush=True)
        return 0
    results = {}
    for fw in ("jittor", "torch"):
        cmd = [sys.executable, os.path.abspath(__file__), "--size", a.size, "--framework", fw,
               "--threads", str(threads), "--repeats", str(a.repeats or 1)]
        print(f"running {fw} ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            print(f"{fw} run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}", file=sys.stderr)
            return 1
        results[fw] = json.loads(lines[-1][len("RESULT "):])
    print_table(a.size, results, threads)
    return 0


def print_table(size: str, results: dict, threads: int) -> None:
    """The seconds per call of both frameworks, their ratio, the implied seconds per image and the peak RSS."""
    j, t = results["jittor"], results["torch"]
    print(f"\n{size}: UNet forward, CFG batch 2; VAE decode, batch 1; threads {threads}; "
          "seconds per call: median of the timed calls, and the first call (Jittor compiles there)")
    print(f"{'':24s}{'jittor s':>10s}{'(first)':>9s}{'torch s':>10s}{'(first)':>9s}{'ratio':>8s}")
    for side in j["unet"]:
        for part in ("unet", "vae"):
            jr, tr = j[part][side], t[part][side]
            label = f"{part} {side}x{side} ({8 * int(side)} px)"
            print(f"{label:24s}{jr['warm']:10.2f}{jr['cold']:9.1f}{tr['warm']:10.2f}{tr['cold']:9.1f}"
                  f"{jr['warm'] / tr['warm']:8.2f}")
        per_img = {fw: DDIM_STEPS * r["unet"][side]["warm"] + r["vae"][side]["warm"] for fw, r in results.items()}
        print(f"  -> one {8 * int(side)} px image, {DDIM_STEPS} DDIM steps (25 CFG UNet calls + decode): jittor "
              f"{per_img['jittor']:.1f} s, torch {per_img['torch']:.1f} s, ratio {per_img['jittor'] / per_img['torch']:.2f}")
    print(f"peak RSS: jittor {j['peak_rss_gb']:.2f} GB, torch {t['peak_rss_gb']:.2f} GB")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--latent", type=int, default=16, help="latent side of the tiny folder (images are 2x)")
    p.add_argument("--batch", type=int, default=4, help="train-step batch")
    p.add_argument("--sample-batch", type=int, default=2, help="prompts sampled together (UNet batch is 2x with CFG)")
    p.add_argument("--steps", type=int, default=4, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=3.0, help="CFG scale")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed rounds (each: one Jittor run, one PyTorch run); default 5, 1 for --size sd15/sd21")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both frameworks (default: all cores)")
    p.add_argument("--folder", default=None, help="an SD folder to use instead of the tiny one (needs the RAM)")
    p.add_argument("--size", choices=("tiny", "sd15", "sd21"), default="tiny",
                   help="tiny: the train/sample comparison above; sd15/sd21: one UNet call of the real architecture")
    p.add_argument("--dry-run", action="store_true", help="with --size sd15/sd21: parameter counts only, no weights")
    p.add_argument("--framework", choices=("jittor", "torch"), default=None, help=argparse.SUPPRESS)  # child runs
    a = p.parse_args(argv)
    threads = a.threads or os.cpu_count() or 1
    os.environ["OMP_NUM_THREADS"] = str(threads)   # Jittor's oneDNN / OpenMP threads, set before it loads
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    if a.size != "tiny":   # before Jittor loads: a torch child process never imports it (its own peak RSS)
        return dry_run(a.size) if a.dry_run else run_sd_size(a, threads)
    if a.dry_run:
        p.error("--dry-run needs --size sd15 or sd21")
    from gdlib import runtime
    from gdlib.timing import paired

    jt = runtime.setup_jittor()
    a.repeats = a.repeats or 5
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
