"""Guided DoRA end to end: DoRA fine-tuning with decoupled prompts on a few-shot style folder, then RB-Modulation
steering the Tweedie estimate toward the references while sampling; the challenge's baseline and the ablation
variants between them; predictions written in the challenge layout ({out}/{NN}/{prompt}.png) and scored.

Variants (each row of the ablation table):
    baseline        DreamBooth-LoRA with the instance token only (the challenge baseline: "style_NN")
    dora            DoRA, same captions
    dora_decoupled  DoRA + decoupled prompts ("{attribute} painting of {object}", gdlib.prompts)
    guided_dora     DoRA + decoupled prompts + RB-Modulation toward the few-shot images (gdlib.guidance)
    custom          Custom Diffusion: full cross-attention K/V weights + instance token (by name only; notebook 07)
Variants that differ only in guidance share one fine-tune.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

# the variants and knobs (gdlib.config) and the reports (gdlib.report) are re-exported: gdlib.recipe is the entry point
from .config import DEFAULT_BASE, DEFAULT_GUIDANCE, VARIANTS, RBConfig, RecipeConfig, Variant  # noqa: F401
from .report import (METRICS, ablation_markdown, ingredient_markdown, ingredient_steps, load_results,  # noqa: F401
                     panel_figure, results_dict, style_panel, variant_table, write_readme_table, write_results)
from . import runtime

jt = runtime.setup_jittor()

from .finetune import StyleConfig, finetune_style, load_base, load_style_folder, style_prompt  # noqa: E402,F401
from .guidance import stylize  # noqa: E402
from .pipeline import generate  # noqa: E402
from .stats import paired_difference  # noqa: E402


def variants(names: Sequence[str] | str | None = None) -> list[Variant]:
    """Variant objects by name (comma-separated string or list; None: the default ablation, every variant but the
    off-default ones such as `custom`), with a clear error."""
    if names is None:
        return [v for v in VARIANTS.values() if v.default]
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    return [VARIANTS[n] for n in names]


def style_config(variant: Variant, cfg: RecipeConfig) -> StyleConfig:
    """The fine-tuning config of a variant."""
    return StyleConfig(adapter=variant.adapter, caption_mode=variant.caption_mode, rank=cfg.rank, steps=cfg.steps,
                       lr=cfg.lr if variant.lr is None else variant.lr, batch_size=cfg.batch_size,
                       prior_weight=cfg.prior_weight, seed=cfg.seed,
                       targets=list(cfg.targets), attributes=cfg.attributes)


def generate_predictions(model, info: dict, objects: Sequence[str], cfg: RecipeConfig,
                         ref_images: np.ndarray | None = None) -> np.ndarray:
    """Images of `objects` in a fine-tuned style; with ref_images, guided by RB-Modulation toward them."""
    prompts = [style_prompt(info, o) for o in objects]
    if ref_images is None:
        return generate(model, prompts, cfg.sample_steps, cfg.guidance_scale, seed=cfg.seed, strict=True)
    return stylize(model, prompts, ref_images, psi=cfg.psi, config=cfg.rb, num_inference_steps=cfg.sample_steps,
                   guidance_scale=cfg.guidance_scale, seed=cfg.seed, afa=cfg.afa)


def run_style(style: str | Path | dict, names: Sequence[str] | str | None = None, cfg: RecipeConfig | None = None,
              base: str | Path = DEFAULT_BASE, objects: Sequence[str] | None = None, ev: Any = None,
              progress: bool = False, log: Callable[[str], None] = print, finetune_cache: dict | None = None) -> dict:
    """Fine-tune, generate and score each variant on one style folder. Returns {variant: dict(images, asked,
    scores, info, seconds)}; `objects` defaults to the folder's prompt.json (else every other ToyWorld object).
    Variants with the same fine-tune share it; pass a dict as finetune_cache to share fine-tunes across calls."""
    from .metrics import score_set

    cfg = cfg or RecipeConfig()
    if ev is None:
        from .models.evaluators import load_evaluators
        ev = load_evaluators()
    first = load_base(base)  # fresh copy for the first fine-tune; its size is the style images' size
    ds = style if isinstance(style, dict) else load_style_folder(style, first.config.unet.image_size)
    if objects is None:
        objects = list(ds["prompts"].values()) or [o for o in ev.objects if o not in ds["objects"]]
    out, tuned = {}, ({} if finetune_cache is None else finetune_cache)
    for v in variants(names):
        key = (ds.get("path"), str(base), json.dumps(asdict(style_config(v, cfg)), sort_keys=True))
        t0 = time.time()
        if key not in tuned:
            model, first = first or load_base(base), None
            res = finetune_style(ds, None, style_config(v, cfg), model=model, progress=progress, log=log)
            tuned[key] = (res["model"], res["info"], time.time() - t0)
        model, info, t_train = tuned[key]
        t1 = time.time()
        images = generate_predictions(model, info, objects, cfg, ds["images"] if v.guided else None)
        scores = score_set(ev, images, list(objects), ds["images"], ds["objects"])
        scores["style_name"] = ds.get("style") or scores["ref_style"]
        out[v.name] = {"images": images, "asked": list(objects), "scores": scores, "info": info,
                       "refs": ds["images"], "ref_objects": list(ds["objects"]),
                       "seconds": {"finetune": round(t_train, 1), "generate": round(time.time() - t1, 1)}}
        log(f"  {ds.get('sid') or '?'} {ds.get('style') or ''} {v.name:<15} Final {scores['final']:.3f} "
            f"(Style {scores['style']:.3f}, Text {scores['text']:.3f}, Quality {scores['quality']:.3f}; "
            f"{time.time() - t0:.0f} s)")
    return out


def run_ablation(challenge_root: str | Path, names: Sequence[str] | str | None = None,
                 cfg: RecipeConfig | None = None, base: str | Path = DEFAULT_BASE, out: str | Path | None = None,
                 sets: Sequence[str] | None = None, ev: Any = None, log: Callable[[str], None] = print,
                 seeds: Sequence[int] | None = None) -> dict:
    """run_style on every set of a challenge folder, once per seed (the fine-tune seed and the sampling seed; default:
    cfg.seed only); with `out`, predictions go to {out}/{variant}/{NN}/{prompt}.png (seed {s} > first:
    {out}/seed{s}/...). Returns dict(runs={sid: run_style(...)} of the first seed, by_seed={seed: runs},
    table={variant: {sid: scores}} of the first seed, mean={variant: {metric: mean over sets and seeds}},
    compare={variant: {metric: paired_difference vs baseline}} when the baseline ran, config, seeds)."""
    from .imageio import save_images

    cfg = cfg or RecipeConfig()
    seeds = [cfg.seed] if seeds is None else [int(x) for x in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds must be distinct integers, got {seeds}")
    root = Path(challenge_root)
    if not root.is_dir():
        raise FileNotFoundError(f"challenge folder {root} does not exist; make one with `gdlib toyworld export`")
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and (d / "images").is_dir())
    if sets is not None:
        dirs = [d for d in dirs if d.name in set(sets)]
    if not dirs:
        raise FileNotFoundError(f"no style folders ({root}/NN/images) found in {root}")
    if ev is None:
        from .models.evaluators import load_evaluators
        ev = load_evaluators()
    by_seed: dict[int, dict] = {}
    for seed in seeds:
        scfg = replace(cfg, seed=seed)
        by_seed[seed] = {}
        for d in dirs:
            by_seed[seed][d.name] = run_style(d, names, scfg, base, ev=ev, log=log)
            if out is not None:
                where = Path(out) if seed == seeds[0] else Path(out) / f"seed{seed}"
                for vname, r in by_seed[seed][d.name].items():
                    save_images(where / vname / d.name, r["images"], r["asked"])
    return summarize(by_seed, [v.name for v in variants(names)], cfg)


def summarize(by_seed: dict[int, dict], names: Sequence[str], cfg: RecipeConfig) -> dict:
    """Means over every (set, seed) cell and each variant's paired bootstrap interval against the baseline."""
    seeds = list(by_seed)
    runs = by_seed[seeds[0]]
    sids = list(runs)
    table = {v: {sid: runs[sid][v]["scores"] for sid in sids} for v in names}
    per = {v: {k: {sid: [by_seed[s][sid][v]["scores"][k] for s in seeds] for sid in sids} for k in METRICS}
           for v in names}
    mean = {v: {k: float(np.mean([x for xs in per[v][k].values() for x in xs])) for k in METRICS} for v in names}
    compare = {}
    if "baseline" in names:
        for v in names:
            if v != "baseline":
                compare[v] = {k: paired_difference(per[v][k], per["baseline"][k]) for k in ("final", "style")}
    return {"runs": runs, "by_seed": by_seed, "table": table, "per_cell": per, "mean": mean, "compare": compare,
            "config": config_dict(cfg), "seeds": seeds}


def config_dict(cfg: RecipeConfig) -> dict:
    """RecipeConfig as a plain dict (for cards and logs)."""
    return asdict(cfg)


# --------------------------------------------------------------------------------------------- CLI


