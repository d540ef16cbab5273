"""BatchNorm re-estimation after pruning: running statistics recomputed on calibration inputs.

Removing channels changes what every later BatchNorm sees, while its running mean and variance still describe
the dense model; the mismatch, not the lost channels, is most of the no-fine-tune accuracy collapse of
magnitude pruning (EagleEye, Li et al. 2020, "adaptive BN"). Re-estimating the statistics needs only unlabeled
inputs and a few forward passes, and changes no weight and no latency.
"""

from __future__ import annotations


def batchnorm_layers(module) -> list:
    import torch

    return [m for m in module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            and m.track_running_stats]


def recalibrate_batchnorm(module, batches: list) -> int:
    """Replace every BatchNorm's running statistics with their average over `batches` (input tuples).

    Everything else runs in eval mode (dropout off), and the module ends in eval mode. Returns the number of
    BatchNorm layers re-estimated (0 when the model has none or no batches are given).
    """
    import torch

    layers = batchnorm_layers(module)
    batches = [b for b in batches if b[0].shape[0] > 1] or batches  # one-sample batches break BatchNorm1d
    if not layers or not batches:
        return 0
    saved = [(m, m.momentum) for m in layers]
    module.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch, not an exponential one
        m.train()
    try:
        with torch.no_grad():
            for inputs in batches:
                module(*inputs)
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        module.eval()
    return len(layers)
