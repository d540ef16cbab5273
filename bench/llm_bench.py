"""LLM structured pruning on a real small model: held-out perplexity of every criterion, no fine-tuning.

With no network, a small LLaMA-architecture model (GQA: 16 query heads over 4 kv heads by default, a byte-level
tokenizer) is trained inside the bench on text every Python install ships: `pydoc_data.topics` plus the
docstrings of the standard library read with `ast` (test suites skipped). Documents are split 95 / 5 into
training and held-out text by a hash of their name. Checkpoints are cached under `--cache-dir`, keyed by model
config, training settings, corpus hash, seed and steps, so a rerun trains nothing.

For every training seed and calibration set (`--calib-seqs` windows of training text, the same tokens for every
criterion), each method prunes the trained directory through the public API (`edgeprune.prune(dir, mode=...,
ratio=..., criterion=..., calib=file, ignore=[...])`, what a user runs) and the pruned module's per-byte
perplexity on the held-out text is taken as it comes out (no fine-tuning), with the wall time of the prune call.

- MLP rows: `ratio` of every layer's MLP channels removed, every `layers.N.heads` group ignored (heads whole).
- Head rows: `ratio` of every layer's kv heads removed (each with the query heads sharing it), every
  `layers.N.mlp` group ignored. The library prunes heads and channels at one ratio per call, so the two are
  measured apart; global-mode rows rank the units of one kind across all layers.
- Data-free criteria read no calibration tokens: `l2` runs once per training seed; `random` and PruneNet run
  once per calibration-set index with that index as their seed (so their spread includes their own seed).

Then, if `--recovery-steps` > 0, the three best methods at 50 % of MLP channels are saved as pruned-model
directories and distilled for a few steps on cached teacher logits (`edgeprune.distill`) on calibration set 0.

Results are written after every (seed, calibration set), so a stopped run keeps its rows and a rerun resumes.
Run from the repository root (full run: docs/llm.md, "Numbers"):
`python bench/llm_bench.py [--seeds 0 1 2] [--calib-sets 3] [--train-minutes 10] [--smoke]`.
Writes bench/results/llm.json and docs/results/llm.md (llm_smoke.* with `--smoke`).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "results"
FORMAT = 1

# the model and its training; "smoke" proves the pipeline end to end in minutes, it measures nothing
CONFIGS = {
    "default": {"hidden": 256, "layers": 4, "heads": 16, "kv_heads": 4, "d_ff": 688, "seq_len": 128, "batch": 16,
                "lr": 2e-3, "warmup": 0.05, "weight_decay": 0.1},
    "smoke": {"hidden": 64, "layers": 2, "heads": 8, "kv_heads": 4, "d_ff": 172, "seq_len": 64, "batch": 16,
              "lr": 3e-3, "warmup": 0.05, "weight_decay": 0.1},
}
MLP_RATIOS = (0.3, 0.5, 0.7)
HEAD_RATIOS = (0.25, 0.5)
REUSE_TRAIN_RATIO = 0.5  # PruneNet's reused policy is trained here, then loaded at the other ratios
VAL_FRACTION = 20  # one document in 20 is held out
CALIBRATED = ("wanda_sp", "flap", "flap-global", "flap-nobc", "taylor")  # the calibrated baselines LLM-BIP must tie
LLM_BIP = ("llm-bip", "llm-bip-global", "llm-bip-bc", "llm-bip-bc-global")
PRUNENET = ("prunenet", "prunenet-reuse")


@dataclass(frozen=True)
class Method:
    """One row label: which criterion, in which mode, and how PruneNet's policy is obtained."""

    name: str
    criterion: str
    mode: str = "uniform"
    data: bool = True  # reads the calibration set
    policy: str = "none"  # PruneNet: "per-ratio" (trained in the call) or "reuse" (one file, trained at 0.5)
    what: str = ""


METHODS = (
    Method("llm-bip", "llm-bip", what="LLM-BIP, each layer's units ranked on their own, same ratio per layer"),
    Method("llm-bip-global", "llm-bip", "global", what="LLM-BIP, units of all layers ranked together"),
    Method("llm-bip-bc", "llm-bip-bc", what="LLM-BIP per layer + FLAP's bias compensation of the removed mean"),
    Method("llm-bip-bc-global", "llm-bip-bc", "global", what="LLM-BIP global + bias compensation"),
    Method("wanda_sp", "wanda_sp", what="Wanda-sp, Σ|W|·‖X‖ per unit, per layer"),
    Method("flap", "flap", what="FLAP fluctuation, with bias compensation, per layer"),
    Method("flap-global", "flap", "global", what="FLAP, standardised scores ranked across layers (FLAP's setting)"),
    Method("flap-nobc", "flap-nobc", what="FLAP fluctuation without bias compensation, per layer"),
    Method("taylor", "taylor", what="first-order Taylor (Σ w·∂L/∂w)² on the calibration tokens, per layer"),
    Method("l2", "l2", data=False, what="magnitude: L2 of the unit's weights, per layer"),
    Method("random", "random", data=False, what="seeded random order, per layer"),
    Method("prunenet", "prunenet", data=False, policy="per-ratio",
           what="PruneNet, policy trained (no data) at the row's ratio in the prune call"),
    Method("prunenet-reuse", "prunenet", data=False, policy="reuse",
           what=f"PruneNet, one policy file trained at {REUSE_TRAIN_RATIO:.0%} and loaded at every ratio"),
)
SMOKE_METHODS = ("llm-bip", "llm-bip-global", "llm-bip-bc", "wanda_sp", "l2", "random", "prunenet",
                 "prunenet-reuse")


def register_variants() -> None:
    """Bias-compensated LLM-BIP and FLAP without compensation, through the public criterion registry."""
    import edgeprune
    from edgeprune.pruning.criteria import CRITERIA, get_criterion

    for name, base, comp in (("llm-bip-bc", "llm-bip", True), ("flap-nobc", "flap", False)):
        if name not in CRITERIA:
            crit = get_criterion(base)
            edgeprune.register_criterion(dataclasses.replace(crit, name=name, compensates_bias=comp,
                                                             summary=f"{crit.summary} (bench variant)"))


# -- text --------------------------------------------------------------------------------------------------
def documents() -> list:
    """[(name, text)]: pydoc_data's topics, and each stdlib module's docstrings (test suites skipped)."""
    import sysconfig
    from pydoc_data.topics import topics

    docs = [(f"pydoc:{k}", v) for k, v in sorted(topics.items())]
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    for path in sorted(stdlib.rglob("*.py")):
        rel = path.relative_to(stdlib)
        if skip & set(rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        parts = [ast.get_docstring(node, clean=True) for node in ast.walk(tree)
                 if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))]
        text = "\n\n".join(p for p in parts if p)
        if text:
            docs.append((f"stdlib:{rel.as_posix()}", text))
    return docs


def corpus() -> dict:
    """Training and held-out bytes (one document in VAL_FRACTION held out, chosen by a hash of its name)."""
    train, val = [], []
    for name, text in documents():
        h = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)
        (val if h % VAL_FRACTION == 0 else train).append(text)
    train_text, val_text = "\n\n".join(train), "\n\n".join(val)
    tb, vb = train_text.encode("utf-8"), val_text.encode("utf-8")
    return {"train": tb, "val": vb, "train_text": train_text, "docs": (len(train), len(val)),
            "sha256": hashlib.sha256(tb + b"\0" + vb).hexdigest()}


def byte_to_unicode() -> dict:
    """GPT-2's byte -> printable character map (what the tokenizers ByteLevel pre-tokenizer emits)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def write_tokenizer(folder: Path) -> None:
    """A byte-level tokenizer (token id = byte value, no merges, no special tokens) AutoTokenizer reads back."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {ch: b for b, ch in byte_to_unicode().items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    PreTrainedTokenizerFast(tokenizer_object=tok).save_pretrained(str(folder))


def check_tokenizer(folder: Path, text: str) -> None:
    """The saved tokenizer must give exactly the bytes training used, or every number here is wrong."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    if tok(text)["input_ids"] != list(text.encode("utf-8")):
        raise RuntimeError(f"tokenizer in {folder} does not map text to its UTF-8 bytes")


# -- training ----------------------------------------------------------------------------------------------
def llama_config(cfg: dict):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=256, hidden_size=cfg["hidden"], num_hidden_layers=cfg["layers"],
                       num_attention_heads=cfg["heads"], num_key_value_heads=cfg["kv_heads"],
                       head_dim=cfg["hidden"] // cfg["heads"], intermediate_size=cfg["d_ff"],
                       max_position_embeddings=cfg["seq_len"], bos_token_id=None, eos_token_id=None,
                       pad_token_id=None, tie_word_embeddings=False)


def train_batches(train_ids, cfg: dict, seed: int, steps: int):
    """Random windows of the training bytes, seeded by the training seed."""
    import torch

    gen = torch.Generator().manual_seed(10_000 + seed)
    n = len(train_ids) - cfg["seq_len"] - 1
    for _ in range(steps):
        starts = torch.randint(0, n, (cfg["batch"],), generator=gen)
        yield torch.stack([train_ids[s:s + cfg["seq_len"]] for s in starts.tolist()])


def lr_at(step: int, steps: int, cfg: dict) -> float:
    """Linear warm-up, cosine decay to 10 % of the peak."""
    warm = max(1, int(cfg["warmup"] * steps))
    if step < warm:
        return cfg["lr"] * (step + 1) / warm
    t = (step - warm) / max(1, steps - warm)
    return cfg["lr"] * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def seconds_per_step(cfg: dict, train_ids) -> float:
    """Time a few training steps of a throwaway model (first step discarded)."""
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(llama_config(cfg))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for x in train_batches(train_ids, cfg, 0, 4):
        started = time.perf_counter()
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def planned_steps(cfg: dict, minutes: float, cache: Path, train_ids) -> int:
    """Steps that fit `minutes` on this machine, decided once per (config, minutes) and kept in the cache."""
    from edgeprune.atomic import write_json

    plan_file = cache / "plans.json"
    plans = json.loads(plan_file.read_text()) if plan_file.exists() else {}
    key = hashlib.sha256(json.dumps([cfg, minutes], sort_keys=True).encode()).hexdigest()[:16]
    if key not in plans:
        per_step = seconds_per_step(cfg, train_ids)
        plans[key] = {"config": cfg, "minutes": minutes, "s_per_step": per_step,
                      "steps": max(50, int(minutes * 60 / per_step) // 50 * 50)}
        write_json(plan_file, plans)
    return int(plans[key]["steps"])


def trained_model(cfg: dict, seed: int, steps: int, data: dict, cache: Path) -> tuple:
    """(model directory, training record): trained here unless the cache already holds this checkpoint."""
    import torch
    from transformers import LlamaForCausalLM

    from edgeprune.atomic import atomic_dir, write_json

    key = hashlib.sha256(json.dumps([cfg, seed, steps, data["sha256"]], sort_keys=True).encode()).hexdigest()[:16]
    folder = cache / f"model-{key}"
    if (folder / "train.json").exists():
        return folder, json.loads((folder / "train.json").read_text())
    train_ids = torch.frombuffer(bytearray(data["train"]), dtype=torch.uint8).long()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(llama_config(cfg))
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg["lr"], betas=(0.9, 0.95))
    losses, started = [], time.time()
    model.train()
    for step, x in enumerate(train_batches(train_ids, cfg, seed, steps)):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, cfg)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == steps - 1:
            print(f"  seed {seed} step {step + 1}/{steps} loss {statistics.fmean(losses[-50:]):.3f} "
                  f"({time.time() - started:.0f} s)", flush=True)
    model.eval()
    record = {"key": key, "seed": seed, "steps": steps, "train_s": time.time() - started,
              "tokens": steps * cfg["batch"] * cfg["seq_len"], "params": sum(p.numel() for p in model.parameters()),
              "final_train_loss": statistics.fmean(losses[-50:]),
              "train_ppl": perplexity(model, held_out(data["train"], cfg["seq_len"], 64)),
              "loss_curve": [round(statistics.fmean(losses[i:i + 50]), 4) for i in range(0, steps, 50)]}
    with atomic_dir(folder) as tmp:
        model.save_pretrained(str(tmp))
        write_tokenizer(tmp)
        check_tokenizer(tmp, data["train_text"][:2000])
        write_json(tmp / "train.json", record)
    return folder, record


# -- evaluation and calibration ----------------------------------------------------------------------------
def held_out(raw: bytes, seq_len: int, count: int):
    """`count` evenly spaced, non-overlapping windows of `raw` as a [count, seq_len] id tensor."""
    import torch

    ids = torch.frombuffer(bytearray(raw), dtype=torch.uint8).long()
    stride = len(ids) // count
    if stride < seq_len:
        raise SystemExit(f"{len(ids)} bytes hold fewer than {count} windows of {seq_len}")
    return torch.stack([ids[i * stride:i * stride + seq_len] for i in range(count)])


def perplexity(module, ids, batch: int = 16) -> float:
    """exp(mean next-byte NLL) over every predicted position of `ids`."""
    import torch

    total, count = 0.0, 0
    module.eval()
    with torch.no_grad():
        for start in range(0, len(ids), batch):
            x = ids[start:start + batch]
            n = x.shape[0] * (x.shape[1] - 1)
            total += float(module(input_ids=x, labels=x, use_cache=False).loss) * n
            count += n
    return math.exp(total / count)


def text_windows(data: dict, seq_len: int, count: int, seed: int) -> str:
    """`count` random windows of training text, each exactly `seq_len` UTF-8 bytes, concatenated.

    The data loader cuts a text file's tokens into sequences of seq_len, so each window is one calibration
    sequence; windows whose ends split a multi-byte character are drawn again.
    """
    import random

    rng = random.Random(seed)
    raw, out = data["train"], []
    while len(out) < count:
        s = rng.randrange(0, len(raw) - seq_len)
        try:
            out.append(raw[s:s + seq_len].decode("utf-8"))
        except UnicodeDecodeError:
            continue
    return "".join(out)


def calibration_file(data: dict, cfg: dict, index: int, count: int, cache: Path, tag: str = "calib") -> Path:
    from edgeprune.atomic import atomic_file

    path = cache / f"{tag}-{data['sha256'][:12]}-{cfg['seq_len']}-{count}-{index}.txt"
    if not path.exists():
        with atomic_file(path) as f:
            f.write(text_windows(data, cfg["seq_len"], count, (1000 if tag == "calib" else 5000) + index))
    return path


# -- one pruning run ---------------------------------------------------------------------------------------
def prune_row(method: Method, target: str, ratio: float, model_dir: Path, cfg: dict, calib: Path | None,
              seed: int, policy: Path | None, val, args, out: Path | None = None) -> dict:
    """Prune through edgeprune.prune, evaluate held-out perplexity; one result row."""
    import edgeprune

    other = "heads" if target == "mlp" else "mlp"
    ignore = [f"layers.{i}.{other}" for i in range(cfg["layers"])]
    started = time.perf_counter()
    result = edgeprune.prune(str(model_dir), mode=method.mode, ratio=ratio, criterion=method.criterion,
                             calib=str(calib) if method.data else None, calib_samples=args.calib_seqs,
                             seq_len=cfg["seq_len"], seed=seed, ignore=ignore,
                             policy=str(policy) if policy is not None else None, measure=False, search=0,
                             cache=str(args.cache_dir / "measurements.sqlite"), out=str(out) if out else None,
                             force=True)
    wall = time.perf_counter() - started
    module = result.module
    kept = {k: v for k, v in result.widths.items() if k.endswith("." + target)}
    dense = cfg["kv_heads"] if target == "heads" else cfg["d_ff"]
    return {"method": method.name, "target": target, "ratio": ratio, "seed_prune": seed,
            "ppl": perplexity(module, val), "wall_s": wall,
            "params": sum(p.numel() for p in module.parameters()),
            "kept": [kept.get(f"layers.{i}.{target}", dense) for i in range(cfg["layers"])]}


def run_unit(seed: int, k: int, model_dir: Path, cfg: dict, data: dict, val, methods: list, args) -> list:
    """Every method at every ratio for one (training seed, calibration set)."""
    calib = calibration_file(data, cfg, k, args.calib_seqs, args.cache_dir)
    rows = []
    policy_dir = args.cache_dir / "policies"
    policy_dir.mkdir(parents=True, exist_ok=True)
    for method in methods:
        if method.name == "l2" and k > 0:
            continue  # deterministic and data-free: one row per training seed
        prune_seed = k if not method.data else 0
        targets = [("mlp", r) for r in MLP_RATIOS] + [("heads", r) for r in HEAD_RATIOS]
        if method.policy == "reuse":
            # heads are scored without a policy (the same as per-ratio); the file is trained at REUSE_TRAIN_RATIO
            targets = sorted((t for t in targets if t[0] == "mlp"), key=lambda t: t[1] != REUSE_TRAIN_RATIO)
            policy = policy_dir / f"{model_dir.name}-seed{prune_seed}.safetensors"
            policy.unlink(missing_ok=True)  # a file left by a stopped run would not be timed as training
        else:
            policy = None
        for target, ratio in targets:
            row = prune_row(method, target, ratio, model_dir, cfg, calib, prune_seed, policy, val, args)
            row.update(seed=seed, calib_set=k if method.data else None,
                       trained_policy=method.policy == "per-ratio" or
                       (method.policy == "reuse" and ratio == REUSE_TRAIN_RATIO))
            rows.append(row)
            print(f"  seed {seed} calib {k} {method.name:18s} {target:5s} {ratio:.2f}: ppl {row['ppl']:.4f} "
                  f"({row['wall_s']:.1f} s)", flush=True)
    return rows


def recovery(seed: int, model_dir: Path, cfg: dict, data: dict, val, methods: list, args) -> list:
    """The given methods at 50 % of MLP channels, saved, then distilled on cached teacher logits."""
    import edgeprune

    calib = calibration_file(data, cfg, 0, args.calib_seqs, args.cache_dir)
    tune = calibration_file(data, cfg, 0, args.recovery_seqs, args.cache_dir, tag="finetune")
    work = args.cache_dir / "recovery"
    out = []
    for method in methods:
        pruned = work / f"{model_dir.name}-{method.name}"
        policy = None
        row = prune_row(method, "mlp", 0.5, model_dir, cfg, calib, 0, policy, val, args, out=pruned)
        epochs = max(1, round(args.recovery_steps * cfg["batch"] / args.recovery_seqs))
        started = time.perf_counter()
        edgeprune.distill(str(pruned), str(model_dir), str(tune), str(pruned) + "-kd", epochs=epochs, lr=args.kd_lr,
                          batch_size=cfg["batch"], temperature=1.0, holdout=0.0, seed=seed,
                          cache_dir=work / f"{model_dir.name}-teacher", force=True)
        kd_s = time.perf_counter() - started
        after = perplexity(edgeprune.load(str(pruned) + "-kd"), val)
        out.append({"seed": seed, "method": method.name, "ppl_pruned": row["ppl"], "ppl_recovered": after,
                    "kd_s": kd_s, "steps": epochs * math.ceil(args.recovery_seqs / cfg["batch"]),
                    "finetune_seqs": args.recovery_seqs})
        print(f"  seed {seed} recovery {method.name}: {row['ppl']:.4f} -> {after:.4f} ({kd_s:.0f} s)", flush=True)
    return out


# -- aggregation and the markdown page ---------------------------------------------------------------------
def mean_sd(values: list) -> tuple:
    return (statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values))


def cells(rows: list) -> dict:
    """(method, target, ratio) -> (mean, sd, n) of held-out perplexity."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["target"], r["ratio"]), []).append(r["ppl"])
    return {k: mean_sd(v) for k, v in groups.items()}


def per_seed(rows: list, method: str, target: str, ratio: float) -> dict:
    """Training seed -> mean perplexity of one method over its calibration sets (for paired differences)."""
    by: dict = {}
    for r in rows:
        if (r["method"], r["target"], r["ratio"]) == (method, target, ratio):
            by.setdefault(r["seed"], []).append(r["ppl"])
    return {s: statistics.fmean(v) for s, v in by.items()}


def paired(rows: list, a: str, b: str, target: str, ratio: float) -> tuple | None:
    """Mean ± sd over training seeds of (a − b), each seed's perplexities averaged over calibration sets."""
    pa, pb = per_seed(rows, a, target, ratio), per_seed(rows, b, target, ratio)
    common = sorted(set(pa) & set(pb))
    return mean_sd([pa[s] - pb[s] for s in common]) if common else None


def fmt(cell) -> str:
    return "—" if cell is None else f"{cell[0]:.3f} ± {cell[1]:.3f} ({cell[2]})"


def judge(a, b) -> str:
    """a against b (lower is better), by the larger of the two sds: win, tie or miss."""
    gap, sd = a[0] - b[0], max(a[1], b[1])
    return "win" if gap < -sd else "tie" if gap <= sd else "miss"


def target_lines(rows: list, settings: list, present: set) -> list:
    c = cells(rows)
    lines = ["## Targets (from issue 13)", ""]
    if max((n for _, _, n in c.values()), default=0) < 2:
        lines += ["One sample per cell: every sd is 0, so a tie means equal perplexity and none of these verdicts "
                  "is evidence.", ""]
    calibrated = [m for m in CALIBRATED if m in present]
    for variant in [m for m in LLM_BIP if m in present]:
        verdicts = []
        for target, ratio in settings:
            mine = c.get((variant, target, ratio))
            base = [(c[(m, target, ratio)], m) for m in calibrated if (m, target, ratio) in c]
            if mine is None or not base:
                verdicts.append(f"{target} {ratio:.0%}: no data")
                continue
            best, name = min(base)
            d = paired(rows, variant, name, target, ratio)
            verdicts.append(f"{target} {ratio:.0%}: **{judge(mine, best)}** ({mine[0]:.3f} vs {name} {best[0]:.3f}; "
                            f"paired Δ {d[0]:+.3f} ± {d[1]:.3f})" if d else f"{target} {ratio:.0%}: "
                            f"**{judge(mine, best)}**")
        met = all("**miss**" not in v and "no data" not in v for v in verdicts)
        lines.append(f"- LLM-BIP ({variant}) ties (within 1 sd) or beats the best calibrated baseline at every "
                     f"ratio — **{'met' if met else 'missed'}**: " + "; ".join(verdicts))
    if not calibrated:
        lines.append("- LLM-BIP vs the best calibrated baseline: no calibrated baseline in this run")
    for variant in [m for m in PRUNENET if m in present]:
        verdicts, ok = [], True
        for target, ratio in settings:
            if variant == "prunenet-reuse" and target == "heads":
                continue
            mine = c.get((variant, target, ratio))
            refs = {m: c.get((m, target, ratio)) for m in ("l2", "random")}
            if mine is None or any(v is None for v in refs.values()):
                verdicts.append(f"{target} {ratio:.0%}: no data")
                ok = False
                continue
            beats = all(mine[0] < v[0] for v in refs.values())
            ok &= beats
            base = [(c[(m, target, ratio)], m) for m in calibrated + list(LLM_BIP) if (m, target, ratio) in c]
            gap = f"; gap to the best calibrated criterion, {min(base)[1]}: {mine[0] - min(base)[0][0]:+.3f}" \
                if base else ""
            verdicts.append(f"{target} {ratio:.0%}: {'better' if beats else '**not better**'} "
                            f"({mine[0]:.3f} vs l2 {refs['l2'][0]:.3f}, random {refs['random'][0]:.3f}{gap})")
        lines.append(f"- PruneNet ({variant}) better than magnitude and random at every ratio, no calibration data "
                     f"— **{'met' if ok else 'missed'}**: " + "; ".join(verdicts))
    return lines + [""]


def markdown(res: dict) -> str:
    rows, setup = res["rows"], res["setup"]
    cfg, c = setup["config"], cells(res["rows"])
    present = {r["method"] for r in rows}
    methods = [m for m in METHODS if m.name in present]
    models = res["models"]
    dense = mean_sd([m["dense_ppl"] for m in models.values()]) if models else None
    title = "LLM pruning smoke run (tiny model — proves the pipeline, measures nothing)" if setup["smoke"] \
        else "LLM structured pruning on a small trained LLaMA"
    out = [f"# {title}", "",
           f"Written by `bench/llm_bench.py{' --smoke' if setup['smoke'] else ''}` "
           f"({setup['machine']}, torch {setup['torch']}, transformers {setup['transformers']}, 1 thread). "
           "Per-byte perplexity on held-out text, mean ± sd (n) over training seeds × calibration sets, "
           "no fine-tuning. What each row means: docs/llm.md, \"Numbers\".", "",
           f"- model: LLaMA, {cfg['layers']} layers, hidden {cfg['hidden']}, {cfg['heads']} query / "
           f"{cfg['kv_heads']} kv heads (GQA), MLP {cfg['d_ff']}, byte vocabulary (256), "
           f"{next(iter(models.values()))['params'] if models else '?'} parameters",
           f"- text: {setup['corpus']['train_bytes']:,} training / {setup['corpus']['val_bytes']:,} held-out bytes "
           f"(pydoc_data.topics + stdlib docstrings, {setup['corpus']['docs'][0]} / {setup['corpus']['docs'][1]} "
           "documents)",
           f"- training: {setup['steps']} steps × {cfg['batch']} × {cfg['seq_len']} bytes per seed; seeds "
           + ", ".join(f"{s}: {m['train_s'] / 60:.1f} min, train ppl {m['train_ppl']:.3f}, held-out "
                       f"{m['dense_ppl']:.3f}" for s, m in sorted(models.items())),
           f"- dense held-out perplexity: {fmt(dense)}; evaluated on {setup['val_seqs']} × {cfg['seq_len']} bytes",
           f"- calibration: {setup['calib_seqs']} sequences of {cfg['seq_len']} training bytes per set, "
           f"{setup['calib_sets']} set(s), the same tokens for every calibrated criterion", ""]
    for target, ratios, what in (("mlp", MLP_RATIOS, "MLP channels removed (heads whole)"),
                                 ("heads", HEAD_RATIOS, "kv heads removed, with their query heads (MLP whole)")):
        out += [f"## {what}", "", "| method | " + " | ".join(f"{r:.0%}" for r in ratios) + " | params kept |",
                "|---|" + "---|" * (len(ratios) + 1)]
        for m in methods:
            if m.name == "prunenet-reuse" and target == "heads":
                continue
            kept = [r["params"] for r in rows if r["method"] == m.name and r["target"] == target]
            span = [statistics.fmean([r["params"] for r in rows if (r["method"], r["target"], r["ratio"]) ==
                                      (m.name, target, ratio)] or [0]) for ratio in ratios]
            params = " / ".join(f"{p / setup['dense_params']:.0%}" for p in span) if kept else "—"
            out.append(f"| {m.name} | " + " | ".join(fmt(c.get((m.name, target, r))) for r in ratios)
                       + f" | {params} |")
        out.append("")
    settings = [("mlp", r) for r in MLP_RATIOS] + [("heads", r) for r in HEAD_RATIOS]
    out += target_lines(rows, settings, present)
    out += ["## Compression wall time per criterion", "",
            "One `edgeprune.prune` call: loading the directory, reading and tokenising the calibration text, "
            "scoring, slimming (PruneNet per-ratio includes training its policy; reuse rows at the training ratio "
            "train and save it, the others only load it).", "",
            "| method | median s (MLP rows) | median s (head rows) | rows |", "|---|---|---|---|"]
    for m in methods:
        w = {t: [r["wall_s"] for r in rows if r["method"] == m.name and r["target"] == t] for t in ("mlp", "heads")}
        out.append(f"| {m.name} | " + " | ".join(f"{statistics.median(v):.2f}" if v else "—" for v in w.values())
                   + f" | {len(w['mlp']) + len(w['heads'])} |")
    out.append("")
    rec = res.get("recovery") or []
    out += ["## Recovery at 50 % of MLP channels (KD on cached teacher logits)", ""]
    if rec:
        r0 = rec[0]
        out += [f"The three best methods at 50 % (lowest mean perplexity), each pruned with calibration set 0, saved, "
                f"then distilled with `edgeprune.distill` for {r0['steps']} steps on {r0['finetune_seqs']} training "
                "windows (teacher logits cached once per seed, temperature 1).", "",
                "| method | as pruned | after KD | KD s |", "|---|---|---|---|"]
        for name in dict.fromkeys(r["method"] for r in rec):
            mine = [r for r in rec if r["method"] == name]
            out.append(f"| {name} | {fmt(mean_sd([r['ppl_pruned'] for r in mine]))} | "
                       f"{fmt(mean_sd([r['ppl_recovered'] for r in mine]))} | "
                       f"{statistics.median([r['kd_s'] for r in mine]):.0f} |")
    else:
        out.append("Not run (`--recovery-steps 0`, or the run stopped before it).")
    out += ["", "## What each method is", ""] + [f"- `{m.name}`: {m.what}" for m in methods]
    done = res["done"]
    out += ["", f"Completed (seed, calibration set) units: {', '.join(f'({s}, {k})' for s, k in done) or 'none'}."]
    return "\n".join(out) + "\n"


# -- driver ------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds (default 0 1 2)")
    ap.add_argument("--calib-sets", type=int, default=None, help="calibration sets per training seed (default 3)")
    ap.add_argument("--train-minutes", type=float, default=None,
                    help="training time per seed on this machine (default 10); sets the steps once, then cached")
    ap.add_argument("--steps", type=int, default=None, help="training steps per seed (overrides --train-minutes)")
    ap.add_argument("--methods", nargs="+", default=None, help="subset of method names")
    ap.add_argument("--calib-seqs", type=int, default=None, help="calibration sequences per set (default 64)")
    ap.add_argument("--val-seqs", type=int, default=None, help="held-out sequences evaluated (default 128)")
    ap.add_argument("--recovery-steps", type=int, default=None, help="KD steps at 50 %% (0: no recovery; default 64)")
    ap.add_argument("--recovery-seqs", type=int, default=256, help="fine-tuning windows of training text")
    ap.add_argument("--kd-lr", type=float, default=5e-4)
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="checkpoints, calibration files, policies (default ~/.cache/edgeprune/llm-bench)")
    ap.add_argument("--smoke", action="store_true", help="tiny model, 1 seed, 1 calibration set, a few methods")
    ap.add_argument("--fresh", action="store_true", help="discard existing results instead of resuming")
    ap.add_argument("--name", default=None, help="results stem (default llm, or llm_smoke with --smoke)")
    args = ap.parse_args(argv)
    smoke = args.smoke
    args.seeds = args.seeds or ([0] if smoke else [0, 1, 2])
    args.calib_sets = args.calib_sets or (1 if smoke else 3)
    args.calib_seqs = args.calib_seqs or (32 if smoke else 64)
    args.val_seqs = args.val_seqs or (48 if smoke else 128)
    args.recovery_steps = args.recovery_steps if args.recovery_steps is not None else (8 if smoke else 64)
    if smoke:
        args.recovery_seqs = min(args.recovery_seqs, 64)
    args.cache_dir = (args.cache_dir or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                      / "edgeprune" / "llm-bench").resolve()
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    names = args.methods or (SMOKE_METHODS if smoke else [m.name for m in METHODS])
    unknown = sorted(set(names) - {m.name for m in METHODS})
    if unknown:
        ap.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(m.name for m in METHODS)}")
    methods = [m for m in METHODS if m.name in names]
    cfg = CONFIGS["smoke" if smoke else "default"]

    import torch
    import transformers

    from edgeprune.atomic import atomic_file, write_json

    torch.set_num_threads(1)
    register_variants()
    data = corpus()
    train_ids = torch.frombuffer(bytearray(data["train"]), dtype=torch.uint8).long()
    steps = args.steps or (150 if smoke and args.train_minutes is None else
                           planned_steps(cfg, args.train_minutes or 10.0, args.cache_dir, train_ids))
    val = held_out(data["val"], cfg["seq_len"], args.val_seqs)
    setup = {"config": cfg, "steps": steps, "smoke": smoke, "calib_seqs": args.calib_seqs,
             "val_seqs": args.val_seqs, "calib_sets": args.calib_sets, "methods": [m.name for m in methods],
             "mlp_ratios": list(MLP_RATIOS), "head_ratios": list(HEAD_RATIOS),
             "corpus": {"sha256": data["sha256"], "train_bytes": len(data["train"]), "val_bytes": len(data["val"]),
                        "docs": list(data["docs"])},
             "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "python": platform.python_version(),
             "torch": torch.__version__, "transformers": transformers.__version__}
    same = ("config", "steps", "calib_seqs", "val_seqs", "corpus")
    stem = args.name or ("llm_smoke" if smoke else "llm")
    result_path, doc_path = RESULTS / f"{stem}.json", DOCS / f"{stem}.md"
    res = {"format_version": FORMAT, "setup": setup, "models": {}, "rows": [], "done": [], "recovery": [],
           "recovery_methods": []}
    if result_path.exists() and not args.fresh:
        old = json.loads(result_path.read_text())
        if any(old["setup"].get(k) != setup[k] for k in same):
            print(f"{result_path} was measured under other settings "
                  f"({', '.join(k for k in same if old['setup'].get(k) != setup[k])}); pass --fresh to replace it",
                  file=sys.stderr)
            return 2
        res.update({k: old.get(k, res.get(k)) for k in ("models", "rows", "done", "recovery", "recovery_methods")})
        res["setup"]["calib_sets"] = max(args.calib_sets, old["setup"].get("calib_sets", 0))
    res["setup"]["dense_params"] = None

    def save() -> None:
        write_json(result_path, res)
        with atomic_file(doc_path) as f:
            f.write(markdown(res))

    for seed in args.seeds:
        print(f"seed {seed}: model", flush=True)
        model_dir, record = trained_model(cfg, seed, steps, data, args.cache_dir)
        if str(seed) not in res["models"]:
            from transformers import AutoModelForCausalLM

            module = AutoModelForCausalLM.from_pretrained(str(model_dir))
            res["models"][str(seed)] = {**record, "dir": str(model_dir), "dense_ppl": perplexity(module, val)}
        res["setup"]["dense_params"] = res["models"][str(seed)]["params"]
        for k in range(args.calib_sets):
            if [seed, k] in res["done"]:
                continue
            rows = run_unit(seed, k, model_dir, cfg, data, val, methods, args)
            res["rows"] = [r for r in res["rows"] if not (r["seed"] == seed and r.get("unit") == k)]
            res["rows"] += [dict(r, unit=k) for r in rows]
            res["done"].append([seed, k])
            save()
    if args.recovery_steps > 0:
        if not res.get("recovery_methods"):  # chosen once, so seeds added by a later run recover the same three
            c = cells(res["rows"])
            ranked = sorted((c[(m.name, "mlp", 0.5)][0], m.name) for m in methods if (m.name, "mlp", 0.5) in c)
            res["recovery_methods"] = [name for _, name in ranked[:3]]
        top = [m for name in res["recovery_methods"] for m in METHODS if m.name == name]
        for seed in args.seeds:
            if any(r["seed"] == seed for r in res["recovery"]):
                continue
            model_dir = Path(res["models"][str(seed)]["dir"])
            res["recovery"] += recovery(seed, model_dir, cfg, data, val, top, args)
            save()
    save()
    print(f"wrote {result_path.relative_to(ROOT)} and {doc_path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
