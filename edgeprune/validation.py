"""`edgeprune validate` as a library call: run bundles on the device, gate them, write the report.

Checksums are verified on the host before anything is copied, and again on the device before anything runs.
Labelled data is preprocessed here (the device side has no torch or PIL) and checked against each bundle's
input spec. Gates, named for what they compare:
- `parity`: outputs on the reference inputs within the bundle's tolerance;
- `latency`: the table's estimator (at the bundle's threads) ≤ budget;
- `accuracy_vs_baseline`: top-1 ≥ `min_accuracy_ratio` × the baseline's top-1 (a `--baseline` bundle measured
  on the same data in the same run, else the manifest's) — relative: 0.98 with a 0.9955 baseline is 0.9756;
- `accuracy_floor`: top-1 ≥ `min_accuracy`, an absolute figure (only when asked for).
A gate that cannot run (no budget, no labelled data, no baseline accuracy) is *skipped*, never passed: the
result passes only when every requested gate ran and held. Failed gates raise after the report is written.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BadInputError, CheckFailedError


@dataclass
class Validation:
    reports: list  # one per bundle: {bundle, manifest id, parity, accuracy, latency, gates}
    out: Path | None
    failed: list = field(default_factory=list)  # "bundle: gate why" lines
    skipped: list = field(default_factory=list)  # "bundle: gate skipped: why" lines

    @property
    def passed(self) -> bool:
        """Every requested gate ran and held; a skipped gate is not a pass."""
        return not self.failed and not self.skipped

    @property
    def status(self) -> str:
        """"failed" (a gate failed), "incomplete" (none failed, some skipped) or "passed"."""
        return "failed" if self.failed else "incomplete" if self.skipped else "passed"


def prepare_data(data: str, manifest: dict, workdir: Path) -> Path:
    """The labelled samples as the bundle's input spec expects them, written as data.npz for the device."""
    import numpy as np

    from .data import load_samples

    spec = manifest["inputs"][0]
    family = manifest["source"].get("family", "vision")
    samples = load_samples(data, tuple(spec["shape"]), family, seq_len=manifest["source"].get("seq_len"))
    if samples.labels is None:
        raise BadInputError(f"data {data} has no labels: accuracy needs them",
                            "store 'labels' beside 'inputs', or use class sub-folders")
    prep = manifest.get("preprocessing") or {}
    if samples.preprocessing.get("kind") == "image" and prep.get("kind") in ("image", "digits"):
        # image folders are normalised with the statistics the bundle was exported with
        import torch

        mean = torch.tensor(samples.preprocessing["mean"]).view(-1, 1, 1)
        std = torch.tensor(samples.preprocessing["std"]).view(-1, 1, 1)
        raw = samples.inputs * std + mean
        samples.inputs = (raw - torch.tensor(prep["mean"]).view(-1, 1, 1)) / torch.tensor(prep["std"]).view(-1, 1, 1)
    path = workdir / "data.npz"
    np.savez(path, inputs=samples.inputs.numpy().astype(spec.get("dtype", "float32")),
             labels=samples.labels.numpy().astype(np.int64))
    return path


def run_on_device(target, bundles: list, data_path: Path | None, settings: dict, workdir: Path) -> list:
    """All bundles through one `python -m profilers bundle` job on the target (latency interleaved)."""
    from edgeprune.exporters.bundle import bundle_files, check_reports

    names = [f"bundle{i}" for i in range(len(bundles))]
    request = {"bundles": names, "data": "data.npz" if data_path else None, "latency": settings.get("latency"),
               "runtime": settings.get("runtime") or {}}
    req_path = workdir / "request.json"
    req_path.write_text(json.dumps(request))
    files = dict(bundle_files(dict(zip(names, bundles))), **{"request.json": req_path})
    if data_path:
        files["data.npz"] = data_path
    reply = target.run_profilers(["bundle", "request.json", "--out", "report.json"], files=files)
    if "result_file" in reply:
        local = workdir / "report.json"
        target.fetch(reply["result_file"], local)
        reply = json.loads(local.read_text())
    return check_reports(reply, target.where, len(bundles))


def gates(report: dict, manifest: dict, budget_ms: float | None, baseline_acc: float | None,
          min_ratio: float | None, min_accuracy: float | None = None) -> dict:
    """{gate: {ok, status, rule, value, limit, why}}; `ok` is None and `status` "skipped" when a gate cannot run.

    `min_ratio` None leaves out `accuracy_vs_baseline`, `min_accuracy` None leaves out `accuracy_floor`.
    """
    out = {"parity": _gate(report["parity"]["ok"], "outputs within atol of the reference outputs", value=max(
        (r.get("needed_atol", float("inf")) for r in report["parity"]["outputs"].values()), default=0.0),
        limit=report["parity"]["atol"])}
    est = report["latency"]["estimate_ms"]
    if budget_ms is None:
        out["latency"] = _skipped("estimate ≤ budget", "no budget in the manifest and no --budget", value=est)
    else:
        from .budget import meets_budget, tolerance_text

        rule = f"estimate ≤ budget {budget_ms:.3f} ms ({tolerance_text()})"
        out["latency"] = _gate(meets_budget(est, budget_ms), rule, value=est, limit=budget_ms)
    acc = (report.get("accuracy") or {}).get("top1")
    if min_ratio is not None:
        rule = f"top-1 ≥ {min_ratio:g} × baseline top-1"
        if acc is None:
            out["accuracy_vs_baseline"] = _skipped(rule, "no labelled --data", ratio=min_ratio)
        elif baseline_acc is None:
            out["accuracy_vs_baseline"] = _skipped(rule, "no baseline accuracy (manifest or --baseline)", value=acc,
                                                   ratio=min_ratio)
        else:
            limit = min_ratio * baseline_acc
            out["accuracy_vs_baseline"] = _gate(acc >= limit, f"{rule} {baseline_acc:.4f} = {limit:.4f}", value=acc,
                                                limit=limit, baseline=baseline_acc, ratio=min_ratio)
    if min_accuracy is not None:
        rule = f"top-1 ≥ {min_accuracy:g} (absolute)"
        if acc is None:
            out["accuracy_floor"] = _skipped(rule, "no labelled --data")
        else:
            out["accuracy_floor"] = _gate(acc >= min_accuracy, rule, value=acc, limit=min_accuracy)
    return out


def _gate(ok: bool, rule: str, **fields) -> dict:
    return dict(fields, ok=bool(ok), status="passed" if ok else "failed", rule=rule)


def _skipped(rule: str, why: str, **fields) -> dict:
    return dict(fields, ok=None, status="skipped", rule=rule, why=why)


def validate(bundles: list, device: str | None = None, host: str | None = None, data: str | None = None,
             budget: str | None = None, baseline: str | None = None, out: str | Path | None = None,
             min_accuracy_ratio: float | None = 0.99, runs: int = 200, seconds: float = 10.0,
             threads: int | None = None, ssh_options: dict | None = None, force: bool = False,
             runtime_name: str | None = None, min_accuracy: float | None = None, reporter=None) -> Validation:
    """Validate `bundles` on the device; raises CheckFailedError (exit 1) listing failed gates after writing.

    Skipped gates do not raise: they are listed in `Validation.skipped` and the report, and `passed` is False.
    """
    from edgeprune.exporters.bundle import read_bundle

    from .atomic import check_writable
    from .budget import parse_budget
    from .devices import load_registry, open_device
    from .progress import active_reporter

    if out is not None:
        check_writable(out, force)
    paths = [Path(b) for b in bundles] + ([Path(baseline)] if baseline else [])
    manifests = [read_bundle(p) for p in paths]  # checksums first: nothing runs on a tampered bundle
    parsed = parse_budget(budget)
    if parsed is not None and parsed.kind == "speedup" and not baseline:
        raise BadInputError(f"--budget {budget} is a speedup: it needs the dense model's latency",
                            "pass --baseline DENSE_BUNDLE (timed interleaved with the others), or a budget in ms")
    specs = {json.dumps(m["inputs"], sort_keys=True) for m in manifests}
    if data and len(specs) > 1:
        raise BadInputError("the bundles take different inputs, so one --data cannot feed them all",
                            "validate them separately")
    device = device or ((manifests[0].get("table") or {}).get("fingerprint") or {}).get("device") or "cpu"
    # a bundle carrying a TensorRT engine is validated on it; runtime="onnxruntime" validates its ONNX instead
    runtime = {"threads": threads} if threads is not None else {}
    if runtime_name is not None:
        runtime["backend"] = runtime_name
    estimator = {k: v for k, v in ((manifests[0].get("table") or {}).get("estimator") or {}).items()
                 if k not in ("name", "models")}
    settings = {"runtime": runtime, "latency": {"runs": runs, "seconds": seconds, "estimator": estimator}}
    with tempfile.TemporaryDirectory(prefix="edgeprune-validate-") as tmp, \
            open_device(device, host, ssh_options or {}, load_registry()) as session:
        work = Path(tmp)
        data_path = prepare_data(data, manifests[0], work) if data else None
        reporter = reporter or active_reporter()
        reporter.stage("validate", None)
        reports = run_on_device(session.target, paths, data_path, settings, work)
        reporter.done("validate")
        for path, manifest, report in zip(paths, manifests, reports):
            report.update(bundle=str(path), manifest_id=manifest["id"], device=session.spec.name,
                          where=session.target.where, predicted_ms=manifest.get("predicted_ms"))
    baseline_report = reports.pop() if baseline else None
    from edgeprune.profilers.timing import Estimator

    paired = Estimator.from_dict(estimator).passes  # the passes every bundle ran; extra ones do not pair up
    for report in reports + ([baseline_report] if baseline_report else []):
        add_intervals(report["latency"], baseline_report["latency"] if baseline_report else None, paired)
    failed, skipped = [], []
    for report, manifest in zip(reports, manifests):
        # a speedup budget is judged against the dense baseline timed interleaved in this run when there is one;
        # otherwise against the manifest's budget in ms (the table's dense measurement / speedup)
        wanted = parsed or parse_budget(manifest.get("budget"))
        budget_ms = manifest.get("budget_ms")
        if wanted is not None and wanted.kind == "ms":
            budget_ms = wanted.value
        elif wanted is not None and baseline_report is not None:
            budget_ms = baseline_report["latency"]["estimate_ms"] / wanted.value
        baseline_acc = ((baseline_report or {}).get("accuracy") or {}).get("top1")
        if baseline_acc is None:
            baseline_acc = manifest.get("baseline_accuracy")
        report["gates"] = gates(report, manifest, budget_ms, baseline_acc, min_accuracy_ratio, min_accuracy)
        for name, gate in report["gates"].items():
            if gate["status"] == "failed":
                failed.append(f"{report['bundle']}: {name} {_gate_line(name, gate)}")
            elif gate["status"] == "skipped":
                skipped.append(f"{report['bundle']}: {name} skipped: {gate['why']}")
    result = Validation(reports, Path(out) if out else None, failed, skipped)
    if out is not None:
        from .reports import write_report

        write_report(out, result, baseline_report)
    if failed:
        raise CheckFailedError("validation failed: " + "; ".join(failed),
                               f"see {out}/report.md" if out else "pass --out DIR for the full report")
    return result


def add_intervals(latency: dict, baseline: dict | None, paired: int,
                  confidence: float | None = None) -> None:
    """Put a `confidence` interval on the estimate (`interval_ms`) and, beside a baseline, the speedup over it.

    The device times every bundle in interleaved passes; pass p of each bundle ran in the same round, so the
    first `paired` passes (extra passes go only to noisy bundles and do not pair up) give paired readings of
    the speedup, as `prune` measures it (budget.interval). A device whose profilers package predates
    `pass_min_ms` reports no passes: no interval is claimed.
    """
    from .budget import REPORTED_CONFIDENCE, interval, latency_interval

    confidence = confidence or REPORTED_CONFIDENCE
    rounds = (latency.get("estimate") or {}).get("pass_min_ms") or []
    if not rounds:
        return
    latency["interval"] = {"confidence": confidence, "rounds": len(rounds),
                           "ms": latency_interval(latency["estimate_ms"], rounds, confidence)}
    base = ((baseline or {}).get("estimate") or {}).get("pass_min_ms") or []
    if baseline is None or baseline is latency or not base:
        return
    n = min(paired, len(rounds), len(base))
    iv = interval(baseline["estimate_ms"], latency["estimate_ms"], base[:n], rounds[:n], confidence)
    latency["speedup"] = baseline["estimate_ms"] / latency["estimate_ms"]
    latency["interval"].update(speedup=iv["speedup"], paired_rounds=n)


def interval_text(latency: dict) -> str:
    """`estimate 4.210 ms (90 % interval 4.101–4.352 over 3 passes)`, and the speedup when a baseline ran."""
    iv = latency.get("interval")
    text = f"estimate {latency['estimate_ms']:.3f} ms"
    if not iv:
        return text
    text += f" ({iv['confidence']:.0%} interval {iv['ms'][0]:.3f}–{iv['ms'][1]:.3f} over {iv['rounds']} passes)"
    if "speedup" in iv:
        text += (f", {latency['speedup']:.2f}x the baseline ({iv['speedup'][0]:.2f}–{iv['speedup'][1]:.2f}x "
                 f"over {iv['paired_rounds']} paired passes)")
    return text


def _gate_line(name: str, gate: dict) -> str:
    if name == "latency":
        return f"{gate['value']:.3f} ms > budget {gate['limit']:.3f} ms"
    if name == "accuracy_vs_baseline":
        return (f"{gate['value']:.4f} < {gate['limit']:.4f} "
                f"({gate['ratio']:g} × baseline {gate['baseline']:.4f}; --min-accuracy-ratio)")
    if name == "accuracy_floor":
        return f"{gate['value']:.4f} < {gate['limit']:.4f} (absolute; --min-accuracy)"
    return f"needs atol {gate['value']:.3g} > {gate['limit']:.3g}"
