"""Weights on disk: safetensors only (never pickles), atomic writes, JSON metadata, model cards."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_atomic(path: str | os.PathLike, write) -> Path:
    """Write a file atomically: write(tmp_path) fills a temporary file beside it, then os.replace puts it in place, so
    a crash leaves the old file or the new one, never half of one. The temporary keeps the suffix (writers that
    infer the format from it, PNG / matplotlib, still work)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # some writers (safetensors) create 0600 files; give the user's usual mode
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """write_atomic for a UTF-8 text file (JSON, Markdown, CSV)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def save_tensors(path: str | os.PathLike, tensors: dict[str, np.ndarray], metadata: dict[str, Any] | None = None) -> Path:
    """Write tensors (numpy) + string metadata to a .safetensors file atomically (tmp file, then os.replace)."""
    from safetensors.numpy import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"save_tensors: weights are stored as .safetensors, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in (metadata or {}).items()}
    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    return write_atomic(path, lambda tmp: save_file(arrays, str(tmp), metadata=meta))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Read a .safetensors file: (name -> numpy array, metadata strings)."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; give the .safetensors file inside it")
    if path.suffix != ".safetensors":
        raise ValueError(f"load_tensors: expected a .safetensors file, got {path.name!r} (pickles are not loaded)")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as err:  # safetensors raises its own SafetensorError (not a ValueError) for a damaged file
        if isinstance(err, (MemoryError, KeyboardInterrupt)):
            raise
        raise ValueError(f"{path} is not a readable safetensors file ({' '.join(str(err).split())}); it may be "
                         "truncated or corrupt: export or copy it again") from err
    return tensors, meta


def module_state(module, prefix: str = "") -> dict[str, np.ndarray]:
    """A Jittor module's state_dict as float32 numpy arrays, names prefixed."""
    return {prefix + k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in module.state_dict().items()}


def load_module_state(module, tensors: dict[str, np.ndarray], prefix: str = "", strict: bool = True) -> None:
    """Load tensors named prefix+key into module; strict: missing/unexpected/shape-mismatched keys are an error."""
    own = module.state_dict()
    sub = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing = sorted(set(own) - set(sub))
    unexpected = sorted(set(sub) - set(own))
    bad = sorted(k for k in set(own) & set(sub) if tuple(own[k].shape) != tuple(sub[k].shape))
    if strict and (missing or unexpected or bad):
        raise ValueError(f"checkpoint does not match the model (prefix {prefix!r}): missing {missing[:8]}, "
                         f"unexpected {unexpected[:8]}, shape mismatch {bad[:8]}")
    for k, v in own.items():
        if k in sub and k not in bad:
            v.update(np.asarray(sub[k], dtype=np.float32))


def write_model_card(directory: str | os.PathLike, card: dict[str, Any], title: str = "Model card") -> tuple[Path, Path]:
    """Write model_card.json and a Markdown rendering model_card.md (atomically)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    js, md = d / "model_card.json", d / "model_card.md"
    lines = [f"# {title}", ""]
    for k, v in card.items():
        if isinstance(v, dict):
            lines.append(f"## {k}")
            lines += [f"- **{kk}**: {json.dumps(vv) if not isinstance(vv, str) else vv}" for kk, vv in v.items()]
            lines.append("")
        else:
            val = f"`{v}`" if k == "command" else (v if isinstance(v, str) else json.dumps(v))
            lines.append(f"- **{k}**: {val}")
    for path, text in ((js, json.dumps(card, indent=2, sort_keys=False) + "\n"), (md, "\n".join(lines) + "\n")):
        write_text_atomic(path, text)
    return js, md


def optimizer_tensors(opt) -> dict[str, np.ndarray]:
    """A Jittor Adam/AdamW's first and second moments as named arrays ("opt.{group}.m|v.{i}")."""
    tensors = {}
    for g, pg in enumerate(opt.param_groups):
        for i, (m, v) in enumerate(zip(pg["m"], pg["values"])):
            tensors[f"opt.{g}.m.{i}"], tensors[f"opt.{g}.v.{i}"] = m.numpy(), v.numpy()
    return tensors


def restore_optimizer(opt, tensors: dict[str, np.ndarray], n_step: int) -> None:
    """Put optimizer_tensors' moments and the step count back into the optimizer (for resume)."""
    import jittor as jt  # gdlib has configured Jittor by the time an optimizer exists

    for g, pg in enumerate(opt.param_groups):
        for i, (m, v) in enumerate(zip(pg["m"], pg["values"])):
            m.update(jt.array(tensors[f"opt.{g}.m.{i}"]))
            v.update(jt.array(tensors[f"opt.{g}.v.{i}"]))
    opt.n_step = int(n_step)
