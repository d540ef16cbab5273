"""What cutting one group to a width costs, in loss units: the knapsack's option values.

A criterion (l1, l2, taylor, ...) ranks the units *inside* a group; it says nothing about how much accuracy a
group can give up. Dividing every group's scores by its own mean made every unit of every group worth about the
same, so the latency knapsack stripped the narrow, high-resolution groups first (docs/pruning.md). Here each
group is cut alone to a few candidate widths, BatchNorm statistics are re-estimated for that cut, and the loss
against the dense model's own outputs on the calibration samples is measured (KL of the softmax over the last
axis: classes or vocabulary, no labels needed). That is G × k forward passes over the calibration samples.

The measured losses become concave option values: loss is made non-increasing in width (a wider group never
loses more) and then replaced by its lower convex hull, so each further unit removed costs at least as much as
the previous one; widths between measured points are read off the hull. Values of all groups, attention heads
and MLP channels included, are on one scale (nats of KL), which is what lets a whole GQA group compete with
MLP channels.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

Value = Callable[[int], float]


@dataclass
class Sensitivity:
    """Measured loss per group at a few widths; every group's dense width has `dense_loss`."""

    names: list  # group names, in space order
    widths: list  # per group: measured widths (ascending), [] for a group that is not pruned
    losses: list  # per group: loss at each measured width
    dense_loss: float = 0.0  # the dense widths' loss (BatchNorm re-estimation alone moves it off zero)
    wall_s: float = 0.0
    cached: bool = False
    evaluations: int = 0
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"names": self.names, "widths": self.widths, "losses": self.losses, "dense_loss": self.dense_loss,
                "wall_s": self.wall_s, "evaluations": self.evaluations}

    @classmethod
    def from_dict(cls, data: dict) -> Sensitivity:
        return cls(list(data["names"]), [list(w) for w in data["widths"]], [list(v) for v in data["losses"]],
                   float(data["dense_loss"]), float(data.get("wall_s", 0.0)),
                   evaluations=int(data.get("evaluations", 0)))

    def values(self, groups: list) -> list:
        """Per group, a concave value function of kept units (−loss; None for groups that stay whole)."""
        out = []
        for group, widths, losses in zip(groups, self.widths, self.losses):
            if not widths:
                out.append(None)
                continue
            out.append(concave_value(widths + [group.units], losses + [self.dense_loss]))
        return out


def concave_value(widths: list, losses: list) -> Value:
    """−loss as a concave, non-decreasing function of width through the measured points (linear between)."""
    order = np.argsort(widths)
    w = np.asarray(widths, dtype=np.float64)[order]
    loss = np.asarray(losses, dtype=np.float64)[order]
    loss = np.maximum.accumulate(loss[::-1])[::-1]  # never more loss for more units
    hull = _lower_hull(w, loss)
    hw, hl = w[hull], loss[hull]

    def value(units: int) -> float:
        return -float(np.interp(units, hw, hl, left=hl[0] + (hw[0] - units) * _slope(hw, hl)))

    return value


def _slope(hw: np.ndarray, hl: np.ndarray) -> float:
    """Loss per unit removed below the smallest measured width (the first hull segment, extended)."""
    if len(hw) < 2:
        return 0.0
    return float((hl[0] - hl[1]) / (hw[1] - hw[0]))


def _lower_hull(x: np.ndarray, y: np.ndarray) -> list:
    """Indices of the lower convex hull of points sorted by x (monotone chain)."""
    hull: list = []
    for i in range(len(x)):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (y[b] - y[a]) * (x[i] - x[a]) >= (y[i] - y[a]) * (x[b] - x[a]):
                hull.pop()
            else:
                break
        hull.append(i)
    return hull


def probe_widths(options: list, points: int) -> list:
    """Up to `points` widths below the dense one, spread over a group's allowed widths (smallest always in)."""
    below = options[:-1]
    if len(below) <= points:
        return list(below)
    picks = {below[0]}
    for k in range(1, points):
        picks.add(below[round(k * (len(below) - 1) / (points - 1))])
    return sorted(picks)


def outputs(module, batches: list) -> list:
    """The model's outputs (logits) per calibration batch, in eval mode."""
    import torch

    module.eval()
    with torch.no_grad():
        return [_logits(module(*inputs)) for inputs in batches]


def _logits(out):
    out = getattr(out, "logits", out)
    if isinstance(out, (tuple, list)):
        out = out[0]
    return out.detach().float()


def calib_loss(module, batches: list, reference: list) -> float:
    """Mean KL(dense ‖ candidate) of the softmax over the last axis, over every sample (and token)."""
    import torch
    import torch.nn.functional as F

    total, count = 0.0, 0
    module.eval()
    with torch.no_grad():
        for inputs, ref in zip(batches, reference):
            out = _logits(module(*inputs))
            ref = ref.reshape(-1, ref.shape[-1])
            out = out.reshape(-1, out.shape[-1])
            kl = F.kl_div(F.log_softmax(out, -1), F.log_softmax(ref, -1), log_target=True, reduction="sum")
            total += float(kl)
            count += ref.shape[0]
    return total / max(count, 1)


class Unmaskable(Exception):
    """A group whose removal zeroed weights cannot reproduce (a norm over channels, a grouped conv, FLAP's bias)."""


class CandidateScorer:
    """Calibration loss of the pristine model slimmed to any unit counts, BatchNorm re-estimated first.

    Removing a unit and zeroing every weight that touches it give the same outputs when nothing normalises
    across channels (BatchNorm statistics are re-estimated: a zeroed channel's mean and variance are 0, and with
    γ = β = 0 it stays 0). So where every group allows it, a candidate is scored in place on the pristine model —
    zero, re-estimate, evaluate, restore — with no copy and no dependency-graph trace; otherwise (LayerNorm or
    GroupNorm over channels, grouped convolutions, FLAP's bias compensation) on a slimmed deep copy. Results are
    memoised by unit counts, so search never pays twice for one candidate.
    """

    def __init__(self, pristine, space, scores, batches: list, reference: list | None = None):
        self.pristine, self.space, self.scores, self.batches = pristine, space, scores, batches
        self.reference = reference if reference is not None else outputs(pristine, batches)
        self.memo: dict = {}
        self.groups = space(pristine) if not scores.input_mean else None
        self.masked = self.groups is not None and all(_maskable(g) for g in self.groups)

    def __call__(self, units: list) -> float:
        key = tuple(int(u) for u in units)
        if key not in self.memo:
            self.memo[key] = self._masked(list(key)) if self.masked else self._slimmed(list(key))
        return self.memo[key]

    def evaluate(self, module):
        """What a candidate (`module`, BatchNorm re-estimated) scores: its calibration loss. Subclasses measure
        other things of the same candidate (pruning/ttmpd.py's proxies) without repeating the zero/restore."""
        return calib_loss(module, self.batches, self.reference)

    def _removed(self, i: int, keep: int) -> list:
        from .engine import best_units

        n = self.groups[i].units
        kept = set(best_units(self.scores.raw[i], n, keep))
        return [u for u in range(n) if u not in kept]

    def _slimmed(self, units: list) -> float:
        from .batchnorm import recalibrate_batchnorm
        from .engine import slim_copy

        candidate, _ = slim_copy(self.pristine, self.space, units, self.scores)
        recalibrate_batchnorm(candidate, self.batches)
        return self.evaluate(candidate)

    def _masked(self, units: list) -> float:
        import torch

        from .batchnorm import batchnorm_layers, recalibrate_batchnorm

        saved = {}
        for m in batchnorm_layers(self.pristine):
            for name in ("running_mean", "running_var", "num_batches_tracked"):
                saved[(m, name)] = getattr(m, name).clone()
        try:
            with torch.no_grad():
                for i, group in enumerate(self.groups):
                    removed = self._removed(i, units[i]) if units[i] < group.units else []
                    if removed:
                        for param, view, dim, index in _unit_weights(group, removed):
                            saved.setdefault((param, None), param.detach().clone())
                            view.index_fill_(dim, index, 0.0)
            recalibrate_batchnorm(self.pristine, self.batches)
            return self.evaluate(self.pristine)
        finally:
            with torch.no_grad():
                for (owner, name), value in saved.items():
                    if name is None:
                        owner.copy_(value)
                    else:
                        getattr(owner, name).copy_(value)


def _maskable(group) -> bool:
    try:
        if group.kind == "channels":
            _channel_weights(group, [0])
        return True
    except Unmaskable:
        return False


def _unit_weights(group, removed: list) -> list:
    """[(parameter, view of it, dim, indices)]: the entries to zero for removing `removed` units of `group`."""
    if group.kind == "channels":
        return _channel_weights(group, group.channels_of(removed) if hasattr(group, "channels_of") else removed)
    import torch

    from .criteria import _columns, projection
    from .transformer import oriented

    proj = projection(group)  # its input columns are the units: zeroing them removes the heads / channels
    cols = torch.as_tensor(sorted(c for u in removed for c in _columns(group)[u]), dtype=torch.long)
    return [(proj.weight, oriented(proj.weight.data, proj), 1, cols)]


def _channel_weights(group, removed: list) -> list:
    """Every weight a Torch-Pruning group's removed channels touch, as `_unit_weights` entries."""
    import torch
    import torch_pruning.pruner.function as fn

    root = group.handle[0].dep
    handle = group.graph.get_pruning_group(root.target.module, root.handler, sorted(int(i) for i in removed))
    out = []
    for dep, idxs in handle:
        layer, prune = dep.target.module, dep.handler
        idx = torch.as_tensor(sorted(int(i) for i in idxs), dtype=torch.long)
        params = [p for p in (getattr(layer, "weight", None), getattr(layer, "bias", None)) if p is not None]
        if prune in (fn.prune_conv_out_channels, fn.prune_linear_out_channels, fn.prune_batchnorm_out_channels,
                     fn.prune_depthwise_conv_out_channels, fn.prune_depthwise_conv_in_channels):
            if getattr(layer, "transposed", False):
                raise Unmaskable(f"transposed conv {layer}")
            out += [(p, p.data, 0, idx) for p in params]
        elif prune in (fn.prune_conv_in_channels, fn.prune_linear_in_channels):
            groups = getattr(layer, "groups", 1)
            if groups == 1:
                out.append((layer.weight, layer.weight.data, 1, idx))
            elif groups != layer.in_channels or groups != layer.out_channels:
                raise Unmaskable(f"grouped conv {layer}")
        elif params:
            raise Unmaskable(f"{type(layer).__name__} couples these channels")
    return out


def single_cuts(groups: list, options: dict, points: int, evaluate: Callable[[list, int | None], object],
                on_progress: Callable[[int, int], None] | None = None) -> tuple:
    """Evaluate the dense widths, then each group cut alone to up to `points` of its allowed widths.

    `options`: group index -> widths; `evaluate(units, index)` (index None for the dense widths). Returns
    (widths, values, dense value, evaluations), widths and values per group ([] for a group not probed).
    """
    dense = [g.units for g in groups]
    plan = {i: probe_widths(options[i], points) for i in options}
    total = sum(len(v) for v in plan.values()) + 1
    widths, values = [[] for _ in groups], [[] for _ in groups]
    base = evaluate(dense, None)
    done = 1
    for i, probes in plan.items():
        for w in probes:
            units = list(dense)
            units[i] = w
            widths[i].append(w)
            values[i].append(evaluate(units, i))
            done += 1
            if on_progress is not None:
                on_progress(done, total)
    return widths, values, base, total


def measure_sensitivity(scorer: CandidateScorer, groups: list, options: dict, points: int = 4,
                        on_progress: Callable[[int, int], None] | None = None) -> Sensitivity:
    """Cut each group alone to up to `points` of its allowed widths (`options`: group index -> widths)."""
    started = time.time()
    widths, losses, dense_loss, total = single_cuts(groups, options, points, lambda units, _: scorer(units),
                                                    on_progress)
    return Sensitivity([g.name for g in groups], widths, losses, dense_loss, time.time() - started, evaluations=total)


def sensitivity_key(source_sha256: str, criterion: str, batches: list, options: dict, points: int, seed: int) -> str:
    """Cache key: the model's weights, the criterion ordering units, the calibration samples, the probed widths."""
    digest = hashlib.sha256()
    digest.update(json.dumps([source_sha256, criterion, seed, points, {str(k): v for k, v in sorted(options.items())}],
                             sort_keys=True).encode())
    for inputs in batches:
        for x in inputs:
            digest.update(x.detach().cpu().numpy().tobytes())
    return digest.hexdigest()
