"""Style descriptors Psi for RB-Modulation: image batch [N, 3, H, W] in [-1, 1] -> unit vectors [N, D].

Two descriptors, neither of them the evaluator that scores results (gdlib.models.evaluators):
- `GramDescriptor`: Gram matrices G = F F^T / (H W) of the layers of a FIXED RANDOM conv net (Gatys et al. 2016,
  Eq. 3). Random conv features are enough for Gram statistics to capture texture and colour (Ustyuzhaninov et
  al. 2017); they are never trained on ToyWorld labels, so they share nothing with the evaluators, and they cost
  three small convolutions per call (Psi runs num_iter x forward + backward per guided step).
- `ContrastiveStyleDescriptor`: a small CNN whose per-channel mean/std statistics go through an MLP to an
  L2-normalised embedding, trained with a supervised contrastive loss (Khosla et al. 2020, Eq. 2) on the KNOWN
  ToyWorld styles only: positives = same style with another object and seed, negatives = other styles. It is the
  toy counterpart of CSD (Somepalli et al. 2024). Its held-out-style retrieval and content probe are in its card.
Every descriptor is a callable Psi(x: jt.Var) -> jt.Var that is differentiable in x.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import runtime
from .checkpoint import write_text_atomic

jt = runtime.setup_jittor()
from jittor import nn  # noqa: E402

DEFAULT_DIR = Path(__file__).resolve().parent / "data" / "style"  # inside the package: wheels carry it
CSD_FILE = "csd.safetensors"
DESCRIPTORS = ("gram", "csd")


def _as_images(x) -> "jt.Var":
    """Library images (numpy or jt.Var, [N, 3, H, W] or [3, H, W]) -> jt.Var float32 [N, 3, H, W]."""
    if not isinstance(x, jt.Var):
        x = jt.array(np.asarray(x, dtype=np.float32))
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"style descriptor: expected images [N, 3, H, W] in [-1, 1], got shape {tuple(x.shape)}")
    if x.shape[2] < 8 or x.shape[3] < 8:
        raise ValueError(f"style descriptor: images must be at least 8 x 8 pixels, got {tuple(x.shape[2:])}")
    return x.float32()


def gram_matrix(features: "jt.Var") -> "jt.Var":
    """G_ij = sum_p F_ip F_jp / (H W) for features [N, C, H, W] -> [N, C, C] (Gatys et al. 2016, Eq. 3)."""
    if features.ndim != 4:
        raise ValueError(f"gram_matrix: expected features [N, C, H, W], got shape {tuple(features.shape)}")
    N, C, H, W = features.shape
    f = features.reshape(N, C, H * W)
    return jt.matmul(f, f.transpose(0, 2, 1)) / float(H * W)


def _unit(v: "jt.Var", eps: float = 1e-8) -> "jt.Var":
    """Rows divided by their L2 norm."""
    return v / jt.sqrt((v * v).sum(dim=1, keepdims=True) + eps)


def _he_conv(c_in: int, c_out: int, rng: np.random.Generator) -> nn.Conv2d:
    """A 3x3 conv with He-normal weights from rng and zero bias (Ustyuzhaninov et al. 2017 use random filters)."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1)
    w = rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2.0 / (9 * c_in))
    conv.weight = jt.array(w.astype(np.float32))
    conv.bias = jt.zeros(c_out)
    return conv


class RandomConvFeatures(nn.Module):
    """Fixed random features: 3x3 conv + ReLU blocks (3 -> 16 -> 32 -> 32), 2x average pooling between blocks."""

    def __init__(self, widths: Sequence[int] = (16, 32, 32), seed: int = 0):
        rng = np.random.default_rng([int(seed), 5417])
        chans = [3] + list(widths)
        self.convs = nn.ModuleList([_he_conv(a, b, rng) for a, b in zip(chans[:-1], chans[1:])])
        for p in self.parameters():
            p.stop_grad()  # fixed: never trained

    def execute(self, x: "jt.Var") -> list:
        maps = []
        for i, conv in enumerate(self.convs):
            if i > 0:
                x = nn.avg_pool2d(x, 2, 2)
            x = nn.relu(conv(x))
            maps.append(x)
        return maps


class GramDescriptor:
    """Psi(x) = concat_l unit(vec G_l(x)) / sqrt(L): cos(Psi a, Psi b) is the mean per-layer Gram cosine."""

    name = "gram"

    def __init__(self, seed: int = 0, widths: Sequence[int] = (16, 32, 32)):
        self.seed, self.widths = int(seed), tuple(widths)
        self.features = RandomConvFeatures(widths, seed)

    def __call__(self, x) -> "jt.Var":
        maps = self.features(_as_images(x))
        parts = [_unit(gram_matrix(m).reshape(m.shape[0], -1)) for m in maps]
        return jt.concat(parts, dim=1) / float(np.sqrt(len(parts)))


# ----- learned contrastive style descriptor -------------------------------------------------------------
class ContrastiveStyleDescriptor(nn.Module):
    """conv blocks -> per-layer channel mean and std (style statistics, Huang & Belongie 2017) -> MLP -> unit embedding."""

    name = "csd"

    def __init__(self, width: int = 24, dim: int = 16):
        self.width, self.dim = int(width), int(dim)
        w = self.width
        chans = [(3, w), (w, 2 * w), (2 * w, 2 * w)]
        self.convs = nn.ModuleList([nn.Conv2d(a, b, 3, padding=1) for a, b in chans])
        stat_dim = 2 * sum(b for _, b in chans)
        self.mlp = nn.Sequential(nn.Linear(stat_dim, 128), nn.ReLU(), nn.Linear(128, self.dim))

    def statistics(self, x: "jt.Var") -> "jt.Var":
        """Channel means and standard deviations of every block, [N, 2 (w + 2w + 2w)]."""
        stats = []
        for i, conv in enumerate(self.convs):
            if i > 0:
                x = nn.avg_pool2d(x, 2, 2)
            x = nn.relu(conv(x))
            mu = x.mean(dims=(2, 3))
            var = ((x - mu.reshape(mu.shape[0], mu.shape[1], 1, 1)) ** 2).mean(dims=(2, 3))
            stats += [mu, jt.sqrt(var + 1e-5)]
        return jt.concat(stats, dim=1)

    def execute(self, x) -> "jt.Var":
        return _unit(self.mlp(self.statistics(_as_images(x))))

    def __call__(self, x):  # nn.Module's __call__ is execute; keep numpy inputs working
        return self.execute(x)


def supcon_loss(emb: "jt.Var", labels: np.ndarray, temperature: float = 0.1) -> "jt.Var":
    """Supervised contrastive loss (Khosla et al. 2020, Eq. 2): -mean_i mean_{p in P(i)} log softmax_{a != i}(z_i.z_a / T)_p."""
    labels = np.asarray(labels).reshape(-1)
    n = len(labels)
    if emb.shape[0] != n:
        raise ValueError(f"supcon_loss: {emb.shape[0]} embeddings but {n} labels")
    pos = (labels[:, None] == labels[None, :]) & ~np.eye(n, dtype=bool)
    if not pos.any(axis=1).all():
        raise ValueError("supcon_loss: every sample needs at least one positive (another sample of its style)")
    logits = jt.matmul(emb, emb.transpose(1, 0)) / float(temperature)
    logits = logits - jt.array(np.eye(n, dtype=np.float32) * 1e9)  # exclude a = i from the denominator
    logits = logits - logits.max(dim=1, keepdims=True).detach()
    log_prob = logits - jt.log(jt.exp(logits).sum(dim=1, keepdims=True))
    w = pos / pos.sum(axis=1, keepdims=True)
    return -(log_prob * jt.array(w.astype(np.float32))).sum(dim=1).mean()


def _augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Horizontal flips and mild Gaussian noise (generated images are noisier than renders)."""
    flip = rng.random(len(x)) < 0.5
    x = x.copy()
    x[flip] = x[flip][..., ::-1]
    sigma = rng.uniform(0.0, 0.08, (len(x), 1, 1, 1)).astype(np.float32)
    return np.clip(x + sigma * rng.standard_normal(x.shape).astype(np.float32), -1, 1).astype(np.float32)


def style_residual(emb: "jt.Var", style_labels: np.ndarray) -> "jt.Var":
    """r_i = z_i - mean_{style(j) = style(i)} z_j: what is left of each embedding once its style's mean is removed."""
    sl = np.asarray(style_labels).reshape(-1)
    same_style = (sl[:, None] == sl[None, :]).astype(np.float32)
    return emb - jt.matmul(jt.array(same_style / same_style.sum(1, keepdims=True)), emb)


def content_invariance_loss(emb: "jt.Var", style_labels: np.ndarray, object_labels: np.ndarray) -> "jt.Var":
    """Linear content leakage: with r_i = z_i - mean_{style(i)} z, the mean over objects o of ||mean_{obj = o} r||^2.
    It is zero when, once the style is removed, no object has its own mean direction (what a linear probe uses)."""
    ol = np.asarray(object_labels).reshape(-1)
    n = len(ol)
    r = style_residual(emb, style_labels)
    objs = np.unique(ol)
    onehot = (ol[None, :] == objs[:, None]).astype(np.float32)
    centroids = jt.matmul(jt.array(onehot / onehot.sum(1, keepdims=True)), r)
    return (centroids * centroids).sum(dim=1).mean() if n else emb.sum() * 0


def train_csd(styles: Sequence[str] | None = None, steps: int = 300, batch_styles: int = 8, per_style: int = 8,
              lr: float = 2e-3, temperature: float = 0.1, n_per_pair: int = 3, seed: int = 0, width: int = 24,
              dim: int = 16, lam_invariance: float = 5.0, lam_confusion: float = 0.0, max_seconds: float | None = None,
              log: Callable[[str], None] = print) -> tuple:
    """Train the contrastive style descriptor on ToyWorld `styles` (default: the known styles); returns (net, card).
    lam_confusion > 0 adds an adversary (MLP: style residual -> object) trained alongside, and a confusion term
    that pushes its prediction toward uniform (domain confusion, Tzeng et al. 2015, Eq. 4)."""
    from . import toyworld

    styles = list(toyworld.KNOWN_STYLES if styles is None else styles)
    if len(styles) < 2:
        raise ValueError("train_csd needs at least two styles (negatives are other styles)")
    if batch_styles > len(styles):
        raise ValueError(f"batch_styles={batch_styles} > number of training styles {len(styles)}")
    t0 = time.time()
    ds = toyworld.make_dataset(styles, None, n_per_pair, seed=seed)
    images, sty, obj = ds["images"], ds["style_idx"], ds["object_idx"]
    n_obj = len(toyworld.OBJECTS)
    by_style = {s: np.nonzero(sty == s)[0] for s in np.unique(sty)}
    rng = np.random.default_rng([seed, 911])
    jt.set_global_seed(seed)
    net = ContrastiveStyleDescriptor(width, dim)
    opt = jt.optim.Adam(net.parameters(), lr=lr)
    adversary = nn.Sequential(nn.Linear(dim, 64), nn.ReLU(), nn.Linear(64, n_obj)) if lam_confusion > 0 else None
    opt_adv = jt.optim.Adam(adversary.parameters(), lr=lr) if adversary is not None else None
    losses, adv_acc, step = [], [], 0
    for step in range(1, steps + 1):
        chosen = rng.choice(sorted(by_style), size=batch_styles, replace=False)
        objs = rng.choice(n_obj, size=max(per_style // 2, 2), replace=False)  # shared objects: style vs content
        idx = np.concatenate([[int(j) for j in by_style[s][
            (np.repeat(objs, 2)[:per_style] * n_per_pair + rng.integers(0, n_per_pair, per_style))]] for s in chosen])
        emb = net(jt.array(_augment(images[idx], rng)))
        loss = supcon_loss(emb, sty[idx], temperature)
        if lam_invariance > 0:
            loss = loss + lam_invariance * content_invariance_loss(emb, sty[idx], obj[idx])
        if adversary is not None:
            r = style_residual(emb, sty[idx])
            loss = loss - lam_confusion * nn.log_softmax(adversary(r), dim=1).mean()  # CE to the uniform
        opt.step(loss)
        if adversary is not None:
            logits = adversary(r.detach())
            opt_adv.step(nn.cross_entropy_loss(logits, jt.array(obj[idx].astype(np.int32))))
            adv_acc.append(float((logits.numpy().argmax(1) == obj[idx]).mean()))
        losses.append(float(loss.item()))
        if step % 50 == 0:
            log(f"train_csd step {step}/{steps} loss {np.mean(losses[-50:]):.4f} ({time.time() - t0:.0f} s)")
        if max_seconds is not None and time.time() - t0 > max_seconds:
            log(f"train_csd: stopping at step {step} (max_seconds={max_seconds})")
            break
    card = {"descriptor": "csd", "train_styles": styles, "steps": step, "batch": batch_styles * per_style,
            "lr": lr, "temperature": temperature, "n_per_pair": n_per_pair, "seed": seed, "width": width,
            "dim": dim, "lam_invariance": lam_invariance, "lam_confusion": lam_confusion,
            "adversary_train_accuracy_last50": float(np.mean(adv_acc[-50:])) if adv_acc else None,
            "data_version": toyworld.DATA_VERSION,
            "final_loss": float(np.mean(losses[-20:])),
            "train_seconds": round(time.time() - t0, 1)}
    return net, card


# ----- evaluation on held-out styles --------------------------------------------------------------------
def embed(psi: Callable, images, batch: int = 128) -> np.ndarray:
    """Psi of many images as numpy [N, D] (no gradients)."""
    x = np.asarray(images, dtype=np.float32) if not isinstance(images, jt.Var) else images.numpy()
    out = []
    with jt.no_grad():
        for i in range(0, len(x), batch):
            out.append(psi(jt.array(x[i:i + batch])).numpy())
    return np.concatenate(out).astype(np.float32)


def retrieval_accuracy(emb: np.ndarray, style: np.ndarray, obj: np.ndarray | None = None,
                       queries: np.ndarray | None = None) -> float:
    """Leave-one-out 1-nearest-neighbour (cosine) style accuracy over `queries` (a mask, default all); with obj,
    neighbours must show another object."""
    e = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-8)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    if obj is not None:
        sim[np.asarray(obj)[:, None] == np.asarray(obj)[None, :]] = -np.inf
    hit = np.asarray(style)[sim.argmax(1)] == np.asarray(style)
    return float(hit[np.ones(len(hit), bool) if queries is None else np.asarray(queries, bool)].mean())


def linear_probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                          ridge: float = 1e-2) -> float:
    """Test accuracy of a ridge-regression linear classifier on one-hot labels (closed form) fit on train."""
    mu, sd = train_x.mean(0), train_x.std(0) + 1e-6
    a = np.concatenate([(train_x - mu) / sd, np.ones((len(train_x), 1))], 1)
    b = np.concatenate([(test_x - mu) / sd, np.ones((len(test_x), 1))], 1)
    classes = np.unique(train_y)
    y = (np.asarray(train_y)[:, None] == classes[None, :]).astype(np.float64)
    w = np.linalg.solve(a.T @ a + ridge * len(a) * np.eye(a.shape[1]), a.T @ y)
    return float((classes[(b @ w).argmax(1)] == np.asarray(test_y)).mean())


def color_statistics(images) -> np.ndarray:
    """Per-channel mean and standard deviation of the pixels, [N, 6]: the plainest style statistics (a reference
    for the content probe, not a Psi)."""
    x = np.asarray(images.numpy() if isinstance(images, jt.Var) else images, dtype=np.float64)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"color_statistics: expected images [N, 3, H, W], got shape {tuple(x.shape)}")
    return np.concatenate([x.mean(axis=(2, 3)), x.std(axis=(2, 3))], axis=1).astype(np.float32)


def evaluate_descriptor(psi: Callable, styles: Sequence[str] | None = None, distractors: Sequence[str] | None = None,
                        n_per_pair: int = 4, seed: int = 12345) -> dict:
    """On (held-out) styles: 1-NN style retrieval among them (any / other-object neighbours) and with the
    distractor styles' images (default: the known styles) in the gallery, and a linear content probe (object from
    Psi on the held-out images, fit on half of the instances, tested on the other half) with chance levels, and
    the same probe on per-channel colour mean/std alone (how much the object shows in the plainest colour statistics)."""
    from . import toyworld

    styles = list(toyworld.HELDOUT_STYLES if styles is None else styles)
    distractors = [s for s in (toyworld.KNOWN_STYLES if distractors is None else distractors) if s not in styles]
    if n_per_pair < 2:
        raise ValueError("evaluate_descriptor needs n_per_pair >= 2 (probe train and test instances)")
    ds = toyworld.make_dataset(styles + distractors, None, n_per_pair, seed=seed)
    emb_all = embed(psi, ds["images"])
    sty_all, obj_all = ds["style_idx"], ds["object_idx"]
    held = np.isin(sty_all, [toyworld.STYLES.index(s) for s in styles])
    emb, sty, obj = emb_all[held], sty_all[held], obj_all[held]
    colors = color_statistics(ds["images"][held])
    instance = np.arange(len(sty)) % n_per_pair
    train = instance < n_per_pair // 2
    return {"styles": styles, "distractor_styles": distractors, "n_images": int(len(sty)), "seed": seed,
            "style_retrieval_1nn": retrieval_accuracy(emb, sty),
            "style_retrieval_1nn_other_object": retrieval_accuracy(emb, sty, obj),
            "style_chance": 1.0 / len(styles),
            "style_retrieval_1nn_with_distractors": retrieval_accuracy(emb_all, sty_all, obj_all, held),
            "style_chance_with_distractors": 1.0 / (len(styles) + len(distractors)),
            "content_probe_accuracy": linear_probe_accuracy(emb[train], obj[train], emb[~train], obj[~train]),
            "content_probe_color_statistics": linear_probe_accuracy(colors[train], obj[train], colors[~train],
                                                                    obj[~train]),
            "content_chance": 1.0 / len(np.unique(obj))}


# ----- files and selection ------------------------------------------------------------------------------
def save_csd(net: ContrastiveStyleDescriptor, card: dict, out_dir: str | Path = DEFAULT_DIR) -> Path:
    """Weights as safetensors + card.json + README.md (model card) in out_dir; returns the weights path."""
    from .checkpoint import module_state, save_tensors

    out = Path(out_dir)
    path = save_tensors(out / CSD_FILE, module_state(net), {"format": "gdlib.style.csd/1",
                                                            "card": json.dumps(card)})
    write_text_atomic(out / "card.json", json.dumps(card, indent=2) + "\n")
    write_text_atomic(out / "README.md", card_markdown(card))
    return path


def card_markdown(card: dict) -> str:
    """The model card as Markdown."""
    ev = card.get("heldout_eval", {})
    lines = ["# gdlib learned contrastive style descriptor (toy CSD)", "",
             f"A small CNN (channel mean/std statistics of 3 conv blocks -> MLP -> unit {card.get('dim', 64)}-d embedding) trained with a",
             "supervised contrastive loss on the KNOWN ToyWorld styles only (positives: same style, other object/seed;",
             "negatives: other styles), plus a content-invariance loss (weight lam_invariance): once each style's",
             "mean is removed, objects must not keep their own mean direction (what a linear content probe would use).",
             "It is a guidance descriptor Psi for RB-Modulation, never an evaluator.", "",
             f"- command: `{card.get('command', '')}`",
             f"- ToyWorld data version: {card.get('data_version')}; train styles: {', '.join(card.get('train_styles', []))}",
             f"- steps: {card.get('steps')}, batch {card.get('batch')}, lr {card.get('lr')}, "
             f"temperature {card.get('temperature')}, lam_invariance {card.get('lam_invariance', 0)}, final loss {card.get('final_loss', float('nan')):.4f}, "
             f"{card.get('train_seconds')} s on a shared 2-core CPU", ""]
    for name, ev in card.get("heldout_eval", {}).items():
        lines += [f"## Held-out styles ({', '.join(ev['styles'])}), {ev['n_images']} fresh images, descriptor `{name}`",
                  f"- 1-NN style retrieval: {ev['style_retrieval_1nn']:.3f} (neighbour must show another object: "
                  f"{ev['style_retrieval_1nn_other_object']:.3f}); chance {ev['style_chance']:.3f}",
                  f"- 1-NN style retrieval with the {len(ev['distractor_styles'])} known styles' images as distractors "
                  f"(other object): {ev['style_retrieval_1nn_with_distractors']:.3f}; chance "
                  f"{ev['style_chance_with_distractors']:.3f}",
                  f"- linear content probe (object from the embedding): {ev['content_probe_accuracy']:.3f}; "
                  f"chance {ev['content_chance']:.3f}" + (
                      f"; the same probe on per-channel colour mean/std alone: {ev['content_probe_color_statistics']:.3f}"
                      if "content_probe_color_statistics" in ev else ""), ""]
    return "\n".join(lines) + "\n"


def load_csd(path: str | Path | None = None) -> ContrastiveStyleDescriptor:
    """Load the shipped (or a given) contrastive style descriptor."""
    from .checkpoint import load_module_state, load_tensors

    path = Path(path) if path is not None else DEFAULT_DIR / CSD_FILE
    if not path.exists():
        raise FileNotFoundError(f"no style descriptor at {path}; train one with `gdlib train-csd --out {path.parent}`")
    tensors, meta = load_tensors(path)
    if meta.get("format") != "gdlib.style.csd/1":
        raise ValueError(f"{path} is not a gdlib contrastive style descriptor (metadata format {meta.get('format')!r})")
    card = json.loads(meta.get("card", "{}"))
    net = ContrastiveStyleDescriptor(card.get("width", 24), card.get("dim", 64))
    load_module_state(net, tensors)
    net.eval()
    for p in net.parameters():
        p.stop_grad()
    net.card = card
    return net


def get_descriptor(name: str = "gram", **kw: Any) -> Callable:
    """A style descriptor Psi by name: 'gram' (random-conv Gram matrices) or 'csd' (the shipped learned one)."""
    if name == "gram":
        return GramDescriptor(**kw)
    if name == "csd":
        return load_csd(**kw)
    raise ValueError(f"unknown style descriptor {name!r}; choose one of {', '.join(DESCRIPTORS)}")


def main_train_csd(argv: list[str]) -> int:
    """`gdlib train-csd`: train the contrastive style descriptor on known styles, evaluate on held-out, save."""
    import sys

    from .commands import PARSERS

    p = PARSERS["train-csd"]()
    a = p.parse_args(argv)
    if a.dim < 2:
        p.error(f"--dim must be at least 2, got {a.dim}")
    net, card = train_csd(steps=a.steps, seed=a.seed, max_seconds=a.max_seconds, lam_invariance=a.lam_invariance,
                          lam_confusion=a.lam_confusion, dim=a.dim)
    net.eval()
    card["command"] = "gdlib train-csd " + " ".join(argv) if argv else "gdlib train-csd"
    card["heldout_eval"] = {"csd": evaluate_descriptor(net), "gram (random conv, for comparison)":
                            evaluate_descriptor(GramDescriptor())}
    path = save_csd(net, card, a.out)
    print(json.dumps(card["heldout_eval"], indent=1))
    print(f"wrote {path}", file=sys.stderr)
    return 0
