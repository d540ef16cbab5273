"""`edgeprune grow`: train a model from a shallow seed, adding blocks when FRAGrow's overfitting risk says so."""

from __future__ import annotations

import click

from .options import _input_shape, _model_args


@click.command()
@click.option("--model", required=True, metavar="SPEC",
              help="The target: torchvision:NAME, timm:NAME or an edgeprune model directory; its depth is the "
                   "target depth.")
@click.option("--model-arg", "model_arg", multiple=True, metavar="KEY=VALUE", callback=_model_args,
              help="Constructor option, repeatable (e.g. num_classes=10, or timm's layers=[3,3,3,3] for the depth).")
@click.option("--input-shape", metavar="1x3x224x224", default=None, callback=_input_shape,
              help="Input shape (default: from the model family).")
@click.option("--data", default=None, metavar="PATH",
              help="Labelled training samples: .npz/.pt/.safetensors, image folder, or 'digits:train'.")
@click.option("--test-data", default=None, metavar="PATH", help="Labelled samples to report accuracy on.")
@click.option("--policy", type=click.Choice(["fragrow", "periodic", "convergent", "vanilla"]), default="fragrow",
              show_default=True, help="When to grow; vanilla trains the target from scratch.")
@click.option("--seed-depth", default="1", show_default=True, metavar="N|N,N,...",
              help="Blocks per stage in the seed: one number, or one per stage front to back.")
@click.option("--epochs", type=click.IntRange(2), default=30, show_default=True, help="Epochs in all.")
@click.option("--final-epochs", type=click.IntRange(1), default=10, show_default=True,
              help="Minimum epochs of the final cosine phase after the last growth.")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=0.05, show_default=True,
              help="The constant learning rate while growing (SGD, Nesterov momentum 0.9).")
@click.option("--batch-size", type=click.IntRange(1), default=64, show_default=True)
@click.option("--alpha", type=float, default=4.0, show_default=True,
              help="FRAGrow's alpha: the ORL (points) at which the interval is half of I_max.")
@click.option("--holdout", type=click.FloatRange(0, 0.5, min_open=True), default=0.01, show_default=True,
              help="Fraction of --data held out to measure the overfitting risk (at least --min-holdout samples).")
@click.option("--min-holdout", type=click.IntRange(1), default=32, show_default=True)
@click.option("--patience", type=click.IntRange(1), default=2, show_default=True,
              help="convergent: epochs without a better hold-out accuracy before growing.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Model directory to write.")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
@click.pass_obj
def grow(out_obj, model, model_arg, input_shape, data, test_data, policy, seed_depth, epochs, final_epochs, lr,
         batch_size, alpha, holdout, min_holdout, patience, seed, out, force):
    """Grow MODEL from a shallow seed on --data (FRAGrow, or a baseline policy); write a model directory."""
    from edgeprune.api import grow as run_grow
    from edgeprune.progress import RichReporter

    with RichReporter(enabled=not out_obj.quiet) as reporter:
        done = run_grow(model, data, out, test_data=test_data, policy=policy, seed_depth=seed_depth, epochs=epochs,
                        final_epochs=final_epochs, lr=lr, batch_size=batch_size, alpha=alpha, holdout=holdout,
                        min_holdout=min_holdout, patience=patience, seed=seed, model_args=model_arg,
                        input_shape=input_shape, force=force, reporter=reporter)
    r = done.result
    schedule = ", ".join(f"{s['block']}@{s['epoch']}" + ("" if s["how"] == "copy" else " (fresh)")
                         for s in done.provenance["growth"]["schedule"]) or "none (vanilla)"
    depths = "-".join(str(d) for d in r.seed_depths.values())
    target = "-".join(str(d) for d in r.stages.values())
    lines = [f"[bold]grown[/] {out}  ({policy}: {depths} -> {target} blocks per stage, {len(r.history)} epochs, "
             f"{r.train_s:.1f} s training)",
             f"  schedule (block@epoch): {schedule}",
             f"  final cosine phase from epoch {r.final_start + 1}; last hold-out ORL {r.history[-1].orl:.1f} points"]
    if done.test_accuracy is not None:
        lines.append(f"  test accuracy: {done.test_accuracy:.4f}")
    out_obj.print("\n".join(lines))
    out_obj.result({"out": str(out), "policy": policy, "train_s": r.train_s, "test_accuracy": done.test_accuracy,
                    "i_max": r.i_max, "stages": r.stages, "seed_depths": r.seed_depths,
                    "schedule": done.provenance["growth"]["schedule"], "final_start": r.final_start})
