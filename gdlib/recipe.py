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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import runtime

jt = runtime.setup_jittor()

from .finetune import StyleConfig, finetune_style, load_base, load_style_folder, style_prompt  # noqa: E402
from .guidance import RBConfig, stylize  # noqa: E402
from .pipeline import DEFAULT_BASE, DEFAULT_GUIDANCE, generate  # noqa: E402


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


@dataclass
class RecipeConfig:
    """Knobs shared by every variant: fine-tuning budget (defaults: StyleConfig's), sampling, RB-Modulation."""
    steps: int = StyleConfig.steps
    rank: int = StyleConfig.rank
    lr: float = StyleConfig.lr
    batch_size: int = StyleConfig.batch_size
    prior_weight: float = StyleConfig.prior_weight
    sample_steps: int = 20
    guidance_scale: float = DEFAULT_GUIDANCE
    rb: RBConfig = field(default_factory=lambda: RBConfig(lam_style=1e3))
    psi: str = "gram"
    afa: bool = False
    seed: int = 0


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
                       lr=cfg.lr, batch_size=cfg.batch_size, prior_weight=cfg.prior_weight, seed=cfg.seed)


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
              progress: bool = False, log: Callable[[str], None] = print) -> dict:
    """Fine-tune, generate and score each variant on one style folder. Returns {variant: dict(images, asked,
    scores, info, seconds)}; `objects` defaults to the folder's prompt.json (else every other ToyWorld object)."""
    from .metrics import score_set

    cfg = cfg or RecipeConfig()
    if ev is None:
        from .models.evaluators import load_evaluators
        ev = load_evaluators()
    first = load_base(base)  # fresh copy for the first fine-tune; its size is the style images' size
    ds = style if isinstance(style, dict) else load_style_folder(style, first.config.unet.image_size)
    if objects is None:
        objects = list(ds["prompts"].values()) or [o for o in ev.objects if o not in ds["objects"]]
    out, tuned = {}, {}
    for v in variants(names):
        key = (v.adapter, v.caption_mode)
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
                 sets: Sequence[str] | None = None, ev: Any = None, log: Callable[[str], None] = print) -> dict:
    """run_style on every set of a challenge folder; with `out`, predictions go to {out}/{variant}/{NN}/{prompt}.png
    (scoreable by `gdlib score`). Returns dict(runs={sid: run_style(...)}, table={variant: {sid: scores}},
    mean={variant: {metric: mean}})."""
    from .imageio import save_images

    cfg = cfg or RecipeConfig()
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
    runs = {}
    for d in dirs:
        runs[d.name] = run_style(d, names, cfg, base, ev=ev, log=log)
        if out is not None:
            for vname, r in runs[d.name].items():
                save_images(Path(out) / vname / d.name, r["images"], r["asked"])
    table = {v.name: {sid: runs[sid][v.name]["scores"] for sid in runs} for v in variants(names)}
    keys = ("content_accuracy", "leakage", "style", "text", "quality", "final")
    mean = {v: {k: float(np.mean([s[k] for s in per.values()])) for k in keys} for v, per in table.items()}
    return {"runs": runs, "table": table, "mean": mean, "config": config_dict(cfg)}


def config_dict(cfg: RecipeConfig) -> dict:
    """RecipeConfig as a plain dict (for cards and logs)."""
    return asdict(cfg)


def variant_table(rows: dict[str, dict]) -> str:
    """A Markdown table, one row per variant name -> metrics (content_accuracy, leakage, style, text, quality, final)."""
    head = ("| variant | content acc. | leakage | Style | Text | Quality | **Final** |\n"
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    lines = [f"| {VARIANTS[v].label if v in VARIANTS else v} | {m['content_accuracy']:.3f} | {m['leakage']:.3f} | "
             f"{m['style']:.3f} | {m['text']:.3f} | {m['quality']:.3f} | **{m['final']:.3f}** |" for v, m in rows.items()]
    return head + "\n" + "\n".join(lines)


def ablation_markdown(result: dict) -> str:
    """The ablation (run_ablation's result) as a Markdown table of means over the style sets."""
    sids = list(result["runs"])
    return variant_table(result["mean"]) + f"\n\nMeans over {len(sids)} held-out style sets ({', '.join(sids)})."


# --------------------------------------------------------------------------------------------- CLI
def _add_common(p) -> None:
    d = RecipeConfig()
    p.add_argument("--base", default=str(DEFAULT_BASE), help="base model (.safetensors export or train-base ckpt)")
    p.add_argument("--steps", type=int, default=d.steps, help="fine-tuning steps per style")
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--sample-steps", type=int, default=d.sample_steps, help="DDIM steps")
    p.add_argument("--cfg", type=float, default=d.guidance_scale, help="classifier-free guidance scale")
    p.add_argument("--style-weight", type=float, default=d.rb.lam_style, help="RB-Modulation lam_style")
    p.add_argument("--num-iter", type=int, default=d.rb.num_iter, help="RB-Modulation Adam steps per reverse step")
    p.add_argument("--psi", default=d.psi, choices=["gram", "csd"], help="style descriptor for the guidance")
    p.add_argument("--afa", action="store_true", help="also aggregate the references' attention features")
    p.add_argument("--seed", type=int, default=d.seed)


def _cfg_from(a) -> RecipeConfig:
    return RecipeConfig(steps=a.steps, rank=a.rank, lr=a.lr, sample_steps=a.sample_steps, guidance_scale=a.cfg,
                        rb=RBConfig(lam_style=a.style_weight, num_iter=a.num_iter), psi=a.psi, afa=a.afa, seed=a.seed)


def main_generate(argv: list[str]) -> int:
    """`gdlib generate STYLE_DIR --out OUT`: prompt.json (+ a style file, + guidance toward STYLE_DIR's images) ->
    OUT/{NN}/{prompt}.png, the challenge's output layout."""
    import argparse

    from . import imageio
    from .finetune import load_style

    p = argparse.ArgumentParser(prog="gdlib generate", description=main_generate.__doc__)
    p.add_argument("style_dir", help="challenge style folder: NN/images/{object}.png and NN/prompt.json")
    p.add_argument("--out", required=True, help="predictions root; images go to OUT/NN/{prompt}.png")
    p.add_argument("--adapter", default=None, help="style file from `gdlib train-style` (default: base model only)")
    p.add_argument("--prompts", default=None, help="prompt.json to use instead of STYLE_DIR/prompt.json")
    p.add_argument("--no-guidance", action="store_true", help="plain sampling, no RB-Modulation")
    _add_common(p)
    a = p.parse_args(argv)
    try:
        cfg = _cfg_from(a)
        model = load_base(a.base)
        ds = load_style_folder(a.style_dir, model.config.unet.image_size)
        prompts = imageio.read_prompts(a.prompts) if a.prompts else ds["prompts"]
        if not prompts:
            raise FileNotFoundError(f"no prompts: {a.style_dir}/prompt.json is missing or empty; pass --prompts")
        if a.adapter:
            info = load_style(model, a.adapter)
        else:
            info = {"caption_mode": "decoupled", "token": None, "style_words": []}  # "painting of {object}"
        objects = list(prompts.values())
        t0 = time.time()
        images = generate_predictions(model, info, objects, cfg, None if a.no_guidance else ds["images"])
        paths = imageio.save_images(Path(a.out) / Path(a.style_dir).name, images, objects)
    except (ValueError, FileNotFoundError) as err:
        print(f"gdlib generate: error: {err}")
        return 2
    print(f"wrote {len(paths)} images to {paths[0].parent} ({time.time() - t0:.0f} s; "
          f"{'plain sampling' if a.no_guidance else 'RB-Modulation toward ' + str(len(ds['images'])) + ' references'}); "
          f"prompt form: {style_prompt(info, '{object}')!r}")
    return 0


def main_ablation(argv: list[str]) -> int:
    """`gdlib ablation`: the five variants on held-out ToyWorld styles; prints (and optionally writes into the
    README) the table of Style, Text, Quality and Final."""
    import argparse
    import shlex
    import tempfile

    from .toyworld import HELDOUT_STYLES
    from .toyworld.export import export_challenge

    p = argparse.ArgumentParser(prog="gdlib ablation", description=main_ablation.__doc__)
    p.add_argument("--styles", default=",".join(HELDOUT_STYLES), help="held-out ToyWorld styles to export and use")
    p.add_argument("--challenge", default=None, help="use this challenge folder instead of exporting ToyWorld styles")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the ToyWorld export")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--out", default="runs/ablation", help="predictions (OUT/{variant}/NN) and results.json")
    p.add_argument("--readme", default=None, help="write the table into this README between ablation markers")
    p.add_argument("--max-prompts", type=int, default=None, help="prompts per exported style (default: all 12)")
    _add_common(p)
    a = p.parse_args(argv)
    try:
        cfg = _cfg_from(a)
        root = a.challenge
        if root is None:
            root = Path(tempfile.mkdtemp(prefix="gdlib_ablation_"))
            export_challenge(root, styles=[s.strip() for s in a.styles.split(",") if s.strip()], seed=a.data_seed,
                             max_prompts=a.max_prompts)
        t0 = time.time()
        res = run_ablation(root, a.variants, cfg, a.base, out=Path(a.out) / "predictions")
    except (ValueError, FileNotFoundError) as err:
        print(f"gdlib ablation: error: {err}")
        return 2
    table = ablation_markdown(res)
    command = "gdlib ablation " + " ".join(shlex.quote(x) for x in argv)
    print(table)
    print(f"({time.time() - t0:.0f} s)")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(
        {"command": command, "config": res["config"], "mean": res["mean"],
         "table": {v: {s: {k: x for k, x in sc.items() if not isinstance(x, np.ndarray)} for s, sc in per.items()}
                   for v, per in res["table"].items()}}, indent=1, default=float) + "\n")
    if a.readme:
        write_readme_table(a.readme, table + f"\n\nProduced by `{command}` ({time.time() - t0:.0f} s on this machine).")
        print(f"updated {a.readme}")
    return 0


README_BEGIN, README_END = "<!-- ablation-table -->", "<!-- /ablation-table -->"


def write_readme_table(readme: str | Path, text: str) -> None:
    """Replace the text between the ablation markers of a README (atomic write)."""
    path = Path(readme)
    doc = path.read_text()
    if README_BEGIN not in doc or README_END not in doc:
        raise ValueError(f"{path} lacks the markers {README_BEGIN} ... {README_END}")
    head, rest = doc.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(head + README_BEGIN + "\n" + text.strip() + "\n" + README_END + tail)
    tmp.replace(path)


def main_demo(argv: list[str]) -> int:
    """`gdlib demo`: fine-tune DoRA with decoupled prompts on one held-out ToyWorld style, generate the unseen
    objects with and without RB-Modulation, write OUT/demo.png and the score table."""
    import argparse

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .toyworld import HELDOUT_STYLES
    from .toyworld.export import export_challenge

    p = argparse.ArgumentParser(prog="gdlib demo", description=main_demo.__doc__)
    p.add_argument("--style", default="watercolor", choices=list(HELDOUT_STYLES), help="held-out ToyWorld style")
    p.add_argument("--out", default="outputs", help="folder for demo.png, demo_scores.md and the predictions")
    p.add_argument("--data-seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    _add_common(p)
    a = p.parse_args(argv)
    out = Path(a.out)
    t0 = time.time()
    try:
        cfg = _cfg_from(a)
        if not Path(a.base).is_file():
            raise FileNotFoundError(f"base model {a.base} not found (it ships in data/base; or pass --base)")
        export_challenge(out / "demo_data", styles=[a.style], seed=a.data_seed)
        style_dir = out / "demo_data" / "00"
        print(f"[1/3] few-shot set: {style_dir} ({a.style}); fine-tuning DoRA with decoupled prompts, "
              f"{cfg.steps} steps")
        runs = run_style(style_dir, ["dora_decoupled", "guided_dora"], cfg, a.base, progress=not a.no_progress)
    except (ValueError, FileNotFoundError) as err:
        print(f"gdlib demo: error: {err}")
        return 2
    print("[2/3] generated both ways; [3/3] writing the figure and the scores")
    from .imageio import save_images

    r0 = runs["dora_decoupled"]
    for name, r in runs.items():
        save_images(out / "predictions" / name / "00", r["images"], r["asked"])
    fig = panel_figure(style_panel({"runs": {"00": runs}}, "00"),
                       f"held-out style {a.style!r}: unseen objects without and with RB-Modulation")
    fig.savefig(out / "demo.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    table = variant_table({name: r["scores"] for name, r in runs.items()})
    (out / "demo_scores.md").write_text(f"Held-out style {a.style}, {len(r0['asked'])} unseen objects, `gdlib demo`\n\n{table}\n")
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
            "row_labels": ["references"] + [VARIANTS[v].label.split(":")[0] if v in VARIANTS else v for v in names],
            "scores": {v: run[v]["scores"] for v in names}}


def panel_figure(panel: dict, suptitle: str | None = None):
    """style_panel's grid as a figure (rows: references, then variants)."""
    from . import plot

    return plot.image_grid(panel["images"], nrow=panel["nrow"], titles=panel["titles"],
                           row_labels=panel["row_labels"], suptitle=suptitle)
