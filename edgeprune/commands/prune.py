"""`edgeprune prune`: slim a model to a latency budget measured in a table, then prove it on the device."""

from __future__ import annotations

import click

from .options import model_options, pruned_output_options


@click.command()
@model_options
@click.option("--table", "table_path", default=None, type=click.Path(dir_okay=False),
              help="Latency table from edgeprune profile (same model, device, runtime, threads); needed for "
                   "--budget.")
@click.option("--budget", default=None, metavar="4.2ms|2x",
              help="Latency budget in the table's estimator, or a speedup over the dense model.")
@click.option("--criterion", default="l2", show_default=True,
              help="Importance criterion: l1, l2, bn_scale, taylor, random, wanda_sp, flap, llm-bip, prunenet "
                   "(transformers).")
@click.option("--policy", default=None, metavar="FILE", type=click.Path(dir_okay=False),
              help="With --criterion prunenet: the learned policy; reused when FILE exists (any ratio, any model "
                   "with the same MLP shapes), else trained and saved there.")
@click.option("--calib", default=None, metavar="PATH",
              help="Calibration data for taylor / wanda_sp / flap / llm-bip, and for BatchNorm re-estimation after "
                   "pruning: .npz/.pt/.safetensors, image folder, text file, or 'digits'. Labels are not needed.")
@click.option("--calib-samples", default=64, show_default=True, type=click.IntRange(1),
              help="How many calibration samples to read.")
@click.option("--mode", type=click.Choice(["latency", "uniform", "global"]), default="latency", show_default=True,
              help="latency: knapsack on the table; uniform / global: the baselines' ratio pruning.")
@click.option("--ratio", type=click.FloatRange(0, 0.99), default=None,
              help="uniform / global: fraction of units to remove.")
@click.option("--macs", type=click.FloatRange(0.01, 1.0), default=None,
              help="uniform / global: fraction of the dense MACs to keep (ratio found by bisection).")
@click.option("--round-to", type=click.IntRange(1), default=None, help="uniform / global: round kept channels.")
@click.option("--search", type=click.IntRange(0), default=24, show_default=True,
              help="With --calib: whole candidates scored by calibration loss after the knapsack (0: knapsack only).")
@click.option("--sensitivity-points", type=click.IntRange(1, 16), default=4, show_default=True,
              help="With --calib: widths per group at which cutting that group alone is measured.")
@click.option("--confidence", type=click.FloatRange(0.5, 1.0, max_open=True), default=None,
              help="Meet the budget only when this interval of the measured speedup (e.g. 0.95) clears it; "
                   "without it the speedup is reported with a 90 % interval and judged on its point estimate.")
@click.option("--measure-rounds", type=click.IntRange(1, 50), default=None,
              help="Interleaved rounds of dense and pruned model on the device [default: 3; 5 with --confidence].")
@click.option("--no-bn-recalibrate", is_flag=True,
              help="Keep the dense model's BatchNorm statistics (default: re-estimated on --calib when given).")
@pruned_output_options
@click.pass_obj
def prune(out_obj, model, weights, model_arg, input_shape, seq_len, regime, trust_remote_code, table_path, budget,
          criterion, calib, calib_samples, mode, ratio, macs, round_to, min_keep, ignore, search, sensitivity_points,
          threads, no_measure, confidence, measure_rounds, no_bn_recalibrate, device, host, ssh, seed, cache_path,
          out, force, policy):
    """Prune MODEL to --budget on the table's device; measure the result there; write a pruned-model dir."""
    from edgeprune.api import prune as run_prune
    from edgeprune.atomic import check_writable
    from edgeprune.errors import BadInputError
    from edgeprune.progress import RichReporter

    if policy is not None and criterion != "prunenet":
        raise BadInputError(f"--policy is PruneNet's trained policy; it applies only to --criterion prunenet, "
                            f"not {criterion}", "drop --policy, or pass --criterion prunenet")
    check_writable(out, force)
    ctx = click.get_current_context()
    if ctx.get_parameter_source("regime") == click.core.ParameterSource.DEFAULT:
        regime = None  # the table's regime
    with RichReporter(enabled=not out_obj.quiet) as reporter:
        result = run_prune(model, table_path, out, budget=budget, criterion=criterion, policy=policy, mode=mode,
                           ratio=ratio, macs=macs, round_to=round_to, min_keep=min_keep, calib=calib,
                           calib_samples=calib_samples,
                           device=device, host=host, measure=not no_measure, weights=weights, model_args=model_arg,
                           input_shape=input_shape, seq_len=seq_len, regime=regime, seed=seed, threads=threads,
                           cache=cache_path, bn_recalibrate=not no_bn_recalibrate, search=search,
                           sensitivity_points=sensitivity_points, ignore=ignore, confidence=confidence,
                           measure_rounds=measure_rounds, reporter=reporter, force=force,
                           trust_remote_code=trust_remote_code, **ssh)
    for note in result.notes:
        if not note.startswith(VALUE_NOTES):  # where the option values came from is said on stdout, below
            out_obj.warn(note)
    out_obj.print(summary_text(result, out))
    out_obj.result({"out": str(out), "widths": result.widths, "dense_predicted_ms": result.dense_predicted_ms,
                    "predicted_ms": result.predicted_ms, "budget_ms": result.budget_ms, "macs": result.macs,
                    "dense_macs": result.dense_macs, "measured": result.measured, "notes": result.notes})


VALUE_NOTES = ("option values:", "no --calib:")


def summary_text(result, out) -> str:
    from edgeprune.budget import meets_budget, tolerance_text

    lines = [f"[bold]pruned model[/] {out}"]
    lines += [f"  {n}" for n in result.notes if n.startswith(VALUE_NOTES)]
    search = result.final_round.get("search")
    if search:
        uniform = (search["seeds"].get("uniform") or {}).get("calib_loss")
        lines.append(f"  search: {search['evaluations']} candidates in {search['wall_s']:.1f} s, winner "
                     f"{search['winner']}, calibration loss {search['calib_loss']:.4g}"
                     + (f" (uniform at the same latency {uniform:.4g})" if uniform is not None else ""))
    if result.predicted_ms is not None:
        lines.append(f"  predicted {result.predicted_ms:.3f} ms (dense {result.dense_predicted_ms:.3f} ms, "
                     f"{result.dense_predicted_ms / result.predicted_ms:.2f}x)"
                     + (f", budget {result.budget_ms:.3f} ms" if result.budget_ms else ""))
    if result.macs is not None:
        lines.append(f"  MACs {result.macs / 1e6:.1f} M of {result.dense_macs / 1e6:.1f} M "
                     f"({result.macs / max(result.dense_macs, 1):.0%})")
    lines.append("  widths: " + ", ".join(f"{k} {v}" for k, v in list(result.widths.items())[:8])
                 + (" …" if len(result.widths) > 8 else ""))
    m = result.measured
    if m:
        judged = m.get("judged_ms", m["pruned_ms"])
        ok = meets_budget(judged, m["budget_ms"])
        iv = m.get("interval")
        spread = (f", {iv['confidence']:.0%} interval {iv['speedup'][0]:.2f}–{iv['speedup'][1]:.2f}x over "
                  f"{iv['rounds']} interleaved rounds" if iv and iv["rounds"] > 1 else ", interleaved")
        lines.append(f"  measured {m['pruned_ms']:.3f} ms vs dense {m['dense_ms']:.3f} ms ({m['speedup']:.2f}x"
                     f"{spread}) — {'[green]meets[/]' if ok else '[red]misses[/]'} {m['budget_ms']:.3f} ms "
                     f"({tolerance_text()}) after {len(result.rounds)} solve round(s)")
        if judged != m["pruned_ms"]:
            lines.append(f"  certified on the interval's pessimistic end: {judged:.3f} ms "
                         f"({'meets' if ok else 'misses'} the budget at {iv['confidence']:.0%} confidence)")
    return "\n".join(lines)
