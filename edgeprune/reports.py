"""The validation report a person reads: report.json, report.md, a latency histogram, a Pareto plot.

Written atomically into one directory beside the bundles (never inside them: a bundle's checksummed set
does not change when it is validated). report.md links the plots by relative path, so it reads right when
opened in its folder. format_version 2: gates carry `status` (passed / failed / skipped) and their `rule`;
the accuracy gates are `accuracy_vs_baseline` (relative) and `accuracy_floor` (absolute); `passed` is true
only when no requested gate was skipped (`status` says "incomplete" otherwise).
"""

from __future__ import annotations

import json
from pathlib import Path


def _fmt(value, spec: str = ".3f") -> str:
    return "—" if value is None else format(value, spec)


def device_state_line(state: dict) -> str:
    """Clocks and temperatures before → after the timed runs, as far as the device exposes them."""
    before, after = state.get("before") or {}, state.get("after") or {}
    parts = []
    if before.get("cpu_governor"):
        parts.append(f"CPU governor {before['cpu_governor']}")
    if before.get("cpu_cur_freq_khz") and after.get("cpu_cur_freq_khz"):
        parts.append(f"CPU clock {before['cpu_cur_freq_khz'] / 1e3:.0f} → {after['cpu_cur_freq_khz'] / 1e3:.0f} MHz")
    hottest = [max((z.get("temp_c") or float("-inf") for z in s.get("thermal") or []), default=None)
               for s in (before, after)]
    if all(t is not None and t > float("-inf") for t in hottest):
        parts.append(f"hottest zone {hottest[0]:.1f} → {hottest[1]:.1f} °C")
    for gpu in after.get("gpu_devfreq") or []:
        if gpu.get("cur_freq_hz"):
            parts.append(f"GPU {gpu.get('device')} {gpu['cur_freq_hz'] / 1e6:.0f} MHz")
    return "; ".join(parts) + "." if parts else "clocks and temperatures are not readable on this device."


STATUS_LINE = {"passed": "**PASSED**: every requested gate ran and held.",
               "incomplete": "**INCOMPLETE**: no gate failed, but some were skipped, so they prove nothing: ",
               "failed": "**FAILED**: "}
GATE_STATE = {"passed": "pass", "failed": "**FAIL**", "skipped": "skipped"}
PLOT_TITLES = {"latency.png": "Latency of every timed run", "pareto.png": "Accuracy vs latency"}


def markdown(validation, baseline, plot_files: list | tuple = ()) -> str:
    """report.md: the verdict, one row per bundle, each gate with its rule, and the plots linked beside it."""
    from .validation import interval_text

    status = validation.status
    detail = {"passed": "", "incomplete": "; ".join(validation.skipped), "failed": "; ".join(validation.failed)}
    lines = ["# edgeprune validation report", "", STATUS_LINE[status] + detail[status], ""]
    lines += ["| bundle | device | parity | accuracy | p50 ms | p90 ms | p99 ms | estimate ms | predicted ms "
              "| budget ms | cold start ms |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in validation.reports + ([baseline] if baseline else []):
        lat = r["latency"]
        gates = r.get("gates", {})
        acc = (r.get("accuracy") or {}).get("top1")
        budget = (gates.get("latency") or {}).get("limit")
        cold = lat["cold_start"]["session_ms"] + lat["cold_start"]["first_run_ms"]
        name = Path(r["bundle"]).name + (" (baseline)" if r is baseline else "")
        lines.append(f"| {name} | {r.get('device')} | {'ok' if r['parity']['ok'] else 'FAIL'} | {_fmt(acc, '.4f')} | "
                     f"{lat['p50_ms']:.3f} | {lat['p90_ms']:.3f} | {lat['p99_ms']:.3f} | {lat['estimate_ms']:.3f} | "
                     f"{_fmt(r.get('predicted_ms'))} | {_fmt(budget)} | {cold:.1f} |")
    lines += ["", "Latency: batch 1, warm-up excluded, every timed run (p50/p90/p99); the gate reads the table's "
              "estimator (median of per-pass minima) on the same session. Cold start = session creation + first "
              "run, reported apart.", ""]
    first = validation.reports[0] if validation.reports else {}
    lines += [f"Device: {first.get('where', '—')}; " + device_state_line(first.get("device_state") or {}), ""]
    for r in validation.reports:
        lines.append(f"## {Path(r['bundle']).name}")
        lines.append(f"- measured: {interval_text(r['latency'])}")
        lines += [f"- {gate_line(name, gate)}" for name, gate in r.get("gates", {}).items()]
        lines.append("")
    if plot_files:
        lines += ["## Plots", ""]
        lines += [f"![{PLOT_TITLES.get(f, f)}]({f})" for f in plot_files]  # relative: beside report.md
        lines.append("")
    return "\n".join(lines)


def gate_line(name: str, gate: dict) -> str:
    """`name: pass (rule; value v, limit l)` — the rule says relative or absolute, so a limit is never a puzzle."""
    if gate["status"] == "skipped":
        return f"{name}: skipped ({gate['rule']}: {gate['why']})"
    return (f"{name}: {GATE_STATE[gate['status']]} ({gate['rule']}; value {_fmt(gate.get('value'), '.4g')}, "
            f"limit {_fmt(gate.get('limit'), '.4g')})")


def plots(validation, baseline, folder: Path) -> list:
    """latency.png (histogram of every timed run per bundle); pareto.png (accuracy vs latency, ≥ 2 bundles)."""
    plt = _pyplot()
    reports = validation.reports + ([baseline] if baseline else [])
    figures = {"latency.png": latency_figure(reports, baseline), "pareto.png": pareto_figure(reports, baseline)}
    written = []
    for name, fig in figures.items():
        if fig is not None:
            fig.savefig(folder / name, dpi=120)
            plt.close(fig)
            written.append(name)
    return written


def _pyplot():
    """pyplot on the file-only backend: reports are written on machines without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(report: dict, baseline) -> str:
    return Path(report["bundle"]).name + (" (baseline)" if report is baseline else "")


def _budgets(reports: list) -> list:
    return sorted({((r.get("gates") or {}).get("latency") or {}).get("limit") for r in reports} - {None})


def latency_figure(reports: list, baseline=None):
    """Histogram of every timed run per bundle on shared bins, the budget as a labelled line."""
    import numpy as np

    plt = _pyplot()
    runs = np.concatenate([np.asarray(r["latency"]["runs_ms"], dtype=float) for r in reports])
    # bins end at the slowest p99 (x 1.1), slower runs counted in the last one: a single noise spike must
    # not squeeze every bar into one column
    top = max(r["latency"]["p99_ms"] for r in reports) * 1.1
    bins = np.linspace(runs.min(), max(top, runs.min() * 1.01), 60)
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in reports:
        ax.hist(np.clip(r["latency"]["runs_ms"], None, bins[-1]), bins=bins, alpha=0.6, label=_label(r, baseline))
    for limit in _budgets(reports):
        ax.axvline(limit, linestyle="--", color="red", linewidth=1.2, label=f"budget {limit:.3g} ms")
    ax.set_title(f"Latency per run on {reports[0].get('device') or 'the device'} (batch 1, warm-up excluded)",
                 fontsize=10)
    ax.set_xlabel("latency per run (ms); slower runs are counted in the last bin")
    ax.set_ylabel("runs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def pareto_figure(reports: list, baseline=None):
    """Accuracy vs latency of every bundle with an accuracy (None below two); names in the legend, where
    they cannot run off the axes as labels beside the points did."""
    plt = _pyplot()
    points = [(r["latency"]["estimate_ms"], r["accuracy"]["top1"], _label(r, baseline)) for r in reports
              if (r.get("accuracy") or {}).get("top1") is not None]
    if len(points) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for ms, acc, name in points:
        ax.scatter([ms], [acc], s=40, label=f"{name}: {ms:.2f} ms, {acc:.4f}")
    for limit in _budgets(reports):
        ax.axvline(limit, linestyle="--", color="red", linewidth=1.2, label=f"budget {limit:.3g} ms")
    ax.margins(x=0.15, y=0.15)
    low, high = ax.get_ylim()
    ax.set_ylim(low, min(high, 1.005))  # no axis room above a perfect score
    ax.set_title("Accuracy vs latency (table estimator)", fontsize=10)
    ax.set_xlabel("latency (ms, table estimator)")
    ax.set_ylabel("top-1 accuracy")
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    return fig


def write_report(out: str | Path, validation, baseline=None) -> Path:
    from .atomic import atomic_dir

    with atomic_dir(out) as tmp:
        tmp = Path(tmp)
        files = plots(validation, baseline, tmp)
        data = {"format_version": 2, "kind": "validation_report", "passed": validation.passed,
                "status": validation.status, "failed": validation.failed, "skipped": validation.skipped,
                "bundles": validation.reports, "baseline": baseline, "plots": files}
        (tmp / "report.json").write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")
        (tmp / "report.md").write_text(markdown(validation, baseline, files))
    return Path(out)
