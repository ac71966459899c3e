"""The training core every loop shares (train-base, train-style, the adapter study of notebook 03): the noised batch
and the denoising loss (Ho et al. 2020, Eq. 14; v-target of Salimans & Ho 2022), Min-SNR weights (Hang et al. 2023),
the guarded optimizer step, and resumable checkpoints that refuse to resume a different run."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from . import runtime

jt = runtime.setup_jittor()

from . import kernels  # noqa: E402
from .checkpoint import load_tensors, optimizer_tensors, restore_optimizer, save_tensors  # noqa: E402

MAX_BAD_STEPS = 3  # non-finite steps in a row before a run stops


def min_snr_weights(alpha_bar: np.ndarray, gamma: float, prediction_type: str) -> np.ndarray:
    """Min-SNR-gamma loss weights (Hang et al. 2023, Eq. 9): min(SNR, g)/SNR for eps, min(SNR, g)/(SNR+1) for v."""
    snr = alpha_bar / (1.0 - alpha_bar)
    if gamma <= 0:
        return np.ones_like(snr)
    if prediction_type == "epsilon":
        return np.minimum(snr, gamma) / snr
    if prediction_type == "v_prediction":
        return np.minimum(snr, gamma) / (snr + 1.0)
    return np.minimum(snr, gamma)


def noised_batch(schedule, x0: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw eps ~ N(0, I) and t ~ U{0..T-1} (in that order) -> (x_t, t, target): x_t = sqrt(abar) x0 + sqrt(1-abar)
    eps (Ho et al. 2020, Eq. 4) and the target the model learns for it (eps, x0 or v: schedule.training_target)."""
    x0 = np.asarray(x0, np.float32)
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    t = rng.integers(0, schedule.num_train_timesteps, len(x0))
    x_t = np.asarray(schedule.add_noise(x0, eps, t), np.float32)
    return x_t, t, np.asarray(schedule.training_target(x0, eps, t), np.float32)


def flow_batch(x0: np.ndarray, rng: np.random.Generator, t_sampling: str = "uniform"
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Flow matching's batch (gdlib.flow): draw eps ~ N(0, I), then t ~ U(0, 1) or logit-normal(0, 1) (SD3, Esser et
    al. 2024), in that order -> (x_t, t, target) with x_t = (1 - t) x0 + t eps and the velocity target eps - x0."""
    x0 = np.asarray(x0, np.float32)
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    if t_sampling == "uniform":
        t = rng.random(len(x0))
    elif t_sampling == "logit_normal":
        t = 1.0 / (1.0 + np.exp(-rng.standard_normal(len(x0))))
    else:
        raise ValueError(f"t_sampling must be 'uniform' or 'logit_normal', got {t_sampling!r}")
    t = t.astype(np.float32)
    tb = t.reshape((-1,) + (1,) * (x0.ndim - 1))
    return ((1.0 - tb) * x0 + tb * eps).astype(np.float32), t, (eps - x0).astype(np.float32)


def denoising_loss(unet, x_t: np.ndarray, t: np.ndarray, context, target: np.ndarray,
                   weights: np.ndarray | None = None) -> "jt.Var":
    """Per-sample loss w_i * mean ||f(x_t, t, c) - target||^2 (Ho et al. 2020, Eq. 14, weighted): a [B] jt.Var."""
    pred = unet(jt.array(x_t), jt.array(np.asarray(t, np.float32)), context)
    per_sample = ((pred - jt.array(target)) ** 2).mean(dims=(1, 2, 3))
    return per_sample if weights is None else per_sample * jt.array(np.asarray(weights, np.float32))


def guarded_step(opt, loss: "jt.Var", grad_clip: float) -> tuple[float, float, bool]:
    """Backward, clip and update only if the loss and the gradient norm are finite; returns (loss, norm, updated).

    A non-finite step leaves weights and optimizer moments as they were (its gradients are dropped), so one bad
    batch costs one step instead of the run; the caller decides when too many in a row is an error."""
    opt.backward(loss)
    norm = kernels.adamw.grad_norm(opt)
    jt.sync([loss] if norm is None else [loss, norm])
    loss_val = float(loss.item())
    norm_val = 0.0 if norm is None else float(norm.item())
    if not (math.isfinite(loss_val) and math.isfinite(norm_val)):
        opt.zero_grad()
        opt.n_step -= 1  # the dropped backward does not count for Adam's bias correction
        if getattr(opt, "_clip", None) is not None:
            opt._clip = None
        return loss_val, norm_val, False
    if grad_clip > 0:
        if isinstance(opt, kernels.AdamW):
            opt.clip_grad_norm(grad_clip, total_norm=norm)
        else:
            opt.clip_grad_norm(grad_clip)
    opt.step()
    return loss_val, norm_val, True


def count_skipped(bad_steps: int, loss_val: float, norm_val: float, step: int, lr: float, ckpt: Path | None,
                  log: Callable[[str], None]) -> int:
    """Log a skipped non-finite step and return the new count in a row; at MAX_BAD_STEPS raise FloatingPointError."""
    bad_steps += 1
    log(f"\nstep {step}: loss {loss_val}, gradient norm {norm_val}: not finite, update skipped ({bad_steps} in a row)")
    if bad_steps >= MAX_BAD_STEPS:
        where = f"the last good checkpoint is {ckpt} (if any); " if ckpt is not None else ""
        raise FloatingPointError(
            f"loss is {loss_val} (gradient norm {norm_val}) at step {step}, {MAX_BAD_STEPS} steps in a row "
            f"(lr {lr:.2e}); the weights were not updated by them. {where}check the data for NaN, lower --lr or "
            "keep --grad-clip on, then rerun to resume.")
    return bad_steps


# ------------------------------------------------------------------------------------------ resumable checkpoints
def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def run_differences(saved: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """'key old -> new' for every option that differs between two run definitions (nested keys dotted, sorted)."""
    a, b = _flat(saved), _flat(now)
    return [f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def save_run(path: str | Path, tensors: Mapping[str, np.ndarray], opt, state: dict, run: Mapping[str, Any],
             metadata: Mapping[str, str] | None = None) -> Path:
    """One atomic safetensors file: the given tensors, the optimizer's moments, the loop state and the run
    definition (the options a resume must match)."""
    tensors = {**tensors, **optimizer_tensors(opt)}
    meta = {**(metadata or {}), "run": json.dumps(run, sort_keys=True, default=list),
            "state": json.dumps({**state, "opt_n_step": int(opt.n_step)})}
    return save_tensors(path, tensors, meta)


def load_run(path: str | Path, opt, run: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], dict, dict[str, str]]:
    """Read a save_run file, refuse it if its run definition differs from `run` (naming what differs), put the
    optimizer state back; returns (tensors, loop state, metadata)."""
    tensors, meta = load_tensors(path)
    if "run" not in meta or "state" not in meta:
        raise ValueError(f"{path} is not a resumable gdlib checkpoint (written by an older gdlib?); delete it or choose "
                         "another output to start afresh")
    saved = json.loads(meta["run"])
    now = json.loads(json.dumps(run, sort_keys=True, default=list))
    differ = run_differences(saved, now)
    if differ:
        raise ValueError(f"{path} belongs to a run with other options: {'; '.join(differ)}; rerun with the original "
                         "options to resume, or delete the checkpoint / choose another output to start afresh")
    state = json.loads(meta["state"])
    restore_optimizer(opt, tensors, state.pop("opt_n_step"))
    return tensors, state, meta
