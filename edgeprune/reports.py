"""The validation report a person reads: report.json, report.md, a latency histogram, a Pareto plot.

Written atomically into one directory beside the bundles (never inside them: a bundle's checksummed set
does not change when it is validated).
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


def markdown(validation, baseline) -> str:
    lines = ["# edgeprune validation report", ""]
    if validation.failed:
        lines += ["**FAILED**: " + "; ".join(validation.failed), ""]
    else:
        lines += ["**PASSED**: every gate that applies holds.", ""]
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
        for name, gate in r.get("gates", {}).items():
            state = {True: "pass", False: "**FAIL**", None: "not checked"}[gate["ok"]]
            detail = gate.get("why") or \
                f"value {_fmt(gate.get('value'), '.4g')}, limit {_fmt(gate.get('limit'), '.4g')}"
            lines.append(f"- {name}: {state} ({detail})")
        lines.append("")
    return "\n".join(lines)


def plots(validation, baseline, folder: Path) -> list:
    """latency.png (histogram of every timed run per bundle); pareto.png (accuracy vs latency, ≥ 2 bundles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    reports = validation.reports + ([baseline] if baseline else [])
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in reports:
        ax.hist(r["latency"]["runs_ms"], bins=60, alpha=0.6, label=Path(r["bundle"]).name)
        gate = (r.get("gates") or {}).get("latency") or {}
        if gate.get("limit"):
            ax.axvline(gate["limit"], linestyle="--", color="red", linewidth=1)
    ax.set_xlabel("latency per run (ms), batch 1")
    ax.set_ylabel("runs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(folder / "latency.png", dpi=120)
    plt.close(fig)
    written.append("latency.png")
    points = [(r["latency"]["estimate_ms"], r["accuracy"]["top1"], Path(r["bundle"]).name) for r in reports
              if (r.get("accuracy") or {}).get("top1") is not None]
    if len(points) >= 2:
        fig, ax = plt.subplots(figsize=(6, 4))
        for ms, acc, name in points:
            ax.scatter([ms], [acc])
            ax.annotate(name, (ms, acc), fontsize=8)
        ax.set_xlabel("latency (ms, table estimator)")
        ax.set_ylabel("top-1 accuracy")
        fig.tight_layout()
        fig.savefig(folder / "pareto.png", dpi=120)
        plt.close(fig)
        written.append("pareto.png")
    return written


def write_report(out: str | Path, validation, baseline=None) -> Path:
    from .atomic import atomic_dir

    with atomic_dir(out) as tmp:
        tmp = Path(tmp)
        files = plots(validation, baseline, tmp)
        data = {"format_version": 1, "kind": "validation_report", "passed": not validation.failed,
                "failed": validation.failed, "bundles": validation.reports, "baseline": baseline, "plots": files}
        (tmp / "report.json").write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")
        (tmp / "report.md").write_text(markdown(validation, baseline))
    return Path(out)
