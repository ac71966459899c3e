"""Guided DoRA end to end: DoRA fine-tuning with decoupled prompts on a few-shot style folder, then RB-Modulation
steering the Tweedie estimate toward the references while sampling; the challenge's baseline and the ablation
variants between them; predictions written in the challenge layout ({out}/{NN}/{prompt}.png) and scored.

Variants (each row of the ablation table):
    baseline        DreamBooth-LoRA with the instance token only (the challenge baseline: "style_NN")
    dora            DoRA, same captions
    dora_decoupled  DoRA + decoupled prompts ("{attribute} painting of {object}", gdlib.prompts)
    guided_dora     DoRA + decoupled prompts + RB-Modulation toward the few-shot images (gdlib.guidance)
Variants that differ only in guidance share one fine-tune.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .checkpoint import write_atomic, write_text_atomic  # noqa: E402
from .cliutil import fail  # noqa: E402
from .config import DEFAULT_BASE, DEFAULT_GUIDANCE, RBConfig, RecipeConfig  # noqa: E402,F401  (re-exported)
from . import runtime

jt = runtime.setup_jittor()

from .finetune import StyleConfig, concept_info, finetune_style, load_base, load_style_folder, style_prompt  # noqa: E402
from .stats import format_interval, paired_difference  # noqa: E402
from .guidance import stylize  # noqa: E402
from .pipeline import generate  # noqa: E402


@dataclass(frozen=True)
class Variant:
    """One row of the ablation: which adapter, which captions, guidance or not."""
    name: str
    adapter: str
    caption_mode: str
    guided: bool
    label: str


VARIANTS: dict[str, Variant] = {v.name: v for v in (
    Variant("baseline", "lora", "instance", False, "DreamBooth-LoRA, instance token (challenge baseline)"),
    Variant("dora", "dora", "instance", False, "DoRA, instance token"),
    Variant("dora_decoupled", "dora", "decoupled", False, "DoRA + decoupled prompts"),
    Variant("guided_dora", "dora", "decoupled", True, "Guided DoRA: DoRA + decoupled prompts + RB-Modulation"),
    # off the chain: guidance without decoupling, so each of the two can be judged on its own (shares dora's fine-tune)
    Variant("dora_rb", "dora", "instance", True, "DoRA + RB-Modulation, instance token (no decoupling)"),
)}


def variants(names: Sequence[str] | str | None = None) -> list[Variant]:
    """Variant objects by name (comma-separated string or list; None: all four), with a clear error."""
    if names is None:
        return list(VARIANTS.values())
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    return [VARIANTS[n] for n in names]


def style_config(variant: Variant, cfg: RecipeConfig) -> StyleConfig:
    """The fine-tuning config of a variant."""
    return StyleConfig(adapter=variant.adapter, caption_mode=variant.caption_mode, rank=cfg.rank, steps=cfg.steps,
                       lr=cfg.lr, batch_size=cfg.batch_size, prior_weight=cfg.prior_weight, seed=cfg.seed,
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


METRICS = ("content_accuracy", "leakage", "style", "text", "quality", "final")


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


def variant_table(rows: dict[str, dict], compare: dict[str, dict] | None = None) -> str:
    """A Markdown table, one row per variant name -> metrics (content_accuracy, leakage, style, text, quality, final);
    with `compare` (summarize's), a column ΔFinal vs baseline [95% CI]."""
    ci = compare is not None
    head = ("| variant | content acc. | leakage | Style | Text | Quality | **Final** |" + (" ΔFinal vs baseline [95% CI] |"
            if ci else "") + "\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: |" if ci else ""))
    lines = []
    for v, m in rows.items():
        line = (f"| {VARIANTS[v].label if v in VARIANTS else v} | {m['content_accuracy']:.3f} | {m['leakage']:.3f} | "
                f"{m['style']:.3f} | {m['text']:.3f} | {m['quality']:.3f} | **{m['final']:.3f}** |")
        if ci:
            line += f" {format_interval(compare[v]['final']) if v in compare else '(reference)'} |"
        lines.append(line)
    return head + "\n" + "\n".join(lines)


# each ingredient's own step: (label, variant with it, variant without it)
INGREDIENT_STEPS = (("DoRA instead of LoRA", "dora", "baseline"),
                    ("+ decoupled prompts", "dora_decoupled", "dora"),
                    ("+ RB-Modulation (with decoupling)", "guided_dora", "dora_decoupled"),
                    ("+ RB-Modulation (instance token)", "dora_rb", "dora"),
                    ("Guided DoRA vs the baseline", "guided_dora", "baseline"))


def ingredient_steps(result: dict) -> dict[str, dict]:
    """Paired bootstrap intervals of Style and Final for each ingredient's step (INGREDIENT_STEPS) that ran."""
    per = result["per_cell"]
    return {label: {k: paired_difference(per[a][k], per[b][k]) for k in ("style", "final")}
            for label, a, b in INGREDIENT_STEPS if a in per and b in per}


def ingredient_markdown(steps: dict[str, dict]) -> str:
    """ingredient_steps as a Markdown table of ΔStyle and ΔFinal with their 95% intervals."""
    lines = ["| step | ΔStyle [95% CI] | ΔFinal [95% CI] |", "| --- | ---: | ---: |"]
    lines += [f"| {k} | {format_interval(v['style'])} | {format_interval(v['final'])} |" for k, v in steps.items()]
    return "\n".join(lines)


def ablation_markdown(result: dict) -> str:
    """The ablation (run_ablation's result) as a Markdown table of means over the style sets and seeds."""
    sids, seeds = list(result["runs"]), result.get("seeds", [0])
    styles = [result["runs"][s][next(iter(result["runs"][s]))]["scores"].get("style_name") for s in sids]
    text = variant_table(result["mean"], result.get("compare") if result.get("compare") else None)
    text += (f"\n\nMeans over {len(sids)} held-out style sets ({', '.join(f'{a} {b}' for a, b in zip(sids, styles))})"
             f" x {len(seeds)} seed(s) ({', '.join(map(str, seeds))}), {len(result['runs'][sids[0]][next(iter(result['runs'][sids[0]]))]['asked'])} "
             "prompts per set.")
    if result.get("compare"):
        text += (" Intervals: paired bootstrap over the (style, seed) cells, styles resampled first, then seeds within "
                 "a style (10,000 resamples); an interval that holds 0 means no difference was shown.")
    steps = ingredient_steps(result)
    if steps:
        text += "\n\nWhat each ingredient changed (same cells, paired):\n\n" + ingredient_markdown(steps)
    return text


# --------------------------------------------------------------------------------------------- CLI
def _cfg_from(a) -> RecipeConfig:
    """RecipeConfig from the options gdlib.commands derives from RecipeConfig and RBConfig."""
    from .cliutil import config_kwargs
    from .commands import RB_OPTIONS, RECIPE_OPTIONS

    kw = config_kwargs(a, RECIPE_OPTIONS)
    kw["targets"] = tuple(kw["targets"])
    if not kw["targets"]:
        raise ValueError("--targets needs at least one module name, e.g. to_q,to_k,to_v,to_out,conv1,conv2")
    return RecipeConfig(**kw, rb=replace(RBConfig(), **config_kwargs(a, RB_OPTIONS)))


def main_generate(argv: list[str]) -> int:
    """`gdlib generate STYLE_DIR --out OUT`: prompt.json (+ a style file, + guidance toward STYLE_DIR's images) ->
    OUT/{NN}/{prompt}.png, the challenge's output layout."""
    from . import imageio
    from .commands import parse
    from .finetune import load_style

    a = parse("generate", argv)
    try:
        cfg = _cfg_from(a)
        model = load_base(a.base)
        ds = load_style_folder(a.style_dir, model.config.unet.image_size)
        prompts = imageio.read_prompts(a.prompts) if a.prompts else ds["prompts"]
        if not prompts:
            raise FileNotFoundError(f"no prompts: {a.style_dir}/prompt.json is missing or empty; pass --prompts")
        if a.adapter:
            info = load_style(model, a.adapter)
            info = {**info, "concepts": [concept_info(info, a.concept)]}  # one concept of a multi-concept file
        else:
            info = {"caption_mode": "decoupled", "token": None, "style_words": []}  # "painting of {object}"
        objects = list(prompts.values())
        t0 = time.time()
        images = generate_predictions(model, info, objects, cfg, None if a.no_guidance else ds["images"])
        paths = imageio.save_images(Path(a.out) / Path(a.style_dir).name, images, objects)
    except (ValueError, FileNotFoundError) as err:
        return fail("gdlib generate", err)
    print(f"wrote {len(paths)} images to {paths[0].parent} ({time.time() - t0:.0f} s; "
          f"{'plain sampling' if a.no_guidance else 'RB-Modulation toward ' + str(len(ds['images'])) + ' references'}); "
          f"prompt form: {style_prompt(info, '{object}')!r}")
    return 0


def main_ablation(argv: list[str]) -> int:
    """`gdlib ablation`: the variants on the held-out ToyWorld TEST styles x every unseen object x several seeds;
    prints (and optionally writes into the README) each variant's means and its paired bootstrap 95% interval
    against the baseline; writes OUT/results.json (per set, per seed, with the command and versions)."""
    import shlex
    import tempfile

    from .commands import parse
    from .toyworld import DATA_VERSION
    from .toyworld.export import export_challenge

    a = parse("ablation", argv)
    try:
        cfg = _cfg_from(a)
        try:
            seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
        except ValueError:
            raise ValueError(f"--seeds must look like 0,1,2, got {a.seeds!r}") from None
        root = a.challenge
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="gdlib_ablation_"))
            export_challenge(root, styles=[s.strip() for s in a.styles.split(",") if s.strip()], seed=a.data_seed,
                             max_prompts=a.max_prompts)
        t0 = time.time()
        res = run_ablation(root, a.variants, cfg, a.base, out=Path(a.out) / "predictions", seeds=seeds)
    except (ValueError, FileNotFoundError) as err:
        return fail("gdlib ablation", err)
    seconds = time.time() - t0
    table = ablation_markdown(res)
    command = "gdlib ablation " + " ".join(shlex.quote(x) for x in argv)
    print(table)
    print(f"({seconds:.0f} s)")
    results = Path(a.results) if a.results else Path(a.out) / "results.json"
    write_results(results, res, command, seconds, base=a.base, data_version=DATA_VERSION)
    print(f"wrote {results}")
    if a.readme:
        write_readme_table(a.readme, table + f"\n\nProduced by `{command}` ({seconds / 60:.0f} min on this machine; "
                                             f"results file: `{results}`).")
        print(f"updated {a.readme}")
    return 0


def results_dict(res: dict, command: str, seconds: float, base: str | Path, data_version: str) -> dict:
    """run_ablation's result as plain JSON: the command, versions, config, means, intervals, every cell."""
    import hashlib
    import platform

    import gdlib
    from .checkpoint import load_tensors

    _, meta = load_tensors(base) if Path(base).is_file() else ({}, {})
    cells = []
    for seed, runs in res["by_seed"].items():
        for sid, run in runs.items():
            for v, r in run.items():
                cells.append({"set": sid, "style": r["scores"].get("style_name"), "seed": int(seed), "variant": v,
                              "asked": r["asked"], "seconds": r["seconds"],
                              "scores": {k: x for k, x in r["scores"].items() if not isinstance(x, np.ndarray)}})
    return {"command": command, "seconds": round(seconds, 1),
            "versions": {"gdlib": getattr(gdlib, "__version__", "?"), "toyworld_data_version": data_version,
                         "base": str(base),
                         "base_config_sha": hashlib.sha256(str(meta.get("config", "")).encode()).hexdigest()[:16],
                         "python": platform.python_version()},
            "config": res["config"], "seeds": res["seeds"], "mean": res["mean"], "compare": res["compare"],
            "cells": cells}


def load_results(path: str | Path) -> dict:
    """A results JSON of `gdlib ablation` back as a dict with `per_cell` ({variant: {metric: {set: [per seed]}}}),
    so ingredient_steps / variant_table work on it as on a live run."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no ablation results at {path}; write them with `gdlib ablation --results {path}`")
    js = json.loads(path.read_text())
    seeds = [int(x) for x in js["seeds"]]
    per: dict[str, dict] = {}
    for c in sorted(js["cells"], key=lambda c: (c["variant"], c["set"], seeds.index(int(c["seed"])))):
        for k in METRICS:
            per.setdefault(c["variant"], {}).setdefault(k, {}).setdefault(c["set"], []).append(float(c["scores"][k]))
    js["per_cell"] = per
    return js


def write_results(path: str | Path, res: dict, command: str, seconds: float, base: str | Path,
                  data_version: str) -> Path:
    """results_dict as JSON, written atomically."""
    return write_text_atomic(path, json.dumps(results_dict(res, command, seconds, base, data_version), indent=1,
                                              default=float) + "\n")


README_BEGIN, README_END = "<!-- ablation-table -->", "<!-- /ablation-table -->"


def write_readme_table(readme: str | Path, text: str) -> None:
    """Replace the text between the ablation markers of a README (atomic write)."""
    path = Path(readme)
    doc = path.read_text()
    if README_BEGIN not in doc or README_END not in doc:
        raise ValueError(f"{path} lacks the markers {README_BEGIN} ... {README_END}")
    head, rest = doc.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    write_text_atomic(path, head + README_BEGIN + "\n" + text.strip() + "\n" + README_END + tail)


def main_demo(argv: list[str]) -> int:
    """`gdlib demo`: fine-tune DoRA with decoupled prompts on one held-out ToyWorld style, generate the unseen
    objects with and without RB-Modulation, write OUT/demo.png and the score table."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .commands import parse
    from .toyworld.export import export_challenge

    a = parse("demo", argv)
    out = Path(a.out)
    t0 = time.time()
    try:
        cfg = _cfg_from(a)
        if not Path(a.base).is_file():
            raise FileNotFoundError(f"base model {a.base} not found (it ships in gdlib/data/base; or pass --base)")
        export_challenge(out / "demo_data", styles=[a.style], seed=a.data_seed)
        style_dir = out / "demo_data" / "00"
        print(f"[1/3] few-shot set: {style_dir} ({a.style}); fine-tuning DoRA with decoupled prompts, "
              f"{cfg.steps} steps")
        runs = run_style(style_dir, ["dora_decoupled", "guided_dora"], cfg, a.base, progress=not a.no_progress)
    except (ValueError, FileNotFoundError) as err:
        return fail("gdlib demo", err)
    print("[2/3] generated both ways; [3/3] writing the figure and the scores")
    from .imageio import save_images

    r0 = runs["dora_decoupled"]
    for name, r in runs.items():
        save_images(out / "predictions" / name / "00", r["images"], r["asked"])
    fig = panel_figure(style_panel({"runs": {"00": runs}}, "00"),
                       f"held-out style {a.style!r}: unseen objects without and with RB-Modulation")
    write_atomic(out / "demo.png", lambda tmp: fig.savefig(tmp, dpi=110, bbox_inches="tight"))
    plt.close(fig)
    table = variant_table({name: r["scores"] for name, r in runs.items()})
    write_text_atomic(out / "demo_scores.md", f"Held-out style {a.style}, {len(r0['asked'])} unseen objects, `gdlib demo`\n\n{table}\n")
    print(table)
    print(f"wrote {out / 'demo.png'} and {out / 'demo_scores.md'} in {time.time() - t0:.0f} s")
    return 0


def style_panel(result: dict, sid: str, variant: str = "all") -> dict:
    """One style of an ablation (run_ablation's result) as a grid: references, then one row per variant (or only
    `variant`); dict(images, titles, row_labels, nrow, scores)."""
    if sid not in result["runs"]:
        raise ValueError(f"unknown style set {sid!r}; the ablation has {sorted(result['runs'])}")
    run = result["runs"][sid]
    names = list(run) if variant == "all" else [variant]
    unknown = [n for n in names if n not in run]
    if unknown:
        raise ValueError(f"variant {unknown[0]!r} was not run; choose from {['all'] + list(run)}")
    first = run[names[0]]
    refs, asked = first["refs"], first["asked"]
    n = len(asked)
    pad = np.full((max(0, n - len(refs)),) + refs.shape[1:], -1.0, np.float32)
    rows = [np.concatenate([refs[:n], pad])] + [run[v]["images"] for v in names]
    titles = list(first["ref_objects"][:n]) + [""] * len(pad) + [o for _ in names for o in asked]
    return {"images": np.concatenate(rows), "titles": titles, "nrow": n,
            "empty": list(range(min(len(refs), n), n)),  # the reference row is shorter than the prompt rows
            "row_labels": ["references"] + [VARIANTS[v].label.split(":")[0] if v in VARIANTS else v for v in names],
            "scores": {v: run[v]["scores"] for v in names}}


def panel_figure(panel: dict, suptitle: str | None = None):
    """style_panel's grid as a figure (rows: references, then variants)."""
    from . import plot

    return plot.image_grid(panel["images"], nrow=panel["nrow"], titles=panel["titles"],
                           row_labels=panel["row_labels"], suptitle=suptitle, empty=panel.get("empty", ()))
