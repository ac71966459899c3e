"""gdlib.adapters against peft 0.21 (LoraConfig, use_dora off and on) on torch Linear and Conv2d, weights copied.

Forward within 1e-5, merged weights within 1e-6, gradients of A, B and the magnitude within 1e-4; adapter files
written by gdlib load into peft's PeftModel and give its outputs.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="parity extra not installed: pip install -e .[parity]")
peft = pytest.importorskip("peft", reason="parity extra not installed: pip install -e .[parity]")

from gdlib import runtime  # noqa: E402

jt = runtime.setup_jittor()
from jittor import nn  # noqa: E402

from gdlib import adapters  # noqa: E402

pytestmark = pytest.mark.parity

D_IN, D_CTX, D_OUT, C_IN, C_OUT = 12, 10, 12, 6, 8
RANK, ALPHA = 4, 8
TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "conv", "conv_s2"]


class TorchBlock(torch.nn.Module):
    """Attention-like names as in diffusers: to_q/to_k/to_v, to_out = [Linear, Dropout]; two convs."""

    def __init__(self):
        super().__init__()
        self.to_q = torch.nn.Linear(D_IN, D_OUT)
        self.to_k = torch.nn.Linear(D_CTX, D_OUT, bias=False)
        self.to_v = torch.nn.Linear(D_CTX, D_OUT, bias=False)
        self.to_out = torch.nn.ModuleList([torch.nn.Linear(D_OUT, D_IN), torch.nn.Dropout(0.0)])
        self.conv = torch.nn.Conv2d(C_IN, C_OUT, 3, padding=1)
        self.conv_s2 = torch.nn.Conv2d(C_IN, C_OUT, 3, stride=2, padding=1, bias=False)

    def forward(self, x, ctx, img):
        h = self.to_q(x) + self.to_k(ctx) * self.to_v(ctx)
        return self.to_out[0](h).sum() + self.conv(img).sum() + self.conv_s2(img).sum()


class JtBlock(nn.Module):
    def __init__(self):
        self.to_q = nn.Linear(D_IN, D_OUT)
        self.to_k = nn.Linear(D_CTX, D_OUT, bias=False)
        self.to_v = nn.Linear(D_CTX, D_OUT, bias=False)
        self.to_out = nn.Sequential(nn.Linear(D_OUT, D_IN), nn.Dropout(0.0))
        self.conv = nn.Conv2d(C_IN, C_OUT, 3, padding=1)
        self.conv_s2 = nn.Conv2d(C_IN, C_OUT, 3, stride=2, padding=1, bias=False)


def _inputs(rng):
    return {"to_q": rng.standard_normal((2, 5, D_IN)), "to_k": rng.standard_normal((2, 7, D_CTX)),
            "to_v": rng.standard_normal((2, 7, D_CTX)), "to_out.0": rng.standard_normal((2, 5, D_OUT)),
            "conv": rng.standard_normal((2, C_IN, 9, 9)), "conv_s2": rng.standard_normal((2, C_IN, 9, 9))}


def _tlayer(tm, name):
    return tm.get_submodule(name)


def _copy_base(tm, jm):
    for name in TARGETS:
        t, j = _tlayer(tm, name), dict(jm.named_modules())[name]
        j.weight.update(jt.array(t.weight.detach().numpy()))
        if t.bias is not None:
            j.bias.update(jt.array(t.bias.detach().numpy()))


def _build(use_dora, rslora=False, perturb=True, seed=0):
    """A peft-wrapped torch block and an adapted Jittor twin holding the same base and adapter weights."""
    torch.manual_seed(seed)
    tm = TorchBlock()
    jm = JtBlock()
    _copy_base(tm, jm)
    cfg = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS, use_dora=use_dora,
                          use_rslora=rslora, lora_dropout=0.0)
    pm = peft.get_peft_model(tm, cfg)
    adapters.inject(jm, targets=("to_q", "to_k", "to_v", "to_out", "conv", "conv_s2"),
                    kind="dora" if use_dora else "lora", rank=RANK, alpha=ALPHA, rslora=rslora)
    jl = adapters.adapted_layers(jm)
    assert sorted(jl) == sorted(TARGETS)
    g = torch.Generator().manual_seed(seed + 1)
    for name in TARGETS:
        tl = _tlayer(pm.base_model.model, name)
        with torch.no_grad():
            if perturb:  # away from the B = 0, m = ||W0|| starting point so that every term is exercised
                tl.lora_B["default"].weight.copy_(0.3 * torch.randn(tl.lora_B["default"].weight.shape, generator=g))
                if use_dora:
                    mv = tl.lora_magnitude_vector["default"].weight
                    mv.mul_(1 + 0.2 * torch.randn(mv.shape, generator=g))
        j = jl[name]
        j.lora_A.update(jt.array(tl.lora_A["default"].weight.detach().numpy()))
        j.lora_B.update(jt.array(tl.lora_B["default"].weight.detach().numpy()))
        if use_dora:
            j.magnitude.update(jt.array(tl.lora_magnitude_vector["default"].weight.detach().numpy().reshape(-1)))
    return pm, jm


@pytest.mark.parametrize("use_dora", [False, True])
def test_fresh_injection_matches_peft_init(use_dora):
    """Scaling, shapes, B = 0 and DoRA's m = ||W0|| per output unit agree with a fresh peft adapter."""
    torch.manual_seed(0)
    tm, jm = TorchBlock(), JtBlock()
    _copy_base(tm, jm)
    pm = peft.get_peft_model(tm, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS,
                                                  use_dora=use_dora))
    adapters.inject(jm, targets=("to_q", "to_k", "to_v", "to_out", "conv", "conv_s2"),
                    kind="dora" if use_dora else "lora", rank=RANK, alpha=ALPHA)
    for name, j in adapters.adapted_layers(jm).items():
        tl = _tlayer(pm.base_model.model, name)
        assert j.scaling == pytest.approx(tl.scaling["default"])
        assert tuple(j.lora_A.shape) == tuple(tl.lora_A["default"].weight.shape)
        assert tuple(j.lora_B.shape) == tuple(tl.lora_B["default"].weight.shape)
        assert np.all(j.lora_B.numpy() == 0)
        bound = 1 / np.sqrt(np.prod(j.lora_A.shape[1:]))  # kaiming-uniform(a=sqrt(5)) range
        assert np.abs(j.lora_A.numpy()).max() <= bound
        assert np.abs(tl.lora_A["default"].weight.detach().numpy()).max() <= bound
        if use_dora:
            m_peft = tl.lora_magnitude_vector["default"].weight.detach().numpy().reshape(-1)
            np.testing.assert_allclose(j.magnitude.numpy(), m_peft, rtol=0, atol=1e-6)


@pytest.mark.parametrize("use_dora,rslora", [(False, False), (True, False), (False, True), (True, True)])
def test_forward_and_gradients_match_peft(use_dora, rslora):
    pm, jm = _build(use_dora, rslora)
    rng = np.random.default_rng(3)
    xs = _inputs(rng)
    jl = adapters.adapted_layers(jm)
    for name in TARGETS:
        tl, j = _tlayer(pm.base_model.model, name), jl[name]
        x = xs[name].astype(np.float32)
        y_t = tl(torch.from_numpy(x))
        y_j = j(jt.array(x))
        np.testing.assert_allclose(y_j.numpy(), y_t.detach().numpy(), rtol=0, atol=1e-5, err_msg=name)
        r = rng.standard_normal(tuple(y_t.shape)).astype(np.float32)
        (y_t * torch.from_numpy(r)).sum().backward()
        tvars = [tl.lora_A["default"].weight, tl.lora_B["default"].weight]
        jvars = [j.lora_A, j.lora_B]
        if use_dora:
            tvars.append(tl.lora_magnitude_vector["default"].weight)
            jvars.append(j.magnitude)
        grads = jt.grad((y_j * jt.array(r)).sum(), jvars)
        for tv, gj, what in zip(tvars, grads, ("A", "B", "magnitude")):
            np.testing.assert_allclose(gj.numpy().reshape(-1), tv.grad.numpy().reshape(-1), rtol=0, atol=1e-4,
                                       err_msg=f"{name} grad {what}")


@pytest.mark.parametrize("use_dora", [False, True])
def test_merged_weights_match_peft(use_dora):
    pm, jm = _build(use_dora)
    jl = adapters.adapted_layers(jm)
    w0 = {n: jl[n].base.weight.numpy().copy() for n in TARGETS}
    for name in TARGETS:
        tl = _tlayer(pm.base_model.model, name)
        tl.merge()
        jl[name].merge()
        np.testing.assert_allclose(jl[name].base.weight.numpy(), tl.base_layer.weight.detach().numpy(),
                                   rtol=0, atol=1e-6, err_msg=name)
        jl[name].unmerge()
        np.testing.assert_allclose(jl[name].base.weight.numpy(), w0[name], rtol=0, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("use_dora", [False, True])
def test_gdlib_adapter_file_loads_into_peft(use_dora, tmp_path):
    """Copy the other way: gdlib's safetensors keys are peft's; the loaded PeftModel gives gdlib's outputs."""
    from safetensors.numpy import load_file
    _, jm = _build(use_dora, seed=5)
    path = adapters.save_adapter(jm, tmp_path / "a.safetensors")
    torch.manual_seed(5)
    tm = TorchBlock()  # same seed: same base weights as the twin
    pm = peft.get_peft_model(tm, peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TARGETS,
                                                  use_dora=use_dora))
    sd = {k: torch.from_numpy(v) for k, v in load_file(str(path)).items()}
    res = peft.set_peft_model_state_dict(pm, sd)
    assert not [k for k in res.unexpected_keys if "lora" in k]
    xs = _inputs(np.random.default_rng(4))
    jl = adapters.adapted_layers(jm)
    for name in TARGETS:
        x = xs[name].astype(np.float32)
        y_t = _tlayer(pm.base_model.model, name)(torch.from_numpy(x)).detach().numpy()
        np.testing.assert_allclose(jl[name](jt.array(x)).numpy(), y_t, rtol=0, atol=1e-5, err_msg=name)
