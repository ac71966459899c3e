# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 08 · Flow matching and few-shot image editing (PhotoDoodle in miniature)
#
# Notebooks 01–07 generated images from text with a UNet trained as a diffusion model. Two things changed in the
# systems that followed Stable Diffusion 2: the network became a **transformer over image patches** (DiT; SD3 and
# FLUX use its MM-DiT form, where text tokens and image tokens attend to each other in one sequence), and the
# training objective became **flow matching** on a straight path from data to noise. PhotoDoodle (Huang et al.
# 2025) builds on that family to learn an **artistic image edit from a few before/after pairs**: it pretrains an
# instruction editor ("OmniEditor") and then fits a small LoRA ("EditLoRA") for each new edit.
#
# This notebook builds all of it at ToyWorld scale and measures it:
#
# **What you will learn**
# 1. Flow matching: the linear path, the velocity target, and why Euler on this ODE *is* DDIM (checked to float
#    precision against `gdlib.sampling.sample_ddim` on notebook 01's exact mixture).
# 2. The editor's anatomy: patch tokens, adaptive LayerNorm on t, instruction tokens joined to image tokens, and
#    PhotoDoodle's trick: the **source image enters as noise-free tokens that reuse the target's position
#    encodings**, and the loss is on the target tokens only.
# 3. What the pretrained editor does on held-out edit pairs of the styles it knows, against SDEdit with the UNet
#    (background kept vs redrawn), with paired intervals.
# 4. EditLoRA: a rank-4 LoRA fitted live on 20 pairs of a **new** edit (restyling into a style the editor never saw),
#    its setting chosen on a validation style, then compared on test styles with the editor without EditLoRA and with
#    SDEdit through a DoRA style adapter fitted on the same 20 target images.
# 5. The `pairs.jsonl` folder format and the `gdlib train-edit` / `gdlib edit` commands.
#
# The editor was pretrained once with `gdlib train-editor` (its card, printed below, has the command, the budget
# and held-out metrics); everything else runs here in a few minutes on a laptop CPU.

# %%
# Setup: imports, seed, knobs.
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from gdlib import runtime
jt = runtime.setup_jittor()          # always through gdlib: it wires the CPU/oneDNN runtime first
from gdlib import edit as E
from gdlib import flow, mixture, plot, stats, toyworld, widgets
from gdlib import sampling as S
from gdlib.config import DEFAULT_EDITOR, EditLoRAConfig, StyleConfig
from gdlib.finetune import finetune_style
from gdlib.models.dit import Editor, patchify
from gdlib.models.evaluators import load_evaluators
from gdlib.schedules import NoiseSchedule
from gdlib.sdedit import sdedit
from gdlib.styledata import load_base, style_prompt

SEED = 0
EDIT_STEPS = 20                    # Euler steps of the editor's flow ODE
N_HELDOUT = 40                     # held-out pairs per edit kind in section 3
SDEDIT_STRENGTHS = (0.6, 0.9, 1.0)  # SDEdit's start time (0: keep the source, 1: start from noise)
VAL_STYLE = "watercolor"           # EditLoRA's step budget is chosen on this validation style only ...
TEST_STYLES = ["stitch", "thermal"]  # ... and reported on these test styles
N_PAIRS = 20                       # few-shot pairs of the new edit (PhotoDoodle uses 10-30)
N_EVAL = 30                        # held-out pairs per new style
LORA_STEP_CHOICES = (100, 300)     # EditLoRA budgets compared on the validation style
ev = load_evaluators()
t_start = time.time()


def interval(a, b, clusters):
    """Paired bootstrap (95%) of mean(a - b), resampling clusters (the object of each pair), then pairs inside."""
    return stats.paired_difference(stats.by_cluster(a, clusters), stats.by_cluster(b, clusters))


# %% [markdown]
# ## 1. Flow matching
#
# Take data $x_0$ and Gaussian noise $\varepsilon$ and join them by a straight line (rectified flow, Liu et al.
# 2023; flow matching, Lipman et al. 2023; SD3 uses exactly this path, with $t=0$ the data and $t=1$ the noise):
#
# $$x_t = (1-t)\,x_0 + t\,\varepsilon, \qquad u = \frac{dx_t}{dt} = \varepsilon - x_0 .$$
#
# The network $v_\theta(x_t, t)$ regresses the velocity: $\mathcal L = \mathbb E\,\lVert v_\theta(x_t,t) -
# (\varepsilon - x_0)\rVert^2$. Its minimiser is the conditional mean
# $v^*(x,t) = \mathbb E[\varepsilon - x_0 \mid x_t = x] = (x - \mathbb E[x_0\mid x_t=x])/t$, and integrating
# $dx/dt = v^*(x, t)$ from $t=1$ (noise) to $t=0$ carries the noise distribution to the data distribution.
#
# **The link to the diffusion models of notebooks 01–07.** Divide by $r_t=\sqrt{(1-t)^2+t^2}$:
# $x_t/r_t = \sqrt{\bar\alpha}\,x_0 + \sqrt{1-\bar\alpha}\,\varepsilon$ with $\sqrt{\bar\alpha} = (1-t)/r_t$ — a VP
# point (Ho et al. 2020, Eq. 4). Same data, same noise, only a different scale and clock; both have the same
# noise-to-signal ratio $\sigma = t/(1-t) = \sqrt{(1-\bar\alpha)/\bar\alpha}$. So a flow model and an
# $\varepsilon$- or $v$-model of the same data know the same $\mathbb E[x_0\mid x_t]$, and the velocity converts:
# $u = \hat\varepsilon - \hat x_0$, or from a $v$-prediction (Salimans & Ho 2022) $u = (a+s)\,v + (s-a)\,x_t/r_t$
# with $a=\sqrt{\bar\alpha}$, $s=\sqrt{1-\bar\alpha}$.
#
# **Euler on the flow ODE is DDIM.** One Euler step from $t$ to $t'$ with $u = \hat\varepsilon - \hat x_0$ gives
# $x_t + (t'-t)(\hat\varepsilon - \hat x_0) = (1-t')\,\hat x_0 + t'\,\hat\varepsilon$ (using
# $x_t = (1-t)\hat x_0 + t\hat\varepsilon$): predict the clean image and the noise, then put them back together at
# the next time. That is DDIM's deterministic update (Song et al. 2021a, Eq. 12) in the flow's scale. The cells
# below check the identities with `gdlib.flow`, then the whole sampler on notebook 01's exact Gaussian mixture.

# %%
rng = np.random.default_rng(SEED)
x0, eps = rng.standard_normal((2, 500, 2))
for t in (0.1, 0.5, 0.9):
    x_t = flow.interpolate(x0, eps, t)
    r, abar = flow.vp_scale(t)
    a, s = np.sqrt(abar), np.sqrt(1 - abar)
    assert np.allclose(x_t / r, a * x0 + s * eps)                              # a VP point at abar(t)
    assert np.isclose(t / (1 - t), s / a)                                      # same noise-to-signal ratio
    u = flow.velocity_target(x0, eps)
    assert np.allclose(flow.velocity_from_eps(x_t, eps, t), u)                 # u from an eps-prediction
    assert np.allclose(flow.velocity_from_x0(x_t, x0, t), u)                   # u from an x0-prediction
    assert np.allclose(flow.velocity_from_v(x_t, a * eps - s * x0, t), u)      # u from a v-prediction
print("path, VP scale and the three conversions agree with gdlib.flow at t = 0.1, 0.5, 0.9")

# %% [markdown]
# Now the samplers. The ring mixture of notebook 01 has an exact $\mathbb E[x_0\mid x_t]$, hence an exact velocity
# (`flow.mixture_velocity`) and an exact $\varepsilon$ for DDIM (`mixture.model`). Run DDIM for 20 steps from
# $x_T$, and Euler on the flow ODE over the **matched** times $t_i = s_i / (a_i + s_i)$ (same $\sigma$) from
# $x_T / (a_T + s_T)$, the same point in the flow's scale: the two end points should agree to float precision.

# %%
mix = mixture.ring_mixture()
schedule = NoiseSchedule()                     # DDPM's linear schedule, epsilon-prediction, as notebook 01
n_steps = 20
x_T = np.random.default_rng(1).standard_normal((2000, 2)).astype(np.float32)
ddim_out = S.sample_ddim(mix.model(schedule), jt.array(x_T), schedule, n_steps).numpy()

abars = [schedule.abar(int(t)) for t in schedule.timesteps(n_steps)] + [schedule.final_alpha_cumprod]
t_match = np.array([np.sqrt(1 - ab) / (np.sqrt(ab) + np.sqrt(1 - ab)) for ab in abars])
a_T, s_T = np.sqrt(abars[0]), np.sqrt(1 - abars[0])
flow_paths = []
flow_out = flow.sample_euler_flow(flow.mixture_velocity(mix), x_T.astype(np.float64) / (a_T + s_T), t_match,
                                  callback=lambda d: flow_paths.append(d["x"][:16]))
gap = float(np.abs(flow_out - ddim_out).max())
print(f"flow times: {t_match[0]:.4f} -> {t_match[-1]:.4f}; max |Euler-flow - DDIM| over 2000 points: {gap:.2e}")
assert gap < 1e-3, gap                          # the same sampler (DDIM runs in float32)

# and both reach the data distribution: sliced Wasserstein distance to exact samples, beside the floor of two
# independent exact samples of the same size
exact = mix.sample(2000, 7)
swd = {"Euler flow": mixture.sliced_wasserstein(flow_out, exact),
       "Heun flow (10 steps, 19 calls)": mixture.sliced_wasserstein(
           flow.sample_heun_flow(flow.mixture_velocity(mix), x_T.astype(np.float64), flow.flow_timesteps(10)), exact),
       "floor: exact vs exact": mixture.sliced_wasserstein(mix.sample(2000, 8), exact)}
for k, v in swd.items():
    print(f"SWD {k:32s} {v:.4f}")
assert swd["Euler flow"] < 3 * swd["floor: exact vs exact"]
flow_paths.append(flow_out[:16])
fig = plot.points_2d({"exact": exact, "Euler flow = DDIM": flow_out}, paths=np.stack(flow_paths),
                     title="flow ODE from noise (t = 1) to data (t = 0)")
plt.show()

# %% [markdown]
# The paths are nearly straight at the start and bend only near the data, where $\mathbb E[x_0\mid x_t]$ decides
# which arm of the ring a point belongs to. SD3 spends more steps at high noise with a time **shift**
# (`flow.flow_timesteps(n, shift)`); the editor below uses uniform times.
#
# ## 2. The editor's anatomy
#
# The editor is a small DiT (`gdlib.models.dit`). One sequence per example, all attending to each other in every
# block (MM-DiT's joint attention, simplified to shared weights):
#
# | tokens | how many | what they carry |
# |---|---|---|
# | instruction | 12 | the toy text encoder's output ("make it pixel", "replace cat with fish") |
# | source | 64 | the **clean** source image, 4x4-pixel patches, plus a learned "source" embedding |
# | target | 64 | the **noisy** target $x_t$, same patches |
#
# Time enters through adaptive LayerNorm (adaLN-Zero: every block starts as the identity). The velocity is read
# from the target tokens only, and the loss is on them only. PhotoDoodle's detail that makes editing precise: the
# source tokens get **the same position encodings as the target tokens** (cloned), so "the patch at (3, 5) of the
# source" and "the patch at (3, 5) of what I am drawing" line up from the first layer.

# %%
editor = Editor.load(DEFAULT_EDITOR)
card = json.loads((Path(DEFAULT_EDITOR).parent / "model_card.json").read_text())
print(f"editor: {editor.num_parameters():,} parameters; {card['steps']} steps in {card['train_minutes']} min "
      f"(batch {card['batch_size']}); trained by\n  {card['command']}")
cfg = editor.config
pair = E.make_pair("swap", "paper", "cat", 11, "fish", cfg.image_size)
src = toyworld.to_float(pair["source"][None])
tokens = patchify(jt.array(src), cfg.patch).numpy()
grid = cfg.image_size // cfg.patch
print(f"{cfg.image_size} px / patch {cfg.patch} = {grid}x{grid} = {tokens.shape[1]} tokens of "
      f"{tokens.shape[2]} numbers (3 x {cfg.patch} x {cfg.patch}) per image")
with jt.no_grad():
    e = editor.dit.embed(jt.array(np.zeros_like(src)), jt.array([0.5]), jt.array(src), jt.array(editor.encode([pair["caption"]])))
assert np.array_equal(e["pos_source"].numpy(), e["pos_target"].numpy())   # the cloned position encodings
print("sequence:", {k: tuple(e[k].shape) for k in ("text", "source", "target")})
patches = tokens[0].reshape(-1, 3, cfg.patch, cfg.patch)
fig = plot.image_grid(np.concatenate([src, toyworld.to_float(pair["target"][None]),
                                      np.repeat(pair["mask"][None, None], 3, 1).astype(np.float32) * 2 - 1]),
                      titles=["source", f"target: '{pair['caption']}'", "edit mask (ToyWorld knows it)"])
plt.show()
fig = plot.image_grid(patches, nrow=grid, scale=0.35, suptitle="the source as the DiT sees it: 64 patch tokens")
plt.show()

# %% [markdown]
# ## 3. The pretrained editor on held-out pairs
#
# Pretraining drew fresh pairs every step from two edit kinds over the 12 known styles and 15 objects: **restyle**
# ("make it neon": same object instance, another style) and **swap** ("replace cat with fish": another object drawn
# into the same background; outside the edit mask the target *is* the source). Below are pairs from seeds that
# pretraining never drew, against **SDEdit** (Meng et al. 2022) with the course's UNet: noise the source to a
# strength $s$ and denoise with the prompt of the wanted result ("a paper painting of a fish"). SDEdit knows no
# "source": whatever it keeps, it keeps because the noise did not erase it, so its strength is a dial between keeping
# the layout and following the prompt. We show three settings of the dial.

# %%
base = load_base()
held = {kind: E.heldout_pairs(kind, N_HELDOUT, seed=SEED + 1, size=cfg.image_size) for kind in ("swap", "restyle")}
rows, outs = {}, {}
for kind, pairs in held.items():
    b = E.stack_pairs(pairs)
    outs[kind] = {"editor": E.edit(editor, b["sources"], b["captions"], steps=EDIT_STEPS, seed=SEED)}
    prompts = [toyworld.caption(p["target_style"], p["target_object"]) for p in pairs]
    for s in SDEDIT_STRENGTHS:
        outs[kind][f"SDEdit {s}"] = sdedit(base, b["sources"], prompts, strength=s, num_inference_steps=20, seed=SEED)
    rows[kind] = {name: E.score_pairs(o, pairs, ev) for name, o in outs[kind].items()}
    print(f"{kind} ({N_HELDOUT} held-out pairs)")
    for name, sc in rows[kind].items():
        bg = "" if kind == "restyle" else f", background error {np.nanmean(sc['background_mae']):.3f}"
        print(f"   {name:11s} target style {sc['style_ok'].mean():.2f}, target object {sc['content_ok'].mean():.2f}, "
              f"PSNR to the exact target {sc['psnr'].mean():5.1f} dB{bg}")

b = E.stack_pairs(held["swap"])
k = 6
fig = plot.image_grid(np.concatenate([b["sources"][:k], b["targets"][:k]] + [o[:k] for o in outs["swap"].values()]),
                      nrow=k, titles=list(b["captions"][:k]) + [""] * ((1 + len(outs["swap"])) * k),
                      row_labels=["source", "exact target"] + list(outs["swap"]))
plt.show()

# %%
objs = [p["object"] for p in held["swap"]]
objs_r = [p["object"] for p in held["restyle"]]
sw, rs = rows["swap"], rows["restyle"]
d = {}
for s in SDEDIT_STRENGTHS:
    o = f"SDEdit {s}"
    d[s] = {"bg": interval(sw["editor"]["background_mae"], sw[o]["background_mae"], objs),
            "obj": interval(sw["editor"]["content_ok"], sw[o]["content_ok"], objs),
            "sty": interval(rs["editor"]["style_ok"], rs[o]["style_ok"], objs_r),
            "psnr": interval(rs["editor"]["psnr"], rs[o]["psnr"], objs_r)}
    print(f"editor - {o}: swap background error {stats.format_interval(d[s]['bg'])}, target object "
          f"{stats.format_interval(d[s]['obj'], 2)} | restyle target style {stats.format_interval(d[s]['sty'], 2)}, "
          f"PSNR {stats.format_interval(d[s]['psnr'], 1)} dB")
assert d[1.0]["bg"]["hi"] < 0                        # the editor keeps the background better than SDEdit from noise
assert d[0.6]["sty"]["lo"] > 0 and d[0.6]["psnr"]["lo"] > 0   # and restyles where gentle SDEdit does not

# %% [markdown]
# **Reading it.** SDEdit's dial is visible in the table: at strength 0.6 it keeps the background (and the source's
# object, and on this small model even the source's colours, so it rarely reaches the asked style); at 1.0 it follows
# the prompt and redraws the whole picture, background included. The editor sits where SDEdit cannot: it keeps the
# background outside the edit (its background error is clearly below SDEdit's at strength 1.0, asserted) *and*
# restyles (far above gentle SDEdit, asserted). It is not better at everything: read the intervals above for the
# asked object in swaps, where SDEdit at 0.9 drew it more often than this 0.8 M-parameter editor on this run; the
# editor trades some edit success for faithfulness to the source. That is the trade PhotoDoodle makes on purpose.
# %% [markdown]
# Turn the knobs on a few held-out sources: the instruction, the number of ODE steps, Euler vs Heun, and
# classifier-free guidance on the instruction ($v = v(\varnothing) + w\,(v(c) - v(\varnothing))$; the editor was
# trained with 10% of instructions dropped, so it has both).

# %%
demo = [E.make_pair("swap", st, ob, 5, "car", cfg.image_size) for st, ob in (("flat", "cat"), ("neon", "fish"),
                                                                                ("chalk", "tree"))]
explorer = widgets.edit_explorer(editor, E.stack_pairs(demo)["sources"],
                                 ["replace cat with car", "make it pixel", "make it sepia", "replace fish with bird",
                                  "make it neon"], titles=[f"{p['style']} {p['object']}" for p in demo], seed=SEED)
explorer.update()
assert explorer.error is None
explorer.controls["steps"].value = 4
assert explorer.error is None and explorer.result.shape == (3, 3, cfg.image_size, cfg.image_size)
explorer.widget

# %% [markdown]
# ## 4. EditLoRA: a new edit from 20 pairs
#
# The new edit: **restyle into a style the editor never saw** ("make it watercolor"). The instruction's style word
# is in the vocabulary, but no pretraining pair ever showed that style, so the editor alone has nothing to draw it
# with. EditLoRA (PhotoDoodle's name for it) freezes the editor and fits a rank-4 LoRA on the attention projections
# of its DiT blocks with the same flow-matching loss, on 20 pairs.
#
# **Choosing the settings on the validation style only.** On "watercolor" we compare two EditLoRA step budgets, and
# the SDEdit strengths for the baseline below, and keep the best of each (by target style + object accuracy; ties go
# to the cheaper / lower); the test styles are not looked at until both are fixed.

# %%
def fresh_editor():
    return Editor.load(DEFAULT_EDITOR)


def new_edit_data(style):
    train = E.restyle_pairs(style, N_PAIRS, seed=SEED, size=cfg.image_size)
    test = E.restyle_pairs(style, N_EVAL, seed=SEED + 100, size=cfg.image_size)
    return train, test


def edit_lora(style, train, steps):
    ed = fresh_editor()
    t0 = time.time()
    res = E.train_edit_lora(E.stack_pairs(train), ed, EditLoRAConfig(steps=steps, seed=SEED), progress=False)
    return ed, res, time.time() - t0


val_train, val_test = new_edit_data(VAL_STYLE)
vb = E.stack_pairs(val_test)
val = {}
for steps in LORA_STEP_CHOICES:
    ed, res, secs = edit_lora(VAL_STYLE, val_train, steps)
    sc = E.score_pairs(E.edit(ed, vb["sources"], vb["captions"], steps=EDIT_STEPS, seed=SEED), val_test, ev)
    val[steps] = sc
    print(f"{VAL_STYLE}: EditLoRA {steps} steps ({secs:.0f} s): style {sc['style_ok'].mean():.2f}, object "
          f"{sc['content_ok'].mean():.2f}, PSNR {sc['psnr'].mean():.1f} dB")
LORA_STEPS = max(LORA_STEP_CHOICES, key=lambda s: (val[s]["style_ok"].mean() + val[s]["content_ok"].mean(), -s))
print("EditLoRA budget chosen on the validation style:", LORA_STEPS, "steps")


def fit_dora(style, train):
    """The course's DoRA style adapter (default rank and budget) fitted on the training pairs' targets, with instance
    captions "a style_08 painting of a {object}" (decoupled captions need one object category; these pairs mix)."""
    trb = E.stack_pairs(train)
    t0 = time.time()
    ft = finetune_style(dict(images=trb["targets"], objects=[p["object"] for p in train], sid="08", style=style,
                             prompts={}, path=None), config=StyleConfig(caption_mode="instance"), progress=False, log=lambda *_: None)
    return ft, time.time() - t0


def dora_sdedit(ft, test, strength):
    b = E.stack_pairs(test)
    return sdedit(ft["model"], b["sources"], [style_prompt(ft["info"], p["object"]) for p in test],
                  strength=strength, num_inference_steps=20, seed=SEED)


ft_val, _ = fit_dora(VAL_STYLE, val_train)
val_sd = {s: E.score_pairs(dora_sdedit(ft_val, val_test, s), val_test, ev) for s in SDEDIT_STRENGTHS}
for s_, sc in val_sd.items():
    print(f"{VAL_STYLE}: SDEdit + DoRA at strength {s_}: style {sc['style_ok'].mean():.2f}, object "
          f"{sc['content_ok'].mean():.2f}, PSNR {sc['psnr'].mean():.1f} dB")
SD_STRENGTH = max(SDEDIT_STRENGTHS, key=lambda s_: (val_sd[s_]["style_ok"].mean() + val_sd[s_]["content_ok"].mean(), -s_))
print("SDEdit strength chosen on the validation style:", SD_STRENGTH)

# %% [markdown]
# **The test.** For each test style: 20 training pairs, 30 held-out pairs (other instances, source styles and
# objects). Three ways to make the edit:
# - **editor alone**: the pretrained editor with the instruction "make it stitch";
# - **EditLoRA**: the same, with the LoRA fitted on the 20 pairs;
# - **SDEdit + DoRA**: what notebooks 03–06 would do — fit the course's DoRA style adapter (instance captions) on the
#   20 *target* images, then SDEdit the source with the adapter's prompt for its object, at the strength chosen on
#   the validation style.
#
# Edit success is measured by the evaluators (does the result show the new style? is it still the same object?),
# and faithfulness by PSNR to the exact target, which ToyWorld renders: same instance, new style.

# %%
results, examples, loras = {}, {}, {}
for style in TEST_STYLES:
    train, test = new_edit_data(style)
    tb = E.stack_pairs(test)
    out_alone = E.edit(fresh_editor(), tb["sources"], tb["captions"], steps=EDIT_STEPS, seed=SEED)
    ed, res, secs_lora = edit_lora(style, train, LORA_STEPS)
    out_lora = E.edit(ed, tb["sources"], tb["captions"], steps=EDIT_STEPS, seed=SEED)
    ft, secs_dora = fit_dora(style, train)
    out_sd = dora_sdedit(ft, test, SD_STRENGTH)
    results[style] = {"editor alone": E.score_pairs(out_alone, test, ev), "EditLoRA": E.score_pairs(out_lora, test, ev),
                      "SDEdit + DoRA": E.score_pairs(out_sd, test, ev)}
    examples[style], loras[style] = (tb, out_alone, out_lora, out_sd), ed
    print(f"{style}: EditLoRA fitted in {secs_lora:.0f} s, DoRA in {secs_dora:.0f} s")
    for name, sc in results[style].items():
        print(f"   {name:14s} style {sc['style_ok'].mean():.2f}, object {sc['content_ok'].mean():.2f}, "
              f"PSNR to the exact target {sc['psnr'].mean():5.1f} dB")

# %%
for style in TEST_STYLES:
    tb, out_alone, out_lora, out_sd = examples[style]
    k = 6
    fig = plot.image_grid(np.concatenate([tb["sources"][:k], tb["targets"][:k], out_alone[:k], out_lora[:k], out_sd[:k]]),
                          nrow=k, row_labels=["source", "exact target", "editor alone", "EditLoRA", "SDEdit+DoRA"],
                          suptitle=f"'make it {style}' on held-out pairs")
    plt.show()

# %%
def pooled(name, key):
    return np.concatenate([results[s][name][key] for s in TEST_STYLES])


test_objs = [p["object"] for s in TEST_STYLES for p in new_edit_data(s)[1]]
cmp = {}
for other in ("editor alone", "SDEdit + DoRA"):
    cmp[other] = {key: interval(pooled("EditLoRA", key), pooled(other, key), test_objs)
                  for key in ("style_ok", "content_ok", "psnr")}
    print(f"EditLoRA - {other:14s}: style {stats.format_interval(cmp[other]['style_ok'], 2)}, object "
          f"{stats.format_interval(cmp[other]['content_ok'], 2)}, PSNR {stats.format_interval(cmp[other]['psnr'], 1)} dB")
fig = plot.grouped_bars({name: {"new style": pooled(name, "style_ok").mean(), "same object": pooled(name, "content_ok").mean(),
                                "PSNR / 30 dB": pooled(name, "psnr").mean() / 30}
                         for name in ("editor alone", "EditLoRA", "SDEdit + DoRA")},
                        ["new style", "same object", "PSNR / 30 dB"], title=f"test styles {TEST_STYLES}, {N_EVAL} pairs each")
plt.show()
assert cmp["editor alone"]["style_ok"]["lo"] > 0        # EditLoRA teaches the editor the new style ...
assert cmp["SDEdit + DoRA"]["style_ok"]["lo"] > 0 and cmp["SDEdit + DoRA"]["psnr"]["lo"] > 0   # ... better than SDEdit

# %% [markdown]
# **Reading it.** The editor alone does not know the new style: asked "make it stitch" it does something else
# (near-zero style accuracy). Twenty pairs and a LoRA fitted in seconds teach it the edit: style accuracy far above
# the editor alone, and above SDEdit through a DoRA adapter fitted on the same 20 target images (both intervals
# exclude zero, asserted), while staying closer to the exact target (PSNR, asserted against SDEdit). Why SDEdit +
# DoRA falls behind here: the DoRA adapter learns the style from 20 images, but SDEdit must then choose between
# keeping the source (low strength: the source's style survives) and following the adapter (high strength: the
# instance is redrawn); the strength chosen on the validation style was the highest. EditLoRA learns the mapping
# *from* a source *to* its edit, which is what the task asks. Whether the object is kept better than by the
# baselines: read its interval above; this run supports no claim about it against SDEdit + DoRA.

# %% [markdown]
# ## 5. Your own pairs: `pairs.jsonl`, `gdlib train-edit`, `gdlib edit`
#
# A pairs folder is what PhotoDoodle's training code reads: one JSON object per line with the source and target
# image paths (relative to the folder) and the instruction; `mask` is optional.
#
# ```
# {"source": "source/0000.png", "target": "target/0000.png", "caption": "make it stitch"}
# ```
#
# `gdlib train-edit FOLDER --out my_edit.safetensors` fits an EditLoRA on it (plus a card beside the adapter) and
# `gdlib edit --adapter my_edit.safetensors --source photo.png --caption "make it stitch" --out edited.png` applies
# it. Below, the test style's pairs are written in that format and the command line edits one held-out source with
# the adapter saved from section 4.

# %%
from gdlib.adapters import save_adapter

work = Path(tempfile.mkdtemp(prefix="gdlib_nb08_"))
style = TEST_STYLES[0]
folder = E.write_pairs(work / "pairs", new_edit_data(style)[0])
print((folder / "pairs.jsonl").read_text().splitlines()[0])
assert len(E.load_pairs(folder)["captions"]) == N_PAIRS
save_adapter(loras[style].dit.blocks, work / f"{style}.safetensors")   # the EditLoRA fitted in section 4
tb = examples[style][0]
src_png = work / "source.png"
plt.imsave(src_png, plot.to_uint8(tb["sources"][:1])[0])
cmd = [sys.executable, "-m", "gdlib.cli", "edit", "--adapter", str(work / f"{style}.safetensors"), "--source",
       str(src_png), "--caption", f"make it {style}", "--out", str(work / "edited.png")]
print("$ gdlib " + " ".join(cmd[3:]))
p = subprocess.run(cmd, capture_output=True, text=True)
print(p.stdout.strip() or p.stderr.strip())
assert p.returncode == 0
from gdlib.imageio import load_image
cli_out = load_image(work / "edited.png", cfg.image_size)[None]
fig = plot.image_grid(np.concatenate([tb["sources"][:1], cli_out, tb["targets"][:1]]),
                      titles=["source.png", "gdlib edit", "exact target"])
plt.show()
print(f"notebook ran in {time.time() - t_start:.0f} s")

# %% [markdown]
# ## Summary
#
# - Flow matching regresses the velocity $\varepsilon - x_0$ on the straight path $x_t = (1-t)x_0 + t\varepsilon$.
#   It is the same family as the diffusion models before: rescaled, $x_t$ is a VP point with the same
#   noise-to-signal ratio, the velocity converts from $\hat\varepsilon$, $\hat x_0$ or $v$, and **Euler on the flow
#   ODE is DDIM** (checked above on an exact mixture to float precision).
# - The editor is a DiT over instruction, clean-source and noisy-target tokens, with the source reusing the target's
#   position encodings; trained only on ToyWorld's exact edit pairs of known styles, it swaps objects while keeping
#   the background far better than SDEdit, which redraws everything its noise touched.
# - SDEdit has one dial, keep the layout or follow the prompt; the editor keeps the background and still edits, at
#   some cost in how often a swap draws the asked object (section 3's intervals).
# - For a new edit it has never seen, EditLoRA (a rank-4 LoRA fitted on 20 pairs in seconds) teaches it the edit:
#   on the test styles its style accuracy and PSNR to the exact target beat both the editor alone and SDEdit through
#   the course's own DoRA style adapter, with the intervals printed in section 4.
#
# ## Exercises
#
# 1. Swap Euler for Heun in section 1 and plot the SWD against the number of model calls for both.
# 2. In the explorer, set the CFG scale to 3 on "replace cat with car": what happens to the background?
# 3. Fit EditLoRA with 5 and with 10 pairs instead of 20 (`N_PAIRS`); where does style accuracy start to fall?
# 4. Make a pairs folder of your own edit (e.g. draw a frame around ToyWorld images with PIL) and run
#    `gdlib train-edit` on it; check the background error outside your frame with `E.background_error`.
