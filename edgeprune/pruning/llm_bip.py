"""LLM-BIP (Wu et al. 2024, arXiv 2412.06419): a unit's importance is its effect on its own block's output.

One forward pass over the calibration tokens, no gradients. For a unit whose input columns of the block's
output projection are J, over all calibration tokens (X_j: column j's input to that projection, every token):

- MLP channel j: ‖X_j‖₂ · ‖W_down[:, j]‖₂, X_j = act(gate)·up for SwiGLU, act(fc1) otherwise. Removing j
  changes the block output by exactly W_down[:, j] X_jᵀ, whose Frobenius norm is this product: the score is
  the effect itself, not a bound.
- attention: per input column j of the output projection, ‖X_j‖₂ · ‖W_o[:, j]‖₂ · (1 + ‖W_in‖₂ ‖W_down‖₂).
  ‖X_j‖·‖W_o[:, j]‖ is the change of the attention output; it reaches the block output once through the
  residual and once through the MLP, whose gain the spectral norms bound. A unit (one kv head with the query
  heads that share it, so GQA sharing is never broken) scores the sum over its columns, which bounds the
  norm of its removal's change by the triangle inequality.

The MLP gain. `W_in` is the MLP's first matrix: fc1 (GPT-2, BERT, ViT) or, for SwiGLU, the stacked
[W_gate; W_up] — the one linear map x ↦ (gate x, up x) through which an attention change enters the MLP.
Its spectral norm is at least max(‖W_gate‖₂, ‖W_up‖₂) and at most their root sum of squares, and it is
‖W_up‖₂ exactly when there is a single matrix, so every family reads the same definition. The gated product
act(gate x)·(up x) has no activation-free Lipschitz constant (its local gain scales with the activations
themselves), and the norm in front of the MLP (RMSNorm / LayerNorm, whose gain depends on the residual's
scale) is left out as the paper's factor leaves it out: the factor is the paper's linear stand-in, not a
guaranteed bound for SwiGLU. It only matters relative to the MLP channels of the same block.

Scale. Both kinds of score measure a change of the same block output in the same norm (Frobenius over every
calibration token), so they are compared as they are (the registry's normalize="none"): per block with one
ratio (`--mode uniform`) or across every block and unit type (`--mode global`).

Streaming. The column norms are Σₜ x_tj² accumulated by forward pre-hooks on the output projections while
calibration batches run one after another under no_grad (`ScoreContext.input_stats`): one batch's
activations, inside one block at a time, exist while the hooks read them, and no activation is kept.
"""

from __future__ import annotations

import numpy as np


def spectral_norm(matrix: np.ndarray) -> float:
    """Largest singular value, from the eigenvalues of the smaller Gram matrix (BLAS-3; an SVD of a 1B model's
    8192 × 2048 MLP matrices costs several times more)."""
    m = np.asarray(matrix, dtype=np.float64)
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return float(np.sqrt(max(float(np.linalg.eigvalsh(gram)[-1]), 0.0)))


def column_effects(weight: np.ndarray, input_norm: np.ndarray) -> np.ndarray:
    """Per input column j of a projection with weight [out, in]: ‖X_j‖₂ · ‖W[:, j]‖₂ (`input_norm`: ‖X_j‖₂)."""
    w = np.asarray(weight, dtype=np.float64)
    return np.asarray(input_norm, dtype=np.float64) * np.sqrt((w * w).sum(axis=0))


def _matrix(module) -> np.ndarray:
    from .transformer import oriented

    return oriented(module.weight.detach(), module).double().cpu().numpy()


def mlp_gain(layer, layout) -> float:
    """‖W_in‖₂ · ‖W_down‖₂ of the layer's MLP, W_in = its first projection(s) stacked (see the module doc)."""
    from .transformer import unit_parts

    parts = unit_parts(layer, layout, "mlp")
    ups = {id(m): m for m, side, _ in parts if side == "out"}  # packed gate|up (Phi-3) is listed once per block
    first = np.concatenate([_matrix(m) for m in ups.values()], axis=0)
    down = next(_matrix(m) for m, side, _ in parts if side == "in")
    return spectral_norm(first) * spectral_norm(down)


def unit_scores(group, input_norm: np.ndarray) -> np.ndarray:
    """LLM-BIP score of every unit of one transformer group (kind "heads" or "mlp")."""
    from .transformer import unit_parts

    proj, _, units = next(p for p in unit_parts(group.handle, group.layout, group.kind) if p[1] == "in")
    per_col = column_effects(_matrix(proj), input_norm)
    if group.kind == "heads":
        per_col = per_col * (1.0 + mlp_gain(group.handle, group.layout))
    return np.array([per_col[cols].sum() for cols in units])


def llm_bip(groups: list, stats: list) -> list:
    """One array of unit scores per group; `stats[i]["norm"]` is √(Σₜ x²) of group i's projection input columns.

    Groups that are not transformer heads / MLP channels get None (kept whole).
    """
    return [unit_scores(g, st["norm"]) if g.kind in ("heads", "mlp") else None
            for g, st in zip(groups, stats)]
