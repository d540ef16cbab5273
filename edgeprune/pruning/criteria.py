"""Importance criteria (`--criterion NAME`): one score per removable unit of every group.

The baselines the research methods must beat, written to their papers' definitions:

- `l1`, `l2` (no data): Σ|w|^p over the unit's weights in each coupled layer, averaged over the layers
  (Torch-Pruning's group magnitude).
- `bn_scale` (no data): |γ| of the unit's BatchNorm channels (Network Slimming); groups without BatchNorm stay whole.
- `taylor` (data): per calibration batch, (Σ w·∂L/∂w over the unit's weights in every coupled layer)², averaged
  over batches (Molchanov et al. 2019: the squared first-order estimate of the loss change of removing the unit).
- `random` (no data): seeded uniform noise.
- `wanda_sp` (data): Σ_j Σ_i |W_ij|·‖X_j‖₂ over the unit's input columns j of the output projection (An et al.,
  FLAP's Wanda-sp baseline).
- `flap` (data): Var(X_j)·‖W_:,j‖₂² per input column j of the output projection (FLAP's fluctuation metric,
  squared for attention), standardised within each layer, a kv group scored by the mean of its columns, as in
  the reference code; the removed columns' mean input goes into the projection's bias.
- `llm-bip` (data): the unit's effect on its own block's output, ‖X_j‖·‖W[:, j]‖ over its input columns of the
  output projection, attention columns times the MLP gain 1 + ‖W_in‖₂‖W_down‖₂ (Wu et al. 2024; llm_bip.py).
- `prunenet` (no data): a policy learned from the weights alone (Sengupta et al. 2025; prunenet.py) keeps the
  rows of the first MLP matrix whose removal least shifts its singular-value distribution; a unit's score is
  its keep-probability. Heads: the shift removing the head alone causes in its layer's [W_q; W_k; W_v] spectrum.

A criterion decides which units of a group go first. How many go is decided by the latency knapsack from
measured calibration losses when --calib is given (sensitivity.py); without data, and in `--mode global`, the
scores themselves are compared across groups after normalisation: magnitude-style scores are divided by their
group's mean (Torch-Pruning's default) and multiplied by the number of layers the group couples, FLAP scores
come standardised per layer (attention and MLP alike, as in the reference code), Taylor and LLM-BIP scores are
used as they are (a loss change; a change of the block output in one norm: already comparable).

Why the layer count: after division by the group mean every unit is worth about 1, so a residual-stream
channel (coupled through the stem and every block of a stage, 5-9 layers) would be worth no more than a
channel inside one block (2 layers) while costing latency in all of them. Counting the coupled layers values a
unit by how much of the network it removes, which is what its latency cost also counts. It remains a guess at
what a cut costs; the measured sensitivity replaces it whenever calibration samples exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from edgeprune.errors import BadInputError

from .llm_bip import llm_bip
from .prunenet import prunenet


@dataclass
class ScoreContext:
    """What a criterion may read: the model, its unit groups, calibration batches, the loss, a seed."""

    groups: list
    module: object
    batches: list = field(default_factory=list)
    loss_fn: Callable | None = None  # loss_fn(module, inputs) -> scalar loss (Taylor)
    seed: int = 0
    policy: str | None = None  # PruneNet policy file: loaded when it exists, else trained and written there
    ratio: float | None = None  # the requested fraction of units removed (PruneNet trains its policy at it)
    _stats: list | None = None

    def input_stats(self) -> list:
        """Per group: mean, variance and norm of the output projection's input columns (computed once)."""
        if self._stats is None:
            self._stats = _input_stats(self.groups, self.module, self.batches)
        return self._stats


@dataclass(frozen=True)
class Criterion:
    """A registry entry: `score(ctx)` returns one 1-D array of per-unit scores per group (None: keep it whole)."""

    name: str
    score: Callable[[ScoreContext], list]
    needs_data: bool = False
    normalize: str = "mean"  # how scores become comparable across groups: "mean", "standard" or "none"
    transformers_only: bool = False
    compensates_bias: bool = False  # the removed columns' mean input joins the next bias (FLAP)
    summary: str = ""


class CriterionRegistry:
    """The `--criterion` names; an instance, so tests can build their own. Registering a name twice is an error."""

    def __init__(self, criteria: tuple = ()):
        self._items: dict = {}
        for criterion in criteria:
            self.register(criterion)

    def register(self, criterion: Criterion) -> Criterion:
        if not isinstance(criterion, Criterion) or not callable(criterion.score):
            raise TypeError("register a Criterion(name, score=callable(ScoreContext) -> list of arrays)")
        if criterion.normalize not in ("mean", "standard", "none"):
            raise ValueError(f"criterion {criterion.name}: normalize must be mean, standard or none")
        if criterion.name in self._items:
            raise ValueError(f"criterion {criterion.name!r} is already registered")
        self._items[criterion.name] = criterion
        return criterion

    def get(self, name: str) -> Criterion:
        if name not in self._items:
            import difflib

            close = difflib.get_close_matches(name, list(self._items), n=2)
            raise BadInputError(f"unknown criterion '{name}'", f"did you mean {', '.join(close)}?" if close
                                else f"choose one of {', '.join(self._items)}")
        return self._items[name]

    def names(self) -> list:
        return list(self._items)

    def items(self):
        return self._items.items()

    def __contains__(self, name: str) -> bool:
        return name in self._items


def _bn_scales(ctx: ScoreContext) -> list:
    raw = [_bn_scale(g) for g in ctx.groups]
    if all(r is None for r in raw):
        raise BadInputError("criterion bn_scale needs BatchNorm layers and this model has none in its groups",
                            "use l1, l2 or taylor")
    return raw


def _random(ctx: ScoreContext) -> list:
    rng = np.random.default_rng(ctx.seed)
    return [rng.random(g.units) for g in ctx.groups]


CRITERIA = CriterionRegistry((
    Criterion("l1", lambda ctx: [_magnitude(g, 1) for g in ctx.groups], summary="group L1 magnitude"),
    Criterion("l2", lambda ctx: [_magnitude(g, 2) for g in ctx.groups], summary="group L2 magnitude (sum of squares)"),
    Criterion("bn_scale", _bn_scales, summary="BatchNorm scale |γ| (Network Slimming)"),
    Criterion("taylor", lambda ctx: _taylor(ctx.groups, ctx.module, ctx.batches, ctx.loss_fn), needs_data=True,
              normalize="none", summary="first-order Taylor (Σ w·grad)² per batch, averaged (Molchanov et al.)"),
    Criterion("random", _random, normalize="none", summary="seeded random scores (a floor every criterion must beat)"),
    Criterion("wanda_sp", lambda ctx: [_wanda_sp(g, st) for g, st in zip(ctx.groups, ctx.input_stats())],
              needs_data=True, transformers_only=True, summary="structured Wanda: |W|·‖X‖ per head / channel"),
    Criterion("flap", lambda ctx: [_flap(g, st) for g, st in zip(ctx.groups, ctx.input_stats())], needs_data=True,
              normalize="none", transformers_only=True, compensates_bias=True,
              summary="FLAP fluctuation Var(X)·‖W‖², standardised per layer, with bias compensation"),
    Criterion("llm-bip", lambda ctx: llm_bip(ctx.groups, ctx.input_stats()), needs_data=True, normalize="none",
              transformers_only=True,
              summary="LLM-BIP: each unit's effect on its block's output, ‖X‖·‖W‖ (× MLP gain for attention)"),
    Criterion("prunenet", lambda ctx: prunenet(ctx.groups, ctx.policy, ctx.ratio, ctx.seed), transformers_only=True,
              summary="PruneNet: a data-free policy keeping the rows that preserve the MLP spectrum (--policy FILE)"),
))


def register_criterion(criterion: Criterion) -> Criterion:
    """Add a criterion of your own to `--criterion` / `edgeprune.prune(criterion=NAME)`."""
    return CRITERIA.register(criterion)


@dataclass
class Scores:
    """Raw and normalised per-unit scores per group (None: the criterion cannot score it; the group stays whole)."""

    criterion: str
    raw: list
    normalized: list
    input_mean: dict = field(default_factory=dict)  # group index -> mean input per column (FLAP compensation)


def get_criterion(name: str) -> Criterion:
    return CRITERIA.get(name)


def score_groups(name: str, groups: list, module, batches: list | None = None, loss_fn=None, seed: int = 0,
                 policy: str | None = None, ratio: float | None = None) -> Scores:
    """Score every unit of every group with criterion `name`.

    `batches` is a list of model inputs (tuples); `loss_fn(module, inputs)` returns the scalar loss Taylor needs.
    `policy` (PruneNet's policy file) and `ratio` (the fraction of units the request removes) reach the criterion.
    """
    crit = get_criterion(name)
    if policy is not None and name != "prunenet":
        raise BadInputError(f"--policy is PruneNet's trained policy; it applies only to --criterion prunenet, "
                            f"not {name}", "drop --policy, or pass --criterion prunenet")
    transformer = any(g.kind in ("heads", "mlp") for g in groups)
    if crit.transformers_only and not transformer:
        raise BadInputError(f"criterion {name} scores attention heads and MLP channels of transformers",
                            "use l1, l2, bn_scale, taylor or random for this model")
    if crit.needs_data and not batches:
        raise BadInputError(f"criterion {name} needs calibration data", "pass --calib PATH (or choose l1 / l2)")
    ctx = ScoreContext(groups, module, list(batches or []), loss_fn, seed, policy=policy, ratio=ratio)
    raw = [g.unit_scores(r) if hasattr(g, "unit_scores") else r for g, r in zip(groups, crit.score(ctx))]
    if len(raw) != len(groups) or any(r is not None and len(r) != g.units for r, g in zip(raw, groups)):
        raise ValueError(f"criterion {name} must return one score per unit of every group")
    input_mean = {i: st["mean"] for i, st in enumerate(ctx.input_stats())} if crit.compensates_bias else {}
    return Scores(name, raw, normalize(raw, groups, crit.normalize), input_mean)


def normalize(raw: list, groups: list, how: str) -> list:
    """Make scores comparable across groups (see the module docstring)."""
    if how == "none":
        return [None if r is None else np.asarray(r, dtype=np.float64) for r in raw]
    if how == "mean":
        return [None if r is None else np.asarray(r, np.float64) / max(float(np.mean(r)), 1e-12) * coupled_layers(g)
                for r, g in zip(raw, groups)]
    out = [None] * len(raw)
    for kind in {g.kind for g in groups}:
        members = [i for i, g in enumerate(groups) if g.kind == kind and raw[i] is not None]
        if not members:
            continue
        allv = np.concatenate([np.asarray(raw[i], np.float64) for i in members])
        mu, sd = float(allv.mean()), float(allv.std()) or 1.0
        for i in members:
            out[i] = (np.asarray(raw[i], np.float64) - mu) / sd
    return out


def coupled_layers(group) -> int:
    """How many parameterised layers removing one unit of `group` touches (1 when unknown)."""
    if group is None:
        return 1
    if group.kind != "channels":
        return len(unit_slices(group))
    outs, ins, norms = _weight_handlers()
    count = sum(1 for dep, _ in group.handle
                if dep.handler in outs + ins + norms and getattr(dep.target.module, "weight", None) is not None)
    return max(count, 1)


def _weight_handlers() -> tuple:
    """Torch-Pruning's pruning functions that cut a weight's output channels, input channels, or norm scales."""
    import torch_pruning.pruner.function as fn

    return ((fn.prune_conv_out_channels, fn.prune_linear_out_channels),
            (fn.prune_conv_in_channels, fn.prune_linear_in_channels),
            (fn.prune_batchnorm_out_channels, fn.prune_layernorm_out_channels, fn.prune_groupnorm_out_channels))


# -- weights of one unit --------------------------------------------------------------------------------
def unit_slices(group) -> list:
    """[(projection module, side, index lists per unit)] of a transformer group (see transformer.unit_parts)."""
    from .transformer import unit_parts

    return unit_parts(group.handle, group.layout, group.kind)


def _per_unit(matrix, side: str, units: list) -> np.ndarray:
    """Σ of an [out, in] `matrix` (already |w|^p or |w·g|) over each unit's output rows or input columns."""
    per_index = matrix.detach().double().sum(dim=1 if side == "out" else 0).cpu().numpy()
    return np.array([per_index[idx].sum() for idx in units])


def _magnitude(group, p: int) -> np.ndarray:
    if group.kind == "channels":
        import torch_pruning as tp

        return _tp(tp.importance.GroupMagnitudeImportance(p=p, group_reduction="mean", normalizer=None), group)
    from .transformer import oriented

    parts = [_per_unit(oriented(m.weight, m).abs().pow(p), side, units) for m, side, units in unit_slices(group)]
    return np.mean(parts, axis=0)


def _bn_scale(group):
    if group.kind != "channels":
        return None
    import torch_pruning as tp

    return _tp(tp.importance.BNScaleImportance(group_reduction="mean", normalizer=None), group)


def _tp(importance, group):
    scores = importance(group.handle)
    return None if scores is None else scores.detach().double().cpu().numpy()


def _taylor(groups: list, module, batches: list, loss_fn) -> list:
    """Molchanov et al. (2019): per batch, (Σ w·∂L/∂w over the unit's slice in every coupled layer)², averaged.

    The sum is signed and squared per batch: near convergence a unit's gradients point different ways in
    different batches, and summing gradients over batches first lets them cancel (that was this criterion's
    earlier form; it under-scored exactly the units that matter).
    """
    import torch

    was_training = module.training
    module.eval()
    total = [None] * len(groups)
    try:
        for inputs in batches:
            module.zero_grad(set_to_none=True)
            with torch.enable_grad():
                loss_fn(module, inputs).backward()
            for i, group in enumerate(groups):
                contribution = _unit_taylor(group)
                if contribution is not None:
                    total[i] = contribution ** 2 if total[i] is None else total[i] + contribution ** 2
    finally:
        module.zero_grad(set_to_none=True)
        if was_training:
            module.train()
    return [None if t is None else t / len(batches) for t in total]


def _unit_taylor(group) -> np.ndarray | None:
    """Per unit, the signed Σ w·grad over its slice of every weight the group couples (this batch's gradients)."""
    if group.kind == "channels":
        return _group_taylor(group.handle)
    import torch

    from .transformer import oriented

    parts = []
    for m, side, units in unit_slices(group):
        grad = m.weight.grad if m.weight.grad is not None else torch.zeros_like(m.weight)
        parts.append(_per_unit(oriented(m.weight.detach() * grad, m), side, units))
    return np.sum(parts, axis=0)


def _group_taylor(handle) -> np.ndarray | None:
    """Per channel, the signed Σ w·grad over every parameterised layer of a Torch-Pruning group.

    Written here rather than taken from torch_pruning.importance.GroupTaylorImportance: in Torch-Pruning 1.6 its
    BatchNorm branch tests for the GroupNorm pruning function, so BatchNorm scales never enter the score, and it
    takes |w·grad| per weight instead of squaring the unit's sum.
    """
    import torch
    import torch_pruning.pruner.function as fn

    outs, ins, norms = _weight_handlers()
    parts = []
    for dep, idxs in handle:
        layer, prune = dep.target.module, dep.handler
        weight = getattr(layer, "weight", None)
        if weight is None or weight.grad is None or not isinstance(weight, torch.Tensor):
            continue
        idxs = torch.as_tensor(sorted(idxs), dtype=torch.long)
        wg = weight.detach() * weight.grad
        if prune in outs:
            wg = wg.transpose(0, 1) if getattr(layer, "transposed", False) else wg
            parts.append(wg.flatten(1).sum(1)[idxs])
        elif prune in ins:
            local = (wg if getattr(layer, "transposed", False) else wg.transpose(0, 1)).flatten(1).sum(1)
            groups = getattr(layer, "groups", 1)
            if prune is fn.prune_conv_in_channels and groups not in (1, layer.in_channels):
                local = local.repeat(groups)
            parts.append(local[idxs])
        elif prune in norms and wg.dim() == 1:
            parts.append(wg[idxs])
    if not parts:
        return None
    return torch.stack([p.double() for p in parts]).sum(0).cpu().numpy()


def projection(group):
    """The output projection whose input columns a transformer group owns (attention output / MLP down)."""
    from .transformer import output_projection

    return output_projection(group.handle, group.layout, group.kind)


def _in_matrix(module):
    """The projection's weight as [out, in] float64 numpy."""
    from .transformer import oriented

    return oriented(module.weight.detach(), module).double().cpu().numpy()


def _input_stats(groups: list, module, batches: list) -> list:
    """Per group: Σx, Σx², n over every token of the output projection's input columns (one forward pass each)."""
    import torch

    stats = [{"sum": 0.0, "sq": 0.0, "n": 0} for _ in groups]
    hooks = []
    for i, group in enumerate(groups):
        def hook(mod, args, i=i):
            x = args[0].detach().double().reshape(-1, args[0].shape[-1])
            stats[i]["sum"] = stats[i]["sum"] + x.sum(0)
            stats[i]["sq"] = stats[i]["sq"] + (x * x).sum(0)
            stats[i]["n"] += x.shape[0]
        hooks.append(projection(group).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for inputs in batches:
                module(*inputs)
    finally:
        for h in hooks:
            h.remove()
    out = []
    for s in stats:
        mean = s["sum"] / s["n"]
        var = s["sq"] / s["n"] - mean * mean
        out.append({"mean": mean.numpy(), "var": np.maximum(var.numpy(), 0.0), "norm": np.sqrt(s["sq"].numpy())})
    return out


def _columns(group) -> list:
    return next(units for m, side, units in unit_slices(group) if side == "in")


def _wanda_sp(group, stats: dict) -> np.ndarray:
    w = np.abs(_in_matrix(projection(group)))
    per_col = w.sum(0) * stats["norm"]
    return np.array([per_col[idx].sum() for idx in _columns(group)])


def _flap(group, stats: dict) -> np.ndarray:
    """FLAP (An et al. 2024) as its reference code scores it, standardised within the layer.

    Per input column j of the output projection: m_j = Var(X_j)·‖W_:,j‖₂², squared for attention. The metric is
    standardised over the layer's columns ((m − mean) / std, unbiased), which puts attention and MLP structures
    of every layer on one scale; a kv group's score is the mean of its columns, an MLP channel's its column's.
    """
    w = _in_matrix(projection(group))
    per_col = stats["var"] * (w * w).sum(0)
    if group.kind == "heads":
        per_col = per_col ** 2
    sd = float(per_col.std(ddof=1)) if per_col.size > 1 else 0.0
    per_col = (per_col - per_col.mean()) / (sd or 1.0)
    return np.array([per_col[idx].mean() for idx in _columns(group)])


def compensate_bias(group, removed_units: list, input_mean: np.ndarray) -> None:
    """FLAP bias compensation: the removed columns' expected contribution W[:, removed]·E[x] joins the bias."""
    import torch

    if not removed_units:
        return
    cols = sorted(c for u in removed_units for c in _columns(group)[u])
    proj = projection(group)
    w = torch.from_numpy(_in_matrix(proj))
    mean = torch.as_tensor(input_mean[cols], dtype=torch.float64)
    delta = (w[:, cols] @ mean).to(proj.weight.dtype)
    with torch.no_grad():
        if proj.bias is None:
            proj.bias = torch.nn.Parameter(delta.clone())
        else:
            proj.bias.add_(delta)
