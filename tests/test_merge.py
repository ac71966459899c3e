"""Custom Diffusion's closed-form merge: constraint met exactly, optimal among feasible weights, identity cases."""
import numpy as np
import pytest

from gdlib.merge import constrained_merge, merge_objective


def _problem(seed=0, d_out=6, d=8, n_reg=40, k=3):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((d_out, d)), rng.standard_normal((n_reg, d)), rng.standard_normal((k, d)),
            rng.standard_normal((d_out, k)))


def test_the_merge_meets_the_constraint_and_beats_every_other_feasible_weight():
    W0, R, C, V = _problem()
    W = constrained_merge(W0, R, C, V, ridge=0.0)
    np.testing.assert_allclose(W @ C.T, V, atol=1e-10)
    best = merge_objective(W, W0, R)
    rng = np.random.default_rng(1)
    # feasible perturbations: add X with X C^T = 0 (rows in the null space of C)
    null = np.linalg.svd(C)[2][C.shape[0]:]               # [d - k, d], orthogonal to C's rows
    for _ in range(50):
        X = rng.standard_normal((W.shape[0], null.shape[0])) @ null
        np.testing.assert_allclose((W + X) @ C.T, V, atol=1e-9)
        assert merge_objective(W + X, W0, R) >= best - 1e-9
    # the optimality condition of the Lagrangian: (W - W0) M lies in the row space of C
    G = (W - W0) @ (R.T @ R)
    resid = G - (G @ np.linalg.pinv(C)) @ C
    assert np.abs(resid).max() < 1e-8


def test_identity_cases_and_errors():
    W0, R, C, _ = _problem(2)
    np.testing.assert_allclose(constrained_merge(W0, R, C, W0 @ C.T), W0, atol=1e-10)   # nothing to change
    W1 = W0 + 0.1                                                                        # one fine-tuned model's map
    W = constrained_merge(W0, R, C, W1 @ C.T)
    np.testing.assert_allclose(W @ C.T, W1 @ C.T, atol=1e-9)
    with pytest.raises(ValueError, match="shapes"):
        constrained_merge(W0, R[:, :3], C, W0 @ C.T)
    with pytest.raises(ValueError, match="cannot all be matched"):
        constrained_merge(W0, R, np.ones((9, 8)), np.ones((6, 9)))


def _projected_gradient(W0, R, C, V, iters=20000, tol=1e-13):
    """The same problem solved iteratively: gradient steps on ||(W - W0) R^T||^2, each followed by the orthogonal
    projection back onto the affine set {W : W C^T = V} (P(W) = W - (W C^T - V)(C C^T)^-1 C)."""
    M = R.T @ R
    step = 1.0 / (2.0 * np.linalg.eigvalsh(M).max())        # 1 / Lipschitz constant of the gradient
    CCt_inv_C = np.linalg.solve(C @ C.T, C)

    def project(W):
        return W - (W @ C.T - V) @ CCt_inv_C

    W = project(W0.copy())
    for _ in range(iters):
        W_next = project(W - step * 2.0 * (W - W0) @ M)
        if np.abs(W_next - W).max() < tol:
            return W_next
        W = W_next
    return W


@pytest.mark.parametrize("seed", [0, 3])
def test_the_closed_form_equals_an_iterative_solver(seed):
    W0, R, C, V = _problem(seed, d_out=5, d=10, n_reg=60, k=4)
    closed = constrained_merge(W0, R, C, V, ridge=0.0)
    iterative = _projected_gradient(W0, R, C, V)
    assert np.abs(iterative @ C.T - V).max() < 1e-9
    rel = np.abs(closed - iterative).max() / np.abs(closed).max()
    assert rel < 1e-6, rel
    # and the iterate really moved: the start (W0 projected onto the constraint) was not already optimal
    start = W0 - (W0 @ C.T - V) @ np.linalg.solve(C @ C.T, C)
    assert merge_objective(start, W0, R) > merge_objective(closed, W0, R) * (1 + 1e-3)


def test_row_basis_spans_the_same_rows_and_drops_duplicates():
    from gdlib.merge import principal_cosines, row_basis

    rng = np.random.default_rng(0)
    X = rng.standard_normal((3, 8))
    B = row_basis(np.concatenate([X, X, X[:1] + X[1:2]]))
    assert B.shape == (3, 8)
    np.testing.assert_allclose(principal_cosines(B, X), 1.0, atol=1e-10)
    # the same constraint: W B^T = W_i B^T  <=>  W X^T = W_i X^T
    W0, R, _, _ = _problem(1, d=8)
    Wi = W0 + rng.standard_normal(W0.shape)
    W = constrained_merge(W0, R, B, Wi @ B.T)
    np.testing.assert_allclose(W @ X.T, Wi @ X.T, atol=1e-9)


# --------------------------------------------------------------------------------------------- style files, CLI
def _cli(*args, cwd):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "gdlib.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def styles(tmp_path_factory):
    """A tiny base, two tiny Custom Diffusion styles (K/V + token, a few steps) and a DoRA style on it."""
    from conftest import tiny_model
    from gdlib.finetune import StyleConfig, finetune_style
    from gdlib.toyworld.export import export_challenge

    d = tmp_path_factory.mktemp("merge")
    base = tiny_model(size=16).save(d / "base.safetensors")
    export_challenge(d / "toy", styles=["watercolor", "mosaic"], per_style=2, size=16)
    quiet = dict(base=base, progress=False, log=lambda s: None)
    for sid in ("00", "01"):
        finetune_style(d / "toy" / sid, d / f"{sid}.safetensors",
                       StyleConfig(adapter="custom", caption_mode="instance", steps=4, batch_size=2, lr=5e-3), **quiet)
    finetune_style(d / "toy" / "00", d / "dora.safetensors",
                   StyleConfig(adapter="dora", caption_mode="instance", steps=1, batch_size=2), **quiet)
    (d / "corrupt.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    return d


@pytest.mark.slow
def test_merge_cli_end_to_end_on_a_tiny_model(styles):
    import json

    from gdlib.finetune import custom_layers, load_base, load_style, read_style
    from gdlib.merge import encode_features

    d = styles
    out = d / "ab.safetensors"
    r = _cli("merge", d / "00.safetensors", d / "01.safetensors", "--out", out, "--base", d / "base.safetensors",
             "--rows", "words", cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    card = json.loads((d / "ab.card.json").read_text())
    assert card["command"].startswith("gdlib merge") and card["base"]["fingerprint"]
    assert card["metrics"]["constraint_residual_relative_max"] < 1e-8
    assert 0 < card["metrics"]["objective_increase"] and card["constraints"]["target_rows_per_file"] == [3, 3]

    # the merged file loads through the ordinary loader; both tokens are there, with the rows each file trained
    model = load_base(d / "base.safetensors")
    info = load_style(model, out)
    assert [c["token"] for c in info["concepts"]] == ["style_00", "style_01"]
    assert info["adapter"] == "custom" and set(info["new_tokens"]) == {"style_00", "style_01"}
    emb = model.text_encoder.token_embedding.weight.numpy()
    inputs = {sid: read_style(d / f"{sid}.safetensors")[0] for sid in ("00", "01")}
    for sid, t in inputs.items():
        np.testing.assert_array_equal(emb[model.tokenizer.ids[f"style_{sid}"]], t[f"token_embedding.style_{sid}"])
    # the constraint on the real layers of the loaded model: each concept's caption features (<bos>..<eos> rows, as
    # --rows words asks) map through the merged K/V exactly as through that concept's own fine-tuned K/V
    pad = model.tokenizer.ids["<pad>"]
    layers = custom_layers(model)
    assert len(layers) == len(card["metrics"]["per_layer"]) > 0
    for sid, t in inputs.items():
        feats, ids = encode_features(model, [f"style_{sid}"])
        rows = feats[ids != pad]
        for name, layer in layers:
            W, Wi = layer.weight.numpy().astype(np.float64), t[f"unet.{name}.weight"].astype(np.float64)
            scale = np.abs(Wi @ rows.T).max()
            assert np.abs(W @ rows.T - Wi @ rows.T).max() < 1e-5 * scale, (sid, name)
            assert np.abs(W - Wi).max() > 1e-4   # and the merged weights are not simply one of the inputs
    # an inference prompt names either concept
    from gdlib.finetune import style_prompt
    assert "style_01" in style_prompt(info, "cat", concept="01") and "style_00" in style_prompt(info, "cat", "00")


@pytest.mark.slow
@pytest.mark.parametrize("case", ["dora file", "same file twice", "corrupt file", "too many rows", "one file"])
def test_merge_bad_inputs_exit_2_with_one_line(styles, case):
    d = styles
    args = {"dora file": [d / "00.safetensors", d / "dora.safetensors"],
            "same file twice": [d / "00.safetensors", d / "00.safetensors"],
            "corrupt file": [d / "00.safetensors", d / "corrupt.safetensors"],
            "too many rows": [d / "00.safetensors", d / "01.safetensors", "--rows", "caption"],  # 2 x 12 rows > width 16
            "one file": [d / "00.safetensors"]}[case]
    out = d / f"bad_{case.replace(' ', '_')}.safetensors"
    r = _cli("merge", *args, "--out", out, "--base", d / "base.safetensors", cwd=d)
    assert r.returncode == 2, (r.returncode, r.stdout[-500:], r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("gdlib merge") and ": error: " in lines[0], r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not out.exists()


def test_merge_help_does_not_import_jittor():
    import subprocess
    import sys

    code = ("import sys\nfrom gdlib import cli\ntry:\n    cli.main(['merge', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('JITTOR' if 'jittor' in sys.modules else 'NO JITTOR')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "Custom Diffusion" in r.stdout and r.stdout.strip().endswith("NO JITTOR"), (r.stdout, r.stderr)
