"""`edgeprune demo`: the built-in example, end to end on this machine's CPU."""

from __future__ import annotations

import click


@click.command()
@click.option("--workdir", default="edgeprune-demo", show_default=True, type=click.Path(file_okay=False),
              help="Where the example's model, recipe, bundles and report go (reused on a second run).")
@click.option("--force", is_flag=True, help="Run every stage again even when its output is current.")
@click.pass_obj
def demo(out_obj, workdir, force):
    """Train a digits CNN (or reuse it), then profile, prune to 2x, distill, export and validate it here."""
    from edgeprune.demo import run_demo
    from edgeprune.progress import RichReporter
    from edgeprune.reports import gate_line

    with RichReporter(enabled=not out_obj.quiet) as reporter:
        s = run_demo(workdir, reporter, say=out_obj.print, force=force)
    stages = ", ".join(x["stage"] + (" (reused)" if x["skipped"] else f" {x['wall_s']:.0f} s") for x in s["stages"])
    verdict = {"passed": "[green]PASSED[/]", "incomplete": "[yellow]INCOMPLETE[/]"}.get(s["status"], "[red]FAILED[/]")
    lines = [f"[bold]edgeprune demo[/] {verdict} in {s['wall_s']:.0f} s",
             f"  latency (cpu, 1 thread, interleaved): dense {s['dense_ms']:.2f} ms -> pruned {s['pruned_ms']:.2f} ms "
             f"({s['speedup']:.2f}x, budget 2x)",
             f"  accuracy (digits test): dense {s['dense_accuracy']:.4f} -> pruned "
             f"{s['pruned_accuracy_before_distill']:.4f} -> distilled {s['pruned_accuracy']:.4f}"]
    lines += [f"  {gate_line(name, gate)}" for name, gate in s["gates"].items()]
    lines += [f"  stages: {stages}", f"  report: {s['report']}"]
    out_obj.print("\n".join(lines))
    out_obj.result(s)
