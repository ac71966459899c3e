"""SIGKILL drills: `gdlib train-base` and `gdlib train-style` killed at random points and rerun with the same command
end with exactly the weights of an uninterrupted run (atomic checkpoints, random streams keyed by step)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

pytestmark = pytest.mark.slow

BASE_STEPS = 30
TINY_BASE = ["--steps", str(BASE_STEPS), "--minutes", "60", "--batch", "4", "--lr", "2e-3", "--warmup", "2", "--n-per-pair", "1",
             "--base-channels", "16", "--channel-mult", "1,2", "--text-width", "16", "--text-layers", "1",
             "--attn-resolutions", "8", "--self-attn-resolutions", "8", "--sample-every", "0", "--no-progress",
             "--checkpoint-every", "1"]


def _gdlib(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "gdlib.cli", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def _ckpt_step(ckpt: Path) -> int:
    """The step a checkpoint was written at, read from its safetensors header (-1: no checkpoint yet). Writers replace
    the file atomically, so a file that exists is complete."""
    try:
        with open(ckpt, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            meta = json.loads(f.read(n)).get("__metadata__", {})
    except FileNotFoundError:
        return -1
    state = json.loads(meta.get("state") or "{}")
    return int(state.get("step", -1))


def _run_killed(args, cwd, ckpt: Path, steps: int, kills: int, seed: int) -> list[int]:
    """Run the command, SIGKILL it `kills` times, each time as soon as its checkpoint reaches a random step (so the
    kill lands mid-run whatever the machine's speed, with the optimizer mid-way through a step's work), then let it
    finish. Returns the checkpointed step at each kill."""
    # Jittor (loaded in this test process by conftest) installs a SIGCHLD handler that exits the whole process when a
    # child dies of a signal; a killed child is the point of this drill, so the default handler is restored meanwhile
    old = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    try:
        return _drill(args, cwd, ckpt, steps, kills, seed)
    finally:
        signal.signal(signal.SIGCHLD, old)


def _drill(args, cwd, ckpt: Path, steps: int, kills: int, seed: int) -> list[int]:
    rng = np.random.default_rng(seed)
    # targets in the first half: a fast machine may finish a few more tiny steps between the poll and the kill
    targets = sorted(rng.choice(np.arange(1, steps // 2), size=kills, replace=False).tolist())
    killed_at = []
    for target in targets:
        p = _gdlib(args, cwd)
        t0 = time.time()
        while _ckpt_step(ckpt) < target and p.poll() is None and time.time() - t0 < 600:
            time.sleep(0.002)
        assert p.poll() is None, f"the run ended before its checkpoint reached step {target}: {p.stdout.read()[-3000:]}"
        p.send_signal(signal.SIGKILL)
        p.wait()
        killed_at.append(_ckpt_step(ckpt))
    p = _gdlib(args, cwd)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-3000:]
    assert "resumed" in out, out[-3000:]
    return killed_at


def _same_tensors(a: Path, b: Path, prefixes=("",)):
    ta, tb = load_file(str(a)), load_file(str(b))
    keys = [k for k in ta if k.startswith(prefixes)]
    assert keys and set(keys) == {k for k in tb if k.startswith(prefixes)}
    for k in keys:
        np.testing.assert_array_equal(ta[k], tb[k], err_msg=k)


def test_train_base_killed_and_resumed_equals_uninterrupted(tmp_path):
    straight, drilled = tmp_path / "straight", tmp_path / "drilled"
    p = _gdlib(["train-base", "--out", str(straight), *TINY_BASE], tmp_path)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-3000:]
    killed_at = _run_killed(["train-base", "--out", str(drilled), *TINY_BASE], tmp_path, drilled / "ckpt.safetensors",
                            steps=BASE_STEPS, kills=3, seed=0)
    assert len(killed_at) == 3 and max(killed_at) < BASE_STEPS, killed_at
    _same_tensors(straight / "ckpt.safetensors", drilled / "ckpt.safetensors", ("model.", "ema."))
    # a different run in the same folder is refused, naming what differs
    p = _gdlib(["train-base", "--out", str(drilled), *TINY_BASE, "--lr", "1e-3"], tmp_path)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 2 and "lr 0.002 -> 0.001" in out and "Traceback" not in out


def test_train_style_killed_and_resumed_equals_uninterrupted(tmp_path):
    from gdlib import runtime

    runtime.setup_jittor()
    from conftest import tiny_model
    from gdlib.toyworld.export import export_challenge

    base = tiny_model(size=16).save(tmp_path / "base.safetensors")
    export_challenge(tmp_path / "toy", styles=["watercolor"], per_style=3, size=16)
    args = ["train-style", str(tmp_path / "toy" / "00"), "--base", str(base), "--steps", "30", "--batch", "2",
            "--checkpoint-every", "1", "--no-progress", "--cache-dir", str(tmp_path / "cache")]
    p = _gdlib([*args, "--out", str(tmp_path / "a.safetensors")], tmp_path)
    out, _ = p.communicate(timeout=900)
    assert p.returncode == 0, out[-3000:]
    from gdlib.finetune import _ckpt_path

    b = tmp_path / "b.safetensors"
    killed_at = _run_killed([*args, "--out", str(b)], tmp_path, _ckpt_path(b), steps=30, kills=2, seed=1)
    assert len(killed_at) == 2 and max(killed_at) < 30, killed_at
    _same_tensors(tmp_path / "a.safetensors", b)
