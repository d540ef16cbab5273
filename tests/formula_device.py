"""A device double for logic tests: it answers measurement plans from a formula instead of a clock.

Solver, measure-and-tighten, table building and CLI logic must not depend on how fast the machine running the
tests happens to be (a budget that is reachable on one machine is not on another). `FormulaTarget` stands in
for the local target: `info`, `doctor` and bundle jobs still run the real device side (a bundle job's latencies
are then replaced), but `run` plans (cells and whole models) are answered with latencies computed from the ONNX
graph itself:

    ms(model) = OVERHEAD_MS + Σ over its blocks of (BLOCK_MS + NS_PER_MAC · macs · (OFF_STEP if off-step else 1))
    ms(cell) = OVERHEAD_MS + the same term for the cell's one block

so a cell and a whole model obey one known law, the table built from it is exact up to calibration, and every
speedup a test asks for is reachable on any machine. Measurement itself (the real runtime) is tested
elsewhere, with assertions that hold on any machine.

Use `formula_device` (a fixture in tests/conftest.py), or `with formula_target(monkeypatch): ...`.
"""

from __future__ import annotations

import json
import os
import pathlib
from collections.abc import Callable, Sequence

OVERHEAD_MS = 0.02  # one model call (what a micro-model cell pays too)
BLOCK_MS = 0.004  # one block's fixed cost (kernel launch, layout)
NS_PER_MAC = 0.05  # 20 GMAC/s
OFF_STEP = 1.5  # a block with a width off the channel step runs this much slower
STEP = 8  # the channel step on every machine: the double reports no AVX-512
DEVICE_MODEL = "formula device (tests/formula_device.py)"


def block_ms(block) -> float:
    """The formula's latency of one block (ms)."""
    factor = 1.0 if block.on_step(STEP) or block.kind in ("attention", "norm") else OFF_STEP
    return BLOCK_MS + NS_PER_MAC * 1e-6 * block.macs * factor


def model_ms(proto) -> float:
    """The formula's latency of an ONNX model (ms): overhead plus every block it contains."""
    from edgeprune.latency.blocks import extract_blocks

    return OVERHEAD_MS + sum(block_ms(b) for b in extract_blocks(proto).blocks)


def cell_ms(cell: dict) -> float:
    """The formula's latency of a plan's cell: one call's overhead plus its block (the cell's helper ops are free)."""
    from edgeprune.profilers.synth import build_cell

    from edgeprune.latency.blocks import Block, extract_blocks

    sig, c_in, c_out = cell["signature"], cell["c_in"], cell["c_out"]
    if cell["kind"] in TRANSFORMER_MACS:  # found by exporter scope names in models, which a micro-ONNX lacks
        macs = TRANSFORMER_MACS[cell["kind"]](sig, c_in, c_out)
        return OVERHEAD_MS + block_ms(Block("cell", cell["kind"], sig, c_in, c_out, macs=macs))
    blocks = extract_blocks(build_cell(sig, c_in, c_out)).blocks
    return OVERHEAD_MS + block_ms(next(b for b in blocks if b.kind == cell["kind"]))


def _attention_macs(sig: dict, hidden: int, heads: int) -> int:
    """As latency/blocks.py counts them: projections, output projection, scores and weighted sum."""
    t, d, kv = sig["tokens"], sig["head_dim"], heads // sig.get("kv_groups", 1)
    return t * hidden * (heads + 2 * kv) * d + t * heads * d * hidden + 2 * t * (t + sig.get("past", 0)) * heads * d


TRANSFORMER_MACS = {
    "attention": _attention_macs,
    "mlp": lambda sig, hidden, width: sig["tokens"] * hidden * width * (3 if sig.get("act") == "swiglu" else 2),
    "norm": lambda sig, c_in, c_out: 0,
}


def _stats(ms: float, runs: int = 10) -> dict:
    """A result record in the device's format: every run took exactly `ms`."""
    from edgeprune.profilers.timing import summarize

    return dict(summarize([[ms / 1e3] * runs for _ in range(3)]), formula=True)


class FormulaTarget:
    """The local target, except that measurement plans are answered by the formula.

    `scale(kind, key, ms) -> ms` lets a test bend the law (a device that never gets faster, one that drifts);
    it is called once per cell, per whole model and round, and per reference reading.
    """

    where = "formula device"

    def __init__(self, scale: Callable[[str, str, float], float] | None = None):
        from edgeprune.targets.local import LocalTarget

        self.local = LocalTarget()
        self.scale = scale or (lambda kind, key, ms: ms)
        self.plans: list[dict] = []  # every plan received, for assertions
        self._written: dict[str, dict] = {}

    def __enter__(self) -> FormulaTarget:
        self.local.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.local.__exit__(*exc)

    def run_profilers(self, args: Sequence[str], files: dict | None = None, on_progress=None,
                      timeout: float | None = None) -> dict:
        if args and args[0] == "info":  # real facts, but never mistaken for this CPU's (caches key on them)
            facts = self.local.run_profilers(args, files, on_progress, timeout)
            flags = [f for f in facts.get("cpu_flags") or () if not f.startswith("avx512")]  # the step is STEP
            return dict(facts, cpu_model=DEVICE_MODEL, device_tree_model=None, cpu_flags=flags)
        if args and args[0] == "bundle":
            return self._bundle(args, files, on_progress, timeout)
        if not args or args[0] != "run":
            return self.local.run_profilers(args, files, on_progress, timeout)
        plan_name = args[1]
        plan = json.loads(pathlib.Path(files[plan_name]).read_text())
        self.plans.append(plan)
        reply = self._answer(plan, files, on_progress)
        if "--out" in args:
            out = args[list(args).index("--out") + 1]
            self._written[out] = reply
            return {"result_file": out}
        return reply

    def run(self, argv, files=None, on_progress=None, timeout=None) -> dict:
        return self.local.run(argv, files, on_progress, timeout)

    def fetch(self, name: str, local_path: str | os.PathLike) -> pathlib.Path:
        if name not in self._written:
            return self.local.fetch(name, local_path)
        local_path = pathlib.Path(local_path)
        local_path.write_text(json.dumps(self._written.pop(name)))
        return local_path

    def _bundle(self, args, files, on_progress, timeout) -> dict:
        """Validation runs for real (checksums, parity, accuracy); only its latencies come from the formula."""
        import onnx

        reply = self.local.run_profilers(args, files, on_progress, timeout)
        workdir = self.local.workdir
        report = json.loads((workdir / reply["result_file"]).read_text()) if "result_file" in reply else reply
        request = json.loads(pathlib.Path(files[args[1]]).read_text())
        for name, record in zip(request["bundles"], report["bundles"]):
            manifest = json.loads((workdir / name / "manifest.json").read_text())
            ms = self.scale("bundle", name, model_ms(onnx.load(str(workdir / name / manifest["model"]))))
            record["latency"].update({k: ms for k in ("estimate_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms",
                                                       "median_ms", "mean_ms") if k in record["latency"]})
            record["latency"]["formula"] = True
        if "result_file" in reply:
            self._written[reply["result_file"]] = report
            return reply
        return report

    def _answer(self, plan: dict, files: dict, on_progress) -> dict:
        import onnx

        cells = {}
        reference = plan.get("reference")  # the machine's state, as the real device stamps each cell with it
        state = self.scale("reference", "reference", cell_ms(reference)) if reference and plan.get("cells") else None
        for i, cell in enumerate(plan.get("cells", [])):
            cells[cell["key"]] = _stats(self.scale("cell", cell["key"], cell_ms(cell)))
            if state is not None:
                cells[cell["key"]]["reference_ms"] = state
            if on_progress is not None:
                on_progress({"progress": i + 1, "total": len(plan["cells"]), "stage": "cells"})
        models = {}
        rounds = plan.get("model_rounds", 1)
        around = []
        if reference and plan.get("models"):
            around = [self.scale("reference", "reference", cell_ms(reference)) for _ in range(2)]
        for entry in plan.get("models", []):
            base = model_ms(onnx.load(str(files[entry["file"]])))
            models[entry["key"]] = [_stats(self.scale("model", entry["key"], base)) for _ in range(rounds)]
        if models and on_progress is not None:
            on_progress({"progress": rounds, "total": rounds, "stage": "models"})
        return {"format_version": plan["format_version"], "kind": "result", "facts": {}, "runtime": plan["runtime"],
                "estimator": plan.get("estimator", {}), "cells": cells, "models": models, "errors": {},
                "drift": [{"group": 0, "drift": 0.0, "attempts": 1, "reference_ms": state}] if state else [],
                "model_round_s": [0.0] * (rounds if models else 0), "state_ms": around, "wall_s": 0.0}


def install(monkeypatch, scale=None) -> list:
    """Make every device opened without --host a FormulaTarget; returns the list of targets opened."""
    import edgeprune.targets as targets

    real = targets.open_target
    opened = []

    def open_target(host, **ssh_options):
        if host is not None:
            return real(host, **ssh_options)
        target = FormulaTarget(scale)
        opened.append(target)
        return target

    monkeypatch.setattr(targets, "open_target", open_target)
    return opened
