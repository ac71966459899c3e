"""`gdlib doctor`: report the runtime and prove a convolution runs forward and backward."""
from __future__ import annotations

import argparse
import time

from .cliutil import Parser  # noqa: E402
from . import runtime


def check_conv() -> dict[str, float]:
    """Run a small Conv2d forward and backward; return timings and the max gradient error."""
    jt = runtime.setup_jittor()
    import numpy as np
    from jittor import nn

    jt.set_global_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    x = jt.array(np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype("float32"))
    t0 = time.perf_counter()
    y = conv(x)
    gw = jt.grad((y * y).sum(), conv.weight)
    gw.sync()
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    y = conv(x)
    gw = jt.grad((y * y).sum(), conv.weight)
    gw.sync()
    warm = time.perf_counter() - t0
    # Check the weight gradient against a finite difference on one entry.
    w = conv.weight.numpy().copy()
    eps = 1e-2
    def loss_at(delta):
        w2 = w.copy(); w2[0, 0, 1, 1] += delta
        conv.weight.assign(jt.array(w2))
        out = conv(x)
        return (out * out).sum().item()
    fd = (loss_at(eps) - loss_at(-eps)) / (2 * eps)
    conv.weight.assign(jt.array(w))
    rel = abs(fd - float(gw.numpy()[0, 0, 1, 1])) / max(1e-6, abs(fd))
    return {"cold_s": cold, "warm_s": warm, "grad_rel_err": rel}


def main(argv: list[str]) -> int:
    """Print the runtime report and run the conv check; exit 1 if something is wrong."""
    Parser(prog="gdlib doctor", description=__doc__).parse_args(argv)
    print("gdlib doctor")
    try:
        rep = runtime.info()
    except Exception as e:  # noqa: BLE001 - the doctor must say what broke
        print(f"  FAIL importing Jittor: {type(e).__name__}: {e}")
        return 1
    for k, v in rep.items():
        print(f"  {k:20s} {v}")
    problems = []
    if rep["backend"] == "cpu" and not rep["onednn"]:
        problems.append("oneDNN is off: convolutions will be ~160x slower. "
                        "pip install onednn-cpu-gomp==2022.2.1 onednn-devel-cpu-gomp==2022.2.1")
    try:
        res = check_conv()
        print(f"  conv fwd+bwd         cold {res['cold_s']:.2f} s (includes compiling), warm {res['warm_s']*1e3:.1f} ms, "
              f"gradient check rel. error {res['grad_rel_err']:.1e}")
        if not res["grad_rel_err"] < 1e-2:
            problems.append(f"conv gradient disagrees with finite differences ({res['grad_rel_err']:.2e})")
    except Exception as e:  # noqa: BLE001
        problems.append(f"conv forward/backward failed: {type(e).__name__}: {e}")
    for w in rep["warnings"]:
        problems.append(w)
    if problems:
        print("PROBLEMS:")
        for p in problems:
            print("  - " + p)
        return 1
    print("OK: Jittor works" + (" with oneDNN" if rep["onednn"] else ""))
    return 0
