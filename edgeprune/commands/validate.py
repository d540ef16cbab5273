"""`edgeprune validate`: run bundles on the device; parity, accuracy, latency gates; a report.

Exit codes: 0 every requested gate ran and held; 1 a gate failed; 2 bad input; 3 nothing failed but a gate was
skipped (no budget, no labelled --data, no baseline accuracy), so the bundle is not proven — `--allow-skipped`
makes that 0 for a deliberate partial check. Skipped gates are listed either way.
"""

from __future__ import annotations

import click

from .options import measuring_device_options

INCOMPLETE_EXIT = 3
VERDICT = {"passed": "[green]PASSED[/]: every requested gate ran and held",
           "incomplete": "[yellow]INCOMPLETE[/]: no gate failed, but skipped gates prove nothing"}


@click.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path())
@measuring_device_options
@click.option("--data", default=None, metavar="PATH",
              help="Labelled samples: .npz (inputs + labels) or an image folder (class sub-folders).")
@click.option("--budget", default=None, metavar="4.2ms|2x", help="Override the manifest's budget.")
@click.option("--baseline", default=None, type=click.Path(), help="The unpruned model's bundle, run on the same data.")
@click.option("--min-accuracy-ratio", type=click.FloatRange(0, 1), default=None,
              help="Relative gate: top-1 >= RATIO x the baseline's top-1 (0.98 with a 0.9955 baseline: 0.9756). "
                   "Default 0.99 when --min-accuracy is not given either.")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), default=None,
              help="Absolute gate: top-1 >= this figure, whatever the baseline.")
@click.option("--allow-skipped", is_flag=True, help="Exit 0 when gates were skipped but none failed (default: 3).")
@click.option("--runs", type=click.IntRange(1), default=200, show_default=True, help="At least this many timed runs.")
@click.option("--seconds", type=click.FloatRange(0), default=10.0, show_default=True,
              help="... and at least this many seconds of timed runs.")
@click.option("--threads", type=click.IntRange(1, 256), default=None,
              help="Override the bundle's runtime threads (the gate then no longer matches the table's).")
@click.option("--runtime", type=click.Choice(["onnxruntime", "tensorrt"]), default=None,
              help="Default: the bundle's TensorRT engine when it has one, else its ONNX on ONNX Runtime.")
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Report directory to write.")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
@click.pass_obj
def validate(out_obj, bundles, device, host, ssh, data, budget, baseline, min_accuracy_ratio, min_accuracy,
             allow_skipped, runs, seconds, threads, runtime, out, force):
    """Validate BUNDLES on the device: checksums, parity, accuracy, latency; exit 1 when a gate fails,
    3 when one was skipped."""
    from edgeprune.progress import RichReporter
    from edgeprune.reports import gate_line
    from edgeprune.validation import interval_text
    from edgeprune.validation import validate as run_validate

    if min_accuracy_ratio is None and min_accuracy is None:
        min_accuracy_ratio = 0.99
    with RichReporter(enabled=not out_obj.quiet) as reporter:
        result = run_validate(list(bundles), device=device, host=host, data=data, budget=budget, baseline=baseline,
                              out=out, min_accuracy_ratio=min_accuracy_ratio, min_accuracy=min_accuracy, runs=runs,
                              seconds=seconds, threads=threads, ssh_options=ssh, force=force, runtime_name=runtime,
                              reporter=reporter)
    lines = []
    for r in result.reports:
        lat = r["latency"]
        acc = (r.get("accuracy") or {}).get("top1")
        lines.append(f"[bold]{r['bundle']}[/] on {r['device']}: "
                     f"p50 {lat['p50_ms']:.3f} / p90 {lat['p90_ms']:.3f} / p99 {lat['p99_ms']:.3f} ms, "
                     + interval_text(lat)
                     + (f", predicted {r['predicted_ms']:.3f} ms" if r.get("predicted_ms") else "")
                     + (f", accuracy {acc:.4f}" if acc is not None else ""))
        lines += [f"  {gate_line(name, gate)}" for name, gate in r["gates"].items()]
    lines.append(VERDICT[result.status] + (f" ({len(result.skipped)} skipped)" if result.skipped else ""))
    if out:
        lines.append(f"report: {out}/report.md")
    out_obj.print("\n".join(lines))
    out_obj.result({"passed": result.passed, "status": result.status, "skipped": result.skipped,
                    "reports": [{k: v for k, v in r.items() if k != "latency"} | {
                        "latency": {k: v for k, v in r["latency"].items() if k != "runs_ms"}} for r in result.reports]})
    if result.skipped and not allow_skipped:
        click.get_current_context().exit(INCOMPLETE_EXIT)
