"""Guided (RB-Modulation, num_iter 3) vs unguided sampling: time and peak memory, as ratios from one run.

    nice -n 10 .venv/bin/python bench/guidance.py [--checkpoint gdlib/data/base/base.safetensors] [--n 4] [--steps 10]

Time: the variants run interleaved (unguided, guided, guided+AFA) for --repeats rounds after one warm-up
round (Jittor compiles each new op shape once), each round ending in jt.sync_all(); the median per variant is
reported. Peak memory: each variant runs once in a fresh subprocess and reports its own peak resident set size
(resource.getrusage ru_maxrss); the ratio is guided / unguided. Target (issue 8): guided time <= 2.5x unguided.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("unguided", "guided", "guided_afa")


def _setup(a):
    from gdlib import runtime

    jt = runtime.setup_jittor()
    from gdlib import toyworld
    from gdlib.guidance import RBConfig, stylize
    from gdlib.pipeline import TextToImage
    from gdlib.style import get_descriptor

    model = TextToImage.load(a.checkpoint)
    ref = toyworld.few_shot_set("mosaic", "animal", k=1, seed=0)["images"]
    objs = toyworld.OBJECTS
    prompts = [toyworld.CAPTION_TEMPLATE.format(style="flat", object=objs[i % len(objs)]).replace(" flat", "")
               for i in range(a.n)]
    psi = get_descriptor(a.psi)
    cfg = RBConfig(num_iter=3)

    def run(variant: str):
        out = stylize(model, prompts, ref, psi, cfg, a.steps, a.guidance, control=variant != "unguided",
                      afa=variant == "guided_afa", seed=0)
        jt.sync_all()
        return out
    return run


def _one(a) -> int:
    """Subprocess: load the model, run one variant once (compiling its ops), print the peak RSS in MiB and the
    peak before the run (model loaded) as JSON."""
    import resource

    run = _setup(a)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    run(a.one)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"variant": a.one, "peak_rss_mib": peak / 1024.0, "before_run_mib": base / 1024.0}))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/guidance.py", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", default=str(ROOT / "data" / "base" / "base.safetensors"))
    p.add_argument("--n", type=int, default=4, help="prompts per batch")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--guidance", type=float, default=4.0)
    p.add_argument("--psi", default="gram", choices=("gram", "csd"))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--one", choices=VARIANTS, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if not Path(a.checkpoint).exists():
        raise FileNotFoundError(f"no base checkpoint at {a.checkpoint}; pass --checkpoint (a TextToImage .safetensors)")
    if a.one:
        return _one(a)

    import numpy as np

    run = _setup(a)
    for v in VARIANTS:  # warm-up: compile every shape
        run(v)
    times = {v: [] for v in VARIANTS}
    for _ in range(a.repeats):
        for v in VARIANTS:
            t = time.perf_counter()
            run(v)
            times[v].append(time.perf_counter() - t)
    med = {v: float(np.median(ts)) for v, ts in times.items()}
    mem, grow = {}, {}
    for v in VARIANTS:
        cmd = [sys.executable, __file__, "--one", v, "--checkpoint", a.checkpoint, "--n", str(a.n),
               "--steps", str(a.steps), "--guidance", str(a.guidance), "--psi", a.psi]
        out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), check=True).stdout
        rec = json.loads(out.strip().splitlines()[-1])
        mem[v] = rec["peak_rss_mib"]
        grow[v] = rec["peak_rss_mib"] - rec["before_run_mib"]
    print(f"batch {a.n} prompts, {a.steps} DDIM steps, CFG {a.guidance}, Psi {a.psi}, num_iter 3, "
          f"median of {a.repeats} interleaved rounds")
    for v in VARIANTS:
        print(f"  {v:<11} time {med[v]:7.2f} s  ({med[v] / med['unguided']:.2f}x unguided)   "
              f"peak RSS {mem[v]:7.1f} MiB ({mem[v] / mem['unguided']:.2f}x; "
              f"+{grow[v]:.1f} MiB over the loaded model, compiles included)")
    ratio = med["guided"] / med["unguided"]
    print(f"guided/unguided time ratio {ratio:.2f} (target <= 2.5: {'met' if ratio <= 2.5 else 'NOT met'}); "
          f"peak memory ratio {mem['guided'] / mem['unguided']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
