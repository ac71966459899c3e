"""A small diffusion transformer (DiT, Peebles & Xie 2023) as an instruction-driven image EDITOR trained with flow
matching (gdlib.flow), PhotoDoodle / OmniEditor in miniature.

- Patchify: the 32 px image becomes (32/p)^2 tokens of 3 p^2 values, embedded by one Linear (`x_embedder`), plus fixed
  2-D sinusoidal position encodings (MAE / DiT's get_2d_sincos_pos_embed).
- adaLN-Zero blocks: from the conditioning vector c (timestep + pooled instruction) each block regresses shift, scale
  and gate of its two sub-layers; the gates start at zero, so every block starts as the identity (DiT, Sec. 3.2).
- MM-DiT's joint attention (SD3, Esser et al. 2024): the instruction's tokens join the image tokens in ONE attention
  sequence [text; source; target] (single-stream, one set of weights for all modalities, as FLUX's single blocks).
  Attention projections are named to_q / to_k / to_v / to_out (gdlib.models.text.Attention), so gdlib.adapters
  injects LoRA / DoRA there.
- PhotoDoodle's conditioning (Huang et al. 2025, after OminiControl): the SOURCE image's patch tokens enter noise-free,
  embedded by the same x_embedder, with the SAME (cloned) position encodings as the noisy TARGET tokens, plus one
  learned "source" role vector; the network outputs the velocity for the target tokens only.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()
from jittor import nn  # noqa: E402

from ..config import DiTConfig  # noqa: E402
from .config import TextConfig  # noqa: E402
from .text import Attention, LayerNorm, TextEncoder, Tokenizer, feed_forward  # noqa: E402
from .unet import count_parameters, timestep_embedding  # noqa: E402

FORMAT = "gdlib-dit-editor-1"


def sincos_pos_embed_2d(width: int, grid: int) -> np.ndarray:
    """Fixed 2-D sinusoidal position encodings [grid^2, width] (half the channels encode the row, half the column;
    MAE's get_2d_sincos_pos_embed, used by DiT). Tokens are in row-major order."""
    if width % 4:
        raise ValueError(f"sincos_pos_embed_2d: width {width} must be divisible by 4")
    quarter = width // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    ys, xs = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")

    def emb(pos):
        a = pos.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(a), np.cos(a)], 1)
    return np.concatenate([emb(ys), emb(xs)], 1).astype(np.float32)


def patchify(x: "jt.Var", p: int) -> "jt.Var":
    """[B, C, H, W] -> [B, (H/p)(W/p), C p^2] (row-major tokens)."""
    B, C, H, W = x.shape
    if H % p or W % p:
        raise ValueError(f"patchify: {H}x{W} image is not divisible by patch size {p}")
    h, w = H // p, W // p
    return x.reshape(B, C, h, p, w, p).permute(0, 2, 4, 1, 3, 5).reshape(B, h * w, C * p * p)


def unpatchify(tokens: "jt.Var", p: int, channels: int = 3) -> "jt.Var":
    """Inverse of patchify: [B, g^2, C p^2] -> [B, C, g p, g p]."""
    B, N, _ = tokens.shape
    g = int(round(math.sqrt(N)))
    return tokens.reshape(B, g, g, channels, p, p).permute(0, 3, 1, 4, 2, 5).reshape(B, channels, g * p, g * p)


def _zero(layer: nn.Linear) -> nn.Linear:
    layer.weight = jt.zeros_like(layer.weight)
    if layer.bias is not None:
        layer.bias = jt.zeros_like(layer.bias)
    return layer


class DiTBlock(nn.Module):
    """x + g1 Attn(LN(x) (1 + s1) + b1); x + g2 MLP(LN(x) (1 + s2) + b2); (b, s, g) regressed from c, zero-init."""

    def __init__(self, width: int, heads: int, mlp_ratio: int = 4):
        self.norm1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))
        self.adaLN_modulation = _zero(nn.Linear(width, 6 * width))

    def execute(self, x: "jt.Var", c: "jt.Var") -> "jt.Var":
        sh1, sc1, g1, sh2, sc2, g2 = jt.chunk(self.adaLN_modulation(nn.silu(c)).unsqueeze(1), 6, dim=2)
        x = x + g1 * self.attn(self.norm1(x) * (1 + sc1) + sh1)
        return x + g2 * feed_forward(self.mlp, self.norm2(x) * (1 + sc2) + sh2)


class DiT(nn.Module):
    """velocity = dit(x_t, t, source, ids): the flow velocity [B, 3, H, W] of the noisy target x_t at times t in [0, 1]
    (t = 1: noise), given the clean source image [B, 3, H, W] and the instruction's token ids [B, max_length]."""

    def __init__(self, config: DiTConfig, vocab_size: int):
        c = config
        if c.image_size % c.patch:
            raise ValueError(f"DiTConfig: image_size {c.image_size} is not divisible by patch {c.patch}")
        if c.width % c.heads or c.width % 4:
            raise ValueError(f"DiTConfig: width {c.width} must be divisible by heads {c.heads} and by 4")
        self.config = config
        self.grid = c.image_size // c.patch
        patch_dim = 3 * c.patch * c.patch
        self.text_encoder = TextEncoder(self.text_config(config), vocab_size)
        self.x_embedder = nn.Linear(patch_dim, c.width)        # shared by target and source tokens (PhotoDoodle)
        self.source_embedding = jt.randn(c.width) * 0.02       # role vector added to every source token
        self.context_embedder = nn.Linear(c.text_width, c.width)
        self.pooled_embedder = nn.Linear(c.text_width, c.width)
        self.t_embedder = nn.Sequential(nn.Linear(c.width, c.width), nn.SiLU(), nn.Linear(c.width, c.width))
        self.blocks = nn.ModuleList([DiTBlock(c.width, c.heads, c.mlp_ratio) for _ in range(c.depth)])
        self.final_norm = LayerNorm(c.width)
        self.final_modulation = _zero(nn.Linear(c.width, 2 * c.width))
        self.proj_out = _zero(nn.Linear(c.width, patch_dim))
        self._pos = sincos_pos_embed_2d(c.width, self.grid)   # numpy: a constant, not a parameter

    @staticmethod
    def text_config(config: DiTConfig, vocab: Sequence[str] = ()) -> TextConfig:
        heads = 4 if config.text_width % 4 == 0 else 1
        return TextConfig(vocab=list(vocab), width=config.text_width, layers=config.text_layers, heads=heads,
                          max_length=config.max_length)

    def embed(self, x_t: "jt.Var", t: "jt.Var", source: "jt.Var", ids) -> dict:
        """The joint sequence's parts before the blocks: dict(text, source, target tokens [B, n, width], pos_source,
        pos_target [N, width] (the same encodings), c [B, width]). The source tokens are a function of the source
        image only: the noisy target never enters them."""
        p = self.config.patch
        if tuple(x_t.shape) != tuple(source.shape) or x_t.shape[1] != 3 or x_t.shape[2] != self.config.image_size:
            raise ValueError(f"DiT: x_t {tuple(x_t.shape)} and source {tuple(source.shape)} must both be "
                             f"[B, 3, {self.config.image_size}, {self.config.image_size}]")
        pos_target = jt.array(self._pos)
        pos_source = pos_target.clone()  # PhotoDoodle: the condition tokens reuse the target's position encodings
        target = self.x_embedder(patchify(x_t, p)) + pos_target.unsqueeze(0)
        src = self.x_embedder(patchify(source, p)) + pos_source.unsqueeze(0) + self.source_embedding.reshape(1, 1, -1)
        ctx = self.text_encoder(ids)
        text = self.context_embedder(ctx)
        t = t if isinstance(t, jt.Var) else jt.array(np.asarray(t, np.float32).reshape(-1))
        if t.ndim == 0 or t.shape[0] == 1 and x_t.shape[0] > 1:
            t = t.reshape(1).broadcast((x_t.shape[0],))
        c = self.t_embedder(timestep_embedding(t * 1000.0, self.config.width)) + self.pooled_embedder(ctx.mean(dim=1))
        return {"text": text, "source": src, "target": target, "pos_source": pos_source, "pos_target": pos_target,
                "c": c}

    def execute(self, x_t: "jt.Var", t, source: "jt.Var", ids) -> "jt.Var":
        e = self.embed(x_t, t, source, ids)
        n = e["target"].shape[1]
        h = jt.concat([e["text"], e["source"], e["target"]], dim=1)
        for block in self.blocks:
            h = block(h, e["c"])
        h = h[:, -n:]  # the velocity is read from the target tokens only
        shift, scale = jt.chunk(self.final_modulation(nn.silu(e["c"])).unsqueeze(1), 2, dim=2)
        out = self.proj_out(self.final_norm(h) * (1 + scale) + shift)
        return unpatchify(out, self.config.patch)


class Editor:
    """The instruction tokenizer + the DiT (its text encoder inside): one object, one safetensors file."""

    def __init__(self, config: DiTConfig, vocab: Sequence[str]):
        self.config = config
        self.vocab = list(vocab)
        self.tokenizer = Tokenizer(DiT.text_config(config, self.vocab))
        self.dit = DiT(config, self.tokenizer.vocab_size)

    def encode(self, captions: Sequence[str]) -> np.ndarray:
        """Instruction ids [N, max_length]; an unknown word is a ValueError naming the known words."""
        return self.tokenizer.encode(list(captions), strict=True)

    def parameters(self) -> list:
        return self.dit.parameters()

    def num_parameters(self) -> int:
        return count_parameters(self.dit)

    def state(self) -> dict[str, np.ndarray]:
        from ..checkpoint import module_state
        return module_state(self.dit)

    def load_state(self, tensors: dict[str, np.ndarray]) -> None:
        from ..checkpoint import load_module_state
        load_module_state(self.dit, tensors)

    def metadata(self) -> dict[str, str]:
        from dataclasses import asdict
        return {"format": FORMAT, "dit_config": json.dumps(asdict(self.config), sort_keys=True),
                "vocab": json.dumps(self.vocab)}

    def save(self, path: str | Path, extra: dict | None = None) -> Path:
        from ..checkpoint import save_tensors
        meta = self.metadata()
        if extra:
            meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in extra.items()})
        return save_tensors(path, self.state(), meta)

    @classmethod
    def load(cls, path: str | Path) -> "Editor":
        """An editor file (Editor.save, or the `model.` tensors of a train-editor checkpoint)."""
        from ..checkpoint import load_tensors

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"editor file {path} does not exist (train one with `gdlib train-editor`)")
        tensors, meta = load_tensors(path)
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not a gdlib DiT editor (metadata format={meta.get('format')!r}, expected "
                             f"{FORMAT!r})")
        try:
            config = DiTConfig(**json.loads(meta["dit_config"]))
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path}: unreadable editor config ({err}); written by another gdlib version?") from None
        ed = cls(config, json.loads(meta["vocab"]))
        if any(k.startswith("model.") for k in tensors):  # a resumable train-editor checkpoint
            tensors = {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}
        ed.load_state(tensors)
        return ed
