"""ToyWorld: catalogue, determinism, datasets, few-shot sets, challenge-layout export/import, bad inputs."""
import json
import re

import numpy as np
import pytest
from PIL import Image

from gdlib import imageio, toyworld as tw
from gdlib.toyworld import export as twx

WORD = re.compile(r"^[a-z]+$")


def test_catalogue_sizes_and_words():
    assert len(tw.OBJECTS) >= 12 and len(tw.CATEGORIES) >= 4
    assert len(tw.STYLES) >= 12 and len(tw.HELDOUT_STYLES) >= 4
    assert set(tw.KNOWN_STYLES).isdisjoint(tw.HELDOUT_STYLES)
    assert tw.STYLES == tw.KNOWN_STYLES + tw.HELDOUT_STYLES
    assert sorted(tw.OBJECTS) == sorted(o for objs in tw.CATEGORIES.values() for o in objs)
    assert len(set(tw.OBJECTS)) == len(tw.OBJECTS) and len(set(tw.STYLES)) == len(tw.STYLES)
    for w in tw.OBJECTS + tw.STYLES + list(tw.CATEGORIES):
        assert WORD.match(w), w
    assert set(tw.OBJECTS).isdisjoint(tw.STYLES)


def test_caption_and_vocabulary():
    assert tw.caption("pixel", "cat") == "a pixel painting of a cat"
    vocab = set(tw.vocabulary())
    for s in tw.STYLES:
        for o in tw.OBJECTS:
            assert set(tw.caption(s, o).split()) <= vocab
    assert vocab == {"a", "painting", "of", "style"} | set(tw.CATEGORIES) | set(tw.STYLES) | set(tw.OBJECTS)


def test_caption_templates_cover_the_recipes_prompts_and_split_the_held_out_styles():
    from gdlib import prompts as P

    vocab = set(tw.vocabulary())
    for k in tw.CAPTION_TEMPLATES:
        for s in tw.KNOWN_STYLES:
            words = tw.caption(s, "cat", k).replace(",", " ").split()
            assert set(words) <= vocab, (k, words)
            assert (s in words) == tw.template_has_style(k)
    assert tw.caption("pixel", "cat", "category") == "animal painting of cat"
    assert tw.caption("pixel", "cat", "tag") == "cat, pixel style"
    # every inference / class prompt form of gdlib.prompts (without a new identifier) is a template the base reads
    forms = {t.format(style="pixel", object="cat", category="animal") for t in tw.CAPTION_TEMPLATES.values()}
    assert P.class_prompt("cat") in forms
    assert P.inference_prompt("decoupled", "cat") in forms
    assert P.train_caption("decoupled", "cat", None, ["animal"]) in forms
    p = tw.caption_template_probs()
    assert p.shape == (len(tw.CAPTION_TEMPLATES),) and abs(p.sum() - 1) < 1e-12 and (p > 0).all()
    with pytest.raises(ValueError, match="unknown caption template"):
        tw.caption("pixel", "cat", "nope")
    assert len(tw.VALIDATION_STYLES) >= 4 and len(tw.TEST_STYLES) >= 4
    assert set(tw.VALIDATION_STYLES).isdisjoint(tw.TEST_STYLES)
    assert tw.HELDOUT_STYLES == tw.VALIDATION_STYLES + tw.TEST_STYLES


def test_render_is_deterministic_and_seed_dependent():
    a = tw.render("cat", "ink", 5)
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, tw.render("cat", "ink", 5))
    assert not np.array_equal(a, tw.render("cat", "ink", 6))
    assert tw.render("boat", "flat", 3, size=48).shape == (48, 48, 3)


def test_every_pair_renders_a_visible_object():
    for s in tw.STYLES:
        imgs = np.stack([tw.render(o, s, 11) for o in tw.OBJECTS]).astype(np.float32)
        # each image has contrast, and objects of one style differ from each other
        assert (imgs.reshape(len(imgs), -1).std(1) > 8).all(), s
        d = np.abs(imgs[:, None] - imgs[None]).mean((2, 3, 4))
        assert (d[~np.eye(len(imgs), dtype=bool)] > 1.0).all(), s


def test_make_dataset_layout_and_determinism():
    d = tw.make_dataset(["flat", "mosaic"], ["cat", "car", "tree"], 2, seed=3)
    assert d["images"].shape == (12, 3, 32, 32) and d["images"].dtype == np.float32
    assert d["images"].min() >= -1.0 and d["images"].max() <= 1.0
    assert d["captions"][0] == "a flat painting of a cat" and d["captions"][-1] == "a mosaic painting of a tree"
    assert [tw.OBJECTS[i] for i in d["object_idx"][:6]] == ["cat", "cat", "car", "car", "tree", "tree"]
    assert [tw.STYLES[i] for i in d["style_idx"][[0, 6]]] == ["flat", "mosaic"]
    assert np.array_equal(d["images"], tw.make_dataset(["flat", "mosaic"], ["cat", "car", "tree"], 2, seed=3)["images"])
    other = tw.make_dataset(["flat", "mosaic"], ["cat", "car", "tree"], 2, seed=4)["images"]
    assert not np.array_equal(d["images"], other)
    assert not np.array_equal(d["images"][0], d["images"][1])  # two instances of one pair differ


def test_few_shot_set_shares_one_category():
    for cat in tw.CATEGORIES:
        fs = tw.few_shot_set("watercolor", cat, 3, seed=2)
        assert fs["images"].shape == (3, 3, 32, 32)
        assert sorted(fs["objects"]) == sorted(tw.CATEGORIES[cat])
        assert all(tw.CATEGORY_OF[o] == cat for o in fs["objects"])
        assert fs["captions"][0] == tw.caption("watercolor", fs["objects"][0])


@pytest.mark.parametrize("call, msg", [
    (lambda: tw.render("dragon", "ink", 0), "unknown ToyWorld object"),
    (lambda: tw.render("cat", "cubism", 0), "unknown ToyWorld style"),
    (lambda: tw.render("cat", "ink", -1), "seed must be"),
    (lambda: tw.render("cat", "ink", 0, size=8), "size must be"),
    (lambda: tw.make_dataset(["ink"], [], 1), "at least one"),
    (lambda: tw.make_dataset(["ink"], ["cat"], 0), "n_per_pair"),
    (lambda: tw.few_shot_set("ink", "mineral", 3), "unknown category"),
    (lambda: tw.caption("ink", "Cat"), "unknown ToyWorld object"),
])
def test_bad_inputs_raise_clear_errors(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_export_import_round_trip(tmp_path):
    m = twx.export_challenge(tmp_path / "ref", ["mosaic", "ink"], seed=4, per_style=3)
    sets = imageio.load_challenge(tmp_path / "ref")
    assert [s.sid for s in sets] == ["00", "01"]
    for s in sets:
        meta = m["sets"][s.sid]
        assert s.meta["style"] == meta["style"]
        assert sorted(s.objects) == sorted(meta["objects"])
        assert set(s.prompts.values()) == set(tw.OBJECTS) - set(s.objects)
        fs = tw.few_shot_set(meta["style"], meta["category"], 3, seed=4 * 1000 + int(s.sid))
        by_name = dict(zip(fs["objects"], fs["images"]))
        for obj, img in zip(s.objects, s.images):
            assert np.abs(img - by_name[obj]).max() < 1e-6  # PNG keeps uint8 pixels exactly
    with pytest.raises(ValueError, match="per_style"):
        twx.export_challenge(tmp_path / "x", ["ink"], per_style=4)


def test_export_max_prompts_spreads_over_categories(tmp_path):
    m = twx.export_challenge(tmp_path / "ref", ["ink"], seed=0, max_prompts=5)
    (s,) = imageio.load_challenge(tmp_path / "ref")
    asked = list(s.prompts.values())
    assert len(asked) == 5 and not set(asked) & set(m["sets"]["00"]["objects"])
    cats = {tw.CATEGORY_OF[o] for o in asked}
    assert len(cats) == 4 and m["sets"]["00"]["category"] not in cats  # the 4 categories the set does not show
    with pytest.raises(ValueError, match="max_prompts"):
        twx.export_challenge(tmp_path / "y", ["ink"], max_prompts=0)


def test_oracle_predictions_and_shuffle(tmp_path):
    twx.export_challenge(tmp_path / "ref", ["blueprint", "pop"], seed=1)
    twx.oracle_predictions(tmp_path / "ref", tmp_path / "pred", seed=3)
    twx.oracle_predictions(tmp_path / "ref", tmp_path / "shuf", seed=3, shuffle_labels=True)
    for sid in ("00", "01"):
        p, q = imageio.load_predictions(tmp_path / "pred")[sid], imageio.load_predictions(tmp_path / "shuf")[sid]
        assert sorted(p["objects"]) == sorted(q["objects"]) and len(p["objects"]) == 12
        # the same pictures in every folder, only their names permuted
        key = lambda imgs: sorted(x.tobytes() for x in imgs)  # noqa: E731
        assert key(p["images"]) == key(q["images"])
        pi = {o: i for i, o in enumerate(p["objects"])}
        moved = [o for o, img in zip(q["objects"], q["images"]) if not np.array_equal(img, p["images"][pi[o]])]
        assert len(moved) >= 2
    with pytest.raises(FileNotFoundError, match="toyworld.json"):
        (tmp_path / "ref" / "toyworld.json").unlink()
        twx.oracle_predictions(tmp_path / "ref", tmp_path / "p2")


def test_user_folder_any_size_and_mode(tmp_path):
    d = tmp_path / "mine"
    d.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (120, 200, 3), dtype=np.uint8)).save(d / "Cat.jpg")
    Image.fromarray(rng.integers(0, 255, (64, 40), dtype=np.uint8), mode="L").save(d / "tree.png")
    Image.fromarray(rng.integers(0, 255, (50, 50, 4), dtype=np.uint8), mode="RGBA").save(d / "boat.png")
    Image.fromarray(rng.integers(0, 255, (33, 70, 3), dtype=np.uint8)).convert("P").save(d / "house.gif")
    (d / "notes.txt").write_text("ignored")
    f = imageio.load_image_folder(d, size=32)
    assert f["images"].shape == (4, 3, 32, 32) and f["images"].dtype == np.float32
    assert f["images"].min() >= -1 and f["images"].max() <= 1
    assert f["objects"] == ["boat", "cat", "house", "tree"]
    # a grey image comes back with three equal channels
    g = f["images"][f["objects"].index("tree")]
    assert np.allclose(g[0], g[1]) and np.allclose(g[1], g[2])


def test_user_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        imageio.load_image_folder(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        imageio.load_image_folder(empty)
    (empty / "readme.md").write_text("x")
    with pytest.raises(ValueError, match="found only"):
        imageio.load_image_folder(empty)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "cat.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match="cannot read image"):
        imageio.load_image_folder(bad)
    names = tmp_path / "names"
    names.mkdir()
    Image.new("RGB", (8, 8)).save(names / "IMG_0042.png")
    Image.new("RGB", (8, 8)).save(names / "red car.png")
    with pytest.raises(ValueError, match="single word"):
        imageio.load_image_folder(names)
    dup = tmp_path / "dup"
    dup.mkdir()
    Image.new("RGB", (8, 8)).save(dup / "cat.png")
    Image.new("RGB", (8, 8)).save(dup / "Cat.jpg")
    with pytest.raises(ValueError, match="same object"):
        imageio.load_image_folder(dup)


def test_challenge_layout_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        imageio.load_challenge(tmp_path / "missing")
    (tmp_path / "root").mkdir()
    with pytest.raises(ValueError, match="no style folders"):
        imageio.load_challenge(tmp_path / "root")
    (tmp_path / "root" / "00" / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "root" / "00" / "images" / "cat.png")
    with pytest.raises(FileNotFoundError, match="prompt.json"):
        imageio.load_challenge(tmp_path / "root")
    (tmp_path / "root" / "00" / "prompt.json").write_text(json.dumps({"0": "red car"}))
    with pytest.raises(ValueError, match="single English object words"):
        imageio.load_challenge(tmp_path / "root")


def test_cli_export(tmp_path, capsys):
    from gdlib.cli import main

    assert main(["toyworld", "export", "--out", str(tmp_path / "o"), "--styles", "pixel", "neon",
                 "--seed", "2", "--per-style", "2"]) == 0
    sets = imageio.load_challenge(tmp_path / "o")
    assert [len(s.objects) for s in sets] == [2, 2]
    assert main(["toyworld", "export", "--out", str(tmp_path / "p"), "--styles", "cubism"]) == 2
    assert "unknown ToyWorld style" in capsys.readouterr().err


def test_import_user_folder_into_challenge_layout(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    Image.new("RGB", (300, 200), (200, 30, 30)).save(src / "Apple.JPG")
    Image.new("L", (64, 90), 128).save(src / "pear.png")
    d = imageio.import_folder(src, tmp_path / "root")
    assert d.name == "00"
    s = imageio.load_challenge(tmp_path / "root")[0]
    assert s.objects == ["apple", "pear"] and s.images.shape == (2, 3, 32, 32)
    assert "apple" not in s.prompts.values() and "cat" in s.prompts.values()
    assert np.allclose(s.images[0, :, 16, 16], np.array([200, 30, 30]) / 127.5 - 1, atol=0.05)  # JPEG is lossy
    assert imageio.import_folder(src, tmp_path / "root", prompts=["cat", "boat"]).name == "01"
    with pytest.raises(ValueError, match="already exists"):
        imageio.import_folder(src, tmp_path / "root", sid="00")
    with pytest.raises(ValueError, match="single words"):
        imageio.import_folder(src, tmp_path / "root", prompts=["red car"])


def test_cli_grid_and_import(tmp_path, capsys):
    from gdlib.cli import main
    from gdlib import plot

    assert main(["toyworld", "grid", "--out", str(tmp_path / "g.png"), "--seed", "1"]) == 0
    assert Image.open(tmp_path / "g.png").size[0] > 300
    with pytest.raises(ValueError, match="style_object_grid"):
        plot.style_object_grid(np.zeros((2, 3, 8, 8, 3), np.uint8), ["a"], ["b"])
    src = tmp_path / "src"
    src.mkdir()
    assert main(["toyworld", "import", "--images", str(src), "--out", str(tmp_path / "r")]) == 2
    assert "no images" in capsys.readouterr().err


def test_toyworld_explorer_headless():
    import matplotlib
    matplotlib.use("Agg")
    from gdlib import widgets

    ex = widgets.toyworld_explorer()
    ex.update()
    assert ex.error is None and ex.result.shape == (len(tw.STYLES), 1, 32, 32, 3)
    ex.controls["obj"].value = "boat"
    ex.controls["size"].value = 48
    assert ex.error is None and ex.result.shape == (len(tw.STYLES), 1, 48, 48, 3)
    assert np.array_equal(ex.result[tw.STYLES.index("ink"), 0], tw.render("boat", "ink", 0, size=48))
    ex.controls["seed"].value = 5
    assert np.array_equal(ex.result[0, 0], tw.render("boat", tw.STYLES[0], 5, size=48))
