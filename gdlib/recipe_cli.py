"""`gdlib generate`, `gdlib ablation`, `gdlib demo`: the command line of gdlib.recipe (parsers: gdlib.commands)."""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from .checkpoint import write_atomic, write_text_atomic
from .cliutil import fail, is_sd_folder
from .config import RBConfig, RecipeConfig
from .finetune import concept_info, style_prompt
from .recipe import generate_predictions, load_base, load_style_folder, run_ablation, run_style
from .report import ablation_markdown, panel_figure, style_panel, variant_table, write_readme_table, write_results


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
        if is_sd_folder(a.base):
            from .sd.cli import main_generate as generate_on_sd_folder
            return generate_on_sd_folder(a, cfg, argv)
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
