"""Scores for generated images, measured by the ToyWorld evaluators, in the shape of the challenge's score.

Challenge (Jittor AI Challenge 2024):  Final = Style x (Text + Quality)
  Style   = 0.2 DINOv2 similarity + 0.4 pixel-histogram similarity + 0.4 (1 - LPIPS)
  Text    = 0.5 CLIP R-precision
  Quality = 0.4 (20 - min(FID, 20)) / 20 + 0.1 CLIP-IQA
Toy analogs, same weights and shape (each term in [0, 1] before weighting):
  DINO similarity  -> `embedding_similarity`: cosine of the style evaluator's embeddings, prediction vs each reference
  histogram        -> `histogram_similarity`: intersection of joint RGB histograms (8 bins per channel)
  LPIPS            -> `perceptual_distance`: 1 - cosine of unit-normalised style-network feature maps, averaged
                      over blocks and positions (the LPIPS recipe on the style network)
  R-precision      -> `content_accuracy`: share of images whose asked object is the content evaluator's top-1
                      among all ToyWorld objects (R-precision with R = 1 over the object captions)
  FID              -> `frechet_distance` between style-evaluator features of predictions and references,
                      times FD_SCALE so that the challenge's cap of 20 is a meaningful range
  CLIP-IQA         -> `confidence`: the content evaluator's mean top-1 probability (is an object clearly drawn?)
Also `style_accuracy` (share classified as the references' style) and `leakage_rate` (share of images
classified as one of the few-shot set's own objects when another object was asked).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .cliutil import Parser, fail

FD_SCALE = 100.0  # Frechet distance units: unit-norm style features, squared distances x 100
STYLE_W, TEXT_W = (0.2, 0.4, 0.4), 0.5
FID_W, IQA_W, FID_CAP = 0.4, 0.1, 20.0


def content_accuracy(pred_idx: Sequence[int], target_idx: Sequence[int]) -> float:
    """Share of images whose predicted class equals the asked one (toy R-precision, R = 1)."""
    p, t = np.asarray(pred_idx), np.asarray(target_idx)
    if p.shape != t.shape or p.size == 0:
        raise ValueError(f"need equally long, non-empty predictions and targets, got {p.shape} and {t.shape}")
    return float((p == t).mean())


def leakage_rate(pred_idx: Sequence[int], asked_idx: Sequence[int], reference_idx: Sequence[int]) -> float:
    """Among images that asked for an object outside the few-shot set, the share classified as one of the
    few-shot set's own objects (content copied from the references); nan when no such image exists."""
    p, a = np.asarray(pred_idx), np.asarray(asked_idx)
    ref = np.asarray(list(reference_idx))
    other = ~np.isin(a, ref)
    if not other.any():
        return float("nan")
    return float(np.isin(p[other], ref).mean())


def embedding_similarity(emb: np.ndarray, ref_emb: np.ndarray) -> float:
    """Mean cosine similarity of every prediction embedding to every reference embedding (DINO analog)."""
    a = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-8)
    b = ref_emb / np.maximum(np.linalg.norm(ref_emb, axis=1, keepdims=True), 1e-8)
    return float((a @ b.T).mean())


def color_histograms(images: np.ndarray, bins: int = 8) -> np.ndarray:
    """Normalised joint RGB histograms [N, bins^3] of library images ([N, 3, H, W] in [-1, 1])."""
    a = np.clip(((np.asarray(images, np.float32) + 1.0) * 0.5 * bins).astype(np.int64), 0, bins - 1)
    code = (a[:, 0] * bins + a[:, 1]) * bins + a[:, 2]
    h = np.stack([np.bincount(c.ravel(), minlength=bins ** 3) for c in code]).astype(np.float64)
    return h / h.sum(1, keepdims=True)


def histogram_similarity(images: np.ndarray, ref_images: np.ndarray, bins: int = 8) -> float:
    """Mean histogram intersection sum(min(h, h_ref)) over prediction x reference pairs, in [0, 1]."""
    h, r = color_histograms(images, bins), color_histograms(ref_images, bins)
    return float(np.minimum(h[:, None, :], r[None, :, :]).sum(-1).mean())


def perceptual_distance(maps: list[np.ndarray], ref_maps: list[np.ndarray]) -> float:
    """LPIPS-style distance: per block, 1 - cosine of channel vectors at each position, averaged over
    positions, blocks and prediction x reference pairs; in [0, 1] for ReLU features."""
    ds = []
    for m, r in zip(maps, ref_maps):
        mn = m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-8)
        rn = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-8)
        cos = np.einsum("achw,bchw->abhw", mn, rn).mean((2, 3))
        ds.append(1.0 - cos.mean())
    return float(np.mean(ds))


def frechet_distance(f1: np.ndarray, f2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2) between Gaussian fits of two feature sets
    (Eq. 6 of Heusel et al. 2017); a set of one sample has zero covariance."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    if f1.ndim != 2 or f2.ndim != 2 or f1.shape[1] != f2.shape[1] or min(len(f1), len(f2)) < 1:
        raise ValueError(f"need two non-empty [N, D] feature sets of equal D, got {f1.shape} and {f2.shape}")

    def cov(f):
        return np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1]) if len(f) > 1 else np.zeros((f.shape[1],) * 2)

    s1, s2 = cov(f1), cov(f2)
    w, v = np.linalg.eigh(s1)
    sq1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    m = sq1 @ s2 @ sq1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(0.5 * (m + m.T)), 0.0, None)).sum()
    d = ((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt
    return float(max(d, 0.0))


def style_similarity(ev, images: np.ndarray, ref_images: np.ndarray) -> dict:
    """The challenge's Style term and its three toy parts for predictions vs references (library images)."""
    emb = embedding_similarity(ev.style_embedding(images), ev.style_embedding(ref_images))
    hist = histogram_similarity(images, ref_images)
    perc = perceptual_distance(ev.style_maps(images), ev.style_maps(ref_images))
    return {"embedding_similarity": emb, "histogram_similarity": hist, "perceptual_distance": perc,
            "style": STYLE_W[0] * emb + STYLE_W[1] * hist + STYLE_W[2] * (1.0 - perc)}


def challenge_score(emb_sim: float, hist_sim: float, perc_dist: float, r_precision: float, fd: float,
                    iqa: float) -> dict:
    """Final = Style x (Text + Quality) with the challenge's weights, from the toy analog terms."""
    style = STYLE_W[0] * emb_sim + STYLE_W[1] * hist_sim + STYLE_W[2] * (1.0 - perc_dist)
    text = TEXT_W * r_precision
    quality = FID_W * (FID_CAP - min(fd, FID_CAP)) / FID_CAP + IQA_W * iqa
    return {"style": style, "text": text, "quality": quality, "final": style * (text + quality)}


def per_image_outcomes(ev, images: np.ndarray, asked: Sequence[str], ref_objects: Sequence[str] = ()) -> dict:
    """Per image: `correct` (drawn as the asked object) and `leaked` (drawn as one of ref_objects while another object
    was asked; False when the asked object is itself a reference object), both bool [N], plus `asked`: the units a
    paired bootstrap over objects resamples (gdlib.stats.by_cluster)."""
    unknown = sorted({w for w in list(asked) + list(ref_objects) if w not in ev.objects})
    if unknown:
        raise ValueError(f"objects {unknown} are not ToyWorld objects the content evaluator knows ({ev.objects})")
    pred = np.asarray(ev.predict_content(images))
    asked_idx = np.array([ev.objects.index(w) for w in asked])
    ref_idx = np.array([ev.objects.index(w) for w in ref_objects], dtype=np.int64)
    other = ~np.isin(asked_idx, ref_idx)
    return {"correct": pred == asked_idx, "leaked": other & np.isin(pred, ref_idx), "asked": list(asked)}


def score_set(ev, images: np.ndarray, asked: Sequence[str], ref_images: np.ndarray,
              ref_objects: Sequence[str]) -> dict:
    """All metrics for one style: predictions `images` that asked for objects `asked`, against the few-shot
    references. Words that are not evaluator objects raise a ValueError."""
    unknown = sorted({w for w in list(asked) + list(ref_objects) if w not in ev.objects})
    if unknown:
        raise ValueError(f"objects {unknown} are not ToyWorld objects the content evaluator knows ({ev.objects})")
    asked_idx = np.array([ev.objects.index(w) for w in asked])
    ref_idx = [ev.objects.index(w) for w in ref_objects]
    logits = ev.content_logits(images)
    prob = np.exp(logits - logits.max(1, keepdims=True))
    prob /= prob.sum(1, keepdims=True)
    pred = prob.argmax(1)
    ref_style = np.bincount(ev.predict_style(ref_images), minlength=len(ev.styles)).argmax()
    sty_pred = ev.predict_style(images)
    emb, ref_emb = ev.style_embedding(images), ev.style_embedding(ref_images)
    sim = style_similarity(ev, images, ref_images)
    r = {
        "n": int(len(asked_idx)),
        "ref_style": ev.styles[ref_style],
        "content_accuracy": content_accuracy(pred, asked_idx),
        "style_accuracy": float((sty_pred == ref_style).mean()),
        "leakage": leakage_rate(pred, asked_idx, ref_idx),
        "embedding_similarity": sim["embedding_similarity"],
        "histogram_similarity": sim["histogram_similarity"],
        "perceptual_distance": sim["perceptual_distance"],
        "fd": FD_SCALE * frechet_distance(emb, ref_emb),
        "confidence": float(prob.max(1).mean()),
    }
    r.update(challenge_score(r["embedding_similarity"], r["histogram_similarity"], r["perceptual_distance"],
                             r["content_accuracy"], r["fd"], r["confidence"]))
    return r


def score_challenge(pred_root: str | Path, ref_root: str | Path, ev=None) -> dict:
    """Score a predictions folder ({pred}/NN/{prompt}.png) against a challenge folder ({ref}/NN/images,
    prompt.json): dict(sets={NN: metrics}, mean={metric: mean over sets})."""
    from gdlib import imageio

    if ev is None:
        from gdlib.models.evaluators import load_evaluators
        ev = load_evaluators()
    refs = imageio.load_challenge(ref_root, ev.size)
    preds = imageio.load_predictions(pred_root, ev.size)
    sets = {}
    for rs in refs:
        if rs.sid not in preds:
            raise FileNotFoundError(f"no predictions folder {Path(pred_root) / rs.sid} for reference set {rs.sid}")
        p = preds[rs.sid]
        missing = sorted(set(rs.prompts.values()) - set(p["objects"]))
        if missing:
            raise FileNotFoundError(f"{Path(pred_root) / rs.sid} lacks predictions for prompts {missing}")
        keep = [i for i, w in enumerate(p["objects"]) if w in set(rs.prompts.values())]
        sets[rs.sid] = score_set(ev, p["images"][keep], [p["objects"][i] for i in keep], rs.images, rs.objects)
        if rs.meta.get("style"):
            sets[rs.sid]["style_name"] = rs.meta["style"]
    keys = [k for k, v in next(iter(sets.values())).items() if isinstance(v, float)]
    mean = {k: float(np.nanmean([s[k] for s in sets.values()])) for k in keys}
    return {"sets": sets, "mean": mean}


def format_table(result: dict) -> str:
    """A per-style text table of the main metrics and the challenge-shaped score."""
    cols = [("content_accuracy", "content"), ("style_accuracy", "style_acc"), ("leakage", "leak"),
            ("style", "Style"), ("text", "Text"), ("quality", "Quality"), ("final", "Final")]
    head = f"{'set':<4} {'style':<11} {'n':>3} " + " ".join(f"{h:>9}" for _, h in cols)
    lines = [head, "-" * len(head)]
    for sid, r in result["sets"].items():
        name = r.get("style_name", r["ref_style"])
        lines.append(f"{sid:<4} {name:<11} {r['n']:>3} " + " ".join(f"{r[k]:>9.3f}" for k, _ in cols))
    m = result["mean"]
    lines.append(f"{'mean':<4} {'':<11} {'':>3} " + " ".join(f"{m[k]:>9.3f}" for k, _ in cols))
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    """`gdlib score`: score predictions against references (challenge layouts) and print a per-style table."""
    import argparse

    p = Parser(prog="gdlib score", description=main.__doc__)
    p.add_argument("--pred", required=True, help="predictions: {pred}/NN/{prompt}.png")
    p.add_argument("--ref", required=True, help="references: {ref}/NN/images/{object}.png + prompt.json")
    p.add_argument("--json", default=None, help="also write all metrics to this JSON file")
    p.add_argument("--evaluators", default=None, help="evaluator folder (default: the shipped gdlib/data/evaluators)")
    a = p.parse_args(argv)
    try:
        ev = None
        if a.evaluators:
            from gdlib.models.evaluators import load_evaluators
            ev = load_evaluators(a.evaluators)
        result = score_challenge(a.pred, a.ref, ev)
    except (ValueError, FileNotFoundError) as err:
        return fail("gdlib score", err)
    print(format_table(result))
    if a.json:
        from .checkpoint import write_text_atomic
        write_text_atomic(a.json, json.dumps(result, indent=1) + "\n")
        print(f"wrote {a.json}")
    return 0
