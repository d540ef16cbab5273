"""`edgeprune show`: a latency table's layers, calibration and fidelity, and its staircase plot."""

from __future__ import annotations

import click


@click.command()
@click.argument("table_path", metavar="TABLE", type=click.Path(dir_okay=False))
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write staircase plots to this PNG.")
@click.option("--top", default=0, type=click.IntRange(0), help="Show only the N slowest layers.")
@click.pass_obj
def show(out, table_path, plot_path, top):
    """Print TABLE's per-layer latency and fidelity; plot latency vs channels per block."""
    from rich.table import Table

    from edgeprune.commands.profile import summary_text
    from edgeprune.latency.report import layer_rows, plot_staircases
    from edgeprune.latency.table import LatencyTable

    table = LatencyTable.load(table_path)
    rows = layer_rows(table)
    shown = sorted(rows, key=lambda r: r["ms"], reverse=True)[:top] if top else rows
    view = Table(title=f"{table.model['spec']} — per-layer latency (calibrated, {table.runtime['threads']} thread(s))")
    for col in ("layer", "kind", "c_in", "c_out", "ms", "share"):
        view.add_column(col, justify="right" if col in ("c_in", "c_out", "ms", "share") else "left")
    for r in shown:
        view.add_row(r["layer"], r["kind"], str(r["c_in"]), str(r["c_out"]), f"{r['ms']:.3f}", f"{r['share']:.1%}")
    out.print(view)
    out.print(summary_text(table, table_path, table.profile.get("cached_cells", 0)))
    if table.uncovered:
        out.warn("ops covered only by calibration: " + ", ".join(f"{k}×{v}" for k, v in table.uncovered.items()))
    if plot_path:
        plot_staircases(table, plot_path)
        out.print(f"staircase plot: {plot_path}")
    out.result({"table": table_path, "id": table.id, "layers": rows, "plot": plot_path,
                "fidelity": {k: v for k, v in table.fidelity.items() if k != "variants"}})
