"""Word-level tokenizer over ToyWorld's vocabulary (with reserved slots for new words) and a small
transformer text encoder whose per-token outputs are the UNet's cross-attention context."""
from __future__ import annotations

import re
import unicodedata
import warnings
from typing import Sequence

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()
from jittor import nn  # noqa: E402

from ..kernels import bias_gelu, group_norm, multihead_attention  # noqa: E402
from .config import TextConfig  # noqa: E402

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = [PAD, UNK, BOS, EOS]
_RESERVED = "<reserved_{}>"
_WORD = re.compile(r"[a-z0-9_]+|[^\sa-z0-9_]")


class UnknownWordsWarning(UserWarning):
    """A prompt contained words the tokenizer does not know; they were mapped to <unk>."""


class Tokenizer:
    """Lower-cases, splits on spaces and punctuation, maps words to ids; <bos> w1 .. wn <eos> <pad>..."""

    def __init__(self, config: TextConfig):
        words = [w for w in config.vocab if w not in SPECIALS]
        if len(set(words)) != len(words):
            raise ValueError("Tokenizer: the vocabulary has duplicate words")
        self.config = config
        self.words: list[str] = SPECIALS + words + [_RESERVED.format(i) for i in range(config.num_reserved)]
        self.ids: dict[str, int] = {w: i for i, w in enumerate(self.words)}

    @property
    def vocab_size(self) -> int:
        """Rows of the embedding table (specials + words + reserved slots)."""
        return len(self.words)

    def free_slots(self) -> int:
        """How many reserved slots are still unused."""
        return sum(w.startswith("<reserved_") for w in self.words)

    def add_tokens(self, new_words: Sequence[str]) -> list[int]:
        """Give each new word (e.g. "sks", "style_07") a reserved slot; return their ids (existing words keep theirs)."""
        out = []
        for w in new_words:
            w = str(w).lower()
            if not re.fullmatch(r"[a-z0-9_]+", w):
                raise ValueError(f"add_tokens: {w!r} is not a single ASCII word (letters, digits, underscore)")
            if w in self.ids:
                out.append(self.ids[w])
                continue
            slot = next((i for i, x in enumerate(self.words) if x.startswith("<reserved_")), None)
            if slot is None:
                raise ValueError(f"add_tokens: no reserved slot left for {w!r} "
                                 f"(the model was built with num_reserved={self.config.num_reserved})")
            del self.ids[self.words[slot]]
            self.words[slot] = w
            self.ids[w] = slot
            out.append(slot)
        return out

    def split(self, prompt: str) -> list[str]:
        """Normalize (NFKD, accents dropped, lower case) and split a prompt into words."""
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a str, got {type(prompt).__name__}")
        text = unicodedata.normalize("NFKD", prompt).encode("ascii", "ignore").decode("ascii").lower()
        bad = sorted({ch for ch in prompt if ord(ch) > 127 and not unicodedata.combining(ch)
                      and not unicodedata.normalize("NFKD", ch).encode("ascii", "ignore")})
        words = [w for w in _WORD.findall(text) if w not in {",", ".", "!", "?", ";", ":"}]
        if bad:
            words.append("".join(bad))  # non-ASCII characters that have no ASCII form: reported as unknown
        return words

    def unknown_words(self, prompt: str) -> list[str]:
        """Words of the prompt that would map to <unk>."""
        return [w for w in self.split(prompt) if w not in self.ids or w.startswith("<")]

    def encode(self, prompts: str | Sequence[str], strict: bool = False) -> np.ndarray:
        """Token ids int32 [N, max_length]; unknown words -> <unk> with a warning (strict=True: ValueError)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        L = self.config.max_length
        out = np.full((len(prompts), L), self.ids[PAD], np.int32)
        for n, p in enumerate(prompts):
            words = self.split(p)
            unknown = [w for w in words if w not in self.ids or w.startswith("<")]
            if unknown:
                msg = (f"prompt {p!r}: unknown words {unknown} were mapped to {UNK}. Known words: "
                       f"{sorted(w for w in self.ids if not w.startswith('<'))}. "
                       "Add new words with tokenizer.add_tokens([...]).")
                if strict:
                    raise ValueError(msg)
                warnings.warn(msg, UnknownWordsWarning, stacklevel=2)
            ids = [self.ids[BOS]] + [self.ids.get(w, self.ids[UNK]) if not w.startswith("<") else self.ids[UNK]
                                     for w in words] + [self.ids[EOS]]
            if len(ids) > L:
                msg = f"prompt {p!r} has {len(words)} words; only the first {L - 2} fit (max_length={L})"
                if strict:
                    raise ValueError(msg)
                warnings.warn(msg, UserWarning, stacklevel=2)
                ids = ids[:L - 1] + [self.ids[EOS]]
            out[n, :len(ids)] = ids
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Token ids back to the normalized prompt (specials dropped)."""
        return " ".join(self.words[int(i)] for i in ids if self.words[int(i)] not in SPECIALS)


class LayerNorm(nn.Module):
    """LayerNorm over the last axis, computed as GroupNorm with one group on [rows, C] (gdlib.kernels)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        self.weight = jt.ones(dim)
        self.bias = jt.zeros(dim)
        self.eps = eps

    def execute(self, x: "jt.Var") -> "jt.Var":
        shape = x.shape
        y = group_norm(x.reshape(-1, shape[-1]), 1, self.weight, self.bias, self.eps)
        return y.reshape(shape)


class Attention(nn.Module):
    """Multi-head attention with diffusers' names: to_q, to_k, to_v, to_out.0 (Vaswani et al. 2017, Eq. 1)."""

    def __init__(self, query_dim: int, heads: int, context_dim: int | None = None):
        if query_dim % heads:
            raise ValueError(f"Attention: dim {query_dim} is not divisible by {heads} heads")
        kv_dim = context_dim or query_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, query_dim, bias=False)
        self.to_k = nn.Linear(kv_dim, query_dim, bias=False)
        self.to_v = nn.Linear(kv_dim, query_dim, bias=False)
        self.to_out = nn.Sequential(nn.Linear(query_dim, query_dim))

    def execute(self, x: "jt.Var", context: "jt.Var | None" = None) -> "jt.Var":
        ctx = x if context is None else context
        # heads stay side by side in [B, N, heads*d]: the kernel reads them in place (no transposed copies)
        o = multihead_attention(self.to_q(x), self.to_k(ctx), self.to_v(ctx), self.heads)
        return self.to_out[0](o)


def feed_forward(ff: nn.Sequential, x: "jt.Var") -> "jt.Var":
    """ff = Sequential(Linear, GELU, Linear) applied to x, the first bias folded into the fused GELU kernel."""
    first = ff[0]
    if type(first) is nn.Linear and first.bias is not None and type(ff[1]) is nn.GELU:
        return ff[2](bias_gelu(nn.matmul_transpose(x, first.weight), first.bias))
    return ff(x)  # an adapter replaced a layer: run the modules as they are


class EncoderLayer(nn.Module):
    """Pre-LN transformer layer: x + SelfAttn(LN x), then x + MLP(LN x)."""

    def __init__(self, width: int, heads: int):
        self.norm1 = LayerNorm(width)
        self.attn = Attention(width, heads)
        self.norm2 = LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def execute(self, x: "jt.Var") -> "jt.Var":
        x = x + self.attn(self.norm1(x))
        return x + feed_forward(self.mlp, self.norm2(x))


class TextEncoder(nn.Module):
    """Token + position embeddings -> transformer layers -> final LN: context [B, L, width]."""

    def __init__(self, config: TextConfig, vocab_size: int):
        self.config = config
        self.token_embedding = nn.Embedding(vocab_size, config.width)
        self.token_embedding.weight = jt.randn(vocab_size, config.width) * 0.02
        self.position_embedding = jt.randn(config.max_length, config.width) * 0.01
        self.layers = nn.ModuleList([EncoderLayer(config.width, config.heads) for _ in range(config.layers)])
        self.final_norm = LayerNorm(config.width)

    def execute(self, ids: "jt.Var | np.ndarray") -> "jt.Var":
        if isinstance(ids, np.ndarray):
            ids = jt.array(ids.astype(np.int32))
        if ids.ndim != 2 or ids.shape[1] != self.config.max_length:
            raise ValueError(f"TextEncoder: expected token ids [B, {self.config.max_length}], got {tuple(ids.shape)}")
        x = self.token_embedding(ids) + self.position_embedding.unsqueeze(0)
        for layer in self.layers:
            x = layer(x)
        return self.final_norm(x)

