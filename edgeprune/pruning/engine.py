"""`edgeprune prune` as a library call: table + model -> groups -> scores -> solve -> slim -> measure -> save.

The table is checked against the model first (same layers and widths, same LM regime), and, when a device is
reachable, against the device (same runtime, precision and threads). The solved model is exported and timed
against the dense model interleaved on the device; if it misses the budget the internal budget tightens by the
miss and the solve repeats (bounded rounds), so the saved model is the one that was measured.
"""

from __future__ import annotations

import copy
import math
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeprune import budget as budget_module
from edgeprune.budget import BUDGET_TOLERANCE, REPORTED_CONFIDENCE, Budget, meets_budget, parse_budget, tolerance_text  # noqa: F401
from edgeprune.errors import BadInputError

FINGERPRINT_KEYS = ("device", "device_model", "machine", "cpu_count", "runtime", "runtime_version", "provider",
                    "precision", "threads")


@dataclass
class PruneOptions:
    """Everything that decides the pruned model (recorded in provenance)."""

    criterion: str = "l2"
    budget: str | None = None
    mode: str = "latency"  # latency (knapsack on the table) | uniform | global
    ratio: float | None = None  # uniform / global: fraction of units removed
    macs: float | None = None  # uniform / global: fraction of dense MACs to keep
    round_to: int | None = None
    min_keep: float = 0.3  # measured: 0.1 let the knapsack strip residual streams (docs/pruning.md)
    calib: str | None = None
    calib_samples: int = 64
    batch_size: int = 8
    seed: int = 0
    measure: bool = True
    max_rounds: int = 3
    threads: int | None = None  # the target's threads / precision: must be the table's (None: the table's)
    precision: str | None = None
    bn_recalibrate: bool = True  # re-estimate BatchNorm statistics on the --calib inputs after pruning
    search: int = 24  # whole candidates scored by calibration loss after the knapsack (0: knapsack only)
    sensitivity_points: int = 4  # widths per group at which cutting that group alone is measured
    ignore: tuple = ()  # layers kept whole (--ignore LAYER): every group that would cut them is left out
    policy: str | None = None  # PruneNet's policy file (--policy): reused when it exists, else trained and saved
    confidence: float | None = None  # certify the budget only when this interval's pessimistic end meets it
    measure_rounds: int = 3  # interleaved rounds of the dense and the pruned model (the interval's sample)


LOOSEN_BELOW = 0.10  # a measured result this much faster than its budget is re-solved looser (beyond the noise)


@dataclass
class PruneResult:
    module: object
    widths: dict
    dense_predicted_ms: float
    predicted_ms: float
    budget_ms: float | None
    macs: int
    dense_macs: int
    measured: dict | None
    rounds: list
    notes: list = field(default_factory=list)
    provenance: dict = field(default_factory=dict)
    bn_layers: int = 0  # BatchNorm layers whose statistics were re-estimated on the calibration inputs

    @property
    def final_round(self) -> dict:
        """The round whose widths were kept: the last, unless an earlier one met the budget closer to it."""
        return next((r for r in self.rounds if r.get("chosen")), self.rounds[-1] if self.rounds else {})


def check_table(table, dense_blocks: list, loaded) -> None:
    """Refuse a table measured for another model: its layers must be this model's, at these widths or narrower.

    Narrower is a pruned copy of the table's model (pruned again to a tighter budget, or step by step while
    distilling): the table's cells span every width below the profiled one, so it predicts the copy too."""
    have = {b.name: (b.kind, b.c_in, b.c_out) for b in dense_blocks}
    want = {n: (layer["kind"], layer["c_in"], layer["c_out"]) for n, layer in table.layers.items()}
    narrower = have.keys() == want.keys() and all(
        have[n][0] == want[n][0] and have[n][1] <= want[n][1] and have[n][2] <= want[n][2] for n in have)
    if not narrower:
        diff = sorted(set(have.items()) ^ set(want.items()))
        example = diff[0][0] if diff else "?"
        raise BadInputError(
            f"the table was profiled for {table.model.get('spec')} "
            f"(graph {str(table.model.get('graph_sha256'))[:12]}), not for {loaded.spec}: {len(diff)} layer(s) "
            f"differ, e.g. {example}",
            f"profile this model: edgeprune profile --model {loaded.spec} --out table.json")
    if loaded.regime != table.model.get("regime") or loaded.seq_len != table.model.get("seq_len"):
        raise BadInputError(f"the table is for regime {table.model.get('regime')} at seq_len "
                            f"{table.model.get('seq_len')}, the model is loaded as {loaded.regime} at {loaded.seq_len}",
                            "pass the table's --regime and --seq-len, or profile again")


def check_fingerprint(table, fp: dict) -> None:
    """Refuse to judge a model on a device/runtime/precision/thread count other than the table's."""
    diff = [k for k in FINGERPRINT_KEYS if table.fingerprint.get(k) != fp.get(k)]
    if diff:
        shown = "; ".join(f"{k}: table {table.fingerprint.get(k)!r} vs device {fp.get(k)!r}" for k in diff)
        raise BadInputError(f"the table was measured under another device fingerprint ({shown})",
                            "profile on this device with these settings, or measure on the table's device")


def calibration_batches(loaded, options: PruneOptions) -> tuple:
    """(list of input tuples, loss function) for criteria that need data; ([], None) without --calib."""
    if not options.calib:
        return [], None
    import torch.nn.functional as F

    from edgeprune.data import load_samples

    samples = load_samples(options.calib, loaded.input_shape, loaded.family,
                           tokenizer_dir=loaded.spec if loaded.huggingface else None, seq_len=loaded.seq_len)
    batches, labels = [], []
    for x, y in samples.batches(options.batch_size, options.calib_samples):
        batches.append((x,))
        labels.append(y)
    by_id = {id(b[0]): y for b, y in zip(batches, labels)}

    if loaded.family == "language":
        def loss_fn(module, inputs):
            ids = inputs[0]
            return module(input_ids=ids, labels=ids, use_cache=False).loss
    else:
        def loss_fn(module, inputs):
            out = module(*inputs)
            out = getattr(out, "logits", out)
            if out.dim() > 2:
                out = out.flatten(1)
            y = by_id.get(id(inputs[0]))
            if y is None:  # unlabeled: the model's own predictions are the targets (test-time setting)
                y = out.detach().argmax(-1)
            return F.cross_entropy(out, y)
    return batches, loss_fn


def solve(options: PruneOptions, cost, widths, groups: list, scores: list, budget_ms: float | None, step: int,
          dense_macs: int, values: list | None = None) -> list:
    """Unit counts per group for the chosen mode (`values`: the latency knapsack's option values)."""
    from . import solver

    if options.mode == "latency":
        if budget_ms is None:
            raise BadInputError("latency mode needs --budget", "write e.g. --budget 2x or --budget 4.2ms")
        return solver.solve_latency(cost, groups, values if values is not None else scores, budget_ms, step,
                                    options.min_keep).units
    make = solver.uniform_units if options.mode == "uniform" else solver.global_units
    if options.ratio is not None:
        return make(groups, scores, options.ratio, options.round_to)
    if options.macs is not None:
        ratio = solver.ratio_for(lambda r: widths.macs(make(groups, scores, r, options.round_to)) / dense_macs,
                                 options.macs, what=f"{options.mode} pruning's MACs share")
    elif budget_ms is not None:
        ratio = solver.ratio_for(lambda r: cost.predict(make(groups, scores, r, options.round_to)), budget_ms,
                                 what=f"{options.mode} pruning's predicted latency (ms)")
    else:
        raise BadInputError(f"{options.mode} mode needs --ratio, --macs or --budget", "e.g. --ratio 0.3")
    return make(groups, scores, ratio, options.round_to)


def seed_candidates(cost, groups: list, scores: list, target_ms: float, step: int, knapsack: list) -> dict:
    """The search's starting pool: the knapsack's widths, and uniform / global cuts at the same predicted latency."""
    from . import solver

    seeds = {"knapsack": knapsack}
    for name, make in (("uniform", solver.uniform_units), ("global", solver.global_units)):
        try:
            ratio = solver.ratio_for(lambda r, make=make: cost.predict(make(groups, scores, r, step)), target_ms)
        except solver.UnreachableBudgetError:
            continue  # this baseline cannot reach the target; the search goes on without it
        seeds[name] = make(groups, scores, ratio, step)
    return seeds


def check_options(spec: str, table, options: PruneOptions) -> None:
    """What can be refused before the model loads: the table a budget needs, its settings, criterion, budget."""
    from .criteria import get_criterion

    if table is None and (options.mode == "latency" or options.budget):
        raise BadInputError("a latency budget needs a latency table",
                            f"profile first: edgeprune profile --model {spec} --out table.json, then pass --table "
                            "table.json")
    for name in ("threads", "precision"):
        want, have = getattr(options, name), table.runtime.get(name) if table is not None else None
        if table is not None and want is not None and want != have:
            raise BadInputError(f"the table was measured at {name} {have}, the target asks for {want}",
                                f"profile again with --{name} {want}; a model is never judged on another {name} "
                                "setting")
    crit = get_criterion(options.criterion)
    if crit.needs_data and not options.calib:
        raise BadInputError(f"criterion {crit.name} needs calibration data", "pass --calib PATH (or use l1 / l2)")
    parse_budget(options.budget)


def check_request(loaded, table, options: PruneOptions) -> None:
    """Everything about the request that can be refused before any work: model, table, settings, criterion."""
    if not loaded.slimmable and getattr(loaded, "refusal", None):  # a Hugging Face family: the reason, by name
        raise BadInputError(*loaded.refusal)
    if not loaded.slimmable:
        raise BadInputError(f"{loaded.spec} cannot be slimmed (ONNX, TorchScript or an unsupported family)",
                            "give the PyTorch model: torchvision:NAME, timm:NAME or a Hugging Face directory "
                            "(a family docs/llm.md lists)")
    check_options(loaded.spec, table, options)
    if table is not None and loaded.family != table.model.get("family"):
        raise BadInputError(f"the table was profiled for {table.model.get('spec')} "
                            f"({table.model.get('family')}), not for {loaded.spec} ({loaded.family})",
                            f"profile this model: edgeprune profile --model {loaded.spec} --out table.json")


def best_units(raw, n: int, keep: int) -> list:
    """The `keep` highest-scoring of `n` units, ascending (the first `keep` when the group has no scores)."""
    order = sorted(range(n), key=lambda u: -float(raw[u])) if raw is not None else list(range(n))
    return sorted(order[:keep])


def slim_copy(pristine, space, units: list, scores) -> tuple:
    """(slim deep copy of `pristine`, {group: kept units}): each group keeps its best-scoring units."""
    from .criteria import compensate_bias
    from .space import apply_keep

    candidate = copy.deepcopy(pristine)
    groups = space(candidate)
    keep = {}
    for i, g in enumerate(groups):
        keep[i] = best_units(scores.raw[i], g.units, units[i])
        if scores.input_mean and units[i] < g.units:  # FLAP: removed columns' mean input joins the bias
            compensate_bias(g, [u for u in range(g.units) if u not in set(keep[i])], scores.input_mean[i])
    return candidate, apply_keep(groups, keep, candidate)


def prune_model(loaded, table, options: PruneOptions, session=None, cache=None, reporter=None,
                fingerprint_advisory: bool = False, values_fn=None) -> PruneResult:
    """Prune `loaded` (a LoadedModel) against `table`; measure on `session` (a DeviceSession) when given.

    The table's fingerprint is checked against `session` whenever one is given, measured or not; with
    `fingerprint_advisory` (no measurement, and no device named by the user) a mismatch is a warning note.
    Without a table only the baselines' ratio / MACs modes run (nothing is predicted or measured).
    `values_fn(pristine, space, groups, scores, step, notes)` replaces the calibration-loss option values
    (TT-MPD's predicted fine-tuned accuracy, pruning/ttmpd.py); the whole-candidate search is then skipped.
    """
    from edgeprune.latency.build import Reporter

    from .criteria import score_groups
    from .solver import CostModel, UnreachableBudgetError, fastest, fastest_units
    from .space import build_space
    from .widths import probe_width_model

    reporter = reporter or Reporter()
    check_request(loaded, table, options)
    budget = parse_budget(options.budget)
    module = loaded.module
    pristine = copy.deepcopy(module)
    notes = []
    if session is not None and table is not None:  # measured or not, the table must be this device's
        try:
            check_fingerprint(table, _fingerprint(session, table))
        except BadInputError as err:
            if options.measure or not fingerprint_advisory:
                raise
            notes.append(f"warning: {err.message}; the prediction holds for the table's device, not this one")

    def space(mod):
        wrapped = loaded.export_module(mod)
        return build_space(wrapped, loaded.example_inputs(wrapped), ignore=tuple(options.ignore))

    cost = widths = None
    if table is not None or options.macs is not None:
        reporter.stage("structure", None)
        widths = probe_width_model(loaded, module, loaded.example_inputs(), space, head_dim=loaded.head_dim)
        reporter.done("structure")
    if table is not None:
        check_table(table, [r.block for r in widths.rules], loaded)
        cost = CostModel(table, widths)
    groups = space(module)
    if options.mode == "uniform" and options.ratio is not None:  # before any scoring: a ratio that empties a group
        from .transformer import check_ratio

        check_ratio(groups, options.ratio)
    notes += getattr(groups, "notes", [])  # groups kept whole, and why (space.Space)
    batches, loss_fn = calibration_batches(loaded, options)
    reporter.stage("scores", None)
    scores = score_groups(options.criterion, groups, module, batches, loss_fn, options.seed, policy=options.policy,
                          ratio=options.ratio)
    reporter.done("scores")
    dense_units = [g.units for g in groups]
    dense_pred = cost.predict(dense_units) if cost else None
    dense_macs = widths.macs(dense_units) if widths else None
    budget_ms = budget.ms(dense_pred) if budget else None
    step = table.step if table is not None else 1
    if budget_ms is not None:
        floor = fastest(cost, groups, scores.normalized, step, options.min_keep)
        if floor > budget_ms:
            raise UnreachableBudgetError(
                f"budget {budget} ({budget_ms:.3g} ms) is below the fastest reachable latency {floor:.3g} ms "
                f"(dense {dense_pred:.3g} ms, every group at {options.min_keep:.0%})",
                f"ask for at least {dense_pred / floor:.2f}x / {floor:.3g} ms, or lower --min-keep")
    measuring = session is not None and options.measure and budget_ms is not None
    values = scorer = None
    if options.mode == "latency" and budget_ms is not None and values_fn is not None:
        values = values_fn(pristine, space, groups, scores, step, notes)
    elif options.mode == "latency" and budget_ms is not None:
        values, scorer = option_values(loaded, pristine, space, groups, scores, batches, options, step, cache,
                                       reporter, notes)
    target_ms, rounds, measured, searched = budget_ms, [], None, None
    chosen = None  # (round index, candidate, kept, measured) of the met round closest to the budget
    met_target = missed_target = None  # the loosest internal budget that met, the tightest that missed
    loosened = False  # the last correction raised the internal budget
    for round_index in range(options.max_rounds if measuring else 1):
        try:
            units = solve(options, cost, widths, groups, scores.normalized, target_ms, step, dense_macs, values)
            if scorer is not None and options.search > 0:
                searched = search_widths(cost, groups, scores, values, scorer, target_ms, step, units, options,
                                         reporter)
                units = searched.units
        except UnreachableBudgetError:
            if round_index == 0:
                raise
            # a tightened budget the knapsack cannot reach: the fastest widths (predicted at `floor`) are the last
            # thing to try
            notes.append(f"round {round_index + 1}: {target_ms:.3g} ms is unreachable; trying the fastest widths")
            units, target_ms = fastest_units(groups, scores.normalized, step, options.min_keep), floor
        if loosened and any(r["units"] == units for r in rounds):
            # the loosened budget solved to widths already measured: measuring them again would only repeat
            notes.append(f"round {round_index + 1}: the internal budget {target_ms:.3g} ms solves to round "
                         f"{next(i for i, r in enumerate(rounds) if r['units'] == units) + 1}'s widths; stopping")
            break
        candidate, kept = slim_copy(pristine, space, units, scores)
        record = {"round": round_index, "target_ms": target_ms, "units": units,
                  "predicted_ms": cost.predict(units) if cost else None,
                  "macs": widths.macs(units) if widths else None}
        if searched is not None:
            record["search"] = {"winner": searched.winner, "calib_loss": searched.loss,
                                "evaluations": searched.evaluations, "wall_s": searched.wall_s,
                                "seeds": {k: None if v is None else {"calib_loss": v["loss"],
                                                                     "predicted_ms": v["predicted_ms"]}
                                          for k, v in searched.seeds.items()}}
        rounds.append(record)
        if not measuring:
            break
        measured = measure_pair(loaded, pristine, candidate, table, session, cache, reporter,
                                options.measure_rounds, options.confidence or REPORTED_CONFIDENCE)
        limit = budget.ms(measured["dense_ms"]) if budget.kind == "speedup" else budget_ms
        measured["budget_ms"] = limit
        measured["judged_ms"] = (budget_module.certified_ms(measured, budget) if options.confidence
                                 else measured["pruned_ms"])
        record["measured"] = measured
        judged = measured["judged_ms"]
        met = meets_budget(judged, limit)
        if met:
            met_target = max(met_target or 0.0, target_ms)
            if chosen is None or judged > chosen[3]["judged_ms"]:
                chosen = (round_index, candidate, kept, measured)
            if judged >= limit * (1 - LOOSEN_BELOW):
                break
        else:
            missed_target = min(missed_target or float("inf"), target_ms)
        if round_index + 1 >= options.max_rounds:
            break
        what = (f"the {options.confidence:.0%} interval's high end {judged:.3g} ms" if options.confidence
                else f"measured {measured['pruned_ms']:.3g} ms")
        step_to = target_ms * limit / judged  # the table's error on this candidate, assumed to hold near it
        if met:
            # faster than asked by more than the noise: the table over-predicted and accuracy was given away
            if target_ms >= dense_pred * (1 - 1e-9):
                break
            # half the proportional step (in log): one optimistic reading must not send the solve to the dense model
            step_to = min(math.sqrt(target_ms * step_to), dense_pred)
            target_ms = step_to if missed_target is None or step_to < missed_target \
                else math.sqrt(target_ms * missed_target)  # never back to a budget already seen to miss
            loosened = True
            notes.append(f"round {round_index + 1}: {what} is {1 - judged / limit:.0%} under {limit:.3g} ms; "
                         f"loosening the internal budget to {target_ms:.3g} ms to keep more of the model")
        else:
            if target_ms <= floor * (1 + 1e-9):
                notes.append(f"round {round_index + 1}: measured {measured['pruned_ms']:.3g} ms misses "
                             f"{limit:.3g} ms and the solve is already at the fastest reachable widths")
                break
            loosened = False
            target_ms = max(step_to, floor) if met_target is None or step_to > met_target \
                else math.sqrt(target_ms * met_target)  # tightening never asks the impossible
            notes.append(f"round {round_index + 1}: {what} misses {limit:.3g} ms; "
                         f"tightening the internal budget to {target_ms:.3g} ms")
    if chosen is not None and chosen[0] != len(rounds) - 1:
        index, candidate, kept, measured = chosen
        notes.append(f"kept round {index + 1}'s widths: of the rounds that met the budget, the slowest measured "
                     f"({measured['judged_ms']:.3g} ms against {measured['budget_ms']:.3g} ms)")
    if chosen is not None:
        rounds[chosen[0]]["chosen"] = True
    if budget_ms is not None and not measuring and options.measure:
        notes.append("not measured on the device (no device given): the result rests on the table's prediction")
    within = table.fidelity.get("within_10") if table is not None else None
    if within is not None and within < 0.8 and measured is None:
        notes.append(f"low-fidelity table ({table.fidelity['within_10']:.0%} within ±10 %): measure the result "
                     "(--device) before trusting the prediction")
    if measured is not None and not meets_budget(measured["judged_ms"], measured["budget_ms"]):
        what = (f"the {options.confidence:.0%} interval's high end {measured['judged_ms']:.3g} ms"
                if options.confidence else f"the measured {measured['pruned_ms']:.3g} ms")
        notes.append(f"after {len(rounds)} rounds {what} still misses the budget {measured['budget_ms']:.3g} ms "
                     f"({tolerance_text()})")
    bn_layers = 0
    if options.bn_recalibrate and batches:  # statistics only: the measured latency still holds
        from .batchnorm import recalibrate_batchnorm

        bn_layers = recalibrate_batchnorm(candidate, batches)
        if bn_layers:
            notes.append(f"BatchNorm statistics re-estimated on {sum(len(b[0]) for b in batches)} calibration "
                         f"samples ({bn_layers} layers)")
    final = rounds[chosen[0]] if chosen is not None else rounds[-1]
    return PruneResult(candidate, kept, dense_pred, final["predicted_ms"], budget_ms, final["macs"], dense_macs,
                       measured, rounds, notes, bn_layers=bn_layers)


def allowed_widths(groups: list, values: list, step: int, min_keep: float) -> dict:
    """Group index -> the widths the knapsack may give it, for every group that can be cut (value not None)."""
    from .solver import candidate_units

    return {i: candidate_units(g, step, min_keep) for i, g in enumerate(groups)
            if values[i] is not None and g.units > 1}


def option_values(loaded, pristine, space, groups: list, scores, batches: list, options: PruneOptions, step: int,
                  cache, reporter, notes: list) -> tuple:
    """(value per group for the knapsack, CandidateScorer or None), and a note saying where the values came from.

    With calibration samples: each group's measured loss when cut alone (sensitivity.py), cached under the
    model's weights, criterion, samples and widths, so solving again at another budget costs nothing.
    Without: the criterion's scores normalised per group (data-free, and weaker: docs/pruning.md).
    """
    from .sensitivity import CandidateScorer, Sensitivity, measure_sensitivity, sensitivity_key

    if not batches:
        notes.append("no --calib: option values are the criterion's scores normalised per group (data-free; "
                     "calibration samples let edgeprune measure what each cut costs, docs/pruning.md)")
        return scores.normalized, None
    choices = allowed_widths(groups, scores.normalized, step, options.min_keep)
    scorer = CandidateScorer(pristine, space, scores, batches)
    key = sensitivity_key(loaded.source_sha256, options.criterion, batches, choices, options.sensitivity_points,
                          options.seed)
    hit = cache.get_many("sensitivity", "sensitivity", [key]) if cache is not None else {}
    if key in hit:
        sens = Sensitivity.from_dict(hit[key])
        how = "cached"
    else:
        bar = reporter.stage("sensitivity", None)
        sens = measure_sensitivity(scorer, groups, choices, options.sensitivity_points,
                                   lambda done, total: bar({"progress": done, "total": total}))
        reporter.done("sensitivity")
        if cache is not None:
            cache.put("sensitivity", "sensitivity", key, sens.to_dict())
        how = f"{sens.wall_s:.1f} s"
    notes.append(f"option values: calibration loss (KL to the dense model, BatchNorm re-estimated) of each of "
                 f"{len(choices)} groups cut alone, {sens.evaluations} cuts ({how})")
    return sens.values(groups), scorer


def search_widths(cost, groups: list, scores, values: list, scorer, target_ms: float, step: int, knapsack: list,
                  options: PruneOptions, reporter):
    """Search whole candidates from the knapsack, uniform and global seeds (search.py)."""
    from .search import search

    choices = allowed_widths(groups, values, step, options.min_keep)
    seeds = seed_candidates(cost, groups, scores.normalized, target_ms, step, knapsack)
    bar = reporter.stage("search", options.search)
    try:
        return search(cost, groups, choices, values, target_ms, scorer, seeds, options.search, options.seed,
                      lambda done, total: bar({"progress": done, "total": total}))
    finally:
        reporter.done("search")


def _fingerprint(session, table) -> dict:
    from edgeprune.latency.build import fingerprint, runtime_version

    runtime = dict(table.runtime)
    runtime["version"] = runtime_version(session.facts, runtime["backend"])
    return fingerprint(session.spec, session.facts, runtime)




def measure_pair(loaded, dense, pruned, table, session, cache, reporter, rounds: int = 3,
                 confidence: float = REPORTED_CONFIDENCE) -> dict:
    """Dense and pruned exported and timed interleaved on the device, in the table's model estimator, with the
    speedup's interval over the interleaved rounds (budget.interval)."""
    from edgeprune.budget import interval

    got = measure_modules(loaded, {"dense": dense, "pruned": pruned}, table, session, cache, reporter, rounds)
    dense_ms, pruned_ms = got["dense"]["ms"], got["pruned"]["ms"]
    return {"dense_ms": dense_ms, "pruned_ms": pruned_ms, "speedup": dense_ms / pruned_ms,
            "dense_rounds": got["dense"]["rounds"], "pruned_rounds": got["pruned"]["rounds"],
            "interval": interval(dense_ms, pruned_ms, got["dense"]["rounds"], got["pruned"]["rounds"], confidence),
            "wall_s": got["dense"]["wall_s"],
            "estimator": f"median_of_pass_min, min of {rounds} interleaved rounds"}


def measure_modules(loaded, modules: dict, table, session, cache=None, reporter=None, rounds: int = 2) -> dict:
    """{name: {ms, rounds, wall_s}}: every module exported and timed interleaved with the others in one run."""
    import hashlib

    from edgeprune.exporters.onnx import export_onnx
    from edgeprune.latency.build import Measurer, Reporter, model_ms
    from edgeprune.latency.cache import MeasurementCache

    reporter = reporter or Reporter()
    own_cache = cache is None
    cache = cache or MeasurementCache(None)
    try:
        with tempfile.TemporaryDirectory(prefix="edgeprune-measure-") as tmp:
            paths = {}
            for name, mod in modules.items():
                wrapped = loaded.export_module(mod)
                path = Path(tmp) / f"{len(paths)}.onnx"
                export_onnx(wrapped, loaded.example_inputs(wrapped), path)
                paths[name] = path
            keys = {n: hashlib.sha256(p.read_bytes()).hexdigest() for n, p in paths.items()}
            estimator = {k: v for k, v in table.estimator.items() if k not in ("name", "models")}
            model_est = table.estimator.get("models") or estimator
            measurer = Measurer(session.target, cache, _fingerprint(session, table), table.runtime, estimator,
                                model_est, Path(tmp))
            started = time.time()
            unique = {keys[n]: paths[n] for n in paths}
            got = measurer.models(unique, rounds, reporter.stage("measure"), fresh=True)
            reporter.done("measure")
    finally:
        if own_cache:
            cache.close()
    wall = time.time() - started
    return {n: {"ms": model_ms(got[keys[n]]), "rounds": got[keys[n]]["rounds"], "wall_s": wall} for n in modules}
