"""`gdlib train-style`: the command line of gdlib.finetune (its parser: gdlib.commands.train_style)."""
from __future__ import annotations

import json
from pathlib import Path

from . import runtime
from .checkpoint import write_text_atomic
from .cliutil import config_kwargs, fail, is_sd_folder
from .config import StyleConfig
from .finetune import finetune_style, style_prompt


def main_train_style(argv: list[str]) -> int:
    """`gdlib train-style STYLE_DIR --out FILE`: fine-tune, write the style file, print the inference prompt."""
    from . import commands

    a = commands.parse("train-style", argv)
    try:
        cfg = StyleConfig(**config_kwargs(a, commands.STYLE_OPTIONS))
        cfg.new_words = [w.lower() for w in cfg.new_words]
        if not cfg.targets:
            raise ValueError("--targets needs at least one module name, e.g. to_q,to_k,to_v,to_out,conv1,conv2")
        if is_sd_folder(a.base):
            from .sd.cli import main_train_style as train_on_sd_folder
            return train_on_sd_folder(a, cfg, argv)
        style = a.style_dir[0] if len(a.style_dir) == 1 else a.style_dir
        res = finetune_style(style, a.out, cfg, base=a.base, cache_dir=a.cache_dir, progress=not a.no_progress)
    except (ValueError, FileNotFoundError) as err:
        return fail("gdlib train-style", err)
    info = res["info"]
    import shlex
    import sys

    from .toyworld import DATA_VERSION
    card = {"command": "gdlib train-style " + " ".join(shlex.quote(x) for x in argv),
            "data": "; ".join(f"style folder {d} (style {c['style'] or 'unknown'}, objects {c['objects']})"
                              for d, c in zip(a.style_dir, info["concepts"]))
                    + f"; ToyWorld data version {DATA_VERSION} if it is a ToyWorld export",
            "base": {"path": a.base, "fingerprint": info["base_fingerprint"]},
            "captions": info["captions"], "inference_prompt": [style_prompt(info, "{object}", i) for i in range(len(info["concepts"]))],
            "steps": info["steps"], "train_minutes": info["train_minutes"],
            "metrics": {"final_loss_last20": info["final_loss"]}, "config": info["config"],
            "backend": f"{runtime.info()['backend']}, python {sys.version.split()[0]}"}
    card_path = Path(a.out).with_name(Path(a.out).name.replace(".safetensors", "") + ".card.json")
    write_text_atomic(card_path, json.dumps(card, indent=2) + "\n")
    print(f"model card: {card_path}")
    print(f"captions: {info['captions']}")
    for i, c in enumerate(info["concepts"]):
        print(f"inference prompt{' of ' + str(c['sid']) if len(info['concepts']) > 1 else ''}: "
              f"{style_prompt(info, '{object}', i)!r}")
    return 0
