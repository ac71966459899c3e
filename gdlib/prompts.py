"""Captions for few-shot style fine-tuning and the matching inference prompts.

Three caption modes (specs/prompt_decoupling.md):
  instance    "{token}"                          the challenge baseline's "style_07": no content words at all
  dreambooth  "a {token} painting of a {object}"  DreamBooth (Ruiz et al. 2023): identifier + class word + object
  decoupled   "{attributes} painting of {object}" the Guided DoRA challenge entry's prompt decoupling: attribute words explain the
                                                 content the few-shot images share, so the adapter keeps the style
Inference prompts keep the identifier and the style words but drop the content attribute words ("animal"): the
content they explained must not come along ("painting of car", not "animal painting of car").
Class (prior-preservation) prompts drop the identifier: "a painting of a {object}".
The per-style attribute words live in a small JSON table a user edits (gdlib/data/attributes.json): per style,
"attributes" (content words, training captions only) and optional "style_words" (kept at inference).
"""
from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

MODES = ("instance", "dreambooth", "decoupled")
TRAIN_TEMPLATES = {"instance": "{token}", "dreambooth": "a {token} painting of a {object}",
                   "decoupled": "{token} {style_words} {attributes} painting of {object}"}
INFER_TEMPLATES = {"instance": "a {token} painting of a {object}", "dreambooth": "a {token} painting of a {object}",
                   "decoupled": "{token} {style_words} painting of {object}"}
CLASS_TEMPLATE = "a painting of a {object}"
DEFAULT_TOKENS = {"instance": "style_{sid}", "dreambooth": "sks", "decoupled": None}
DEFAULT_TABLE = Path(__file__).resolve().parent / "data" / "attributes.json"
TABLE_FORMAT = "gdlib-attributes/1"
CATEGORY = "{category}"
_WORD = re.compile(r"^[a-z0-9_]+$")


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"caption mode {mode!r}: use one of {MODES}")


def load_table(path: str | Path | None = None) -> dict:
    """Read and validate an attribute table (default: the shipped gdlib/data/attributes.json)."""
    path = Path(path) if path is not None else DEFAULT_TABLE
    if not path.is_file():
        raise FileNotFoundError(f"attribute table {path} not found (copy {DEFAULT_TABLE} and edit it)")
    try:
        table = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"attribute table {path} is not valid JSON: {e}") from e
    return validate_table(table, str(path))


def validate_table(table: dict, where: str = "attribute table") -> dict:
    """Check the table's shape: format, styles {key: {attributes: [words]}}, default, new_words; return it."""
    if not isinstance(table, dict) or table.get("format") != TABLE_FORMAT:
        raise ValueError(f"{where}: expected a JSON object with \"format\": \"{TABLE_FORMAT}\"")
    entries = dict(table.get("styles", {}))
    if "default" in table:
        entries["<default>"] = table["default"]
    for key, entry in entries.items():
        words = entry.get("attributes") if isinstance(entry, dict) else None
        style_words = entry.get("style_words", []) if isinstance(entry, dict) else None
        if not isinstance(words, list) or not isinstance(style_words, list) \
                or not all(isinstance(w, str) for w in words + style_words):
            raise ValueError(f"{where}: style {key!r} needs {{\"attributes\": [\"word\", ...]}} (and optionally "
                             f"\"style_words\": [...]), got {entry!r}")
        bad = [w for w in words + style_words if w != CATEGORY and not _WORD.match(w)]
        if bad:
            raise ValueError(f"{where}: style {key!r} has attribute words {bad} that are not single lower-case "
                             f"ASCII words (letters, digits, underscore) or {CATEGORY!r}")
    new = table.get("new_words", {})
    if not isinstance(new, (dict, list)) or not all(_WORD.match(str(w)) for w in new):
        raise ValueError(f"{where}: new_words must list single lower-case ASCII words, got {new!r}")
    return table


def shared_category(objects: Sequence[str]) -> str:
    """The ToyWorld category every object belongs to (ValueError naming the objects when there is none)."""
    from .toyworld import CATEGORY_OF

    cats = {CATEGORY_OF.get(o) for o in objects}
    if len(cats) != 1 or None in cats:
        raise ValueError(f"the objects {list(objects)} do not share one ToyWorld category "
                         f"({ {o: CATEGORY_OF.get(o) for o in objects} }); write the attribute words for this "
                         f"style in the attribute table instead of {CATEGORY!r}")
    return cats.pop()


def attributes_for(table: dict, keys: Sequence[str], objects: Sequence[str] = ()) -> dict[str, list[str]]:
    """{'attributes': content words, 'style_words': style words} of the first key found in table['styles']
    (else table['default']); '{category}' becomes the objects' shared ToyWorld category."""
    styles = table.get("styles", {})
    entry = next((styles[k] for k in keys if k in styles), table.get("default", {"attributes": []}))
    out = {}
    for field in ("attributes", "style_words"):
        out[field] = [shared_category(objects) if w == CATEGORY else w for w in entry.get(field, [])]
    return out


def new_words(table: dict) -> list[str]:
    """Words the table allows although the base tokenizer does not know them (added and trained as tokens)."""
    return sorted(str(w) for w in table.get("new_words", {}))


def check_words(tokenizer: Any, words: Sequence[str], allowed_new: Sequence[str] = (), what: str = "words") -> list[str]:
    """Return the words that are new tokens (in allowed_new, unknown to the tokenizer); ValueError naming any
    other word the tokenizer does not know (it would silently become <unk>)."""
    unknown = [w for w in dict.fromkeys(words) if w not in tokenizer.ids or w.startswith("<")]
    bad = [w for w in unknown if w not in set(allowed_new)]
    if bad:
        raise ValueError(f"{what} {bad} are unknown to the base model's tokenizer; use known words "
                         f"(e.g. {sorted(w for w in tokenizer.ids if not w.startswith('<'))[:12]} ...) or declare "
                         f"them as new tokens (attribute table 'new_words', or new_words=[...]) so they are trained")
    return unknown


def instance_token(mode: str, sid: str = "00", token: str | None = None) -> str | None:
    """The identifier of a mode: 'style_{sid}' (instance), 'sks' (dreambooth), none (decoupled) unless given."""
    _check_mode(mode)
    tok = token if token is not None else DEFAULT_TOKENS[mode]
    if tok is None:
        return None
    tok = tok.format(sid=sid).lower()
    if not _WORD.match(tok):
        raise ValueError(f"identifier token {tok!r} must be one lower-case ASCII word (letters, digits, underscore)")
    return tok


def _fill(mode: str, template: str, obj: str, token: str | None, attributes: Sequence[str],
          style_words: Sequence[str]) -> str:
    if mode != "decoupled" and not token:  # the decoupled captions' identifier is optional
        raise ValueError(f"caption mode {mode!r} ({template!r}) needs an identifier token")
    text = template.format(token=token or "", object=obj, attributes=" ".join(attributes),
                           style_words=" ".join(style_words))
    return " ".join(text.split())


def train_caption(mode: str, obj: str, token: str | None = None, attributes: Sequence[str] = (),
                  style_words: Sequence[str] = ()) -> str:
    """The training caption of one image of object `obj` in caption mode `mode`."""
    _check_mode(mode)
    return _fill(mode, TRAIN_TEMPLATES[mode], obj, token, attributes, style_words)


def inference_prompt(mode: str, obj: str, token: str | None = None, attributes: Sequence[str] = (),
                     style_words: Sequence[str] = ()) -> str:
    """The prompt that asks the fine-tuned model for `obj` in the learnt style: identifier and style words as in
    training, content attribute words dropped (`attributes` is accepted and ignored for symmetry)."""
    _check_mode(mode)
    return _fill(mode, INFER_TEMPLATES[mode], obj, token, (), style_words)


def class_prompt(obj: str) -> str:
    """The prior-preservation prompt: the caption without the identifier (DreamBooth's class prompt)."""
    return CLASS_TEMPLATE.format(object=obj)


def warn_unknown(tokenizer: Any, prompts: Sequence[str]) -> list[str]:
    """Warn (naming them) about words in prompts that the tokenizer maps to <unk>; return them."""
    unknown = sorted({w for p in prompts for w in tokenizer.unknown_words(p)})
    if unknown:
        warnings.warn(f"prompts contain words the model does not know, mapped to <unk>: {unknown}", UserWarning,
                      stacklevel=2)
    return unknown
