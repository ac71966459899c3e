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
