"""`edgeprune distill`: recover a pruned model's accuracy from its teacher, with cached teacher outputs."""

from __future__ import annotations

import click

from .options import _model_args, trust_remote_code_option


@click.command()
@click.option("--student", required=True, type=click.Path(file_okay=False),
              help="The pruned-model directory (from edgeprune prune).")
@click.option("--teacher", required=True, metavar="SPEC", help="The unpruned model (a --model spec).")
@click.option("--teacher-weights", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Weights of the teacher architecture (safetensors or a weights_only state_dict).")
@click.option("--teacher-arg", "teacher_arg", multiple=True, metavar="KEY=VALUE", callback=_model_args,
              help="Teacher constructor option (default: the student's source args).")
@click.option("--data", required=True, metavar="PATH",
              help="Fine-tune samples, labelled or not: .npz/.pt/.safetensors, image folder, text file, 'digits'.")
@click.option("--epochs", type=click.IntRange(1), default=5, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=32, show_default=True)
@click.option("--temperature", type=click.FloatRange(0, min_open=True), default=4.0, show_default=True)
@click.option("--alpha", type=click.FloatRange(0, 1), default=0.9, show_default=True,
              help="Weight of the distillation term when labels exist (1 - alpha: cross-entropy).")
@click.option("--top-k", type=click.IntRange(1), default=None, help="Cache only the teacher's top-k logits.")
@click.option("--online", is_flag=True, help="Run the teacher every step instead of caching (the baseline).")
@click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
              help="Teacher cache directory (default: OUT.teacher-cache beside --out).")
@click.option("--holdout", type=click.FloatRange(0, 0.9), default=0.2, show_default=True,
              help="Fraction of labelled data kept out of training to report accuracy.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Distilled pruned-model directory.")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
@trust_remote_code_option("teacher")
@click.pass_obj
def distill(out_obj, student, teacher, teacher_weights, teacher_arg, data, epochs, lr, batch_size, temperature,
            alpha, top_k, online, cache_dir, holdout, seed, out, force, trust_remote_code):
    """Distil TEACHER into the pruned STUDENT on --data; write a pruned-model directory."""
    from edgeprune.api import distill as run_distill
    from edgeprune.atomic import check_writable
    from edgeprune.progress import RichReporter

    check_writable(out, force)
    with RichReporter(enabled=not out_obj.quiet):  # the library reports the teacher pass and optimiser steps to it
        done = run_distill(student, teacher, data, out, teacher_weights=teacher_weights,
                           teacher_args=teacher_arg or None, epochs=epochs, lr=lr, batch_size=batch_size,
                           temperature=temperature, alpha=alpha, top_k=top_k, online=online, cache_dir=cache_dir,
                           holdout=holdout, seed=seed, force=force, trust_remote_code=trust_remote_code)
    r, acc = done.result, done.accuracy
    cache = ""
    if done.cache_dir:
        how = "reused" if done.cache_reused else f"built in {r.teacher_s:.1f} s"
        cache = f", teacher cache {how}: {done.cache_dir}"
    lines = [f"[bold]distilled[/] {out}  ({r.mode} teacher, {len(r.losses)} epochs, {r.train_s:.1f} s training"
             f"{cache})"]
    if acc:
        lines.append(f"  held-out accuracy: teacher {acc['teacher']:.4f}, student {acc['student_before']:.4f} -> "
                     f"{acc['student_after']:.4f}")
    out_obj.print("\n".join(lines))
    out_obj.result({"out": str(out), "mode": r.mode, "train_s": r.train_s, "teacher_s": r.teacher_s,
                    "cache_dir": str(done.cache_dir) if done.cache_dir else None, "cache_reused": done.cache_reused,
                    "accuracy": acc, "losses": r.losses})
