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
# # 02 · A toy text-to-image model
#
# The rest of the course personalizes a **text-to-image diffusion model**. Stable Diffusion needs a GPU and
# gigabytes of weights; here we use a model of the same *shape* that runs on a laptop CPU: a small UNet that
# denoises 32 px ToyWorld images, conditioned on a caption through **cross-attention**, sampled with DDIM and
# **classifier-free guidance (CFG)**. The base checkpoint in `gdlib/data/base/` was trained with `gdlib train-base` on
# the *known* ToyWorld styles only; the held-out styles are what later notebooks teach it from a few images.
#
# **What you will learn**
# 1. ToyWorld: objects x styles, captions drawn from several templates like a real training set, and which styles
#    the base model has never seen.
# 2. Model anatomy: tokenizer -> text encoder -> cross-attention (`to_q` from the image, `to_k`/`to_v` from the text).
# 3. Sampling with CFG: $\hat v = v_\theta(x_t, \varnothing) + w\,(v_\theta(x_t, c) - v_\theta(x_t, \varnothing))$ (the same
#    combination as for $\epsilon$; this base predicts $v$).
# 4. Measuring what the model does: content and style accuracy by independent evaluators, and how they move with $w$.
# 5. The training loop, by running a few steps of it from scratch and watching the loss fall.

# %%
# Setup. Expensive knobs first: lower them on a slow machine.
N_PER_PAIR = 1          # images per known style x object prompt for the live accuracy measurement
CFG_SCALES = [1.0, 1.5, 2.0, 4.0, 7.0]   # the guidance sweep
SWEEP_OBJECTS = 5       # objects per style in the CFG sweep (x 12 known styles)
STEPS = 25              # DDIM steps
DEMO_STEPS = 60         # training steps of the from-scratch demo (tiny model)
SEED = 0

import json
import time
import numpy as np
import matplotlib.pyplot as plt
from gdlib import runtime
jt = runtime.setup_jittor()
from gdlib import toyworld, plot
from gdlib.pipeline import TextToImage, generate, measure_accuracy, DEFAULT_BASE, DEFAULT_GUIDANCE
from gdlib.models.evaluators import load_evaluators
jt.set_global_seed(SEED)
print(runtime.info()["backend"], "| checkpoint:", DEFAULT_BASE)

# %% [markdown]
# ## 1. ToyWorld tour
#
# Every image is an **object** (15 classes in 5 categories) drawn in a **style**. Like a real text-to-image training
# set, an image's caption varies: each time the trainer shows an image it draws one of several templates, with and
# without the style word, with the object's category word, and a short tag form (`toyworld.CAPTION_TEMPLATES`,
# printed below). So every prompt the later notebooks use — `a painting of a cat` (DreamBooth's class prompt),
# `painting of cat` and `animal painting of cat` (decoupled prompts) — is one the base model has read. The base model
# was pretrained on the known styles; the held-out ones never appear in its training data, and they come in two
# groups: *validation* styles, the only ones the course's defaults were tuned on, and *test* styles, used only for
# reported numbers.

# %%
print("objects   :", toyworld.OBJECTS)
print("known     :", toyworld.KNOWN_STYLES)
print("held out  :", toyworld.VALIDATION_STYLES, "(validation) +", toyworld.TEST_STYLES, "(test)")
print("vocabulary:", toyworld.vocabulary())
probs = toyworld.caption_template_probs()
for (name, form), pr in zip(toyworld.CAPTION_TEMPLATES.items(), probs):
    print(f"  template {name:15s} p={pr:.2f}  {form!r:45}  e.g. {toyworld.caption('pixel', 'cat', name)!r}")
tour_objects = toyworld.OBJECTS[::3]
tour = toyworld.make_dataset(toyworld.KNOWN_STYLES, tour_objects, n_per_pair=1, seed=SEED)
print(tour["images"].shape, tour["images"].dtype, float(tour["images"].min()), float(tour["images"].max()))
print("e.g.", tour["captions"][:2])
fig = plot.image_grid(tour["images"], nrow=len(tour_objects), titles=tour_objects * len(toyworld.KNOWN_STYLES),
                      row_labels=toyworld.KNOWN_STYLES, suptitle="ToyWorld: known styles (rows) x objects")
plt.show()
assert not set(toyworld.KNOWN_STYLES) & set(toyworld.HELDOUT_STYLES)

# %%
# Browse the world: one object instance in every style (held-out ones starred); change the object or the seed.
from gdlib import widgets
world = widgets.toyworld_explorer(seed=SEED)
world.update()
before = world.result.copy()
world.controls["obj"].value = "castle"                   # what a learner does with the dropdown
assert world.error is None and world.result.shape == before.shape and not (world.result == before).all()
world.widget

# %% [markdown]
# ## 2. Model anatomy
#
# Three parts, all in `gdlib`:
#
# * `Tokenizer` — word level over ToyWorld's vocabulary, `<bos> w1 … wn <eos> <pad>…`, with reserved slots
#   for new words such as `sks` (DreamBooth's identifier). Unknown words become `<unk>` **with a warning that
#   lists them** (or a `ValueError` with `strict=True`).
# * `TextEncoder` — token + position embeddings and a small pre-LN transformer: context $c \in \mathbb{R}^{L\times D}$.
# * `UNet` — a pixel-unshuffle (32 px -> 16x16x12), residual blocks whose GroupNorm is modulated by the
#   timestep embedding (FiLM), and transformer blocks at 8x8 and 4x4 with **self-attention** (`attn1`) and
#   **cross-attention** (`attn2`): queries from image tokens, keys and values from the text,
#   $\mathrm{softmax}(Q K^\top/\sqrt d)\,V$ with $Q = h W_q$, $K = c W_k$, $V = c W_v$. The modules are named
#   `to_q`, `to_k`, `to_v`, `to_out.0` as in diffusers, which is how the LoRA/DoRA adapters of notebook 03 find them.
#   The mean of $c$ is also added to the timestep embedding (a global summary of the prompt, as in Imagen).

# %%
model = TextToImage.load(DEFAULT_BASE)
cfg = model.config
print(f"text encoder {sum(int(np.prod(p.shape)) for p in model.text_encoder.parameters()):,} params, "
      f"UNet {sum(int(np.prod(p.shape)) for p in model.unet.parameters()):,} params")
print("UNet config:", cfg.unet)
cross = [(n, m) for n, m in model.unet.named_modules() if n.endswith("attn2.to_k")]
for n, m in cross:
    print(f"{n:40s} W_k {tuple(m.weight.shape)}  (reads the {cfg.text.width}-dim text context)")
assert all(m.weight.shape[1] == cfg.text.width for _, m in cross)

ids = model.tokenizer.encode("a pixel painting of a cat")
print(ids[0], "->", model.tokenizer.decode(ids[0]))
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model.tokenizer.encode("a pixel painting of a zebra")
print("warning:", str(caught[0].message)[:90], "...")

# %% [markdown]
# Where does the text enter? Capture the cross-attention probabilities of the **last cross-attention block of the
# decoder** (the one nearest the output; the cell prints its resolution) for one prompt: each image position
# distributes its attention over the 12 token positions, padding included. Each row of the picture is one image position.

# %%
from gdlib.models import text as text_mod

block = [m for n, m in model.unet.named_modules() if n.endswith("attn2")][-1]
captured = {}
orig = block.execute
def spy(x, context=None):
    B, N, C = x.shape; h = block.heads; d = C // h
    q = block.to_q(x).reshape(B, N, h, d).transpose(0, 2, 1, 3)
    k = block.to_k(context).reshape(B, -1, h, d).transpose(0, 2, 1, 3)
    logits = jt.matmul(q, k.transpose(0, 1, 3, 2)) / np.sqrt(d)
    captured["p"] = jt.nn.softmax(logits, dim=-1).numpy()
    return orig(x, context)
block.execute = spy
prompt = "a neon painting of a fish"
with jt.no_grad():
    x_t = jt.array(np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32))
    model.unet(x_t, 500, model.encode(prompt))
block.execute = orig
p = captured["p"][0].mean(0)             # mean over heads: [image positions, tokens]
side = int(round(np.sqrt(p.shape[0])))
print(f"last decoder cross-attention: {p.shape[0]} image positions ({side}x{side}) x {p.shape[1]} tokens")
tokens = [model.tokenizer.words[i] for i in model.tokenizer.encode(prompt)[0]]
fig, ax = plt.subplots(figsize=(6, 2.5))
ax.imshow(p, aspect="auto", cmap="viridis"); ax.set_xticks(range(len(tokens))); ax.set_xticklabels(tokens, rotation=60, fontsize=7)
ax.set_ylabel("image position"); ax.set_title("cross-attention probabilities (t = 500)"); plt.tight_layout(); plt.show()
np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-4)   # each row is a distribution over tokens

# %%
# The same probabilities as pictures: for each word, where in the image it is read (the 8x8 map upsampled onto a
# sample of this prompt). The object word should light up where the object is, the style word more evenly.
sample = generate(model, [prompt], num_inference_steps=STEPS, guidance_scale=DEFAULT_GUIDANCE, seed=SEED)[0]
words = [(k, w) for k, w in enumerate(tokens) if not w.startswith("<")]
fig, axes = plt.subplots(1, len(words) + 1, figsize=(1.6 * (len(words) + 1), 1.9))
axes[0].imshow(plot.to_uint8(sample[None])[0]); axes[0].set_title("sample", fontsize=8); axes[0].axis("off")
for ax, (k, w) in zip(axes[1:], words):
    amap = p[:, k].reshape(side, side)
    ax.imshow(plot.to_uint8(sample[None])[0], alpha=0.45)
    ax.imshow(np.kron(amap, np.ones((32 // side, 32 // side))), cmap="magma", alpha=0.6)
    ax.set_title(f"{w!r}", fontsize=8); ax.axis("off")
fig.suptitle("cross-attention per token (last decoder block, t = 500)", fontsize=9); plt.tight_layout(); plt.show()
word_mass = {w: float(p[:, k].sum()) for k, w in words}
print("attention mass per word (sum over positions):", {w: round(v, 2) for w, v in word_mass.items()})

# %% [markdown]
# ## 3. Sampling with classifier-free guidance
#
# During training 10% of the captions were replaced by the empty prompt, so one network makes both the conditional
# and the unconditional prediction. This base predicts the velocity $v$ (Section 5), so the two outputs are
# $v_\theta(x_t, c)$ and $v_\theta(x_t, \varnothing)$; CFG combines them exactly as it combines $\epsilon$ predictions, because
# the combination is linear and $v$ is a fixed linear function of $\epsilon$ and $x_0$ at each $t$.
#
# A note on the scale: Ho & Salimans (2022, Eq. 6) write $\tilde\epsilon = (1 + w')\,\epsilon_c - w'\,\epsilon_u$. `gdlib`
# (like diffusers) writes $\hat\epsilon = \epsilon_u + w\,(\epsilon_c - \epsilon_u)$: the same formula with $w = 1 + w'$, so
# $w = 1$ is the plain conditional model and the paper's $w' = 0$. `gdlib.pipeline.cfg_model` runs both predictions in
# one batch; `generate` hands the result to `gdlib.sampling.sample_ddim`. First, check the combination against a direct
# computation, and the paper's form with $w' = w - 1$:

# %%
from gdlib.pipeline import cfg_model
x = jt.array(np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32))
ctx, unc = model.encode(["a ink painting of a tree", "a pop painting of a car"]), model.encode([""])
print("the base predicts:", model.config.prediction_type)
with jt.no_grad():
    v_c = model.unet(x, 400, ctx).numpy()                      # conditional prediction (v here, not eps)
    v_u = model.unet(x, 400, jt.concat([unc, unc])).numpy()    # unconditional prediction
    v_cfg = cfg_model(model, ctx, unc, 4.0)(x, 400).numpy()
np.testing.assert_allclose(v_cfg, v_u + 4.0 * (v_c - v_u), rtol=1e-3, atol=1e-4)
w_paper = 4.0 - 1.0
np.testing.assert_allclose(v_cfg, (1 + w_paper) * v_c - w_paper * v_u, rtol=1e-3, atol=1e-4)
print("CFG matches v_u + w (v_c - v_u) and the paper's (1 + w') v_c - w' v_u with w' = w - 1; |v_c - v_u| mean =",
      float(np.abs(v_c - v_u).mean()))

# %%
grid_styles, grid_objects = toyworld.KNOWN_STYLES[::2], toyworld.OBJECTS[::3]
prompts = [toyworld.caption(s, o) for s in grid_styles for o in grid_objects]
t0 = time.time()
images = generate(model, prompts, num_inference_steps=STEPS, guidance_scale=DEFAULT_GUIDANCE, seed=SEED)
print(f"{len(prompts)} images in {time.time() - t0:.1f} s")
plot.image_grid(images, nrow=len(grid_objects), titles=grid_objects * len(grid_styles), row_labels=grid_styles,
                suptitle=f"base model, {STEPS} DDIM steps, CFG {DEFAULT_GUIDANCE}")
plt.show()

# %% [markdown]
# One image, step by step: the state $x_t$ the sampler holds and the Tweedie estimate $\hat x_0$ the model makes of it
# at each reverse step (`callback` of `gdlib.sampling`). Early on $\hat x_0$ is a blurry average — the layout and
# palette are decided first, the details last.

# %%
traj = []
generate(model, ["a pop painting of a fish"], num_inference_steps=STEPS, guidance_scale=DEFAULT_GUIDANCE, seed=SEED,
         callback=lambda info: traj.append((info["x"].numpy()[0], info["x0_hat"].numpy()[0], int(info["t"]))))
xs, x0s, ts = zip(*traj)
plot.denoising_strip(xs, x0s, ts, n_cols=8, suptitle="a pop painting of a fish: x_t and x0_hat over the reverse steps")
plt.show()
# the estimate sharpens: its change from one step to the next shrinks as t falls
change = [float(np.abs(x0s[k + 1] - x0s[k]).mean()) for k in range(len(x0s) - 1)]
print(f"mean |x0_hat change| per step: first 5 steps {np.mean(change[:5]):.3f}, last 5 steps {np.mean(change[-5:]):.3f}")
assert np.mean(change[-5:]) < np.mean(change[:5])

# %% [markdown]
# Turn the knobs yourself: any style, known or held out, at any CFG scale. A held-out style's name is a word the base
# model has in its vocabulary but never saw drawn, so no guidance scale conjures the style: that is the gap the rest of
# the course fills from a few images.

# %%
cfg_ex = widgets.cfg_explorer(model, num_inference_steps=STEPS, seed=SEED)
cfg_ex.update()
first_images = cfg_ex.result["images"]
cfg_ex.controls["guidance"].value = 4.0
assert cfg_ex.error is None and np.abs(cfg_ex.result["images"] - first_images).mean() > 1e-3
cfg_ex.controls["style"].value = toyworld.TEST_STYLES[0]
assert cfg_ex.error is None and cfg_ex.result["prompts"][0].startswith(f"a {toyworld.TEST_STYLES[0]} painting")
cfg_ex.widget

# %% [markdown]
# ## 4. Measuring the model
#
# Two evaluators trained on ToyWorld (all styles, `gdlib/data/evaluators/`) score each generated image: the content
# classifier says which object it shows, the style classifier which style. We generate one image per known
# style x object prompt and count how often each agrees with the prompt.

# %%
ev = load_evaluators()
t0 = time.time()
acc = measure_accuracy(model, toyworld.KNOWN_STYLES, toyworld.OBJECTS, n_per_pair=N_PER_PAIR,
                       num_inference_steps=STEPS, guidance_scale=DEFAULT_GUIDANCE, seed=SEED, evaluators=ev)
print(f"{acc['n_images']} images, {time.time() - t0:.0f} s: content accuracy {acc['content_accuracy']:.3f}, "
      f"style accuracy {acc['style_accuracy']:.3f}")
for s, r in acc["per_style"].items():
    print(f"  {s:8s} content {r['content']:.2f}  style {r['style']:.2f}")
chance_content, chance_style = 1 / len(toyworld.OBJECTS), 1 / len(toyworld.STYLES)
print(f"chance: content {chance_content:.3f}, style {chance_style:.3f}; course targets: content >= 0.90, style >= 0.85")
print("targets met" if acc["content_accuracy"] >= 0.9 and acc["style_accuracy"] >= 0.85 else
      "targets NOT met by this checkpoint: see gdlib/data/base/model_card.md")
# the course's targets are 0.90 / 0.85 (the card measures them on a seed of its own); 180 images carry about
# +-0.02 of sampling noise, so the live check allows a little below them
assert acc["content_accuracy"] >= 0.85 and acc["style_accuracy"] >= 0.80, acc

# %% [markdown]
# Because the base read its captions in several forms (Section 1), it should draw the object whether or not the
# prompt names a style. The model card measured every template over all 180 known style x object pairs; here the
# card's table, and a live check of the style-less DreamBooth class prompt `a painting of a {object}` (with no style
# word the model picks a known style by itself: the histogram shows which).

# %%
card = json.loads((DEFAULT_BASE.parent / "model_card.json").read_text())
for name, r in card["per_template"].items():
    sty = "   -  " if r["style_accuracy"] is None else f"{r['style_accuracy']:.3f}"
    print(f"card: {r['prompt_form']!r:45} content {r['content_accuracy']:.3f}  style {sty}")
styleless = measure_accuracy(model, toyworld.KNOWN_STYLES[::3], toyworld.OBJECTS, 1, STEPS, DEFAULT_GUIDANCE,
                             seed=SEED + 2, evaluators=ev, template="styleless")
print(f"live, {styleless['prompt_form']!r}: content {styleless['content_accuracy']:.3f} over {styleless['n_images']} "
      f"images; styles it chose: {styleless['styles_drawn']}")
assert card["per_template"]["styleless"]["content_accuracy"] >= 0.85     # the course's target for this prompt
assert styleless["content_accuracy"] >= 0.75                            # 60 live images: allow sampling noise

# %% [markdown]
# ### The CFG scale
#
# $w = 1$ is the plain conditional model, $w > 1$ pushes samples towards what distinguishes the prompt from
# the empty prompt. Sweep it on a subset of prompts and measure:

# %%
sweep_objects = toyworld.OBJECTS[::max(1, len(toyworld.OBJECTS) // SWEEP_OBJECTS)][:SWEEP_OBJECTS]
sweep = {}
for w in CFG_SCALES:
    r = measure_accuracy(model, toyworld.KNOWN_STYLES, sweep_objects, 1, STEPS, w, seed=SEED + 1, evaluators=ev)
    sweep[w] = r
    print(f"w = {w:4.1f}: content {r['content_accuracy']:.3f}  style {r['style_accuracy']:.3f}")
plot.curves({"content": CFG_SCALES, "style": CFG_SCALES},
            {"content": [sweep[w]["content_accuracy"] for w in CFG_SCALES],
             "style": [sweep[w]["style_accuracy"] for w in CFG_SCALES]},
            xlabel="CFG scale w", ylabel="accuracy", title="guidance sweep")
plt.show()
best_w = max(CFG_SCALES, key=lambda w: sweep[w]["content_accuracy"] + sweep[w]["style_accuracy"])
print("best w on this subset:", best_w, "(a well-trained model peaks above w = 1; compare with your checkpoint)")

# %% [markdown]
# ## 5. The training loop, from scratch
#
# `gdlib.train.train_base` is what produced the checkpoint: sample a batch of images and, for each, one of the caption
# templates of Section 1; pick $t \sim U\{0..T-1\}$ and $\epsilon \sim \mathcal N(0, I)$, form
# $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$, drop 10% of captions (for CFG), and regress a target
# with AdamW (warmup, cosine decay), gradient clipping, an EMA copy of the weights and checkpoints that resume.
#
# Which target? The shipped base regresses the **velocity** $v = \sqrt{\bar\alpha_t}\,\epsilon - \sqrt{1-\bar\alpha_t}\,x_0$
# (Salimans & Ho 2022) with uniform loss weights (Min-SNR off); the next cell prints it from the model card. Why not
# $\epsilon$: at the first sampling step of this cosine schedule $\bar\alpha_t$ is about $10^{-9}$, and
# $\hat x_0 = (x_t - \sqrt{1-\bar\alpha_t}\,\hat\epsilon)/\sqrt{\bar\alpha_t}$ multiplies any error of $\hat\epsilon$ by
# $1/\sqrt{\bar\alpha_t}$ — tens of thousands; an $\epsilon$ model drew speckled images here. A $v$ model gives
# $\hat x_0 = \sqrt{\bar\alpha_t}\,x_t - \sqrt{1-\bar\alpha_t}\,\hat v$, bounded at every $t$.
#
# The tiny demo below runs the command with its defaults instead — $\epsilon$ target with Min-SNR weights
# $\min(\mathrm{SNR}_t, 5)/\mathrm{SNR}_t$ (Hang et al. 2023) — on 2 styles x 3 objects for a few dozen steps: enough to
# see the loss fall, not to draw anything.

# %%
print("shipped base:", card["prediction_type"], "| Min-SNR gamma", card["train_config"]["min_snr_gamma"],
      "(0 = off) |", card["steps"], "steps in", card["train_minutes"], "min")
t_first = int(model.schedule.timesteps(STEPS)[0])
abar_first = float(model.schedule.alphas_cumprod[t_first])
print(f"first of {STEPS} DDIM steps: t = {t_first}, alpha_bar = {abar_first:.1e}; an eps error enters x0_hat "
      f"multiplied by 1/sqrt(alpha_bar) = {1 / np.sqrt(abar_first):,.0f}")
assert card["prediction_type"] == model.config.prediction_type == "v_prediction"
assert 1 / np.sqrt(abar_first) > 1e3

# %%
import json
import subprocess
import sys
import tempfile
from gdlib.checkpoint import load_tensors

# The same loop as `gdlib train-base`, run as that command (in a subprocess) on a tiny model.
run_dir = tempfile.mkdtemp(prefix="gdlib_nb02_")
def train_tiny(steps):
    cmd = [sys.executable, "-m", "gdlib.cli", "train-base", "--out", run_dir, "--steps", str(steps), "--minutes", "10",
           "--batch", "8", "--lr", "2e-3", "--warmup", "5", "--n-per-pair", "4", "--base-channels", "16",
           "--channel-mult", "1,2", "--text-width", "16", "--text-layers", "1", "--sample-every", "0", "--no-progress"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stdout[-2000:] + out.stderr[-2000:])
    print("\n".join(line for line in out.stdout.splitlines() if line.startswith(("resumed", "stopped", "data"))))
    return json.loads(load_tensors(f"{run_dir}/ckpt.safetensors")[1]["state"])

t0 = time.time()
state = train_tiny(DEMO_STEPS)
hist = state["history"]
print(f"{state['step']} steps in {time.time() - t0:.0f} s (including start-up)")
plot.curves({"loss": hist["step"]}, {"loss": hist["loss"]}, xlabel="step", ylabel="running loss",
            title="tiny model, from scratch")
plt.show()
first, last = hist["loss"][0], float(np.mean(hist["loss"][-3:]))
print(f"running loss {first:.3f} -> {last:.3f}")
assert last < 0.9 * first

# %%
# The checkpoint in run_dir resumes: asking for 5 more steps continues where it stopped.
state2 = train_tiny(DEMO_STEPS + 5)
assert state2["step"] == DEMO_STEPS + 5

# %% [markdown]
# ## Summary
#
# * ToyWorld gives captioned images whose content and style are both measurable.
# * The text reaches the UNet through cross-attention (`attn2.to_k`, `attn2.to_v` read the text context) — the
#   layers the adapters of the next notebooks modify.
# * CFG trades diversity for prompt adherence; the sweep above measured where it pays.
# * The base model's card (`gdlib/data/base/model_card.md`) records the command, data version, training time and the
#   accuracies measured over every known style x object prompt.
#
# ## Exercises
#
# 1. Ask for a held-out style (`"a watercolor painting of a cat"`). What does the style classifier say, and why?
# 2. Re-run the CFG sweep with `STEPS = 10`. Which accuracy suffers first?
# 3. Give `"sks"` a reserved slot with `model.tokenizer.add_tokens(["sks"])` and sample `"a sks painting of a cat"`.
#    The embedding row is untrained: what do you expect before you look?
# 4. Train the tiny model with `cond_drop=0.0` and try CFG on it. What breaks?
