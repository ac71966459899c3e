"""gdlib.metrics: each toy-analog term against hand-computed values, and the challenge-shaped score."""
import math

import numpy as np
import pytest

from gdlib import metrics as M


def test_content_accuracy_and_leakage():
    assert M.content_accuracy([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    with pytest.raises(ValueError):
        M.content_accuracy([1, 2], [1])
    # few-shot set = objects {0, 1}; asked 2, 3, 4, 0 -> only the first three count
    pred, asked = [0, 3, 1, 5], [2, 3, 4, 0]
    assert M.leakage_rate(pred, asked, [0, 1]) == pytest.approx(2 / 3)
    assert math.isnan(M.leakage_rate([0], [0], [0, 1]))


def test_frechet_distance_matches_1d_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(1.0, 2.0, (4000, 1))
    b = rng.normal(-0.5, 0.5, (3000, 1))
    m1, s1 = a.mean(), a.std(ddof=1)
    m2, s2 = b.mean(), b.std(ddof=1)
    assert M.frechet_distance(a, b) == pytest.approx((m1 - m2) ** 2 + (s1 - s2) ** 2, rel=1e-6)


def test_frechet_distance_properties():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 6)), rng.normal(size=(40, 6)) + 0.3
    assert M.frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert M.frechet_distance(a, b) == pytest.approx(M.frechet_distance(b, a), rel=1e-6)
    assert M.frechet_distance(a, b) > M.frechet_distance(a, b - 0.3)
    # single samples have zero covariance: the distance is the squared Euclidean distance
    assert M.frechet_distance(np.array([[1.0, 2.0]]), np.zeros((1, 2))) == pytest.approx(5.0)
    with pytest.raises(ValueError):
        M.frechet_distance(a, rng.normal(size=(5, 3)))


def test_histogram_similarity():
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (3, 3, 16, 16)).astype(np.float32)
    assert M.histogram_similarity(x[:1], x[:1]) == pytest.approx(1.0)
    red = np.zeros((1, 3, 8, 8), np.float32) - 1
    red[:, 0] = 1
    blue = np.zeros((1, 3, 8, 8), np.float32) - 1
    blue[:, 2] = 1
    assert M.histogram_similarity(red, blue) == 0.0
    half = red.copy()
    half[:, :, :4] = blue[:, :, :4]
    assert M.histogram_similarity(half, red) == pytest.approx(0.5)


def test_embedding_similarity_and_perceptual_distance():
    e = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert M.embedding_similarity(e[:1], e[:1]) == pytest.approx(1.0)
    assert M.embedding_similarity(e[:1], e[1:]) == pytest.approx(0.0)
    rng = np.random.default_rng(3)
    maps = [np.abs(rng.normal(size=(2, 4, 8, 8))), np.abs(rng.normal(size=(2, 8, 4, 4)))]
    expected = []
    for m in maps:  # loop form of the definition: pairs x positions, per block
        u = m / np.linalg.norm(m, axis=1, keepdims=True)
        cos = [(u[a, :, i, j] * u[b, :, i, j]).sum() for a in range(2) for b in range(2)
               for i in range(m.shape[2]) for j in range(m.shape[3])]
        expected.append(1 - np.mean(cos))
    assert M.perceptual_distance(maps, maps) == pytest.approx(np.mean(expected))
    one = [m[:1] for m in maps]
    assert M.perceptual_distance(one, one) == pytest.approx(0.0, abs=1e-12)
    disjoint = [np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 2, 2))]
    disjoint[0][:, 0], disjoint[1][:, 1] = 1.0, 1.0
    assert M.perceptual_distance([disjoint[0]], [disjoint[1]]) == pytest.approx(1.0)


def test_challenge_score_weights():
    best = M.challenge_score(1.0, 1.0, 0.0, 1.0, 0.0, 1.0)
    assert best["style"] == pytest.approx(1.0) and best["text"] == pytest.approx(0.5)
    assert best["quality"] == pytest.approx(0.5) and best["final"] == pytest.approx(1.0)
    s = M.challenge_score(0.5, 0.25, 0.5, 0.6, 30.0, 0.4)
    style = 0.2 * 0.5 + 0.4 * 0.25 + 0.4 * 0.5
    assert s["style"] == pytest.approx(style)
    assert s["quality"] == pytest.approx(0.04)  # FD beyond the cap of 20 gives 0 for that term
    assert s["final"] == pytest.approx(style * (0.3 + 0.04))
    assert M.challenge_score(1, 1, 0, 1, 10.0, 0)["quality"] == pytest.approx(0.2)


def test_score_real_images_as_predictions_and_shuffled_labels(tmp_path, capsys):
    """Real ToyWorld images of a fresh seed score >= 95% content and style accuracy; with their
    object labels shuffled the content accuracy falls to chance (1 / number of prompts)."""
    from gdlib.cli import main
    from gdlib.toyworld import export as twx

    ref = tmp_path / "ref"
    twx.export_challenge(ref, seed=8)  # the held-out styles, one category each
    twx.oracle_predictions(ref, tmp_path / "pred", seed=12345)
    twx.oracle_predictions(ref, tmp_path / "shuf", seed=12345, shuffle_labels=True)
    assert main(["score", "--pred", str(tmp_path / "pred"), "--ref", str(ref), "--json", str(tmp_path / "s.json")]) == 0
    table = capsys.readouterr().out
    import json
    good = json.loads((tmp_path / "s.json").read_text())
    print(table)
    assert good["mean"]["content_accuracy"] >= 0.95 and good["mean"]["style_accuracy"] >= 0.95
    assert good["mean"]["leakage"] <= 0.05
    for sid, r in good["sets"].items():
        assert r["style_name"] in table and r["ref_style"] == r["style_name"]
    shuffled = M.score_challenge(tmp_path / "shuf", ref)
    n_prompts = np.mean([r["n"] for r in shuffled["sets"].values()])
    chance = 1.0 / n_prompts
    n_total = sum(r["n"] for r in shuffled["sets"].values())
    # binomial 3-sigma band around chance for this many images (the pictures are the same, only names move)
    assert abs(shuffled["mean"]["content_accuracy"] - chance) <= 3 * np.sqrt(chance * (1 - chance) / n_total) + 0.02
    assert shuffled["mean"]["style_accuracy"] >= 0.95
    assert shuffled["mean"]["final"] < good["mean"]["final"]


def test_score_cli_errors(tmp_path, capsys):
    from gdlib.cli import main
    from gdlib.toyworld import export as twx

    twx.export_challenge(tmp_path / "ref", ["ink"], seed=1)
    assert main(["score", "--pred", str(tmp_path / "nothing"), "--ref", str(tmp_path / "ref")]) == 2
    assert "does not exist" in capsys.readouterr().err
    twx.oracle_predictions(tmp_path / "ref", tmp_path / "pred")
    next((tmp_path / "pred" / "00").glob("*.png")).unlink()
    assert main(["score", "--pred", str(tmp_path / "pred"), "--ref", str(tmp_path / "ref")]) == 2
    assert "lacks predictions" in capsys.readouterr().err


def test_leakage_detects_copied_content():
    """A 'model' that draws the few-shot set's own objects whatever it is asked leaks ~100%."""
    from gdlib import toyworld as tw
    from gdlib.models.evaluators import load_evaluators

    ev = load_evaluators()
    fs = tw.few_shot_set("mosaic", "animal", 3, seed=5)
    asked = [o for o in tw.OBJECTS if o not in fs["objects"]]
    copied = tw.to_float(np.stack([tw.render(fs["objects"][i % 3], "mosaic", 100 + i) for i in range(len(asked))]))
    honest = tw.to_float(np.stack([tw.render(o, "mosaic", 100 + i) for i, o in enumerate(asked)]))
    r_copy = M.score_set(ev, copied, asked, fs["images"], fs["objects"])
    r_ok = M.score_set(ev, honest, asked, fs["images"], fs["objects"])
    assert r_copy["leakage"] >= 0.9 and r_copy["content_accuracy"] <= 0.1
    assert r_ok["leakage"] <= 0.1 and r_ok["content_accuracy"] >= 0.9
    assert r_copy["final"] < r_ok["final"]


def test_style_similarity_prefers_the_reference_style():
    from gdlib import toyworld as tw
    from gdlib.models.evaluators import load_evaluators

    ev = load_evaluators()
    ref = tw.few_shot_set("blueprint", "vehicle", 3, seed=1)["images"]
    same = tw.make_dataset(["blueprint"], ["cat", "tree", "house"], 1, seed=2)["images"]
    other = tw.make_dataset(["sunset"], ["cat", "tree", "house"], 1, seed=2)["images"]
    s_same, s_other = M.style_similarity(ev, same, ref), M.style_similarity(ev, other, ref)
    for k in ("embedding_similarity", "histogram_similarity"):
        assert s_same[k] > s_other[k], k
    assert s_same["perceptual_distance"] < s_other["perceptual_distance"]
    assert s_same["style"] == pytest.approx(0.2 * s_same["embedding_similarity"] + 0.4 * s_same["histogram_similarity"]
                                            + 0.4 * (1 - s_same["perceptual_distance"]))
    assert s_same["style"] > s_other["style"]


def test_per_image_outcomes_marks_correct_and_leaked_images():
    class Ev:  # predicts the object whose index is written in the image's first pixel
        objects = ["apple", "cat", "car", "tree"]

        def predict_content(self, images):
            return np.asarray(images)[:, 0, 0, 0].astype(int)

    imgs = np.zeros((4, 3, 2, 2), np.float32)
    imgs[:, 0, 0, 0] = [2, 1, 1, 3]          # car, cat, cat, tree
    out = M.per_image_outcomes(Ev(), imgs, ["car", "car", "cat", "car"], ref_objects=["cat"])
    assert out["correct"].tolist() == [True, False, True, False]
    assert out["leaked"].tolist() == [False, True, False, False]   # asking for the reference object is not leakage
    with pytest.raises(ValueError, match="zebra"):
        M.per_image_outcomes(Ev(), imgs, ["zebra"] * 4)
