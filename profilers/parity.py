"""Output parity: how far one set of model outputs is from a reference (no torch; Python >= 3.8).

One definition serves the exporter's check (ONNX Runtime vs PyTorch) and the device's check of a bundle
against its reference outputs.

An output passes when every element is within `atol * max(1, scale / SCALE_REF) + rtol * |ref|`, where scale is
the output's largest magnitude: float32 rounding grows with the magnitudes a model computes, so a randomly
initialised deep network whose outputs reach 1e7 differs from the reference by ~5 (5e-7 of its scale, measured
on torchvision resnet152) without any op being mistranslated. For outputs up to SCALE_REF (typical logits)
`atol` is absolute, as usual.
"""

import numpy as np

SCALE_REF = 10.0  # above this output magnitude, atol grows in proportion


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
        grow = max(1.0, float(np.abs(ref).max(initial=0.0)) / SCALE_REF)
        denom = np.linalg.norm(ref) * np.linalg.norm(got)
        out[name] = {
            "ok": bool(np.all(diff <= atol * grow + rtol * np.abs(ref))),
            "max_abs": float(diff.max(initial=0.0)),
            "max_rel": float((diff / np.maximum(np.abs(ref), 1e-12)).max(initial=0.0)),
            "cosine": float((ref * got).sum() / denom) if denom > 0 else 1.0,
            "needed_atol": float(np.maximum(diff - rtol * np.abs(ref), 0).max(initial=0.0)) / grow,
        }
    return out
