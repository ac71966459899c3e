"""The toy text-to-image model as one object (tokenizer + text encoder + UNet + noise schedule), its
safetensors round trip, and text -> image generation with classifier-free guidance
(Ho & Salimans 2022, Eq. 6: eps_cfg = eps(x, "") + w (eps(x, c) - eps(x, ""))) through gdlib.sampling."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from . import runtime

jt = runtime.setup_jittor()

from .config import DEFAULT_BASE, DEFAULT_GUIDANCE  # noqa: E402,F401  (re-exported)
from .checkpoint import load_module_state, load_tensors, module_state, save_tensors, write_atomic  # noqa: E402
from .models.config import ModelConfig, TextConfig, UNetConfig  # noqa: E402
from .models.text import TextEncoder, Tokenizer  # noqa: E402
from .models.unet import UNet, count_parameters  # noqa: E402
from .schedules import NoiseSchedule  # noqa: E402

class TextToImage:
    """Tokenizer, text encoder, UNet and the training noise schedule of the toy model."""

    def __init__(self, config: ModelConfig, words: Sequence[str] | None = None):
        if config.unet.context_dim != config.text.width:
            raise ValueError(f"unet.context_dim ({config.unet.context_dim}) must equal text.width ({config.text.width})")
        self.config = config
        self.tokenizer = Tokenizer(config.text)
        if words is not None:  # restore added tokens (their slots) from a checkpoint
            if len(words) != self.tokenizer.vocab_size:
                raise ValueError("saved tokenizer words do not match the config's vocabulary size")
            self.tokenizer.words = list(words)
            self.tokenizer.ids = {w: i for i, w in enumerate(words)}
        self.text_encoder = TextEncoder(config.text, self.tokenizer.vocab_size)
        self.unet = UNet(config.unet)
        self.schedule = NoiseSchedule(num_train_timesteps=config.num_train_timesteps,
                                      beta_schedule=config.beta_schedule, prediction_type=config.prediction_type,
                                      timestep_spacing=config.timestep_spacing, clip_sample=config.clip_sample)

    @classmethod
    def from_toyworld(cls, unet: UNetConfig | None = None, text: TextConfig | None = None, **kw: Any) -> "TextToImage":
        """A fresh model whose tokenizer knows ToyWorld's vocabulary."""
        from . import toyworld

        text = text or TextConfig()
        text.vocab = list(toyworld.vocabulary())
        unet = unet or UNetConfig(context_dim=text.width)
        return cls(ModelConfig(unet=unet, text=text, **kw))

    def modules(self) -> dict[str, Any]:
        """The trainable parts by name (prefixes in the weight file)."""
        return {"text_encoder": self.text_encoder, "unet": self.unet}

    def parameters(self) -> list:
        """All trainable parameters (text encoder, then UNet)."""
        return self.text_encoder.parameters() + self.unet.parameters()

    def num_parameters(self) -> int:
        """Trainable scalars in text encoder + UNet."""
        return count_parameters(self.text_encoder) + count_parameters(self.unet)

    def encode(self, prompts: str | Sequence[str], strict: bool = False) -> "jt.Var":
        """Prompts -> cross-attention context [N, L, D] (unknown words warn, strict=True raises)."""
        return self.text_encoder(self.tokenizer.encode(prompts, strict=strict))

    def state(self) -> dict[str, np.ndarray]:
        """All weights as numpy arrays, prefixed text_encoder. / unet."""
        out = {}
        for name, m in self.modules().items():
            out.update(module_state(m, name + "."))
        return out

    def load_state(self, tensors: dict[str, np.ndarray], strict: bool = True) -> None:
        """Load weights produced by state()."""
        for name, m in self.modules().items():
            load_module_state(m, tensors, name + ".", strict=strict)

    def metadata(self) -> dict[str, str]:
        """Config and tokenizer words as safetensors metadata strings."""
        return {"format": "gdlib.TextToImage/1", "config": self.config.to_json(),
                "tokenizer_words": json.dumps(self.tokenizer.words)}

    def save(self, path: str | os.PathLike, extra_metadata: dict[str, Any] | None = None) -> Path:
        """Weights + config (+ extra metadata) to one .safetensors file, atomically."""
        return save_tensors(path, self.state(), {**self.metadata(), **(extra_metadata or {})})

    @classmethod
    def load(cls, path: str | os.PathLike = DEFAULT_BASE) -> "TextToImage":
        """Rebuild a model saved by save() (or a training checkpoint, whose 'model.' weights are used)."""
        tensors, meta = load_tensors(path)
        return cls.from_tensors(tensors, meta, str(path))

    @classmethod
    def from_tensors(cls, tensors: dict, meta: dict, where: str = "checkpoint", prefix: str = "") -> "TextToImage":
        """Build from loaded tensors + metadata (weights under `prefix`)."""
        if "config" not in meta:
            raise ValueError(f"{where} has no gdlib model config in its metadata; was it written by TextToImage.save?")
        model = cls(ModelConfig.from_json(meta["config"]), words=json.loads(meta["tokenizer_words"]))
        model.load_state({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        return model


def cfg_model(model: TextToImage, context: "jt.Var", uncond: "jt.Var", guidance_scale: float) -> Callable:
    """model(x_t, t) for the samplers: eps_u + w (eps_c - eps_u) in one batched UNet call (Ho & Salimans 2022)."""
    n = context.shape[0]
    if uncond.shape[0] == 1 and n > 1:
        uncond = uncond.broadcast((n,) + tuple(uncond.shape[1:]))
    both = jt.concat([context, uncond], dim=0).stop_grad()
    w = float(guidance_scale)

    def fn(x_t, t):
        if w == 1.0:
            return model.unet(x_t, t, context)
        out = model.unet(jt.concat([x_t, x_t], dim=0), t, both)
        cond, unc = out[:n], out[n:]
        return unc + w * (cond - unc)
    return fn


def generate(model: TextToImage, prompts: str | Sequence[str], num_inference_steps: int = 25,
             guidance_scale: float = DEFAULT_GUIDANCE, seed: int = 0, eta: float = 0.0, batch_size: int = 64,
             sampler: Callable | None = None, callback: Callable | None = None, strict: bool = False,
             **sampler_kwargs: Any) -> np.ndarray:
    """Text -> images float32 [N, 3, H, W] in [-1, 1] with CFG and DDIM (default) through gdlib.sampling."""
    from . import sampling

    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ValueError("generate: give at least one prompt")
    if guidance_scale < 0:
        raise ValueError(f"guidance_scale must be >= 0, got {guidance_scale}")
    sampler = sampler or sampling.sample_ddim
    if sampler is sampling.sample_ddim:
        sampler_kwargs.setdefault("eta", eta)
    c = model.config.unet
    rng = np.random.default_rng(seed)
    x_T = rng.standard_normal((len(prompts), c.in_channels, c.image_size, c.image_size)).astype(np.float32)
    out = []
    with jt.no_grad():
        uncond = model.encode([""])
        for i in range(0, len(prompts), batch_size):
            ctx = model.encode(list(prompts[i:i + batch_size]), strict=strict)
            fn = cfg_model(model, ctx, uncond, guidance_scale)
            x = sampler(fn, jt.array(x_T[i:i + batch_size]), model.schedule, num_inference_steps,
                        callback=callback, **sampler_kwargs)
            out.append(np.clip(np.asarray(x.numpy() if hasattr(x, "numpy") else x), -1.0, 1.0))
    return np.concatenate(out).astype(np.float32)


def measure_accuracy(model: TextToImage, styles: Sequence[str], objects: Sequence[str], n_per_pair: int = 1,
                     num_inference_steps: int = 25, guidance_scale: float = DEFAULT_GUIDANCE, seed: int = 0,
                     evaluators: Any = None, return_images: bool = False, template: str = "style") -> dict:
    """Generate n_per_pair images per style x object prompt (a toyworld.CAPTION_TEMPLATES form, by default
    "a {style} painting of a {object}") and score them with the ToyWorld evaluators: content accuracy (object) and
    style accuracy, overall and per style. A template without the style word has no style accuracy (None)."""
    from . import toyworld
    from .models.evaluators import load_evaluators

    ev = evaluators if evaluators is not None else load_evaluators()
    pairs = [(s, o) for s in styles for o in objects for _ in range(int(n_per_pair))]
    if not pairs:
        raise ValueError("measure_accuracy: give at least one style and one object")
    prompts = [toyworld.caption(s, o, template) for s, o in pairs]
    images = generate(model, prompts, num_inference_steps, guidance_scale, seed=seed)
    obj_pred = np.asarray(ev.predict_content(images))
    sty_pred = np.asarray(ev.predict_style(images))
    ev_objects, ev_styles = list(getattr(ev, "objects", toyworld.OBJECTS)), list(getattr(ev, "styles", toyworld.STYLES))
    obj_ok = np.array([ev_objects[p] == o for p, (_, o) in zip(obj_pred, pairs)])
    sty_ok = np.array([ev_styles[p] == s for p, (s, _) in zip(sty_pred, pairs)])
    has_style = toyworld.template_has_style(template)
    out = {"template": template, "prompt_form": toyworld.CAPTION_TEMPLATES[template],
           "content_accuracy": float(obj_ok.mean()), "style_accuracy": float(sty_ok.mean()) if has_style else None,
           "n_images": len(pairs), "num_inference_steps": int(num_inference_steps),
           "guidance_scale": float(guidance_scale), "seed": int(seed),
           "per_style": {s: {"content": float(obj_ok[[p[0] == s for p in pairs]].mean()),
                             "style": float(sty_ok[[p[0] == s for p in pairs]].mean()) if has_style else None}
                         for s in styles}}
    if not has_style:  # the style the model chose by itself, as a histogram over the evaluator's styles
        out["styles_drawn"] = {ev_styles[i]: int(c) for i, c in enumerate(np.bincount(sty_pred, minlength=len(ev_styles)))
                               if c}
    if return_images:
        out["images"], out["prompts"] = images, prompts
    return out


def main_sample(argv: list[str]) -> int:
    """`gdlib sample`: prompts -> PNG grid with the base model (or an SD folder), any of gdlib.sampling's samplers."""
    import functools

    from . import sampling
    from .cliutil import is_sd_folder
    from .commands import parse

    a = parse("sample", argv)
    if is_sd_folder(a.checkpoint):
        from .sd.cli import main_sample as sample_sd_folder
        return sample_sd_folder(a)
    model = TextToImage.load(a.checkpoint)
    prompts = [q for q in a.prompts for _ in range(a.n)]
    sampler = None if a.sampler == "ddim" else functools.partial(sampling.sample, a.sampler)
    images = generate(model, prompts, a.steps, DEFAULT_GUIDANCE if a.guidance is None else a.guidance, seed=a.seed,
                      sampler=sampler)
    from . import plot

    fig = plot.image_grid(images, nrow=a.n if a.n > 1 else min(len(prompts), 8),
                          titles=[q.replace(" painting of ", "\n") for q in prompts])
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    write_atomic(a.out, lambda tmp: fig.savefig(tmp, dpi=100))
    print(f"wrote {a.out} ({len(prompts)} images, {a.steps} {a.sampler} steps)")
    return 0
