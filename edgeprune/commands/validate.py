"""`edgeprune validate`: run bundles on the device; parity, accuracy, latency gates; a report."""

from __future__ import annotations

import click

from .options import measuring_device_options


@click.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path())
@measuring_device_options
@click.option("--data", default=None, metavar="PATH",
              help="Labelled samples: .npz (inputs + labels) or an image folder (class sub-folders).")
@click.option("--budget", default=None, metavar="4.2ms|2x", help="Override the manifest's budget.")
@click.option("--baseline", default=None, type=click.Path(), help="The unpruned model's bundle, run on the same data.")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), default=0.99, show_default=True,
              help="Accuracy gate: at least this fraction of the baseline's accuracy.")
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
def validate(out_obj, bundles, device, host, ssh, data, budget, baseline, min_accuracy, runs, seconds, threads,
             runtime, out, force):
    """Validate BUNDLES on the device: checksums, parity, accuracy, latency; exit 1 when a gate fails."""
    from edgeprune.api import validate as run_validate

    result = run_validate(list(bundles), device=device, host=host, data=data, budget=budget, baseline=baseline,
                          out=out, min_accuracy_ratio=min_accuracy, runs=runs, seconds=seconds, threads=threads,
                          force=force, runtime=runtime, **ssh)
    lines = []
    for r in result.reports:
        lat = r["latency"]
        acc = (r.get("accuracy") or {}).get("top1")
        lines.append(f"[bold]{r['bundle']}[/] on {r['device']}: parity ok, "
                     f"p50 {lat['p50_ms']:.3f} / p90 {lat['p90_ms']:.3f} / p99 {lat['p99_ms']:.3f} ms, "
                     f"estimate {lat['estimate_ms']:.3f} ms"
                     + (f", predicted {r['predicted_ms']:.3f} ms" if r.get("predicted_ms") else "")
                     + (f", accuracy {acc:.4f}" if acc is not None else ""))
    if out:
        lines.append(f"report: {out}/report.md")
    out_obj.print("\n".join(lines))
    out_obj.result({"passed": True, "reports": [{k: v for k, v in r.items() if k != "latency"} | {
        "latency": {k: v for k, v in r["latency"].items() if k != "runs_ms"}} for r in result.reports]})
