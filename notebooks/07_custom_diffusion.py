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
# # 07 · Custom Diffusion: K/V-only fine-tuning and the closed-form multi-concept merge
#
# Custom Diffusion (Kumari, Zhang, Zhang, Shechtman and Zhu, *Multi-Concept Customization of Text-to-Image Diffusion*,
# CVPR 2023) asks two questions this course has not asked yet. **How few weights** does a new concept need? Their answer:
# only the cross-attention key and value projections, the layers that read the text, plus the new token's embedding.
# And **how do two concepts, fine-tuned apart, live in one model**? Their answer: a constrained least-squares problem with
# a closed-form solution that keeps each concept's words mapped exactly as its own model maps them, and everything else
# as close to the base model as possible.
#
# **What you will learn**
# 1. What Custom Diffusion trains, why the key/value projections, and how many parameters that is on the real model.
# 2. The merge as constrained least squares, derived with a Lagrange multiplier, and checked against
#    `gdlib.merge.constrained_merge`.
# 3. K/V-only vs DoRA on one held-out style: trainable parameters, training time, Style / content / leakage, with
#    paired bootstrap 95% intervals over objects x seeds.
# 4. Two held-out styles: each style from its own model, from the merged model (`gdlib merge`) and from joint training,
#    and a prompt that asks for both tokens.
# 5. Where merging breaks: two concepts whose caption features overlap — shown and measured.
#
# Everything is computed live on the *test* styles; the one knob chosen for this notebook (the learning rate of the
# `custom` variant) was chosen on the *validation* styles (`gdlib.recipe.VARIANTS["custom"]`). The expensive knobs are in
# the first code cell.

# %%
# Setup: imports, seed, knobs. The expensive knobs are here.
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from IPython.display import Markdown, display

from gdlib import runtime
jt = runtime.setup_jittor()          # always through gdlib: it wires the CPU/oneDNN runtime first
from gdlib import adapters, finetune as F, merge, metrics, plot, recipe, toyworld
from gdlib.models.evaluators import load_evaluators
from gdlib.pipeline import DEFAULT_BASE, generate
from gdlib.stats import by_cluster, format_interval, paired_difference
from gdlib.toyworld.export import export_challenge

T0 = time.time()
SEED = 0
SEEDS = (0, 1)                            # fine-tune + sampling seeds of section 3 (each seed: a fresh fine-tune)
BASE = DEFAULT_BASE                       # the shipped base model
STYLE_A, STYLE_B = toyworld.TEST_STYLES[:2]   # two held-out TEST styles: never pretrained on, never used to tune
N_OBJECTS = 6                             # unseen objects asked per style (spread over the other categories)
PER_OBJECT = 2                            # images per object and seed
CFG = recipe.RecipeConfig(sample_steps=20, seed=SEED)   # fine-tune budget (150 steps, batch 4) and sampling: defaults
CUSTOM, DORA = recipe.VARIANTS["custom"], recipe.VARIANTS["dora"]   # same instance captions; K/V-only vs DoRA
JOINT_STEPS = 2 * CFG.steps               # joint training of two styles: the two separate fine-tunes' steps together
ALPHAS = (0.0, 0.9, 0.99)                 # section 5: how far concept B's token is moved toward concept A's
np.random.seed(SEED)
jt.set_global_seed(SEED)
ev = load_evaluators()
quiet = lambda s: None
print("backend:", runtime.info()["backend"], "| test styles used:", STYLE_A, STYLE_B)
print(f"custom variant: lr {CUSTOM.lr:g} (DoRA: {CFG.lr:g}), captions {CUSTOM.caption_mode!r}")

# %% [markdown]
# ## 1. What Custom Diffusion trains, and why K and V
#
# In a text-to-image UNet the prompt arrives as a matrix of text features $c \in \mathbb R^{L \times d}$ (one row per
# token). Every cross-attention layer (`attn2`) turns them into keys and values,
#
# $$K = c\,W_k^\top, \qquad V = c\,W_v^\top, \qquad \text{out} = \operatorname{softmax}\!\big(QK^\top/\sqrt{d_h}\big)\,V,$$
#
# while the queries $Q$ come from the image. So $W_k$ and $W_v$ are where the words meet the picture: change them and you
# change what every word *does* to the image, without touching how the image itself is processed. Custom Diffusion
# fine-tunes exactly these matrices (full weights, no low rank) plus the embedding of the new token (`style_00`), and
# freezes the rest. Kumari et al. found these layers change most when the whole model is fine-tuned on a concept.
#
# One honest difference on this course's UNet: the text also enters once more, as the *pooled* text feature added to
# the time embedding (`UNetConfig.pooled_text`, the Imagen trick). Custom Diffusion leaves that layer (`text_embed`)
# frozen; the new token still reaches it through its trained embedding row. Here are the layers and their sizes on the
# real base model:

# %%
base = F.load_base(BASE)
kv = F.custom_layers(base)
n_kv = sum(int(np.prod(m.weight.shape)) for _, m in kv)
width = base.config.text.width
n_unet = sum(int(np.prod(p.shape)) for p in base.unet.parameters())
for name, m in kv[:4]:
    print(f"{name:<28} {tuple(m.weight.shape)}")
print(f"... {len(kv)} layers in all ({len(kv) // 2} cross-attention blocks x K, V)")
print(f"text reaches the UNet through: {len(kv)} K/V projections + the pooled path {tuple(base.unet.text_embed.weight.shape)}")
# a DoRA adapter at the recipe's placement and rank, injected into a throwaway copy, for comparison
dora_copy = F.load_base(BASE)
adapters.inject(dora_copy.unet, targets=list(CFG.targets), kind="dora", rank=CFG.rank, alpha=float(CFG.rank))
n_dora = sum(int(np.prod(p.shape)) for p in adapters.trainable_parameters(dora_copy.unet))
del dora_copy
counts = {"Custom Diffusion (K/V + token row)": n_kv + width, f"DoRA rank {CFG.rank} (+ token row)": n_dora + width,
          "whole UNet": n_unet}
for k, v in counts.items():
    print(f"{k:<36} {v:>10,d} trainable ({100 * v / n_unet:.1f}% of the UNet)")
assert all(m.weight.shape[1] == width for _, m in kv)      # every one of them reads the text features (width d)
ratio = counts["Custom Diffusion (K/V + token row)"] / counts[f"DoRA rank {CFG.rank} (+ token row)"]
assert 0.8 < ratio < 1.0, ratio                          # about as many weights as DoRA, a few fewer

# %% [markdown]
# ## 2. Merging two concepts: constrained least squares
#
# Concept A was fine-tuned into $W_A$, concept B into $W_B$ (one such pair per K/V layer). One model should serve both.
# Custom Diffusion asks for the weight $W$ that
#
# * maps each concept's **target features** exactly as that concept's own model does: stack the text features of A's
#   training captions as rows of $C_A$, B's as $C_B$, $C = [C_A; C_B] \in \mathbb R^{k \times d}$, and require
#   $W C^\top = V := [\,W_A C_A^\top \;\; W_B C_B^\top\,]$;
# * and otherwise changes the base model's response to **ordinary captions** as little as possible: with their features
#   as the rows of $R \in \mathbb R^{n \times d}$ (here every caption template of the 12 known styles: 765 captions x 12
#   positions), minimise $\|(W - W_0) R^\top\|_F^2$.
#
# With $M = R^\top R$ and a multiplier matrix $\Lambda$, the Lagrangian is
#
# $$\mathcal L(W, \Lambda) = \operatorname{tr}\big[(W - W_0) M (W - W_0)^\top\big] - 2\operatorname{tr}\big[\Lambda^\top (W C^\top - V)\big].$$
#
# Setting its gradient in $W$ to zero: $2 (W - W_0) M - 2 \Lambda C = 0$, so $W = W_0 + \Lambda C M^{-1}$: **the change
# lies in the row space of $C M^{-1}$**. Put it into the constraint: $W_0 C^\top + \Lambda C M^{-1} C^\top = V$, so
# $\Lambda = (V - W_0 C^\top)(C M^{-1} C^\top)^{-1}$ and
#
# $$W^\star = W_0 + (V - W_0 C^\top)\,(C M^{-1} C^\top)^{-1}\, C M^{-1}.$$
#
# It needs $C M^{-1} C^\top$ invertible: at most $d$ target rows, linearly independent. The objective is convex and the
# constraint affine, so this stationary point is the minimum. The cell checks the derivation on a random problem: the
# formula typed from the line above equals `gdlib.merge.constrained_merge`; the constraint holds; stationarity holds
# (the gradient $2(W^\star - W_0)M$ equals $2\Lambda C$); and every feasible step away from $W^\star$ (a direction $X$
# with $X C^\top = 0$) raises the objective.

# %%
rng = np.random.default_rng(SEED)
d_out, d, n_reg, k = 6, 10, 50, 4
W0, R = rng.standard_normal((d_out, d)), rng.standard_normal((n_reg, d))
C, V = rng.standard_normal((k, d)), rng.standard_normal((d_out, k))
M = R.T @ R
Lam = (V - W0 @ C.T) @ np.linalg.inv(C @ np.linalg.inv(M) @ C.T)
W_formula = W0 + Lam @ C @ np.linalg.inv(M)
W_lib = merge.constrained_merge(W0, R, C, V, ridge=0.0)
print("formula vs library, max |diff|:", f"{np.abs(W_formula - W_lib).max():.1e}")
print("constraint  max |W C^T - V|:   ", f"{np.abs(W_lib @ C.T - V).max():.1e}")
print("stationarity max |(W-W0)M - Lam C|:", f"{np.abs((W_lib - W0) @ M - Lam @ C).max():.1e}")
null = np.linalg.svd(C)[2][k:]                       # rows orthogonal to C's rows: X = A @ null has X C^T = 0
best = merge.merge_objective(W_lib, W0, R)
rises = [merge.merge_objective(W_lib + eps * rng.standard_normal((d_out, d - k)) @ null, W0, R) - best
         for eps in (1e-3, 1e-1, 10.0) for _ in range(20)]
print(f"objective at W*: {best:.3f}; 60 feasible perturbations raised it by {min(rises):.2e} .. {max(rises):.2e}")
assert np.abs(W_formula - W_lib).max() < 1e-9 and np.abs(W_lib @ C.T - V).max() < 1e-9
assert np.abs((W_lib - W0) @ M - Lam @ C).max() < 1e-8 and min(rises) > 0

# %% [markdown]
# ## 3. One held-out style: K/V only vs DoRA
#
# Two few-shot sets in the challenge layout, one per test style. In this section style A is learnt twice per seed with
# the **same captions** (the challenge baseline's instance token `style_00`, the recipe's `custom` and `dora` variants)
# and the same budget; only the trained weights differ: Custom Diffusion's full K/V matrices at their own learning rate,
# or DoRA at rank 4 on the attention projections and residual convolutions. `recipe.run_style` fine-tunes, generates the
# unseen objects and scores them; the cache keeps the models for the next section.

# %%
root = Path(tempfile.mkdtemp(prefix="gd07_"))
manifest = export_challenge(root, styles=[STYLE_A, STYLE_B], seed=SEED, max_prompts=N_OBJECTS)
ds = {sid: F.load_style_folder(root / sid) for sid in ("00", "01")}
for sid, m in manifest["sets"].items():
    print(sid, f"{m['style']:<8}", "few-shot objects:", m["objects"], "| asked:", list(ds[sid]["prompts"].values()))
plot.image_grid(np.concatenate([ds["00"]["images"], ds["01"]["images"]]), nrow=3,
                titles=[f"{manifest['sets'][s]['style']}: {o}" for s in ("00", "01") for o in ds[s]["objects"]],
                suptitle="the two few-shot sets (style A on top, style B below)");

# %%
def asked_for(sid):
    return [o for o in ds[sid]["prompts"].values() for _ in range(PER_OBJECT)]

def per_image_style(images, refs):
    """Style of each image alone (the units a paired bootstrap resamples). The challenge-shaped Style is a mean over
    (image, reference) pairs of its three parts, so the mean of these equals the set's Style (checked below)."""
    emb, ref_emb = ev.style_embedding(images), ev.style_embedding(refs)
    maps, ref_maps = ev.style_maps(images), ev.style_maps(refs)
    out = []
    for i in range(len(images)):
        e = metrics.embedding_similarity(emb[i:i + 1], ref_emb)
        h = metrics.histogram_similarity(images[i:i + 1], refs)
        d = metrics.perceptual_distance([m[i:i + 1] for m in maps], ref_maps)
        out.append(metrics.STYLE_W[0] * e + metrics.STYLE_W[1] * h + metrics.STYLE_W[2] * (1.0 - d))
    return np.array(out)

cache, runs = {}, {}
for s in SEEDS:
    runs[s] = recipe.run_style(ds["00"], ["custom", "dora"], replace(CFG, seed=s), BASE, objects=asked_for("00"),
                               ev=ev, finetune_cache=cache, log=quiet)
models = {(info["adapter"], info["config"]["seed"]): (model, info) for model, info, _ in cache.values()}

def trainable(model, info):
    if info["adapter"] == "custom":
        n = sum(int(np.prod(m.weight.shape)) for _, m in F.custom_layers(model))
    else:
        n = sum(int(np.prod(p.shape)) for p in adapters.trainable_parameters(model.unet))
    return n + width * len(info["new_tokens"])

refs_A = ds["00"]["images"]
per = {}
for v in ("custom", "dora"):
    imgs = np.concatenate([runs[s][v]["images"] for s in SEEDS])
    asked = [o for s in SEEDS for o in runs[s][v]["asked"]]
    out = metrics.per_image_outcomes(ev, imgs, asked, ds["00"]["objects"])
    per[v] = {"style": per_image_style(imgs, refs_A), "content": out["correct"].astype(float),
              "leakage": out["leaked"].astype(float), "asked": asked, "images": imgs}
set_style = metrics.style_similarity(ev, per["custom"]["images"], refs_A)["style"]
assert abs(per["custom"]["style"].mean() - set_style) < 1e-5       # per-image Styles average to the set's Style
rows = {}
for v in ("custom", "dora"):
    model, info = models[(CUSTOM.adapter if v == "custom" else DORA.adapter, SEEDS[0])]
    rows[v] = {"trainable": trainable(model, info),
               "train_s": float(np.mean([runs[s][v]["seconds"]["finetune"] for s in SEEDS])),
               **{k: float(per[v][k].mean()) for k in ("style", "content", "leakage")},
               "final": float(np.mean([runs[s][v]["scores"]["final"] for s in SEEDS]))}
table = ["| variant | trainable | train s | Style | content acc. | leakage | Final |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
table += [f"| {recipe.VARIANTS[v].label} | {r['trainable']:,d} | {r['train_s']:.0f} | {r['style']:.3f} | "
          f"{r['content']:.3f} | {r['leakage']:.3f} | {r['final']:.3f} |" for v, r in rows.items()]
display(Markdown("\n".join(table) + f"\n\nStyle {STYLE_A}, {len(SEEDS)} seeds x {N_OBJECTS} unseen objects x "
                 f"{PER_OBJECT} images; train s: mean wall time of one fine-tune on this machine."))
diff = {k: paired_difference(by_cluster(per["custom"][k], per["custom"]["asked"]),
                             by_cluster(per["dora"][k], per["dora"]["asked"])) for k in ("style", "content", "leakage")}
for k, r in diff.items():
    print(f"K/V-only minus DoRA, {k:<8}: {format_interval(r)}  (paired bootstrap 95% over {r['n_clusters']} objects x "
          f"{r['n_cells'] // r['n_clusters']} images)")
assert rows["custom"]["trainable"] < rows["dora"]["trainable"]
assert diff["style"]["hi"] < 0, diff["style"]          # K/V only learnt less of the style than DoRA (the interval says so)

# %%
idx = list(range(0, N_OBJECTS * PER_OBJECT, PER_OBJECT))     # first seed, one image per object
plot.image_grid(np.concatenate([per["custom"]["images"][idx], per["dora"]["images"][idx]]), nrow=N_OBJECTS,
                titles=[per["custom"]["asked"][i] for i in idx] * 2, row_labels=["K/V only", "DoRA"],
                suptitle=f"style A ({STYLE_A}), unseen objects, seed {SEEDS[0]}");

# %% [markdown]
# **Reading it.** With the same captions, steps and seeds, the K/V-only fine-tune learnt clearly less of this style than
# DoRA: its Style is lower and the paired interval lies below zero (asserted in the next cell). The two train about the
# same number of weights — it is *where* they sit that matters. DoRA's adapters also reach the residual blocks'
# convolutions, which paint colour and texture at every pixel; K/V only change what the words contribute through
# cross-attention, on the 8x8 and 4x4 feature maps. Notebook 03 and the validation sweep (`gdlib sweep`) found the same
# for attention-only DoRA on this UNet. Content accuracy and leakage: read their intervals above; this run does not
# show a difference that excludes zero for them, so the notebook claims none. The training-time column is wall time on
# a shared 2-core machine: compare it within one run only.

# %% [markdown]
# ## 4. Two styles in one model: separate, merged, joint
#
# Now style B gets its own Custom Diffusion fine-tune (token `style_01`), and the two files are combined in two ways:
#
# * **merged** — `gdlib merge A.safetensors B.safetensors --out AB.safetensors` solves section 2's problem for every K/V
#   layer (`gdlib.merge.merge_style_files` below is the same code). $C$: every position of each style's encoded training
#   caption (the encoder is bidirectional, so the token shapes every position, and the UNet reads them all); $R$: the
#   765 known-style captions; both tokens' embedding rows are copied in. No training: it takes seconds.
# * **joint** — one Custom Diffusion fine-tune on both folders at once, each folder's captions with its own token
#   (`finetune_style([A, B], ...)`), for as many steps as the two separate runs together.
#
# Each style is then asked for with its own token, from its own model, the merged model and the joint model: same
# objects, same sampling seed.

# %%
path_A = F.save_style(root / "A.safetensors", *models[("custom", SEED)])
res_B = F.finetune_style(ds["01"], root / "B.safetensors", recipe.style_config(CUSTOM, CFG), base=BASE,
                         progress=False, log=quiet)
t0 = time.time()
merged = merge.merge_style_files([path_A, res_B["path"]], root / "AB_merged.safetensors", BASE, log=print)
t_merge = time.time() - t0
t0 = time.time()
res_J = F.finetune_style([ds["00"], ds["01"]], root / "AB_joint.safetensors",
                         replace(recipe.style_config(CUSTOM, CFG), steps=JOINT_STEPS), base=BASE, progress=False,
                         log=quiet)
t_joint = time.time() - t0
m_model = F.load_base(BASE)
m_info = F.load_style(m_model, merged["path"])          # the ordinary loader reads the merged file
print(f"merge: {t_merge:.1f} s | joint training: {t_joint:.0f} s ({JOINT_STEPS} steps) | separate B: "
      f"{res_B['info']['train_minutes'] * 60:.0f} s")
print("merged file concepts:", [(c["sid"], c["style"], c["token"]) for c in m_info["concepts"]])
rep = merged["report"]
each_alone = ", ".join(f"{100 * x / rep['base_response']:.1f}%" for x in rep["objective_each"])
print(f"constraint residual max |W C^T - V| = {rep['residual_max']:.1e} (relative {rep['relative_residual_max']:.1e}); "
      f"objective ||(W - W0) R^T||^2 = {rep['objective']:.3g}, i.e. {100 * rep['objective'] / rep['base_response']:.2f}% "
      f"of ||W0 R^T||^2 (each fine-tune alone: {each_alone})")
assert rep["relative_residual_max"] < 1e-6 and not rep["warnings"]

# %% [markdown]
# The residual above is the float64 solve. The cell below checks the constraint where it matters, on the loaded merged
# model (float32 weights): style A's training caption, encoded by the merged model's text encoder, goes through every
# merged K/V layer exactly as through A's own fine-tuned layers. Because *every* position is constrained and nothing
# else in the UNet differs, the merged UNet's whole prediction on A's training caption is A's own prediction. On the
# **inference** prompt (`a style_00 painting of a car`), whose features the merge never saw, it is not — the merge
# promises exactness only on the training captions.

# %%
own_A = models[("custom", SEED)][0]
feats, _ = merge.encode_features(m_model, ["style_00"])
rel = max(np.abs(m.weight.numpy() @ feats[0].T - o.weight.numpy() @ feats[0].T).max() / np.abs(o.weight.numpy() @ feats[0].T).max()
          for (_, m), (_, o) in zip(F.custom_layers(m_model), F.custom_layers(own_A)))
x = np.random.default_rng(SEED).standard_normal((1, 3, 32, 32)).astype(np.float32)
t = jt.array(np.array([500.0], np.float32))

def pred(model, prompt):
    return model.unet(jt.array(x), t, model.encode([prompt], strict=True)).numpy()

gap = {p: float(np.abs(pred(m_model, p) - pred(own_A, p)).max() / np.abs(pred(own_A, p)).max())
       for p in ("style_00", "a style_00 painting of a car")}
print(f"loaded merged model, style A's caption through the {len(F.custom_layers(m_model))} K/V layers: max relative "
      f"difference to A's own layers {rel:.1e}")
for p, g in gap.items():
    print(f"UNet prediction, merged vs A's own model, prompt {p!r}: max relative difference {g:.1e}")
assert rel < 1e-4 and gap["style_00"] < 1e-3

# %%
def style_of(model, info, sid, prompt=None):
    """Generate style `sid`'s asked objects (its own token's prompt; info None: the base's token-less
    'a painting of a {object}'; or `prompt`), Style of each image against both sets' references."""
    asked = asked_for(sid)
    if prompt is None and info is None:
        prompt = "a painting of a {}"
    prompts = [prompt.format(o) if prompt else F.style_prompt(info, o, concept=sid) for o in asked]
    imgs = generate(model, prompts, CFG.sample_steps, CFG.guidance_scale, seed=SEED, strict=True)
    return {"images": imgs, "asked": asked, "prompts": prompts,
            "style": {s: per_image_style(imgs, ds[s]["images"]) for s in ("00", "01")},
            "style_class": ev.predict_style(imgs)}

sources = {"base": {"00": (base, None), "01": (base, None)},
           "own": {"00": models[("custom", SEED)], "01": (res_B["model"], res_B["info"])},
           "merged": {"00": (m_model, m_info), "01": (m_model, m_info)},
           "joint": {"00": (res_J["model"], res_J["info"]), "01": (res_J["model"], res_J["info"])}}
two = {(src, sid): style_of(*sources[src][sid], sid) for src in sources for sid in ("00", "01")}
lines = ["| style | base, no token | own model | merged | joint | own - base [95% CI] | merged - own [95% CI] | "
         "joint - own [95% CI] |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
cmp = {}
for sid in ("00", "01"):
    st = {src: two[(src, sid)]["style"][sid] for src in sources}
    cl = two[("own", sid)]["asked"]
    cmp[sid] = {src: paired_difference(by_cluster(st[src], cl), by_cluster(st[ref], cl))
                for src, ref in (("own", "base"), ("merged", "own"), ("joint", "own"))}
    lines.append(f"| {sid} {manifest['sets'][sid]['style']} | {st['base'].mean():.3f} | {st['own'].mean():.3f} | "
                 f"{st['merged'].mean():.3f} | {st['joint'].mean():.3f} | {format_interval(cmp[sid]['own'])} | "
                 f"{format_interval(cmp[sid]['merged'])} | {format_interval(cmp[sid]['joint'])} |")
display(Markdown("\n".join(lines) + f"\n\nStyle of each style's images against its own references; {N_OBJECTS} "
                 f"objects x {PER_OBJECT} images, seed {SEED}; intervals: paired bootstrap over the objects."))

def rms(a, b):
    return np.sqrt(((a - b) ** 2).reshape(len(a), -1).mean(1))

# does a model draw what the style's own model draws? same prompt form, objects and noise: RMS pixel distance
near = {}
for sid in ("00", "01"):
    cl = two[("own", sid)]["asked"]
    dist = {src: rms(two[(src, sid)]["images"], two[("own", sid)]["images"]) for src in ("base", "merged", "joint")}
    near[sid] = {src: paired_difference(by_cluster(dist[src], cl), by_cluster(dist["base"], cl)) for src in ("merged", "joint")}
    print(f"{sid}: RMS distance to the own model's images: base {dist['base'].mean():.3f}, merged {dist['merged'].mean():.3f}, "
          f"joint {dist['joint'].mean():.3f} | merged - base {format_interval(near[sid]['merged'])}, "
          f"joint - base {format_interval(near[sid]['joint'])}")
for sid in ("00", "01"):
    assert cmp[sid]["own"]["lo"] < 0 < cmp[sid]["own"]["hi"], cmp[sid]["own"]    # no Style gain over the base shown
    assert cmp[sid]["merged"]["lo"] > -0.05 and cmp[sid]["joint"]["lo"] > -0.1, cmp[sid]
    assert near[sid]["merged"]["hi"] < 0, near[sid]                                # merged draws like the own model
plot.image_grid(np.concatenate([two[(src, sid)]["images"][::PER_OBJECT] for sid in ("00", "01") for src in sources]),
                nrow=N_OBJECTS, row_labels=[f"{sid} {src}" for sid in ("00", "01") for src in sources],
                titles=[o for sid in ("00", "01") for _ in sources for o in two[("own", sid)]["asked"][::PER_OBJECT]],
                suptitle="each style from its own model, the merged model and the joint model");

# %% [markdown]
# **Reading it.** First the caveat, asserted below: on these two test styles the K/V-only fine-tunes did not raise Style
# measurably above what the base draws with no token at all (both own - base intervals hold zero; section 3 found K/V
# weaker than DoRA on style A). So the Style columns cannot show a style being kept or lost here. What they do show:
# neither way of combining lost Style against the separate models — the merged model stays within 0.05 of each style's
# own model and the joint model within 0.1, by the lower ends of their intervals (asserted).
#
# What the merge keeps is visible directly. Asked the same prompts with the same noise, the merged model draws images
# much closer to each style's own model than the base does (RMS pixel distance; the merged - base interval lies below
# zero for both styles, asserted): the merge reproduces what each fine-tune did to the pictures, and not only on the
# training caption where it is exact by construction. Joint training is a different fine-tune, so its images need not
# match the separate models' at all; compare its Style instead. The price of each: the merge took seconds and no
# training; joint training took as long as the two separate fine-tunes together, and must be redone for every new
# combination of concepts.

# %% [markdown]
# ### Both tokens in one prompt
#
# What does `a style_00 style_01 painting of a {object}` draw? Neither separate model knows both tokens; the merged and
# the joint model do. Below: the Style of those images against A's and against B's references, and what the style
# evaluator calls them (share classified as style A, style B, anything else).

# %%
both = {src: style_of(*sources[src]["00"], "00", prompt="a style_00 style_01 painting of a {}") for src in ("merged", "joint")}
# same objects and seed as the A-only prompt of the same model: pairs. Adding style_01 should move the images toward
# B's references (Style vs B up) and may move them away from A's (Style vs A down)
both_cmp = {}
for src, r in both.items():
    one = two[(src, "00")]
    cl = one["asked"]
    both_cmp[src] = {ref: paired_difference(by_cluster(r["style"][ref], cl), by_cluster(one["style"][ref], cl))
                     for ref in ("00", "01")}
    share = {name: float(np.mean(r["style_class"] == ev.styles.index(manifest["sets"][s]["style"])))
             for s, name in (("00", "A"), ("01", "B"))}
    print(f"{src:>6}, both tokens minus style_00 alone: Style vs A's refs {format_interval(both_cmp[src]['00'])}, "
          f"vs B's refs {format_interval(both_cmp[src]['01'])} | style evaluator: A {share['A']:.2f}, B {share['B']:.2f}, "
          f"other {1 - share['A'] - share['B']:.2f}")
plot.image_grid(np.concatenate([both[src]["images"][::PER_OBJECT] for src in both]), nrow=N_OBJECTS,
                row_labels=list(both), titles=both["merged"]["asked"][::PER_OBJECT] * 2,
                suptitle="'a style_00 style_01 painting of a {object}'");

# %% [markdown]
# **Reading it.** Read the printed intervals: they compare the two-token prompt with `style_00` alone in the same model,
# same objects and noise. In the merged model the second token can only act through what the merge kept for it: on the
# run that wrote this text it moved the images a little toward B's references (an interval just above zero) and took
# nothing from A that the interval could show; in the joint model neither change was shown. The style evaluator calls
# hardly any of these images style A or style B — at this budget K/V-only models nudge these held-out styles rather than
# reproduce them (section 3). Composition is what Custom Diffusion was built for on Stable Diffusion (an object *and*
# a style); here, with two styles that each barely register, the second token changed little that the intervals show.

# %% [markdown]
# ## 5. Where merging breaks: overlapping target features
#
# The merge asks for $W C_A^\top = W_A C_A^\top$ **and** $W C_B^\top = W_B C_B^\top$. If the two concepts' caption
# features point the same way while $W_A$ and $W_B$ map them differently, no moderate $W$ can satisfy both: the
# exact solution grows without bound ($C M^{-1} C^\top$ becomes singular), and what it does to every *other* caption —
# the objective — grows with it. Two tokens that the text encoder reads almost alike are enough: a concept learnt
# twice, or two tokens initialised alike and trained briefly. We dial the overlap by moving B's token embedding toward
# A's, $e_B' = (1 - \alpha) e_B + \alpha e_A$, merge again with B's trained K/V unchanged, and measure: the largest
# cosine between the two concepts' feature spaces, the conditioning, the objective, each style's Style with its own
# token, and the base model's own job — content and style accuracy on ordinary known-style prompts.

# %%
from gdlib.checkpoint import save_tensors
t_A, i_A = F.read_style(path_A)
t_B, i_B = F.read_style(res_B["path"])
ordinary = [toyworld.caption(s, o) for s, o in zip(toyworld.KNOWN_STYLES, toyworld.OBJECTS[::-1])]
ordinary_obj = toyworld.OBJECTS[::-1][:len(ordinary)]

def ordinary_scores(model):
    x = generate(model, ordinary, CFG.sample_steps, CFG.guidance_scale, seed=SEED, strict=True)
    return {"content": metrics.content_accuracy(ev.predict_content(x), [ev.objects.index(o) for o in ordinary_obj]),
            "style": float(np.mean(ev.predict_style(x) == np.array([ev.styles.index(s) for s in toyworld.KNOWN_STYLES]))),
            "images": x}

base_ord = ordinary_scores(base)
overlap = {}
for alpha in ALPHAS:
    tb = dict(t_B)
    tb["token_embedding.style_01"] = ((1 - alpha) * t_B["token_embedding.style_01"]
                                      + alpha * t_A["token_embedding.style_00"]).astype(np.float32)
    res = merge.merge_custom(F.load_base(BASE), [(path_A, t_A, i_A), (res_B["path"], tb, i_B)], log=quiet)
    p = save_tensors(root / f"overlap_{alpha:g}.safetensors", res["tensors"],
                     {F.STYLE_KEY: json.dumps(res["info"]), "format": "gdlib-style-custom/1"})
    mm = F.load_base(BASE)
    info = F.load_style(mm, p)
    sty = {sid: per_image_style(generate(mm, [F.style_prompt(info, o, concept=sid) for o in ds[sid]["prompts"].values()],
                                         CFG.sample_steps, CFG.guidance_scale, seed=SEED, strict=True),
                                ds[sid]["images"]) for sid in ("00", "01")}
    o = ordinary_scores(mm)
    overlap[alpha] = {"cos": res["report"]["max_overlap_cosine"], "cond": res["report"]["gram_condition"],
                      "residual": res["report"]["relative_residual_max"],
                      "objective": res["report"]["objective"] / res["report"]["base_response"],
                      "per_image": sty, "style_A": float(sty["00"].mean()), "style_B": float(sty["01"].mean()),
                      "ord_content": o["content"], "ord_style": o["style"], "warned": bool(res["report"]["warnings"]),
                      "images": o["images"]}
e_A, e_B = t_A["token_embedding.style_00"], t_B["token_embedding.style_01"]
print(f"cosine of the two trained token EMBEDDINGS: {e_A @ e_B / np.linalg.norm(e_A) / np.linalg.norm(e_B):+.3f}")
lines = ["| alpha | max cosine | condition | residual (rel.) | objective / ‖W0 Rᵀ‖² | Style A | Style B | ordinary: content | "
         "ordinary: style | warned |", "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
lines.append(f"| base | | | | 0 | | | {base_ord['content']:.2f} | {base_ord['style']:.2f} | |")
lines += [f"| {a:g} | {r['cos']:.5f} | {r['cond']:.2g} | {r['residual']:.1e} | {r['objective']:.3g} | {r['style_A']:.3f} | "
          f"{r['style_B']:.3f} | {r['ord_content']:.2f} | {r['ord_style']:.2f} | {'yes' if r['warned'] else 'no'} |"
          for a, r in overlap.items()]
display(Markdown("\n".join(lines) + "\n\nmax cosine: largest cosine of the principal angles between the two concepts' "
                 "target-feature spaces; condition: of C M⁻¹ Cᵀ; ordinary: the 12 known-style prompts below, content and "
                 "style accuracy by the evaluators."))
for a in ALPHAS[1:]:
    dA, dB = (paired_difference(*(by_cluster(overlap[x]["per_image"][sid], list(ds[sid]["prompts"].values()))
                                  for x in (a, ALPHAS[0]))) for sid in ("00", "01"))
    print(f"alpha {a:g} minus alpha {ALPHAS[0]:g}: Style A {format_interval(dA)}, Style B {format_interval(dB)} "
          f"(paired bootstrap over the {N_OBJECTS} objects, one image each)")
plot.image_grid(np.concatenate([base_ord["images"]] + [overlap[a]["images"] for a in ALPHAS]), nrow=len(ordinary),
                row_labels=["base"] + [f"alpha {a:g}" for a in ALPHAS], titles=ordinary_obj,
                suptitle="ordinary known-style prompts through the merged K/V");
obj = [overlap[a]["objective"] for a in ALPHAS]
assert all(np.diff(obj) > 0) and all(overlap[a]["residual"] < 1e-5 for a in ALPHAS)   # constraints met to the end
assert not overlap[ALPHAS[0]]["warned"] and overlap[ALPHAS[-1]]["warned"]
assert overlap[ALPHAS[0]]["ord_content"] >= base_ord["content"] - 0.1             # the real merge: ordinary prompts fine
assert overlap[ALPHAS[-1]]["ord_content"] < base_ord["content"] - 0.5             # the overlapping one: they break

# %% [markdown]
# **Reading it.** At α = 0 (the two real tokens) the merge barely touched ordinary captions: its objective is a small
# fraction of the base's own K/V response on them, far below either fine-tune's, and the known-style prompts still draw
# their objects (asserted). As B's token moves toward A's, the largest cosine between the two concepts' feature spaces
# goes to 1, $C M^{-1} C^\top$ becomes nearly singular (its condition number climbs by orders of magnitude) and the
# exact solution pays for it everywhere else: the objective grows past the size of the base response itself, `gdlib
# merge` warns, and at the largest α the known-style prompts no longer draw their objects (asserted). Note what does
# *not* fail: the residual on $C$ stays tiny — the constraints are met exactly to the end, and everything else breaks.
# Concept Style: read its intervals; on the run that wrote this text, concept B lost Style first.
#
# Two lessons. The merge separates the concepts by their **caption features**, not by their token embeddings: the two
# trained embeddings printed above are far from parallel, yet even at α = 0 the two captions' feature spaces share a
# direction almost exactly (the first row's max cosine) — this small bidirectional encoder maps short captions to
# similar features. And the remedies are fewer, more distinctive constraints (`--rows token`, exercise 1), reading the
# merge report (objective, warning) before using a merged file, or joint training, which has no exact constraint to
# meet.

# %% [markdown]
# ## Summary
#
# - **Custom Diffusion** fine-tunes only the cross-attention key and value projections — the layers that turn text
#   features into keys and values — plus the new token's embedding: 14 matrices, a few percent of this UNet, about as
#   many weights as the recipe's rank-4 DoRA.
# - On a held-out test style, with the same captions and budget, K/V-only learnt **less style than DoRA** (paired
#   interval below zero): on this UNet the style lives largely in the convolutions DoRA also adapts.
# - Two K/V fine-tunes **merge in closed form**: $W^\star = W_0 + (V - W_0C^\top)(CM^{-1}C^\top)^{-1}CM^{-1}$, the
#   minimiser of the change on ordinary captions subject to reproducing each concept on its captions (derived with a
#   Lagrange multiplier and checked against `gdlib.merge`). `gdlib merge A B --out AB` takes seconds; the merged
#   UNet's prediction on each training caption *is* that concept's own, and on new prompts the merged model draws much
#   like each own model. Joint training also kept each style's Style (within 0.1 of its own model), at the cost of a
#   fresh fine-tune for every combination of concepts.
#   On these styles the K/V fine-tunes barely moved Style above the base, so the Style comparison is weak evidence.
# - The merge fails when the concepts' **caption features overlap**: exact constraints on nearly parallel features force
#   huge weight changes that break every other prompt. The merge report (objective, warning) shows it before you sample.
#
# ## Exercises
#
# 1. Merge with `--rows token` (only the new token's position constrained) or `--rows words` (`<bos>` .. `<eos>`):
#    `merge.merge_style_files(..., rows="token")`. How do the objective, the conditioning and section 5's breaking
#    point change? Does the UNet prediction on A's training caption still equal A's own?
# 2. Add the inference prompts (`a style_00 painting of a {object}`) to the target captions: does the merged model then
#    match A's own model on them? How many rows does that cost, and what is the limit?
# 3. Raise `SEEDS` to three seeds and `PER_OBJECT` to 4: which intervals of section 3 narrow, and does any conclusion
#    change?
# 4. Train DoRA with decoupled captions (`recipe.VARIANTS["dora_decoupled"]`) instead of `dora` in section 3. Is the gap
#    to K/V-only about the weights or about the captions?
# 5. From a terminal: `gdlib train-style toy/00 --adapter custom --captions instance --lr <the custom lr> --out a.safetensors`,
#    the same for `toy/01`, then `gdlib merge a.safetensors b.safetensors --out ab.safetensors` and read `ab.card.json`.
#
# *Run time of this notebook on this machine: printed below.*

# %%
print(f"notebook run time: {time.time() - T0:.0f} s")
