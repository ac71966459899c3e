"""`gdlib train-editor`, `gdlib train-edit` and `gdlib edit`: the command line of gdlib.edit (parsers in
gdlib.commands)."""
from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np

from .checkpoint import write_text_atomic
from .cliutil import config_kwargs
from .config import DiTConfig, EditLoRAConfig, EditorConfig


def main_train_editor(argv: list[str]) -> int:
    """Pretrain or resume the editor; writes OUT/editor.safetensors."""
    from . import commands
    from .edit import train_editor

    a = commands.parse("train-editor", argv)
    cfg = EditorConfig(**config_kwargs(a, commands.EDITOR_OPTIONS),
                       model=DiTConfig(**config_kwargs(a, commands.DIT_OPTIONS)))
    res = train_editor(cfg, progress=not a.no_progress)
    h = res["history"]["loss"]
    print(f"steps {res['state']['step']}, last logged loss {h[-1]:.4f}" if h else "no steps run")
    if a.export:
        export_editor(res, cfg, a.export, "gdlib train-editor " + " ".join(shlex.quote(x) for x in argv),
                      a.eval_pairs)
    return 0


def export_editor(res: dict, cfg: EditorConfig, out_dir: str, command: str, eval_pairs: int) -> Path:
    """Measure the trained editor on held-out pairs; write OUT/editor.safetensors (card in its metadata) and
    OUT/model_card.json / .md."""
    import sys
    from dataclasses import asdict

    from . import runtime, toyworld
    from .checkpoint import write_model_card
    from .edit import evaluate_editor

    metrics = evaluate_editor(res["editor"], n=eval_pairs)
    for kind, row in metrics["kinds"].items():
        print(f"{kind}: " + "; ".join(f"{name} " + ", ".join(f"{k} {v:.3f}" for k, v in m.items())
                                      for name, m in row.items()))
    h = res["history"]["loss"]
    card = {"command": command,
            "data": f"ToyWorld data version {toyworld.DATA_VERSION}: edit pairs {cfg.edits} drawn at random among the "
                    f"known styles {toyworld.KNOWN_STYLES} and objects {toyworld.OBJECTS} (fresh pairs every step)",
            "steps": res["state"]["step"], "train_minutes": round(res["state"]["elapsed"] / 60, 1),
            "batch_size": cfg.batch_size, "parameters": res["editor"].num_parameters(),
            "final_loss": round(float(np.mean(h[-10:])), 5) if h else None,
            "metrics": metrics, "train_config": {k: v for k, v in asdict(cfg).items() if k != "model"},
            "model_config": asdict(cfg.model),
            "backend": f"{runtime.info()['backend']}, python {sys.version.split()[0]}"}
    out = Path(out_dir)
    path = res["editor"].save(out / "editor.safetensors", {"model_card": card})
    write_model_card(out, card, title="gdlib DiT editor (flow matching on ToyWorld edit pairs)")
    print(f"exported {path} ({path.stat().st_size / 2**20:.2f} MiB) + model card")
    return path


def main_train_edit(argv: list[str]) -> int:
    """EditLoRA on a pairs folder; writes the adapter file and a card next to it."""
    from . import commands
    from .edit import train_edit_lora
    from .models.dit import Editor

    a = commands.parse("train-edit", argv)
    if not str(a.out).endswith(".safetensors"):
        raise ValueError(f"--out should end in .safetensors, got {a.out}")
    cfg = EditLoRAConfig(**config_kwargs(a, commands.EDIT_LORA_OPTIONS))
    editor = Editor.load(a.base)
    res = train_edit_lora(a.pairs_dir, editor, cfg, out=a.out, progress=not a.no_progress)
    loss = res["history"]["loss"]
    tail = loss[-20:]
    card = {"command": "gdlib train-edit " + " ".join(shlex.quote(x) for x in argv), "base": a.base,
            "pairs": a.pairs_dir, "adapted_layers": res["names"], "steps": len(loss),
            "final_loss_last20": round(sum(tail) / max(1, len(tail)), 5)}
    card_path = Path(a.out).with_name(Path(a.out).name.replace(".safetensors", "") + ".card.json")
    write_text_atomic(card_path, json.dumps(card, indent=2) + "\n")
    print(f"adapter {a.out} ({len(res['names'])} layers), card {card_path}; mean loss of the last 20 steps "
          f"{card['final_loss_last20']}")
    return 0


def main_edit(argv: list[str]) -> int:
    """One source image + one instruction -> one PNG."""
    from PIL import Image

    from . import commands
    from .adapters import load_adapter
    from .checkpoint import write_atomic
    from .edit import edit
    from .imageio import load_image, to_uint8_hwc
    from .models.dit import Editor

    a = commands.parse("edit", argv)
    editor = Editor.load(a.model)
    if a.adapter:
        load_adapter(editor.dit.blocks, a.adapter)
    src = load_image(a.source, editor.config.image_size)[None]
    out = edit(editor, src, [a.caption], steps=a.steps, sampler=a.sampler, guidance_scale=a.guidance,
               shift=a.shift, seed=a.seed)
    img = to_uint8_hwc(out)[0]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(a.out, lambda tmp: Image.fromarray(img).save(tmp, format="PNG"))
    print(f"wrote {a.out}")
    return 0
