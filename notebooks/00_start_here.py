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
# # 00 · Start here: the course, and Jittor in ten minutes
#
# This course teaches **few-shot style personalization** of a text-to-image diffusion model with the
# *Guided DoRA* recipe, on a world small enough to train on a laptop CPU in minutes. Every number you see
# is computed live by `gdlib`, the course's Jittor library, and every claim is checked by an `assert`.
#
# **What you will learn here**
# 1. What the course covers and in which order (the map below).
# 2. How `gdlib` sets up Jittor on your machine (CPU or CUDA, oneDNN) and how to read its report.
# 3. Jittor in ten minutes: `Var`, lazy execution and operator fusion, `jt.grad`, `Module`, an optimizer step.
# 4. Why the first call of an op is slow (compilation) and the next ones fast.
# 5. What `gdlib`'s fused kernels buy over plain Jittor, measured on your machine.

# %% [markdown]
# ## The map of the course
#
# | notebook | you learn | you see, computed live |
# | --- | --- | --- |
# | **00 start here** | Jittor, the runtime | backend, oneDNN on, a conv timed cold vs compiled |
# | **01 DDPM, DDIM and SDEs** | forward/reverse SDE, probability-flow ODE, DDIM(η), Tweedie, samplers | sample error vs steps for every sampler on a 2-D world with an exact score |
# | **02 a toy text-to-image model** | ToyWorld, a UNet with cross-attention, classifier-free guidance | samples of the base model, content/style accuracy |
# | **03 LoRA vs DoRA** | magnitude/direction decomposition, merge | the ΔM–ΔD analysis, equal-rank comparison |
# | **04 few-shot style + prompt decoupling** | DreamBooth, prior preservation, attribute words | content leakage with and without decoupling |
# | **05 RB-Modulation** | stochastic optimal control on the Tweedie estimate, style descriptors, attention aggregation | style/content trade-off over guidance strength |
# | **06 Guided DoRA end to end** | the full recipe on held-out styles | the ablation table with a challenge-shaped score and 95% intervals |
#
# Each notebook runs top to bottom on a 2-core CPU with no GPU. Expensive knobs sit in the first code cell.

# %%
# Setup: imports, seed, knobs
import numpy as np
import gdlib                      # prepares Jittor *before* it is imported: always import gdlib first
from gdlib import runtime, plot, timing

jt = runtime.setup_jittor()
from jittor import nn

SEED = 0          # every random number below follows from it
CONV_BATCH = 16   # batch of the timed convolution (larger = slower, steadier timings)
REPEATS = 5       # warm repeats to take the median of
KERNEL_BATCH = 16 # batch of the fused-kernel comparison in section 4
jt.set_global_seed(SEED)
np.random.seed(SEED)

# %% [markdown]
# ## 1. The runtime report
#
# `import gdlib` runs `gdlib.runtime.configure()` before Jittor loads. It decides:
# - **backend**: CUDA only if `nvcc`, the CUDA runtime library and a GPU driver are all there; otherwise the CPU.
#   (`GDLIB_DEVICE=cpu` or `cuda` overrides.) A machine with `nvcc` but no runtime would otherwise crash Jittor's import.
# - **oneDNN**: Jittor's fast CPU convolutions come from Intel's oneDNN. Jittor would download it; `gdlib` points it
#   at the copy installed with the course (the `onednn-cpu-gomp` wheels, or Debian's `libdnnl-dev`) instead.
#   Without it Jittor falls back to its own naive convolutions, slower by orders of magnitude on a CPU
#   (`bench/runtime.py` measures the ratio on your machine).
# - **quiet logs**: Jittor's `[i ...]` lines are off (`GDLIB_VERBOSE=1` brings them back).

# %%
report = runtime.info()
for key, value in report.items():
    print(f"{key:15s} {value}")
if report["backend"] == "cpu" and runtime._find_onednn() is not None:
    assert report["onednn"], "oneDNN is installed but not wired: run `gdlib doctor`"

# %% [markdown]
# ## 2. Jittor in ten minutes
#
# ### 2.1 `Var`: Jittor's array
# A `jt.Var` is like a NumPy array that can also be differentiated and run on a GPU.

# %%
a = jt.array(np.arange(6, dtype=np.float32).reshape(2, 3))
b = jt.ones((2, 3))
c = a * 2 + b
print(type(c).__name__, c.shape, c.dtype)
print(c.numpy())
assert np.allclose(c.numpy(), np.arange(6).reshape(2, 3) * 2 + 1)

# %% [markdown]
# ### 2.2 Lazy execution and fusion
# Jittor does **not** compute `a * 2 + b` when you write it: it records an operation graph and runs it when
# you ask for a value (`.numpy()`, `.sync()`, printing). Before running, it **fuses** chains of element-wise
# operations into one kernel that it compiles to C++ the first time it meets them. So a long chain costs one
# pass over memory, and the *first* run of a new chain pays for compilation.

# %%
x = jt.randn(256, 256)

def chain():
    # five element-wise ops: Jittor fuses them into a single compiled loop
    return ((x * 1.5 + 0.5).exp() - 1.0).abs().sqrt()

t = timing.cold_warm(chain, repeats=REPEATS)
print(f"first call {t['cold']*1e3:.1f} ms (compiles or loads the fused kernel), later calls {t['warm']*1e3:.3f} ms")
y = chain().numpy()
x_np = x.numpy()
assert np.allclose(y, np.sqrt(np.abs(np.exp(x_np * 1.5 + 0.5) - 1.0)), rtol=1e-4, atol=1e-3)  # float32

# %% [markdown]
# ### 2.3 Gradients with `jt.grad`
# `jt.grad(loss, vars)` returns d loss / d var for each var. Check it against calculus:
# for $L = \sum_i w_i^2 x_i$, $\partial L / \partial w_i = 2 w_i x_i$.

# %%
w = jt.array(np.array([1.0, -2.0, 3.0], dtype=np.float32))
xs = jt.array(np.array([0.5, 0.25, 2.0], dtype=np.float32))
L = (w * w * xs).sum()
(dL_dw,) = jt.grad(L, [w])
print("jt.grad:", dL_dw.numpy(), " analytic:", 2 * w.numpy() * xs.numpy())
assert np.allclose(dL_dw.numpy(), 2 * w.numpy() * xs.numpy())


# %% [markdown]
# ### 2.4 `Module` and an optimizer step
# A model is an `nn.Module` whose `execute` method (PyTorch calls it `forward`) computes the output. Its
# `Var` attributes are parameters. `optimizer.step(loss)` does backward + update in one call.
# Below, a two-parameter model learns the line $y = 3x - 1$ from noisy points.

# %%
class Line(nn.Module):
    def __init__(self):
        super().__init__()
        self.slope = jt.zeros(1)
        self.intercept = jt.zeros(1)

    def execute(self, x):
        return self.slope * x + self.intercept

rng = np.random.default_rng(SEED)
x_data = jt.array(rng.uniform(-1, 1, 128).astype(np.float32))
y_data = jt.array((3 * x_data.numpy() - 1 + 0.05 * rng.standard_normal(128)).astype(np.float32))

model = Line()
opt = nn.SGD(model.parameters(), lr=0.3)
losses = []
for step in range(60):
    loss = ((model(x_data) - y_data) ** 2).mean()
    opt.step(loss)
    losses.append(float(loss.numpy()))
print(f"loss {losses[0]:.3f} -> {losses[-1]:.4f}; slope {model.slope.item():.3f}, intercept {model.intercept.item():.3f}")
assert losses[-1] < 0.01 * losses[0]
assert abs(model.slope.item() - 3) < 0.05 and abs(model.intercept.item() + 1) < 0.05
plot.curves({"SGD": list(range(len(losses)))}, {"SGD": losses}, "step", "MSE loss", logy=True,
            title="fitting y = 3x - 1", markers=False);

# %% [markdown]
# ## 3. A convolution, cold vs compiled
#
# The first call of a convolution with a new shape compiles (or loads from Jittor's disk cache) its kernels;
# later calls reuse them. The gap is what you wait for the first time a notebook cell runs. Below: forward and
# backward of one `Conv2d`, first call vs the median of the next ones.

# %%
conv = nn.Conv2d(3, 32, 3, padding=1)
images = jt.randn(CONV_BATCH, 3, 32, 32)

def conv_fwd_bwd():
    out = conv(images)
    return jt.grad((out * out).mean(), [conv.weight])

t_conv = timing.cold_warm(conv_fwd_bwd, repeats=REPEATS)
print(f"conv forward+backward: first call {t_conv['cold']*1e3:.1f} ms, compiled {t_conv['warm']*1e3:.2f} ms "
      f"({t_conv['cold']/t_conv['warm']:.0f}x)")
assert t_conv["cold"] > t_conv["warm"], "the first call includes compiling/loading kernels"
plot.bars({"first call": t_conv["cold"] * 1e3, "compiled": t_conv["warm"] * 1e3}, "ms", logy=True,
          title="Conv2d forward+backward");

# %% [markdown]
# ## 4. What the fused kernels buy
#
# Jittor fuses element-wise chains by itself, but its generated CPU loops run on one thread, and a GroupNorm
# is a reduction followed by a broadcast chain: several passes over memory. `gdlib.kernels` holds hand-written
# ops for the UNet's hot spots (GroupNorm + FiLM + SiLU in one op; attention softmax(QK^T/sqrt(d))V without
# storing the attention matrix, reading the heads straight from the projections' layout; GELU with the
# Linear bias folded in; the AdamW step as one op per parameter), multithreaded with OpenMP, each with its
# backward and a plain-Jittor reference. One switch, `kernels_enabled(False)`, selects the references. Below: the same forward+backward
# on UNet-sized inputs, both paths, first checked equal, then timed.

# %%
from gdlib import kernels as K

print("fused ops compiled:", K.fused_status())
rng = np.random.default_rng(SEED)
gn_x = jt.array(rng.standard_normal((KERNEL_BATCH, 64, 16, 16)).astype(np.float32))
gn_w, gn_b = jt.ones(64), jt.zeros(64)
gn_shift = jt.array(rng.standard_normal((KERNEL_BATCH, 64)).astype(np.float32))
q = jt.array(rng.standard_normal((KERNEL_BATCH, 4, 64, 16)).astype(np.float32))
kv = jt.array(rng.standard_normal((KERNEL_BATCH, 4, 64, 16)).astype(np.float32))

def gn_step():
    y = K.group_norm(gn_x, 8, gn_w, gn_b, shift=gn_shift, silu=True)
    return [y] + jt.grad((y * y).sum(), [gn_x, gn_w])

def attn_step():
    o = K.attention(q, kv, kv)
    return [o] + jt.grad((o * o).sum(), [q, kv])

measured = {}
for name, step in [("GroupNorm+SiLU", gn_step), ("attention", attn_step)]:
    with K.kernels_enabled(False):
        ref_out = [v.numpy() for v in step()]
        t_ref = timing.cold_warm(step, repeats=REPEATS)["warm"]
    with K.kernels_enabled(True):
        fused_out = [v.numpy() for v in step()]
        t_fused = timing.cold_warm(step, repeats=REPEATS)["warm"]
    for a, b in zip(fused_out, ref_out):   # same numbers (float32), forward and gradients
        assert np.allclose(a, b, rtol=1e-4, atol=1e-4), name
    measured[f"{name} ref"] = t_ref * 1e3
    measured[f"{name} fused"] = t_fused * 1e3
    print(f"{name:15s} reference {t_ref*1e3:7.2f} ms   fused {t_fused*1e3:7.2f} ms   speed-up {t_ref/t_fused:.1f}x")
plot.bars(measured, "ms (forward + backward, median)", title="fused kernels vs plain-Jittor references");

# %% [markdown]
# The speed-up you see depends on your CPU and on what else runs on it; `python bench/unet.py --kernels both`
# and `python bench/kernels.py --unet` measure the whole UNet train step against a PyTorch twin.
#
# How much does oneDNN buy? That needs two processes (the choice is made before Jittor loads), so it lives in a
# benchmark: `python bench/runtime.py` trains the same small conv net in Jittor with oneDNN, in Jittor without
# it, and in PyTorch, and prints the ratios.
#
# ## Summary
# - `import gdlib` first: it picks the backend, wires oneDNN and silences Jittor's logs; `gdlib doctor` (or
#   `runtime.info()`) tells you what it chose.
# - Jittor is lazy: it records operations, fuses element-wise chains, compiles them on first use and caches them.
# - `jt.grad` gives gradients; an `nn.Module` holds parameters; `optimizer.step(loss)` trains.
# - `gdlib.kernels` replaces the UNet's hottest op chains by fused, multithreaded ops that give the same numbers
#   as their references; `kernels_enabled(False)` switches them off.
#
# ## Exercises
# 1. Make the chain in 2.2 longer (ten ops). Does the warm time grow by ten times? Why not?
# 2. Change `CONV_BATCH` to 64 and compare cold and warm times. Which one grows with the batch?
# 3. In 2.4, set `lr=1.2`. What happens to the loss, and why (hint: the curvature of the MSE)?
# 4. In section 4, set `KERNEL_BATCH = 1`. Does the fused kernel still win? (Hint: starting threads costs time.)
# 5. Run `GDLIB_NO_ONEDNN=1 python -c "import gdlib; from gdlib import runtime; print(runtime.info())"` in a terminal.
