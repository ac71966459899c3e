"""The DiT editor (gdlib.models.dit) and few-shot editing (gdlib.edit): pairs and their folder format, PhotoDoodle's
noise-free source tokens, flow-matching training that learns, bit-equal resume, EditLoRA, sampling and the CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from gdlib import runtime

jt = runtime.setup_jittor()

from gdlib import adapters, edit, toyworld  # noqa: E402
from gdlib.config import DiTConfig, EditLoRAConfig, EditorConfig  # noqa: E402
from gdlib.models.dit import Editor, patchify, unpatchify  # noqa: E402

TINY = DiTConfig(patch=4, width=32, depth=2, heads=2, text_width=16, text_layers=1)


def _tiny_editor(seed: int = 0) -> Editor:
    jt.set_global_seed(seed)
    return edit.new_editor(TINY)


def _randomize_zero_layers(ed: Editor, seed: int = 0) -> None:
    """adaLN-Zero starts every block (and the output) at zero; give those layers weights so the graph is exercised."""
    rng = np.random.default_rng(seed)
    for name, p in ed.dit.named_parameters():
        if "adaLN_modulation" in name or "final_modulation" in name or "proj_out" in name:
            p.update(jt.array(rng.normal(0, 0.05, p.shape).astype(np.float32)))


# ------------------------------------------------------------------------------------------------ pairs
def test_swap_pairs_keep_the_background_exactly_and_restyle_changes_everything():
    p = edit.make_pair("swap", "pixel", "cat", 3, "fish")
    keep = ~p["mask"]
    assert keep.any() and p["mask"].any()
    assert np.array_equal(p["target"][keep], p["source"][keep])
    assert not np.array_equal(p["target"], p["source"])
    assert p["caption"] == "replace cat with fish" and p["target_object"] == "fish"
    r = edit.make_pair("restyle", "flat", "car", 3, "ink")
    assert r["mask"].all() and r["caption"] == "make it ink"
    assert np.array_equal(r["target"], toyworld.render("car", "ink", 3))
    with pytest.raises(ValueError, match="unknown edit kind"):
        edit.make_pair("blur", "flat", "car", 3, "ink")
    ed = _tiny_editor()
    ed.encode([p["caption"], r["caption"]])  # every instruction word is known (strict encode)


def test_pairs_folder_round_trip(tmp_path):
    pairs = [edit.make_pair("swap", "flat", "cat", s, "car") for s in range(3)]
    edit.write_pairs(tmp_path / "p", pairs)
    d = edit.load_pairs(tmp_path / "p")
    assert d["sources"].shape == d["targets"].shape == (3, 3, 32, 32)
    assert d["captions"] == ["replace cat with car"] * 3
    np.testing.assert_array_equal(d["masks"], np.stack([p["mask"] for p in pairs]))
    np.testing.assert_allclose(d["targets"], edit.stack_pairs(pairs)["targets"], atol=1e-6)


def test_pairs_loader_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        edit.load_pairs(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no pairs.jsonl"):
        edit.load_pairs(tmp_path / "empty")
    edit.write_pairs(tmp_path / "p", [edit.make_pair("restyle", "flat", "cat", s, "ink") for s in range(2)])
    idx = tmp_path / "p" / "pairs.jsonl"
    good = idx.read_text().splitlines()
    cases = {
        "line 2: not valid JSON": [good[0], "{not json"],
        r"line 1: missing \['caption'\]": [json.dumps({"source": "source/0000.png", "target": "target/0000.png"})],
        "target image .* does not exist": [json.dumps({"source": "source/0000.png", "target": "nope.png",
                                                       "caption": "make it ink"})],
        "caption must be a non-empty string": [json.dumps({"source": "source/0000.png", "target": "target/0000.png",
                                                           "caption": ""})],
        "some lines name a mask": [good[0], json.dumps({"source": "source/0001.png", "target": "target/0001.png",
                                                        "caption": "make it ink"})],
        "has no pairs": [""],
    }
    for msg, lines in cases.items():
        idx.write_text("\n".join(lines) + "\n")
        with pytest.raises(ValueError, match=msg):
            edit.load_pairs(tmp_path / "p")
    (tmp_path / "p" / "target" / "0000.png").write_bytes(b"not a png")
    idx.write_text(good[0] + "\n")
    with pytest.raises(ValueError, match="line 1: cannot read target image"):
        edit.load_pairs(tmp_path / "p")


# --------------------------------------------------------------------------------------------------- DiT
def test_patchify_round_trip():
    x = jt.array(np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    t = patchify(x, 4)
    assert tuple(t.shape) == (2, 64, 48)
    np.testing.assert_array_equal(unpatchify(t, 4).numpy(), x.numpy())


def test_dit_shape_and_noise_free_source_tokens_with_shared_positions():
    ed = _tiny_editor()
    _randomize_zero_layers(ed)
    rng = np.random.default_rng(1)
    src = jt.array(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    x1 = jt.array(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    x2 = jt.array(rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    ids = ed.encode(["make it ink", "replace cat with fish"])
    t = jt.array(np.array([0.3, 0.9], np.float32))
    v = ed.dit(x1, t, src, ids)
    assert tuple(v.shape) == (2, 3, 32, 32)
    e1, e2 = ed.dit.embed(x1, t, src, ids), ed.dit.embed(x2, t, src, ids)
    # the source tokens never see the noisy target: another noise draw leaves them bit-equal
    np.testing.assert_array_equal(e1["source"].numpy(), e2["source"].numpy())
    assert not np.allclose(e1["target"].numpy(), e2["target"].numpy())
    # the source reuses the target's position encodings: source - pos = the patch embedding of the source (+ role)
    np.testing.assert_array_equal(e1["pos_source"].numpy(), e1["pos_target"].numpy())
    emb = ed.dit.x_embedder(patchify(src, 4)).numpy()
    np.testing.assert_allclose(e1["source"].numpy() - emb - ed.dit.source_embedding.numpy(),
                               np.broadcast_to(e1["pos_target"].numpy(), emb.shape), atol=1e-5)
    # the output is the target's velocity, and the source conditions it
    v_other = ed.dit(x1, t, src * 0.0, ids)
    assert not np.allclose(v.numpy(), v_other.numpy())


def test_dit_starts_at_zero_velocity():
    ed = _tiny_editor()
    x = jt.randn(1, 3, 32, 32)
    v = ed.dit(x, jt.array(np.array([0.5], np.float32)), x, ed.encode(["make it ink"]))
    assert float(np.abs(v.numpy()).max()) == 0.0  # adaLN-Zero + zero output projection


# ------------------------------------------------------------------------------------------- training
def _easy_pairs(n: int = 8) -> dict:
    return edit.stack_pairs([edit.make_pair("restyle", "flat", o, s, "ink")
                             for s, o in enumerate(toyworld.OBJECTS[:n])])


def _eval_loss(ed: Editor, d: dict, ids: np.ndarray) -> float:
    vals = []
    for k in range(4):
        with jt.no_grad():
            vals.append(float(edit.flow_loss(ed, d["sources"], d["targets"], ids, np.random.default_rng([99, k]),
                                             "uniform").item()))
    return float(np.mean(vals))


def test_a_tiny_editor_learns_one_easy_edit():
    from gdlib import kernels
    from gdlib.core import guarded_step

    ed = _tiny_editor()
    d = _easy_pairs()
    ids = ed.encode(d["captions"])
    before = _eval_loss(ed, d, ids)
    opt = kernels.AdamW(ed.parameters(), 3e-3)
    for step in range(80):
        rng = edit.batch_rng(0, step)
        loss = edit.flow_loss(ed, d["sources"], d["targets"], ids, rng, "uniform")
        assert guarded_step(opt, loss, 1.0)[2]
    after = _eval_loss(ed, d, ids)
    print(f"flow-matching loss before {before:.4f}, after 80 steps {after:.4f}")
    assert after < 0.6 * before, (before, after)


def _cfg(tmp_path, name: str, steps: int, **kw) -> EditorConfig:
    return EditorConfig(out_dir=str(tmp_path / name), steps=steps, minutes=10, batch_size=4, lr=2e-3, warmup_steps=2,
                        checkpoint_every=2, model=TINY, **kw)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    from safetensors.numpy import load_file

    edit.train_editor(_cfg(tmp_path, "a", 4), progress=False, log=lambda s: None)
    edit.train_editor(_cfg(tmp_path, "b", 2), progress=False, log=lambda s: None)
    edit.train_editor(_cfg(tmp_path, "b", 4), progress=False, log=lambda s: None)  # resumes at step 2
    a, b = load_file(str(tmp_path / "a" / "ckpt.safetensors")), load_file(str(tmp_path / "b" / "ckpt.safetensors"))
    assert set(a) == set(b) and any(k.startswith("model.") for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    other = _cfg(tmp_path, "b", 6)
    other.lr = 1e-3
    with pytest.raises(ValueError, match="lr 0.002 -> 0.001"):  # another run: refused, naming what differs
        edit.train_editor(other, progress=False, log=lambda s: None)
    # the exported editor loads and samples
    ed = Editor.load(tmp_path / "a" / "editor.safetensors")
    np.testing.assert_array_equal(ed.state()["x_embedder.weight"], a["model.x_embedder.weight"])


def test_edit_lora_trains_only_the_adapter_and_round_trips(tmp_path):
    ed = _tiny_editor()
    _randomize_zero_layers(ed)
    base = {k: v.copy() for k, v in ed.state().items()}
    pairs = [edit.make_pair("restyle", "flat", o, s, "watercolor") for s, o in enumerate(toyworld.OBJECTS[:4])]
    edit.write_pairs(tmp_path / "pairs", pairs)
    cfg = EditLoRAConfig(steps=5, batch_size=2, rank=2)
    res = edit.train_edit_lora(tmp_path / "pairs", ed, cfg, out=tmp_path / "lora.safetensors", progress=False)
    assert res["names"] and all(n.split(".")[-1] in ("to_q", "to_k", "to_v", "0") for n in res["names"])
    assert len(res["history"]["loss"]) == 5
    d = edit.load_pairs(tmp_path / "pairs")
    out = edit.edit(ed, d["sources"][:2], d["captions"][:2], steps=3, seed=1)
    assert out.shape == (2, 3, 32, 32) and np.isfinite(out).all() and np.abs(out).max() <= 1.0
    adapters.merge_and_unload(ed.dit.blocks)
    merged = ed.state()
    changed = [k for k in base if not np.array_equal(base[k], merged[k])]
    assert changed and all(".attn.to_" in k for k in changed), changed  # only adapted projections moved
    # a fresh copy of the base + the adapter file gives the same edit
    ed2 = _tiny_editor()
    ed2.load_state(base)
    adapters.load_adapter(ed2.dit.blocks, tmp_path / "lora.safetensors")
    out2 = edit.edit(ed2, d["sources"][:2], d["captions"][:2], steps=3, seed=1)
    np.testing.assert_allclose(out2, out, atol=1e-4)
    out_heun = edit.edit(ed2, d["sources"][:1], "make it watercolor", steps=2, sampler="heun", guidance_scale=2.0)
    assert out_heun.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="unknown words"):
        edit.edit(ed2, d["sources"][:1], "make it purple", steps=2)


# ---------------------------------------------------------------------------------------------- metrics
def test_metrics_on_the_exact_targets():
    pairs = [edit.make_pair("swap", s, "cat", i, "car") for i, s in enumerate(["flat", "pixel", "pop", "ink"])]
    b = edit.stack_pairs(pairs)
    bg = edit.background_error(b["targets"], b["sources"], b["masks"])
    assert bg["mae"] == 0.0 and bg["psnr"] == float("inf")
    noisy = edit.background_error(b["sources"] * 0.0, b["sources"], b["masks"])
    assert noisy["mae"] > 0.05 and np.isfinite(noisy["psnr"])
    full = edit.background_error(b["targets"], b["sources"], np.ones_like(b["masks"]))
    assert np.isnan(full["mae"])
    s = edit.edit_scores(b["targets"], b["sources"], b["masks"], [p["target_style"] for p in pairs],
                         [p["target_object"] for p in pairs])
    assert s["n"] == 4 and s["style_accuracy"] >= 0.75 and s["background_mae"] == 0.0


# ---------------------------------------------------------------------------------------------------- CLI
def test_cli_train_editor_train_edit_and_edit(tmp_path, capsys):
    from gdlib import cli

    run = tmp_path / "run"
    tiny = ["--patch", "4", "--width", "32", "--depth", "2", "--heads", "2", "--text-width", "16", "--text-layers", "1"]
    assert cli.main(["train-editor", "--out", str(run), "--steps", "2", "--batch", "2", "--no-progress", *tiny,
                     "--export", str(tmp_path / "export"), "--eval-pairs", "3"]) == 0
    card = json.loads((tmp_path / "export" / "model_card.json").read_text())
    assert card["steps"] == 2 and card["command"].startswith("gdlib train-editor --out")
    assert card["metrics"]["n_per_kind"] == 3 and set(card["metrics"]["kinds"]) == {"restyle", "swap"}
    assert Editor.load(tmp_path / "export" / "editor.safetensors").num_parameters() == card["parameters"]
    edit.write_pairs(tmp_path / "pairs", [edit.make_pair("restyle", "flat", "cat", s, "watercolor") for s in range(3)])
    lora = tmp_path / "w.safetensors"
    assert cli.main(["train-edit", str(tmp_path / "pairs"), "--out", str(lora), "--base",
                     str(run / "editor.safetensors"), "--steps", "2", "--batch", "2", "--no-progress"]) == 0
    assert lora.exists() and (tmp_path / "w.card.json").exists()
    out = tmp_path / "o.png"
    assert cli.main(["edit", "--model", str(run / "editor.safetensors"), "--adapter", str(lora), "--source",
                     str(tmp_path / "pairs" / "source" / "0000.png"), "--caption", "make it watercolor",
                     "--out", str(out), "--steps", "2"]) == 0
    assert out.exists()
    assert cli.main(["train-edit", str(tmp_path / "nope"), "--out", str(lora), "--base",
                     str(run / "editor.safetensors")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_score_pairs_against_exact_targets():
    pairs = edit.heldout_pairs("swap", 4, seed=3)
    b = edit.stack_pairs(pairs)
    perfect = edit.score_pairs(b["targets"], pairs)
    copied = edit.score_pairs(b["sources"], pairs)
    assert np.all(perfect["background_mae"] == 0) and np.all(np.isinf(perfect["psnr"]) | (perfect["psnr"] > 90))
    assert np.all(copied["background_mae"] == 0) and copied["psnr"].max() < perfect["psnr"].min()
    assert perfect["content_ok"].mean() > copied["content_ok"].mean()   # the swap's target object shows in the target
    assert edit.heldout_pairs("swap", 4, seed=3)[0]["caption"] == pairs[0]["caption"]   # a fixed held-out stream


def test_edit_explorer_headless():
    from gdlib import widgets

    ed = _tiny_editor()
    _randomize_zero_layers(ed)
    src = edit.stack_pairs([edit.make_pair("swap", "flat", "cat", 1, "car")])["sources"]
    ex = widgets.edit_explorer(ed, src, ["replace cat with car", "make it pixel"])
    first = ex.update()
    assert ex.error is None and first.shape == (1, 3, 32, 32)
    ex.controls["caption"].value = "make it pixel"
    assert ex.error is None and not np.allclose(ex.result, first)
    ex.controls["steps"].value = 2
    ex.controls["sampler"].value = "heun"
    ex.controls["guidance"].value = 2.0
    assert ex.error is None and ex.result.shape == first.shape


def test_the_shipped_editor_loads_and_has_its_card():
    from gdlib.config import DEFAULT_EDITOR

    ed = Editor.load(DEFAULT_EDITOR)
    card = json.loads((DEFAULT_EDITOR.parent / "model_card.json").read_text())
    assert ed.num_parameters() == card["parameters"] and card["train_minutes"] <= 60
    assert card["command"].startswith("gdlib train-editor")
    sw = card["metrics"]["kinds"]["swap"]["editor"]
    assert sw["content_accuracy"] > card["metrics"]["kinds"]["swap"]["copy_source"]["content_accuracy"]
