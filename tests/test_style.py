"""Style descriptors Psi: Gram matrices, the random-conv Gram descriptor, the contrastive descriptor and its
loss terms, the held-out evaluation helpers, file round trip, and the shipped descriptor's card."""
import json

import numpy as np
import pytest

from gdlib import runtime

jt = runtime.setup_jittor()

from gdlib import style, toyworld  # noqa: E402


def test_gram_matrix_matches_numpy():
    f = np.random.default_rng(0).standard_normal((2, 4, 5, 3)).astype(np.float32)
    g = style.gram_matrix(jt.array(f)).numpy()
    flat = f.reshape(2, 4, 15)
    np.testing.assert_allclose(g, flat @ flat.transpose(0, 2, 1) / 15.0, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="N, C, H, W"):
        style.gram_matrix(jt.array(f[0]))


def test_gram_descriptor_unit_norm_and_style_sensitive():
    psi = style.GramDescriptor()
    styles, objects = ("mosaic", "ink", "neon", "stripes"), ("cat", "car", "tree")
    imgs = np.concatenate([toyworld.to_float(toyworld.render(o, s, 1)) for s in styles for o in objects])
    e = psi(imgs).numpy()
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-4)
    sty, obj = np.repeat(np.arange(4), 3), np.tile(np.arange(3), 4)
    cos = e @ e.T
    same_style = cos[(sty[:, None] == sty[None, :]) & (obj[:, None] != obj[None, :])].mean()
    same_object = cos[(sty[:, None] != sty[None, :]) & (obj[:, None] == obj[None, :])].mean()
    assert same_style > same_object  # on average, style explains more of Psi than the (identical) object
    assert np.allclose(style.GramDescriptor(seed=0)(imgs[:1]).numpy(), e[:1], atol=1e-6)  # fixed features


def test_gram_descriptor_is_differentiable_and_frozen():
    psi = style.GramDescriptor()
    x = jt.array(np.random.default_rng(1).uniform(-1, 1, (1, 3, 16, 16)).astype(np.float32))
    loss = (psi(x) * psi(jt.array(toyworld.to_float(toyworld.render("cat", "mosaic", 0, size=16))))).sum()
    g = jt.grad(loss, x).numpy()
    assert np.isfinite(g).all() and np.abs(g).max() > 0
    assert all(p.is_stop_grad() for p in psi.features.parameters())


def test_descriptor_input_errors():
    psi = style.GramDescriptor()
    with pytest.raises(ValueError, match="N, 3, H, W"):
        psi(np.zeros((1, 1, 16, 16), np.float32))
    with pytest.raises(ValueError, match="8 x 8"):
        psi(np.zeros((1, 3, 4, 4), np.float32))
    with pytest.raises(ValueError, match="unknown style descriptor"):
        style.get_descriptor("clip")
    with pytest.raises(FileNotFoundError, match="train-csd"):
        style.load_csd("/nonexistent/csd.safetensors")


def test_supcon_loss_prefers_style_clusters():
    labels = np.array([0, 0, 1, 1])
    good = jt.array(np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32))
    bad = jt.array(np.array([[1, 0], [0, 1], [1, 0], [0, 1]], np.float32))
    assert style.supcon_loss(good, labels).item() < style.supcon_loss(bad, labels).item()
    # hand check for `good` at T = 1: log softmax over the 3 others, positive has logit 1, negatives 0
    expect = -np.log(np.e / (np.e + 2))
    assert style.supcon_loss(good, labels, temperature=1.0).item() == pytest.approx(expect, rel=1e-5)
    with pytest.raises(ValueError, match="positive"):
        style.supcon_loss(good, np.array([0, 1, 2, 2]))


def test_color_statistics_are_channel_mean_and_std():
    x = np.zeros((2, 3, 8, 8), np.float32)
    x[0, 0] = 0.5
    x[1, 2, :4] = 1.0
    c = style.color_statistics(x)
    np.testing.assert_allclose(c[0], [0.5, 0, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(c[1], [0, 0, 0.5, 0, 0, 0.5], atol=1e-6)
    with pytest.raises(ValueError, match="color_statistics"):
        style.color_statistics(np.zeros((2, 8, 8), np.float32))


def test_evaluate_descriptor_reports_the_colour_reference_probe():
    """evaluate_descriptor also probes the object from colour mean/std alone; a Psi that IS those statistics matches it."""
    psi = lambda x: jt.array(style.color_statistics(x))  # noqa: E731
    ev = style.evaluate_descriptor(psi, styles=["watercolor", "mosaic"], distractors=[], n_per_pair=2, seed=3)
    assert ev["content_probe_accuracy"] == pytest.approx(ev["content_probe_color_statistics"])
    assert ev["content_chance"] < ev["content_probe_color_statistics"] <= 1.0
    assert "colour mean/std alone" in style.card_markdown({"heldout_eval": {"x": ev}})


def test_content_invariance_loss_sees_object_directions():
    sl, ol = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    invariant = jt.array(np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0]], np.float32))
    leaky = jt.array(np.array([[1, 0, 1], [1, 0, -1], [0, 1, 1], [0, 1, -1]], np.float32))
    assert style.content_invariance_loss(invariant, sl, ol).item() == pytest.approx(0.0, abs=1e-7)
    assert style.content_invariance_loss(leaky, sl, ol).item() == pytest.approx(1.0, rel=1e-5)


def test_retrieval_and_probe_helpers():
    rng = np.random.default_rng(0)
    sty = np.repeat([0, 1, 2], 10)
    obj = np.tile(np.arange(5), 6)
    emb = np.eye(3)[sty] + 0.01 * rng.standard_normal((30, 3))
    assert style.retrieval_accuracy(emb, sty) == 1.0
    assert style.retrieval_accuracy(emb, sty, obj) == 1.0
    assert style.retrieval_accuracy(rng.standard_normal((30, 3)), sty) < 0.8
    x = np.eye(5)[obj] + 0.05 * rng.standard_normal((30, 5))
    assert style.linear_probe_accuracy(x[:15], obj[:15], x[15:], obj[15:]) == 1.0


def test_train_save_load_roundtrip(tmp_path):
    net, card = style.train_csd(styles=["flat", "ink", "pixel"], steps=3, batch_styles=3, per_style=4,
                                n_per_pair=1, width=8, dim=16, log=lambda s: None)
    assert card["steps"] == 3 and np.isfinite(card["final_loss"])
    x = toyworld.to_float(toyworld.render("cat", "ink", 0))
    e = net(x).numpy()
    path = style.save_csd(net, dict(card, command="test"), tmp_path)
    back = style.load_csd(path)
    np.testing.assert_allclose(back(x).numpy(), e, atol=1e-5)
    assert json.loads((tmp_path / "card.json").read_text())["dim"] == 16
    assert "content probe" in (tmp_path / "README.md").read_text()


def test_confusion_adversary_trains_alongside():
    """lam_confusion > 0: an object adversary on the style residual is trained too, and only it sees the labels."""
    before = style.ContrastiveStyleDescriptor(8, 16)
    net, card = style.train_csd(styles=["flat", "ink", "pixel"], steps=4, batch_styles=3, per_style=4, n_per_pair=1,
                                width=8, dim=16, lam_confusion=1.0, log=lambda s: None)
    assert card["lam_confusion"] == 1.0 and 0.0 <= card["adversary_train_accuracy_last50"] <= 1.0
    assert np.isfinite(card["final_loss"])
    assert sorted(net.state_dict()) == sorted(before.state_dict())  # the adversary is not part of Psi
    r = style.style_residual(jt.array(np.arange(12, dtype=np.float32).reshape(4, 3)), np.array([0, 0, 1, 1]))
    np.testing.assert_allclose(r.numpy(), [[-1.5] * 3, [1.5] * 3, [-1.5] * 3, [1.5] * 3])


def test_shipped_descriptor_card_and_heldout_behaviour():
    """The shipped Psi: trained on known styles only; on fresh held-out images, same-style neighbours win."""
    net = style.load_csd()
    card = net.card
    assert not set(card["train_styles"]) & set(toyworld.HELDOUT_STYLES)
    evals = json.loads((style.DEFAULT_DIR / "card.json").read_text())["heldout_eval"]
    ev, gram = evals["csd"], evals["gram (random conv, for comparison)"]
    assert ev["style_retrieval_1nn_other_object"] > 0.9
    assert ev["content_probe_accuracy"] < gram["content_probe_accuracy"]  # less content than the Gram baseline
    imgs = np.concatenate([toyworld.to_float(toyworld.render(o, s, 99)) for s in toyworld.HELDOUT_STYLES
                           for o in ("apple", "boat", "castle")])
    e = style.embed(net, imgs)
    n = len(toyworld.HELDOUT_STYLES)
    sty = np.repeat(np.arange(n), 3)
    assert style.retrieval_accuracy(e, sty, np.tile(np.arange(3), n)) >= 0.75
