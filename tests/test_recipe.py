"""gdlib.recipe (Guided DoRA end to end): variants, run_style, the generate / demo / ablation commands, on a tiny
random base model saved to a temporary file (the shipped checkpoint is exercised by notebook 06)."""
import json

import numpy as np
import pytest

from gdlib import runtime

jt = runtime.setup_jittor()

from gdlib import imageio, recipe, recipe_cli, report  # noqa: E402
from gdlib.guidance import RBConfig  # noqa: E402
from gdlib.stats import format_interval  # noqa: E402
from gdlib.toyworld.export import export_challenge  # noqa: E402
from conftest import tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "tiny.safetensors"
    tiny_model(size=16).save(path)
    return path


@pytest.fixture(scope="module")
def challenge(tmp_path_factory):
    root = tmp_path_factory.mktemp("challenge")
    export_challenge(root, styles=["watercolor", "mosaic"], per_style=3, size=16)
    return root


def quick(**kw) -> recipe.RecipeConfig:
    d = dict(steps=2, batch_size=2, sample_steps=3, rb=RBConfig(lam_style=1e3, num_iter=1))
    d.update(kw)
    return recipe.RecipeConfig(**d)


def test_variants_by_name_and_errors():
    assert [v.name for v in recipe.variants()] == ["baseline", "dora", "dora_decoupled", "guided_dora", "dora_rb"]
    assert [v.name for v in recipe.variants("dora, guided_dora")] == ["dora", "guided_dora"]
    base = recipe.VARIANTS["baseline"]
    assert (base.adapter, base.caption_mode, base.guided) == ("lora", "instance", False)
    g = recipe.VARIANTS["guided_dora"]
    assert (g.adapter, g.caption_mode, g.guided) == ("dora", "decoupled", True)
    r = recipe.VARIANTS["dora_rb"]
    assert (r.adapter, r.caption_mode, r.guided) == ("dora", "instance", True)
    with pytest.raises(ValueError, match="unknown variant"):
        recipe.variants("dora,lora_xl")


def test_run_style_shares_the_finetune_and_guidance_changes_the_images(challenge, base):
    runs = recipe.run_style(challenge / "00", ["dora_decoupled", "guided_dora"], quick(), base, log=lambda s: None)
    plain, guided = runs["dora_decoupled"], runs["guided_dora"]
    prompts = imageio.read_prompts(challenge / "00" / "prompt.json")
    assert plain["asked"] == guided["asked"] == list(prompts.values())
    assert plain["images"].shape == (len(prompts), 3, 16, 16)
    assert plain["info"] is guided["info"]                    # one fine-tune serves both variants
    assert plain["info"]["caption_mode"] == "decoupled" and plain["info"]["adapter"] == "dora"
    assert np.abs(plain["images"] - guided["images"]).max() > 1e-3
    for r in runs.values():
        s = r["scores"]
        assert s["n"] == len(prompts) and np.isfinite(s["final"])
        assert s["final"] == pytest.approx(s["style"] * (s["text"] + s["quality"]))


def test_ablation_writes_scoreable_predictions_and_a_table(challenge, base, tmp_path):
    res = recipe.run_ablation(challenge, ["baseline", "guided_dora"], quick(), base, out=tmp_path / "pred",
                              log=lambda s: None, seeds=[0, 1])
    assert set(res["table"]) == {"baseline", "guided_dora"} and set(res["runs"]) == {"00", "01"}
    assert res["seeds"] == [0, 1] and set(res["by_seed"]) == {0, 1}
    for v in ("baseline", "guided_dora"):
        cells = [res["by_seed"][seed][s][v]["scores"]["final"] for seed in (0, 1) for s in ("00", "01")]
        assert res["mean"][v]["final"] == pytest.approx(np.mean(cells))
        assert sorted(imageio.load_predictions(tmp_path / "pred" / v, 16)) == ["00", "01"]
        assert sorted(imageio.load_predictions(tmp_path / "pred" / "seed1" / v, 16)) == ["00", "01"]
    # the two seeds are two fine-tunes and two samplings: different images
    a, b = (res["by_seed"][seed]["00"]["guided_dora"]["images"] for seed in (0, 1))
    assert np.abs(a - b).max() > 1e-3
    c = res["compare"]["guided_dora"]["final"]
    per = res["per_cell"]
    diffs = [g - bl for s in ("00", "01") for g, bl in zip(per["guided_dora"]["final"][s], per["baseline"]["final"][s])]
    assert c["diff"] == pytest.approx(np.mean(diffs)) and c["lo"] <= c["diff"] <= c["hi"] and c["n_cells"] == 4
    md = recipe.ablation_markdown(res)
    main_table = md.split("\n\n")[0]
    assert main_table.count("\n| ") == 3 and "challenge baseline" in md
    assert f"{res['mean']['guided_dora']['final']:.3f}" in main_table
    assert "ΔFinal vs baseline [95% CI]" in md and format_interval(c) in main_table and "(reference)" in md
    steps = recipe.ingredient_steps(res)
    assert list(steps) == ["Guided DoRA vs the baseline"] and steps["Guided DoRA vs the baseline"]["final"] == c
    assert f"| Guided DoRA vs the baseline | {format_interval(steps['Guided DoRA vs the baseline']['style'])} |" in md
    out = recipe.write_results(tmp_path / "r" / "results.json", res, "gdlib ablation --x", 1.0, base, "2")
    js = json.loads(out.read_text())
    assert js["command"] == "gdlib ablation --x" and js["seeds"] == [0, 1] and len(js["cells"]) == 8
    assert js["compare"]["guided_dora"]["final"]["diff"] == pytest.approx(c["diff"])
    back = recipe.load_results(out)
    assert back["per_cell"]["guided_dora"]["final"] == res["per_cell"]["guided_dora"]["final"]  # floats survive JSON
    assert recipe.ingredient_steps(back) == recipe.ingredient_steps(res)
    with pytest.raises(FileNotFoundError, match="gdlib ablation"):
        recipe.load_results(tmp_path / "missing.json")
    assert {(x["set"], x["seed"], x["variant"]) for x in js["cells"]} == \
        {(s, seed, v) for s in ("00", "01") for seed in (0, 1) for v in ("baseline", "guided_dora")}


def test_a_shared_finetune_cache_skips_the_second_finetune(challenge, base):
    cache = {}
    first = recipe.run_style(challenge / "00", ["dora"], quick(), base, log=lambda s: None, finetune_cache=cache)
    again = recipe.run_style(challenge / "00", ["dora_rb"], quick(), base, log=lambda s: None, finetune_cache=cache)
    assert len(cache) == 1 and again["dora_rb"]["info"] is first["dora"]["info"]
    other = recipe.run_style(challenge / "00", ["dora"], quick(seed=1), base, log=lambda s: None, finetune_cache=cache)
    assert len(cache) == 2 and other["dora"]["info"] is not first["dora"]["info"]


def test_write_readme_table(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{report.README_BEGIN}\nold table\n{report.README_END}\nrest\n")
    report.write_readme_table(readme, "| new |")
    assert readme.read_text() == f"intro\n{report.README_BEGIN}\n| new |\n{report.README_END}\nrest\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="markers"):
        report.write_readme_table(readme, "x")


def test_cli_generate_writes_the_challenge_layout(challenge, base, tmp_path, capsys):
    common = ["--base", str(base), "--sample-steps", "2", "--num-iter", "1"]
    assert recipe_cli.main_generate([str(challenge / "01"), "--out", str(tmp_path / "out"), *common]) == 0
    prompts = imageio.read_prompts(challenge / "01" / "prompt.json")
    assert sorted(p.stem for p in (tmp_path / "out" / "01").iterdir()) == sorted(prompts.values())
    assert "RB-Modulation" in capsys.readouterr().out
    # bad input: a folder without prompts, an adapter that is not a style file
    (tmp_path / "np" / "images").mkdir(parents=True)
    for f in (challenge / "01" / "images").iterdir():
        (tmp_path / "np" / "images" / f.name).write_bytes(f.read_bytes())
    assert recipe_cli.main_generate([str(tmp_path / "np"), "--out", str(tmp_path / "o2"), *common]) == 2
    assert "pass --prompts" in capsys.readouterr().err
    assert recipe_cli.main_generate([str(challenge / "01"), "--out", str(tmp_path / "o3"), "--adapter", str(base),
                                 *common]) == 2
    assert "not a gdlib style file" in capsys.readouterr().err


def test_cli_demo_writes_figure_and_scores(base, tmp_path, capsys):
    code = recipe_cli.main_demo(["--base", str(base), "--out", str(tmp_path), "--steps", "2", "--sample-steps", "2",
                             "--num-iter", "1", "--no-progress"])
    assert code == 0
    assert (tmp_path / "demo.png").stat().st_size > 1000
    text = (tmp_path / "demo_scores.md").read_text()
    assert "Guided DoRA" in text and "DoRA + decoupled prompts" in text
    assert recipe_cli.main_demo(["--base", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path)]) == 2
    assert "not found" in capsys.readouterr().err


def test_style_panel_and_its_widget(challenge, base):
    from gdlib.widgets import ablation_explorer

    res = recipe.run_ablation(challenge, ["baseline", "guided_dora"], quick(), base, log=lambda s: None)
    panel = recipe.style_panel(res, "01")
    n = len(res["runs"]["01"]["baseline"]["asked"])
    assert panel["images"].shape == (3 * n, 3, 16, 16) and panel["nrow"] == n and len(panel["titles"]) == 3 * n
    assert panel["empty"] == list(range(3, n))      # the reference row shows only the 3 real references
    assert np.array_equal(panel["images"][2 * n:], res["runs"]["01"]["guided_dora"]["images"])
    with pytest.raises(ValueError, match="unknown style set"):
        recipe.style_panel(res, "07")
    with pytest.raises(ValueError, match="was not run"):
        recipe.style_panel(res, "00", "dora")
    ex = ablation_explorer(res)
    ex.update()
    assert ex.error is None and ex.result["images"].shape[0] == 3 * n
    ex.controls["variant"].value = "baseline"
    assert ex.error is None and ex.result["images"].shape[0] == 2 * n
    assert np.array_equal(ex.result["images"][n:], res["runs"]["00"]["baseline"]["images"])
    assert list(ex.result["scores"]) == ["baseline"]
    ex.controls["sid"].value = "01"
    assert np.array_equal(ex.result["images"][n:], res["runs"]["01"]["baseline"]["images"])
