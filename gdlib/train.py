"""Pretraining of the toy text-to-image model on ToyWorld: epsilon or v target (Ho et al. 2020, Eq. 14;
Salimans & Ho 2022), caption dropout for classifier-free guidance, Min-SNR loss weights (Hang et al. 2023),
AdamW + warmup + cosine decay, gradient clipping, EMA, sample grids, atomic checkpoints with resume."""
from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .config import TrainConfig  # noqa: E402,F401  (re-exported)
from . import runtime

jt = runtime.setup_jittor()

from . import kernels  # noqa: E402
from .core import (count_skipped, denoising_loss, guarded_step, load_run, min_snr_weights, noised_batch,  # noqa: E402
                   save_run)
from .models.config import ModelConfig, TextConfig, UNetConfig  # noqa: E402
from .checkpoint import write_atomic  # noqa: E402
from .config import DEFAULT_GUIDANCE  # noqa: E402
from .pipeline import TextToImage  # noqa: E402

CKPT_NAME = "ckpt.safetensors"


def lr_at(step: int, progress: float, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay from lr to lr * lr_min_ratio over progress in [0, 1]."""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup_steps))
    cos = 0.5 * (1 + math.cos(math.pi * min(1.0, max(0.0, progress))))
    return cfg.lr * warm * (cfg.lr_min_ratio + (1 - cfg.lr_min_ratio) * cos)


def ema_update(ema_params: list, params: list, decay: float) -> None:
    """theta_ema <- decay theta_ema + (1 - decay) theta."""
    for pe, p in zip(ema_params, params):
        pe.update((pe * decay + p.detach() * (1.0 - decay)).stop_grad())
    jt.sync(ema_params)


def _load_data(cfg: TrainConfig, model: TextToImage) -> dict:
    from . import toyworld

    styles = list(cfg.styles) if cfg.styles is not None else list(toyworld.KNOWN_STYLES)
    objects = list(cfg.objects) if cfg.objects is not None else list(toyworld.OBJECTS)
    leaked = sorted(set(styles) & set(toyworld.HELDOUT_STYLES))
    if leaked:
        raise ValueError(f"pretraining must never see held-out styles; remove {leaked} from styles")
    size = model.config.unet.image_size
    ds = toyworld.make_dataset(styles, objects, cfg.n_per_pair, cfg.data_seed, size=size)
    # ids [K, N, L]: image n's caption in each of the K templates; the loop draws a template per sample
    templates = list(toyworld.CAPTION_TEMPLATES) if cfg.caption_mix else ["style"]
    pairs = [(toyworld.STYLES[si], toyworld.OBJECTS[oi]) for si, oi in zip(ds["style_idx"], ds["object_idx"])]
    ds["ids"] = np.stack([model.tokenizer.encode([toyworld.caption(s, o, k) for s, o in pairs], strict=True)
                          for k in templates])
    ds["templates"] = templates
    ds["template_p"] = toyworld.caption_template_probs() if cfg.caption_mix else np.ones(1)
    ds["styles"], ds["objects"], ds["data_version"] = styles, objects, toyworld.DATA_VERSION
    return ds


# budgets and bookkeeping may change between resumes; everything else defines the run
_NOT_RUN_DEFINING = ("out_dir", "steps", "minutes", "checkpoint_minutes", "checkpoint_every", "sample_every",
                     "sample_steps", "guidance_scale", "log_every")


def run_definition(cfg: TrainConfig) -> dict:
    """The config fields that define a run (a resume must match them): everything but budgets and logging."""
    return {k: v for k, v in json.loads(json.dumps(asdict(cfg), default=list)).items() if k not in _NOT_RUN_DEFINING}


def batch_rng(cfg: TrainConfig, step: int, attempt: int = 0) -> np.random.Generator:
    """The random stream of one training step (batch, noise, timesteps, caption templates, dropout): a function of
    (seed, step, attempt) only, so a resumed run draws exactly the batches an uninterrupted one would; a step retried
    after a skipped non-finite update (attempt 1, 2) draws a fresh batch."""
    return np.random.default_rng([int(cfg.seed), 1000003, int(step), int(attempt)])


def save_checkpoint(path: Path, model: TextToImage, ema: TextToImage, opt, state: dict, cfg: TrainConfig) -> Path:
    """Model, EMA, AdamW moments, loop state and the run definition in one safetensors file (atomic)."""
    tensors = {"model." + k: v for k, v in model.state().items()}
    tensors.update({"ema." + k: v for k, v in ema.state().items()})
    return save_run(path, tensors, opt, state, run_definition(cfg), model.metadata())


def _restore(path: Path, model: TextToImage, ema: TextToImage, opt, cfg: TrainConfig) -> dict:
    tensors, state, _ = load_run(path, opt, run_definition(cfg))  # another run (model config included): ValueError
    model.load_state({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    return state


def sample_grid(model: TextToImage, styles: Sequence[str], objects: Sequence[str], path: Path | None,
                steps: int = 25, guidance_scale: float = DEFAULT_GUIDANCE, seed: int = 0, title: str = ""):
    """One sample per (style, object) prompt as a grid (rows = styles); saved as PNG when path is given."""
    from . import plot, toyworld
    from .pipeline import generate

    prompts = [toyworld.caption(s, o) for s in styles for o in objects]
    images = generate(model, prompts, num_inference_steps=steps, guidance_scale=guidance_scale, seed=seed)
    fig = plot.image_grid(images, nrow=len(objects), titles=list(objects), row_labels=list(styles), suptitle=title)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=80))
        import matplotlib.pyplot as plt
        plt.close(fig)
    return images, fig


def train_base(cfg: TrainConfig, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Train (or resume) the base model; returns dict(model, ema, history, state, data_version)."""
    from tqdm.auto import tqdm

    if cfg.batch_size < 1 or cfg.steps < 0 or cfg.minutes <= 0:
        raise ValueError("batch_size must be >= 1, steps >= 0 and minutes > 0")
    if not 0.0 <= cfg.cond_drop < 1.0:
        raise ValueError(f"cond_drop must be in [0, 1), got {cfg.cond_drop}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CKPT_NAME
    jt.set_global_seed(cfg.seed)
    from . import toyworld
    mc = cfg.model
    mc.text.vocab = list(toyworld.vocabulary())
    mc.unet.context_dim = mc.text.width
    model = TextToImage(mc)
    ema = TextToImage(mc)
    ema.load_state(model.state())
    params, ema_params = model.parameters(), ema.parameters()
    opt = kernels.AdamW(params, cfg.lr, weight_decay=cfg.weight_decay)  # fused step; jt.optim.AdamW when kernels are off
    state = {"step": 0, "elapsed": 0.0, "history": {"step": [], "loss": [], "lr": []}}
    if ckpt.exists():
        state = _restore(ckpt, model, ema, opt, cfg)
        log(f"resumed from {ckpt} at step {state['step']} ({state['elapsed'] / 60:.1f} min trained)")
    t_data = time.time()
    ds = _load_data(cfg, model)
    log(f"data: {len(ds['captions'])} images, {len(ds['styles'])} styles x {len(ds['objects'])} objects, "
        f"{len(ds['templates'])} caption templates, ToyWorld data version {ds['data_version']} "
        f"({time.time() - t_data:.0f} s); "
        f"model: {model.num_parameters():,} parameters")
    images, ids, N = ds["images"], ds["ids"], len(ds["captions"])
    template_p = ds["template_p"]
    uncond_ids = model.tokenizer.encode([""])[0]
    abar_table = model.schedule.alphas_cumprod
    budget = cfg.minutes * 60.0
    hist = state["history"]
    bar = tqdm(total=cfg.steps, initial=state["step"], disable=not progress, desc="train-base", mininterval=5)
    t_last_ckpt, t0, elapsed0 = time.time(), time.time(), state["elapsed"]
    running, bad_steps = None, 0
    while state["step"] < cfg.steps and state["elapsed"] < budget:
        step = state["step"]
        lr = lr_at(step, max(step / max(1, cfg.steps), state["elapsed"] / budget), cfg)
        opt.lr = lr
        rng = batch_rng(cfg, step, bad_steps)
        idx = rng.integers(0, N, cfg.batch_size)
        x_t, t, target = noised_batch(model.schedule, images[idx], rng)
        drop = rng.random(cfg.batch_size) < cfg.cond_drop
        k = rng.choice(len(template_p), size=cfg.batch_size, p=template_p)
        ids_b = np.where(drop[:, None], uncond_ids[None, :], ids[k, idx]).astype(np.int32)
        w = min_snr_weights(abar_table[t], cfg.min_snr_gamma, model.config.prediction_type).astype(np.float32)
        loss = denoising_loss(model.unet, x_t, t, model.text_encoder(ids_b), target, w).mean()
        loss_val, norm_val, updated = guarded_step(opt, loss, cfg.grad_clip)
        if not updated:
            bad_steps = count_skipped(bad_steps, loss_val, norm_val, step, lr, ckpt, log)
            continue
        bad_steps = 0
        ema_update(ema_params, params, min(cfg.ema_decay, (1 + step) / (10 + step)))
        state["step"] = step + 1
        state["elapsed"] = elapsed0 + (time.time() - t0)
        running = loss_val if running is None else 0.95 * running + 0.05 * loss_val
        if state["step"] % cfg.log_every == 0 or state["step"] == 1:
            hist["step"].append(state["step"]); hist["loss"].append(running); hist["lr"].append(lr)
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}", lr=f"{lr:.1e}", min=f"{state['elapsed'] / 60:.1f}")
        if cfg.sample_every and state["step"] % cfg.sample_every == 0:
            _grid(ema, ds, out / "samples" / f"step_{state['step']:06d}.png", cfg, log)
        if time.time() - t_last_ckpt >= cfg.checkpoint_minutes * 60 or \
                (cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0):
            save_checkpoint(ckpt, model, ema, opt, {**state, "elapsed": elapsed0 + time.time() - t0}, cfg)
            t_last_ckpt = time.time()
    bar.close()
    save_checkpoint(ckpt, model, ema, opt, state, cfg)
    log(f"stopped at step {state['step']} after {state['elapsed'] / 60:.1f} min; checkpoint {ckpt}")
    return {"model": model, "ema": ema, "history": hist, "state": state, "data_version": ds["data_version"],
            "styles": ds["styles"], "objects": ds["objects"], "templates": ds["templates"]}


def _grid(ema: TextToImage, ds: dict, path: Path, cfg: TrainConfig, log) -> None:
    styles = ds["styles"][::max(1, len(ds["styles"]) // 6)][:6]
    objects = ds["objects"][::max(1, len(ds["objects"]) // 6)][:6]
    t = time.time()
    sample_grid(ema, styles, objects, path, cfg.sample_steps, cfg.guidance_scale, seed=0, title=path.stem)
    log(f"\nsample grid {path} ({time.time() - t:.0f} s)")


def export_base(ema: TextToImage, out_dir: str | os.PathLike, card: dict[str, Any]) -> Path:
    """Write the EMA weights as out_dir/base.safetensors plus model_card.json/.md."""
    from .checkpoint import write_model_card

    out = Path(out_dir)
    path = ema.save(out / "base.safetensors", {"model_card": card})
    write_model_card(out, card, title="gdlib toy text-to-image base model")
    return path


def _int_list(text: str, option: str, example: str) -> tuple[int, ...]:
    """"1,2,2" -> (1, 2, 2), with an error that names the option."""
    try:
        return tuple(int(m) for m in text.split(",") if m.strip())
    except ValueError:
        raise ValueError(f"{option} must look like {example}, got {text!r}") from None


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    """TrainConfig from parsed train-base options (gdlib.commands.train_base)."""
    from .cliutil import config_kwargs
    from .commands import TRAIN_OPTIONS

    mult = _int_list(a.channel_mult, "--channel-mult", "1,2,2")
    attn = _int_list(a.attn_resolutions, "--attn-resolutions", "16,8,4")
    self_attn = _int_list(a.self_attn_resolutions, "--self-attn-resolutions", "8,4")
    if not set(self_attn) <= set(attn):
        raise ValueError(f"--self-attn-resolutions {self_attn} must be a subset of --attn-resolutions {attn}")
    unet = UNetConfig(base_channels=a.base_channels, channel_mult=mult, patch_size=a.patch_size,
                      context_dim=a.text_width, attn_resolutions=attn, self_attn_resolutions=self_attn)
    text = TextConfig(width=a.text_width, layers=a.text_layers)
    return TrainConfig(**config_kwargs(a, TRAIN_OPTIONS),
                       model=ModelConfig(unet=unet, text=text, prediction_type=a.prediction_type))


def main_train_base(argv: list[str]) -> int:
    """`gdlib train-base`: train or resume; with --export, measure and export the EMA model."""
    import shlex
    import sys

    from .commands import parse

    a = parse("train-base", argv)
    cfg = config_from_args(a)
    res = train_base(cfg, progress=not a.no_progress)
    if a.export:
        t = time.time()
        templates = res["templates"] if a.eval_templates == "trained" else a.eval_templates.split(",")
        per_template = {}
        for k in templates:
            acc = measure_accuracy_cli(res["ema"], res["styles"], res["objects"], a.eval_per_pair, a.eval_steps,
                                       a.guidance_scale, template=k)
            per_template[k] = acc
            sty = "-" if acc["style_accuracy"] is None else f"{acc['style_accuracy']:.3f}"
            print(f"template {k!r} ({acc['prompt_form']}): {acc['n_images']} prompts, content "
                  f"{acc['content_accuracy']:.3f}, style {sty}")
        acc = per_template.get("style") or next(iter(per_template.values()))
        print(f"accuracy over {acc['n_images']} known style x object prompts ({a.eval_steps} DDIM steps, CFG "
              f"{a.guidance_scale}): content {acc['content_accuracy']:.3f}, style {acc['style_accuracy']} "
              f"({time.time() - t:.0f} s for {len(per_template)} templates)")
        cfg_dict = asdict(cfg)
        card = {"command": "gdlib train-base " + " ".join(shlex.quote(x) for x in argv),
                "data": f"ToyWorld data version {res['data_version']}, known styles only: {res['styles']}; "
                        f"objects: {res['objects']}; {cfg.n_per_pair} images per pair (data seed {cfg.data_seed}); "
                        f"captions drawn from {len(res['templates'])} templates: {res['templates']}",
                "steps": res["state"]["step"], "train_minutes": round(res["state"]["elapsed"] / 60, 1),
                "batch_size": cfg.batch_size, "parameters": res["ema"].num_parameters(),
                "weights": "EMA (decay %.4f)" % cfg.ema_decay, "prediction_type": cfg.model.prediction_type,
                "final_loss": round(res["history"]["loss"][-1], 5) if res["history"]["loss"] else None,
                "metrics": {k: v for k, v in acc.items() if k != "per_style"}, "per_style": acc["per_style"],
                "per_template": {k: {f: v for f, v in r.items() if f != "per_style"} for k, r in per_template.items()},
                "train_config": {k: v for k, v in cfg_dict.items() if k != "model"},
                "model_config": json.loads(cfg.model.to_json()),
                "backend": f"{runtime.info()['backend']}, python {sys.version.split()[0]}"}
        path = export_base(res["ema"], a.export, card)
        print(f"exported {path} ({path.stat().st_size / 2**20:.2f} MiB) + model card")
    return 0


def measure_accuracy_cli(model, styles, objects, n_per_pair, steps, guidance, template: str = "style") -> dict:
    """measure_accuracy with the shipped evaluators (kept separate so train-base runs before they exist)."""
    from .pipeline import measure_accuracy

    return measure_accuracy(model, styles, objects, n_per_pair, steps, guidance, seed=1234, template=template)


