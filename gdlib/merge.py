"""Custom Diffusion's closed-form merge of fine-tuned cross-attention weights (Kumari et al. 2023, Sec. 3.2, Eq. 4),
and `gdlib merge`, which applies it to style files.

Two concepts A and B were fine-tuned separately, each changing only the cross-attention key and value projections
W (`attn2.to_k`, `attn2.to_v`: they read the text, so only text features pass through them). The merged W keeps
the base model's behaviour on ordinary text as well as possible while mapping each concept's own words exactly as
its fine-tuned model does:

    W* = argmin_W || W R^T - W0 R^T ||_F^2   subject to   W C^T = V

with R [n_reg, d] the text features of many regularisation captions (rows), C [n_target, d] the features of the
target words (A's and B's), and V [d_out, n_target] = (W_A C_A^T | W_B C_B^T). With M = R^T R and the Lagrange
multipliers L [d_out, n_target]: 2 (W - W0) M = 2 L C gives W - W0 = L C M^-1, and the constraint fixes
L = (V - W0 C^T) (C M^-1 C^T)^-1, so

    W* = W0 + (V - W0 C^T) (C M^-1 C^T)^-1 C M^-1 .

NumPy, float64; `ridge` adds eps * mean(diag M) to M when the regularisation features do not span all d directions.

Style files (merge_style_files, `gdlib merge A B --out AB`). For every attn2.to_k / to_v layer: W0 is the base weight,
W_A and W_B the files' weights; both tokens' trained embedding rows are put into the base text encoder (each file's
captions then encode exactly as in its own model, since neither holds the other's token).
  R: every ToyWorld caption template x known style x object (765 captions, the base's own pretraining captions, none
     with a new token), every one of the L = 12 positions: 9,180 rows, spanning all d = 96 directions.
  C: by default (rows='caption') EVERY position of each file's distinct training captions, <bos>, the words, <eos> and
     the padding. Why all of them: this text encoder is bidirectional, so the new token shapes every position's
     feature (not only its own, as in the causal CLIP encoder of the paper, where the positions before the token do
     not depend on it), and the UNet's cross-attention reads all L positions (there is no padding mask). Constraining
     them all makes the merged K/V reproduce each concept's own K/V on its whole training caption, so the merged UNet's
     prediction on that caption IS the concept's own prediction (notebook 07 checks it on the loaded file). A caption
     of the challenge baseline's instance mode ("style_07") gives 12 rows per concept: 24 for two, <= d = 96.
     rows='words' keeps <bos> .. <eos> (the paper's choice for CLIP), rows='token' only the new tokens' positions;
     both are gentler on the base (fewer constraints) and scale to more or longer captions. On the validation styles
     (watercolor + mosaic, 6 objects x 2 seeds) the three kept each style's Style within 0.025 of its own model
     (caption .353/.407, words .352/.394, token .350/.389 vs own .377/.397): no measurable difference, so the default
     is the one with the exact guarantee.
  Rows are deduplicated per file by an SVD basis of their span (row_basis: the same constraint set, since V is linear
  in C, without the repeated rows of identical captions); more than d rows in all is a ValueError.
The merged file is an ordinary `custom` style file (load_style updates every unet.* weight and the token rows) whose
info["concepts"] lists every input concept; the report holds, per layer, max |W C^T - V| and the objective
||(W - W0) R^T||^2 (0 at the base; also given for each input alone), and warns when the merge changed ordinary
captions more than either fine-tune did: the sign that the concepts' target features overlap (notebook 07, Sec. 5).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np


def constrained_merge(W0: np.ndarray, R: np.ndarray, C: np.ndarray, V: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """W* = argmin ||(W - W0) R^T||_F^2 s.t. W C^T = V (Kumari et al. 2023, Eq. 4), in closed form (module docstring).

    W0 [d_out, d], R [n_reg, d], C [n_target, d], V [d_out, n_target] -> W* [d_out, d] (float64)."""
    W0, R, C, V = (np.asarray(a, np.float64) for a in (W0, R, C, V))
    if W0.ndim != 2 or R.ndim != 2 or C.ndim != 2 or V.ndim != 2:
        raise ValueError("constrained_merge: W0, R, C and V must be matrices")
    d_out, d = W0.shape
    if R.shape[1] != d or C.shape[1] != d or V.shape != (d_out, C.shape[0]):
        raise ValueError(f"constrained_merge: shapes do not fit: W0 {W0.shape}, R {R.shape}, C {C.shape}, V {V.shape} "
                         "(need R [n, d], C [k, d], V [d_out, k])")
    if C.shape[0] > d:
        raise ValueError(f"constrained_merge: {C.shape[0]} target features cannot all be matched exactly in {d} "
                         "dimensions; use fewer target tokens")
    M = R.T @ R
    M = M + ridge * (np.trace(M) / d + 1e-12) * np.eye(d)
    M_inv_Ct = np.linalg.solve(M, C.T)                       # M^-1 C^T  [d, k]
    gram = C @ M_inv_Ct                                      # C M^-1 C^T  [k, k]
    E = V - W0 @ C.T                                         # what the constraint asks on top of W0
    L = np.linalg.solve(gram.T, E.T).T                       # E (C M^-1 C^T)^-1
    return W0 + L @ M_inv_Ct.T


def merge_objective(W: np.ndarray, W0: np.ndarray, R: np.ndarray) -> float:
    """|| (W - W0) R^T ||_F^2: how much the merged weights change the base model's response to ordinary text."""
    D = (np.asarray(W, np.float64) - np.asarray(W0, np.float64)) @ np.asarray(R, np.float64).T
    return float((D * D).sum())


# --------------------------------------------------------------------------------------------- style files
ROWS = ("caption", "words", "token")
DEFAULT_ROWS = "caption"


def regularisation_captions(styles: Sequence[str] | None = None) -> list[str]:
    """The regularisation captions R is read from: every ToyWorld caption (each template) of the given styles (default:
    the known styles, the base model's pretraining captions) x every object, deduplicated, sorted. 765 captions."""
    from . import toyworld

    styles = list(toyworld.KNOWN_STYLES if styles is None else styles)
    return sorted({toyworld.caption(s, o, t) for s in styles for o in toyworld.OBJECTS
                   for t in toyworld.CAPTION_TEMPLATES})


def encode_features(model, captions: Sequence[str], batch: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(text features [n, L, d] float64, token ids [n, L]) of captions: the cross-attention context the UNet reads."""
    ids = model.tokenizer.encode(list(captions), strict=True)
    feats = [model.text_encoder(ids[i:i + batch]).numpy() for i in range(0, len(ids), batch)]
    return np.concatenate(feats).astype(np.float64), ids


def select_rows(feats: np.ndarray, ids: np.ndarray, rows: str, token_ids: Sequence[int], pad_id: int) -> np.ndarray:
    """The rows of encoded captions that form C: every position ('caption'), the non-padding positions <bos> .. <eos>
    ('words') or the new tokens' positions ('token'); [k, d]."""
    if rows not in ROWS:
        raise ValueError(f"rows={rows!r}: use one of {ROWS}")
    if rows == "caption":
        mask = np.ones(ids.shape, bool)
    elif rows == "words":
        mask = ids != pad_id
    else:
        mask = np.isin(ids, np.asarray(list(token_ids)))
    if not mask.any():
        raise ValueError("the target captions hold none of the concept's new tokens; nothing to constrain")
    return feats[mask]


def row_basis(X: np.ndarray, rtol: float = 1e-6) -> np.ndarray:
    """Rows spanning the same space as X's rows, deduplicated: S_r V_r^T of the SVD, singular values above rtol x
    the largest. W C^T = W_i C^T on these rows is the same constraint as on X (V is linear in C)."""
    _, s, vt = np.linalg.svd(np.asarray(X, np.float64), full_matrices=False)
    r = int((s > rtol * s[0]).sum()) if s.size and s[0] > 0 else 0
    return s[:r, None] * vt[:r]


def principal_cosines(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Cosines of the principal angles between the row spaces of A and B (1: a shared direction)."""
    qa = np.linalg.qr(np.asarray(A, np.float64).T)[0]
    qb = np.linalg.qr(np.asarray(B, np.float64).T)[0]
    return np.linalg.svd(qa.T @ qb, compute_uv=False)


def _file_sha(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def check_inputs(styles: Sequence[tuple[Path, dict, dict]]) -> None:
    """The refusals of `gdlib merge`, each a one-line ValueError: fewer than two files, the same file twice, a style
    file that is not Custom Diffusion's (adapter 'custom', text encoder frozen), different bases or caption modes, a
    concept without an identifier token, a token (or any new word) in two files."""
    if len(styles) < 2:
        raise ValueError("gdlib merge needs at least two style files")
    seen: dict[Path, Path] = {}
    for path, _, _ in styles:
        key = path.resolve()
        if key in seen:
            raise ValueError(f"{path} is given twice; merge two different concepts")
        seen[key] = path
    for path, tensors, info in styles:
        if info.get("adapter") != "custom":
            raise ValueError(f"{path} is a {info.get('adapter')!r} style file; gdlib merge combines Custom Diffusion "
                             "files (gdlib train-style --adapter custom), whose cross-attention K/V weights it solves for")
        if info.get("train_text_encoder"):
            raise ValueError(f"{path} fine-tuned the whole text encoder; the merge needs the base text encoder "
                             "(train it with the default --adapter custom, without --train-text-encoder)")
        if not any(k.startswith("unet.") and ".attn2.to_" in k for k in tensors):
            raise ValueError(f"{path} holds no attn2.to_k / attn2.to_v weights; it is not a Custom Diffusion file")
        for c in _concepts(info):
            if not c.get("token"):
                raise ValueError(f"{path}: concept {c.get('sid')!r} has no identifier token (caption mode "
                                 f"{info.get('caption_mode')!r}); the merge keeps concepts apart by their tokens")
    fps = {info.get("base_fingerprint") for _, _, info in styles}
    if len(fps) != 1:
        raise ValueError("the style files were fine-tuned on different base models (fingerprints "
                         f"{[info.get('base_fingerprint') for _, _, info in styles]}); merge files of one base")
    modes = {info.get("caption_mode") for _, _, info in styles}
    if len(modes) != 1:
        raise ValueError(f"the style files use different caption modes {sorted(map(str, modes))}; one merged file has "
                         "one inference prompt form")
    owner: dict[str, Path] = {}
    for path, _, info in styles:
        for w in list(info.get("new_tokens", [])) + [c["token"] for c in _concepts(info)]:
            if w in owner and owner[w] != path:
                raise ValueError(f"the token {w!r} is in both {owner[w]} and {path}; the merged model could not tell "
                                 "the concepts apart (train them from folders with different ids, or pass --token)")
            owner[w] = path


def _concepts(info: dict) -> list[dict]:
    """info['concepts'], or the one concept of a file written before multi-concept training."""
    if info.get("concepts"):
        return [dict(c) for c in info["concepts"]]
    return [{k: info.get(k) for k in ("sid", "style", "token", "objects", "attributes", "style_words")}]


def merge_custom(model, styles: Sequence[tuple[Path, dict, dict]], rows: str = DEFAULT_ROWS,
                 reg_captions: Sequence[str] | None = None, ridge: float = 1e-6,
                 log: Callable[[str], None] = print) -> dict:
    """Merge Custom Diffusion style files [(path, tensors, info)] on `model`, a freshly loaded base whose fingerprint
    the files carry. The model gains the files' tokens (their trained rows) and is otherwise left unchanged.
    Returns dict(tensors, info, report) of the merged style file."""
    from .styledata import model_fingerprint
    from .stylefile import custom_layers

    check_inputs(styles)
    fp = model_fingerprint(model)
    want = styles[0][2]["base_fingerprint"]
    if fp != want:
        raise ValueError(f"the style files were fine-tuned on base {want} ({styles[0][2].get('base_path')!r}) but "
                         f"--base has fingerprint {fp}; pass the base they were trained on")
    import jittor as jt

    new_tokens = [w for _, _, info in styles for w in info["new_tokens"]]
    ids = model.tokenizer.add_tokens(new_tokens)
    emb = model.text_encoder.token_embedding.weight.numpy()
    out: dict[str, np.ndarray] = {}
    for i, w in zip(ids, new_tokens):
        row = next(t[f"token_embedding.{w}"] for _, t, info in styles if w in info["new_tokens"])
        emb[i] = row
        out[f"token_embedding.{w}"] = np.asarray(row, np.float32).copy()
    model.text_encoder.token_embedding.weight.update(jt.array(emb))

    reg_captions = list(regularisation_captions() if reg_captions is None else reg_captions)
    bad = sorted({w for c in reg_captions for w in model.tokenizer.split(c)} & set(new_tokens))
    if bad:
        raise ValueError(f"regularisation captions must not hold the new tokens {bad}")
    R = encode_features(model, reg_captions)[0].reshape(-1, model.config.text.width)
    pad = model.tokenizer.ids["<pad>"]
    Cs = []
    for path, _, info in styles:
        caps = sorted(set(info["captions"]))
        feats, cap_ids = encode_features(model, caps)
        tok = [model.tokenizer.ids[w] for w in info["new_tokens"]]
        Cs.append(row_basis(select_rows(feats, cap_ids, rows, tok, pad)))
    C = np.concatenate(Cs)
    d = C.shape[1]
    if C.shape[0] > d:
        raise ValueError(f"{C.shape[0]} target feature rows (rows={rows!r}) exceed the text width {d}; merge fewer "
                         "concepts or use --rows token")
    M = R.T @ R
    M = M + ridge * (np.trace(M) / d + 1e-12) * np.eye(d)
    gram = C @ np.linalg.solve(M, C.T)
    overlap = [float(principal_cosines(Cs[i], Cs[j]).max()) for i in range(len(Cs)) for j in range(i + 1, len(Cs))]
    layers = {}
    for name, layer in custom_layers(model):
        key = f"unet.{name}.weight"
        W0 = layer.weight.numpy().astype(np.float64)
        missing = [str(p) for p, t, _ in styles if key not in t]
        if missing:
            raise ValueError(f"{missing[0]} has no {key}; it was not trained on this base's layers")
        Ws = [np.asarray(t[key], np.float64) for _, t, _ in styles]
        V = np.concatenate([W @ Ci.T for W, Ci in zip(Ws, Cs)], axis=1)
        W = constrained_merge(W0, R, C, V, ridge=ridge)
        out[key] = W.astype(np.float32)
        scale = float(np.abs(V).max()) or 1.0
        layers[name] = {
            "residual_max": float(np.abs(W @ C.T - V).max()),
            "residual_max_float32": float(np.abs(W.astype(np.float32).astype(np.float64) @ C.T - V).max()),
            "target_max": scale,
            "objective": merge_objective(W, W0, R),
            "objective_each": [merge_objective(Wi, W0, R) for Wi in Ws],
            "base_response": float(((W0 @ R.T) ** 2).sum()),
        }
    concepts = [c for _, _, info in styles for c in _concepts(info)]
    first = concepts[0]
    i0 = styles[0][2]
    info = {"adapter": "custom", "caption_mode": i0["caption_mode"], "token": first["token"],
            "attributes": first.get("attributes", []), "style_words": first.get("style_words", []),
            "new_tokens": new_tokens, "train_text_encoder": False,
            "captions": [c for _, _, inf in styles for c in inf["captions"]],
            "objects": [o for _, _, inf in styles for o in inf["objects"]],
            "sid": first.get("sid"), "style": first.get("style"), "concepts": concepts,
            "base_fingerprint": fp, "base_path": i0.get("base_path"),
            "config": {"adapter": "custom", "merged_from": [inf.get("config") for _, _, inf in styles]},
            "merge": {"method": "Custom Diffusion constrained merge (Kumari et al. 2023, Eq. 4)", "rows": rows,
                      "target_rows": [int(c.shape[0]) for c in Cs], "reg_captions": len(reg_captions),
                      "reg_rows": int(R.shape[0]), "ridge": ridge,
                      "inputs": [{"path": str(p), "sha256_16": _file_sha(p) if p.is_file() else None,
                                  "tokens": [c["token"] for c in _concepts(inf)]} for p, _, inf in styles]},
            "steps": sum(int(inf.get("steps") or 0) for _, _, inf in styles),
            "train_minutes": round(sum(float(inf.get("train_minutes") or 0) for _, _, inf in styles), 2),
            "final_loss": None}
    report = {"layers": layers, "target_rows": [int(c.shape[0]) for c in Cs], "reg_rows": int(R.shape[0]),
              "gram_condition": float(np.linalg.cond(gram)), "max_overlap_cosine": max(overlap) if overlap else 0.0,
              "residual_max": max(v["residual_max"] for v in layers.values()),
              "relative_residual_max": max(v["residual_max"] / v["target_max"] for v in layers.values()),
              "objective": sum(v["objective"] for v in layers.values()),
              "objective_each": [sum(v["objective_each"][i] for v in layers.values()) for i in range(len(styles))],
              "base_response": sum(v["base_response"] for v in layers.values())}
    report["warnings"] = []
    if report["objective"] > max(report["objective_each"]):
        report["warnings"].append(
            f"the merged K/V change ordinary captions' keys/values more than any input's fine-tune did (objective "
            f"{report['objective']:.3g} vs at most {max(report['objective_each']):.3g}): the concepts' caption "
            f"features overlap (largest principal cosine {report['max_overlap_cosine']:.5f}, Gram condition "
            f"{report['gram_condition']:.2g}); expect the merged model to draw badly. Try --rows token, or joint training")
    for w in report["warnings"]:
        log("warning: " + w)
    log(f"merged {len(styles)} files ({[c['token'] for c in concepts]}) on {len(layers)} K/V layers: "
        f"max |W C^T - V| {report['residual_max']:.2e} (relative {report['relative_residual_max']:.1e}), "
        f"objective {report['objective']:.4g} (each alone {[f'{x:.4g}' for x in report['objective_each']]})")
    return {"tensors": out, "info": info, "report": report}


def merge_style_files(paths: Sequence[str | os.PathLike], out: str | os.PathLike, base: str | os.PathLike | None = None,
                      rows: str = DEFAULT_ROWS, log: Callable[[str], None] = print) -> dict:
    """Merge Custom Diffusion style files into one style file at `out` (atomic), loadable by
    gdlib.stylefile.load_style; returns merge_custom's dict plus `path`. The base defaults to the shipped one."""
    from .checkpoint import save_tensors
    from .config import DEFAULT_BASE
    from .styledata import load_base
    from .stylefile import STYLE_KEY, read_style

    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"--out must end in .safetensors, got {out.name!r}")
    paths = [Path(p) for p in paths]
    if any(p.resolve() == out.resolve() for p in paths):
        raise ValueError(f"--out {out} is one of the inputs; write the merged file elsewhere")
    styles = [(p, *read_style(p)) for p in paths]
    check_inputs(styles)  # before loading the base: bad inputs fail fast
    res = merge_custom(load_base(DEFAULT_BASE if base is None else base), styles, rows=rows, log=log)
    res["path"] = save_tensors(out, res["tensors"], {STYLE_KEY: json.dumps(res["info"]),
                                                     "format": "gdlib-style-custom/1"})
    return res


def main(argv: list[str]) -> int:
    """`gdlib merge A.safetensors B.safetensors --out AB.safetensors`: Custom Diffusion's closed-form merge of
    separately fine-tuned concepts into one style file, with a model card beside it."""
    import shlex
    import sys

    from .cliutil import Parser, fail

    p = Parser(prog="gdlib merge", description=(
        "Merge Custom Diffusion style files (gdlib train-style --adapter custom) into one: every cross-attention "
        "key/value weight solved in closed form so that each concept's caption features map exactly as its own "
        "fine-tuned model maps them, while ordinary captions change as little as possible (Kumari et al. 2023)."))
    p.add_argument("styles", nargs="+", metavar="STYLE", help="two or more custom style files (.safetensors)")
    p.add_argument("--out", required=True, help="merged style file to write, e.g. runs/styles/ab.safetensors")
    p.add_argument("--base", default=None, help="base model the files were trained on (default: the shipped base)")
    p.add_argument("--rows", default=DEFAULT_ROWS, choices=ROWS,
                   help="which caption features form the constraints: every position (default), <bos>..<eos>, or "
                        "the new tokens only")
    a = p.parse_args(argv)
    if len(a.styles) < 2:
        p.error("give at least two style files to merge")
    try:
        res = merge_style_files(a.styles, a.out, a.base, rows=a.rows)
    except (ValueError, OSError) as err:
        return fail("gdlib merge", err)
    from . import runtime
    from .styledata import style_prompt

    info, rep = res["info"], res["report"]
    card = {"command": "gdlib merge " + " ".join(shlex.quote(x) for x in argv),
            "method": info["merge"]["method"],
            "inputs": info["merge"]["inputs"],
            "base": {"path": a.base or "(shipped base)", "fingerprint": info["base_fingerprint"]},
            "concepts": info["concepts"],
            "inference_prompts": {c["sid"]: style_prompt(info, "{object}", c["sid"]) for c in info["concepts"]},
            "constraints": {"rows": a.rows, "target_rows_per_file": rep["target_rows"],
                            "regularisation_rows": rep["reg_rows"], "gram_condition": rep["gram_condition"],
                            "max_overlap_cosine": rep["max_overlap_cosine"]},
            "metrics": {"constraint_residual_max": rep["residual_max"],
                        "constraint_residual_relative_max": rep["relative_residual_max"],
                        # ||(W - W0) R^T||^2 summed over the layers: how much the merge changed ordinary captions'
                        # keys/values (0 at the base), beside the same for each input file's own fine-tuned weights
                        "objective_increase": rep["objective"], "objective_each_file_alone": rep["objective_each"],
                        "base_response": rep["base_response"],
                        "per_layer": {k: {kk: vv for kk, vv in v.items()} for k, v in rep["layers"].items()}},
            "warnings": rep["warnings"],
            "backend": f"{runtime.info()['backend']}, python {sys.version.split()[0]}"}
    card_path = Path(a.out).with_name(Path(a.out).name.replace(".safetensors", "") + ".card.json")
    tmp = card_path.with_name(f".{card_path.name}.tmp")
    tmp.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(tmp, card_path)
    print(f"wrote {res['path']} and {card_path}")
    for c in info["concepts"]:
        print(f"  {c['sid']} ({c.get('style') or '?'}): {style_prompt(info, '{object}', c['sid'])!r}")
    return 0
