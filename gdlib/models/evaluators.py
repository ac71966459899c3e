"""ToyWorld evaluators: a style-invariant content classifier and a content-invariant style classifier.

Both are small CNNs trained on every ToyWorld style (known and held out), so they can score any
generated image. They are the toy stand-ins for the challenge's CLIP (content) and DINO/LPIPS (style)
networks, and they are never the descriptor used for guidance. Images follow the library convention:
float32 [N, 3, H, W] in [-1, 1] (numpy or jt.Var); inputs of another size are resized to the
evaluators' training size.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np


from gdlib import runtime
from ..checkpoint import write_text_atomic

jt = runtime.setup_jittor()
nn = jt.nn

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "data" / "evaluators"  # inside the package: wheels carry it
CONTENT_FILE, STYLE_FILE, CARD_FILE = "content.safetensors", "style.safetensors", "card.json"


class EvalNet(nn.Module):
    """Three conv blocks (32 -> 16 -> 8 -> 4 px, max pooling), then flatten -> Linear(feat_dim) -> head."""

    def __init__(self, n_classes: int, width: int = 16, feat_dim: int = 128, size: int = 32):
        super().__init__()
        w = width
        chans = [(3, w), (w, 2 * w), (2 * w, 2 * w), (2 * w, 4 * w), (4 * w, 4 * w)]
        self.convs = nn.ModuleList([nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in chans])
        self.norms = nn.ModuleList([nn.BatchNorm2d(b) for _, b in chans])
        self.pool_after = (0, 2, 4)
        self.fc = nn.Linear(4 * w * (size // 8) ** 2, feat_dim)
        self.head = nn.Linear(feat_dim, n_classes)

    def features(self, x, return_maps: bool = False):
        """Feature vector [N, feat_dim] after ReLU (and the per-block feature maps if asked)."""
        maps = []
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = nn.relu(norm(conv(x)))
            if i in self.pool_after:
                maps.append(x)
                x = nn.max_pool2d(x, 2, 2)
        f = nn.relu(self.fc(x.reshape(x.shape[0], -1)))
        return (f, maps) if return_maps else f

    def execute(self, x):
        return self.head(self.features(x))


def _as_var(images, size: int):
    """Library images (numpy or jt.Var, [N,3,H,W] or [3,H,W] in [-1,1]) -> jt.Var [N,3,size,size]."""
    x = images if isinstance(images, jt.Var) else jt.array(np.asarray(images, dtype=np.float32))
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"expected images [N, 3, H, W] in [-1, 1], got shape {tuple(x.shape)}")
    if x.shape[2] != size or x.shape[3] != size:
        x = nn.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.float32()


@dataclass
class Evaluators:
    """The two trained networks plus the label sets and metadata they were trained with."""
    content_net: EvalNet
    style_net: EvalNet
    objects: list[str]
    styles: list[str]
    size: int
    card: dict

    def _run(self, net: EvalNet, images, fn, batch: int = 256) -> np.ndarray:
        x_all = images if isinstance(images, jt.Var) else np.asarray(images, dtype=np.float32)
        if x_all.ndim == 3:
            x_all = x_all[None] if isinstance(x_all, np.ndarray) else x_all.unsqueeze(0)
        net.eval()
        outs = []
        with jt.no_grad():
            for i in range(0, x_all.shape[0], batch):
                outs.append(fn(_as_var(x_all[i:i + batch], self.size)))
        return np.concatenate(outs, 0)

    def content_logits(self, images) -> np.ndarray:
        """Content logits [N, len(objects)]."""
        return self._run(self.content_net, images, lambda x: self.content_net(x).numpy())

    def style_logits(self, images) -> np.ndarray:
        """Style logits [N, len(styles)]."""
        return self._run(self.style_net, images, lambda x: self.style_net(x).numpy())

    def predict_content(self, images) -> np.ndarray:
        """Predicted object index (into self.objects) per image, int [N]."""
        return self.content_logits(images).argmax(1)

    def predict_style(self, images) -> np.ndarray:
        """Predicted style index (into self.styles) per image, int [N]."""
        return self.style_logits(images).argmax(1)

    def content_features(self, images) -> np.ndarray:
        """Pooled penultimate features of the content network, float [N, D] (used for the Frechet distance)."""
        return self._run(self.content_net, images, lambda x: self.content_net.features(x).numpy())

    def style_embedding(self, images) -> np.ndarray:
        """Unit-norm style embedding (pooled style-network features), float [N, D]."""
        f = self._run(self.style_net, images, lambda x: self.style_net.features(x).numpy())
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-8)

    def style_maps(self, images) -> list[np.ndarray]:
        """Per-block feature maps of the style network (for the LPIPS-like perceptual distance)."""
        def fn(x):
            return self.style_net.features(x, return_maps=True)[1]
        self.style_net.eval()
        with jt.no_grad():
            return [m.numpy() for m in fn(_as_var(images, self.size))]


def save_evaluators(ev: Evaluators, out_dir: str | Path) -> Path:
    """Write content/style weights as safetensors plus the JSON model card; return the folder."""
    from ..checkpoint import save_tensors

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for net, name in ((ev.content_net, CONTENT_FILE), (ev.style_net, STYLE_FILE)):
        save_tensors(out / name, {k: v.numpy().astype(np.float32) for k, v in net.state_dict().items()})
    card = dict(ev.card, objects=ev.objects, styles=ev.styles, size=ev.size)
    write_text_atomic(out / CARD_FILE, json.dumps(card, indent=2) + "\n")
    write_text_atomic(out / "README.md", model_card_markdown(card))
    return out


def model_card_markdown(card: dict) -> str:
    """The human-readable model card, generated from the JSON card (no number typed by hand)."""
    from gdlib import toyworld

    r = card.get("fresh_seed_eval", {})
    rows = "\n".join(f"| {s}{' (held out)' if s in toyworld.HELDOUT_STYLES else ''} | {v['content']:.3f} | "
                     f"{v['style']:.3f} |" for s, v in r.get("per_style", {}).items())
    return f"""# ToyWorld evaluators (model card)

Two small CNNs (`gdlib.models.evaluators.EvalNet`, width {card.get('width')}, feature size {card.get('feat_dim')}):
`content.safetensors` classifies the object ({len(card.get('objects', []))} classes, style-invariant) and
`style.safetensors` classifies the rendering style ({len(card.get('styles', []))} classes, content-invariant;
its pooled features are the style embedding). Both were trained on every style, known and held out.

- command: `{card.get('command', '?')}`
- ToyWorld data version: {card.get('data_version')}; training seed {card.get('train_seed')},
  {card.get('n_train_images')} images ({card.get('n_per_pair')} per style x object pair), {card.get('size')} px
- recipe: Adam lr {card.get('lr')} with cosine decay, {card.get('steps')} steps of batch {card.get('batch')}
- time: render {card.get('render_seconds')} s, train {card.get('train_seconds')} s wall on {card.get('machine', '?')}
  {('(' + card['note'] + ')') if card.get('note') else ''}

## Accuracy on a fresh seed ({r.get('seed')}, {r.get('n_images')} images never seen in training)
content accuracy **{r.get('content_accuracy', float('nan')):.4f}**, style accuracy **{r.get('style_accuracy', float('nan')):.4f}**

| style | content acc | style acc |
| --- | --- | --- |
{rows}

Limitations: the networks only know ToyWorld's objects and styles at {card.get('size')} px; on images far from
ToyWorld (real photos, noise) their softmax confidence is not calibrated.
"""


def load_evaluators(path: str | Path | None = None) -> Evaluators:
    """Load the shipped evaluators (gdlib/data/evaluators by default); warns if ToyWorld's data version moved."""
    from ..checkpoint import load_tensors

    from gdlib import toyworld

    d = Path(path) if path is not None else DEFAULT_DIR
    missing = [f for f in (CONTENT_FILE, STYLE_FILE, CARD_FILE) if not (d / f).exists()]
    if missing:
        raise FileNotFoundError(f"evaluator files {missing} not found in {d}; "
                                "train them with `gdlib train-evaluators --out DIR`")
    card = json.loads((d / CARD_FILE).read_text())
    if str(card.get("data_version")) != toyworld.DATA_VERSION:
        import warnings
        warnings.warn(f"evaluators in {d} were trained on ToyWorld data version {card.get('data_version')}, "
                      f"the library is at {toyworld.DATA_VERSION}; retrain with `gdlib train-evaluators`",
                      RuntimeWarning, stacklevel=2)
    nets = []
    for name, n_cls in ((CONTENT_FILE, len(card["objects"])), (STYLE_FILE, len(card["styles"]))):
        net = EvalNet(n_cls, width=card["width"], feat_dim=card["feat_dim"], size=int(card["size"]))
        net.load_parameters(load_tensors(d / name)[0])  # a damaged file: ValueError naming it
        net.eval()
        nets.append(net)
    return Evaluators(nets[0], nets[1], list(card["objects"]), list(card["styles"]), int(card["size"]), card)


def evaluate(ev: Evaluators, seed: int, n_per_pair: int = 8) -> dict:
    """Accuracies on a freshly rendered ToyWorld set (every style x object, n_per_pair each), overall and per style."""
    from gdlib import toyworld

    data = toyworld.make_dataset(ev.styles, ev.objects, n_per_pair, seed=seed, size=ev.size)
    obj = np.array([ev.objects.index(toyworld.OBJECTS[i]) for i in data["object_idx"]])
    sty = np.array([ev.styles.index(toyworld.STYLES[i]) for i in data["style_idx"]])
    c_ok = ev.predict_content(data["images"]) == obj
    s_ok = ev.predict_style(data["images"]) == sty
    per_style = {s: {"content": float(c_ok[sty == i].mean()), "style": float(s_ok[sty == i].mean())}
                 for i, s in enumerate(ev.styles)}
    return {"seed": seed, "n_images": int(len(obj)), "content_accuracy": float(c_ok.mean()),
            "style_accuracy": float(s_ok.mean()), "per_style": per_style}


def _augment_noise(x: np.ndarray, rng: np.random.Generator, max_sigma: float = 0.08) -> np.ndarray:
    """Add Gaussian pixel noise of a random strength per image (robustness to imperfect samples)."""
    sigma = rng.uniform(0.0, max_sigma, (len(x), 1, 1, 1)).astype(np.float32)
    return np.clip(x + sigma * rng.standard_normal(x.shape).astype(np.float32), -1.0, 1.0)


def _augment_blur(x: np.ndarray, rng: np.random.Generator, p: float = 0.3) -> np.ndarray:
    """Blur a random share p of the images with a [1, 2, 1]/4 kernel (content must survive soft samples)."""
    pick = rng.random(len(x)) < p
    if not pick.any():
        return x
    y = x.copy()
    b = np.pad(x[pick], ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    b = 0.25 * b[:, :, :-2] + 0.5 * b[:, :, 1:-1] + 0.25 * b[:, :, 2:]
    y[pick] = 0.25 * b[:, :, :, :-2] + 0.5 * b[:, :, :, 1:-1] + 0.25 * b[:, :, :, 2:]
    return y


def train_evaluators(seed: int = 0, n_per_pair: int = 24, steps: int = 400, batch: int = 64, lr: float = 2e-3,
                     width: int = 16, feat_dim: int = 128, size: int = 32, eval_seed: int = 1000,
                     eval_n_per_pair: int = 8, log_every: int = 50, log=print) -> Evaluators:
    """Train both evaluators on every ToyWorld style x object (Adam, cosine learning rate; pixel noise
    for both, blur for the content net); return them with a model card holding the recipe, timing and fresh-seed metrics."""
    import time

    from gdlib import toyworld

    if steps < 1 or batch < 1 or n_per_pair < 1:
        raise ValueError("steps, batch and n_per_pair must all be >= 1")
    jt.set_global_seed(seed)
    t0 = time.perf_counter()
    data = toyworld.make_dataset(toyworld.STYLES, toyworld.OBJECTS, n_per_pair, seed=seed, size=size)
    t_data = time.perf_counter() - t0
    x_all, y_obj, y_sty = data["images"], data["object_idx"], data["style_idx"]
    n = len(y_obj)
    nets = [EvalNet(len(toyworld.OBJECTS), width, feat_dim, size), EvalNet(len(toyworld.STYLES), width, feat_dim, size)]
    opts = [jt.optim.Adam(net.parameters(), lr=lr) for net in nets]
    rng = np.random.default_rng(seed)
    order, pos = rng.permutation(n), 0
    t1, c1 = time.perf_counter(), time.process_time()
    for step in range(steps):
        if pos + batch > n:
            order, pos = rng.permutation(n), 0
        idx = order[pos:pos + batch]
        pos += batch
        x_style = _augment_noise(x_all[idx], rng)
        x_content = _augment_noise(_augment_blur(x_all[idx], rng), rng)
        cur_lr = lr * 0.5 * (1.0 + np.cos(np.pi * step / steps))
        losses = []
        for net, opt, y, x in zip(nets, opts, (y_obj, y_sty), (x_content, x_style)):
            net.train()
            opt.lr = cur_lr
            loss = nn.cross_entropy_loss(net(jt.array(x)), jt.array(y[idx]))
            opt.step(loss)
            losses.append(loss.item())
        if log and (step % log_every == 0 or step == steps - 1):
            log(f"step {step:5d}/{steps}  loss content {losses[0]:.3f}  style {losses[1]:.3f}  "
                f"{time.perf_counter() - t1:.0f}s")
    t_train, c_train = time.perf_counter() - t1, time.process_time() - c1
    card = {"data_version": toyworld.DATA_VERSION, "train_seed": seed, "n_per_pair": n_per_pair,
            "n_train_images": n, "steps": steps, "batch": batch, "lr": lr, "width": width, "feat_dim": feat_dim,
            "render_seconds": round(t_data, 1), "train_seconds": round(t_train, 1),
            "train_cpu_seconds": round(c_train, 1)}
    ev = Evaluators(nets[0], nets[1], list(toyworld.OBJECTS), list(toyworld.STYLES), size, card)
    t2 = time.perf_counter()
    ev.card["fresh_seed_eval"] = evaluate(ev, eval_seed, eval_n_per_pair)
    ev.card["eval_seconds"] = round(time.perf_counter() - t2, 1)
    return ev


def main(argv: list[str]) -> int:
    """`gdlib train-evaluators`: train both evaluators, write safetensors + card, print fresh-seed accuracy."""
    import os
    import platform
    import shlex

    from ..commands import parse

    a = parse("train-evaluators", argv)
    ev = train_evaluators(seed=a.seed, n_per_pair=a.n_per_pair, steps=a.steps, batch=a.batch, lr=a.lr,
                          width=a.width, eval_seed=a.eval_seed)
    ev.card["command"] = " ".join(["gdlib train-evaluators"] + [shlex.quote(x) for x in argv])
    ev.card["machine"] = f"{platform.machine()}, {os.cpu_count()} logical CPUs, backend " \
                         f"{'cuda' if jt.flags.use_cuda else 'cpu'}"
    out = save_evaluators(ev, a.out)
    r = ev.card["fresh_seed_eval"]
    print(f"fresh seed {r['seed']}: content accuracy {r['content_accuracy']:.4f}, "
          f"style accuracy {r['style_accuracy']:.4f} over {r['n_images']} images")
    for s, v in r["per_style"].items():
        print(f"  {s:<11} content {v['content']:.3f}  style {v['style']:.3f}")
    print(f"wrote {out}")
    return 0
