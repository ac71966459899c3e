"""RB-Modulation (Rout et al. 2024): training-free style guidance by stochastic optimal control on the Tweedie
estimate, plus Attention Feature Aggregation (AFA). Classifier-free guidance is gdlib.pipeline.cfg_model.

Control problem: min_u E[int l(x, u) dt + gamma h(x0)], terminal cost h = ||Psi(x_ref) - Psi(E[x0 | x_t])||^2.
For gamma -> infinity only the terminal cost stays and the optimal control becomes an update of the Tweedie
estimate (Rout et al. 2024, Sec. 4): per reverse step i < tau,
    z <- x0_hat;  num_iter Adam steps, lr = eta (1 - i / N), on
    L(z) = lam_style mean_n(1 - cos(Psi(z_n), Psi(x_ref))) + lam_align MSE(z, x0_hat) [+ lam_content C(z)],
with MSE a mean over every element, as the official code's `mse_loss(z0, x0)` (a sum would make the alignment
term 3,072 times stronger on a 3 x 32 x 32 image and push lam_style up by that factor),
then the sampler step uses x0_hat <- z with the SAME eps_hat. For DDIM(eta = 0) this adds the control
u = sqrt(abar_prev) (z* - x0_hat) to the next state (`effective_control`).
The hook is sampling.sample_ddim / sample_ddpm's `x0_transform(x0_hat, eps_hat, t, i)`; `RBModulation` is one.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import asdict
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import runtime

jt = runtime.setup_jittor()
from jittor import nn  # noqa: E402

from .config import RBConfig  # noqa: E402,F401  (re-exported)
from .kernels import attention  # noqa: E402

SAMPLERS = ("ddim", "ddpm")


def _var(x) -> "jt.Var":
    if isinstance(x, jt.Var):
        return x.float32()
    return jt.array(np.asarray(x, dtype=np.float32))


def cosine_style_loss(psi_z: "jt.Var", psi_ref: "jt.Var") -> "jt.Var":
    """mean_n (1 - cos(Psi(z_n), Psi(x_ref))); psi_ref [1, D] or [N, D] (Rout et al. 2024, Eq. 12's terminal cost)."""
    if psi_ref.shape[0] == 1 and psi_z.shape[0] > 1:
        psi_ref = psi_ref.broadcast((psi_z.shape[0],) + tuple(psi_ref.shape[1:]))
    if tuple(psi_ref.shape) != tuple(psi_z.shape):
        raise ValueError(f"style loss: Psi(z) {tuple(psi_z.shape)} and Psi(x_ref) {tuple(psi_ref.shape)} do not match")
    num = (psi_z * psi_ref).sum(dim=1)
    den = jt.sqrt((psi_z * psi_z).sum(dim=1) * (psi_ref * psi_ref).sum(dim=1) + 1e-12)
    return (1.0 - num / den).mean()


def control_objective(z: "jt.Var", x0_hat: "jt.Var", psi: Callable, psi_ref: "jt.Var", config: RBConfig,
                      content_fn: Callable | None = None) -> tuple["jt.Var", dict[str, "jt.Var"]]:
    """L(z) = lam_style mean_n(1 - cos) + lam_align MSE(z, x0_hat) [+ lam_content C(z)], and its terms; the MSE is
    a mean over every element (Rout et al.'s official `mse_loss(z0, x0)`)."""
    parts = {"style": cosine_style_loss(psi(z), psi_ref),
             "align": ((z - x0_hat) ** 2).mean()}
    loss = config.lam_style * parts["style"] + config.lam_align * parts["align"]
    if config.lam_content > 0:
        if content_fn is None:
            raise ValueError("RBConfig.lam_content > 0 needs a content_fn(z) -> scalar loss")
        parts["content"] = content_fn(z)
        loss = loss + config.lam_content * parts["content"]
    return loss, parts


def learning_rate(eta: float, i: int, num_steps: int) -> float:
    """The decaying step size eta (1 - i / N) of reverse step i of N."""
    return float(eta) * (1.0 - float(i) / float(num_steps))


def adam_update(z, g, m, v, k: int, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
    """One Adam step k >= 1 (Kingma & Ba 2015, Alg. 1): returns (z, m, v)."""
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat, v_hat = m / (1 - beta1 ** k), v / (1 - beta2 ** k)
    return z - lr * m_hat / (jt.sqrt(v_hat) + eps), m, v


def rb_control(x0_hat, psi: Callable, psi_ref: "jt.Var", i: int, num_steps: int, config: RBConfig,
               content_fn: Callable | None = None) -> tuple["jt.Var", dict[str, Any]]:
    """The controlled Tweedie estimate z* after num_iter Adam steps on L (identity when i >= tau); returns (z*, info)."""
    x0 = _var(x0_hat).detach()
    lr = learning_rate(config.eta, i, num_steps)
    tau = num_steps if config.tau is None else config.tau
    info: dict[str, Any] = {"i": int(i), "lr": lr, "active": bool(i < tau and config.num_iter > 0 and lr > 0)}
    if not info["active"]:
        return x0, info
    z, m, v = x0, jt.zeros(x0.shape), jt.zeros(x0.shape)
    with jt.enable_grad():  # the samplers may run under jt.no_grad(); the control needs gradients in z
        for k in range(1, int(config.num_iter) + 1):
            z = z.detach()
            loss, parts = control_objective(z, x0, psi, psi_ref, config, content_fn)
            g = jt.grad(loss, z)
            if k == 1:
                info["style_before"] = float(parts["style"].item())
            z, m, v = adam_update(z, g.detach(), m.detach(), v.detach(), k, lr)
        z = z.detach()
        _, parts = control_objective(z, x0, psi, psi_ref, config, content_fn)
    info["style_after"] = float(parts["style"].item())
    info["align_after"] = float(parts["align"].item())
    return z, info


def reference_embedding(psi: Callable, x_ref) -> "jt.Var":
    """Psi of the reference(s) [1, D]; several references are averaged. x_ref: what psi reads -- library images
    [K, 3, H, W] in [-1, 1], or latents [K, C, h, w] for a latent-space psi (gdlib.sd.guidance.DecoderGram)."""
    x_ref = _var(x_ref)
    if x_ref.ndim == 3:
        x_ref = x_ref.unsqueeze(0)
    if x_ref.ndim != 4 or (x_ref.shape[-1] == 3 and x_ref.shape[1] != 3):
        raise ValueError(f"x_ref must be a batch [K, C, H, W] channels first (library images [K, 3, H, W] in "
                         f"[-1, 1], or latents), got shape {tuple(x_ref.shape)}")
    with jt.no_grad():
        e = psi(x_ref)
    return e.mean(dim=0, keepdims=True).detach()


class RBModulation:
    """x0_transform for sample_ddim / sample_ddpm: x0_hat -> z* (rb_control); keeps a per-step history (with
    keep_images, also each step's x0_hat and z* as numpy arrays, for pictures)."""

    def __init__(self, psi: Callable, x_ref, num_inference_steps: int, config: RBConfig | None = None,
                 content_fn: Callable | None = None, keep_images: bool = False):
        self.psi, self.config, self.content_fn = psi, config or RBConfig(), content_fn
        self.keep_images = bool(keep_images)
        self.num_inference_steps = int(num_inference_steps)
        if self.num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        self.psi_ref = reference_embedding(psi, x_ref)
        self.history: list[dict[str, Any]] = []

    def __call__(self, x0_hat, eps_hat, t: int, i: int):
        z, info = rb_control(x0_hat, self.psi, self.psi_ref, i, self.num_inference_steps, self.config,
                             self.content_fn)
        info["t"] = int(t)
        if self.keep_images:
            info["x0_hat"], info["z"] = _var(x0_hat).numpy(), z.numpy()
        self.history.append(info)
        return z


def effective_control(schedule, sampler: str, t: int, prev_t: int, z, x0_hat):
    """What replacing x0_hat by z adds to x_prev: DDIM sqrt(abar_prev)(z - x0_hat) (Song et al. 2021a, Eq. 12);
    DDPM sqrt(abar_prev) beta_t / (1 - abar_t) (z - x0_hat) (Ho et al. 2020, Eq. 7)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    abar, abar_prev = schedule.abar(t), (schedule.abar(prev_t) if prev_t >= 0 or sampler == "ddim" else 1.0)
    coef = math.sqrt(abar_prev)
    if sampler == "ddpm":
        coef *= (1 - abar / abar_prev) / (1 - abar)
    return coef * (_var(z) - _var(x0_hat))


# ----- Attention Feature Aggregation ------------------------------------------------------------------
class _KV:
    """Plain holder for recorded reference keys/values (kept out of Jittor's parameter walk)."""
    k = None
    v = None


class AFAAttention(nn.Module):
    """Wraps a self-attention module (to_q/to_k/to_v/to_out.0). mode 'off': unchanged; 'record': run and keep
    this input's keys/values as the reference's; 'aggregate': mean of attention to own K/V, own + reference K/V
    and reference K/V (Rout et al. 2024, Sec. 5, AFA; the UNet's self-attention stands in for the text tokens)."""

    def __init__(self, inner: nn.Module):
        for name in ("to_q", "to_k", "to_v", "to_out", "heads"):
            if not hasattr(inner, name):
                raise ValueError(f"AFAAttention wraps attention modules with to_q/to_k/to_v/to_out; {type(inner).__name__} lacks {name}")
        self.inner = inner
        self.mode = "off"
        self._kv = _KV()

    def _heads(self, y: "jt.Var", B: int, N: int, h: int, d: int) -> "jt.Var":
        return y.reshape(B, N, h, d).transpose(0, 2, 1, 3)

    def execute(self, x: "jt.Var", context: "jt.Var | None" = None) -> "jt.Var":
        a = self.inner
        if self.mode == "off" or context is not None:
            return a(x, context)
        B, N, C = x.shape
        h = a.heads
        d = C // h
        q, k, v = (self._heads(p(x), B, N, h, d) for p in (a.to_q, a.to_k, a.to_v))
        if self.mode == "record":
            self._kv.k, self._kv.v = k.detach(), v.detach()
            o = attention(q, k, v)
        elif self.mode == "aggregate":
            if self._kv.k is None:
                raise ValueError("AFA: no reference keys/values recorded; run the UNet on the reference first (mode 'record')")
            kr, vr = self._kv.k, self._kv.v
            if kr.shape[0] != B:
                if kr.shape[0] != 1:
                    raise ValueError(f"AFA: reference batch {kr.shape[0]} does not fit sample batch {B}")
                kr, vr = kr.broadcast((B,) + tuple(kr.shape[1:])), vr.broadcast((B,) + tuple(vr.shape[1:]))
            if tuple(kr.shape[2:]) != tuple(k.shape[2:]):
                raise ValueError(f"AFA: reference tokens {tuple(kr.shape)} do not match the sample's {tuple(k.shape)} "
                                 "(reference and sample must have the same image size)")
            o = (attention(q, k, v) + attention(q, jt.concat([k, kr], dim=2), jt.concat([v, vr], dim=2))
                 + attention(q, kr, vr)) / 3.0
        else:
            raise ValueError(f"AFA mode must be 'off', 'record' or 'aggregate', got {self.mode!r}")
        return a.to_out[0](o.transpose(0, 2, 1, 3).reshape(B, N, C))


def _set_child(root: nn.Module, name: str, new: nn.Module) -> None:
    parent = root
    *path, leaf = name.split(".")
    for part in path:
        parent = parent.layers[part] if isinstance(parent, nn.Sequential) else getattr(parent, part)
    setattr(parent, leaf, new)


def inject_afa(unet: nn.Module, targets: Sequence[str] = ("attn1",)) -> list[str]:
    """Wrap every module whose dotted name ends with one of `targets` (the UNet's self-attention) in AFAAttention."""
    if afa_modules(unet):
        raise ValueError("inject_afa: AFA is already injected (remove_afa first)")
    names = [n for n, m in unet.named_modules()
             if n and any(n == t or n.endswith("." + t) for t in targets) and hasattr(m, "to_q")]
    if not names:
        raise ValueError(f"inject_afa: no attention module named {list(targets)} in {type(unet).__name__}")
    mods = dict(unet.named_modules())
    for n in names:
        _set_child(unet, n, AFAAttention(mods[n]))
    return names


def afa_modules(unet: nn.Module) -> dict[str, AFAAttention]:
    """The injected AFA wrappers by dotted name."""
    return {n: m for n, m in unet.named_modules() if isinstance(m, AFAAttention)}


def remove_afa(unet: nn.Module) -> list[str]:
    """Put the wrapped attention modules back; returns their names."""
    names = list(afa_modules(unet))
    mods = afa_modules(unet)
    for n in names:
        _set_child(unet, n, mods[n].inner)
    return names


def set_afa_mode(unet: nn.Module, mode: str) -> None:
    """Set 'off' / 'record' / 'aggregate' on every AFA wrapper."""
    if mode not in ("off", "record", "aggregate"):
        raise ValueError(f"AFA mode must be 'off', 'record' or 'aggregate', got {mode!r}")
    for m in afa_modules(unet).values():
        m.mode = mode


@contextlib.contextmanager
def afa_enabled(unet: nn.Module, targets: Sequence[str] = ("attn1",)) -> Iterator[list[str]]:
    """with afa_enabled(model.unet): ... (AFA wrappers in place, removed afterwards)."""
    names = inject_afa(unet, targets)
    try:
        yield names
    finally:
        remove_afa(unet)


def afa_model(unet: nn.Module, schedule, model_fn: Callable, x_ref, ref_context: "jt.Var", ref_noise) -> Callable:
    """model(x_t, t) that first runs the UNet on the reference noised to t (recording its self-attention K/V),
    then model_fn (e.g. the CFG model) with AFA aggregating those K/V. Needs inject_afa(unet) first."""
    if not afa_modules(unet):
        raise ValueError("afa_model: inject_afa(unet) first (or use `with afa_enabled(unet):`)")
    x_ref, ref_noise = _var(x_ref), _var(ref_noise)

    def fn(x_t, t):
        x_ref_t = schedule.add_noise(x_ref, ref_noise, int(t))
        set_afa_mode(unet, "record")
        try:
            unet(x_ref_t, t, ref_context).sync()
            set_afa_mode(unet, "aggregate")
            out = model_fn(x_t, t)
        finally:
            set_afa_mode(unet, "off")
        return out
    return fn


# ----- text -> stylised images ------------------------------------------------------------------------
def stylize(model, prompts: str | Sequence[str], x_ref, psi: Callable | str | None = "gram",
            config: RBConfig | None = None, num_inference_steps: int = 20, guidance_scale: float | None = None,
            sampler: str = "ddim", eta: float = 0.0, seed: int = 0, afa: bool = False, control: bool = True,
            content_fn: Callable | None = None, batch_size: int = 32, return_history: bool = False,
            keep_images: bool = False):
    """Text -> images float32 [N, 3, H, W] in [-1, 1] from the base model with CFG, steered toward the style of
    x_ref by RB-Modulation (control=True) and/or AFA (afa=True); DDIM(eta) or DDPM. With return_history:
    (images, list of per-step control infos per batch; with keep_images each info also holds x0_hat and z*)."""
    from . import pipeline, sampling
    from .style import get_descriptor

    guidance_scale = pipeline.DEFAULT_GUIDANCE if guidance_scale is None else guidance_scale

    if sampler not in SAMPLERS:
        raise ValueError(f"stylize: unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ValueError("stylize: give at least one prompt")
    config = config or RBConfig()
    if control and psi is None:
        raise ValueError("stylize: control=True needs a style descriptor psi ('gram', 'csd' or a callable)")
    if isinstance(psi, str):
        psi = get_descriptor(psi)
    c = model.config.unet
    x_ref = _var(x_ref)
    if x_ref.ndim == 3:
        x_ref = x_ref.unsqueeze(0)
    if tuple(x_ref.shape[1:]) != (c.in_channels, c.image_size, c.image_size):
        raise ValueError(f"stylize: x_ref must be [K, {c.in_channels}, {c.image_size}, {c.image_size}] "
                         f"(the model's image size), got {tuple(x_ref.shape)}")
    rng = np.random.default_rng(seed)
    x_T = rng.standard_normal((len(prompts), c.in_channels, c.image_size, c.image_size)).astype(np.float32)
    ref_noise = rng.standard_normal((1,) + tuple(x_ref.shape[1:])).astype(np.float32)
    noise_rng = np.random.default_rng([seed, 1])

    def noise_fn(shape):
        return noise_rng.standard_normal(shape).astype(np.float32)

    out, history = [], []
    ctx_mgr = afa_enabled(model.unet) if afa else contextlib.nullcontext()
    with ctx_mgr:
        with jt.no_grad():
            uncond = model.encode([""])
        for b in range(0, len(prompts), batch_size):
            with jt.no_grad():
                ctx = model.encode(list(prompts[b:b + batch_size]))
            cfg_fn = pipeline.cfg_model(model, ctx, uncond, guidance_scale)
            if afa:
                cfg_fn = afa_model(model.unet, model.schedule, cfg_fn, x_ref[:1], uncond, ref_noise)

            def fn(x_t, t, _f=cfg_fn):
                with jt.no_grad():
                    return _f(x_t, t).detach()
            rb = RBModulation(psi, x_ref, num_inference_steps, config, content_fn, keep_images) if control else None
            kw = dict(callback=None, noise_fn=noise_fn, x0_transform=rb)
            x0 = jt.array(x_T[b:b + batch_size])
            if sampler == "ddim":
                x = sampling.sample_ddim(fn, x0, model.schedule, num_inference_steps, eta=eta, **kw)
            else:
                x = sampling.sample_ddpm(fn, x0, model.schedule, num_inference_steps, **kw)
            out.append(np.clip(x.numpy(), -1.0, 1.0))
            history.append(rb.history if rb is not None else [])
    images = np.concatenate(out).astype(np.float32)
    return (images, history) if return_history else images


def config_dict(config: RBConfig) -> dict[str, Any]:
    """The config as a plain dict (for model cards and logs)."""
    return asdict(config)
