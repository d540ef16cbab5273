"""`edgeprune adapt`: TT-MPD — prune to a latency budget and fine-tune on the device's unlabeled samples."""

from __future__ import annotations

import click

from .options import model_options, pruned_output_options


def _proxies(ctx: click.Context, param: click.Parameter, value: str) -> tuple:
    from edgeprune.pruning.ttmpd import check_proxies

    return check_proxies(v.strip() for v in value.split(",") if v.strip())


@click.command()
@model_options
@click.option("--table", "table_path", required=True, type=click.Path(dir_okay=False),
              help="Latency table from edgeprune profile (same model, device, runtime, threads).")
@click.option("--budget", required=True, metavar="4.2ms|2x",
              help="Latency budget in the table's estimator, or a speedup over the dense model.")
@click.option("--data", required=True, metavar="PATH",
              help="Unlabeled samples from the device's domain (labels, if present, are never read): "
                   ".npz/.pt/.safetensors, image folder, or 'digits-shifted' (the built-in shifted domain).")
@click.option("--probe-samples", type=click.IntRange(2), default=64, show_default=True,
              help="P: samples that adapt the teacher's BatchNorm and score each cut.")
@click.option("--finetune-samples", type=click.IntRange(2), default=256, show_default=True,
              help="F: samples the adapted teacher labels once (cached) for the fit runs and the fine-tune.")
@click.option("--proxies", default="feature,kl", show_default=True, callback=_proxies,
              help="The variables g predicts fine-tuned accuracy from: feature, entropy, agreement, kl.")
@click.option("--fit-runs", type=click.IntRange(2), default=6, show_default=True,
              help="Real prune-and-fine-tune runs g is fitted on.")
@click.option("--fit-epochs", type=click.IntRange(1), default=1, show_default=True,
              help="Fine-tune epochs of each fit run.")
@click.option("--fit-target", type=click.Choice(["kl", "agreement"]), default="kl", show_default=True,
              help="What each fit run is scored by on P against the adapted teacher: -KL (continuous) or top-1 "
                   "agreement (coarse).")
@click.option("--g-from", type=click.Path(file_okay=False, exists=True), default=None,
              help="Reuse g from an earlier adapt output of the same model (no fit runs).")
@click.option("--epochs", type=click.IntRange(1), default=5, show_default=True, help="Final fine-tune epochs.")
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=4.0, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--batch-size", type=click.IntRange(2), default=32, show_default=True)
@click.option("--criterion", default="l2", show_default=True,
              help="Which units of a group go first (l1, l2, bn_scale, random); g decides how many.")
@click.option("--sensitivity-points", type=click.IntRange(1, 16), default=4, show_default=True,
              help="Widths per group at which the proxies are read.")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Teacher cache directory (default: OUT.teacher-cache beside --out).")
@pruned_output_options
@click.pass_obj
def adapt(out_obj, model, weights, model_arg, input_shape, seq_len, regime, trust_remote_code, table_path, budget,
          data, probe_samples, finetune_samples, proxies, fit_runs, fit_epochs, fit_target, g_from, epochs, temperature,
          lr, batch_size, criterion, sensitivity_points, min_keep, ignore, threads, no_measure, cache_dir, device, host,
          ssh, seed, cache_path, out, force):
    """Prune MODEL to --budget and fine-tune it on unlabeled --data of its new domain (TT-MPD, docs/ttmpd.md)."""
    from edgeprune.api import adapt as run_adapt
    from edgeprune.atomic import check_writable
    from edgeprune.progress import RichReporter

    from .prune import summary_text

    check_writable(out, force)
    with RichReporter(enabled=not out_obj.quiet) as reporter:
        done = run_adapt(model, table_path, data, out, budget=budget, probe_samples=probe_samples,
                         finetune_samples=finetune_samples, proxies=proxies, fit_runs=fit_runs,
                         fit_epochs=fit_epochs, fit_target=fit_target, g_from=g_from, epochs=epochs,
                         temperature=temperature, lr=lr,
                         batch_size=batch_size, criterion=criterion, sensitivity_points=sensitivity_points,
                         min_keep=min_keep, ignore=ignore, threads=threads, measure=not no_measure,
                         cache_dir=cache_dir, device=device, host=host, weights=weights, model_args=model_arg,
                         input_shape=input_shape, seed=seed, cache=cache_path, reporter=reporter, force=force, **ssh)
    result, g = done.pruned, done.model
    said = ("option values:", "teacher adapted", "the teacher has no BatchNorm")
    for note in done.notes:
        if not note.startswith(said):
            out_obj.warn(note)
    lines = [summary_text(result, out)] + [f"  {n}" for n in done.notes if n.startswith(said[1:])]
    fit = ", ".join(f"{w:.3g}·{p}" for p, w in zip(g.proxies, g.weights))
    quality = (f"R² {g.r2:.2f}" if g.r2 is not None else "R² n/a") + (
        f", leave-one-out Spearman {g.loo_spearman:.2f}" if g.loo_spearman is not None else "")
    lines.append(f"  g: Â = {g.intercept:.3f} − ({fit}) [signed], "
                 + (f"fitted on {len(done.fit_runs)} runs ({quality})" if done.fit_runs else f"reused ({quality})"))
    lines.append(f"  fine-tune: {done.distill.train_s:.1f} s on {done.record['samples']['finetune']} unlabeled "
                 f"samples, teacher adapted on {done.record['samples']['probe']} "
                 f"({done.record['teacher_bn_layers']} BatchNorm layers), pseudo-labels "
                 + ("reused" if done.teacher_cache.reused else f"cached in {done.teacher_cache.build_s:.1f} s"))
    out_obj.print("\n".join(lines))
    out_obj.result({"out": str(out), "widths": result.widths, "dense_predicted_ms": result.dense_predicted_ms,
                    "predicted_ms": result.predicted_ms, "budget_ms": result.budget_ms, "measured": result.measured,
                    "g": g.to_dict(), "fit_runs": done.fit_runs, "train_s": done.distill.train_s,
                    "notes": done.notes})
