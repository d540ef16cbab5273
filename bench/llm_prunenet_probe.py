"""Why PruneNet trails magnitude on the LLM bench's trained model: what its policy ranks by, measured.

PruneNet's reward sees only the first MLP matrix (SwiGLU's gate): the KS distance between its singular values
before and after slicing rows. `docs/pruning.md` showed on synthetic matrices that the policy then learns to
keep the longest gate rows. This probe checks that on the trained checkpoints `bench/llm_bench.py` cached, and
measures the perplexity of that ranking itself (`l2-gate`: the gate row's L2 norm alone) beside `l2` (gate, up
and down of the channel) and the bench's PruneNet rows:

- Spearman of the reused policy's α (trained at 50 %, the bench's `prunenet-reuse` file) with the gate-row
  norms and with `l2`'s channel scores, per layer and seed;
- held-out perplexity of `l2-gate` at 30 / 50 / 70 % of MLP channels (no data, uniform per layer).

Run after the bench (it reads its cache): `python bench/llm_prunenet_probe.py`. Writes
bench/results/llm_prunenet_probe.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))


def main() -> int:
    import llm_bench as bench
    import numpy as np
    import torch
    from scipy.stats import spearmanr
    from transformers import AutoModelForCausalLM

    import edgeprune
    from edgeprune.pruning.criteria import CRITERIA, Criterion, score_groups
    from edgeprune.pruning.prunenet import first_matrix, load_policies, shape_key
    from edgeprune.pruning.space import transformer_space
    from edgeprune.pruning.transformer import find_layout

    torch.set_num_threads(1)
    res = json.loads((ROOT / "bench" / "results" / "llm.json").read_text())
    cfg = res["setup"]["config"]
    data = bench.corpus()
    val = bench.held_out(data["val"], cfg["seq_len"], res["setup"]["val_seqs"])
    cache = Path.home() / ".cache" / "edgeprune" / "llm-bench"

    def gate_l2(ctx):
        return [first_matrix(g).double().pow(2).sum(1).numpy() if g.kind == "mlp" else None for g in ctx.groups]

    if "l2-gate" not in CRITERIA:
        edgeprune.register_criterion(Criterion("l2-gate", gate_l2, summary="L2 of the first MLP matrix's row only"))
    out = {"correlation": [], "perplexity": []}
    ignore = [f"layers.{i}.heads" for i in range(cfg["layers"])]
    for seed, model in sorted(res["models"].items()):
        model_dir = Path(model["dir"])
        module = AutoModelForCausalLM.from_pretrained(str(model_dir))
        policies, _ = load_policies(cache / "policies" / f"{model_dir.name}-seed0.safetensors")
        mlp = [g for g in transformer_space(find_layout(module)) if g.kind == "mlp"]
        gate_norms, l2s = (score_groups(name, mlp, module).raw for name in ("l2-gate", "l2"))
        for i, (group, gate_norm, l2) in enumerate(zip(mlp, gate_norms, l2s)):
            gate = first_matrix(group)
            alpha = policies[shape_key(*gate.shape)].keep_probabilities(gate)
            out["correlation"].append({"seed": int(seed), "layer": i,
                                       "alpha_vs_gate_norm": float(spearmanr(alpha, gate_norm).statistic),
                                       "alpha_vs_l2": float(spearmanr(alpha, l2).statistic),
                                       "gate_norm_vs_l2": float(spearmanr(gate_norm, l2).statistic)})
        for ratio in bench.MLP_RATIOS:
            result = edgeprune.prune(str(model_dir), mode="uniform", ratio=ratio, criterion="l2-gate",
                                     seq_len=cfg["seq_len"], ignore=ignore, measure=False, search=0,
                                     cache=str(cache / "measurements.sqlite"))
            ppl = bench.perplexity(result.module, val)
            out["perplexity"].append({"seed": int(seed), "ratio": ratio, "ppl": ppl})
            print(f"seed {seed} l2-gate {ratio:.0%}: ppl {ppl:.3f}", flush=True)
    corr = out["correlation"]
    out["summary"] = {k: float(np.mean([c[k] for c in corr])) for k in ("alpha_vs_gate_norm", "alpha_vs_l2",
                                                                         "gate_norm_vs_l2")}
    for ratio in bench.MLP_RATIOS:
        ppls = [p["ppl"] for p in out["perplexity"] if p["ratio"] == ratio]
        out["summary"][f"l2_gate_ppl_{ratio}"] = [float(np.mean(ppls)), float(np.std(ppls, ddof=1))]
    path = ROOT / "bench" / "results" / "llm_prunenet_probe.json"
    path.write_text(json.dumps(out, indent=1))
    print(json.dumps(out["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
