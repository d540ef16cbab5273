"""Output parity: how far one set of model outputs is from a reference (no torch; Python >= 3.8).

One definition serves the exporter's check (ONNX Runtime vs PyTorch) and the device's check of a bundle
against its reference outputs.
"""

import numpy as np


def compare_outputs(reference, actual, atol, rtol):
    """Per output: max abs, max rel, cosine, the smallest atol that would pass (at `rtol`), and whether it does."""
    out = {}
    for name, ref in reference.items():
        ref = np.asarray(ref, dtype=np.float64)
        got = np.asarray(actual[name], dtype=np.float64)
        if ref.shape != got.shape:
            out[name] = {"ok": False, "shape": [list(ref.shape), list(got.shape)], "max_abs": float("inf"),
                         "max_rel": float("inf"), "cosine": 0.0, "needed_atol": float("inf")}
            continue
        diff = np.abs(ref - got)
        denom = np.linalg.norm(ref) * np.linalg.norm(got)
        out[name] = {
            "ok": bool(np.all(diff <= atol + rtol * np.abs(ref))),
            "max_abs": float(diff.max(initial=0.0)),
            "max_rel": float((diff / np.maximum(np.abs(ref), 1e-12)).max(initial=0.0)),
            "cosine": float((ref * got).sum() / denom) if denom > 0 else 1.0,
            "needed_atol": float(np.maximum(diff - rtol * np.abs(ref), 0).max(initial=0.0)),
        }
    return out
