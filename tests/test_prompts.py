"""gdlib.prompts: caption modes, the attribute table, unknown-word errors."""
import json

import pytest

from gdlib import prompts as P
from gdlib import toyworld
from gdlib.models.config import TextConfig
from gdlib.models.text import Tokenizer


@pytest.fixture
def tok():
    return Tokenizer(TextConfig(vocab=toyworld.vocabulary(), num_reserved=4))


def test_caption_modes_and_inference_prompts():
    assert P.train_caption("instance", "cat", "style_07") == "style_07"
    assert P.train_caption("dreambooth", "cat", "sks") == "a sks painting of a cat"
    assert P.train_caption("decoupled", "cat", None, ["animal"]) == "animal painting of cat"
    assert P.train_caption("decoupled", "cat", "sks", ["animal"], ["ink"]) == "sks ink animal painting of cat"
    # inference keeps identifier and style words, drops the content attribute words
    assert P.inference_prompt("decoupled", "car", None, ["animal"], ["ink"]) == "ink painting of car"
    assert P.inference_prompt("instance", "car", "style_07") == "a style_07 painting of a car"
    assert P.class_prompt("car") == "a painting of a car"
    with pytest.raises(ValueError, match="needs an identifier"):
        P.train_caption("dreambooth", "cat", None)
    with pytest.raises(ValueError, match="caption mode"):
        P.train_caption("plain", "cat", "sks")


def test_instance_tokens():
    assert P.instance_token("instance", "07") == "style_07"
    assert P.instance_token("dreambooth") == "sks"
    assert P.instance_token("decoupled") is None
    assert P.instance_token("decoupled", token="zwx") == "zwx"
    with pytest.raises(ValueError, match="one lower-case ASCII word"):
        P.instance_token("instance", "my style")


def test_shipped_table_is_valid_and_packaged():
    table = P.load_table()
    assert P.DEFAULT_TABLE.is_file() and table["format"] == P.TABLE_FORMAT
    assert set(P.new_words(table)) == set(toyworld.CATEGORIES)
    with open("pyproject.toml") as f:
        assert '"data/*.json"' in f.read()  # package-data ships the table


def test_attributes_for_resolves_the_category_and_entries(tmp_path):
    table = P.load_table()
    assert P.attributes_for(table, ["watercolor", "00"], ["cat", "bird"]) == {"attributes": ["animal"], "style_words": []}
    with pytest.raises(ValueError, match="do not share one ToyWorld category"):
        P.attributes_for(table, ["00"], ["cat", "car"])
    table["styles"]["07"] = {"attributes": ["fruit"], "style_words": ["ink"]}
    path = tmp_path / "t.json"
    path.write_text(json.dumps(table))
    t2 = P.load_table(path)
    assert P.attributes_for(t2, ["mosaic", "07"], ["cat", "car"]) == {"attributes": ["fruit"], "style_words": ["ink"]}


def test_bad_tables_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        P.load_table(tmp_path / "missing.json")
    p = tmp_path / "bad.json"
    p.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        P.load_table(p)
    p.write_text(json.dumps({"styles": {}}))
    with pytest.raises(ValueError, match="format"):
        P.load_table(p)
    p.write_text(json.dumps({"format": P.TABLE_FORMAT, "styles": {"07": {"attributes": ["Pixel Art"]}}}))
    with pytest.raises(ValueError, match="Pixel Art"):
        P.load_table(p)
    p.write_text(json.dumps({"format": P.TABLE_FORMAT, "styles": {"07": ["pixel"]}}))
    with pytest.raises(ValueError, match="07"):
        P.load_table(p)


def test_check_words_names_unknown_words(tok):
    assert P.check_words(tok, ["cat", "painting"]) == []
    with pytest.raises(ValueError, match=r"\['dog', 'voxel'\]"):
        P.check_words(tok, ["cat", "dog", "voxel"])
    assert P.check_words(tok, ["cat", "animal", "voxel"], allowed_new=["voxel"]) == ["voxel"]  # category words are base words
    with pytest.warns(UserWarning, match="dog"):
        assert P.warn_unknown(tok, ["a pixel painting of a dog"]) == ["dog"]
