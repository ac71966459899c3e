"""The shipped ToyWorld evaluators: accuracy on a fresh seed, API on the library image convention, files."""
import json

import numpy as np
import pytest

from gdlib import toyworld as tw
from gdlib.models import evaluators as E

FRESH_SEED = 4242  # never used for training (seed 0) nor for the card's evaluation (seed 1000)


@pytest.fixture(scope="module")
def ev():
    return E.load_evaluators()


def test_card_matches_library(ev):
    card = json.loads((E.DEFAULT_DIR / E.CARD_FILE).read_text())
    assert card["data_version"] == tw.DATA_VERSION
    assert card["objects"] == tw.OBJECTS and card["styles"] == tw.STYLES
    assert card["command"].startswith("gdlib train-evaluators")
    fresh = card["fresh_seed_eval"]   # what data/README.md and the card claim, on every style of this data version
    assert fresh["n_images"] == len(tw.STYLES) * len(tw.OBJECTS) * 8 and sorted(fresh["per_style"]) == sorted(tw.STYLES)
    assert fresh["content_accuracy"] >= 0.99 and fresh["style_accuracy"] >= 0.99
    assert (E.DEFAULT_DIR / "README.md").read_text().startswith("# ToyWorld evaluators")


def test_accuracy_on_a_fresh_seed(ev):
    r = E.evaluate(ev, FRESH_SEED, n_per_pair=3)
    print({s: (round(v["content"], 3), round(v["style"], 3)) for s, v in r["per_style"].items()})
    assert r["content_accuracy"] >= 0.95 and r["style_accuracy"] >= 0.95
    for s in tw.HELDOUT_STYLES:  # 45 images per style: allow a couple of misses
        assert r["per_style"][s]["content"] >= 0.9, s
        assert r["per_style"][s]["style"] >= 0.9, s


def test_api_on_library_convention(ev):
    import jittor as jt  # gdlib is imported above, so Jittor is already configured

    d = tw.make_dataset(["ink", "stripes"], ["cat", "boat", "tree"], 1, seed=77)
    x = d["images"]
    c, s = ev.predict_content(x), ev.predict_style(x)
    assert c.shape == (6,) and s.shape == (6,)
    assert np.array_equal(ev.predict_content(jt.array(x)), c)  # jt.Var input
    assert np.array_equal(ev.predict_content(x[0]), c[:1])  # a single [3, H, W] image
    emb = ev.style_embedding(x)
    assert np.allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    assert ev.content_features(x).shape == (6, ev.content_net.fc.weight.shape[0])
    big = tw.to_float(np.stack([tw.render("cat", "ink", 3, size=64)]))
    assert ev.objects[ev.predict_content(big)[0]] == "cat"  # other sizes are resized
    with pytest.raises(ValueError, match="expected images"):
        ev.predict_content(np.zeros((2, 1, 32, 32), np.float32))


def test_missing_folder_is_actionable(tmp_path):
    with pytest.raises(FileNotFoundError, match="train-evaluators"):
        E.load_evaluators(tmp_path)


def test_training_loop_runs_and_round_trips(tmp_path):
    small = E.train_evaluators(seed=3, n_per_pair=1, steps=2, batch=16, eval_n_per_pair=1, log=None)
    E.save_evaluators(small, tmp_path)
    back = E.load_evaluators(tmp_path)
    x = tw.make_dataset(["pop"], tw.OBJECTS[:4], 1, seed=9)["images"]
    assert np.allclose(back.content_logits(x), small.content_logits(x), atol=1e-5)
    assert np.allclose(back.style_embedding(x), small.style_embedding(x), atol=1e-5)
    assert back.card["steps"] == 2 and (tmp_path / "README.md").exists()
