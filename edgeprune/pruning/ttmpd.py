"""TT-MPD: prune and fine-tune at test time, on unlabeled samples of the device's own domain (arXiv 2412.07114).

A pretrained model meets a camera it was not trained for (other lighting, blur, noise) and must get faster on
the device without labels. Judging every candidate cut by fine-tuning it (NetAdapt) is slow; here a cut is
judged by two variables that cost a forward pass, and the model is fine-tuned once:

1. The unlabeled samples are split into a probe set P and a fine-tune set F. The teacher is adapted first: its
   BatchNorm statistics are re-estimated on P (on shifted digits that alone took it from 78 % back to 98 %).
   The adapted teacher's logits on F are cached (distillation/cache.py): the pseudo-labels, computed once.
2. Each group is cut alone to a few widths on the table's step (sensitivity.py's machinery: weights zeroed in
   place, BatchNorm re-estimated on P) and two proxies are read (`PROXIES`): by default a feature-side one,
   the relative reconstruction error of the layers that consume the cut channels, and an output-side one, the
   candidate's prediction entropy. docs/ttmpd.md gives the measurements behind that choice.
3. Â = g(proxies) predicts how good a candidate is after fine-tuning. g is linear in the proxies, each weight
   constrained to the side where more damage means less accuracy, and fitted on a few real prune-and-fine-tune
   runs of this model (single cuts spread over the proxies' range, each fine-tuned briefly on the cache and
   scored against the adapted teacher on P, which no run trains on: by default −KL, continuous, because top-1
   agreement on a few dozen samples tied every run and left g flat; FIT_TARGETS). Its fit (R²) and
   leave-one-out Spearman are reported and it is stored in provenance.json, reusable at other budgets.
4. The predicted drop g(dense) − g(cut) of each measured width becomes the group's concave option value
   (sensitivity.concave_value), fed to the existing latency knapsack and measure-and-correct loop
   (engine.prune_model): the saving per unit of predicted accuracy decides which group gives up channels.
5. One fine-tune: KL to the cached pseudo-labels at temperature T, BatchNorm refreshed on F before and after.

The result is an ordinary pruned-model directory (with the TT-MPD record in provenance.json).
"""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass, field

import numpy as np

from edgeprune.errors import BadInputError

from .sensitivity import CandidateScorer, Sensitivity, _logits, single_cuts

# name -> (what it is, damage sign): accuracy after fine-tuning falls as sign · proxy grows
PROXIES = {
    "feature": ("relative reconstruction error of the layers consuming the cut channels", 1.0),
    "entropy": ("mean entropy of the candidate's predictions (nats)", 1.0),
    "agreement": ("top-1 agreement with the adapted teacher", -1.0),
    "kl": ("KL(adapted teacher ‖ candidate), per sample", 1.0),
}
DEFAULT_PROXIES = ("feature", "kl")
# what a fit run is scored by, on P, against the adapted teacher (no labels exist): name -> what it is
FIT_TARGETS = {
    "kl": "−KL(adapted teacher ‖ fit run) per sample: continuous, so every run scores differently",
    "agreement": "top-1 agreement with the adapted teacher: coarse (steps of 1/|P|), often the same for every run",
}
DEFAULT_FIT_TARGET = "kl"


@dataclass
class AdaptOptions:
    """Everything that decides the adapted model (recorded in provenance)."""

    budget: str | None = None
    probe_samples: int = 64  # P: BatchNorm adaptation, proxies, and the fit runs' held-out score
    finetune_samples: int = 256  # F: the cached pseudo-labels, the fit runs' and the final fine-tune
    proxies: tuple = DEFAULT_PROXIES
    fit_runs: int = 6  # real prune-and-fine-tune runs g is fitted on
    fit_epochs: int = 1  # each fit run's fine-tune length
    fit_target: str = DEFAULT_FIT_TARGET  # FIT_TARGETS: what g predicts
    epochs: int = 5  # the final fine-tune
    temperature: float = 4.0
    lr: float = 1e-3
    batch_size: int = 32
    criterion: str = "l2"  # which units of a group go first (the knapsack decides how many)
    sensitivity_points: int = 4  # widths per group at which the proxies are read
    min_keep: float = 0.3
    seed: int = 0
    measure: bool = True
    max_rounds: int = 3
    threads: int | None = None
    precision: str | None = None
    ignore: tuple = ()


# -- the proxies, as formulas on tensors -------------------------------------------------------------------
def reconstruction_error(dense: list, candidate: list) -> float:
    """Σ‖Y_candidate − Y_dense‖² / Σ‖Y_dense‖² over paired feature tensors (0: the features are unchanged)."""
    num = sum(float(((c.float() - d.float()) ** 2).sum()) for d, c in zip(dense, candidate))
    den = sum(float((d.float() ** 2).sum()) for d in dense)
    return num / den if den > 0 else 0.0


def mean_entropy(logits) -> float:
    """Mean Shannon entropy (nats) of softmax(logits) over the last axis."""
    import torch.nn.functional as F

    logp = F.log_softmax(logits.float().reshape(-1, logits.shape[-1]), -1)
    return float(-(logp.exp() * logp).sum(-1).mean())


def agreement(logits, reference) -> float:
    """Share of samples whose top-1 class is the reference's."""
    a = logits.reshape(-1, logits.shape[-1]).argmax(-1)
    b = reference.reshape(-1, reference.shape[-1]).argmax(-1)
    return float((a == b).float().mean())


def mean_kl(logits, reference) -> float:
    """Mean KL(softmax(reference) ‖ softmax(logits)) per sample."""
    import torch.nn.functional as F

    out = F.log_softmax(logits.float().reshape(-1, logits.shape[-1]), -1)
    ref = F.log_softmax(reference.float().reshape(-1, reference.shape[-1]), -1)
    return float((ref.exp() * (ref - out)).sum(-1).mean())


def next_layers(group, module) -> list:
    """Names of the layers whose outputs are a group's next-layer features: the convolutions and linears that
    read its channels (the output projection for heads / MLP channels). [] when none reads them whole."""
    names = {m: n for n, m in module.named_modules()}
    if group.kind == "channels":
        import torch_pruning.pruner.function as fn

        out = {names[dep.target.module] for dep, _ in group.handle
               if dep.handler in (fn.prune_conv_in_channels, fn.prune_linear_in_channels)
               and getattr(dep.target.module, "groups", 1) == 1 and dep.target.module in names}
        return sorted(out)
    from .criteria import projection

    proj = projection(group)
    return [names[proj]] if proj in names else []


class ProxyScorer(CandidateScorer):
    """Every proxy of a candidate at once (CandidateScorer's cut, BatchNorm re-estimated on the probe batches).

    `pristine` is the adapted teacher, its statistics already those of `batches`, so the dense model scores
    feature error 0, agreement 1 and KL 0: every cut is measured against the model it is cut from.
    """

    def __init__(self, pristine, space, scores, batches: list):
        super().__init__(pristine, space, scores, batches)
        groups = self.groups if self.groups is not None else space(pristine)
        self.consumers = [next_layers(g, pristine) for g in groups]
        self._watch: tuple = ()
        self._dense: dict = {}  # watched names -> the pristine model's features per batch
        self.proxy_memo: dict = {}

    def proxies(self, units: list, group: int | None = None) -> dict:
        """{proxy: value} of the model cut to `units`; `group` names the cut whose next layers are watched."""
        watch = tuple(self.consumers[group]) if group is not None else ()
        key = (tuple(int(u) for u in units), watch)
        if key not in self.proxy_memo:
            if watch and watch not in self._dense:
                self._dense = {watch: self._features(self.pristine, watch)[1]}  # one group's features at a time
            self._watch = watch
            self.proxy_memo[key] = self._masked(list(key[0])) if self.masked else self._slimmed(list(key[0]))
        return self.proxy_memo[key]

    def evaluate(self, module) -> dict:
        logits, feats = self._features(module, self._watch)
        if self._watch:
            dense = [t for batch in self._dense[self._watch] for t in batch]
            feature = reconstruction_error(dense, [t for batch in feats for t in batch])
        else:  # nothing reads the group whole (or the dense model): the outputs are the features
            feature = reconstruction_error(self.reference, logits)
        cat, ref = _cat(logits), _cat(self.reference)
        return {"feature": feature, "entropy": mean_entropy(cat), "agreement": agreement(cat, ref),
                "kl": mean_kl(cat, ref)}

    def _features(self, module, watch: tuple) -> tuple:
        """(logits per batch, [per batch: watched outputs]) of `module` in eval mode."""
        import torch

        layers = dict(module.named_modules())
        current: list = []
        hooks = []

        def keep(mod, args, output):
            output = output[0] if isinstance(output, (tuple, list)) else output
            current.append(output.detach().float())

        for name in watch:
            hooks.append(layers[name].register_forward_hook(keep))
        logits, feats = [], []
        module.eval()
        try:
            with torch.no_grad():
                for inputs in self.batches:
                    current.clear()
                    logits.append(_logits(module(*inputs)))
                    feats.append(list(current))
        finally:
            for h in hooks:
                h.remove()
        return logits, feats


@dataclass
class ProxyTable:
    """The proxies of every group cut alone to each probed width, and of the dense (adapted) model."""

    names: list
    widths: list  # per group: probed widths ([] when the group stays whole)
    proxies: list  # per group: one {proxy: value} per probed width
    dense: dict
    wall_s: float = 0.0
    evaluations: int = 0

    def candidates(self) -> list:
        """[(group index, width, proxies)] of every single cut."""
        return [(i, w, p) for i, (ws, ps) in enumerate(zip(self.widths, self.proxies)) for w, p in zip(ws, ps)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def measure_proxies(scorer: ProxyScorer, groups: list, options: dict, points: int, on_progress=None) -> ProxyTable:
    """Cut each group alone to up to `points` of its allowed widths (`options`: group index -> widths)."""
    started = time.time()
    widths, proxies, base, total = single_cuts(groups, options, points, scorer.proxies, on_progress)
    return ProxyTable([g.name for g in groups], widths, proxies, base, time.time() - started, total)


# -- g: predicted fine-tuned accuracy from the proxies -----------------------------------------------------
@dataclass
class AccuracyModel:
    """Â = intercept − Σ_k weight_k · sign_k · proxy_k, every weight ≥ 0 (more damage never predicts more accuracy).

    Â is in the units of `target` (FIT_TARGETS): the fine-tuned candidate's score against the adapted teacher.
    """

    proxies: tuple
    intercept: float
    weights: list
    r2: float | None = None
    loo_spearman: float | None = None
    points: list = field(default_factory=list)  # the fit runs: {"proxies", "accuracy", ...}
    target: str = "agreement"  # what the fit runs were scored by (older provenance files: agreement)

    def predict(self, values: dict) -> float:
        return self.intercept - sum(w * PROXIES[p][1] * float(values[p]) for p, w in zip(self.proxies, self.weights))

    def to_dict(self) -> dict:
        return {"proxies": list(self.proxies), "intercept": self.intercept, "weights": list(self.weights),
                "r2": self.r2, "loo_spearman": self.loo_spearman, "points": self.points, "target": self.target,
                "form": "A = intercept - sum(weight_k * sign_k * proxy_k), weight_k >= 0",
                "signs": {p: PROXIES[p][1] for p in self.proxies}}

    @classmethod
    def from_dict(cls, data: dict) -> AccuracyModel:
        return cls(tuple(data["proxies"]), float(data["intercept"]), [float(w) for w in data["weights"]],
                   data.get("r2"), data.get("loo_spearman"), list(data.get("points", [])),
                   str(data.get("target", "agreement")))


def check_proxies(names) -> tuple:
    names = tuple(names)
    bad = [n for n in names if n not in PROXIES]
    if bad or not names or len(set(names)) != len(names):
        raise BadInputError(f"proxies {', '.join(names) or '(none)'}: each must be one of {', '.join(PROXIES)}, "
                            "without repeats", "e.g. --proxies feature,entropy")
    return names


def check_fit_target(name: str) -> str:
    if name not in FIT_TARGETS:
        raise BadInputError(f"fit target {name}: must be one of {', '.join(FIT_TARGETS)}", "e.g. --fit-target kl")
    return name


def fit_score(target: str, logits, reference) -> float:
    """A fit run's score on P against the adapted teacher's logits there; higher is better."""
    return agreement(logits, reference) if target == "agreement" else -mean_kl(logits, reference)


def _solve(points: list, y: np.ndarray, names: tuple) -> tuple:
    from scipy.optimize import lsq_linear

    design = np.column_stack([np.ones(len(points))] +
                             [[-PROXIES[n][1] * float(p[n]) for p in points] for n in names])
    lower = [-np.inf] + [0.0] * len(names)
    fit = lsq_linear(design, y, bounds=(lower, [np.inf] * (len(names) + 1)), method="bvls")
    return float(fit.x[0]), [float(w) if w > 1e-12 else 0.0 for w in fit.x[1:]]  # round-off is not a weight


def fit_accuracy_model(points: list, accuracies: list, names=DEFAULT_PROXIES,
                       records: list | None = None, target: str = "agreement") -> AccuracyModel:
    """Least squares with sign-constrained weights on (proxies, accuracy) points; R² and leave-one-out Spearman."""
    from scipy.stats import spearmanr

    names = check_proxies(names)
    y = np.asarray(accuracies, dtype=np.float64)
    if len(points) < 2:
        raise ValueError("g needs at least two fit runs")
    intercept, weights = _solve(points, y, names)
    model = AccuracyModel(names, intercept, weights, points=records if records is not None else
                          [{"proxies": {n: float(p[n]) for n in names}, "accuracy": float(a)}
                           for p, a in zip(points, y)], target=target)
    pred = np.array([model.predict(p) for p in points])
    total = float(((y - y.mean()) ** 2).sum())
    model.r2 = 1.0 - float(((y - pred) ** 2).sum()) / total if total > 0 else None
    if len(points) >= 4:
        loo = []
        for j in range(len(points)):
            rest = [k for k in range(len(points)) if k != j]
            b, w = _solve([points[k] for k in rest], y[rest], names)
            loo.append(AccuracyModel(names, b, w).predict(points[j]))
        rho = spearmanr(loo, y).statistic if np.ptp(loo) > 0 and np.ptp(y) > 0 else float("nan")
        model.loo_spearman = None if np.isnan(rho) else float(rho)
    return model


def fit_candidates(table: ProxyTable, k: int, names: tuple) -> list:
    """`k` single cuts spread evenly over the combined damage rank of the proxies (light cuts to the deepest)."""
    cands = table.candidates()
    if not cands:
        return []
    ranks = np.zeros(len(cands))
    for n in names:
        damage = np.array([PROXIES[n][1] * c[2][n] for c in cands])
        ranks += damage.argsort().argsort()
    order = np.argsort(ranks, kind="stable")
    picks = sorted({int(order[round(j * (len(cands) - 1) / max(1, k - 1))]) for j in range(min(k, len(cands)))})
    return [cands[j] for j in picks]


def flat_fallback(model: AccuracyModel, table: ProxyTable) -> AccuracyModel:
    """g with equal weights on the proxies standardised over the measured cuts, for a g whose fit is flat.

    When every fit run scores the same (a small P makes top-1 agreement coarse) every weight fits to 0 and each
    cut would look free; the knapsack then only needs the cuts' relative damage, which the proxies still rank.
    """
    cands = [c[2] for c in table.candidates()]
    weights = []
    for name in model.proxies:
        spread = float(np.std([c[name] for c in cands])) if cands else 0.0
        weights.append(1.0 / (len(model.proxies) * spread) if spread > 0 else 0.0)
    return dataclasses.replace(model, weights=weights)


def option_values(model: AccuracyModel, table: ProxyTable, groups: list) -> tuple:
    """(knapsack value per group, Sensitivity of predicted drops): the drop g(dense) − g(cut), made concave."""
    base = model.predict(table.dense)
    drops = [[max(0.0, base - model.predict(p)) for p in ps] for ps in table.proxies]
    sens = Sensitivity(table.names, [list(w) for w in table.widths], drops, 0.0, table.wall_s,
                       evaluations=table.evaluations)
    return sens.values(groups), sens


# -- the samples ------------------------------------------------------------------------------------------
def split_unlabeled(samples, probe: int, finetune: int, seed: int) -> tuple:
    """(P, F) drawn without overlap from a seeded permutation; labels, if any, are dropped (never used)."""
    import torch

    from edgeprune.data import Samples

    need = probe + finetune
    if len(samples) == 0:
        raise BadInputError(f"data {samples.source} holds no samples; TT-MPD adapts to the device's own unlabeled "
                            "samples", f"give at least {need} samples from the device (.npz/.pt/.safetensors "
                            "'inputs', an image folder), or 'digits-shifted' to try it")
    if len(samples) < need:
        raise BadInputError(f"data {samples.source} holds {len(samples)} samples, fewer than the probe set and "
                            f"the fine-tune set need ({probe} + {finetune} = {need})",
                            f"give at least {need} samples, or lower --probe-samples / --finetune-samples")
    order = torch.randperm(len(samples), generator=torch.Generator().manual_seed(seed))
    pick = lambda idx, part: Samples(samples.inputs[idx].contiguous(), None,  # noqa: E731
                                     f"{samples.source}[{part}]", samples.preprocessing)
    return pick(order[:probe], "probe"), pick(order[probe:need], "finetune")


def _batches(samples, size: int) -> list:
    return [(samples.inputs[s:s + size],) for s in range(0, len(samples), size)]


# -- the whole method -------------------------------------------------------------------------------------
@dataclass
class Adapted:
    pruned: object  # engine.PruneResult; its module is the fine-tuned student
    model: AccuracyModel
    proxies: ProxyTable
    fit_runs: list
    distill: object  # distillation.train.DistillResult
    teacher_cache: object
    record: dict  # what provenance.json keeps under "ttmpd"
    notes: list = field(default_factory=list)


def adapt_model(loaded, table, samples, options: AdaptOptions, *, session=None, measurements=None, reporter=None,
                cache_dir=None, reuse: AccuracyModel | None = None, fingerprint_advisory: bool = False) -> Adapted:
    """TT-MPD on `loaded` (a vision LoadedModel) with unlabeled `samples`; `reuse` skips g's fit runs."""
    from edgeprune.distillation.cache import load_or_build
    from edgeprune.distillation.train import DistillOptions, train_student
    from edgeprune.latency.build import Reporter
    from edgeprune.models import state_dict_sha256

    from .batchnorm import recalibrate_batchnorm
    from .engine import PruneOptions, allowed_widths, prune_model, slim_copy
    from .sensitivity import outputs

    reporter = reporter or Reporter()
    names = check_proxies(reuse.proxies if reuse is not None else options.proxies)
    check_fit_target(options.fit_target)
    if loaded.family != "vision":
        raise BadInputError(f"TT-MPD adapts image classifiers; {loaded.spec} is a {loaded.family} model",
                            "use edgeprune prune --calib and edgeprune distill for language models")
    probe, finetune = split_unlabeled(samples, options.probe_samples, options.finetune_samples, options.seed)
    probe_batches = _batches(probe, options.batch_size)

    reporter.stage("adapt_teacher", None)
    teacher = copy.deepcopy(loaded.module).eval()
    bn_layers = recalibrate_batchnorm(teacher, probe_batches)
    reporter.done("adapt_teacher")
    notes = [f"teacher adapted: BatchNorm statistics of {bn_layers} layers re-estimated on {len(probe)} probe "
             "samples" if bn_layers else "the teacher has no BatchNorm: it is used as it is (no adaptation step)"]
    state: dict = {}

    def pseudo_labels():
        """The adapted teacher's logits on F, cached once (built only after the budget was found reachable)."""
        if "cache" not in state:
            reporter.stage("teacher", None)
            state["cache"] = load_or_build(cache_dir, teacher, state_dict_sha256(teacher), finetune,
                                           temperature=options.temperature, batch_size=options.batch_size * 2)
            reporter.done("teacher")
        return state["cache"]

    def values_fn(pristine, space, groups, scores, step, prune_notes):
        scorer = ProxyScorer(pristine, space, scores, probe_batches)
        choices = allowed_widths(groups, scores.normalized, step, options.min_keep)
        bar = reporter.stage("proxies", None)
        table_ = measure_proxies(scorer, groups, choices, options.sensitivity_points,
                                 lambda done, total: bar({"progress": done, "total": total}))
        reporter.done("proxies")
        runs = []
        if reuse is None:
            picks = fit_candidates(table_, options.fit_runs, names)
            bar = reporter.stage("fit_runs", len(picks))
            dense = [g.units for g in groups]
            for n, (i, w, prox) in enumerate(picks):
                units = list(dense)
                units[i] = w
                started = time.time()
                candidate, _ = slim_copy(pristine, space, units, scores)
                train_student(candidate, finetune, DistillOptions(epochs=options.fit_epochs, lr=options.lr,
                                                                  batch_size=options.batch_size,
                                                                  temperature=options.temperature,
                                                                  seed=options.seed), cache=pseudo_labels(),
                              reporter=Reporter())
                logits = _cat(outputs(candidate, probe_batches))
                runs.append({"group": groups[i].name, "width": w, "dense_width": groups[i].units,
                             "proxies": {k: float(v) for k, v in prox.items()},
                             "score": fit_score(options.fit_target, logits, _cat(scorer.reference)),
                             "agreement": agreement(logits, _cat(scorer.reference)),
                             "wall_s": time.time() - started})
                bar({"progress": n + 1})
            reporter.done("fit_runs")
            model = fit_accuracy_model([r["proxies"] for r in runs], [r["score"] for r in runs], names, runs,
                                       options.fit_target)
        else:
            model = reuse
        used = model
        if not any(w > 0 for w in model.weights):
            used = flat_fallback(model, table_)
            prune_notes.append("warning: g is flat (no fit run scored differently enough to weigh a proxy): option "
                               "values use the proxies standardised with equal weights; give more --probe-samples "
                               "or --fit-runs")
        values, drops = option_values(used, table_, groups)
        state.update(model=model, table=table_, runs=runs, drops=drops, fallback=used is not model)
        fit = (f"R² {model.r2:.2f}" if model.r2 is not None else "R² n/a") + (
            f", leave-one-out Spearman {model.loo_spearman:.2f}" if model.loo_spearman is not None else "")
        prune_notes.append(f"option values: TT-MPD predicted fine-tuned accuracy g({', '.join(names)}) of each of "
                           f"{len(choices)} groups cut alone, {table_.evaluations} cuts ({table_.wall_s:.1f} s); g "
                           + (f"fitted on {len(runs)} prune-and-fine-tune runs ({fit})" if runs else
                              f"reused ({fit})"))
        return values

    prune_options = PruneOptions(criterion=options.criterion, budget=options.budget, min_keep=options.min_keep,
                                 seed=options.seed, measure=options.measure, max_rounds=options.max_rounds,
                                 threads=options.threads, precision=options.precision, search=0,
                                 sensitivity_points=options.sensitivity_points, ignore=tuple(options.ignore),
                                 bn_recalibrate=False)
    adapted_loaded = dataclasses.replace(loaded, module=teacher)
    pruned = prune_model(adapted_loaded, table, prune_options, session, measurements, reporter,
                         fingerprint_advisory=fingerprint_advisory, values_fn=values_fn)
    distilled = train_student(pruned.module, finetune, DistillOptions(epochs=options.epochs, lr=options.lr,
                                                                       batch_size=options.batch_size,
                                                                       temperature=options.temperature,
                                                                       seed=options.seed),
                              cache=pseudo_labels(), reporter=reporter)
    pruned.module = distilled.student
    model, runs = state["model"], state["runs"]
    record = {"method": "tt-mpd", "options": dataclasses.asdict(options), "g": model.to_dict(),
              "g_reused": reuse is not None, "samples": {"source": samples.source, "probe": len(probe),
                                                         "finetune": len(finetune)},
              "teacher_bn_layers": bn_layers, "teacher_sha256": state["cache"].meta["teacher_sha256"],
              "g_flat_fallback": state["fallback"], "proxies": state["table"].to_dict(),
              "predicted_drop": state["drops"].losses,
              "fit_runs_s": sum(r["wall_s"] for r in runs)}
    return Adapted(pruned, model, state["table"], runs, distilled, state["cache"], record, notes + pruned.notes)


def _cat(tensors: list):
    import torch

    return torch.cat(tensors)
