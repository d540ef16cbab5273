"""Publish the latency-table numbers: fidelity vs a MACs estimate, noise ceiling, table cost, cache hits.

Run from the repository root: `python bench/profile_bench.py [--variants 50] [--threads 1 2] [--models ...]`.
Writes bench/results/profile.json, the tables under bench/results/tables/, and docs/results/profile.md.
Every figure of one (model, threads) row comes from one profile run, so ratios are measured side by side.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


def tiny_llama(path: Path) -> str:
    """A LLaMA-shaped causal LM built from a config (GQA, SwiGLU, RoPE), randomly initialised with a seed."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    # ~16 M parameters (63 MB fp32): large enough that a decode step streams its weights from memory like a real
    # LM does, instead of living in the cache (a 4-layer, 256-wide model measured a 4 % noise ceiling in decode).
    config = LlamaConfig(vocab_size=8000, hidden_size=384, intermediate_size=1024, num_hidden_layers=6,
                         num_attention_heads=6, num_key_value_heads=3, max_position_embeddings=1024,
                         tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(str(path))
    return str(path)


def table_cost(prof: dict, wall_s: float, fidelity_variants: int) -> tuple:
    """(table cost s, one variant measured directly s) of a profile that took `wall_s`.

    The table's cost is the profile without its fidelity check: everything else — cells, the dense model's export
    and timing, and the calibration variants' exports and timings, which the table needs — stays in. The fidelity
    variants' share of the variant exports and whole-model rounds (`fidelity_variants` of the `variants_built`
    exports and of the `models_measured` models in each round) comes out. Measuring a variant directly is exporting
    it and timing it once (one round), which is what a user without a table would do per candidate.
    """
    n_models = max(1, prof.get("models_measured") or 1)
    built = max(1, prof.get("variants_built") or 1)
    round0 = (prof.get("model_round_s") or [prof["models_s"]])[0]
    per_variant_direct = prof["variants_export_s"] / built + round0 / n_models
    fidelity = prof["variants_export_s"] * fidelity_variants / built + prof["models_s"] * fidelity_variants / n_models
    return wall_s - fidelity, per_variant_direct


def recost(row: dict, table: dict | None) -> dict:
    """`row`'s cost figures recomputed by `table_cost` from its saved table, when that table is the row's own."""
    if table is None or table.get("id") != row.get("table_id"):
        return row
    cost, per_variant = table_cost(table["profile"], row["profile_wall_s"], table["fidelity"].get("n_variants") or 0)
    direct = 20 * per_variant
    return {**row, "table_cost_s": cost, "direct_20_variants_s": direct, "table_vs_direct_20": cost / direct}


def row_for(name: str, threads: int, first, second, first_s: float, second_s: float) -> dict:
    table = first.table
    prof = table.profile
    fid = table.fidelity
    cost, per_variant_direct = table_cost(prof, first_s, fid.get("n_variants") or 0)
    return {
        "model": name, "threads": threads, "table_id": table.id, "layers": len(table.layers),
        "cells": len(table.cells), "calibration": table.calibration,
        "fidelity": {k: v for k, v in fid.items() if k != "variants"},
        "variants": fid.get("variants", []),
        "profile_wall_s": first_s, "cells_s": prof["table_s"], "table_cost_s": cost,
        "direct_per_variant_s": per_variant_direct, "direct_20_variants_s": 20 * per_variant_direct,
        "table_vs_direct_20": cost / (20 * per_variant_direct),
        "reprofile_cached_s": second_s, "reprofile_cached_cells": second.cached_cells,
        "regrouped_cell_groups": prof.get("regrouped"), "max_reference_drift": prof.get("max_drift"),
    }


def markdown(rows: list, meta: dict) -> str:
    out = ["# Latency-table fidelity and cost (ONNX Runtime CPU EP, this repository's CI VM)", "",
           f"Measured {meta['date']} on {meta['machine']} with `python bench/profile_bench.py "
           f"--variants {meta['variants']}`; raw data in `bench/results/profile.json`.", "",
           "Held-out variants: non-uniform random widths per layer (kept 30–100 %), half on the alignment step "
           "and half off it, predicted from the frozen table (never measured as cells). MACs = dense latency × "
           "MACs ratio.", "",
           "| model | threads | variants | table ±10 % | table ±5 % | table MAPE | table ρ | MACs ±10 % | MACs ±5 % "
           "| MACs MAPE | MACs ρ | off-step ±10 % (table / MACs) | exact cells | noise ceiling | calibration |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, m = r["fidelity"], r["fidelity"].get("macs", {})
        arb = f.get("arbitrary", {})
        arb_m = _subset_macs(r["variants"], aligned=False)
        cal = r["calibration"]
        out.append(
            f"| {r['model']} | {r['threads']} | {f.get('n_variants')} | {f['within_10']:.0%} | {f['within_5']:.0%} | "
            f"{f['mape']:.1%} | {f['spearman']:.3f} | {m['within_10']:.0%} | {m['within_5']:.0%} | {m['mape']:.1%} | "
            f"{m['spearman']:.3f} | {arb.get('within_10', 0):.0%} / {arb_m:.0%} | {f['exact_cell_share']:.0%} | "
            f"{f.get('noise_ceiling') or 0:.0%} | {cal['kind']} {cal['value']:.3g} |")
    out += ["", "## Cost", "",
            "| model | threads | cells | table cost (s) | 20 variants measured directly (s) | table ÷ direct-20 | "
            "cache-hit re-profile (s) |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['threads']} | {r['cells']} | {r['table_cost_s']:.0f} | "
                   f"{r['direct_20_variants_s']:.0f} | {r['table_vs_direct_20']:.2f} | {r['reprofile_cached_s']:.1f} |")
    out += ["", "Table cost = profile wall time without the fidelity variants: cells (and cold cells), the dense "
            "model's export and timing, and the calibration variants' exports and timings. Direct = per variant: "
            "its export plus one interleaved measurement round, × 20.", ""]
    return "\n".join(out)


def _subset_macs(variants: list, aligned: bool) -> float:
    sel = [v for v in variants if v["aligned"] == aligned]
    if not sel:
        return 0.0
    return sum(abs(v["macs_predicted_ms"] - v["measured_ms"]) / v["measured_ms"] <= 0.10 for v in sel) / len(sel)


def main() -> None:
    import edgeprune

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", type=int, default=50)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--models", nargs="+", default=["torchvision:resnet18", "torchvision:mobilenet_v2",
                                                       "tiny-llama:prefill", "tiny-llama:decode"])
    parser.add_argument("--out", default=str(RESULTS / "profile.json"))
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite the markdown from the JSON, recomputing costs from the saved tables")
    args = parser.parse_args()
    if args.report_only:
        data = json.loads(Path(args.out).read_text())
        rows = []
        for r in data["rows"]:
            path = RESULTS / "tables" / f"{r['model'].replace(':', '_')}-t{r['threads']}.json"
            rows.append(recost(r, json.loads(path.read_text()) if path.exists() else None))
        data["rows"] = rows
        Path(args.out).write_text(json.dumps(data, indent=1, sort_keys=True))
        (ROOT / "docs" / "results" / "profile.md").write_text(markdown(data["rows"], data["meta"]))
        return
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "tables").mkdir(exist_ok=True)
    rows = []
    out_path = Path(args.out)
    if out_path.exists():
        previous = json.loads(out_path.read_text())
        rows = [r for r in previous.get("rows", []) if (r["model"], r["threads"]) not in
                {(m, t) for m in args.models for t in args.threads}]
    with tempfile.TemporaryDirectory(prefix="edgeprune-bench-") as tmp:
        tmp = Path(tmp)
        llama = None
        for threads in args.threads:
            for name in args.models:
                kwargs = {}
                spec = name
                if name.startswith("tiny-llama"):
                    llama = llama or tiny_llama(tmp / "tiny-llama")
                    spec = llama
                    kwargs = {"seq_len": 128, "regime": name.split(":")[1]}
                cache = tmp / f"cache-{name.replace(':', '_')}-{threads}.sqlite"
                table_path = RESULTS / "tables" / f"{name.replace(':', '_')}-t{threads}.json"
                print(f"== {name} @ {threads} thread(s)", flush=True)
                t0 = time.time()
                first = edgeprune.profile(spec, "cpu", table_path, threads=threads, variants=args.variants,
                                          cache=cache, force=True, **kwargs)
                first_s = time.time() - t0
                t1 = time.time()
                second = edgeprune.profile(spec, "cpu", None, threads=threads, variants=args.variants, cache=cache,
                                           **kwargs)
                second_s = time.time() - t1
                row = row_for(name, threads, first, second, first_s, second_s)
                rows.append(row)
                f = row["fidelity"]
                print(f"   table ±10% {f['within_10']:.0%}  MACs ±10% {f['macs']['within_10']:.0%}  "
                      f"MAPE {f['mape']:.1%} vs {f['macs']['mape']:.1%}  noise ceiling {f.get('noise_ceiling')}  "
                      f"cost {row['table_cost_s']:.0f}s vs direct-20 {row['direct_20_variants_s']:.0f}s  "
                      f"cached {second_s:.1f}s", flush=True)
                meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.node()} "
                        f"({platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores)",
                        "variants": args.variants, "python": sys.version.split()[0]}
                out_path.write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, sort_keys=True))
                (ROOT / "docs" / "results").mkdir(parents=True, exist_ok=True)
                (ROOT / "docs" / "results" / "profile.md").write_text(markdown(rows, meta))


if __name__ == "__main__":
    main()
