"""Few-shot image editing with a small DiT trained by flow matching (notebook 08): PhotoDoodle (Huang et al. 2025) /
OmniEditor in miniature, on ToyWorld edit pairs.

- Edit pairs with an EXACT edit mask: `restyle` (same object instance, another known style; the whole image may
  change) and `swap` (another object drawn into the same background: outside the mask the target IS the source).
  Instructions use the toy tokenizer's words plus INSTRUCTION_WORDS: "make it pixel", "replace cat with fish".
- A `pairs.jsonl` folder (one {"source", "target", "caption"[, "mask"]} object per line, paths relative to the folder)
  as PhotoDoodle's training code reads: `write_pairs` / `load_pairs`.
- `train_editor`: pretraining (flow-matching loss on the target tokens; gdlib.core's guarded_step and resumable
  save_run / load_run); `train_edit_lora`: EditLoRA, a few-shot LoRA on the pretrained editor for one new edit;
  `edit`: Euler / Heun sampling of the flow ODE (gdlib.flow) with optional CFG on the instruction;
  `background_error` and `edit_scores`: background preservation outside the mask, edit success by the evaluators.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import runtime

jt = runtime.setup_jittor()

from . import flow, kernels, toyworld  # noqa: E402
from .config import EDIT_KINDS, DiTConfig, EditLoRAConfig, EditorConfig  # noqa: E402,F401
from .core import count_skipped, flow_batch, guarded_step, load_run, save_run  # noqa: E402
from .models.dit import Editor  # noqa: E402

INSTRUCTION_WORDS = ("make", "it", "replace", "with")
CKPT_NAME = "ckpt.safetensors"
EDITOR_NAME = "editor.safetensors"
PAIRS_FILE = "pairs.jsonl"
_MASK_GROW = 3  # 4-neighbour dilations of the object masks: covers outlines, glow, shadows and pixel-art blocks


def vocabulary() -> list[str]:
    """The editor's words: every ToyWorld caption word plus the instruction words."""
    return sorted(set(toyworld.vocabulary()) | set(INSTRUCTION_WORDS))


def new_editor(config: DiTConfig | None = None) -> Editor:
    """A freshly initialised editor whose tokenizer knows vocabulary()."""
    return Editor(config or DiTConfig(), vocabulary())


def restyle_caption(style: str) -> str:
    return f"make it {style}"


def swap_caption(src_obj: str, tgt_obj: str) -> str:
    return f"replace {src_obj} with {tgt_obj}"


# ------------------------------------------------------------------------------------------------------ edit pairs
def _instance(obj: str, seed: int, size: int):
    return toyworld.coverage(obj, np.random.default_rng([int(seed), toyworld.OBJECTS.index(obj), 1_000_003]), size)


def _style_rng(obj: str, style: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), toyworld.OBJECTS.index(obj), toyworld.STYLES.index(style)])


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def make_pair(kind: str, style: str, obj: str, seed: int, to: str, size: int = toyworld.DEFAULT_SIZE) -> dict:
    """One exact edit pair: dict(source, target uint8 [H, W, 3], mask bool [H, W] (True where the edit may change
    pixels; outside it target == source exactly), caption, kind, style, object, target_style, target_object).
    restyle: `to` is the new style (same object instance and seed, so pose and colours stay). swap: `to` is the new
    object, drawn with the source's style randomness (same background) and composited inside the union of both
    objects' grown masks."""
    from .toyworld.styles import STYLE_FNS, dilate

    source = toyworld.render(obj, style, seed, size)
    if kind == "restyle":
        target = toyworld.render(obj, to, seed, size)
        mask = np.ones((size, size), bool)
        return dict(source=source, target=target, mask=mask, caption=restyle_caption(to), kind=kind, style=style,
                    object=obj, target_style=to, target_object=obj)
    if kind == "swap":
        if to == obj:
            raise ValueError(f"make_pair: swap needs another object than {obj!r}")
        cov_a, _ = _instance(obj, seed, size)
        cov_b, colors_b = _instance(to, seed, size)
        raw = _to_uint8(STYLE_FNS[style](cov_b, colors_b, _style_rng(obj, style, seed)))
        m = np.maximum(cov_a.sum(0), cov_b.sum(0)) > 0
        m = m.astype(np.float64)
        for _ in range(_MASK_GROW):
            m = dilate(m)
        mask = m > 0
        target = np.where(mask[..., None], raw, source)
        return dict(source=source, target=target, mask=mask, caption=swap_caption(obj, to), kind=kind, style=style,
                    object=obj, target_style=style, target_object=to)
    raise ValueError(f"unknown edit kind {kind!r}; choose from restyle, swap")


def random_pair(rng: np.random.Generator, kinds: Sequence[str], styles: Sequence[str], objects: Sequence[str],
                size: int = toyworld.DEFAULT_SIZE) -> dict:
    """A random pair of one of `kinds` among `styles` x `objects` (draws kind, style, object, seed, target in order)."""
    kind = kinds[int(rng.integers(len(kinds)))]
    style = styles[int(rng.integers(len(styles)))]
    obj = objects[int(rng.integers(len(objects)))]
    seed = int(rng.integers(0, 2**31 - 1))
    if kind == "restyle":
        others = [s for s in styles if s != style]
        to = others[int(rng.integers(len(others)))]
    else:
        others = [o for o in objects if o != obj]
        to = others[int(rng.integers(len(others)))]
    return make_pair(kind, style, obj, seed, to, size)


def restyle_pairs(to_style: str, n: int, seed: int = 0, source_styles: Sequence[str] | None = None,
                  objects: Sequence[str] | None = None, size: int = toyworld.DEFAULT_SIZE) -> list[dict]:
    """n pairs "make it {to_style}" from known styles: the few-shot set of one new edit (e.g. a held-out style)."""
    src = list(source_styles or [s for s in toyworld.KNOWN_STYLES if s != to_style])
    objs = list(objects or toyworld.OBJECTS)
    rng = np.random.default_rng([int(seed), 4242, toyworld.STYLES.index(to_style)])
    out = []
    for _ in range(int(n)):
        out.append(make_pair("restyle", src[int(rng.integers(len(src)))], objs[int(rng.integers(len(objs)))],
                             int(rng.integers(0, 2**31 - 1)), to_style, size))
    return out


def stack_pairs(pairs: Sequence[dict]) -> dict:
    """Pairs -> dict(sources, targets float32 [N, 3, H, W] in [-1, 1], masks bool [N, H, W], captions)."""
    return dict(sources=toyworld.to_float(np.stack([p["source"] for p in pairs])),
                targets=toyworld.to_float(np.stack([p["target"] for p in pairs])),
                masks=np.stack([np.asarray(p["mask"], bool) for p in pairs]),
                captions=[p["caption"] for p in pairs])


# ------------------------------------------------------------------------------------------ pairs.jsonl folder format
def write_pairs(folder: str | Path, pairs: Sequence[dict]) -> Path:
    """FOLDER/source/NNNN.png, target/NNNN.png, mask/NNNN.png and FOLDER/pairs.jsonl (paths relative to FOLDER)."""
    from PIL import Image

    from .checkpoint import write_text_atomic

    folder = Path(folder)
    for sub in ("source", "target", "mask"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    lines = []
    for i, p in enumerate(pairs):
        name = f"{i:04d}.png"
        Image.fromarray(p["source"]).save(folder / "source" / name)
        Image.fromarray(p["target"]).save(folder / "target" / name)
        Image.fromarray(np.asarray(p["mask"], np.uint8) * 255).save(folder / "mask" / name)
        rec = {"source": f"source/{name}", "target": f"target/{name}", "caption": p["caption"],
               "mask": f"mask/{name}"}
        rec.update({k: p[k] for k in ("kind", "style", "object", "target_style", "target_object") if k in p})
        lines.append(json.dumps(rec))
    write_text_atomic(folder / PAIRS_FILE, "\n".join(lines) + "\n")
    return folder


def load_pairs(folder: str | Path, size: int = toyworld.DEFAULT_SIZE) -> dict:
    """Read a pairs folder: dict(sources, targets float32 [N, 3, size, size] in [-1, 1], masks bool [N, size, size]
    or None (when no line names a mask), captions, records). Every problem is a ValueError naming the file and line."""
    from .imageio import load_image

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"pairs folder {folder} does not exist or is not a folder")
    index = folder / PAIRS_FILE
    if not index.is_file():
        raise ValueError(f"{folder} has no {PAIRS_FILE}: write one JSON object per line, "
                         '{"source": "src/0.png", "target": "tgt/0.png", "caption": "make it pixel"}')
    records, sources, targets, masks, captions = [], [], [], [], []
    for n, line in enumerate(index.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{index} line {n}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object with source, target, caption")
        missing = [k for k in ("source", "target", "caption") if k not in rec]
        if missing:
            raise ValueError(f"{where}: missing {missing} (each line needs source, target and caption)")
        if not isinstance(rec["caption"], str) or not rec["caption"].strip():
            raise ValueError(f"{where}: caption must be a non-empty string")
        imgs = {}
        for key in ("source", "target") + (("mask",) if rec.get("mask") else ()):
            path = folder / str(rec[key])
            if not path.is_file():
                raise ValueError(f"{where}: {key} image {path} does not exist")
            try:
                imgs[key] = load_image(path, size)
            except Exception as err:  # noqa: BLE001 - any unreadable image is bad input, named with its line
                raise ValueError(f"{where}: cannot read {key} image {path}: {err}") from None
        records.append(rec)
        sources.append(imgs["source"])
        targets.append(imgs["target"])
        masks.append(imgs["mask"].mean(0) > 0 if "mask" in imgs else None)
        captions.append(rec["caption"])
    if not records:
        raise ValueError(f"{index} has no pairs")
    have = [m is not None for m in masks]
    if any(have) and not all(have):
        raise ValueError(f"{index}: some lines name a mask and some do not; give every pair a mask or none")
    return dict(sources=np.stack(sources).astype(np.float32), targets=np.stack(targets).astype(np.float32),
                masks=np.stack(masks) if all(have) else None, captions=captions, records=records)


# ------------------------------------------------------------------------------------------------------- training
def flow_loss(editor: Editor, sources: np.ndarray, targets: np.ndarray, ids: np.ndarray, rng: np.random.Generator,
              t_sampling: str = "logit_normal") -> "jt.Var":
    """mean ||v(x_t, t, source, text) - (eps - x0)||^2 over the TARGET tokens (the output holds only them)."""
    x_t, t, u = flow_batch(targets, rng, t_sampling)
    v = editor.dit(jt.array(x_t), jt.array(t), jt.array(np.asarray(sources, np.float32)), jt.array(ids))
    return ((v - jt.array(u)) ** 2).mean()


_NOT_RUN_DEFINING = ("out_dir", "steps", "minutes", "checkpoint_every", "log_every")


def run_definition(cfg: EditorConfig) -> dict:
    """The fields a resume must match: everything but budgets and bookkeeping."""
    return {k: v for k, v in json.loads(json.dumps(asdict(cfg), default=list)).items() if k not in _NOT_RUN_DEFINING}


def batch_rng(seed: int, step: int, attempt: int = 0) -> np.random.Generator:
    """The random stream of one step (pairs, dropout, times, noise): a function of (seed, step, attempt) only, so a
    resumed run draws exactly what an uninterrupted one would."""
    return np.random.default_rng([int(seed), 8080, int(step), int(attempt)])


def editor_batch(cfg: EditorConfig, editor: Editor, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray,
                                                                                       np.ndarray]:
    """(sources, targets, ids) of one pretraining batch: random pairs of cfg.edits among the KNOWN styles."""
    size = cfg.model.image_size
    pairs = [random_pair(rng, cfg.edits, toyworld.KNOWN_STYLES, toyworld.OBJECTS, size) for _ in range(cfg.batch_size)]
    b = stack_pairs(pairs)
    drop = rng.random(cfg.batch_size) < cfg.cond_drop
    captions = ["" if d else c for d, c in zip(drop, b["captions"])]
    return b["sources"], b["targets"], editor.encode(captions)


def train_editor(cfg: EditorConfig, progress: bool = True, log: Callable[[str], None] = print) -> dict:
    """Pretrain (or resume from OUT/ckpt.safetensors) the editor on known-style edit pairs; writes the checkpoint
    and OUT/editor.safetensors; returns dict(editor, history, state)."""
    from tqdm.auto import tqdm

    if cfg.batch_size < 1 or cfg.steps < 0 or cfg.minutes <= 0:
        raise ValueError("batch_size must be >= 1, steps >= 0 and minutes > 0")
    bad = [k for k in cfg.edits if k not in ("restyle", "swap")]
    if bad or not cfg.edits:
        raise ValueError(f"edits must be a non-empty list of restyle, swap; got {cfg.edits}")
    if not 0.0 <= cfg.cond_drop < 1.0:
        raise ValueError(f"cond_drop must be in [0, 1), got {cfg.cond_drop}")
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = out / CKPT_NAME
    jt.set_global_seed(cfg.seed)
    editor = new_editor(cfg.model)
    opt = kernels.AdamW(editor.parameters(), cfg.lr, weight_decay=cfg.weight_decay)
    state = {"step": 0, "elapsed": 0.0, "history": {"step": [], "loss": []}}
    if ckpt.exists():
        tensors, state, _ = load_run(ckpt, opt, run_definition(cfg))
        editor.load_state({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
        log(f"resumed from {ckpt} at step {state['step']} ({state['elapsed'] / 60:.1f} min trained)")
    log(f"editor: {editor.num_parameters():,} parameters; edits {cfg.edits} on {len(toyworld.KNOWN_STYLES)} known "
        f"styles x {len(toyworld.OBJECTS)} objects")

    def save(st):
        return save_run(ckpt, {"model." + k: v for k, v in editor.state().items()}, opt, st, run_definition(cfg),
                        editor.metadata())

    budget = cfg.minutes * 60.0
    hist = state["history"]
    bar = tqdm(total=cfg.steps, initial=state["step"], disable=not progress, desc="train-editor", mininterval=5)
    t0, elapsed0, bad_steps = time.time(), state["elapsed"], 0
    while state["step"] < cfg.steps and state["elapsed"] < budget:
        step = state["step"]
        lr = cfg.lr * min(1.0, (step + 1) / max(1, cfg.warmup_steps))
        opt.lr = lr
        rng = batch_rng(cfg.seed, step, bad_steps)
        src, tgt, ids = editor_batch(cfg, editor, rng)
        loss = flow_loss(editor, src, tgt, ids, rng, cfg.t_sampling)
        loss_val, norm_val, updated = guarded_step(opt, loss, cfg.grad_clip)
        if not updated:
            bad_steps = count_skipped(bad_steps, loss_val, norm_val, step, lr, ckpt, log)
            continue
        bad_steps = 0
        state["step"] = step + 1
        state["elapsed"] = elapsed0 + (time.time() - t0)
        if state["step"] % cfg.log_every == 0 or state["step"] == 1:
            hist["step"].append(state["step"])
            hist["loss"].append(loss_val)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_val:.4f}", lr=f"{lr:.1e}", min=f"{state['elapsed'] / 60:.1f}")
        if cfg.checkpoint_every and state["step"] % cfg.checkpoint_every == 0:
            save(state)
    bar.close()
    save(state)
    editor.save(out / EDITOR_NAME, {"train_config": asdict(cfg), "steps": state["step"],
                                    "train_minutes": round(state["elapsed"] / 60, 2)})
    log(f"stopped at step {state['step']} after {state['elapsed'] / 60:.1f} min; checkpoint {ckpt}, editor "
        f"{out / EDITOR_NAME}")
    return {"editor": editor, "history": hist, "state": state}


def train_edit_lora(pairs_dir: str | Path | dict, editor: Editor, cfg: EditLoRAConfig | None = None,
                    out: str | Path | None = None, progress: bool = True,
                    log: Callable[[str], None] = print) -> dict:
    """EditLoRA (PhotoDoodle): inject LoRA / DoRA into the editor's DiT blocks (the base stays frozen) and fit it on a
    few pairs (a pairs folder, or load_pairs' dict) with the flow-matching loss; `out`: write the adapter file.
    Returns dict(editor, history, names)."""
    from tqdm.auto import tqdm

    from . import adapters

    cfg = cfg or EditLoRAConfig()
    data = pairs_dir if isinstance(pairs_dir, dict) else load_pairs(pairs_dir, editor.config.image_size)
    ids_all = editor.encode(data["captions"])  # unknown words: ValueError naming them
    N = len(data["captions"])
    names = adapters.inject(editor.dit.blocks, targets=tuple(cfg.targets), kind=cfg.adapter, rank=cfg.rank,
                            alpha=float(cfg.alpha if cfg.alpha is not None else cfg.rank), seed=cfg.seed)
    opt = kernels.AdamW(adapters.trainable_parameters(editor.dit.blocks), cfg.lr)
    hist = {"step": [], "loss": []}
    bar = tqdm(total=cfg.steps, disable=not progress, desc="edit-lora", mininterval=5)
    step, bad_steps, t0 = 0, 0, time.time()
    while step < cfg.steps:
        rng = batch_rng(cfg.seed, step, bad_steps)
        idx = rng.integers(0, N, cfg.batch_size)
        loss = flow_loss(editor, data["sources"][idx], data["targets"][idx], ids_all[idx], rng, cfg.t_sampling)
        loss_val, norm_val, updated = guarded_step(opt, loss, cfg.grad_clip)
        if not updated:
            bad_steps = count_skipped(bad_steps, loss_val, norm_val, step, cfg.lr, None, log)
            continue
        bad_steps = 0
        step += 1
        hist["step"].append(step)
        hist["loss"].append(loss_val)
        bar.update(1)
        bar.set_postfix(loss=f"{loss_val:.4f}")
    bar.close()
    if out is not None:
        adapters.save_adapter(editor.dit.blocks, out, extra={"captions": sorted(set(data["captions"])), "pairs": N,
                                                             "config": asdict(cfg),
                                                             "minutes": round((time.time() - t0) / 60, 2)})
    return {"editor": editor, "history": hist, "names": names}


# ------------------------------------------------------------------------------------------------------- sampling
def edit(editor: Editor, source_images: np.ndarray, captions: Sequence[str] | str, steps: int = 20,
         sampler: str = "euler", guidance_scale: float = 1.0, shift: float = 1.0, seed: int = 0,
         callback: Callable | None = None) -> np.ndarray:
    """Edit float [N, 3, H, W] sources in [-1, 1] by instructions: integrate the flow ODE of the target from noise
    (t = 1) to t = 0 with Euler or Heun (gdlib.flow) over flow_timesteps(steps, shift); guidance_scale > 1 is CFG on
    the instruction, v = v("") + w (v(c) - v("")). Returns float32 [N, 3, H, W] clipped to [-1, 1]."""
    from .imageio import image_batch

    src, captions = image_batch(source_images, captions, "edit")
    samplers = {"euler": flow.sample_euler_flow, "heun": flow.sample_heun_flow}
    if sampler not in samplers:
        raise ValueError(f"edit: sampler must be one of {list(samplers)}, got {sampler!r}")
    ids = editor.encode(captions)
    cfg_on = guidance_scale != 1.0
    if cfg_on:
        ids = np.concatenate([editor.encode([""] * len(src)), ids])
    src_v = jt.array(np.concatenate([src, src]) if cfg_on else src)
    ids_v = jt.array(ids)
    n = len(src)
    # no eval()/train() switch: the DiT has no dropout or batch statistics, and Jittor's eval()/train() would restart
    # the gradients of base weights that an injected adapter froze

    def velocity(x, t):
        with jt.no_grad():
            xin = jt.array(np.concatenate([x, x]) if cfg_on else x)
            v = editor.dit(xin, jt.array(np.full(len(xin), t, np.float32)), src_v, ids_v).numpy()
        if cfg_on:
            v = v[:n] + guidance_scale * (v[n:] - v[:n])
        return v

    x = np.random.default_rng([int(seed), 5150]).standard_normal(src.shape).astype(np.float32)
    out = samplers[sampler](velocity, x, flow.flow_timesteps(steps, shift), callback)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


# -------------------------------------------------------------------------------------------------------- metrics
def background_error(outputs: np.ndarray, sources: np.ndarray, masks: np.ndarray) -> dict:
    """Background preservation outside the edit masks, images in [-1, 1] measured on [0, 1]: dict(mae, psnr (dB),
    per_image_mae); NaN for an image whose mask covers everything (e.g. a restyle)."""
    o = (np.asarray(outputs, np.float64) + 1) / 2
    s = (np.asarray(sources, np.float64) + 1) / 2
    keep = ~np.asarray(masks, bool)[:, None]                                 # [N, 1, H, W]
    keep = np.broadcast_to(keep, o.shape)
    cnt = keep.sum((1, 2, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        mae = np.where(cnt > 0, (np.abs(o - s) * keep).sum((1, 2, 3)) / cnt, np.nan)
        mse_all = ((o - s) ** 2 * keep).sum() / max(1, keep.sum())
        psnr = float(10 * np.log10(1.0 / mse_all)) if keep.sum() and mse_all > 0 else float("inf")
    return {"mae": float(np.nanmean(mae)) if np.isfinite(mae).any() else float("nan"), "psnr": psnr,
            "per_image_mae": mae}


def edit_scores(outputs: np.ndarray, sources: np.ndarray, masks: np.ndarray | None, target_styles: Sequence[str],
                target_objects: Sequence[str], evaluators=None) -> dict:
    """Edit success by the shipped evaluators (gdlib.models.evaluators): style accuracy (the output's predicted style
    is the target style) and content accuracy (its predicted object is the target object), plus background_error
    when masks are given."""
    if evaluators is None:
        from .models.evaluators import load_evaluators
        evaluators = load_evaluators()
    ev = evaluators
    ps = ev.predict_style(outputs)
    pc = ev.predict_content(outputs)
    style_ok = [ev.styles[int(i)] == s for i, s in zip(ps, target_styles)]
    content_ok = [ev.objects[int(i)] == o for i, o in zip(pc, target_objects)]
    res = {"style_accuracy": float(np.mean(style_ok)), "content_accuracy": float(np.mean(content_ok)),
           "n": len(style_ok)}
    if masks is not None:
        bg = background_error(outputs, sources, masks)
        res.update(background_mae=bg["mae"], background_psnr=bg["psnr"])
    return res



# ------------------------------------------------------------------------------------------------------ evaluation
def heldout_pairs(kind: str, n: int, seed: int = 2024, styles: Sequence[str] | None = None,
                  objects: Sequence[str] | None = None, size: int = toyworld.DEFAULT_SIZE) -> list[dict]:
    """n random pairs of `kind` drawn from a seed stream pretraining never uses (its batches come from batch_rng)."""
    rng = np.random.default_rng([int(seed), 777, EDIT_KINDS.index(kind)])
    return [random_pair(rng, [kind], list(styles or toyworld.KNOWN_STYLES), list(objects or toyworld.OBJECTS), size)
            for _ in range(int(n))]


def psnr_to_target(outputs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-image PSNR (dB) of outputs against the exact targets, both in [-1, 1], measured on [0, 1]."""
    mse = (((np.asarray(outputs, np.float64) - np.asarray(targets, np.float64)) / 2) ** 2).mean((1, 2, 3))
    return 10 * np.log10(1.0 / np.maximum(mse, 1e-10))


def score_pairs(outputs: np.ndarray, pairs: Sequence[dict], evaluators=None) -> dict:
    """Per-pair outcomes of edits against ToyWorld's exact pairs: style_ok (the output shows the target style),
    content_ok (the target object), psnr (to the exact target) and background_mae (outside the mask; NaN where the
    mask covers everything)."""
    if evaluators is None:
        from .models.evaluators import load_evaluators
        evaluators = load_evaluators()
    b = stack_pairs(pairs)
    ps, pc = evaluators.predict_style(outputs), evaluators.predict_content(outputs)
    return {"style_ok": np.array([evaluators.styles[int(i)] == p["target_style"] for i, p in zip(ps, pairs)], float),
            "content_ok": np.array([evaluators.objects[int(i)] == p["target_object"] for i, p in zip(pc, pairs)],
                                   float),
            "psnr": psnr_to_target(outputs, b["targets"]),
            "background_mae": background_error(outputs, b["sources"], b["masks"])["per_image_mae"]}


def evaluate_editor(editor: Editor, n: int = 60, seed: int = 2024, steps: int = 20, sampler: str = "euler",
                    guidance_scale: float = 1.0, evaluators=None) -> dict:
    """The pretrained editor on n held-out pairs of each kind (known styles, unseen seeds): per kind the mean style
    and content accuracy, PSNR to the exact target, background PSNR outside the mask (swaps), and the same for
    'copy the source' as the floor."""
    res = {}
    for kind in EDIT_KINDS:
        pairs = heldout_pairs(kind, n, seed, size=editor.config.image_size)
        b = stack_pairs(pairs)
        out = edit(editor, b["sources"], b["captions"], steps=steps, sampler=sampler, guidance_scale=guidance_scale,
                   seed=seed)
        row = {}
        for name, imgs in (("editor", out), ("copy_source", b["sources"])):
            s = score_pairs(imgs, pairs, evaluators)
            row[name] = {"style_accuracy": float(s["style_ok"].mean()),
                         "content_accuracy": float(s["content_ok"].mean()),
                         "psnr_to_target": float(s["psnr"].mean())}
            if kind == "swap" and name == "editor":  # the copy keeps the background exactly (infinite PSNR)
                row[name]["background_psnr"] = background_error(imgs, b["sources"], b["masks"])["psnr"]
        res[kind] = row
    return {"n_per_kind": int(n), "seed": int(seed), "steps": steps, "sampler": sampler,
            "guidance_scale": guidance_scale, "kinds": res}
