"""gdlib.sd.tokenizer: CLIP's byte-level BPE read from a tokenizer folder, checked against transformers'
CLIPTokenizer on the same files (parity extra) and on its own invariants."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gdlib.sd import tokenizer as T
from gdlib.sd.tiny import CORPUS, learn_bpe  # the tiny vocabulary of gdlib's tiny SD folders

@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    d = tmp_path_factory.mktemp("sd") / "tokenizer"
    d.mkdir()
    vocab, merges = learn_bpe(CORPUS)
    (d / "vocab.json").write_text(json.dumps(vocab))
    (d / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in merges) + "\n")
    (d / "special_tokens_map.json").write_text(json.dumps({"pad_token": T.EOS, "bos_token": T.BOS, "eos_token": T.EOS}))
    (d / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 77}))
    return d


PROMPTS = ["a watercolor painting of a cat", "A Pixel  painting of a CASTLE!!", "don't stop: it's the cat's toy",
           "3 flowers and 12 birds", "café crème", "猫の絵", "a photo 🐱 of neon", "", "   ", "tree,tree;tree",
           "a cat " * 60]


def test_pre_tokenize_follows_clips_pattern():
    assert T.pre_tokenize("don't stop, it's 42!") == ["don", "'t", "stop", ",", "it", "'s", "4", "2", "!"]
    assert T.pre_tokenize(f"a{T.EOS}b") == ["a", T.EOS, "b"]


def test_encoding_invariants(folder):
    tok = T.CLIPTokenizer.from_folder(folder.parent)          # the pipeline folder works as well as tokenizer/
    ids = tok.encode(PROMPTS)
    assert ids.shape == (len(PROMPTS), 77) and ids.dtype == np.int64
    bos, eos = tok.encoder[T.BOS], tok.encoder[T.EOS]
    assert (ids[:, 0] == bos).all() and all(eos in row for row in ids)
    assert ids[-1, -1] == eos                                   # truncated: EOS kept last
    assert tok.decode(tok.encode("A Pixel  painting of a CASTLE!!")[0]) == "a pixel painting of a castle !!"
    assert tok.decode(tok.encode("café 猫")[0]) == "café 猫"    # bytes survive the round trip


@pytest.mark.parity
def test_same_ids_as_transformers(folder):
    transformers = pytest.importorskip("transformers")
    ref = transformers.CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token=T.EOS)
    tok = T.CLIPTokenizer.from_folder(folder)
    for p in PROMPTS:
        want = ref(p, padding="max_length", max_length=77, truncation=True).input_ids
        assert tok.encode(p)[0].tolist() == want, p


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="merges.txt"):
        (tmp_path / "vocab.json").write_text("{}")
        T.CLIPTokenizer.from_folder(tmp_path)
