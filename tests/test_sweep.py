"""The coordinate sweep's selection logic on a synthetic objective (no model needed)."""
from __future__ import annotations

import numpy as np

from gdlib import sweep

SPACE = [("a-stage", "v1", [("x", [1, 2, 3]), ("y", ["p", "q"])]),
         ("b-stage", "v2", [("z", [0.1, 1.0])])]


def _evaluate(calls):
    rng = np.random.default_rng(0)

    def evaluate(variant, knobs):
        calls.append((variant, dict(knobs)))
        score = -abs(knobs["x"] - 2) + (0.5 if knobs["y"] == "q" else 0.0) + (0.3 if knobs["z"] == 1.0 else 0.0)
        return {"final": {s: list(score + rng.normal(0, 1e-3, 2)) for s in ("s1", "s2", "s3")},
                "style": {s: [score, score] for s in ("s1", "s2", "s3")}}
    return evaluate


def test_each_knob_is_tuned_in_turn_and_the_best_is_kept():
    calls = []
    res = sweep.coordinate_sweep(SPACE, {"x": 3, "y": "p", "z": 0.1}, _evaluate(calls), log=lambda s: None)
    assert res["best"] == {"x": 2, "y": "q", "z": 1.0}
    # the current value is evaluated first, then the others (no duplicate), one knob at a time
    assert [c[1]["x"] for c in calls[:3]] == [3, 1, 2]
    assert all(c[1]["x"] == 2 for c in calls[3:])            # x fixed at its best once chosen
    assert [c[0] for c in calls] == ["v1"] * 5 + ["v2"] * 2   # each stage scored on its own variant
    rows = res["rows"]
    assert len(rows) == 7 and sum(r["chosen"] for r in rows) == 3
    assert "vs_first" not in rows[0] and rows[2]["vs_first"]["diff"] > 0.9 and rows[2]["vs_first"]["excludes_zero"]
    table = sweep.markdown(res)
    assert "| a-stage (v1) | x | **2** |" in table and table.count("\n") == 8


def test_ties_keep_the_current_value():
    def flat(variant, knobs):
        return {"final": {"s1": [0.5], "s2": [0.5]}}
    res = sweep.coordinate_sweep(SPACE, {"x": 3, "y": "q", "z": 1.0}, flat, log=lambda s: None)
    assert res["best"] == {"x": 3, "y": "q", "z": 1.0}


def test_the_recipe_evaluator_scores_every_set_and_seed_and_caches_finetunes(tmp_path):
    from gdlib import runtime

    runtime.setup_jittor()
    from conftest import tiny_model
    from gdlib.toyworld.export import export_challenge

    base = tmp_path / "tiny.safetensors"
    tiny_model(size=16).save(base)
    root = tmp_path / "val"
    export_challenge(root, styles=["watercolor", "mosaic"], per_style=2, size=16, max_prompts=2)
    evaluate = sweep.recipe_evaluator(root, base, seeds=[0, 1])
    knobs = {**sweep.current_defaults(), "steps": 2, "num_iter": 1}
    res = evaluate("guided_dora", knobs)
    assert set(res["final"]) == {"00", "01"} and all(len(v) == 2 for v in res["final"].values())
    again = evaluate("guided_dora", {**knobs, "eta": 0.3})     # a guidance knob only: the same fine-tunes are reused
    assert again["final"]["00"] != res["final"]["00"]


def test_cli_refuses_the_test_styles(capsys):
    from gdlib.toyworld import TEST_STYLES

    assert sweep.main(["--styles", TEST_STYLES[0]]) == 2
    err = capsys.readouterr().err
    assert "must not look at the test styles" in err and err.count("\n") == 1
