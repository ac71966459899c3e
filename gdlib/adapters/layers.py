"""Adapted Linear and Conv2d layers: LoRA (Hu et al. 2021), DoRA (Liu et al. 2024) and the variant of the Guided DoRA challenge entry (Jittor AI Challenge 2024).

Contract of every adapted layer: `.base` (the wrapped, frozen layer), `.lora_A` [r, in] (conv [r, in, kh, kw]),
`.lora_B` [out, r] (conv [out, r, 1, 1]), `.magnitude` ([out] for DoRA, [in] for the seed variant, None for LoRA),
`.scaling` (s = alpha / r, rsLoRA alpha / sqrt(r), times the inference scale), `.merge()`, `.unmerge()`.
Forward passes follow peft 0.21 term by term so that the numbers match (tests/test_parity_peft.py).
"""
from __future__ import annotations

import math

import numpy as np

from .. import runtime

jt = runtime.setup_jittor()
from jittor import nn  # noqa: E402

from ..kernels.dora import dora_scale, dora_scale_reference  # noqa: E402

KINDS = ("lora", "dora", "seed_dora")
INITS = ("kaiming", "gaussian", "small_randn")
FUSED_NORM_DEFAULT = True


def _np_init(rng: np.random.Generator, shape: tuple[int, ...], init: str, fan_in: int, rank: int) -> np.ndarray:
    """lora_A init: kaiming-uniform(a=sqrt(5)) = U(+-1/sqrt(fan_in)) (peft default), N(0, 1/r), or 0.01 N(0, 1)."""
    if init == "kaiming":
        bound = 1.0 / math.sqrt(fan_in)
        return rng.uniform(-bound, bound, size=shape).astype(np.float32)
    if init == "gaussian":
        return (rng.standard_normal(shape) / rank).astype(np.float32)
    return (0.01 * rng.standard_normal(shape)).astype(np.float32)


class AdapterLayer(nn.Module):
    """Shared logic of the adapted layers; subclasses define the base op and the low-rank path."""

    def __init__(self, base: nn.Module, kind: str = "dora", rank: int = 4, alpha: float = 4.0,
                 rslora: bool = False, dropout: float = 0.0, init: str | None = None,
                 detach_norm: bool = True, rng: np.random.Generator | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}: use one of {KINDS}")
        init = init or ("small_randn" if kind == "seed_dora" else "kaiming")
        if init not in INITS:
            raise ValueError(f"init={init!r}: use one of {INITS}")
        if not (isinstance(rank, int) and rank > 0):
            raise ValueError(f"rank must be a positive int, got {rank!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        rng = rng if rng is not None else np.random.default_rng()
        self.base = base
        self.kind, self.rank, self.alpha, self.rslora, self.init = kind, rank, float(alpha), bool(rslora), init
        self.base_scaling = self.alpha / (math.sqrt(rank) if rslora else rank)
        self.scaling = self.base_scaling
        self.detach_norm = bool(detach_norm)
        self.fused_norm = FUSED_NORM_DEFAULT  # gdlib.kernels' fused g = m / ||W0 + sBA|| (see bench/adapters.py)
        self.dropout_p = float(dropout)
        self.lora_dropout = nn.Dropout(dropout, is_train=True)
        self.enabled, self.merged = True, False
        self._merge_g = None
        w0 = base.weight.numpy()
        a_shape, b_shape = self._adapter_shapes(w0.shape)
        fan_in = int(np.prod(a_shape[1:]))
        self.lora_A = jt.array(_np_init(rng, a_shape, init, fan_in, rank))
        if init == "small_randn":
            self.lora_B = jt.array((0.01 * rng.standard_normal(b_shape)).astype(np.float32))
        else:
            self.lora_B = jt.zeros(b_shape, dtype="float32")
        self.magnitude = None
        if kind == "dora":  # m = ||W0|| per output unit, so W' = W0 at step 0
            self.magnitude = jt.array(np.linalg.norm(w0.reshape(w0.shape[0], -1), axis=1).astype(np.float32))
        elif kind == "seed_dora":  # the challenge entry's: per INPUT column of the frozen W0
            self.magnitude = jt.array(self._column_norm_np(w0))
        for p in base.parameters():
            p.stop_grad()

    # --- pieces shared by Linear and Conv2d --------------------------------------------------------
    @staticmethod
    def _column_norm_np(w0: np.ndarray) -> np.ndarray:
        """||W0||_c per input channel: over dim 0 (and kh, kw for convs): [in]."""
        axes = (0,) + tuple(range(2, w0.ndim))
        return np.sqrt((w0.astype(np.float64) ** 2).sum(axis=axes)).astype(np.float32)

    def trainable(self) -> list:
        """The adapter's trainable Vars: lora_A, lora_B (and the magnitude for DoRA variants)."""
        return [self.lora_A, self.lora_B] + ([self.magnitude] if self.magnitude is not None else [])

    def delta_weight(self) -> "jt.Var":
        """s B A reshaped like the base weight (Linear [out, in], Conv2d [out, in, kh, kw])."""
        w = self.base.weight
        out, r = w.shape[0], self.rank
        return (self.scaling * jt.matmul(self.lora_B.reshape(out, r), self.lora_A.reshape(r, -1))).reshape(w.shape)

    def dora_scale(self) -> "jt.Var":
        """g = m / ||W0 + s B A|| per output unit ([out]; Eq. 5 of Liu et al. 2024), norm detached by default."""
        op = dora_scale if self.fused_norm else dora_scale_reference
        return op(self.base.weight, self.lora_A, self.lora_B, self.magnitude, self.scaling, self.detach_norm)

    def seed_scale(self) -> "jt.Var":
        """The seed variant's g = m / ||W0||_c per input channel ([in]); W0 is frozen, so the norm is a constant."""
        w = self.base.weight.detach()
        axes = [0] + list(range(2, len(w.shape)))
        return self.magnitude / jt.sqrt((w * w).sum(axes))

    def effective_weight(self) -> "jt.Var":
        """W' that the layer applies (without the bias), whether merged or not."""
        w = self.base.weight
        if self.merged or not self.enabled:
            return w
        v = w + self.delta_weight()
        if self.kind == "lora":
            return v
        if self.kind == "dora":
            return v * self.dora_scale().reshape([-1] + [1] * (len(w.shape) - 1))
        return v * self.seed_scale().reshape([1, -1] + [1] * (len(w.shape) - 2))

    def _dropout(self, x: "jt.Var") -> "jt.Var":
        """Dropout on the adapter input (active only in training mode and when p > 0)."""
        if self.dropout_p > 0 and self.lora_dropout.is_train:
            return self.lora_dropout(x)
        return x

    def execute(self, x: "jt.Var") -> "jt.Var":
        """y = base(x) + adapter(x), in peft's term order (DoRA: result + (g - 1) W0 x + g s B A x)."""
        if self.merged or not self.enabled:
            return self.base(x)
        if self.kind == "seed_dora":  # W' x = (W0 + s B A) (g * x) with g per input channel
            xg = x * self._channel(self.seed_scale(), x)
            return self.base(xg) + self._lora_path(self._dropout(xg)) * self.scaling
        result = self.base(x)
        xd = self._dropout(x)
        if self.kind == "lora":
            return result + self._lora_path(xd) * self.scaling
        g = self._channel(self.dora_scale(), result)
        if xd is x:  # reuse the base output, minus its bias: the bias is not rescaled
            base_result = result if self.base.bias is None else result - self._channel(self.base.bias, result)
        else:
            base_result = self._base_no_bias(xd)
        return result + (g - 1) * base_result + g * self._lora_path(xd) * self.scaling

    # --- merge / unmerge ---------------------------------------------------------------------------
    def merge(self) -> None:
        """Fold the adapter into base.weight: LoRA W0 + s B A; DoRA g (W0 + s B A); seed (W0 + s B A) g_col."""
        if self.merged:
            raise ValueError("merge(): this layer is already merged; call unmerge() first")
        if not self.enabled:
            raise ValueError("merge(): the adapter is disabled; enable it before merging")
        w = self.base.weight
        v = (w + self.delta_weight()).numpy().astype(np.float64)
        if self.kind == "dora":
            g = self.dora_scale().numpy().astype(np.float64)
            v = v * g.reshape([-1] + [1] * (v.ndim - 1))
        elif self.kind == "seed_dora":
            g = self.seed_scale().numpy().astype(np.float64)
            v = v * g.reshape([1, -1] + [1] * (v.ndim - 2))
        else:
            g = None
        self._merge_g = g
        w.update(jt.array(v.astype(np.float32)))
        self.merged = True

    def unmerge(self) -> None:
        """Undo merge(): W0 = W - s B A (LoRA) or W / g - s B A (DoRA, seed), g cached at merge time."""
        if not self.merged:
            raise ValueError("unmerge(): this layer is not merged")
        w = self.base.weight
        v = w.numpy().astype(np.float64)
        g = self._merge_g
        if self.kind == "dora":
            v = v / g.reshape([-1] + [1] * (v.ndim - 1))
        elif self.kind == "seed_dora":
            v = v / g.reshape([1, -1] + [1] * (v.ndim - 2))
        v = v - self.delta_weight().numpy().astype(np.float64)
        w.update(jt.array(v.astype(np.float32)))
        self.merged, self._merge_g = False, None

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, rank={self.rank}, alpha={self.alpha}, rslora={self.rslora}, "
                f"scaling={self.scaling:.4g}, merged={self.merged}, enabled={self.enabled}")


class AdaptedLinear(AdapterLayer):
    """A jt.nn.Linear with a LoRA/DoRA adapter: lora_A [r, in], lora_B [out, r]."""

    def _adapter_shapes(self, w_shape):
        out, inp = w_shape
        return (self.rank, inp), (out, self.rank)

    @staticmethod
    def _channel(v: "jt.Var", like: "jt.Var") -> "jt.Var":
        """A per-feature vector broadcast along the last axis."""
        return v

    def _lora_path(self, x: "jt.Var") -> "jt.Var":
        """B (A x) without forming B A."""
        return nn.matmul_transpose(nn.matmul_transpose(x, self.lora_A), self.lora_B)

    def _base_no_bias(self, x: "jt.Var") -> "jt.Var":
        """W0 x."""
        return nn.matmul_transpose(x, self.base.weight)


class AdaptedConv2d(AdapterLayer):
    """A jt.nn.Conv2d with a LoRA/DoRA adapter: lora_A [r, in, kh, kw] (same stride/padding), lora_B [out, r, 1, 1]."""

    def __init__(self, base: nn.Module, **kw) -> None:
        if getattr(base, "groups", 1) != 1:
            raise ValueError(f"Conv2d with groups={base.groups} is not supported by the adapters (groups must be 1)")
        super().__init__(base, **kw)

    def _adapter_shapes(self, w_shape):
        out, inp, kh, kw = w_shape
        return (self.rank, inp, kh, kw), (out, self.rank, 1, 1)

    @staticmethod
    def _channel(v: "jt.Var", like: "jt.Var") -> "jt.Var":
        """A per-channel vector broadcast over [N, C, H, W]."""
        return v.reshape(1, -1, 1, 1)

    def _lora_path(self, x: "jt.Var") -> "jt.Var":
        """B * (A * x): A is a conv with the base's geometry, B a 1x1 conv."""
        b = self.base
        h = nn.conv2d(x, self.lora_A, None, b.stride, b.padding, b.dilation, 1)
        return nn.conv2d(h, self.lora_B, None, 1, 0, 1, 1)

    def _base_no_bias(self, x: "jt.Var") -> "jt.Var":
        """W0 * x."""
        b = self.base
        return nn.conv2d(x, b.weight, None, b.stride, b.padding, b.dilation, b.groups)
