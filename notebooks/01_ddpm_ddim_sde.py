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
# # 01 · DDPM, DDIM and SDEs — on a density we know exactly
#
# Diffusion samplers are easiest to understand when nothing is learned. Here the data is a 2-D Gaussian mixture, so the
# noisy density $p_t$ is again a Gaussian mixture **for every $t$**, and the ideal noise predictor
# $\hat\epsilon(x_t, t) = \mathbb E[\epsilon \mid x_t]$ is a formula (`gdlib.mixture`). Every sampler in `gdlib.sampling`
# then runs with a perfect model, and every difference you see is the sampler's, not the network's.
#
# **What you will learn**
# 1. The forward process $x_t = \sqrt{\bar\alpha_t}\,x_0 + \sqrt{1-\bar\alpha_t}\,\epsilon$ and diffusers' beta schedules / timestep spacings.
# 2. Score, noise prediction and **Tweedie's estimate** $\mathbb E[x_0\mid x_t]$ — derived, then checked against `gdlib`.
# 3. The **training objective**: each KL term of the ELBO is a weighted noise regression, and $L_{\text{simple}}$ drops the weight.
# 4. The **reverse SDE** (DDPM, Euler-ancestral) versus the **probability-flow ODE** (DDIM with $\eta=0$, Euler, DPM-Solver++).
# 5. Why **DDIM($\eta=0$) is exactly Euler on the PF-ODE**, and what $\eta$ does.
# 6. A measured curve of sample error against the number of model evaluations (NFE) for every sampler.
#
# The schedules and samplers give the same numbers as diffusers' `DDPMScheduler`, `DDIMScheduler`,
# `EulerDiscreteScheduler`, `EulerAncestralDiscreteScheduler` and `DPMSolverMultistepScheduler`
# (`tests/test_parity_schedulers.py` checks this when the parity extra is installed).

# %%
# Setup: imports, seed, knobs. The expensive knobs are here.
import math
import numpy as np
import matplotlib.pyplot as plt

from gdlib import runtime
jt = runtime.setup_jittor()          # always through gdlib: it wires the CPU/oneDNN runtime first
from gdlib import mixture as M, plot, sampling as S, schedules, widgets
from gdlib.schedules import NoiseSchedule

SEED = 0
N_POINTS = 2000                      # points per sample cloud (error curves); more = smoother curves, slower
STEP_GRID = [3, 5, 10, 20, 50]       # numbers of model evaluations (NFE) for the error curves
N_SEEDS = 2                          # independent repeats averaged per point of the curves
np.random.seed(SEED)

mix = M.ring_mixture()               # 6 elongated Gaussians on a ring
sched = NoiseSchedule()              # DDPM's linear betas, T = 1000, epsilon prediction, "leading" spacing
print(sched)

# %% [markdown]
# ## 1. The forward process and the schedule
#
# With $\beta_t$ the per-step noise and $\bar\alpha_t=\prod_{s\le t}(1-\beta_s)$, the forward process has the closed form
# $q(x_t\mid x_0)=\mathcal N(\sqrt{\bar\alpha_t}x_0,(1-\bar\alpha_t)I)$ (`NoiseSchedule.add_noise`). If
# $x_0\sim\sum_k w_k\mathcal N(\mu_k,\Sigma_k)$, then
# $$p_t=\sum_k w_k\,\mathcal N\big(\sqrt{\bar\alpha_t}\mu_k,\ \bar\alpha_t\Sigma_k+(1-\bar\alpha_t)I\big).$$
# We check that claim: noising exact samples with `add_noise` must give the same cloud as sampling that closed form.

# %%
x0 = mix.sample(N_POINTS, SEED)
eps = np.random.default_rng(SEED + 1).standard_normal(x0.shape)
swd_floor = M.sliced_wasserstein(mix.sample(N_POINTS, 100), mix.sample(N_POINTS, 101))
print(f"finite-sample floor: sliced W2 between two exact clouds = {swd_floor:.4f}")

fig, axes = plt.subplots(1, 5, figsize=(14, 3))
for ax, t in zip(axes, [0, 100, 250, 500, 999]):
    x_t = sched.add_noise(x0, eps, t)
    abar = sched.alphas_cumprod[t]
    p_t = M.GaussianMixture(mix.weights, math.sqrt(abar) * mix.means, abar * mix.covs + (1 - abar) * np.eye(2))
    closed = p_t.sample(N_POINTS, SEED + 2)
    d = M.sliced_wasserstein(x_t, closed)
    floor_t = M.sliced_wasserstein(p_t.sample(N_POINTS, 200), p_t.sample(N_POINTS, 201))  # noise at this spread
    assert d < 2.5 * floor_t, (t, d, floor_t)   # same distribution up to sampling noise
    plot.points_2d({"add_noise": x_t, "closed-form p_t": closed}, ax=ax, lim=3.2, s=1,
                   title=f"t={t}  abar={abar:.3f}\nSWD={d:.3f} (floor {floor_t:.3f})")
plt.show()

# %% [markdown]
# diffusers' three beta schedules, and how $N$ inference steps are picked among the $T=1000$ training steps.
# Both Stable Diffusion 2.1 checkpoints use `scaled_linear` betas, `steps_offset=1` and `leading` spacing, but they differ in
# what the network predicts: the 768 px `stable-diffusion-2-1` predicts $v$ (v-prediction), the 512 px
# `stable-diffusion-2-1-base` predicts $\epsilon$. `NoiseSchedule.stable_diffusion_2_1()` is the 768 px configuration; with
# 50 steps the timesteps (the same for both) are 981, 961, …, 1.

# %%
named = {"linear": NoiseSchedule(),
         "scaled_linear (SD)": NoiseSchedule(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
         "squaredcos_cap_v2": NoiseSchedule(beta_schedule="squaredcos_cap_v2")}
t_axis = np.arange(1000)
fig = plot.curves({k: t_axis for k in named}, {k: s.alphas_cumprod for k, s in named.items()},
                  xlabel="t", ylabel="abar_t", markers=False, title="alphas_cumprod")
plt.show()

for spacing in ["leading", "trailing", "linspace"]:
    print(f"{spacing:9s} N=10:", NoiseSchedule(timestep_spacing=spacing).timesteps(10).tolist())
sd21 = NoiseSchedule.stable_diffusion_2_1()
ts50 = sd21.timesteps(50)
print("SD 2.1, 50 steps:", ts50[:4].tolist(), "...", ts50[-3:].tolist())
assert ts50[0] == 981 and ts50[-1] == 1 and np.all(np.diff(ts50) == -20)

# %% [markdown]
# ## 2. Score, noise prediction and Tweedie's estimate
#
# For any density, Tweedie's formula gives the posterior mean of the clean point from the score of the noisy marginal:
# $$\mathbb E[x_0\mid x_t]=\frac{x_t+(1-\bar\alpha_t)\nabla\log p_t(x_t)}{\sqrt{\bar\alpha_t}} .$$
# *Derivation.* $p_t(x_t)=\int p_0(x_0)\,\mathcal N(x_t;\sqrt{\bar\alpha}x_0,(1-\bar\alpha)I)\,dx_0$. Differentiate under the
# integral: $\nabla p_t(x_t)=\int p_0(x_0)\mathcal N(\cdot)\,\frac{\sqrt{\bar\alpha}x_0-x_t}{1-\bar\alpha}dx_0$; divide by $p_t$ to get
# $\nabla\log p_t=\frac{\sqrt{\bar\alpha}\,\mathbb E[x_0\mid x_t]-x_t}{1-\bar\alpha}$ and solve for the mean.
# Since $x_t=\sqrt{\bar\alpha}x_0+\sqrt{1-\bar\alpha}\,\epsilon$, the same argument gives
# $\mathbb E[\epsilon\mid x_t]=-\sqrt{1-\bar\alpha}\,\nabla\log p_t(x_t)$ — the ideal noise predictor — and then
# $\mathbb E[x_0\mid x_t]=(x_t-\sqrt{1-\bar\alpha}\,\hat\epsilon)/\sqrt{\bar\alpha}$, which is `schedules.tweedie_x0`.
#
# Check 1: the formula against `gdlib` (score route vs eps route). Check 2: both against a brute-force Monte-Carlo
# posterior mean (importance-weight prior samples by the likelihood $\mathcal N(x_t;\sqrt{\bar\alpha}x_0,(1-\bar\alpha)I)$).

# %%
t = 150
abar = float(sched.alphas_cumprod[t])
x_q = np.array([[0.4, 0.2], [-0.5, 0.5], [0.0, -0.7], [0.9, -0.1]])      # a few noisy query points
print(f"t = {t}: abar = {abar:.3f}")
eps_hat = mix.eps(x_q, abar)
x0_tweedie = schedules.tweedie_x0(eps_hat, x_q, abar)                   # gdlib
x0_score = (x_q + (1 - abar) * mix.score(x_q, abar)) / math.sqrt(abar)  # the formula above
prior = mix.sample(400_000, 7)
logw = -((x_q[:, None, :] - math.sqrt(abar) * prior[None]) ** 2).sum(-1) / (2 * (1 - abar))
w = np.exp(logw - logw.max(1, keepdims=True)); w /= w.sum(1, keepdims=True)
x0_mc = w @ prior
print("Tweedie (gdlib)    :", np.round(x0_tweedie, 4).tolist())
print("Monte-Carlo E[x0|x]:", np.round(x0_mc, 4).tolist())
err_formula = np.abs(x0_tweedie - x0_score).max()
err_mc = np.abs(x0_tweedie - x0_mc).max()
print(f"max |gdlib - formula| = {err_formula:.2e},  max |gdlib - Monte Carlo| = {err_mc:.3f}")
assert err_formula < 1e-10 and err_mc < 0.02

# %% [markdown]
# Tweedie's estimate drawn: arrows from noisy points $x_t$ to $\mathbb E[x_0\mid x_t]$. At small $t$ it nearly
# denoises; at large $t$ every point is pulled toward the **mean of the data** — a blurry average, which is what a
# one-step prediction from pure noise must be.

# %%
rng = np.random.default_rng(3)
fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.6))
spread = []
for ax, t in zip(axes, [50, 300, 800]):
    abar = float(sched.alphas_cumprod[t])
    x_t = sched.add_noise(mix.sample(60, 4), rng.standard_normal((60, 2)), t)
    x0_hat = schedules.tweedie_x0(mix.eps(x_t, abar), x_t, abar)
    spread.append(float(np.linalg.norm(x0_hat - x0_hat.mean(0), axis=1).mean()))
    plot.tweedie_arrows(x_t, x0_hat, x0, ax=ax, lim=2.2, title=f"t={t}: spread of x0_hat = {spread[-1]:.2f}")
plt.show()
assert spread[0] > spread[1] > spread[2]   # the estimate collapses toward the mean as t grows

# %% [markdown]
# ## 3. The training objective: from the ELBO to $L_{\text{simple}}$
#
# The network is trained on a variational bound on $-\log p_\theta(x_0)$ (Ho et al. 2020, Eq. 5), a sum of KL terms plus a
# decoder term:
# $$L=\mathbb E_q\Big[\underbrace{D_{KL}\big(q(x_T\mid x_0)\,\|\,p(x_T)\big)}_{L_T}+\sum_{t>1}\underbrace{D_{KL}\big(q(x_{t-1}\mid x_t,x_0)\,\|\,p_\theta(x_{t-1}\mid x_t)\big)}_{L_{t-1}}\ \underbrace{-\log p_\theta(x_0\mid x_1)}_{L_0}\Big].$$
# $L_T$ has no parameters. Each $L_{t-1}$ compares the model's reverse step with the forward posterior, which is Gaussian
# (Bayes' rule on $q(x_t\mid x_{t-1})\,q(x_{t-1}\mid x_0)$; the precisions add):
# $$q(x_{t-1}\mid x_t,x_0)=\mathcal N(\tilde\mu_t,\tilde\beta_tI),\qquad
# \tilde\mu_t=\frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1-\bar\alpha_t}x_0+\frac{\sqrt{\alpha_t}\,(1-\bar\alpha_{t-1})}{1-\bar\alpha_t}x_t,\qquad
# \tilde\beta_t=\frac{1-\bar\alpha_{t-1}}{1-\bar\alpha_t}\beta_t .$$
# Substituting $x_0=(x_t-\sqrt{1-\bar\alpha_t}\,\epsilon)/\sqrt{\bar\alpha_t}$ gives
# $\tilde\mu_t=\frac{1}{\sqrt{\alpha_t}}\big(x_t-\frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\epsilon\big)$, so Ho et al. give the model the same form
# with a noise prediction, $\mu_\theta=\frac{1}{\sqrt{\alpha_t}}\big(x_t-\frac{\beta_t}{\sqrt{1-\bar\alpha_t}}\hat\epsilon_\theta(x_t,t)\big)$, and a
# fixed variance $\rho_t^2$ (their $\sigma_t^2$; renamed because $\sigma$ is the noise level of section 5). Between Gaussians
# with fixed isotropic variances only the means carry $\theta$:
# $$L_{t-1}=\frac{\|\tilde\mu_t-\mu_\theta\|^2}{2\rho_t^2}+C=\frac{\beta_t^2}{2\rho_t^2\,\alpha_t(1-\bar\alpha_t)}\,\|\epsilon-\hat\epsilon_\theta(x_t,t)\|^2+C
# \qquad\text{(Ho et al. Eq. 12)},$$
# with $C=0$ when $\rho_t^2=\tilde\beta_t$. So the bound is a weighted noise regression. Ho et al. drop the weight (Eq. 14):
# $$L_{\text{simple}}=\mathbb E_{t,x_0,\epsilon}\big\|\epsilon-\hat\epsilon_\theta\big(\sqrt{\bar\alpha_t}x_0+\sqrt{1-\bar\alpha_t}\,\epsilon,\ t\big)\big\|^2 ,$$
# which, relative to the bound, down-weights the small-$t$ terms and gave them better samples. A squared-error regression is
# minimised by the conditional mean, $\hat\epsilon=\mathbb E[\epsilon\mid x_t]$: the exact predictor of section 2, which is why
# `mix.eps` stands in for a perfectly trained network throughout this notebook. Two common variants keep the same regression:
# - **v-prediction** (Salimans & Ho 2022) re-parameterises the output as $v=\sqrt{\bar\alpha_t}\,\epsilon-\sqrt{1-\bar\alpha_t}\,x_0$; for the
#   implied predictions $\|v-\hat v\|^2=\|\epsilon-\hat\epsilon\|^2/\bar\alpha_t$, i.e. the $\epsilon$ loss re-weighted by $1/\bar\alpha_t$.
# - **Min-SNR-$\gamma$** (Hang et al. 2023) changes only the per-$t$ weight: with $\mathrm{SNR}_t=\bar\alpha_t/(1-\bar\alpha_t)$ the $\epsilon$ loss is
#   weighted by $\min(1,\gamma/\mathrm{SNR}_t)$, i.e. $\min(\mathrm{SNR}_t,\gamma)$ on the $x_0$ loss, which caps the weight of the low-noise (high-SNR) steps.
#
# Check, on random $x_0,\epsilon,\hat\epsilon$ at a few $t$ of `sched`: (a) $\tilde\mu_t,\tilde\beta_t$ from Bayes' rule equal the closed
# forms, and the $\epsilon$ form of $\tilde\mu_t$ too; (b) the Gaussian KL computed from the two means and variances equals the
# weighted $\|\epsilon-\hat\epsilon\|^2$; (c) the weight with $\rho_t^2=\tilde\beta_t$ over $t$ — it spans two orders of magnitude,
# largest at small $t$, which is the weighting $L_{\text{simple}}$ discards. (d) The v-prediction identity above.

# %%
rng = np.random.default_rng(11)
print("   t   weight beta^2/(2 rho^2 alpha (1-abar))   KL rel. err")
for t in [1, 10, 100, 500, 999]:                    # sched's index t; t - 1 is the previous step
    beta = float(sched.betas[t]); alpha = 1 - beta
    alpha_bar, alpha_bar_prev = float(sched.alphas_cumprod[t]), float(sched.alphas_cumprod[t - 1])
    x_0, eps, eps_hat = rng.standard_normal((3, 2))
    x_t = math.sqrt(alpha_bar) * x_0 + math.sqrt(1 - alpha_bar) * eps
    # (a) Bayes: q(x_t | x_{t-1}) q(x_{t-1} | x_0) as a Gaussian in x_{t-1}: precisions add, means precision-weighted
    precision = alpha / beta + 1 / (1 - alpha_bar_prev)
    mu_bayes = (math.sqrt(alpha) / beta * x_t + math.sqrt(alpha_bar_prev) / (1 - alpha_bar_prev) * x_0) / precision
    mu_tilde = (math.sqrt(alpha_bar_prev) * beta / (1 - alpha_bar)) * x_0 \
             + (math.sqrt(alpha) * (1 - alpha_bar_prev) / (1 - alpha_bar)) * x_t
    beta_tilde = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
    assert np.allclose(mu_bayes, mu_tilde, rtol=0, atol=1e-10) and math.isclose(1 / precision, beta_tilde, rel_tol=1e-10)
    assert np.allclose(mu_tilde, (x_t - beta / math.sqrt(1 - alpha_bar) * eps) / math.sqrt(alpha), rtol=0, atol=1e-10)
    # (b) KL(N(mu_tilde, beta_tilde I) || N(mu_theta, rho2 I)), general formula for diagonal Gaussians, rho2 = beta_tilde
    mu_theta = (x_t - beta / math.sqrt(1 - alpha_bar) * eps_hat) / math.sqrt(alpha)
    rho2 = beta_tilde
    kl = 0.5 * np.sum(beta_tilde / rho2 + (mu_tilde - mu_theta) ** 2 / rho2 - 1 + np.log(rho2 / beta_tilde))
    weight = beta ** 2 / (2 * rho2 * alpha * (1 - alpha_bar))
    rel = abs(kl - weight * np.sum((eps - eps_hat) ** 2)) / kl
    assert rel < 1e-10, (t, rel)
    # (d) v-prediction: the same prediction error measured on v is the eps error divided by alpha_bar
    x0_hat = (x_t - math.sqrt(1 - alpha_bar) * eps_hat) / math.sqrt(alpha_bar)
    v, v_hat = (math.sqrt(alpha_bar) * e - math.sqrt(1 - alpha_bar) * x for e, x in ((eps, x_0), (eps_hat, x0_hat)))
    assert math.isclose(np.sum((v - v_hat) ** 2), np.sum((eps - eps_hat) ** 2) / alpha_bar, rel_tol=1e-8)
    print(f"{t:4d}   {weight:.4f}                                {rel:.1e}")

# (c) the weight over all t >= 1 with rho^2 = beta_tilde: what L_simple throws away
betas, alpha_bars = sched.betas, sched.alphas_cumprod
beta_tildes = (1 - alpha_bars[:-1]) / (1 - alpha_bars[1:]) * betas[1:]
weights = betas[1:] ** 2 / (2 * beta_tildes * (1 - betas[1:]) * (1 - alpha_bars[1:]))
print(f"weight over t = 1..999: max {weights.max():.3f} (t={1 + weights.argmax()}), "
      f"min {weights.min():.4f} (t={1 + weights.argmin()}), ratio {weights.max() / weights.min():.0f}")
assert weights.argmax() == 0 and weights.max() / weights.min() > 100

# %% [markdown]
# ## 4. Reverse SDE versus probability-flow ODE
#
# The VP forward SDE $dx=-\tfrac12\beta(t)x\,dt+\sqrt{\beta(t)}\,dw$ has two reverse-time processes with the same marginals
# $p_t$ (Song et al. 2021):
# - the **reverse SDE** $dx=[-\tfrac12\beta x-\beta\nabla\log p_t(x)]dt+\sqrt{\beta}\,d\bar w$ — DDPM's ancestral sampler and
#   Euler-ancestral are discretisations; paths are noisy and the end point is random given $x_T$;
# - the **probability-flow ODE** $\frac{dx}{dt}=-\tfrac12\beta(t)[x+\nabla\log p_t(x)]$ — deterministic: DDIM($\eta=0$),
#   Euler and DPM-Solver++ integrate it, and $x_T$ fixes $x_0$.
#
# Below: the same $x_T$, 50 steps, the first 16 trajectories drawn in the $x_t$ frame.

# %%
sde = M.run_sampler_2d("ddpm", 50, n=N_POINTS, seed=SEED, mix=mix, schedule=sched)
ode = M.run_sampler_2d("ddim", 50, 0.0, n=N_POINTS, seed=SEED, mix=mix, schedule=sched)
fig, axes = plt.subplots(1, 2, figsize=(7.6, 3.8))
plot.points_2d({"exact": sde["exact"], "DDPM": sde["samples"]}, paths=sde["paths"], ax=axes[0], lim=2.6,
               title=f"reverse SDE (DDPM): SWD {sde['swd']:.3f}")
plot.points_2d({"exact": ode["exact"], "DDIM eta=0": ode["samples"]}, paths=ode["paths"], ax=axes[1], lim=2.6,
               title=f"PF-ODE (DDIM eta=0): SWD {ode['swd']:.3f}")
plt.show()

# Same x_T: fresh noise moves the SDE end points; the ODE has no noise, so a rerun reproduces its end points.
sde2 = M.run_sampler_2d("ddpm", 50, n=N_POINTS, seed=SEED, mix=mix, schedule=sched)
ode2 = M.run_sampler_2d("ddim", 50, 0.0, n=N_POINTS, seed=SEED, mix=mix, schedule=sched)
noise_rng = np.random.default_rng(99)
sde3 = S.sample_ddpm(mix.model(sched), sde["x_T"], sched, 50,
                     noise_fn=lambda shape: noise_rng.standard_normal(shape).astype(np.float32)).numpy()
move_sde = float(np.linalg.norm(sde3 - sde["samples"], axis=1).mean())
move_ode = float(np.abs(ode2["samples"] - ode["samples"]).max())
print(f"SDE, fresh noise: mean end-point change {move_sde:.3f};  ODE, rerun: max change {move_ode:.1e} (deterministic)")
assert np.array_equal(ode2["samples"], ode["samples"]) and np.array_equal(sde2["samples"], sde["samples"])
assert move_sde > 0.1
# ... and both land on the data distribution (within 2x the finite-sample floor)
assert sde["swd"] < 2 * swd_floor and ode["swd"] < 2 * swd_floor, (sde["swd"], ode["swd"], swd_floor)

# %% [markdown]
# ## 5. DDIM($\eta=0$) is Euler on the probability-flow ODE
#
# Divide by $\sqrt{\bar\alpha}$: with $\bar x=x/\sqrt{\bar\alpha}$ and $\sigma=\sqrt{(1-\bar\alpha)/\bar\alpha}$,
# $x_t=\sqrt{\bar\alpha}x_0+\sqrt{1-\bar\alpha}\epsilon$ becomes $\bar x=x_0+\sigma\epsilon$, and the PF-ODE becomes
# $d\bar x/d\sigma=\hat\epsilon(\bar x,\sigma)=(\bar x-D(\bar x,\sigma))/\sigma$, with $D$ the Tweedie denoiser.
# The DDIM update with $\eta=0$,
# $x_{prev}=\sqrt{\bar\alpha_{prev}}\hat x_0+\sqrt{1-\bar\alpha_{prev}}\hat\epsilon$, divided by $\sqrt{\bar\alpha_{prev}}$ reads
# $\bar x_{prev}=\hat x_0+\sigma_{prev}\hat\epsilon=\bar x+(\sigma_{prev}-\sigma)\hat\epsilon$ — one Euler step in $\sigma$.
# So `sample_ddim(eta=0)` and k-diffusion-style `sample_euler` on the same sigmas must agree to float32 round-off.
# The same algebra shows DDIM($\eta$) is Euler-ancestral($\eta$): DDIM's noise std $\eta\,s_t$ (section 6) divided by
# $\sqrt{\bar\alpha_{prev}}$ equals k-diffusion's $\sigma_{up}=\eta\,\sigma_{prev}\sqrt{(\sigma^2-\sigma_{prev}^2)/\sigma^2}$, and
# $\sqrt{\sigma_{prev}^2-\sigma_{up}^2}=\sigma_{down}$. And DDPM is DDIM($\eta=1$).

# %%
model = mix.model(sched)
x_T = np.random.default_rng(5).standard_normal((N_POINTS, 2)).astype(np.float32)
n = 12
ts, sigmas = sched.euler_sigmas(n)
den = S.Denoiser(model, sched, ts, sigmas[:-1])
x_bar_T = x_T * math.sqrt(1 + sigmas[0] ** 2)
ddim0 = S.sample_ddim(model, x_T, sched, n, eta=0.0).numpy()
euler = S.sample_euler(den, x_bar_T, sigmas).numpy()
d_ode = float(np.abs(ddim0 - euler).max())

def fixed_noise(seed):
    r = np.random.default_rng(seed)
    return lambda shape: r.standard_normal(shape).astype(np.float32)

ddim1 = S.sample_ddim(model, x_T, sched, n, eta=1.0, noise_fn=fixed_noise(8)).numpy()
anc1 = S.sample_euler_ancestral(den, x_bar_T, sigmas, eta=1.0, noise_fn=fixed_noise(8)).numpy()
ddpm = S.sample_ddpm(model, x_T, sched, n, noise_fn=fixed_noise(8)).numpy()
d_anc, d_ddpm = float(np.abs(ddim1 - anc1).max()), float(np.abs(ddim1 - ddpm).max())
print(f"max |DDIM(0) - Euler PF-ODE|          = {d_ode:.2e}")
print(f"max |DDIM(1) - Euler-ancestral(1)|    = {d_anc:.2e}")
print(f"max |DDIM(1) - DDPM| (same noise)     = {d_ddpm:.2e}")
assert d_ode < 1e-4 and d_anc < 1e-4 and d_ddpm < 1e-4

# %% [markdown]
# ## 6. What $\eta$ does
#
# $\eta$ scales the fresh noise DDIM injects at each step, $\text{std}=\eta\,s_t$ with
# $s_t^2=\frac{1-\bar\alpha_{prev}}{1-\bar\alpha}(1-\bar\alpha/\bar\alpha_{prev})$ (Song et al.'s $\sigma_t$, renamed because
# $\sigma$ is the noise level $\sqrt{(1-\bar\alpha)/\bar\alpha}$ of section 5), and takes the same variance out of the
# deterministic direction. $\eta=0$ is the ODE; $\eta=1$ is DDPM. Measured below at 10 steps: how far the end points move
# when only the injected noise changes (how random the map $x_T\mapsto x_0$ is; it saturates once the end point has
# forgotten $x_T$), and the sample error.

# %%
etas = [0.0, 0.25, 0.5, 0.75, 1.0]
moves, errs = [], []
for eta in etas:
    a = S.sample_ddim(model, x_T, sched, 10, eta=eta, noise_fn=fixed_noise(1)).numpy()
    b = S.sample_ddim(model, x_T, sched, 10, eta=eta, noise_fn=fixed_noise(2)).numpy()
    moves.append(float(np.linalg.norm(a - b, axis=1).mean()))
    errs.append(M.sliced_wasserstein(a, mix.sample(N_POINTS, 42)))
fig, axes = plt.subplots(1, 2, figsize=(8, 3))
axes[0].plot(etas, moves, "o-"); axes[0].set_xlabel("eta"); axes[0].set_ylabel("end-point change, new noise")
axes[1].plot(etas, errs, "o-"); axes[1].set_xlabel("eta"); axes[1].set_ylabel("sliced W2 at 10 steps")
fig.tight_layout(); plt.show()
print("end-point change:", np.round(moves, 3).tolist())
print("SWD at 10 steps :", np.round(errs, 4).tolist())
# eta = randomness: none at 0, growing with eta until the end point has forgotten x_T (then it saturates)
assert moves[0] == 0.0 < moves[1] < moves[2] and min(moves[1:]) > 0.2
assert errs[0] < errs[-1]   # at few steps the deterministic sampler is the more accurate one here

# %% [markdown]
# ## 7. Sample error against the number of model evaluations
#
# Every sampler here calls the model once per step, so NFE = steps. Error = sliced Wasserstein-2 distance between
# `N_POINTS` samples and as many exact samples, averaged over `N_SEEDS` seeds; the dashed line is the distance between
# two exact clouds (the floor no sampler can beat with this many points). `dpmpp_2m (karras)` uses Karras et al.'s
# sigma spacing instead of the schedule's.

# %%
runs = {"ddpm": ("ddpm", 0.0, False), "ddim (eta=0)": ("ddim", 0.0, False), "euler (PF-ODE)": ("euler", 0.0, False),
        "euler_ancestral (eta=1)": ("euler_ancestral", 1.0, False), "dpmpp_2m": ("dpmpp_2m", 0.0, False),
        "dpmpp_2m (karras)": ("dpmpp_2m", 0.0, True)}
err = {}
for label, (name, eta, karras) in runs.items():
    err[label] = [float(np.mean([M.run_sampler_2d(name, k, eta, n=N_POINTS, seed=s, mix=mix, schedule=sched,
                                                  karras=karras, n_paths=0)["swd"] for s in range(N_SEEDS)]))
                  for k in STEP_GRID]
    print(f"{label:24s}", np.round(err[label], 4).tolist())
fig = plot.curves({k: STEP_GRID for k in err}, err, xlabel="model evaluations (NFE)", ylabel="sliced W2 to exact",
                  logx=True, logy=True, title="sample error vs NFE (exact model)")
fig.axes[0].axhline(swd_floor, ls="--", color="gray", lw=1)
fig.axes[0].set_xticks(STEP_GRID, [str(k) for k in STEP_GRID]); fig.axes[0].minorticks_off()
plt.show()

# %% [markdown]
# What the curve shows, asserted on the numbers just measured:
# - every sampler's error is lower at 50 NFE than at 3 NFE, and within 2x the finite-sample floor at 50 NFE;
# - DDIM and Euler are the same curve (section 5), and so are DDPM and Euler-ancestral($\eta=1$);
# - at few steps the ODE samplers beat the SDE samplers, and the second-order multistep DPM-Solver++(2M) beats first-order
#   DDIM/Euler: at 5 and 10 NFE, DPM-Solver++(2M) < DDIM < DDPM.

# %%
i5, i10, i50 = STEP_GRID.index(5), STEP_GRID.index(10), STEP_GRID.index(50)
for label, e in err.items():
    assert e[i50] < e[STEP_GRID.index(3)] and e[i50] < 2 * swd_floor, (label, e, swd_floor)
assert np.allclose(err["ddim (eta=0)"], err["euler (PF-ODE)"], rtol=1e-3)
assert np.allclose(err["ddpm"], err["euler_ancestral (eta=1)"], rtol=1e-3)
for i in (i5, i10):
    assert err["dpmpp_2m"][i] < err["ddim (eta=0)"][i] < err["ddpm"][i], {k: v[i] for k, v in err.items()}
print(f"at 10 NFE: DPM-Solver++(2M) {err['dpmpp_2m'][i10]:.4f} < DDIM {err['ddim (eta=0)'][i10]:.4f} "
      f"< DDPM {err['ddpm'][i10]:.4f}  (floor {swd_floor:.4f})")

# %% [markdown]
# ## 8. Explore
#
# Pick a sampler, a number of steps and $\eta$ (used by `ddim` and `euler_ancestral`). Left: samples, exact points and
# trajectories; right: the Tweedie estimates $\hat x_0$ each step saw. The widget wraps the pure function
# `gdlib.mixture.run_sampler_2d`; the cell drives it once headlessly to check it.

# %%
ex = widgets.sampler_explorer(n=1000)
ex.update()
ex.controls["sampler"].value = "euler_ancestral"
ex.controls["eta"].value = 1.0
assert ex.error is None and ex.result["nfe"] == ex.controls["steps"].value and ex.result["sampler"] == "euler_ancestral"
ex.widget

# %% [markdown]
# ## Summary
# - `NoiseSchedule` holds diffusers' beta schedules, spacings and prediction types; `add_noise`, `to_x0_eps` and
#   `tweedie_x0` are the forward process and its inversions.
# - Tweedie's estimate is the score in disguise: $\mathbb E[x_0\mid x_t]=(x_t+(1-\bar\alpha)\nabla\log p_t)/\sqrt{\bar\alpha}$ —
#   RB-Modulation (notebook 05) steers exactly this estimate.
# - Training is the ELBO in disguise: each KL term is a weighted regression $\|\epsilon-\hat\epsilon\|^2$, $L_{\text{simple}}$ drops
#   the weight, and its minimiser is $\mathbb E[\epsilon\mid x_t]$ — the exact model used here.
# - DDIM($\eta=0$) = Euler on the PF-ODE; DDIM($\eta=1$) = DDPM = Euler-ancestral: one family, one knob.
# - With an exact model, sample error is purely discretisation error: DPM-Solver++(2M) < DDIM < DDPM at few steps.
#
# ## Exercises
# 1. Switch `sched` to `NoiseSchedule(beta_schedule="squaredcos_cap_v2")` and re-run section 7. Which sampler gains most?
# 2. Use `trailing` spacing: does DDIM($\eta=0$) still equal `sample_euler` on `euler_sigmas`? (Hint: DDIM's previous
#    timestep is always $t-T/N$; compare it with the next listed timestep.)
# 3. Replace the exact model by `mix.model(sched)` plus a small bias (e.g. `lambda x, t: model(x, t) + 0.05`): which
#    samplers are most sensitive to model error?
# 4. Build sigmas with `ts, sig = sched.dpm_sigmas(3, karras=True, rho=...)` and run
#    `S.sample_dpmpp_2m(S.Denoiser(model, sched, ts, sig[:-1]), x_T * math.sqrt(1 + sig[0] ** 2), sig)`:
#    which `rho` gives the lowest error at 3 NFE?
