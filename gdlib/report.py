"""Reports of the recipe's experiments: Markdown tables (variants, ingredient steps with paired 95% intervals),
the results JSON (written atomically, read back with a clear error), the README's ablation table, image panels.
NumPy and matplotlib only: a notebook can read a results file without loading a model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .checkpoint import write_text_atomic
from .config import VARIANTS
from .stats import format_interval, paired_difference

METRICS = ("content_accuracy", "leakage", "style", "text", "quality", "final")


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


README_BEGIN = "<!-- ablation-table -->"


README_END = "<!-- /ablation-table -->"


def write_readme_table(readme: str | Path, text: str) -> None:
    """Replace the text between the ablation markers of a README (atomic write)."""
    path = Path(readme)
    doc = path.read_text()
    if README_BEGIN not in doc or README_END not in doc:
        raise ValueError(f"{path} lacks the markers {README_BEGIN} ... {README_END}")
    head, rest = doc.split(README_BEGIN, 1)
    _, tail = rest.split(README_END, 1)
    write_text_atomic(path, head + README_BEGIN + "\n" + text.strip() + "\n" + README_END + tail)


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
