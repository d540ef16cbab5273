"""`edgeprune profile`: measure a per-layer latency table on the device and report its fidelity."""

from __future__ import annotations

import click

from .options import cache_option, device_options, model_options


@click.command()
@model_options
@device_options
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Latency table JSON to write.")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
@click.option("--threads", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Runtime intra-op threads (recorded; budgets and predictions hold only at this count).")
@click.option("--runtime", "backend", type=click.Choice(["onnxruntime", "tensorrt"]), default=None,
              help="Runtime to measure with (default: the device's first available).")
@click.option("--provider", default=None, help="ONNX Runtime execution provider (default: the device's first).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8"]), default="fp32", show_default=True)
@click.option("--density", type=click.Choice(["coarse", "normal", "fine"]), default="coarse", show_default=True,
              help="How many (c_in, c_out) cells per block signature.")
@click.option("--variants", default=20, show_default=True, type=click.IntRange(0, 1000),
              help="Held-out width variants timed end to end for the fidelity report.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the held-out variants.")
@click.option("--lock-clocks", is_flag=True,
              help="Run the device's clock-locking commands first (e.g. jetson_clocks); otherwise clocks are only "
                   "read and recorded.")
@click.option("--state-tolerance", default=0.15, show_default=True, type=click.FloatRange(0.01, 100),
              help="How far the machine's speed (a reference cell) may move before cached timings are measured "
                   "again and a busy machine is reported.")
@cache_option
@click.pass_obj
def profile(out_obj, model, weights, model_arg, input_shape, seq_len, regime, trust_remote_code, device, host, ssh, out,
            force, threads, backend, provider, precision, density, variants, seed, lock_clocks, state_tolerance,
            cache_path):
    """Measure a per-layer latency table for MODEL on DEVICE (here, or over SSH with --host)."""
    from edgeprune.api import profile as run_profile
    from edgeprune.atomic import check_writable
    from edgeprune.progress import RichReporter

    check_writable(out, force)
    with RichReporter(enabled=not out_obj.quiet) as reporter:
        result = run_profile(model, device, out=out, host=host, weights=weights, model_args=model_arg,
                             input_shape=input_shape, seq_len=seq_len, regime=regime, threads=threads, backend=backend,
                             provider=provider, precision=precision, density=density, variants=variants,
                             seed=seed, cache=cache_path, reporter=reporter, force=force,
                             lock_clocks=lock_clocks, trust_remote_code=trust_remote_code,
                             state_tolerance=state_tolerance, **ssh)
    for warning in result.warnings:
        out_obj.warn(warning)
    table = result.table
    out_obj.print(summary_text(table, out, result.cached_cells))
    out_obj.result({"table": str(out), "id": table.id, "runtime": table.runtime, "calibration": table.calibration,
                    "fidelity": {k: v for k, v in table.fidelity.items() if k != "variants"},
                    "cells": len(table.cells), "cached_cells": result.cached_cells, "warnings": result.warnings})


def summary_text(table, out, cached_cells: int) -> str:
    """The few lines a person reads after a profile."""
    fid = table.fidelity
    cal = table.calibration
    rt = table.runtime
    lines = [
        f"[bold]latency table[/] {out}  (id {table.id[:12]})",
        f"  {table.fingerprint.get('device')} · {rt['backend']} {rt.get('version') or ''} {rt.get('provider') or ''}"
        f" · {rt['precision']} · {rt['threads']} thread(s) · estimator {table.estimator['name']}",
        f"  {len(table.layers)} layers, {len(table.cells)} cells ({cached_cells} from cache), "
        f"{table.profile.get('table_s', 0):.1f} s measuring cells",
        f"  dense model: measured {cal['dense_measured_ms']:.3f} ms, Σ cells {cal['dense_predicted_ms']:.3f} ms, "
        f"calibration {cal['kind']} {cal['value']:.4g}"
        + (f" (on-step convs; {cal['other_ratio']:.4g} the rest)" if cal["kind"] == "regime" else ""),
    ]
    if fid.get("n_variants"):
        macs = fid["macs"]
        lines += [
            f"  fidelity on {fid['n_variants']} held-out variants (seed {fid['seed']}, half off-step, "
            f"{fid['exact_cell_share']:.0%} exact cells):",
            f"    table: {fid['within_10']:.0%} within ±10 %, {fid['within_5']:.0%} within ±5 %, "
            f"MAPE {fid['mape']:.1%}, Spearman {fid['spearman']:.3f}",
            f"    MACs-proportional: {macs['within_10']:.0%} within ±10 %, {macs['within_5']:.0%} within ±5 %, "
            f"MAPE {macs['mape']:.1%}, Spearman {macs['spearman']:.3f}",
        ]
        if fid.get("noise_ceiling") is not None:
            lines.append(f"    noise ceiling: {fid['noise_ceiling']:.0%} of repeated measurements within ±10 %")
        if fid["within_10"] < 0.8:
            lines.append("  [bold red]LOW FIDELITY[/]: the pruner will measure candidates directly")
    else:
        lines.append(f"  fidelity: {fid.get('status', 'not measured')}")
    return "\n".join(lines)
