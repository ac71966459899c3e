"""Op-level benchmark: gdlib's fused kernels vs their plain-Jittor references vs PyTorch on the same CPU.

Each op is timed forward + backward (gradients of sum(y * g) w.r.t. every input), interleaved in one process
(fused, reference, torch, fused, ...) for --repeats rounds; the table gives medians and their ratios.
Usage: python bench/kernels.py [--batch 64] [--repeats 7] [--threads N] [--ops groupnorm,attention,gelu]
       python bench/kernels.py --unet [--batch 64] [--repeats 5] [--threads N]
--unet times the whole UNet + text-encoder train step (forward, backward, grad clip, AdamW) with kernels on
(jt.optim.AdamW, as gdlib.train uses today), kernels on + gdlib.kernels.AdamW (the fused optimizer step),
kernels off and the PyTorch twin of bench/unet.py, interleaved round by round (fairer on a busy machine
than timing one framework after the other).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

from gdlib.timing import interleaved


def _parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/kernels.py", description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="OpenMP/torch threads (0: all cores)")
    p.add_argument("--ops", default="groupnorm,attention,gelu")
    p.add_argument("--unet", action="store_true", help="whole train step: kernels on / off / PyTorch twin")
    return p.parse_args(argv)


def unet_train_step(args: argparse.Namespace) -> int:
    """Interleaved train-step timing of gdlib's UNet (kernels on, off) and bench/unet.py's PyTorch twin."""
    import importlib.util
    from pathlib import Path

    import numpy as np
    import torch

    from gdlib import kernels, runtime, toyworld
    jt = runtime.setup_jittor()
    from gdlib.pipeline import TextToImage
    spec = importlib.util.spec_from_file_location("bench_unet", Path(__file__).with_name("unet.py"))
    bu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bu)  # the twin lives in bench/unet.py (owned by the UNet issue)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    jt.set_global_seed(0)
    model = TextToImage.from_toyworld()
    bu.randomize(jt, model.unet)
    t_text, t_unet = bu.build_torch_twin(model.config, model.tokenizer.vocab_size)
    bu.copy_weights(model, t_text, t_unet)
    B, cfgu = args.batch, model.config.unet
    rng = np.random.default_rng(0)
    prompts = [toyworld.caption(s, o) for s, o in zip(np.resize(toyworld.KNOWN_STYLES, B),
                                                      np.resize(toyworld.OBJECTS, B))]
    ids = model.tokenizer.encode(prompts)
    x = rng.standard_normal((B, 3, cfgu.image_size, cfgu.image_size)).astype(np.float32)
    t = rng.integers(0, 1000, B).astype(np.float32)
    target = rng.standard_normal(x.shape).astype(np.float32)
    t_params = list(t_text.parameters()) + list(t_unet.parameters())
    t_opt = torch.optim.AdamW(t_params, 1e-4)
    tx, tt, tids, ttg = (torch.from_numpy(a) for a in (x, t, ids.astype(np.int64), target))

    def torch_step():
        t_opt.zero_grad()
        loss = ((t_unet(tx, tt, t_text(tids)) - ttg) ** 2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(t_params, 1.0)
        t_opt.step()

    from gdlib.kernels.adamw import AdamW as FusedAdamW
    jx, jtt, jtg = jt.array(x), jt.array(t), jt.array(target)

    def jt_step(on, opt):
        def run():
            with kernels.kernels_enabled(on):
                loss = ((model.unet(jx, jtt, model.text_encoder(ids)) - jtg) ** 2).mean()
                opt.backward(loss)
                opt.clip_grad_norm(1.0)
                opt.step()
                loss.sync()
                jt.sync_all()
        return run

    # jt.optim.AdamW is what gdlib.train uses today; gdlib.kernels.AdamW is its fused drop-in (same state)
    runs = [("jittor kernels on", jt_step(True, jt.optim.AdamW(model.parameters(), 1e-4))),
            ("jittor on+fused AdamW", jt_step(True, FusedAdamW(model.parameters(), 1e-4))),
            ("jittor kernels off", jt_step(False, jt.optim.AdamW(model.parameters(), 1e-4))),
            ("pytorch", torch_step)]
    times = interleaved(runs, args.repeats)  # warm-up compiles every shape first
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}  # the least disturbed round, for a busy machine
    print(f"UNet train step, batch {B}, threads {args.threads or 'all'}, {args.repeats} interleaved rounds, "
          f"{model.num_parameters():,} parameters (jittor {jt.__version__}, torch {torch.__version__})")
    for k, v in times.items():
        print(f"  {k:22s} median {med[k]:7.3f} s   all: {' '.join(f'{a:.3f}' for a in v)}")
    for k in times:
        if k != "pytorch":
            print(f"  ratio {k + '/pytorch':30s} = {med[k] / med['pytorch']:.2f}   "
                  f"(fastest rounds {best[k] / best['pytorch']:.2f})")
    print(f"  kernels speed-up (off/on)         = {med['jittor kernels off'] / med['jittor kernels on']:.2f}")
    print("fused ops compiled:", kernels.fused_status())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.threads > 0:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before Jittor/oneDNN start OpenMP
    if args.unet:
        return unet_train_step(args)
    import numpy as np

    from gdlib import runtime
    jt = runtime.setup_jittor()
    from gdlib.kernels import _build
    import importlib
    gn = importlib.import_module("gdlib.kernels.groupnorm")
    att = importlib.import_module("gdlib.kernels.attention")
    try:
        import torch
        import torch.nn.functional as F
        if args.threads > 0:
            torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
        print("torch not installed (pip install -e .[bench]): PyTorch column skipped")

    rng = np.random.default_rng(0)
    B = args.batch
    cases = []
    if "groupnorm" in args.ops:
        for (C, H, G, film) in [(48, 16, 8, False), (96, 16, 8, True), (192, 8, 8, True), (96, 4, 8, True)]:
            x = rng.normal(size=(B, C, H, H)).astype(np.float32)
            w, b = rng.normal(size=C).astype(np.float32), rng.normal(size=C).astype(np.float32)
            sc = (0.3 * rng.normal(size=(B, C))).astype(np.float32) if film else None
            sh = (0.3 * rng.normal(size=(B, C))).astype(np.float32) if film else None
            g = rng.normal(size=x.shape).astype(np.float32)
            arrs = [a for a in (x, w, b, sc, sh) if a is not None]

            def jt_fn(fn, arrs=arrs, G=G, film=film, g=g):
                v, jg = [jt.array(a) for a in arrs], jt.array(g)

                def run():
                    y = fn(v[0], G, v[1], v[2], 1e-5, *(v[3:5] if film else (None, None)), True)
                    jt.sync(jt.grad((y * jg).sum(), v))
                return run

            def torch_fn(arrs=arrs, G=G, film=film, g=g):
                v, tg = [torch.tensor(a, requires_grad=True) for a in arrs], torch.from_numpy(g)

                def run():
                    y = F.group_norm(v[0], G, v[1], v[2], 1e-5)
                    if film:
                        y = y * (1 + v[3][:, :, None, None]) + v[4][:, :, None, None]
                    y = F.silu(y)
                    torch.autograd.grad((y * tg).sum(), v)
                return run
            name = f"group_norm{'+FiLM' if film else ''}+SiLU [{B},{C},{H},{H}] G={G}"
            cases.append((name, jt_fn(gn.group_norm_fused), jt_fn(gn.group_norm_reference),
                          torch_fn() if torch else None))
    if "attention" in args.ops:
        for (N, M, label) in [(64, 64, "self 8px"), (64, 12, "cross 8px"), (16, 16, "self 4px")]:
            q = rng.normal(size=(B, 4, N, 24)).astype(np.float32)
            k = rng.normal(size=(B, 4, M, 24)).astype(np.float32)
            v = rng.normal(size=(B, 4, M, 24)).astype(np.float32)
            g = rng.normal(size=q.shape).astype(np.float32)

            def jt_fn(fn, q=q, k=k, v=v, g=g):
                t, jg = [jt.array(a) for a in (q, k, v)], jt.array(g)

                def run():
                    o = fn(*t)
                    jt.sync(jt.grad((o * jg).sum(), t))
                return run

            def torch_fn(q=q, k=k, v=v, g=g):
                t, tg = [torch.tensor(a, requires_grad=True) for a in (q, k, v)], torch.from_numpy(g)

                def run():
                    o = F.scaled_dot_product_attention(*t)
                    torch.autograd.grad((o * tg).sum(), t)
                return run
            name = f"attention {label} q[{B},4,{N},24] k[{B},4,{M},24]"
            cases.append((name, jt_fn(att.attention_fused), jt_fn(att.attention_reference),
                          torch_fn() if torch else None))
            # the UNet's call: token layout [B, N, 4*24] in and out (PyTorch: split heads, SDPA, merge)
            qt, kt, vt, gt = (a.transpose(0, 2, 1, 3).reshape(B, a.shape[2], 96).copy() for a in (q, k, v, g))

            def jt_tok(fn, arrs=(qt, kt, vt), g=gt):
                t, jg = [jt.array(a) for a in arrs], jt.array(g)

                def run():
                    jt.sync(jt.grad((fn(*t, 4) * jg).sum(), t))
                return run

            def torch_tok(arrs=(qt, kt, vt), g=gt):
                t, tg = [torch.tensor(a, requires_grad=True) for a in arrs], torch.from_numpy(g)

                def run():
                    s = [x.reshape(B, x.shape[1], 4, 24).transpose(1, 2) for x in t]
                    o = F.scaled_dot_product_attention(*s).transpose(1, 2).reshape(B, -1, 96)
                    torch.autograd.grad((o * tg).sum(), t)
                return run
            cases.append((f"multihead {label} q[{B},{N},96] k[{B},{M},96]", jt_tok(att.multihead_attention_fused),
                          jt_tok(att.multihead_attention_reference), torch_tok() if torch else None))

    if "gelu" in args.ops:
        gl = importlib.import_module("gdlib.kernels.gelu")
        for (N, label) in [(64, "8px tokens"), (16, "4px tokens")]:
            x = rng.normal(size=(B, N, 384)).astype(np.float32)
            b = rng.normal(size=384).astype(np.float32)
            g = rng.normal(size=x.shape).astype(np.float32)

            def jt_fn(fn, x=x, b=b, g=g):
                t, jg = [jt.array(x), jt.array(b)], jt.array(g)

                def run():
                    jt.sync(jt.grad((fn(*t) * jg).sum(), t))
                return run

            def torch_fn(x=x, b=b, g=g):
                t, tg = [torch.tensor(a, requires_grad=True) for a in (x, b)], torch.from_numpy(g)

                def run():
                    torch.autograd.grad((F.gelu(t[0] + t[1]) * tg).sum(), t)
                return run
            cases.append((f"bias_gelu {label} [{B},{N},384]", jt_fn(gl.bias_gelu_fused), jt_fn(gl.bias_gelu_reference),
                          torch_fn() if torch else None))

    print(f"threads={args.threads or 'all'} batch={B} repeats={args.repeats} jittor={jt.__version__}"
          + (f" torch={torch.__version__}" if torch else ""))
    print(f"{'op (fwd+bwd)':58s} {'fused ms':>9s} {'ref ms':>9s} {'torch ms':>9s} "
          f"{'ref/fused':>9s} {'fused/torch':>11s} {'ref/torch':>9s}")
    for name, fused, ref, tch in cases:
        runs = [("fused", fused), ("ref", ref)] + ([("torch", tch)] if tch else [])
        times = interleaved(runs, args.repeats)
        med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
        t_ms = med.get("torch", float("nan"))
        print(f"{name:58s} {med['fused']:9.2f} {med['ref']:9.2f} {t_ms:9.2f} {med['ref'] / med['fused']:9.2f} "
              f"{med['fused'] / t_ms:11.2f} {med['ref'] / t_ms:9.2f}")
    gn._available(_build.device_key()), att._available(_build.device_key())
    print("fused ops compiled:", _build.status())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
