"""Human views of a latency table: per-layer rows and staircase plots (latency vs channels per block)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from .blocks import Block
from .table import LatencyTable, block_term


def _display_ms(table: LatencyTable, raw: float, block: Block) -> float:
    """A layer's calibrated ms for display: its layout-conversion term (a fit over whole models, which may be
    negative for one layer) stays out, as does an additive calibration's constant."""
    cal = table.calibration
    if cal.get("kind") == "layout":
        return raw * cal["value"]
    return block_term(cal, raw, block, table.step)


def layer_rows(table: LatencyTable) -> list:
    """One dict per layer: widths, calibrated ms at current widths, share of the model."""
    rows = []
    for name, layer in table.layers.items():
        sig = table.signatures[layer["signature"]]["signature"]
        block = Block(name, layer["kind"], sig, layer["c_in"], layer["c_out"])
        raw, exact = table.block_ms(block)
        rows.append({"layer": name, "kind": layer["kind"], "c_in": layer["c_in"], "c_out": layer["c_out"],
                     "ms": _display_ms(table, raw, block),
                     "exact": exact, "signature": layer["signature"]})
    total = sum(r["ms"] for r in rows) or 1.0
    for r in rows:
        r["share"] = r["ms"] / total
    return rows


def plot_staircases(table: LatencyTable, path: str | Path, max_panels: int = 12) -> Path:
    """Latency vs output channels at each signature's current input width, aligned and off-step points apart."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from edgeprune.atomic import atomic_file

    weight = defaultdict(float)
    current = {}
    for row in layer_rows(table):
        weight[row["signature"]] += row["ms"]
        current.setdefault(row["signature"], row["c_in"])
    sigs = sorted(weight, key=weight.get, reverse=True)[:max_panels]
    cols = min(3, len(sigs))
    rows = (len(sigs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, sig_key in zip(axes.flat, sigs):
        entry = table.signatures[sig_key]
        cells = [c for c in table.cells.values() if c["signature"] == sig_key]
        if entry["tied"]:
            xs = sorted(cells, key=lambda c: c["c_out"])
            label = "c (tied)"
        else:
            c_in = current[sig_key]
            near = min({c["c_in"] for c in cells}, key=lambda v: abs(v - c_in))
            xs = sorted((c for c in cells if c["c_in"] == near), key=lambda c: c["c_out"])
            label = f"c_out at c_in={near}"
        aligned = [c for c in xs if c["c_out"] % table.step == 0]
        off = [c for c in xs if c["c_out"] % table.step != 0]
        ax.plot([c["c_out"] for c in aligned], [c["estimate_ms"] for c in aligned], "o-", label=f"on step {table.step}")
        ax.plot([c["c_out"] for c in off], [c["estimate_ms"] for c in off], "s--", label="off step")
        sig = entry["signature"]
        title = sig["kind"] + (f" k{sig['kernel'][0]} s{sig['stride'][0]} {sig['hw'][0]}px" if sig["kind"] == "conv"
                               else f" {sig.get('op', '')}")
        if sig.get("groups") == "depthwise":
            title += " dw"
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(label, fontsize=8)
        ax.set_ylabel("ms (cell)", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(sigs):]:
        ax.axis("off")
    rt = table.runtime
    fig.suptitle(f"{table.model['spec']} on {table.fingerprint.get('device')} · {rt['backend']} "
                 f"{rt['precision']} · {rt['threads']} thread(s)", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    with atomic_file(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)
    return path
