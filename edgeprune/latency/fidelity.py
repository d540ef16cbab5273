"""How well a frozen table predicts whole models it never saw, beside a MACs-proportional estimate."""

from __future__ import annotations

import numpy as np


def _ranks(values: np.ndarray) -> np.ndarray:
    order = np.argsort(values, kind="mergesort")
    ranks = np.empty(len(values))
    ranks[order] = np.arange(len(values), dtype=float)
    for v in np.unique(values):  # average ranks of ties
        tie = values == v
        if tie.sum() > 1:
            ranks[tie] = ranks[tie].mean()
    return ranks


def spearman(a, b) -> float:
    """Spearman rank correlation (Pearson on average ranks); NaN when either side is constant."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 2:
        return float("nan")
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def error_figures(predicted, measured) -> dict:
    """MAPE, share within ±10 % and ±5 %, Spearman ρ of predictions against measurements."""
    p, m = np.asarray(predicted, float), np.asarray(measured, float)
    if len(m) == 0:
        return {"n": 0}
    rel = np.abs(p - m) / m
    return {"n": int(len(m)), "mape": float(rel.mean()), "within_10": float((rel <= 0.10).mean()),
            "within_5": float((rel <= 0.05).mean()), "spearman": spearman(p, m)}


def noise_ceiling(rounds: list) -> float | None:
    """Share of models whose repeated measurements (independent rounds) agree within ±10 %."""
    pairs = [(r[0], r[1]) for r in rounds if len(r) >= 2]
    if not pairs:
        return None
    a = np.array([x for x, _ in pairs])
    b = np.array([y for _, y in pairs])
    return float((np.abs(a - b) / np.minimum(a, b) <= 0.10).mean())


def choose_calibration(raw_dense: float, measured_dense: float, calib_raw: list, calib_measured: list) -> dict:
    """Ratio (measured ÷ Σ cells) or additive (measured − Σ cells), whichever predicts calibration variants better.

    The calibration variants are separate from the held-out fidelity variants, so the choice never sees them.
    """
    ratio = measured_dense / raw_dense
    additive = measured_dense - raw_dense
    out = {"dense_measured_ms": measured_dense, "dense_predicted_ms": raw_dense, "ratio": ratio,
           "additive_ms": additive, "kind": "ratio", "value": ratio}
    if calib_raw:
        err_ratio = float(np.mean([abs(r * ratio - m) / m for r, m in zip(calib_raw, calib_measured)]))
        err_add = float(np.mean([abs(r + additive - m) / m for r, m in zip(calib_raw, calib_measured)]))
        out.update(choice_mape={"ratio": err_ratio, "additive": err_add}, n_calibration_variants=len(calib_raw))
        if err_add < err_ratio:
            out.update(kind="additive", value=additive)
    return out
