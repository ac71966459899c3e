"""Benchmark: the toy text-to-image UNet (+ text encoder) in Jittor against an identical PyTorch twin.

Weights are copied from the Jittor model into the twin and the outputs are checked equal first; then
a training step (forward + backward + grad clip + AdamW) and 25-step DDIM sampling with CFG are timed
in both, and the Jittor / PyTorch time ratios are printed (lower is better for Jittor).

    python bench/unet.py --kernels both --batch 64 --threads 2
"""
from __future__ import annotations

import argparse
import math
import os
import sys


# ----- the PyTorch twin (same module names as gdlib.models.unet / gdlib.models.text) -----------------
def build_torch_twin(config, vocab_size: int):
    """A torch (text encoder, UNet) pair with the same parameter names and math as gdlib's Jittor model."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    def s2d(x, p):
        if p == 1:
            return x
        B, C, H, W = x.shape
        return x.reshape(B, C, H // p, p, W // p, p).permute(0, 1, 3, 5, 2, 4).reshape(B, C * p * p, H // p, W // p)

    def d2s(x, p):
        if p == 1:
            return x
        B, Cp, h, w = x.shape
        C = Cp // (p * p)
        return x.reshape(B, C, p, p, h, w).permute(0, 1, 4, 2, 5, 3).reshape(B, C, h * p, w * p)

    class GroupNorm(nn.Module):
        def __init__(self, groups, c, eps=1e-5):
            super().__init__()
            self.groups, self.eps = groups, eps
            self.weight = nn.Parameter(torch.ones(c))
            self.bias = nn.Parameter(torch.zeros(c))

        def forward(self, x, scale=None, shift=None, silu=False):
            y = F.group_norm(x, self.groups, self.weight, self.bias, self.eps)
            if scale is not None:
                y = y * (1 + scale[:, :, None, None])
            if shift is not None:
                y = y + shift[:, :, None, None]
            return F.silu(y) if silu else y

    class LayerNorm(nn.Module):
        def __init__(self, dim, eps=1e-5):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(dim))
            self.bias = nn.Parameter(torch.zeros(dim))
            self.eps = eps

        def forward(self, x):
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)

    class Attention(nn.Module):
        def __init__(self, dim, heads, context_dim=None):
            super().__init__()
            kv = context_dim or dim
            self.heads = heads
            self.to_q = nn.Linear(dim, dim, bias=False)
            self.to_k = nn.Linear(kv, dim, bias=False)
            self.to_v = nn.Linear(kv, dim, bias=False)
            self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

        def forward(self, x, context=None):
            ctx = x if context is None else context
            B, N, C = x.shape
            h, d = self.heads, C // self.heads
            q = self.to_q(x).reshape(B, N, h, d).transpose(1, 2)
            k = self.to_k(ctx).reshape(B, -1, h, d).transpose(1, 2)
            v = self.to_v(ctx).reshape(B, -1, h, d).transpose(1, 2)
            o = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C)
            return self.to_out[0](o)

    class EncoderLayer(nn.Module):
        def __init__(self, w, heads):
            super().__init__()
            self.norm1, self.attn, self.norm2 = LayerNorm(w), Attention(w, heads), LayerNorm(w)
            self.mlp = nn.Sequential(nn.Linear(w, 4 * w), nn.GELU(), nn.Linear(4 * w, w))

        def forward(self, x):
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))

    class TextEncoder(nn.Module):
        def __init__(self, tc):
            super().__init__()
            self.token_embedding = nn.Embedding(vocab_size, tc.width)
            self.position_embedding = nn.Parameter(torch.zeros(tc.max_length, tc.width))
            self.layers = nn.ModuleList([EncoderLayer(tc.width, tc.heads) for _ in range(tc.layers)])
            self.final_norm = LayerNorm(tc.width)

        def forward(self, ids):
            x = self.token_embedding(ids) + self.position_embedding[None]
            for layer in self.layers:
                x = layer(x)
            return self.final_norm(x)

    class ResBlock(nn.Module):
        def __init__(self, ci, co, emb, groups):
            super().__init__()
            self.norm1, self.conv1 = GroupNorm(groups, ci), nn.Conv2d(ci, co, 3, padding=1)
            self.emb_proj = nn.Linear(emb, 2 * co)
            self.norm2, self.conv2 = GroupNorm(groups, co), nn.Conv2d(co, co, 3, padding=1)
            self.skip = nn.Conv2d(ci, co, 1) if ci != co else None

        def forward(self, x, emb):
            h = self.conv1(self.norm1(x, silu=True))
            scale, shift = self.emb_proj(F.silu(emb)).chunk(2, dim=1)
            h = self.conv2(self.norm2(h, scale=scale, shift=shift, silu=True))
            return (x if self.skip is None else self.skip(x)) + h

    class TransformerBlock(nn.Module):
        def __init__(self, c, ctx_dim, heads, groups, self_attn):
            super().__init__()
            self.norm = GroupNorm(groups, c)
            self.proj_in = nn.Linear(c, c)
            self.attn1 = Attention(c, heads) if self_attn else None
            self.norm1 = LayerNorm(c) if self_attn else None
            self.norm2, self.attn2, self.norm3 = LayerNorm(c), Attention(c, heads, ctx_dim), LayerNorm(c)
            self.ff = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))
            self.proj_out = nn.Linear(c, c)

        def forward(self, x, context):
            B, C, H, W = x.shape
            h = self.proj_in(self.norm(x).reshape(B, C, H * W).transpose(1, 2))
            if self.attn1 is not None:
                h = h + self.attn1(self.norm1(h))
            h = h + self.attn2(self.norm2(h), context)
            h = h + self.ff(self.norm3(h))
            return x + self.proj_out(h).transpose(1, 2).reshape(B, C, H, W)

    class Stage(nn.Module):
        def __init__(self, rbs, ats):
            super().__init__()
            self.resblocks = nn.ModuleList(rbs)
            self.attns = nn.ModuleList([a if a is not None else nn.Identity() for a in ats])
            self.has_attn = [a is not None for a in ats]
            self.downsample = self.upsample = None

    class Down(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

        def forward(self, x):
            return self.conv(x)

    class Up(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(c, c, 3, padding=1)

        def forward(self, x):
            return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))

    class UNet(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.c = c
            C = c.base_channels
            emb = 4 * C
            self.time_embed = nn.Sequential(nn.Linear(C, emb), nn.SiLU(), nn.Linear(emb, emb))
            self.text_embed = nn.Linear(c.context_dim, emb) if c.pooled_text else None
            pc = c.in_channels * c.patch_size ** 2
            self.conv_in = nn.Conv2d(pc, C, 3, padding=1)

            def attn(ch, res):
                if res not in c.attn_resolutions:
                    return None
                return TransformerBlock(ch, c.context_dim, c.heads, c.groups, res in c.self_attn_resolutions)

            chans, ch, res = [C], C, c.image_size // c.patch_size
            down = []
            for level, mult in enumerate(c.channel_mult):
                rbs, ats = [], []
                for _ in range(c.num_res_blocks):
                    rbs.append(ResBlock(ch, C * mult, emb, c.groups))
                    ch = C * mult
                    ats.append(attn(ch, res))
                    chans.append(ch)
                st = Stage(rbs, ats)
                if level < len(c.channel_mult) - 1:
                    st.downsample = Down(ch)
                    chans.append(ch)
                    res //= 2
                down.append(st)
            self.down = nn.ModuleList(down)
            self.mid_block1 = ResBlock(ch, ch, emb, c.groups)
            self.mid_attn = TransformerBlock(ch, c.context_dim, c.heads, c.groups, True)
            self.mid_block2 = ResBlock(ch, ch, emb, c.groups)
            up = []
            for level, mult in reversed(list(enumerate(c.channel_mult))):
                rbs, ats = [], []
                for _ in range(c.num_res_blocks + 1):
                    rbs.append(ResBlock(ch + chans.pop(), C * mult, emb, c.groups))
                    ch = C * mult
                    ats.append(attn(ch, res))
                st = Stage(rbs, ats)
                if level > 0:
                    st.upsample = Up(ch)
                    res *= 2
                up.append(st)
            self.up = nn.ModuleList(up)
            self.norm_out = GroupNorm(c.groups, ch)
            self.conv_out = nn.Conv2d(ch, pc, 3, padding=1)

        def forward(self, x, t, context):
            B = x.shape[0]
            t = torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(B) if not torch.is_tensor(t) or t.numel() == 1 \
                else t.float()
            half = self.c.base_channels // 2
            freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
            args = t[:, None] * freqs[None]
            emb = self.time_embed(torch.cat([torch.cos(args), torch.sin(args)], 1))
            if self.text_embed is not None:
                emb = emb + self.text_embed(context.mean(1))
            h = self.conv_in(s2d(x, self.c.patch_size))
            hs = [h]
            for st in self.down:
                for rb, at, has in zip(st.resblocks, st.attns, st.has_attn):
                    h = rb(h, emb)
                    if has:
                        h = at(h, context)
                    hs.append(h)
                if st.downsample is not None:
                    h = st.downsample(h)
                    hs.append(h)
            h = self.mid_block2(self.mid_attn(self.mid_block1(h, emb), context), emb)
            for st in self.up:
                for rb, at, has in zip(st.resblocks, st.attns, st.has_attn):
                    h = rb(torch.cat([h, hs.pop()], 1), emb)
                    if has:
                        h = at(h, context)
                if st.upsample is not None:
                    h = st.upsample(h)
            return d2s(self.conv_out(self.norm_out(h, silu=True)), self.c.patch_size)

    return TextEncoder(config.text), UNet(config.unet)


def copy_weights(jt_model, torch_text, torch_unet) -> int:
    """Copy every Jittor parameter into the twin by name; return the number of tensors copied."""
    import torch

    n = 0
    for jmod, tmod in ((jt_model.text_encoder, torch_text), (jt_model.unet, torch_unet)):
        src = {k: v.numpy() for k, v in jmod.state_dict().items()}
        dst = tmod.state_dict()
        if set(src) != set(dst):
            raise RuntimeError(f"twin names differ: only Jittor {sorted(set(src) - set(dst))[:5]}, "
                               f"only torch {sorted(set(dst) - set(src))[:5]}")
        tmod.load_state_dict({k: torch.from_numpy(src[k].copy()) for k in dst})
        n += len(dst)
    return n


def randomize(jt, model, seed: int = 0, std: float = 0.05) -> None:
    """Non-zero values for the zero-initialised layers so the equality check covers every path."""
    import numpy as np

    rng = np.random.default_rng(seed)
    for p in model.parameters():
        p.update(jt.array((np.asarray(p.numpy()) + rng.normal(0, std, p.shape)).astype(np.float32)))


def torch_ddim_cfg(unet, text, ids, uncond_ids, x_T, schedule, steps, w):
    """DDIM(eta=0) with CFG in torch, same timesteps / clipping as gdlib.sampling.sample_ddim."""
    import torch

    abar = schedule.alphas_cumprod
    ts = schedule.timesteps(steps)
    T = schedule.num_train_timesteps
    with torch.no_grad():
        ctx = text(ids)
        unc = text(uncond_ids).expand_as(ctx)
        both = torch.cat([ctx, unc])
        x = x_T
        n = x.shape[0]
        for t in ts:
            out = unet(torch.cat([x, x]), int(t), both)
            eps = out[n:] + w * (out[:n] - out[n:])
            a = float(abar[t])
            tp = int(t) - T // steps
            a_prev = float(abar[tp]) if tp >= 0 else schedule.final_alpha_cumprod
            x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
            if schedule.clip_sample:
                x0 = x0.clamp(-1, 1)  # eps_hat is kept, as in diffusers' DDIMScheduler and gdlib.sampling
            x = math.sqrt(a_prev) * x0 + math.sqrt(1 - a_prev) * eps
    return x


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kernels", choices=["on", "off", "both"], default="both", help="gdlib.kernels.use_kernels")
    p.add_argument("--batch", type=int, default=64, help="train-step batch")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for both frameworks (default: all)")
    p.add_argument("--repeats", type=int, default=5, help="timed rounds (each: one Jittor run, one PyTorch run)")
    p.add_argument("--sample-batch", type=int, default=16, help="prompts sampled together (UNet batch is 2x with CFG)")
    p.add_argument("--steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--checkpoint", default=None, help="a TextToImage .safetensors (default: fresh default config)")
    p.add_argument("--optimizer", choices=["fused", "jittor"], default="fused",
                   help="Jittor's AdamW: gdlib.kernels.AdamW (fused step when kernels are on) or jt.optim.AdamW")
    a = p.parse_args(argv)
    if a.threads:
        os.environ["OMP_NUM_THREADS"] = str(a.threads)
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from gdlib import kernels, runtime
    from gdlib.timing import paired

    jt = runtime.setup_jittor()
    import numpy as np
    import torch

    from gdlib.pipeline import TextToImage, generate
    from gdlib import toyworld

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.checkpoint:
        model = TextToImage.load(a.checkpoint)
    else:
        jt.set_global_seed(0)
        model = TextToImage.from_toyworld()
        randomize(jt, model.unet)
    t_text, t_unet = build_torch_twin(model.config, model.tokenizer.vocab_size)
    n = copy_weights(model, t_text, t_unet)
    cfgu = model.config.unet
    rng = np.random.default_rng(0)
    B = a.batch
    prompts = [toyworld.caption(s, o) for s, o in zip(np.resize(toyworld.KNOWN_STYLES, B), np.resize(toyworld.OBJECTS, B))]
    ids = model.tokenizer.encode(prompts)
    x = rng.standard_normal((B, 3, cfgu.image_size, cfgu.image_size)).astype(np.float32)
    t = rng.integers(0, 1000, B).astype(np.float32)
    target = rng.standard_normal(x.shape).astype(np.float32)
    modes = {"both": [True, False], "on": [True], "off": [False]}[a.kernels]
    print(f"model: {model.num_parameters():,} parameters, {n} tensors copied to the PyTorch twin; batch {B}, "
          f"threads {a.threads or 'default'}, torch {torch.__version__}, jittor {jt.__version__}, "
          f"Jittor optimizer {a.optimizer}")

    # equality first
    with torch.no_grad():
        ref = t_unet(torch.from_numpy(x), torch.from_numpy(t), t_text(torch.from_numpy(ids.astype(np.int64)))).numpy()
    for on in modes:
        with kernels.kernels_enabled(on):
            with jt.no_grad():
                out = model.unet(jt.array(x), jt.array(t), model.text_encoder(ids)).numpy()
        err = float(np.abs(out - ref).max() / (np.abs(ref).max() + 1e-12))
        print(f"kernels {'on ' if on else 'off'}: max |jittor - torch| / max |torch| = {err:.2e}")
        if err > 1e-3:
            print("outputs differ: not benchmarking a different network", file=sys.stderr)
            return 1

    # the PyTorch twin: train step and sampler
    t_opt = torch.optim.AdamW(list(t_text.parameters()) + list(t_unet.parameters()), 1e-4)
    tx, tt, tids, ttg = torch.from_numpy(x), torch.from_numpy(t), torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(target)

    def torch_step():
        t_opt.zero_grad()
        loss = ((t_unet(tx, tt, t_text(tids)) - ttg) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(t_text.parameters()) + list(t_unet.parameters()), 1.0)
        t_opt.step()
    S = a.sample_batch
    sp = prompts[:S]
    x_T = np.random.default_rng(1).standard_normal((S, 3, cfgu.image_size, cfgu.image_size)).astype(np.float32)
    sids = torch.from_numpy(model.tokenizer.encode(sp).astype(np.int64))
    uids = torch.from_numpy(model.tokenizer.encode([""]).astype(np.int64))
    def torch_sample():
        return torch_ddim_cfg(t_unet, t_text, sids, uids, torch.from_numpy(x_T), model.schedule, a.steps, 4.0)
    # Jittor (fresh optimizer; the weights drift in both frameworks alike). gdlib.kernels.AdamW is jt.optim.AdamW
    # with a fused step under the same switch (kernels off: jt.optim.AdamW's own step).
    opt = (kernels.AdamW if a.optimizer == "fused" else jt.optim.AdamW)(model.parameters(), 1e-4)
    jx, jtt, jtg = jt.array(x), jt.array(t), jt.array(target)

    def jt_step():
        loss = ((model.unet(jx, jtt, model.text_encoder(ids)) - jtg) ** 2).mean()
        opt.backward(loss)
        opt.clip_grad_norm(1.0)
        opt.step()
        jt.sync_all()  # the parameter and moment updates too (lazy), as torch_step's are done when it returns
    print(f"\n{a.repeats} rounds, Jittor and PyTorch alternating; medians, and the median of the per-round ratios")
    print(f"{'':14s}{'jittor s':>10s}{'torch s':>10s}{'ratio':>8s}")
    for on in modes:
        with kernels.kernels_enabled(on):
            jt_train, torch_train, r_train = paired(jt_step, torch_step, a.repeats)
            jt_sample, torch_sample_s, r_sample = paired(lambda: generate(model, sp, a.steps, 4.0, seed=1),
                                                          torch_sample, a.repeats)
        tag = "on " if on else "off"
        print(f"train  k={tag}  {jt_train:10.3f}{torch_train:10.3f}{r_train:8.2f}")
        print(f"sample k={tag}  {jt_sample:10.3f}{torch_sample_s:10.3f}{r_sample:8.2f}"
              f"   ({a.steps} DDIM steps, CFG, {S} prompts)")
    # the two samplers agree too (same weights, same x_T), after the Jittor training steps changed the weights:
    copy_weights(model, t_text, t_unet)
    jimg = generate(model, sp[:2], a.steps, 4.0, seed=1)
    timg = torch_ddim_cfg(t_unet, t_text, sids[:2], uids, torch.from_numpy(
        np.random.default_rng(1).standard_normal((2, 3, cfgu.image_size, cfgu.image_size)).astype(np.float32)),
        model.schedule, a.steps, 4.0).clamp(-1, 1).numpy()
    print(f"25-step samples: max |jittor - torch| = {np.abs(jimg - timg).max():.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
