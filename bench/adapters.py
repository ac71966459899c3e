"""Benchmark: DoRA vs LoRA train step, fused vs plain-Jittor DoRA norm, merged vs unmerged inference.

Three DoRA rows: `dora` is the library's dispatch (the fused norm pass only for weights of at least
gdlib.kernels.dora.FUSED_MIN_NUMEL elements, the reference below), `dora_fused` forces the fused pass on every
adapted weight, `dora_ref` forces the reference everywhere; the norm-op rows call the fused op directly.

    python bench/adapters.py [--model unet|block] [--batch 8] [--repeats 5] [--rank 4]

On gdlib's UNet (default; falls back to an attention-like block stack with --model block), adapters on the
diffusers DreamBooth targets to_q, to_k, to_v, to_out.0. Every variant's median time is measured in
interleaved rounds (so load from other processes on a shared machine hits all alike), with jt.sync_all()
so that Jittor's lazy execution and parameter updates are inside the timing. Prints times and ratios.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from gdlib import runtime  # noqa: E402

jt = runtime.setup_jittor()
from jittor import nn  # noqa: E402

from gdlib import adapters  # noqa: E402
from gdlib.kernels import dora as dora_kernel  # noqa: E402
from gdlib.kernels.dora import dora_scale_fused, dora_scale_reference  # noqa: E402


class Block(nn.Module):
    """Attention-like stack: per layer q/k/v/out Linears (diffusers names) and a 3x3 conv mixing tokens."""

    def __init__(self, width: int = 64, layers: int = 4):
        self.layers = nn.ModuleList([_Layer(width) for _ in range(layers)])

    def execute(self, x, t, context):
        for layer in self.layers:
            x = layer(x, context)
        return x


class _Layer(nn.Module):
    def __init__(self, w):
        self.to_q, self.to_k, self.to_v = nn.Linear(w, w), nn.Linear(w, w), nn.Linear(w, w)
        self.to_out = nn.Sequential(nn.Linear(w, w))
        self.conv = nn.Conv2d(w, w, 3, padding=1)

    def execute(self, x, context):  # x [B, C, H, W]
        B, C, H, W = x.shape
        h = x.reshape(B, C, H * W).transpose(0, 2, 1)
        a = nn.softmax(jt.matmul(self.to_q(h), self.to_k(h).transpose(0, 2, 1)) / C ** 0.5, dim=-1)
        h = self.to_out[0](jt.matmul(a, self.to_v(h)))
        return x + self.conv(nn.silu(h.transpose(0, 2, 1).reshape(B, C, H, W)))


_STATE: dict = {}


def build(model: str, seed: int = 0):
    """A base model (the same weights on every call) and the shapes of its (x, context) inputs."""
    rng = np.random.default_rng(seed)
    if model == "unet":
        from gdlib.models.config import UNetConfig
        from gdlib.models.unet import UNet
        cfg = UNetConfig()
        net = UNet(cfg)
        for p in net.parameters():  # zero-initialised proj_out / conv_out would zero every adapter gradient
            if len(p.shape) >= 2 and float((p * p).sum().item()) == 0.0:
                p.update(jt.array(0.02 * rng.standard_normal(p.shape).astype(np.float32)))
        shape, ctx = (cfg.in_channels, cfg.image_size, cfg.image_size), (8, cfg.context_dim)
    else:
        net = Block()
        shape, ctx = (64, 8, 8), (8, 64)
    key = (model, seed)
    if key not in _STATE:  # Jittor's initialisers are not seeded here: copy the first model's weights
        _STATE[key] = {k: v.numpy().copy() for k, v in net.state_dict().items()}
    net.load_parameters(_STATE[key])
    return net, shape, ctx


def inputs(batch, shape, ctx, seed=1):
    rng = np.random.default_rng(seed)
    return (jt.array(rng.standard_normal((batch,) + shape).astype(np.float32)),
            jt.array(rng.integers(0, 1000, batch).astype(np.float32)),
            jt.array(rng.standard_normal((batch,) + ctx).astype(np.float32)),
            jt.array(rng.standard_normal((batch,) + shape).astype(np.float32)))


class forced_fused:
    """Within the block, the library's dispatch takes the fused DoRA norm pass for every weight size."""

    def __enter__(self):
        self.old, dora_kernel.FUSED_MIN_NUMEL = dora_kernel.FUSED_MIN_NUMEL, 0

    def __exit__(self, *exc):
        dora_kernel.FUSED_MIN_NUMEL = self.old


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return None


def train_closure(net, x, t, c, eps, force_fused: bool = False):
    opt = jt.optim.AdamW(adapters.trainable_parameters(net), lr=1e-4)

    def step():
        with forced_fused() if force_fused else _nothing():  # the graph is built (and dispatched) inside
            loss = ((net(x, t, c) - eps) ** 2).mean()
            opt.step(loss)
            jt.sync_all()
    return step


def infer_closure(net, x, t, c, force_fused: bool = False):
    def run():
        with forced_fused() if force_fused else _nothing(), jt.no_grad():
            net(x, t, c).sync()
    return run


def fused_norm_calls(net, x, t, c) -> tuple[int, int]:
    """(fused, reference) DoRA-norm calls one forward of `net` makes: proves which path a row timed."""
    calls = {"fused": 0, "reference": 0}
    real_fused, real_ref = dora_kernel.dora_scale_fused, dora_kernel.dora_scale_reference

    def count(kind, fn):
        def wrapped(*a, **k):
            calls[kind] += 1
            return fn(*a, **k)
        return wrapped
    dora_kernel.dora_scale_fused = count("fused", real_fused)
    dora_kernel.dora_scale_reference = count("reference", real_ref)
    try:
        with jt.no_grad():
            net(x, t, c).sync()
    finally:
        dora_kernel.dora_scale_fused, dora_kernel.dora_scale_reference = real_fused, real_ref
    return calls["fused"], calls["reference"]


def time_interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each closure, measured in alternating rounds."""
    ts = {k: [] for k in fns}
    for r in range(warmup + repeats):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            if r >= warmup:
                ts[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in ts.items()}


def bench_norm_op(net, repeats: int) -> dict[str, float]:
    """The DoRA scale alone, forward + backward into m, over all adapted layers: fused vs reference."""
    layers = list(adapters.adapted_layers(net).values())

    def run(op):
        def f():
            gs = [op(l.base.weight, l.lora_A, l.lora_B, l.magnitude, l.scaling) for l in layers]
            loss = sum(g.sum() for g in gs)
            jt.sync(jt.grad(loss, [l.magnitude for l in layers]))
        return f
    fused = lambda w, a, b, m, s: dora_scale_fused(w, a, b, m, s)  # noqa: E731 - the fused pass, whatever the size
    return time_interleaved({"fused": run(fused), "reference": run(dora_scale_reference)}, repeats * 4)


def bench_norm_sizes(sizes=(64, 128, 256, 512, 1024), rank: int = 4, repeats: int = 9) -> dict[str, dict]:
    """The DoRA scale op alone on square [n, n] weights: fused vs reference, forward + backward into m."""
    rng = np.random.default_rng(0)
    out = {}
    for n in sizes:
        w, a, b, m = (jt.array(rng.standard_normal(s).astype(np.float32)) for s in ((n, n), (rank, n), (n, rank), (n,)))

        def run(op):
            def f():
                jt.sync(jt.grad(op(w, a, b, m, 1.0).sum(), [m]))
            return f
        out[str(n)] = time_interleaved({"fused": run(dora_scale_fused), "reference": run(dora_scale_reference)},
                                       repeats)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["unet", "block"], default="unet")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rank", type=int, default=4)
    args = ap.parse_args(argv)
    model = args.model
    if model == "unet":
        try:
            import gdlib.models.unet  # noqa: F401
        except ImportError as e:
            print(f"gdlib.models.unet not importable ({e}); using --model block")
            model = "block"
    nets = {}
    forced = {"dora_fused"}  # rows whose closures force the fused pass on every weight size
    for name, kind, fused in (("lora", "lora", True), ("dora", "dora", True), ("dora_fused", "dora", True),
                              ("dora_ref", "dora", False)):
        net, shape, ctx = build(model)
        adapters.inject(net, kind=kind, rank=args.rank, alpha=args.rank)
        for layer in adapters.adapted_layers(net).values():
            layer.fused_norm = fused
        nets[name] = net
    x, t, c, eps = inputs(args.batch, shape, ctx)
    counts = adapters.parameter_counts(nets["dora"])
    print(f"model={model} batch={args.batch} rank={args.rank} adapted layers={len(adapters.adapted_layers(nets['dora']))} "
          f"trainable={counts['trainable']} ({100 * counts['fraction']:.2f}% of {counts['total']})")
    calls = {"dora": fused_norm_calls(nets["dora"], x, t, c)}
    with forced_fused():
        calls["dora_fused"] = fused_norm_calls(nets["dora_fused"], x, t, c)
    for k, (f, r) in calls.items():
        print(f"{k}: {f} fused / {r} reference DoRA-norm calls per forward (FUSED_MIN_NUMEL={dora_kernel.FUSED_MIN_NUMEL})")
    assert calls["dora_fused"][1] == 0 and calls["dora_fused"][0] > 0, "the forced row must time the fused pass"

    train = time_interleaved({k: train_closure(n, x, t, c, eps, k in forced) for k, n in nets.items()}, args.repeats)
    for k, n in nets.items():
        n.eval()
    base, _, _ = build(model)
    base.eval()
    merged, _, _ = build(model)
    adapters.inject(merged, kind="dora", rank=args.rank, alpha=args.rank)
    for a, b in zip(adapters.trainable_parameters(merged), adapters.trainable_parameters(nets["dora"])):
        a.update(b.detach().clone())  # the trained adapter, merged
    adapters.merge(merged)
    merged.eval()
    infer = time_interleaved({"base": infer_closure(base, x, t, c), "lora": infer_closure(nets["lora"], x, t, c),
                              "dora_unmerged": infer_closure(nets["dora"], x, t, c),
                              "dora_unmerged_fused": infer_closure(nets["dora_fused"], x, t, c, True),
                              "dora_unmerged_ref": infer_closure(nets["dora_ref"], x, t, c),
                              "dora_merged": infer_closure(merged, x, t, c)}, args.repeats)
    with jt.no_grad():
        diff = float(np.abs(merged(x, t, c).numpy() - nets["dora"](x, t, c).numpy()).max())
    norm = bench_norm_op(nets["dora"], args.repeats)
    sizes = bench_norm_sizes(rank=args.rank)
    res = {
        "train_step_s": train, "inference_s": infer, "dora_norm_op_s": norm,
        "ratio_train_dora_over_lora": train["dora"] / train["lora"],
        "dora_norm_calls_fused_reference": calls,
        "ratio_train_dora_dispatch_over_reference": train["dora"] / train["dora_ref"],
        "ratio_train_dora_fused_over_reference": train["dora_fused"] / train["dora_ref"],
        "ratio_infer_dora_fused_over_reference": infer["dora_unmerged_fused"] / infer["dora_unmerged_ref"],
        "ratio_infer_dora_unmerged_over_merged": infer["dora_unmerged"] / infer["dora_merged"],
        "ratio_infer_dora_merged_over_base": infer["dora_merged"] / infer["base"],
        "ratio_infer_lora_unmerged_over_base": infer["lora"] / infer["base"],
        "ratio_norm_op_fused_over_reference": norm["fused"] / norm["reference"],
        "max_abs_diff_merged_vs_unmerged": diff,
        "norm_op_by_width_s": sizes,
        "ratio_norm_op_fused_over_reference_by_width": {n: d["fused"] / d["reference"] for n, d in sizes.items()},
    }
    for k, v in res.items():
        if k == "norm_op_by_width_s":
            for n, d in v.items():
                print(f"norm op [{n}, {n}]: fused={d['fused'] * 1e3:.3f} ms, reference={d['reference'] * 1e3:.3f} ms")
        elif k.endswith("by_width"):
            print(f"{k}: " + ", ".join(f"{n}: {r:.2f}" for n, r in v.items()))
        elif k == "dora_norm_calls_fused_reference":
            continue
        elif isinstance(v, dict):
            print(f"{k}: " + ", ".join(f"{n}={s * 1e3:.1f} ms" for n, s in v.items()))
        elif k.startswith("ratio"):
            print(f"{k}: {v:.3f}")
        else:
            print(f"{k}: {v:.2e}")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
