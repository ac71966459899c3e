import nbformat as nbf

cells = []
md = lambda s: cells.append(nbf.v4.new_markdown_cell(s.strip()))
code = lambda s: cells.append(nbf.v4.new_code_cell(s.strip()))

md(r"""
# 02 · A toy text-to-image model

The rest of the course personalizes a **text-to-image diffusion model**. Stable Diffusion needs a GPU and
gigabytes of weights; here we use a model of the same *shape* that runs on a laptop CPU: a small UNet that
denoises 32 px ToyWorld images, conditioned on a caption through **cross-attention**, sampled with DDIM and
**classifier-free guidance (CFG)**. The base checkpoint in `data/base/` was trained with `gdlib train-base` on
the *known* ToyWorld styles only; the held-out styles are what later notebooks teach it from a few images.

**What you will learn**
1. ToyWorld: objects x styles, captions, and which styles the base model has never seen.
2. Model anatomy: tokenizer -> text encoder -> cross-attention (`to_q` from the image, `to_k`/`to_v` from the text).
3. Sampling with CFG: $\hat\epsilon = \epsilon_\theta(x_t, \varnothing) + w\,(\epsilon_\theta(x_t, c) - \epsilon_\theta(x_t, \varnothing))$.
4. Measuring what the model does: content and style accuracy by independent evaluators, and how they move with $w$.
5. The training loop, by running a few steps of it from scratch and watching the loss fall.
""")

code(r"""
# Setup. Expensive knobs first: lower them on a slow machine.
N_PER_PAIR = 1          # images per known style x object prompt for the live accuracy measurement
CFG_SCALES = [1.0, 1.5, 2.0, 4.0, 7.0]   # the guidance sweep
SWEEP_OBJECTS = 5       # objects per style in the CFG sweep (x 12 known styles)
STEPS = 25              # DDIM steps
DEMO_STEPS = 60         # training steps of the from-scratch demo (tiny model)
SEED = 0

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
""")

md(r"""
## 1. ToyWorld tour

Every image is an **object** (15 classes in 5 categories) drawn in a **style**. The caption is always
`"a {style} painting of a {object}"`. The base model was pretrained on the known styles; the held-out
ones never appear in its training data.
""")

code(r"""
print("objects   :", toyworld.OBJECTS)
print("known     :", toyworld.KNOWN_STYLES)
print("held out  :", toyworld.HELDOUT_STYLES)
print("vocabulary:", toyworld.vocabulary())
tour_objects = toyworld.OBJECTS[::3]
tour = toyworld.make_dataset(toyworld.KNOWN_STYLES, tour_objects, n_per_pair=1, seed=SEED)
print(tour["images"].shape, tour["images"].dtype, float(tour["images"].min()), float(tour["images"].max()))
print("e.g.", tour["captions"][:2])
fig = plot.image_grid(tour["images"], nrow=len(tour_objects), titles=tour_objects * len(toyworld.KNOWN_STYLES),
                      row_labels=toyworld.KNOWN_STYLES, suptitle="ToyWorld: known styles (rows) x objects")
plt.show()
assert not set(toyworld.KNOWN_STYLES) & set(toyworld.HELDOUT_STYLES)
""")

md(r"""
## 2. Model anatomy

Three parts, all in `gdlib`:

* `Tokenizer` — word level over ToyWorld's vocabulary, `<bos> w1 … wn <eos> <pad>…`, with reserved slots
  for new words such as `sks` (DreamBooth's identifier). Unknown words become `<unk>` **with a warning that
  lists them** (or a `ValueError` with `strict=True`).
* `TextEncoder` — token + position embeddings and a small pre-LN transformer: context $c \in \mathbb{R}^{L\times D}$.
* `UNet` — a pixel-unshuffle (32 px -> 16x16x12), residual blocks whose GroupNorm is modulated by the
  timestep embedding (FiLM), and transformer blocks at 8x8 and 4x4 with **self-attention** (`attn1`) and
  **cross-attention** (`attn2`): queries from image tokens, keys and values from the text,
  $\mathrm{softmax}(Q K^\top/\sqrt d)\,V$ with $Q = h W_q$, $K = c W_k$, $V = c W_v$. The modules are named
  `to_q`, `to_k`, `to_v`, `to_out.0` as in diffusers, which is how the LoRA/DoRA adapters of notebook 03 find them.
  The mean of $c$ is also added to the timestep embedding (a global summary of the prompt, as in Imagen).
""")

code(r"""
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
""")

md(r"""
Where does the text enter? Capture the cross-attention probabilities of the first 4x4 block for one prompt:
each of the 16 image positions distributes its attention over the 12 token positions.
""")

code(r"""
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
tokens = [model.tokenizer.words[i] for i in model.tokenizer.encode(prompt)[0]]
fig, ax = plt.subplots(figsize=(6, 2.5))
ax.imshow(p, aspect="auto", cmap="viridis"); ax.set_xticks(range(len(tokens))); ax.set_xticklabels(tokens, rotation=60, fontsize=7)
ax.set_ylabel("image position"); ax.set_title("cross-attention probabilities (t = 500)"); plt.tight_layout(); plt.show()
np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-4)   # each row is a distribution over tokens
""")

md(r"""
## 3. Sampling with classifier-free guidance

During training 10% of the captions were replaced by the empty prompt, so one network estimates both
$\epsilon_\theta(x_t, c)$ and $\epsilon_\theta(x_t, \varnothing)$. `gdlib.pipeline.cfg_model` runs both in one
batch and combines them (Ho & Salimans 2022, Eq. 6); `generate` hands that to `gdlib.sampling.sample_ddim`.
First, check the combination against a direct computation:
""")

code(r"""
from gdlib.pipeline import cfg_model
x = jt.array(np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32))
ctx, unc = model.encode(["a ink painting of a tree", "a pop painting of a car"]), model.encode([""])
with jt.no_grad():
    eps_c = model.unet(x, 400, ctx).numpy()
    eps_u = model.unet(x, 400, jt.concat([unc, unc])).numpy()
    eps_cfg = cfg_model(model, ctx, unc, 4.0)(x, 400).numpy()
np.testing.assert_allclose(eps_cfg, eps_u + 4.0 * (eps_c - eps_u), rtol=1e-3, atol=1e-4)
print("CFG combination matches eps_u + w (eps_c - eps_u); |eps_c - eps_u| mean =", float(np.abs(eps_c - eps_u).mean()))
""")

code(r"""
grid_styles, grid_objects = toyworld.KNOWN_STYLES[::2], toyworld.OBJECTS[::3]
prompts = [toyworld.caption(s, o) for s in grid_styles for o in grid_objects]
t0 = time.time()
images = generate(model, prompts, num_inference_steps=STEPS, guidance_scale=DEFAULT_GUIDANCE, seed=SEED)
print(f"{len(prompts)} images in {time.time() - t0:.1f} s")
plot.image_grid(images, nrow=len(grid_objects), titles=grid_objects * len(grid_styles), row_labels=grid_styles,
                suptitle=f"base model, {STEPS} DDIM steps, CFG {DEFAULT_GUIDANCE}")
plt.show()
""")

md(r"""
## 4. Measuring the model

Two evaluators trained on ToyWorld (all styles, `data/evaluators/`) score each generated image: the content
classifier says which object it shows, the style classifier which style. We generate one image per known
style x object prompt and count how often each agrees with the prompt.
""")

code(r"""
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
      "targets NOT met by this checkpoint: see data/base/model_card.md")
assert 0.0 <= acc["content_accuracy"] <= 1.0 and acc["n_images"] == len(toyworld.KNOWN_STYLES) * len(toyworld.OBJECTS) * N_PER_PAIR
""")

md(r"""
### The CFG scale

$w = 1$ is the plain conditional model, $w > 1$ pushes samples towards what distinguishes the prompt from
the empty prompt. Sweep it on a subset of prompts and measure:
""")

code(r"""
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
""")

md(r"""
## 5. The training loop, from scratch

`gdlib.train.train_base` is what produced the checkpoint: sample a batch, pick $t \sim U\{0..T-1\}$ and
$\epsilon \sim \mathcal N(0, I)$, form $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$, drop 10% of
captions, and regress $\epsilon$ with Min-SNR weights $\min(\mathrm{SNR}_t, 5)/\mathrm{SNR}_t$; AdamW with warmup
and cosine decay, gradient clipping, an EMA copy of the weights, checkpoints that resume. Here a *tiny*
model runs a few dozen steps on 2 styles x 3 objects — enough to see the loss fall, not to draw anything.
""")

code(r"""
import tempfile
from gdlib import train
from gdlib.models.config import ModelConfig, TextConfig, UNetConfig

tiny = ModelConfig(unet=UNetConfig(base_channels=16, channel_mult=(1, 2), attn_resolutions=(8,),
                                   self_attn_resolutions=(8,), heads=2, groups=4),
                   text=TextConfig(width=16, layers=1, heads=2))
run_dir = tempfile.mkdtemp(prefix="gdlib_nb02_")
demo = train.TrainConfig(out_dir=run_dir, steps=DEMO_STEPS, minutes=10, batch_size=8, lr=2e-3, warmup_steps=5,
                         n_per_pair=4, styles=["flat", "neon"], objects=["cat", "car", "tree"],
                         sample_every=0, log_every=1, model=tiny)
t0 = time.time()
res = train.train_base(demo, progress=False)
hist = res["history"]
print(f"{res['state']['step']} steps in {time.time() - t0:.0f} s")
plot.curves({"loss": hist["step"]}, {"loss": hist["loss"]}, xlabel="step", ylabel="running loss",
            title="tiny model, from scratch")
plt.show()
first, last = hist["loss"][0], float(np.mean(hist["loss"][-5:]))
print(f"running loss {first:.3f} -> {last:.3f}")
assert last < 0.9 * first
""")

code(r"""
# The checkpoint in run_dir resumes: asking for 5 more steps continues where it stopped.
demo.steps = DEMO_STEPS + 5
res2 = train.train_base(demo, progress=False)
assert res2["state"]["step"] == DEMO_STEPS + 5
""")

md(r"""
## Summary

* ToyWorld gives captioned images whose content and style are both measurable.
* The text reaches the UNet through cross-attention (`attn2.to_k`, `attn2.to_v` read the text context) — the
  layers the adapters of the next notebooks modify.
* CFG trades diversity for prompt adherence; the sweep above measured where it pays.
* The base model's card (`data/base/model_card.md`) records the command, data version, training time and the
  accuracies measured over every known style x object prompt.

## Exercises

1. Ask for a held-out style (`"a watercolor painting of a cat"`). What does the style classifier say, and why?
2. Re-run the CFG sweep with `STEPS = 10`. Which accuracy suffers first?
3. Give `"sks"` a reserved slot with `model.tokenizer.add_tokens(["sks"])` and sample `"a sks painting of a cat"`.
   The embedding row is untrained: what do you expect before you look?
4. Train the tiny model with `cond_drop=0.0` and try CFG on it. What breaks?
""")

nb = nbf.v4.new_notebook()
nb["cells"] = cells
nb["metadata"]["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
nbf.write(nb, "/work/main/notebooks/02_toy_text_to_image.ipynb")
print("ok", len(cells))
