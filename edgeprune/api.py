"""The Python API: a few verbs that mirror the CLI and return records instead of printing."""

from __future__ import annotations

import sys
from contextlib import ExitStack, contextmanager
from pathlib import Path

from .errors import BadInputError, EdgepruneError
from .latency.build import ProfileOptions, ProfileResult, Reporter
from .latency.table import LatencyTable

BUILTIN_DATA = ("digits", "digits:train", "digits:test",  # edgeprune.data reads these without a file
                "digits-shifted", "digits-shifted:train", "digits-shifted:test")


def profile(model: str, device: str, out: str | Path | None = None, *, host: str | None = None,
            weights: str | None = None, model_args: dict | None = None, input_shape: tuple | None = None,
            seq_len: int | None = None, regime: str = "prefill", threads: int = 1, backend: str | None = None,
            provider: str | None = None,
            precision: str = "fp32", density: str = "coarse", variants: int = 20, seed: int = 0,
            cache: str | Path | None = None, reporter: Reporter | None = None, force: bool = False,
            lock_clocks: bool = False, trust_remote_code: bool = False, state_tolerance: float = 0.15,
            **ssh_options) -> ProfileResult:
    """Measure a latency table for `model` on `device` (this machine, or `host` over SSH); save it to `out`.

    Clocks are only read and recorded, unless `lock_clocks` runs the device's own locking commands first.
    Cached timings from a machine state more than `state_tolerance` away (a reference cell's speed) are
    measured again, and a machine whose speed moves that much while profiling is reported.
    `trust_remote_code` lets a Hugging Face model directory run its own Python files on this machine.
    """
    from .atomic import check_writable
    from .devices import load_registry, open_device
    from .latency.build import profile_model
    from .latency.cache import MeasurementCache
    from .models import load_model

    if out is not None:
        check_writable(out, force)
    registry = load_registry()
    check_where(device, host, ssh_options, registry, backend=backend, provider=provider, precision=precision)
    loaded = load_model(model, weights=weights, model_args=model_args, input_shape=input_shape, seq_len=seq_len,
                        regime=regime, trust_remote_code=trust_remote_code)
    options = ProfileOptions(threads=threads, precision=precision, backend=backend, provider=provider,
                             density=density, variants=variants, seed=seed, state_tolerance=state_tolerance)
    measurements = MeasurementCache(cache)
    try:
        with open_device(device, host, ssh_options, registry) as session:
            facts = _lock_clocks(session.target, session.spec) if lock_clocks else session.facts
            result = profile_model(loaded, session.spec, facts, session.target, options, measurements, reporter)
    finally:
        measurements.close()
    if out is not None:
        result.table.save(out)
    return result


def check_where(device: str | None, host: str | None, ssh_options: dict, registry=None, **runtime) -> None:
    """Refuse a wrong --device, runtime, --host or SSH option before any model loads or connection opens.

    `runtime` (backend, provider, precision) must fit one of the devices `device` names (a family names several).
    """
    from .devices import load_registry, lookup_device
    from .targets import open_target

    if device is not None:
        specs = lookup_device(device, registry if registry is not None else load_registry())
        errors = []
        for spec in specs:
            try:
                spec.runtime(**runtime)
            except EdgepruneError as err:
                errors.append(err)
        if len(errors) == len(specs):
            raise errors[0]
    open_target(host, **ssh_options)  # parses --host and the SSH options; it connects only when entered
    identity = ssh_options.get("identity")
    if host is not None and identity is not None and not Path(identity).expanduser().is_file():
        raise BadInputError(f"--identity {identity}: no such key file", "pass the private key's path")


def check_data_path(path: str | Path | None, flag: str) -> None:
    """A data path that does not exist fails before any model loads; the built-in `digits` needs no file."""
    if path is not None and str(path) not in BUILTIN_DATA and not Path(path).exists():
        raise BadInputError(f"{flag} {path} does not exist",
                            "give a .npz/.pt/.safetensors file, an image folder, a text file, or 'digits'")


def _lock_clocks(target, spec) -> dict:
    """Run the device's clock-locking commands on it; returns the facts read afterwards."""
    import json

    if not spec.clocks.lock:
        raise BadInputError(f"device {spec.name} has no clock-locking command",
                            "drop --lock-clocks; the clock state is recorded in the table as it is")
    target.run_profilers(["lock-clocks", json.dumps([list(argv) for argv in spec.clocks.lock])])
    return target.run_profilers(["info"])


def prune(model, table=None, out: str | Path | None = None, *, budget: str | None = None, target: str | None = None,
          criterion: str = "l2", mode: str = "latency", ratio: float | None = None, macs: float | None = None,
          round_to: int | None = None, min_keep: float = 0.3, calib: str | None = None, calib_samples: int = 64,
          device: str | None = None, host: str | None = None, measure: bool = True, weights: str | None = None,
          model_args: dict | None = None, input_shape: tuple | None = None, seq_len: int | None = None,
          regime: str | None = None, seed: int = 0, max_rounds: int = 3, threads: int | None = None,
          precision: str | None = None, cache: str | Path | None = None, reporter: Reporter | None = None,
          force: bool = False, bn_recalibrate: bool = True, trust_remote_code: bool = False, search: int = 24,
          policy: str | Path | None = None,
          sensitivity_points: int = 4, ignore: tuple | list = (), confidence: float | None = None,
          measure_rounds: int | None = None, **ssh_options):
    """Prune `model` to `budget` (`"4.2ms"` or `"2x"`; `target` is the same) against latency `table`.

    With `calib`, each group's cost is measured as calibration loss at `sensitivity_points` widths and `search`
    whole candidates are scored after the knapsack (0: knapsack only); docs/pruning.md. `ignore` names layers
    to keep whole (module names or prefixes; transformer groups as `layers.3.heads`). `policy` (with
    `criterion="prunenet"`): a PruneNet policy file, reused when it exists (at any ratio, by any model with the
    same MLP shapes), else trained here and written there.

    Without a table only the baselines' modes run (`mode="uniform"|"global"` with `ratio` or `macs`).
    `model` is a `--model` spec, a LoadedModel, or a torch module (shaped like the table's model). When the
    table's device is this machine (or `host` reaches it), the result is exported and timed against the dense
    model interleaved (`measure_rounds` rounds, default 3, or 5 with `confidence`; the speedup is reported
    with an interval over them), and re-solved tighter if it misses (`measure=False` skips this); with
    `confidence` (e.g. 0.95) the budget is met only when that interval's pessimistic end meets it. Saved to `out` as a
    pruned-model directory when given. Returns a PruneResult (module, widths, predicted and measured latency).
    """
    from .atomic import check_writable
    from .budget import parse_budget
    from .latency.cache import MeasurementCache
    from .pruning.engine import PruneOptions, check_options, prune_model

    if budget is not None and target is not None and budget != target:
        raise BadInputError("both budget and target given", "they are the same option; pass one")
    options = PruneOptions(criterion=criterion, budget=budget or target, mode=mode, ratio=ratio, macs=macs,
                           round_to=round_to, min_keep=min_keep, calib=calib, calib_samples=calib_samples, seed=seed,
                           measure=measure, max_rounds=max_rounds, threads=threads, precision=precision,
                           bn_recalibrate=bn_recalibrate, search=search, sensitivity_points=sensitivity_points,
                           policy=None if policy is None else str(policy),
                           ignore=tuple(ignore or ()), confidence=confidence,
                           measure_rounds=measure_rounds or (5 if confidence else 3))
    if confidence is not None and not 0.5 <= confidence < 1:
        raise BadInputError(f"--confidence {confidence} is not a probability in [0.5, 1)", "use e.g. 0.9 or 0.95")
    if options.measure_rounds < (3 if confidence else 1):
        raise BadInputError(f"{options.measure_rounds} measurement round(s) give no interval to certify with",
                            "use at least 3 rounds with --confidence")
    parse_budget(options.budget)
    check_data_path(calib, "--calib")
    if out is not None:
        check_writable(out, force)
    if table is not None and not isinstance(table, LatencyTable):
        table = LatencyTable.load(table)
    check_options(str(getattr(model, "spec", model)), table, options)
    check_where(device, host, ssh_options)
    loaded = _as_loaded(model, table, weights, model_args, input_shape, seq_len, regime, trust_remote_code)
    measurements = MeasurementCache(cache)  # timings, and the sensitivity of each cut (measured or not)
    try:
        # the device is opened whenever there is a table: its fingerprint is checked even with measure=False
        with _measuring_device(table, device, host, table is not None, ssh_options) as (session, note):
            result = prune_model(loaded, table, options, session, measurements, reporter,
                                 fingerprint_advisory=not measure and not (device or host))
    finally:
        if measurements is not None:
            measurements.close()
    if note:
        result.notes.insert(0, note)
    result.provenance = _provenance(loaded, table, options, result)
    if out is not None:
        from .pruning.checkpoint import save_pruned

        save_pruned(out, result.module, loaded, result.widths, result.provenance, force=force)
    return result


def adapt(model, table, data: str, out: str | Path | None = None, *, budget: str, probe_samples: int = 64,
          finetune_samples: int = 256, proxies: tuple | list = ("feature", "kl"), fit_runs: int = 6,
          fit_epochs: int = 1, fit_target: str = "kl", epochs: int = 5, temperature: float = 4.0, lr: float = 1e-3,
          batch_size: int = 32, criterion: str = "l2", sensitivity_points: int = 4, min_keep: float = 0.3,
          g_from: str | Path | None = None,
          cache_dir: str | Path | None = None, device: str | None = None, host: str | None = None,
          measure: bool = True, weights: str | None = None, model_args: dict | None = None,
          input_shape: tuple | None = None, seed: int = 0, max_rounds: int = 3, threads: int | None = None,
          cache: str | Path | None = None, ignore: tuple | list = (), reporter: Reporter | None = None,
          force: bool = False, **ssh_options):
    """TT-MPD: prune `model` to `budget` on `table` and fine-tune it on unlabeled samples of its new domain.

    `data` holds the device's own samples (labels, if any, are never read): `probe_samples` adapt the teacher's
    BatchNorm and score cuts by `proxies`, `finetune_samples` get the adapted teacher's cached pseudo-labels
    (`cache_dir`, default beside `out`). g, the predicted fine-tuned accuracy, is fitted on `fit_runs` real
    prune-and-fine-tune runs scored by `fit_target` on the probe samples ("kl": −KL to the adapted teacher,
    "agreement": its top-1 agreement), or reused from a previous adapt output directory `g_from` (same source
    model).
    docs/ttmpd.md. Returns pruning/ttmpd.py's Adapted (its `pruned` is a PruneResult with the fine-tuned module).
    """
    import dataclasses as _dc

    from .atomic import check_writable
    from .budget import parse_budget
    from .data import load_samples
    from .latency.cache import MeasurementCache
    from .pruning.engine import PruneOptions, check_options
    from .pruning.ttmpd import AdaptOptions, adapt_model, check_fit_target, check_proxies

    if budget is None:
        raise BadInputError("TT-MPD prunes to a latency budget", "pass --budget, e.g. 2x or 4.2ms")
    parse_budget(budget)
    check_proxies(proxies)
    check_fit_target(fit_target)
    check_data_path(data, "--data")
    if out is not None:
        check_writable(out, force)
    if table is not None and not isinstance(table, LatencyTable):
        table = LatencyTable.load(table)
    options = AdaptOptions(budget=budget, probe_samples=probe_samples, finetune_samples=finetune_samples,
                           proxies=tuple(proxies), fit_runs=fit_runs, fit_epochs=fit_epochs,
                           fit_target=fit_target, epochs=epochs,
                           temperature=temperature, lr=lr, batch_size=batch_size, criterion=criterion,
                           sensitivity_points=sensitivity_points, min_keep=min_keep, seed=seed, measure=measure,
                           max_rounds=max_rounds, threads=threads, ignore=tuple(ignore or ()))
    check_options(str(getattr(model, "spec", model)), table, PruneOptions(criterion=criterion, budget=budget,
                                                                          threads=threads))
    check_where(device, host, ssh_options)
    shape = tuple(input_shape or getattr(model, "input_shape", None) or table.model.get("input_shape") or ())
    samples = load_samples(data, shape, "vision")
    from .pruning.ttmpd import split_unlabeled

    split_unlabeled(samples, probe_samples, finetune_samples, seed)  # too few samples: refused before any work
    reuse = _reused_g(g_from) if g_from is not None else None
    loaded = _as_loaded(model, table, weights, model_args, input_shape, None, None)
    if reuse is not None and reuse[1] != loaded.source_sha256:
        raise BadInputError(f"g in {g_from} was fitted for another model (sha256 {str(reuse[1])[:12]}, this one "
                            f"{loaded.source_sha256[:12]})", "drop --g-from to fit g for this model")
    scratch = ExitStack()
    if cache_dir is None and out is not None:
        cache_dir = Path(out).with_name(Path(out).name + ".teacher-cache")
    elif cache_dir is None:  # nothing to keep it beside: a temporary directory for this call
        import tempfile

        cache_dir = Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="edgeprune-adapt-"))) / "cache"
    measurements = MeasurementCache(cache)
    try:
        with scratch, _measuring_device(table, device, host, True, ssh_options) as (session, note):
            adapted = adapt_model(loaded, table, samples, options, session=session, measurements=measurements,
                                  reporter=reporter, cache_dir=cache_dir, reuse=reuse[0] if reuse else None,
                                  fingerprint_advisory=not measure and not (device or host))
    finally:
        measurements.close()
    result = adapted.pruned
    if note:
        result.notes.insert(0, note)
    prune_options = PruneOptions(criterion=criterion, budget=budget, min_keep=min_keep, seed=seed, measure=measure,
                                 max_rounds=max_rounds, threads=threads, search=0, ignore=tuple(ignore or ()))
    provenance = _provenance(loaded, table, prune_options, result)
    provenance["criterion"] = "tt-mpd"
    provenance["ttmpd"] = adapted.record
    provenance["distillation"] = {"mode": "tt-mpd", "teacher": {"spec": loaded.spec, "adapted": True,
                                                                "sha256": adapted.record["teacher_sha256"]},
                                  "options": {k: v for k, v in _dc.asdict(options).items()
                                              if k in ("epochs", "lr", "batch_size", "temperature", "seed")},
                                  "cache": str(cache_dir), "cache_reused": adapted.teacher_cache.reused,
                                  "train_s": adapted.distill.train_s, "losses": adapted.distill.losses}
    result.provenance = provenance
    if out is not None:
        from .pruning.checkpoint import save_pruned

        save_pruned(out, result.module, loaded, result.widths, provenance, force=force)
    return adapted


def _reused_g(path: str | Path) -> tuple:
    """(AccuracyModel, source sha256) from a previous adapt output directory's provenance.json."""
    from .pruning.checkpoint import read_provenance
    from .pruning.ttmpd import AccuracyModel

    folder = Path(path)
    record = read_provenance(folder).get("ttmpd") if folder.is_dir() else None
    if not isinstance(record, dict) or not isinstance(record.get("g"), dict):
        raise BadInputError(f"--g-from {path} is not a directory edgeprune adapt wrote (no fitted g in its "
                            "provenance.json)", "give the --out of an earlier edgeprune adapt, or drop --g-from")
    try:
        model = AccuracyModel.from_dict(record["g"])
    except (KeyError, TypeError, ValueError):
        raise BadInputError(f"--g-from {path}: the fitted g in provenance.json is malformed",
                            "re-run edgeprune adapt without --g-from") from None
    return model, (read_provenance(folder).get("source") or {}).get("sha256")


def load(path: str | Path, base=None):
    """Rebuild a pruned (or distilled) model directory as a torch module in eval mode; no pickle involved.

    `base`: a fresh instance of the dense architecture, only for models pruned from a Python module object.
    """
    from .pruning.checkpoint import load_pruned

    return load_pruned(path, base)[0]


def _as_loaded(model, table, weights, model_args, input_shape, seq_len, regime, trust_remote_code=False):
    from .models import LoadedModel, load_model, state_dict_sha256

    if isinstance(model, LoadedModel):
        return model
    recorded = table.model if table is not None else {}
    if isinstance(model, (str, Path)):
        vision = recorded.get("family") == "vision"
        return load_model(str(model), weights=weights, model_args=model_args,
                          input_shape=input_shape or (tuple(recorded["input_shape"]) if vision else None),
                          seq_len=seq_len or recorded.get("seq_len"),
                          regime=regime or recorded.get("regime") or "prefill", trust_remote_code=trust_remote_code)
    if input_shape is None and not recorded:
        raise BadInputError("a torch module without a table needs its input shape", "pass input_shape=(1, 3, H, W)")
    shape = tuple(input_shape or recorded["input_shape"])
    return LoadedModel(f"python:{type(model).__qualname__}", model.eval(), None, shape, "vision", True,
                       state_dict_sha256(model), [])


@contextmanager
def _measuring_device(table, device, host, wanted, ssh_options):
    """(DeviceSession or None, note): the table's device when it is this machine or reachable at `host`."""
    from .devices import load_registry, open_device
    from .errors import DeviceError

    if not wanted:
        yield None, None
        return
    registry = load_registry()
    name = device or table.fingerprint.get("device")
    try:
        ctx = open_device(name, host, ssh_options, registry)
        session = ctx.__enter__()
    except DeviceError as err:
        if device or host:
            raise
        yield None, f"not measured or checked against a device: {err.message}"
        return
    try:
        yield session, None
    except BaseException:
        ctx.__exit__(*sys.exc_info())
        raise
    else:
        ctx.__exit__(None, None, None)


def _provenance(loaded, table, options, result) -> dict:
    import dataclasses
    import time

    from . import __version__

    return {
        "format_version": 1, "kind": "provenance", "tool": f"edgeprune {__version__}",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {"spec": loaded.spec, "sha256": loaded.source_sha256},
        "options": dataclasses.asdict(options), "criterion": options.criterion, "budget": options.budget,
        "budget_ms": result.budget_ms,
        "table": None if table is None else {
            "id": table.id, "device": table.fingerprint.get("device"), "runtime": table.runtime,
            "fingerprint": table.fingerprint, "estimator": table.estimator.get("models") or table.estimator,
            "fidelity": {k: table.fidelity.get(k) for k in ("within_10", "mape", "noise_ceiling")}},
        "dense_predicted_ms": result.dense_predicted_ms, "predicted_ms": result.predicted_ms,
        "measured": result.measured, "widths": result.widths, "macs": result.macs, "dense_macs": result.dense_macs,
        "rounds": [{k: v for k, v in r.items() if k != "units"} for r in result.rounds], "notes": result.notes,
    }


def distill(student, teacher, data: str, out: str | Path, *, teacher_weights: str | None = None,
            teacher_args: dict | None = None, epochs: int = 5, lr: float = 1e-3, batch_size: int = 32,
            temperature: float = 4.0, alpha: float = 0.9, top_k: int | None = None, online: bool = False,
            cache_dir: str | Path | None = None, holdout: float = 0.2, seed: int = 0, force: bool = False,
            trust_remote_code: bool = False):
    """Distil `teacher` (a `--model` spec) into `student` (a pruned-model dir) on `data`; save to `out`.

    The teacher's outputs are computed once into `cache_dir` (default: beside `out`) and reused while the
    teacher and data stay the same; `online=True` runs the teacher every step instead.
    `trust_remote_code` lets a Hugging Face teacher directory run its own Python files on this machine.
    """
    from .distillation.run import distill_model
    from .distillation.train import DistillOptions
    from .models import load_model

    check_data_path(data, "--data")
    student_loaded = load_model(str(student))
    source = student_loaded.pruned_source or {}
    teacher_loaded = load_model(str(teacher), weights=teacher_weights,
                                model_args=teacher_args if teacher_args is not None else source.get("model_args"),
                                input_shape=student_loaded.input_shape if student_loaded.family == "vision" else None,
                                seq_len=student_loaded.seq_len, trust_remote_code=trust_remote_code)
    options = DistillOptions(epochs=epochs, lr=lr, batch_size=batch_size, temperature=temperature, alpha=alpha,
                             top_k=top_k, seed=seed)
    return distill_model(student_loaded, teacher_loaded, data, out, options=options, cache_dir=cache_dir,
                         online=online, holdout=holdout, force=force)


def export(model, out: str | Path, *, data: str | None = None, table=None, budget: str | None = None,
           baseline_accuracy: float | None = None, atol: float = 1e-4, rtol: float = 1e-3, clean: bool = True,
           weights: str | None = None, model_args: dict | None = None, input_shape: tuple | None = None,
           seq_len: int | None = None, regime: str | None = None, force: bool = False, engine: str | None = None,
           device: str | None = None, host: str | None = None, workspace_mb: int | None = None,
           trust_remote_code: bool = False, **ssh_options):
    """Export `model` (a `--model` spec, pruned-model dir or LoadedModel) to the bundle directory `out`.

    Fails (CheckFailedError, nothing written) when ONNX Runtime and PyTorch disagree beyond the tolerance.
    `engine="fp16"` (or fp32/int8) also builds a TensorRT engine on `device` (default cuda; `host` for SSH).
    `trust_remote_code` lets a Hugging Face model directory run its own Python files on this machine.
    """
    from .atomic import check_writable
    from .budget import parse_budget
    from .bundles import export_bundle
    from .models import LoadedModel, load_model

    check_writable(out, force)
    parse_budget(budget)
    check_data_path(data, "--data")
    check_where((device or "cuda") if engine is not None else device, host, ssh_options)
    if table is not None and not isinstance(table, LatencyTable):
        table = LatencyTable.load(table)
    loaded = model if isinstance(model, LoadedModel) else load_model(
        str(model), weights=weights, model_args=model_args, input_shape=input_shape, seq_len=seq_len,
        regime=regime or "prefill", trust_remote_code=trust_remote_code)
    return export_bundle(loaded, out, data=data, table=table, budget=budget, baseline_accuracy=baseline_accuracy,
                         atol=atol, rtol=rtol, clean=clean, engine=engine, device=device, host=host,
                         ssh_options=ssh_options, workspace_mb=workspace_mb)


def validate(bundles, device: str | None = None, host: str | None = None, *, data: str | None = None,
             budget: str | None = None, baseline: str | None = None, out: str | Path | None = None,
             min_accuracy_ratio: float = 0.99, runs: int = 200, seconds: float = 10.0, threads: int | None = None,
             force: bool = False, runtime: str | None = None, min_accuracy: float | None = None, **ssh_options):
    """Run bundle(s) on the device; gates on parity, latency ≤ budget, accuracy ≥ ratio × baseline.

    `min_accuracy` adds an absolute accuracy floor beside the relative `min_accuracy_ratio`. A gate that cannot
    run (no budget, no labelled data) is skipped, not passed: the result's `passed` is then False and its
    `status` "incomplete", without raising.

    A bundle with a TensorRT engine is validated on the engine unless `runtime="onnxruntime"`.

    Raises CheckFailedError listing every failed gate (after writing the report to `out`).
    """
    from .validation import validate as run

    bundles = [bundles] if isinstance(bundles, (str, Path)) else list(bundles)
    return run(bundles, device=device, host=host, data=data, budget=budget, baseline=baseline, out=out,
               min_accuracy_ratio=min_accuracy_ratio, runs=runs, seconds=seconds, threads=threads,
               ssh_options=ssh_options, force=force, runtime_name=runtime, min_accuracy=min_accuracy)


def load_table(path: str | Path) -> LatencyTable:
    """Read a latency table, verifying its format version and content id."""
    return LatencyTable.load(path)


def grow(model, data: str | None, out: str | Path | None = None, *, test_data: str | None = None,
         policy: str = "fragrow", seed_depth: int | str | tuple = 1, epochs: int = 30, final_epochs: int = 10,
         lr: float = 0.05, batch_size: int = 64, alpha: float = 4.0, holdout: float = 0.01, min_holdout: int = 32,
         patience: int = 2, seed: int = 0, model_args: dict | None = None, input_shape: tuple | None = None,
         force: bool = False, reporter: Reporter | None = None):
    """Train `model`'s architecture from a shallow seed on labelled `data`, growing it to its own depth.

    `policy` decides when each block is added: "fragrow" (interval from the overfitting risk on a hold-out),
    "periodic", "convergent", or "vanilla" (the target from scratch, the baseline); docs/grow.md. `seed_depth`
    is the blocks per stage in the seed (one number, or one per stage). `model` is a `--model` spec, a
    LoadedModel, or a torch module (with `input_shape`). Saved to `out` as an edgeprune model directory when
    given (profile, prune and export read it); returns a Grown record (module, schedule, history, test accuracy).
    """
    from .atomic import check_writable
    from .growth.policy import POLICIES
    from .growth.run import grow_model
    from .growth.train import GrowOptions
    from .models import LoadedModel, load_model, state_dict_sha256

    if data is None:
        raise BadInputError("grow needs labelled training data", "pass --data PATH (or digits:train)")
    if policy not in POLICIES:
        raise BadInputError(f"unknown growth policy '{policy}'", f"use one of {', '.join(POLICIES)}")
    check_data_path(data, "--data")
    check_data_path(test_data, "--test-data")
    if out is not None:
        check_writable(out, force)
    options = GrowOptions(policy=policy, epochs=epochs, final_epochs=final_epochs, seed_depth=seed_depth, lr=lr,
                          batch_size=batch_size, alpha=alpha, holdout=holdout, min_holdout=min_holdout,
                          patience=patience, seed=seed)
    if isinstance(model, LoadedModel):
        loaded = model
    elif isinstance(model, (str, Path)):
        loaded = load_model(str(model), model_args=model_args, input_shape=input_shape)
    else:
        if input_shape is None:
            raise BadInputError("a torch module needs its input shape to grow", "pass input_shape=(1, 3, H, W)")
        loaded = LoadedModel(f"python:{type(model).__qualname__}", model, None, tuple(input_shape), "vision", True,
                             state_dict_sha256(model), [])
    return grow_model(loaded, data, out, options, test_data=test_data, force=force, reporter=reporter)
