"""Custom Diffusion's closed-form merge of fine-tuned cross-attention weights (Kumari et al. 2023, Sec. 3.2, Eq. 4).

Two concepts A and B were fine-tuned separately, each changing only the cross-attention key and value projections
W (`attn2.to_k`, `attn2.to_v`: they read the text, so only text features pass through them). The merged W keeps
the base model's behaviour on ordinary text as well as possible while mapping each concept's own words exactly as
its fine-tuned model does:

    W* = argmin_W || W R^T - W0 R^T ||_F^2   subject to   W C^T = V

with R [n_reg, d] the text features of many regularisation captions (rows), C [n_target, d] the features of the
target words (A's and B's), and V [d_out, n_target] = (W_A C_A^T | W_B C_B^T). With M = R^T R and the Lagrange
multipliers L [d_out, n_target]: 2 (W - W0) M = 2 L C gives W - W0 = L C M^-1, and the constraint fixes
L = (V - W0 C^T) (C M^-1 C^T)^-1, so

    W* = W0 + (V - W0 C^T) (C M^-1 C^T)^-1 C M^-1 .

NumPy, float64; `ridge` adds eps * mean(diag M) to M when the regularisation features do not span all d directions.
"""
from __future__ import annotations

import numpy as np


def constrained_merge(W0: np.ndarray, R: np.ndarray, C: np.ndarray, V: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """W* = argmin ||(W - W0) R^T||_F^2 s.t. W C^T = V (Kumari et al. 2023, Eq. 4), in closed form (module docstring).

    W0 [d_out, d], R [n_reg, d], C [n_target, d], V [d_out, n_target] -> W* [d_out, d] (float64)."""
    W0, R, C, V = (np.asarray(a, np.float64) for a in (W0, R, C, V))
    if W0.ndim != 2 or R.ndim != 2 or C.ndim != 2 or V.ndim != 2:
        raise ValueError("constrained_merge: W0, R, C and V must be matrices")
    d_out, d = W0.shape
    if R.shape[1] != d or C.shape[1] != d or V.shape != (d_out, C.shape[0]):
        raise ValueError(f"constrained_merge: shapes do not fit: W0 {W0.shape}, R {R.shape}, C {C.shape}, V {V.shape} "
                         "(need R [n, d], C [k, d], V [d_out, k])")
    if C.shape[0] > d:
        raise ValueError(f"constrained_merge: {C.shape[0]} target features cannot all be matched exactly in {d} "
                         "dimensions; use fewer target tokens")
    M = R.T @ R
    M = M + ridge * (np.trace(M) / d + 1e-12) * np.eye(d)
    M_inv_Ct = np.linalg.solve(M, C.T)                       # M^-1 C^T  [d, k]
    gram = C @ M_inv_Ct                                      # C M^-1 C^T  [k, k]
    E = V - W0 @ C.T                                         # what the constraint asks on top of W0
    L = np.linalg.solve(gram.T, E.T).T                       # E (C M^-1 C^T)^-1
    return W0 + L @ M_inv_Ct.T


def merge_objective(W: np.ndarray, W0: np.ndarray, R: np.ndarray) -> float:
    """|| (W - W0) R^T ||_F^2: how much the merged weights change the base model's response to ordinary text."""
    D = (np.asarray(W, np.float64) - np.asarray(W0, np.float64)) @ np.asarray(R, np.float64).T
    return float((D * D).sum())
