"""`edgeprune run RECIPE.yaml`: every stage from one file, skipping those whose output is current."""

from __future__ import annotations

import click

from .options import trust_remote_code_option


@click.command()
@click.argument("recipe", type=click.Path())
@click.option("--force", is_flag=True, help="Run every stage even when its output is current.")
@trust_remote_code_option("recipe", where="the model directory of {}")
@click.pass_obj
def run(out_obj, recipe, force, trust_remote_code):
    """Run RECIPE: profile -> prune -> distill -> export -> validate (see the recipe format in the docs).

    The whole recipe is checked before any stage runs.
    """
    from edgeprune.progress import RichReporter
    from edgeprune.recipe import load_recipe, run_recipe

    loaded = load_recipe(recipe)
    with RichReporter(enabled=not out_obj.quiet) as reporter:
        runs = run_recipe(loaded, reporter, force=force, say=out_obj.print, trust_remote_code=trust_remote_code)
    out_obj.print("\n".join(f"  {r.name:<13} {'skipped (current)' if r.skipped else f'{r.wall_s:7.1f} s'}"
                            for r in runs))
    out_obj.result({"out": str(loaded.out), "stages": [{"stage": r.name, "skipped": r.skipped, "wall_s": r.wall_s,
                                                        "output": r.output, "detail": r.detail} for r in runs]})
