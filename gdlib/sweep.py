"""Defaults from evidence: a coordinate sweep of the recipe's knobs on the held-out VALIDATION styles only.

Each knob is tuned on the variant where it first matters, from the current defaults, one knob at a time (the best
value found is kept for the knobs after it):
    fine-tune knobs (adapter targets, lr, steps, rank)        on `dora`           (DoRA, instance token, no guidance)
    caption attribute words                                    on `dora_decoupled` (decoupled captions)
    RB-Modulation knobs (lam_style, eta, num_iter, tau, Psi)   on `guided_dora`    (the full recipe)
so no ingredient is tuned on a score that includes the ingredients after it, and the baseline (LoRA) shares the
fine-tune knobs. The objective is the mean Final over the validation sets x seeds; each value is also reported with
its paired bootstrap interval against the knob's first (current) value. The test styles are never touched here.
`gdlib sweep` writes the results JSON and a Markdown table; the chosen values are then written by hand into the one
place defaults live (StyleConfig, RBConfig) and the table says which they are.
"""
from __future__ import annotations

import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .checkpoint import write_text_atomic
from .cliutil import fail  # noqa: E402
from .stats import format_interval, paired_difference

ATTENTION = ("to_q", "to_k", "to_v", "to_out")
ATTENTION_CONVS = ATTENTION + ("conv1", "conv2")

# (stage, variant it is scored on, [(knob, values tried beside the current default, which always comes first)])
SPACE: list[tuple[str, str, list[tuple[str, list]]]] = [
    ("fine-tune", "dora", [("targets", [ATTENTION_CONVS, ATTENTION]), ("lr", [1e-3, 2e-3, 4e-3]),
                           ("steps", [150, 300]), ("rank", [4, 8])]),
    ("captions", "dora_decoupled", [("attributes", ["category", "none"])]),
    ("guidance", "guided_dora", [("lam_style", [0.1, 0.3, 1.0, 3.0, 10.0]), ("eta", [0.05, 0.1, 0.2]),
                                 ("num_iter", [3, 6]), ("tau", [None, 10]), ("psi", ["gram", "csd"])]),
]


def coordinate_sweep(space: Sequence[tuple[str, str, list[tuple[str, list]]]], start: dict[str, Any],
                     evaluate: Callable[[str, dict], dict[str, list[float]]], log: Callable[[str], None] = print,
                     metric: str = "final") -> dict:
    """One knob at a time from `start`, keep the value with the best mean `metric` (the current value first; ties
    keep it). evaluate(variant, knobs) returns {metric: {cluster: [per-seed values]}} (e.g. cluster = style set).
    Returns dict(best, rows)."""
    best = dict(start)
    rows = []
    for stage, variant, knobs in space:
        for knob, alternatives in knobs:
            values = [best[knob]] + [v for v in alternatives if _key(v) != _key(best[knob])]
            per_value = {}
            for value in values:
                knobs_now = {**best, knob: value}
                per_value[_key(value)] = (value, evaluate(variant, knobs_now))
            first = per_value[_key(values[0])][1]
            means = {}
            for k, (value, res) in per_value.items():
                m = float(np.mean([x for xs in res[metric].values() for x in xs]))
                means[k] = m
                row = {"stage": stage, "variant": variant, "knob": knob, "value": _plain(value), metric: m,
                       **{f"mean_{name}": float(np.mean([x for xs in v.values() for x in xs]))
                          for name, v in res.items() if name != metric}}
                if k != _key(values[0]):
                    row["vs_first"] = paired_difference(res[metric], first[metric])
                rows.append(row)
                log(f"  {stage:9s} {knob:10s} = {str(_plain(value)):38s} mean {metric} {m:.4f}"
                    + (f"  vs first {format_interval(row['vs_first'])}" if "vs_first" in row else ""))
            chosen = max(means, key=lambda k: (means[k], k == _key(values[0])))  # ties keep the starting value
            best[knob] = per_value[chosen][0]
            for r in rows[-len(values):]:
                r["chosen"] = _key(r["value"]) == chosen
            log(f"  -> {knob} = {_plain(best[knob])}")
    return {"best": {k: _plain(v) for k, v in best.items()}, "rows": rows}


def _key(value) -> str:
    return json.dumps(_plain(value))


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def markdown(result: dict) -> str:
    """The sweep's rows as a Markdown table (chosen values in bold)."""
    lines = ["| stage (scored on) | knob | value | mean Final | mean Style | ΔFinal vs first value [95% CI] |",
             "| --- | --- | --- | ---: | ---: | ---: |"]
    for r in result["rows"]:
        v = ",".join(r["value"]) if isinstance(r["value"], list) else str(r["value"])
        b = "**" if r.get("chosen") else ""
        lines.append(f"| {r['stage']} ({r['variant']}) | {r['knob']} | {b}{v}{b} | {r['final']:.4f} | "
                     f"{r.get('mean_style', float('nan')):.4f} | "
                     f"{format_interval(r['vs_first']) if 'vs_first' in r else '(first value)'} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ the real evaluation
def recipe_evaluator(root: str | Path, base: str | Path, seeds: Sequence[int], objects_per_set: Sequence[str] | None = None,
                     log: Callable[[str], None] = print) -> Callable[[str, dict], dict]:
    """evaluate(variant, knobs) for coordinate_sweep on a challenge folder: fine-tunes (cached by fine-tune knobs),
    generates and scores every set x seed; returns {metric: {set: [per-seed values]}}."""
    from .models.evaluators import load_evaluators
    from .recipe import RecipeConfig, run_style

    ev = load_evaluators()
    dirs = sorted(d for d in Path(root).iterdir() if d.is_dir() and (d / "images").is_dir())
    cache: dict = {}

    def evaluate(variant: str, knobs: dict) -> dict:
        d0 = RecipeConfig()
        rb = replace(d0.rb, lam_style=float(knobs["lam_style"]), eta=float(knobs["eta"]), num_iter=int(knobs["num_iter"]),
                     tau=None if knobs["tau"] is None else int(knobs["tau"]))
        attributes = None if knobs["attributes"] == "category" else _no_attribute_table()
        out: dict[str, dict[str, list[float]]] = {k: {} for k in ("final", "style", "text", "content_accuracy", "leakage")}
        for seed in seeds:
            cfg = replace(d0, targets=tuple(knobs["targets"]), lr=float(knobs["lr"]), steps=int(knobs["steps"]),
                          rank=int(knobs["rank"]), rb=rb, psi=knobs["psi"], seed=int(seed), attributes=attributes)
            for d in dirs:
                run = run_style(d, [variant], cfg, base, ev=ev, log=lambda s: None, finetune_cache=cache)[variant]
                for k in out:
                    out[k].setdefault(d.name, []).append(float(run["scores"][k]))
        return out
    return evaluate


def _no_attribute_table() -> str:
    """An attribute table with no attribute words (decoupled captions reduce to 'painting of {object}')."""
    import tempfile

    from .prompts import TABLE_FORMAT

    path = Path(tempfile.gettempdir()) / "gdlib_sweep_no_attributes.json"
    if not path.is_file():
        write_text_atomic(path, json.dumps({"format": TABLE_FORMAT, "default": {"attributes": []}, "styles": {}}))
    return str(path)


def current_defaults() -> dict[str, Any]:
    """The knobs' current values, from the one place each default lives (StyleConfig, RBConfig, RecipeConfig)."""
    from .recipe import RecipeConfig

    d = RecipeConfig()
    return {"targets": tuple(d.targets), "lr": d.lr, "steps": d.steps, "rank": d.rank, "attributes": "category",
            "lam_style": d.rb.lam_style, "eta": d.rb.eta, "num_iter": d.rb.num_iter, "tau": d.rb.tau, "psi": d.psi}


def main(argv: list[str]) -> int:
    """`gdlib sweep`: the coordinate sweep of the recipe's knobs on the validation styles; writes results + table."""
    import shlex
    import tempfile

    from .commands import parse
    from .toyworld import TEST_STYLES, VALIDATION_STYLES
    from .toyworld.export import export_challenge

    a = parse("sweep", argv)
    styles = [s.strip() for s in a.styles.split(",") if s.strip()]
    try:
        leaked = sorted(set(styles) & set(TEST_STYLES))
        if leaked:
            raise ValueError(f"the sweep must not look at the test styles {leaked}; use validation styles "
                             f"{VALIDATION_STYLES}")
        seeds = [int(x) for x in a.seeds.split(",") if x.strip()]
        root = Path(tempfile.mkdtemp(prefix="gdlib_sweep_"))
        export_challenge(root, styles=styles, seed=a.data_seed)
        t0 = time.time()
        result = coordinate_sweep(SPACE, current_defaults(), recipe_evaluator(root, a.base, seeds))
    except (ValueError, FileNotFoundError) as err:
        return fail("gdlib sweep", err)
    command = "gdlib sweep " + " ".join(shlex.quote(x) for x in argv)
    result.update(command=command, seconds=round(time.time() - t0, 1), styles=styles, seeds=seeds)
    out = write_text_atomic(a.results, json.dumps(result, indent=1, default=float) + "\n")
    table = markdown(result)
    print(table)
    print(f"best: {result['best']}\nwrote {out} ({result['seconds'] / 60:.0f} min)")
    if a.table:
        write_text_atomic(a.table, f"# Sweep of the recipe's knobs on the validation styles\n\nWritten by `{command}` "
                     f"({result['seconds'] / 60:.0f} min): styles {', '.join(styles)}, seeds {seeds}, 12 unseen "
                     f"objects per set. Bold: the value kept.\n\n{table}\n\nBest: `{json.dumps(result['best'])}`\n")
    return 0
