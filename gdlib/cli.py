"""The `gdlib` command line: one subcommand per job, each defined next to the code it runs.

A subcommand is registered in COMMANDS as name -> "module:function"; the function receives the argv list after
the subcommand and returns an exit code. Its parser lives in gdlib.commands (Jittor-free, options derived from the
config dataclasses of gdlib.config), so `gdlib <cmd> --help` and bad arguments are answered before the module is
imported; modules are imported lazily so that a broken subcommand cannot break the others.
"""
from __future__ import annotations

import importlib
import sys

# name -> ("module:function", one-line help). Add a line here for a new subcommand.
COMMANDS: dict[str, tuple[str, str]] = {
    "doctor": ("gdlib.doctor:main", "check the Jittor runtime (backend, oneDNN) with a tiny conv"),
    "toyworld": ("gdlib.toyworld.export:main", "export ToyWorld few-shot sets in the challenge layout; oracle predictions"),
    "score": ("gdlib.metrics:main", "score predictions against a challenge-layout folder (per-style table)"),
    "train-evaluators": ("gdlib.models.evaluators:main", "train the ToyWorld content and style evaluators"),
    "train-base": ("gdlib.train:main_train_base", "pretrain (or resume) the toy text-to-image base model on known styles"),
    "sample": ("gdlib.pipeline:main_sample", "generate images from prompts with the base model (CFG + DDIM)"),
    "train-csd": ("gdlib.style:main_train_csd", "train the learned contrastive style descriptor (Psi) on known ToyWorld styles"),
    "train-style": ("gdlib.finetune_cli:main_train_style", "fine-tune one style folder (LoRA/DoRA/full, DreamBooth prior, decoupled captions)"),
    "generate": ("gdlib.recipe_cli:main_generate", "prompt.json (+ style file, + RB-Modulation toward the references) -> OUT/NN/{prompt}.png"),
    "demo": ("gdlib.recipe_cli:main_demo", "Guided DoRA on one held-out ToyWorld style: outputs/demo.png and the score table"),
    "ablation": ("gdlib.recipe_cli:main_ablation", "baseline / DoRA / +decoupled / Guided DoRA on the test styles x seeds: means and 95% intervals"),
    "prepare": ("gdlib.prepare:main", "a folder of your images -> a clean style folder + metadata + a report of what was dropped and why"),
    "sweep": ("gdlib.sweep:main", "tune the recipe's knobs on the validation styles only: results JSON + table"),
    "merge": ("gdlib.merge:main", "merge Custom Diffusion style files (K/V) into one by the closed-form constrained merge"),
    "train-editor": ("gdlib.edit_cli:main_train_editor", "pretrain (or resume) the small DiT editor by flow matching on ToyWorld edit pairs"),
    "train-edit": ("gdlib.edit_cli:main_train_edit", "EditLoRA: fit a LoRA on the editor from a few edit pairs (pairs.jsonl folder)"),
    "edit": ("gdlib.edit_cli:main_edit", "edit an image by an instruction with the DiT editor (+ an EditLoRA)"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    rows = "\n".join(f"  {n:<{width}}  {h}" for n, (_, h) in sorted(COMMANDS.items()))
    return f"usage: gdlib <command> [options]\n\ncommands:\n{rows}\n\n`gdlib <command> --help` for a command's options."


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `gdlib` console script. Bad input ends any subcommand with one line on stderr and exit
    code 2 (gdlib.cliutil); a bug still shows its traceback."""
    from .cliutil import fail, is_input_error

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from . import __version__
        print(f"gdlib {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        return fail("gdlib", f"unknown command {name!r}; the commands are: {', '.join(sorted(COMMANDS))} "
                             "(`gdlib --help` lists them)")
    target, _ = COMMANDS[name]
    module, func = target.split(":")
    from .commands import PARSERS
    if name in PARSERS:  # --help and bad arguments are answered here, before the command's module loads Jittor
        PARSERS[name]().parse_args(rest)
    try:
        fn = getattr(importlib.import_module(module), func)
        return int(fn(rest) or 0)
    except KeyboardInterrupt:
        print("\ngdlib: interrupted (checkpoints written so far are kept; rerun to resume)", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the policy: bad input is one line, a bug keeps its traceback
        if is_input_error(err):
            return fail(f"gdlib {name}", err)
        raise


if __name__ == "__main__":
    sys.exit(main())
