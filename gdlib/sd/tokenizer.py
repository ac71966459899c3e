"""The CLIP tokenizer of Stable Diffusion folders, from the folder's own files (no network, no transformers).

A diffusers folder stores it in `tokenizer/`: `vocab.json` (token -> id), `merges.txt` (BPE merges, by rank),
`special_tokens_map.json` / `tokenizer_config.json` (pad token, max length). The algorithm is CLIP's (Radford et al.
2021, `simple_tokenizer.py`), as transformers' CLIPTokenizer runs it:
  1. normalise: NFC, whitespace runs -> one space, strip, lower case;
  2. pre-tokenise with CLIP's pattern: the special tokens, the contractions 's 't 're 've 'm 'll 'd, runs of letters,
     single digits, runs of other non-space characters;
  3. map each piece's UTF-8 bytes to printable characters (GPT-2's byte encoder), mark the end of the word with
     "</w>", and apply the BPE merges lowest rank first;
  4. ids: <|startoftext|> + tokens + <|endoftext|>, truncated to max_length (77) and padded with the pad token
     (SD 1.x: <|endoftext|>; SD 2.x's OpenCLIP tokenizer: "!").
Special tokens inside a prompt follow transformers (>= 5, the tokenizers backend) rather than OpenAI's CLIP: before
step 1 the raw text is split on the added special tokens (BOS, EOS, unk, pad and any additional ones; leftmost, longest
first; case-sensitive unless the folder marks a token `normalized`), each match becomes that token's id, and only the
text between matches is normalised and BPE-encoded. So with SD 2.x's pad token "!" every "!" in a prompt is id 0 (the
pad/"!" id), not "!</w>" as OpenCLIP's own tokenizer gives (diffusers issue #4153: diffusers' SD 2.x / XL pipelines
have always fed the text encoder these ids). A "<|ENDOFTEXT|>" in other case is not a match: after lower-casing it
is BPE-encoded as the three byte-level pieces "<|", "endoftext", "|>" (transformers' ByteLevel pre-tokeniser split).
"""
from __future__ import annotations

import json
import unicodedata
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import numpy as np

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def _kind(ch: str) -> str:
    cat = unicodedata.category(ch)
    if ch.isspace():
        return "space"
    if cat.startswith("L"):
        return "letter"
    if cat.startswith("N"):
        return "number"
    return "other"


def pre_tokenize(text: str) -> list[str]:
    """CLIP's pattern <|startoftext|>|<|endoftext|>|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\s\\p{L}\\p{N}]+,
    applied left to right on normalised text."""
    out, i, n = [], 0, len(text)
    while i < n:
        for special in (BOS, EOS):
            if text.startswith(special, i):
                out.append(special)
                i += len(special)
                break
        else:
            hit = next((c for c in CONTRACTIONS if text.startswith(c, i)), None)
            if hit is not None:
                out.append(hit)
                i += len(hit)
                continue
            k = _kind(text[i])
            if k == "space":
                i += 1
            elif k == "number":
                out.append(text[i])
                i += 1
            else:
                j = i + 1
                while j < n and _kind(text[j]) == k and not (k == "other" and (text.startswith(BOS, j) or text.startswith(EOS, j))):
                    j += 1
                out.append(text[i:j])
                i = j
    return out


def normalize(text: str) -> str:
    """NFC, whitespace runs to single spaces, stripped, lower case."""
    return " ".join(unicodedata.normalize("NFC", text).split()).lower()


def special_tokens_of(cfg: dict) -> list[tuple[str, bool]]:
    """(content, normalized) of the special tokens a tokenizer_config.json / special_tokens_map.json /
    tokenizer.json names: bos/eos/unk/pad/additional_special_tokens, added_tokens_decoder, added_tokens."""
    def entry(t):
        if isinstance(t, dict):
            return (t.get("content"), bool(t.get("normalized", False)))
        return (t, False) if isinstance(t, str) else None
    found = [entry(cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")]
    extra = cfg.get("extra_special_tokens") or []
    extra = list(extra.values()) if isinstance(extra, dict) else list(extra)
    found += [entry(t) for t in list(cfg.get("additional_special_tokens") or []) + extra]
    found += [entry(t) for t in (cfg.get("added_tokens_decoder") or {}).values() if isinstance(t, dict) and t.get("special")]
    found += [entry(t) for t in cfg.get("added_tokens") or [] if isinstance(t, dict) and t.get("special")]
    return [f for f in found if f and f[0]]


def _split_on(text: str, tokens: Sequence[str]) -> list[tuple[str, bool]]:
    """Split text on the first (leftmost, then longest) occurrences of `tokens` (sorted longest first)."""
    out, i, start = [], 0, 0
    while tokens and i < len(text):
        hit = next((t for t in tokens if text.startswith(t, i)), None)
        if hit is None:
            i += 1
            continue
        if i > start:
            out.append((text[start:i], False))
        out.append((hit, True))
        i = start = i + len(hit)
    if start < len(text):
        out.append((text[start:], False))
    return out


class CLIPTokenizer:
    """CLIP byte-level BPE from a diffusers `tokenizer/` folder (or explicit vocab / merges paths)."""

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]], pad_token: str = EOS,
                 max_length: int = 77, special_tokens: Sequence[str | tuple[str, bool]] = ()):
        """special_tokens: the added tokens to split out of a prompt, as content or (content, normalized), in the
        order a config declares them (bos, eos, unk, pad, additional; a later one wins). BOS, EOS and the pad token
        always are special; undeclared, they match the raw text (normalized=False, transformers' default)."""
        self.encoder = dict(vocab)
        self.decoder = {v: k for k, v in self.encoder.items()}
        self.ranks = {tuple(m): i for i, m in enumerate(merges)}
        for tok in (BOS, EOS, pad_token):
            if tok not in self.encoder:
                raise ValueError(f"CLIPTokenizer: the vocabulary has no {tok!r}")
        self.pad_token, self.max_length = pad_token, int(max_length)
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self._cache: dict[str, list[str]] = {}
        specials: dict[str, bool] = {BOS: False, EOS: False}
        for tok in special_tokens:  # a later declaration of the same token wins, as in transformers
            content, normalized = (tok, False) if isinstance(tok, str) else (str(tok[0]), bool(tok[1]))
            if content and content in self.encoder:
                specials[content] = normalized
        specials.setdefault(pad_token, False)
        self.special_tokens = specials  # content -> matched on normalised text (else on the raw text)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "CLIPTokenizer":
        """Read vocab.json, merges.txt and the pad token / max length from a tokenizer folder (or its parent)."""
        d = Path(folder)
        if (d / "tokenizer").is_dir():
            d = d / "tokenizer"
        missing = [f for f in ("vocab.json", "merges.txt") if not (d / f).is_file()]
        if missing:
            raise FileNotFoundError(f"{d} is not a CLIP tokenizer folder: {missing} missing")
        vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
        lines = (d / "merges.txt").read_text(encoding="utf-8").split("\n")
        merges = [tuple(ln.split()) for ln in lines if ln and not ln.startswith("#version") and len(ln.split()) == 2]
        pad, max_length, specials = EOS, 77, []
        for name in ("special_tokens_map.json", "tokenizer_config.json"):
            if (d / name).is_file():
                cfg = json.loads((d / name).read_text(encoding="utf-8"))
                p = cfg.get("pad_token")
                pad = (p.get("content") if isinstance(p, dict) else p) or pad
                ml = cfg.get("model_max_length")
                if isinstance(ml, int) and 0 < ml < 10 ** 6:      # transformers writes 1e30 for "no limit"
                    max_length = ml
                specials += special_tokens_of(cfg)
        return cls(vocab, merges, pad, max_length, specials)

    def split_special(self, text: str) -> list[tuple[str, bool]]:
        """[(piece, is_special)]: the raw text split on the non-normalised special tokens, then each remaining
        piece normalised and split on the normalised ones (transformers' AddedVocabulary, leftmost-longest)."""
        raw = sorted((t for t, norm in self.special_tokens.items() if not norm), key=len, reverse=True)
        normed = sorted((normalize(t) for t, norm in self.special_tokens.items() if norm), key=len, reverse=True)
        out = []
        for piece, special in _split_on(text, raw):
            if special:
                out.append((piece, True))
                continue
            for p, s in _split_on(normalize(piece), normed):
                out.append((self._normalized_special(p) if s else p, s))
        return out

    def _normalized_special(self, normed: str) -> str:
        return next(t for t, norm in self.special_tokens.items() if norm and normalize(t) == normed)

    def bpe(self, piece: str) -> list[str]:
        """The BPE tokens of one pre-token (already byte-encoded)."""
        if piece in self._cache:
            return self._cache[piece]
        word = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[k], word[k + 1]) for k in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, k = [], 0
            while k < len(word):
                if k < len(word) - 1 and (word[k], word[k + 1]) == best:
                    merged.append(word[k] + word[k + 1])
                    k += 2
                else:
                    merged.append(word[k])
                    k += 1
            word = merged
        self._cache[piece] = word
        return word

    def tokenize(self, text: str) -> list[str]:
        """BPE tokens of a text (no <|startoftext|> / <|endoftext|> added); special tokens in it stay whole."""
        out = []
        for segment, special in self.split_special(text):
            if special:
                out.append(segment)
                continue
            for piece in pre_tokenize(normalize(segment)):
                # transformers' ByteLevel pre-tokeniser re-splits CLIP's pieces with GPT-2's pattern: this only
                # changes the one mixed piece, a BOS/EOS text that was not matched as a special token above
                for sub in (["<|", piece[2:-2], "|>"] if piece in (BOS, EOS) else [piece]):
                    out += self.bpe("".join(self.byte_encoder[b] for b in sub.encode("utf-8")))
        return out

    def encode(self, texts: str | Sequence[str], max_length: int | None = None) -> np.ndarray:
        """Token ids int64 [N, max_length]: BOS, tokens (unknown ones cannot occur: bytes are in the vocab), EOS,
        truncated (EOS kept last) and padded with the pad token, as a diffusers pipeline feeds the text encoder."""
        if isinstance(texts, str):
            texts = [texts]
        L = int(max_length or self.max_length)
        out = np.full((len(texts), L), self.encoder[self.pad_token], np.int64)
        for i, t in enumerate(texts):
            ids = [self.encoder[BOS]] + [self.encoder[tok] for tok in self.tokenize(t)][:L - 2] + [self.encoder[EOS]]
            out[i, :len(ids)] = ids
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Ids back to text (special and pad tokens dropped, "</w>" to spaces)."""
        specials = {self.encoder[BOS], self.encoder[EOS], self.encoder[self.pad_token]}
        text = "".join(self.decoder[int(i)] for i in ids if int(i) not in specials).replace("</w>", " ")
        raw = bytearray(32 if c == " " else self.byte_decoder[c] for c in text)
        return " ".join(raw.decode("utf-8", errors="replace").split())
