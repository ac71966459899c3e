"""The CLIP text transformer of Stable Diffusion folders (Radford et al. 2021) in Jittor, transformers' names.

`text_encoder/` holds a transformers CLIPTextModel: token + position embeddings, N pre-LayerNorm layers
  h += out_proj(causal multi-head self-attention(layer_norm1 h));  h += fc2(act(fc1(layer_norm2 h))),
and final_layer_norm. act is quick_gelu x sigmoid(1.702 x) (OpenAI CLIP, SD 1.x) or gelu (OpenCLIP, SD 2.x).
The attention is causal: token i sees tokens 0..i (so the padding after <|endoftext|> never reaches earlier tokens).
Parameter names are those of transformers >= 5 (embeddings..., encoder.layers.N..., final_layer_norm);
the loader strips the `text_model.` prefix older saves have.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()
from jittor import nn  # noqa: E402

from .unet import LayerNorm  # noqa: E402

ACTIVATIONS = ("quick_gelu", "gelu")


@dataclass
class CLIPTextConfig:
    """The fields of transformers' CLIPTextConfig the text tower uses (transformers' defaults)."""
    vocab_size: int = 49408
    hidden_size: int = 512
    intermediate_size: int = 2048
    num_hidden_layers: int = 12
    num_attention_heads: int = 8
    max_position_embeddings: int = 77
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eos_token_id: int = 2
    bos_token_id: int = 1
    pad_token_id: int = 1

    def __post_init__(self) -> None:
        if self.hidden_act not in ACTIVATIONS:
            raise ValueError(f"hidden_act={self.hidden_act!r} is not supported (supported: {', '.join(ACTIVATIONS)})")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} does not split into {self.num_attention_heads} heads")

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


def quick_gelu(x: "jt.Var") -> "jt.Var":
    """x sigmoid(1.702 x), OpenAI CLIP's GELU approximation (Hendrycks & Gimpel 2016, Sec. 2)."""
    return x * jt.sigmoid(1.702 * x)


class Embedding(nn.Module):
    """A lookup table `weight` [num, dim]; rows by id."""

    def __init__(self, num: int, dim: int):
        self.weight = jt.randn(num, dim) * 0.02

    def execute(self, ids: "jt.Var") -> "jt.Var":
        return self.weight[ids.reshape(-1)].reshape(*ids.shape, self.weight.shape[1])


class CLIPTextEmbeddings(nn.Module):
    """token_embedding(ids) + position_embedding(0..L-1)."""

    def __init__(self, cfg: CLIPTextConfig):
        self.token_embedding = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.position_embedding = Embedding(cfg.max_position_embeddings, cfg.hidden_size)

    def execute(self, ids: "jt.Var") -> "jt.Var":
        L = ids.shape[1]
        if L > self.position_embedding.weight.shape[0]:
            raise ValueError(f"text encoder: {L} tokens exceed max_position_embeddings="
                             f"{self.position_embedding.weight.shape[0]}")
        pos = self.position_embedding.weight[:L]
        return self.token_embedding(ids) + pos.reshape(1, L, -1)


class CLIPAttention(nn.Module):
    """Multi-head self-attention with q/k/v/out projections (biases) and an additive causal mask."""

    def __init__(self, cfg: CLIPTextConfig):
        d = cfg.hidden_size
        self.heads, self.head_dim = cfg.num_attention_heads, d // cfg.num_attention_heads
        self.q_proj, self.k_proj = nn.Linear(d, d), nn.Linear(d, d)
        self.v_proj, self.out_proj = nn.Linear(d, d), nn.Linear(d, d)

    def execute(self, x: "jt.Var", mask: "jt.Var") -> "jt.Var":
        B, L, C = x.shape

        def split(t):
            return t.reshape(B, L, self.heads, self.head_dim).transpose(0, 2, 1, 3)
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        logits = jt.matmul(q, k.transpose(0, 1, 3, 2)) * (1.0 / math.sqrt(self.head_dim)) + mask
        p = jt.exp(logits - logits.max(dim=-1, keepdims=True))
        p = p / p.sum(dim=-1, keepdims=True)
        out = jt.matmul(p, v).transpose(0, 2, 1, 3).reshape(B, L, C)
        return self.out_proj(out)


class CLIPMLP(nn.Module):
    """fc2(act(fc1 x))."""

    def __init__(self, cfg: CLIPTextConfig):
        self.act = quick_gelu if cfg.hidden_act == "quick_gelu" else nn.gelu
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.fc2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size)

    def execute(self, x: "jt.Var") -> "jt.Var":
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Module):
    """h += self_attn(layer_norm1 h); h += mlp(layer_norm2 h)."""

    def __init__(self, cfg: CLIPTextConfig):
        self.self_attn = CLIPAttention(cfg)
        self.layer_norm1 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)
        self.mlp = CLIPMLP(cfg)
        self.layer_norm2 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)

    def execute(self, h: "jt.Var", mask: "jt.Var") -> "jt.Var":
        h = h + self.self_attn(self.layer_norm1(h), mask)
        return h + self.mlp(self.layer_norm2(h))


class CLIPEncoder(nn.Module):
    def __init__(self, cfg: CLIPTextConfig):
        self.layers = nn.ModuleList([CLIPEncoderLayer(cfg) for _ in range(cfg.num_hidden_layers)])


@dataclass
class CLIPTextOutput:
    """last_hidden_state = final_layer_norm(last layer) [B, L, d]; pooler_output [B, d] at the <|endoftext|> token;
    hidden_states = (embeddings, layer 1, ..., layer N), pre-final-norm, as transformers' output_hidden_states."""
    last_hidden_state: "jt.Var"
    pooler_output: "jt.Var"
    hidden_states: tuple

    def penultimate(self, final_layer_norm: "LayerNorm", clip_skip: int = 1) -> "jt.Var":
        """final_layer_norm(hidden_states[-(clip_skip + 1)]), diffusers' clip_skip (1 = the penultimate layer)."""
        return final_layer_norm(self.hidden_states[-(clip_skip + 1)])


def causal_mask(L: int) -> "jt.Var":
    """[1, 1, L, L] additive mask: 0 on and below the diagonal, float32 min above it."""
    m = np.triu(np.full((L, L), np.finfo(np.float32).min, dtype=np.float32), k=1)
    return jt.array(m.reshape(1, 1, L, L))


class CLIPTextModel(nn.Module):
    """ids int [B, L] -> CLIPTextOutput (what a diffusers SD pipeline feeds the UNet is `last_hidden_state`)."""

    def __init__(self, config: CLIPTextConfig):
        self.config = config
        self.embeddings = CLIPTextEmbeddings(config)
        self.encoder = CLIPEncoder(config)
        self.final_layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps)

    def execute(self, input_ids: Any) -> CLIPTextOutput:
        ids_np = input_ids.numpy() if isinstance(input_ids, jt.Var) else np.asarray(input_ids)
        if ids_np.ndim != 2:
            raise ValueError(f"text encoder: input_ids must be [B, L], got shape {ids_np.shape}")
        if ids_np.size and (ids_np.min() < 0 or ids_np.max() >= self.config.vocab_size):
            raise ValueError(f"text encoder: token ids must lie in [0, {self.config.vocab_size}), got "
                             f"[{ids_np.min()}, {ids_np.max()}]")
        ids = jt.array(ids_np.astype(np.int32))
        h = self.embeddings(ids)
        mask = causal_mask(ids_np.shape[1])
        states = [h]
        for layer in self.encoder.layers:
            h = layer(h, mask)
            states.append(h)
        last = self.final_layer_norm(h)
        # transformers: eos_token_id == 2 (old configs) -> argmax id; else the first position holding eos_token_id
        eos = ids_np.argmax(-1) if self.config.eos_token_id == 2 else (ids_np == self.config.eos_token_id).argmax(-1)
        pooled = last[jt.array(np.arange(ids_np.shape[0], dtype=np.int32)), jt.array(eos.astype(np.int32))]
        return CLIPTextOutput(last, pooled, tuple(states))
