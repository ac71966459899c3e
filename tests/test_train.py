"""Pretraining loop: loss weights, lr schedule, EMA, a tiny run that learns, checkpoint resume, NaN guard."""
from __future__ import annotations

import math

import numpy as np
import pytest

from gdlib import runtime

jt = runtime.setup_jittor()

from gdlib import toyworld  # noqa: E402
from gdlib import core  # noqa: E402
from gdlib import train as T  # noqa: E402
from gdlib.commands import train_base as _parser  # noqa: E402
from gdlib.models.config import ModelConfig, TextConfig, UNetConfig  # noqa: E402
from gdlib.pipeline import TextToImage  # noqa: E402


def tiny_train_config(out_dir, **kw) -> T.TrainConfig:
    text = TextConfig(width=16, layers=1, heads=2, num_reserved=2)
    unet = UNetConfig(base_channels=16, channel_mult=(1, 2), attn_resolutions=(8,), self_attn_resolutions=(8,),
                      heads=2, groups=4, context_dim=16)
    base = dict(out_dir=str(out_dir), steps=4, minutes=30.0, batch_size=4, lr=3e-3, warmup_steps=1, n_per_pair=2,
                styles=["flat", "pixel"], objects=["cat", "car"], sample_every=0, log_every=1,
                model=ModelConfig(unet=unet, text=text))
    base.update(kw)
    return T.TrainConfig(**base)


def test_min_snr_weights_match_the_definition():
    abar = np.array([0.999, 0.9, 0.5, 0.01])
    snr = abar / (1 - abar)
    np.testing.assert_allclose(core.min_snr_weights(abar, 5.0, "epsilon"), np.minimum(snr, 5) / snr)
    np.testing.assert_allclose(core.min_snr_weights(abar, 5.0, "v_prediction"), np.minimum(snr, 5) / (snr + 1))
    np.testing.assert_allclose(core.min_snr_weights(abar, 0.0, "epsilon"), 1.0)
    assert core.min_snr_weights(abar, 5.0, "epsilon")[-1] == 1.0  # noisy steps keep full weight


def test_lr_warmup_then_cosine():
    cfg = T.TrainConfig(lr=1e-3, warmup_steps=10, lr_min_ratio=0.1)
    assert T.lr_at(0, 0.0, cfg) == pytest.approx(1e-4)
    assert T.lr_at(9, 0.0, cfg) == pytest.approx(1e-3)
    assert T.lr_at(50, 0.5, cfg) == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5))
    assert T.lr_at(99, 1.0, cfg) == pytest.approx(1e-4)


def test_ema_update_is_the_exponential_average():
    a, b = jt.array(np.array([1.0, 2.0], np.float32)), jt.array(np.array([3.0, 6.0], np.float32))
    T.ema_update([a], [b], 0.9)
    np.testing.assert_allclose(a.numpy(), 0.9 * np.array([1, 2]) + 0.1 * np.array([3, 6]), rtol=1e-6)


def test_noised_batch_is_eq4_with_the_v_target():
    cfg = ModelConfig(unet=UNetConfig(base_channels=16, channel_mult=(1,), attn_resolutions=(), groups=4, context_dim=16),
                      text=TextConfig(vocab=toyworld.vocabulary(), width=16, layers=1, heads=2),
                      prediction_type="v_prediction")
    m = TextToImage(cfg)
    x0 = np.random.default_rng(1).standard_normal((3, 3, 4, 4)).astype(np.float32)
    x_t, t, target = core.noised_batch(m.schedule, x0, np.random.default_rng(0))
    rng = np.random.default_rng(0)  # the documented draw order: eps, then t
    eps = rng.standard_normal(x0.shape).astype(np.float32)
    assert (t == rng.integers(0, m.config.num_train_timesteps, 3)).all()
    ab = m.schedule.alphas_cumprod[t][:, None, None, None]
    np.testing.assert_allclose(x_t, np.sqrt(ab) * x0 + np.sqrt(1 - ab) * eps, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(target, np.sqrt(ab) * eps - np.sqrt(1 - ab) * x0, rtol=1e-5, atol=1e-6)


def test_run_differences_name_nested_options():
    saved = {"lr": 0.002, "model": {"unet": {"base_channels": 16}}, "seed": 0}
    now = {"lr": 0.001, "model": {"unet": {"base_channels": 8}}, "seed": 0}
    assert core.run_differences(saved, now) == ["lr 0.002 -> 0.001", "model.unet.base_channels 16 -> 8"]
    assert core.run_differences(saved, saved) == []


def test_tiny_run_learns_checkpoints_and_resumes(tmp_path):
    cfg = tiny_train_config(tmp_path, steps=40, cond_drop=0.0, n_per_pair=1, batch_size=4, lr=3e-3, ema_decay=0.9)
    res = T.train_base(cfg, progress=False, log=lambda s: None)
    loss = res["history"]["loss"]
    assert res["state"]["step"] == 40 and len(loss) == 40
    assert all(math.isfinite(v) for v in loss)
    assert np.mean(loss[-5:]) < 0.8 * loss[0], loss  # running loss falls on a 4-image set
    ckpt = tmp_path / T.CKPT_NAME
    assert ckpt.exists()
    # resume: the same command continues from step 40 to 43 and keeps the history
    cfg2 = tiny_train_config(tmp_path, steps=43, cond_drop=0.0, n_per_pair=1, batch_size=4, lr=3e-3, ema_decay=0.9)
    logs = []
    res2 = T.train_base(cfg2, progress=False, log=logs.append)
    assert any("resumed" in s and "step 40" in s for s in logs)
    assert res2["state"]["step"] == 43 and res2["history"]["loss"][:40] == loss
    # the EMA model in the checkpoint loads as a plain model
    from gdlib.checkpoint import load_tensors
    tensors, meta = load_tensors(ckpt)
    ema = TextToImage.from_tensors(tensors, meta, prefix="ema.")
    np.testing.assert_allclose(ema.unet.conv_in.weight.numpy(), res2["ema"].unet.conv_in.weight.numpy())
    # a different model config in the same run directory is refused with a clear message
    other = tiny_train_config(tmp_path, steps=44)
    other.model.unet.base_channels = 8
    with pytest.raises(ValueError, match="other options: .*model.unet.base_channels 16 -> 8"):
        T.train_base(other, progress=False, log=lambda s: None)


def test_nan_loss_stops_with_a_clear_error(tmp_path, monkeypatch):
    real = toyworld.make_dataset

    def poisoned(*a, **k):
        d = real(*a, **k)
        d["images"][:] = np.nan
        return d

    monkeypatch.setattr(toyworld, "make_dataset", poisoned)
    with pytest.raises(FloatingPointError, match="loss is nan .*at step 0, 3 steps in a row"):
        T.train_base(tiny_train_config(tmp_path, steps=2), progress=False, log=lambda s: None)


def test_one_non_finite_batch_is_skipped_without_touching_the_weights(tmp_path, monkeypatch):
    """A single NaN batch costs one step: weights, Adam moments and the step count stay as they were."""
    real, calls = core.noised_batch, []

    def poisoned_once(*a, **k):
        x_t, t, target = real(*a, **k)
        calls.append(1)
        return (x_t, t, target * np.nan) if len(calls) == 2 else (x_t, t, target)

    monkeypatch.setattr(T, "noised_batch", poisoned_once)
    logs = []
    res = T.train_base(tiny_train_config(tmp_path, steps=3), progress=False, log=logs.append)
    assert res["state"]["step"] == 3 and len(calls) == 4  # 3 updates + 1 skipped batch
    assert any("step 1: loss nan" in line and "update skipped" in line for line in logs), logs
    assert all(np.isfinite(p.numpy()).all() for p in res["model"].parameters())


def test_held_out_styles_are_refused(tmp_path):
    with pytest.raises(ValueError, match="held-out"):
        T.train_base(tiny_train_config(tmp_path, styles=["flat", toyworld.HELDOUT_STYLES[0]]),
                     progress=False, log=lambda s: None)


def test_cli_parses_model_options():
    a = _parser().parse_args(["--out", "x", "--base-channels", "32", "--channel-mult", "1,2", "--minutes", "5"])
    cfg = T.config_from_args(a)
    assert cfg.model.unet.base_channels == 32 and cfg.model.unet.channel_mult == (1, 2) and cfg.minutes == 5
    with pytest.raises(ValueError, match="channel-mult"):
        T.config_from_args(_parser().parse_args(["--channel-mult", "one"]))


def test_cli_parses_attention_resolutions():
    a = _parser().parse_args(["--attn-resolutions", "16,8,4", "--self-attn-resolutions", "8,4"])
    u = T.config_from_args(a).model.unet
    assert u.attn_resolutions == (16, 8, 4) and u.self_attn_resolutions == (8, 4)
    with pytest.raises(ValueError, match="subset"):
        T.config_from_args(_parser().parse_args(["--attn-resolutions", "8", "--self-attn-resolutions", "16"]))
    with pytest.raises(ValueError, match="attn-resolutions"):
        T.config_from_args(_parser().parse_args(["--attn-resolutions", "x"]))


def test_pretraining_captions_are_drawn_from_every_template(tmp_path):
    from conftest import tiny_model

    model = tiny_model()
    ds = T._load_data(tiny_train_config(tmp_path), model)
    n = len(ds["captions"])
    assert ds["templates"] == list(toyworld.CAPTION_TEMPLATES) and ds["ids"].shape[:2] == (len(ds["templates"]), n)
    assert abs(ds["template_p"].sum() - 1) < 1e-12
    for i in range(n):
        s, o = toyworld.STYLES[ds["style_idx"][i]], toyworld.OBJECTS[ds["object_idx"][i]]
        for k, name in enumerate(ds["templates"]):
            words = model.tokenizer.split(toyworld.caption(s, o, name))
            assert model.tokenizer.decode(ds["ids"][k, i]) == " ".join(words)
    single = T._load_data(tiny_train_config(tmp_path, caption_mix=False), model)
    assert single["templates"] == ["style"] and single["ids"].shape[0] == 1
    assert T.config_from_args(_parser().parse_args(["--single-template"])).caption_mix is False
