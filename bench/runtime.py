"""Benchmark: one small conv net, train step and inference, Jittor (through gdlib) vs PyTorch, plus Jittor
with oneDNN off. Prints each median time and the ratios against PyTorch measured in the same run.

    python bench/runtime.py [--batch 32] [--repeats 5] [--no-onednn-run]

PyTorch comes from the `bench` extra (pip install -e .[bench]). The oneDNN-off variant runs in a
subprocess (the choice is made before Jittor is imported) with fewer repeats, since it is ~100x slower.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

import numpy as np

from gdlib.timing import interleaved  # noqa: E402  (import gdlib before Jittor: it configures the runtime)

CHANNELS = (3, 32, 64, 64)


def make_inputs(batch: int, size: int = 32, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Inputs, targets and conv weights shared by both frameworks."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, CHANNELS[0], size, size)).astype(np.float32)
    y = rng.integers(0, 10, size=batch).astype(np.int64)
    ws = []
    for cin, cout in zip(CHANNELS[:-1], CHANNELS[1:]):
        ws.append((rng.standard_normal((cout, cin, 3, 3)) * (2.0 / (cin * 9)) ** 0.5).astype(np.float32))
        ws.append(np.zeros(cout, np.float32))
    ws.append((rng.standard_normal((10, CHANNELS[-1])) * 0.05).astype(np.float32))
    ws.append(np.zeros(10, np.float32))
    return x, y, ws


def time_interleaved(variants: dict[str, dict], repeats: int, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Median time of each variant's train and infer closures, timed in alternating rounds."""
    runs = [((name, kind), v[kind]) for name, v in variants.items() for kind in ("train", "infer")]
    times = interleaved(runs, repeats, warmup)
    return {name: {kind: statistics.median(times[(name, kind)]) for kind in ("train", "infer")} for name in variants}


def build_jittor(batch: int) -> dict:
    """Train-step and inference closures of the conv net in Jittor."""
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
    from gdlib import runtime
    jt = runtime.setup_jittor()
    from jittor import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList([nn.Conv2d(a, b, 3, padding=1) for a, b in zip(CHANNELS[:-1], CHANNELS[1:])])
            self.head = nn.Linear(CHANNELS[-1], 10)

        def execute(self, x):
            for i, c in enumerate(self.convs):
                x = nn.relu(c(x))
                if i < len(self.convs) - 1:
                    x = nn.pool(x, 2, "maximum")
            return self.head(x.mean(dims=(2, 3)))

    x_np, y_np, ws = make_inputs(batch)
    net = Net()
    params = [p for c in net.convs for p in (c.weight, c.bias)] + [net.head.weight, net.head.bias]
    for p, w in zip(params, ws):
        p.assign(jt.array(w))
    opt = nn.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x, y = jt.array(x_np), jt.array(y_np)

    def train_step():
        loss = nn.cross_entropy_loss(net(x), y)
        opt.step(loss)
        jt.sync_all()  # parameter updates are lazy too: wait for them, not just for the loss

    def infer():
        with jt.no_grad():
            net(x).sync()
        jt.sync_all()

    return {"train": train_step, "infer": infer, "onednn": runtime.info()["onednn"]}


def build_torch(batch: int) -> dict:
    """Train-step and inference closures of the same network in PyTorch."""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.convs = nn.ModuleList([nn.Conv2d(a, b, 3, padding=1) for a, b in zip(CHANNELS[:-1], CHANNELS[1:])])
            self.head = nn.Linear(CHANNELS[-1], 10)

        def forward(self, x):
            for i, c in enumerate(self.convs):
                x = torch.relu(c(x))
                if i < len(self.convs) - 1:
                    x = torch.nn.functional.max_pool2d(x, 2)
            return self.head(x.mean(dim=(2, 3)))

    x_np, y_np, ws = make_inputs(batch)
    net = Net()
    params = [p for c in net.convs for p in (c.weight, c.bias)] + [net.head.weight, net.head.bias]
    with torch.no_grad():
        for p, w in zip(params, ws):
            p.copy_(torch.from_numpy(w))
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np)

    def train_step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()

    def infer():
        with torch.no_grad():
            net(x)

    return {"train": train_step, "infer": infer}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--no-onednn-run", action="store_true", help="skip the slow oneDNN-off variant")
    ap.add_argument("--only", choices=["jittor"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only == "jittor":  # child process for the oneDNN-off variant
        print(json.dumps(time_interleaved({"j": build_jittor(args.batch)}, args.repeats, warmup=1)["j"]))
        return 0
    try:
        import torch  # noqa: F401
    except ImportError:
        print("PyTorch is not installed: pip install -e .[bench]  (on these machines torch==2.13.0 is a local CPU build)")
        return 2
    jv = build_jittor(args.batch)
    onednn = jv.pop("onednn")
    res = time_interleaved({"jittor": jv, "pytorch": build_torch(args.batch)}, args.repeats)
    th_res = res["pytorch"]
    rows = [("jittor (oneDNN %s)" % ("on" if onednn else "OFF"), res["jittor"]), ("pytorch", th_res)]
    if not args.no_onednn_run:
        env = dict(os.environ, GDLIB_NO_ONEDNN="1")
        r = subprocess.run([sys.executable, __file__, "--only", "jittor", "--batch", str(args.batch),
                            "--repeats", "2"], env=env, capture_output=True, text=True)
        if r.returncode == 0:
            rows.append(("jittor (oneDNN off)", json.loads(r.stdout.strip().splitlines()[-1])))
        else:
            print("oneDNN-off run failed:", r.stderr[-2000:])
    print(f"conv net {CHANNELS}, batch {args.batch}, 32x32, median of {args.repeats}")
    print(f"{'variant':24s} {'train step':>12s} {'inference':>12s} {'train/torch':>12s} {'infer/torch':>12s}")
    for name, r in rows:
        print(f"{name:24s} {r['train']*1e3:10.1f}ms {r['infer']*1e3:10.1f}ms "
              f"{r['train']/th_res['train']:12.2f} {r['infer']/th_res['infer']:12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
