"""`edgeprune profile` as a library call: blocks -> grid plan -> device measurements -> table -> fidelity.

The host decides what to measure; the target (this machine or an SSH device) runs `profilers/` to measure it.
Every measurement is committed to the SQLite cache the moment the device reports it final, so an interrupted
profile resumes where it stopped. The table's cells are frozen before any whole model is timed; the dense model
calibrates Σ cells, and seeded held-out variants measure fidelity.
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgeprune.errors import DeviceError
from edgeprune.profilers.schema import ListOf, check

from .blocks import GraphBlocks, extract_blocks
from .cache import MeasurementCache, fingerprint_key
from .fidelity import choose_calibration, error_figures, noise_ceiling
from .grid import plan_signature
from .result import STATS, check_result
from .table import BYTES_PER_WEIGHT, LatencyTable, block_weight_elems, cell_record

PLAN_VERSION = 1
VARIANT_BUILDER = 3  # bump when pruning.variants builds different models for the same seed (cached variants)
LOW_FIDELITY = 0.80
# Two-state tables (docs/profiling.md, "Weights from memory" and "Two states"): a candidate whose weights exceed
# COLD_ABOVE × the last-level cache is predicted from cold cells, one below WARM_BELOW × LLC from warm ones,
# linearly between. Chosen by measurement (bench/two_state_bench.py: against hard switches at 0.5-1.25 × LLC and
# wider blends, this blend had the lowest MAPE on the seed it was picked on and on two of three checks). Cold
# cells are measured only when the dense model's weights exceed WARM_BELOW × LLC: below that no candidate (never
# larger than the dense model) is predicted cold.
WARM_BELOW = 0.75
COLD_ABOVE = 1.25


@dataclass
class ProfileOptions:
    """Everything that changes what is measured (recorded in the table)."""

    threads: int = 1
    precision: str = "fp32"
    backend: str | None = None
    provider: str | None = None
    density: str = "coarse"
    variants: int = 20
    calibration_variants: int = 6
    model_rounds: int = 2
    seed: int = 0
    keep_range: tuple = (0.3, 1.0)
    batch_cells: int = 200
    # How far the machine's speed (the reference cell) may move before cached timings are measured again and a
    # changing machine is reported (STATE_LIMIT; docs/profiling.md "A busy machine").
    state_tolerance: float = 0.15
    # Cold cells (weights from memory): "auto" when the dense model's weights exceed WARM_BELOW × the device's
    # last-level cache, "never", or "always" (when the device reports its cache size).
    cold: str = "auto"
    # Cells: 50 warm-up runs or 10 ms, whichever comes first. A group warms all its cells before its first pass,
    # so what a warm-up leaves in the caches is gone by then; it only absorbs first-run costs (allocation,
    # weight packing), and each estimate is built from per-pass minima (docs/profiling.md, "Why cells warm up").
    estimator: dict = field(default_factory=lambda: {"passes": 3, "runs": 20, "warmup_runs": 50, "warmup_s": 0.01,
                                                     "pass_s": 0.02, "max_spread": 0.10, "extra_passes": 2})
    # Whole models get longer passes: one noise burst must not decide a fidelity figure.
    model_estimator: dict = field(default_factory=lambda: {"passes": 3, "runs": 200, "warmup_runs": 50,
                                                           "warmup_s": 2.0, "pass_s": 0.25, "max_spread": 0.05,
                                                           "extra_passes": 3})


@dataclass
class ProfileResult:
    """The table plus what the CLI prints about how it was made."""

    table: LatencyTable
    cached_cells: int
    measured_cells: int
    warnings: list


class Reporter:
    """Progress hooks that do nothing; the CLI passes edgeprune.progress.RichReporter, which draws them.

    `stage(name, total)` opens a line and returns a callback for `{"progress": n, "total": t, "detail": s}`
    events; `total=None` says no count is known (drawn as a spinner with elapsed time, never `0/?`).
    `done(name)` ends every open line of that name, so nothing keeps counting after its stage.
    """

    def stage(self, name: str, total: int | None = None) -> Callable[[dict], None]:
        return lambda event: None

    def done(self, name: str) -> None:
        pass


def power_mode(facts: dict) -> str | None:
    """The Jetson power mode name from the raw `nvpmodel -q` text the device reported, if any."""
    text = facts.get("nvpmodel")
    if not text:
        return None
    from edgeprune.profilers.parsers.nvpmodel import parse_nvpmodel_query

    try:
        return parse_nvpmodel_query(text).get("name")
    except ValueError:
        return None


# Bumped when the device side times cells differently, so cached measurements of the old method are not reused.
# 2: cells run without intra-op spinning (profilers/backends/base.py says why).
TIMING_METHOD = 2


def fingerprint(device, facts: dict, runtime: dict) -> dict:
    """What makes two measurements comparable: device model, clocks setup, runtime, precision, threads."""
    lo, hi = facts.get("cpu_scaling_min_freq_khz"), facts.get("cpu_scaling_max_freq_khz")
    return {
        "device": device.name,
        "device_model": facts.get("device_tree_model") or facts.get("cpu_model"),
        "machine": facts.get("machine"),
        "cpu_count": facts.get("cpu_count"),
        "power_mode": power_mode(facts),
        "governor": facts.get("cpu_governor"),
        "clocks_locked": bool(lo and hi and lo == hi) or facts.get("cpu_governor") == "performance",
        "runtime": runtime["backend"], "runtime_version": runtime.get("version"),
        "provider": runtime.get("provider"), "precision": runtime["precision"], "threads": runtime["threads"],
        "python": facts.get("python_version"), "os": facts.get("os_release") or facts.get("system"),
        "timing": TIMING_METHOD,
    }


def runtime_version(facts: dict, backend: str) -> str | None:
    return facts.get("onnxruntime_version") if backend == "onnxruntime" else facts.get("tensorrt_version")


def dense_onnx(loaded, workdir: Path) -> tuple:
    """(ModelProto, path) of the model as the runtime will run it."""
    import onnx

    if loaded.onnx_path is not None:
        return onnx.load(str(loaded.onnx_path)), Path(loaded.onnx_path)
    from edgeprune.exporters.onnx import export_onnx

    path = workdir / "dense.onnx"
    wrapped = loaded.export_module()
    proto, _ = export_onnx(wrapped, loaded.example_inputs(wrapped), path)
    return proto, path


class Measurer:
    """Sends plans to the target in batches and commits every result to the cache as it arrives.

    The device streams each finished cell (and whole model) as a record line; each is committed in its own
    transaction before the next is read, and the lines a stopped job wrote are still handed over
    (targets/job.py), so Ctrl-C or SIGTERM loses nothing the device finished. The job's final reply repeats
    every result; anything the stream did not bring is committed from it.
    """

    def __init__(self, target, cache: MeasurementCache, fp: dict, runtime: dict, estimator: dict,
                 model_estimator: dict, workdir: Path, state_limit: float | None = None):
        self.target, self.cache, self.fp, self.runtime = target, cache, fp, runtime
        self.fp_key = fingerprint_key(fp)
        self.estimator = estimator
        self.model_estimator = model_estimator
        self.workdir = workdir
        self.jobs = 0
        self.drift = []
        self.model_round_s = []
        self.models_measured = 0
        self.device_state = []  # clocks and temperatures the device reported after each job
        self.states = []  # the reference cell's readings around whole-model jobs (the machine's state then)
        self.state_ms = None  # the machine's state in this run: cached results from another state are not reused
        self.state_limit = STATE_LIMIT if state_limit is None else state_limit
        self.stale = {"cell": set(), "model": set()}  # cached keys not reused: from another machine state
        self.stale_state_ms = []

    def current(self, record: dict) -> bool:
        """Whether a cached result was timed in this run's machine state (or says nothing about its state)."""
        then = record.get("reference_ms")
        return not (self.state_ms and then) or abs(then / self.state_ms - 1) <= self.state_limit

    def cached(self, kind: str, keys: list, reference: dict | None, probe_cell: dict | None = None) -> dict:
        """{key: record} of the cache's results for `keys` that this run's machine state can reuse.

        The first lookup that finds anything reads the state now (a one-cell job) when no job of this run
        has yet; results from another state (idle then, busy now, or the reverse) are counted and re-measured.
        """
        known = self.cache.get_many(self.fp_key, kind, keys)
        if known and self.state_ms is None and reference and probe_cell:
            probe = self.probe([probe_cell], reference)
            now = [v["reference_ms"] for v in probe.values() if v.get("reference_ms")]
            self.state_ms = now[0] if now else None
        usable = {k: v for k, v in known.items() if self.current(v)}
        self.stale[kind].update(k for k in known if k not in usable)
        self.stale_state_ms += [v["reference_ms"] for k, v in known.items() if k not in usable]
        return usable

    def _run(self, plan: dict, files: dict, on_progress) -> dict:
        self.jobs += 1
        name = f"plan{self.jobs}.json"
        path = self.workdir / name
        path.write_text(json.dumps(plan))
        files = dict(files, **{name: path})
        reply = self.target.run_profilers(["run", name, "--out", f"result{self.jobs}.json"], files=files,
                                          on_progress=on_progress)
        if "result_file" in reply:
            local = self.workdir / f"result{self.jobs}.json"
            self.target.fetch(reply["result_file"], local)
            reply = json.loads(local.read_text())
        reply = check_result(reply, self.target.where)
        facts = reply.get("facts") or {}
        self.device_state.append({"job": self.jobs, "thermal": facts.get("thermal"),
                                  "cpu_cur_freq_khz": facts.get("cpu_cur_freq_khz"),
                                  "gpu_devfreq": facts.get("gpu_devfreq"), "wall_s": reply.get("wall_s")})
        errors = reply.get("errors") or {}
        for key, record in errors.items():
            err = record.get("error", {})
            raise DeviceError(f"device could not measure {key}: {err.get('message')}", err.get("hint", ""))
        return reply

    def cells(self, cells: list, reference: dict | None, batch: int, on_progress, fresh: bool = False,
              keep_faster: bool = True) -> tuple:
        """{cell key: stats} for every cell, measuring only those the cache lacks.

        `fresh` measures every cell again and keeps, per cell, the faster of the cached and the new reading
        (a noise burst only ever slows a cell down); with `keep_faster=False` the new reading replaces the
        cached one (a cell cached in another machine state). Returns (stats, number of cells from the cache).
        """
        keys = [c["key"] for c in cells]
        known = self.cached("cell", keys, reference, cells[0] if cells else None)
        have = {} if fresh else dict(known)
        todo = [c for c in cells if c["key"] not in have]
        cached = len(have)

        def commit(key: str, stats: dict) -> None:
            old = known.get(key)
            if fresh and keep_faster and old is not None and old["estimate_ms"] <= stats["estimate_ms"]:
                stats = old
            else:
                self.cache.put(self.fp_key, "cell", key, stats, body=self.fp)
            have[key] = stats

        on_progress({"progress": cached, "total": len(cells), "stage": "cells"})
        for start in range(0, len(todo), batch):
            chunk = todo[start:start + batch]
            wanted = {c["key"] for c in chunk}
            plan = {"format_version": PLAN_VERSION, "kind": "plan", "runtime": self.runtime,
                    "estimator": self.estimator, "reference": reference, "cells": chunk}

            def relay(event: dict, offset: int = cached + start, wanted: set = wanted) -> None:
                if event.get("record") == "cell":
                    commit(*_streamed(event, wanted, "stats", STATS, self.target.where))
                elif event.get("stage") == "cells":
                    on_progress({"progress": offset + event["progress"], "total": len(cells), "stage": "cells"})

            reply = self._run(plan, {}, relay)
            self.drift.extend(reply.get("drift", []))
            if self.state_ms is None:  # the state this run's first cells were timed in
                self.state_ms = next((d["reference_ms"] for d in reply.get("drift", []) if d.get("reference_ms")),
                                     None)
            for key, stats in reply["cells"].items():
                if key not in have:
                    commit(key, stats)
        return have, cached

    def probe(self, cells: list, reference: dict) -> dict:
        """{cell key: stats} timed now and cached nowhere: each carries the machine's state now (`reference_ms`)."""
        plan = {"format_version": PLAN_VERSION, "kind": "plan", "runtime": self.runtime,
                "estimator": self.estimator, "reference": reference, "cells": cells}
        return self._run(plan, {}, lambda event: None)["cells"]

    def has_model(self, key: str, reference: dict | None = None, probe_cell: dict | None = None) -> bool:
        return bool(self.cached("model", [key], reference, probe_cell))

    def models(self, models: dict, rounds: int, on_progress, fresh: bool = False, reference: dict | None = None
               ) -> dict:
        """{model key: [estimate per round]} for ONNX files {key: path}; cached by file hash.

        `fresh` times every model again (interleaved with the others) instead of reusing cached timings: a
        speedup is only trusted when both sides were measured in the same run. With a `reference` cell, the
        device times it around the models and each record keeps that machine state (`reference_ms`).
        """
        have = {} if fresh else self.cached("model", list(models), None)
        todo = {k: p for k, p in models.items() if k not in have}
        if not todo:
            return have
        entries = [{"key": k, "file": f"m_{k[:16]}.onnx"} for k in todo]
        files = {f"m_{k[:16]}.onnx": p for k, p in todo.items()}
        plan = {"format_version": PLAN_VERSION, "kind": "plan", "runtime": self.runtime,
                "estimator": self.model_estimator, "models": entries, "model_rounds": rounds}
        if reference:
            plan.update(reference=reference, reference_estimator=self.estimator)
        committed = set()

        def commit(key: str, rounds_stats: list) -> None:
            have[key] = {"rounds": [s["estimate_ms"] for s in rounds_stats], "stats": rounds_stats[0]}
            self.cache.put(self.fp_key, "model", key, have[key], body=self.fp)
            committed.add(key)

        def relay(event: dict) -> None:
            if event.get("record") == "model":
                commit(*_streamed(event, set(todo), "rounds", ListOf(STATS, min_len=1), self.target.where))
            else:
                on_progress(event)

        reply = self._run(plan, files, relay)
        self.model_round_s = reply.get("model_round_s", [])
        self.models_measured = len(entries)
        for key, rounds_stats in reply["models"].items():
            if key not in committed:
                commit(key, rounds_stats)
        state = reply.get("state_ms") or []
        self.states += state
        if state:
            stamped = {k: dict(have[k], reference_ms=sum(state) / len(state)) for k in todo if k in have}
            self.cache.put_many(self.fp_key, "model", stamped)
            have.update(stamped)
        return have


def _streamed(event: dict, wanted: set, name: str, schema, where: str) -> tuple:
    """(key, payload) of a record the device streamed, checked before it is cached like the final reply is."""
    key = event.get("key")
    hint = "the device side and the host side may be different edgeprune versions; reinstall edgeprune"
    if key not in wanted:
        raise DeviceError(f"the device on {where} sent a result for {key!r}, which the plan did not ask for", hint)
    return key, check(event.get(name), schema, lambda bad: DeviceError(
        f"the device on {where} sent a malformed {name} record for {key}: {bad}", hint))


def plan_cells(graph: GraphBlocks, step: int, density: str) -> tuple:
    """(signatures for the table, cells to measure, reference cell)."""
    by_sig = defaultdict(list)
    for block in graph.blocks:
        by_sig[block.sig_key].append(block)
    signatures, cells = {}, []
    for sig_key, blocks in by_sig.items():
        grid = plan_signature(blocks[0].signature, blocks, step, density)
        signatures[sig_key] = grid.to_dict()
        for c_in, c_out in grid.cells:
            cells.append({"key": f"{sig_key}@{c_in}x{c_out}", "kind": blocks[0].kind, "sig_key": sig_key,
                          "signature": blocks[0].signature, "c_in": c_in, "c_out": c_out})
    # The reference sits at the 75th percentile by MACs: its readings cost the same whatever its size (passes of
    # >= 50 ms), and a median block can be a µs-long norm or add whose own timer noise reads as drift (a tiny
    # LLaMA's: 2.7-4.0 µs in one run, so every cell group was measured twice), while the largest blocks can take
    # tens of ms per run (VGG's classifier).
    by_macs = sorted(graph.blocks, key=lambda b: b.macs)
    ref_block = by_macs[(3 * (len(by_macs) - 1)) // 4]
    reference = {"key": "reference", "kind": ref_block.kind, "signature": ref_block.signature,
                 "c_in": ref_block.c_in, "c_out": ref_block.c_out}
    return signatures, cells, reference


CPU_PROVIDERS = (None, "CPUExecutionProvider")


def memory_rule(blocks: list, facts: dict, precision: str, cold: str = "auto", runtime: dict | None = None) -> dict:
    """The two-state table's `memory` section, or {} when cold cells are not worth measuring.

    They are measured when the device reports its last-level cache and the dense model's weights exceed
    WARM_BELOW × that cache (`cold="auto"`): a smaller model, and every candidate pruned from it, keeps its
    weights in the cache, as the warm cells do. `cold="always"` measures them whenever the cache is known.
    The cache read is the CPU's, so only a runtime on the CPU (ONNX Runtime's CPU EP) gets cold cells; a GPU's
    own cache is not read.
    """
    from edgeprune.profilers.measure import MAX_COPIES

    llc = facts.get("llc_bytes")
    per = BYTES_PER_WEIGHT.get(precision, 4)
    dense = sum(block_weight_elems(b) for b in blocks) * per
    on_cpu = runtime is None or (runtime.get("backend") == "onnxruntime" and runtime.get("provider") in CPU_PROVIDERS)
    if cold == "never" or not llc or not on_cpu or (cold == "auto" and dense <= WARM_BELOW * llc):
        return {}
    return {"llc_bytes": int(llc), "llc_source": facts.get("llc_source"), "bytes_per_weight": per,
            "dense_weight_bytes": int(dense), "warm_below": WARM_BELOW, "cold_above": COLD_ABOVE,
            "cold_min_bytes": int(llc) // MAX_COPIES}


def cold_twins(cells: list, memory: dict) -> list:
    """The cold reading of every planned cell holding at least `cold_min_bytes` of weights: key `…#cold`.

    A smaller cell would need more than MAX_COPIES copies to fill the cache (each costs a session start) and its
    memory read is at most LLC / MAX_COPIES per run, so it reads the same in both states (LatencyTable._values).
    """
    from edgeprune.profilers.synth import weight_elems

    least = max(1, memory.get("cold_min_bytes", 0))
    return [dict(c, key=c["key"] + COLD_KEY, state="cold") for c in cells
            if weight_elems(c["signature"], c["c_in"], c["c_out"]) * memory["bytes_per_weight"] >= least]


COLD_KEY = "#cold"  # a cold reading's key in plans and in the measurement cache: never mistaken for the warm one
# The dense model's own cells timed cold must be this much slower than warm for a two-state table: below it the
# model is compute-bound (resnet18 at 224 px: +7 %, and a two-state table scored 90 % within ±10 % where the
# warm-only one scored 100 % on the same timings), above it bound by weight bandwidth (at 32 px: +160 %).
COLD_MATTERS = 0.25


def cold_probe(blocks: list, stats: dict) -> dict:
    """Σ of the dense model's cells warm and cold (each block at its own widths), and the slowdown between them.

    A block whose cell has no cold reading (too few weights, or none) counts the same in both.
    """
    warm = cold = 0.0
    for block in blocks:
        key = f"{block.sig_key}@{block.c_in}x{block.c_out}"
        if key not in stats:
            continue
        warm += stats[key]["estimate_ms"]
        cold += stats.get(key + COLD_KEY, stats[key])["estimate_ms"]
    return {"dense_warm_ms": warm, "dense_cold_ms": cold, "slowdown": cold / warm - 1 if warm > 0 else 0.0}


def _warm(stats: dict) -> dict:
    """`stats` without cold readings (a table that stays warm-only)."""
    return {k: v for k, v in stats.items() if not k.endswith(COLD_KEY)}


def table_cells(cells: list, stats: dict) -> dict:
    """The table's cell records: each warm reading, with its cold twin's reading where one was measured."""
    out = {}
    for cell in cells:
        cold = stats.get(cell["key"] + COLD_KEY)
        key, record = cell_record(cell["kind"], cell["sig_key"], cell["c_in"], cell["c_out"], stats[cell["key"]],
                                  cold)
        out[key] = record
    return out


def profile_model(loaded, device, facts: dict, target, options: ProfileOptions, cache: MeasurementCache,
                  reporter: Reporter | None = None, step: int | None = None) -> ProfileResult:
    """Measure a latency table for `loaded` on `device` through `target`, then its fidelity."""

    reporter = reporter or Reporter()
    warnings = list(loaded.notes)
    runtime_spec = device.runtime(backend=options.backend, provider=options.provider, precision=options.precision,
                                  facts=facts)
    runtime = {"backend": runtime_spec.backend, "provider": runtime_spec.provider, "precision": options.precision,
               "threads": options.threads}
    runtime["version"] = runtime_version(facts, runtime["backend"])
    step = step or device.alignment_for(facts, precision=options.precision)
    fp = fingerprint(device, facts, runtime)
    if device.clocks.lock and not fp["clocks_locked"] and (fp["governor"] or fp["power_mode"]):
        warnings.append(f"clocks are not locked on {device.name} (power mode {fp['power_mode'] or 'unknown'}, "
                        f"governor {fp['governor'] or 'unknown'}); timings may drift — "
                        f"`{' '.join(device.clocks.lock[0])}` or --lock-clocks pins them")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="edgeprune-profile-") as tmp:
        workdir = Path(tmp)
        proto, dense_path = dense_onnx(loaded, workdir)
        graph = extract_blocks(proto, head_dim=loaded.head_dim)
        if not graph.blocks:
            raise DeviceError(f"{loaded.spec} has no block this profiler can measure",
                              "the model needs Conv, Gemm or MatMul layers")
        if graph.uncovered:
            names = ", ".join(f"{op}×{n}" for op, n in sorted(graph.uncovered.items()))
            warnings.append(f"ops covered only by the dense calibration (not synthesised per width): {names}")
        measurer = Measurer(target, cache, fp, runtime, options.estimator, options.model_estimator, workdir,
                            options.state_tolerance)
        signatures, cells, reference = plan_cells(graph, step, options.density)
        t0 = time.time()
        stats, cached = measurer.cells(cells, reference, options.batch_cells, reporter.stage("cells", len(cells)))
        extra = _refinements(signatures, cells, stats, step)
        if extra:  # denser where neighbouring cells jump: one more, small round
            more, more_cached = measurer.cells(extra, reference, options.batch_cells, reporter.stage("cells"))
            stats.update(more)
            cells += extra
            cached += more_cached
        suspects = implausible(cells, stats, step)
        if suspects:  # slower than a wider cell of the same regime: a noise burst, measure once more, keep the faster
            again, _ = measurer.cells(suspects, reference, options.batch_cells, reporter.stage("cells"), fresh=True)
            stats.update(again)
        remeasured = len(suspects)
        reporter.done("cells")
        memory = memory_rule(graph.blocks, facts, options.precision, options.cold, runtime)
        cold, cold_cached, cold_s = [], 0, 0.0
        cold, cold_cached, cold_s, probe = [], 0, 0.0, {}
        if memory:  # weights beyond the cache: every cell holding enough of them is timed cold too
            t_cold = time.time()
            cold = cold_twins(cells, memory)
            # first the dense model's own cells: when weights from memory barely slow them, the model is
            # compute-bound and a second state would only blur the table (COLD_MATTERS)
            own = {f"{b.sig_key}@{b.c_in}x{b.c_out}{COLD_KEY}" for b in graph.blocks}
            first = [c for c in cold if c["key"] in own]
            cold_stats, cold_cached = measurer.cells(first, reference, options.batch_cells,
                                                     reporter.stage("cold_probe", len(first)))
            stats.update(cold_stats)
            probe = dict(cold_probe(graph.blocks, stats), cells=len(first))
            if options.cold == "auto" and probe["slowdown"] < COLD_MATTERS:
                memory, cold = {}, []  # the probe's readings stay in the cache; the table stays warm-only
            else:
                rest = [c for c in cold if c["key"] not in cold_stats]
                more, more_cached = measurer.cells(rest, reference, options.batch_cells,
                                                   reporter.stage("cold", len(rest)))
                stats.update(more)
                cold_cached += more_cached
                suspects = implausible(cold, stats, step)
                if suspects:
                    again, _ = measurer.cells(suspects, reference, options.batch_cells,
                                              reporter.stage("cold"), fresh=True)
                    stats.update(again)
                remeasured += len(suspects)
            probe["two_state"] = bool(memory)
            reporter.done("cold_probe")
            reporter.done("cold")
            cold_s = time.time() - t_cold
        table_s = time.time() - t0
        layers = {b.name: {"kind": b.kind, "c_in": b.c_in, "c_out": b.c_out, "signature": b.sig_key,
                           "cell": f"{b.sig_key}@{b.c_in}x{b.c_out}", "in_fixed": b.in_fixed,
                           "out_fixed": b.out_fixed, "macs": b.macs} for b in graph.blocks}
        table = LatencyTable(
            fingerprint=fp, runtime=runtime,
            model={"spec": loaded.spec, "sha256": loaded.source_sha256, "input_shape": list(loaded.input_shape),
                   "family": loaded.family, "macs": graph.macs, "graph_sha256": _sha(proto),
                   "seq_len": loaded.seq_len, "regime": loaded.regime},
            estimator=dict(options.estimator, name="median_of_pass_min", models=options.model_estimator),
            step=step, signatures=signatures,
            cells=table_cells(cells, stats if memory else _warm(stats)), layers=layers, uncovered=dict(graph.uncovered),
            layout_ops=dict(graph.layout_ops), notes=warnings, memory=memory)
        # The table is frozen here: nothing below adds or changes a cell.
        t1 = time.time()
        fidelity_models, variant_info = _variant_models(loaded, options, step, workdir, dense_path, measurer,
                                                        reporter)
        export_s = time.time() - t1
        t2 = time.time()
        measured = measurer.models(fidelity_models, options.model_rounds, reporter.stage("models"),
                                   reference=reference)
        reporter.done("models")
        models_s = time.time() - t2
        state, state_warnings = check_machine_state(measurer, cells + cold, stats, reference, options, reporter)
        warnings += state_warnings
        if state.get("remeasured"):  # the cells now match the state the whole models ran in
            table.cells = table_cells(cells, stats) if memory else table_cells(cells, _warm(stats))
            table.forget_values()
        _calibrate_and_score(table, graph, measured, variant_info, options)
        table.profile = {"wall_s": time.time() - started, "table_s": table_s, "variants_export_s": export_s,
                         "models_s": models_s, "models_measured": measurer.models_measured,
                         "model_round_s": measurer.model_round_s,
                         "variants_built": sum(p is not None for p in fidelity_models.values()) - 1,
                         "cells": len(cells), "device_state": measurer.device_state, "cached_cells": cached,
                         "measured_cells": len(cells) - cached, "device_jobs": measurer.jobs,
                         "cold_cells": len(cold), "cold_cached_cells": cold_cached, "cold_s": cold_s,
                         "cold_probe": probe,
                         "regrouped": sum(d["attempts"] > 1 for d in measurer.drift),
                         "implausible_remeasured": remeasured,
                         "max_drift": max((d["drift"] for d in measurer.drift), default=0.0),
                         "machine_state": {k: v for k, v in state.items() if k != "remeasured"},
                         "host": platform.node()}
    if table.fidelity.get("within_10") is not None and table.fidelity["within_10"] < LOW_FIDELITY:
        warnings.append(f"low-fidelity table: only {table.fidelity['within_10']:.0%} of held-out variants within "
                        "±10 %; the pruner will measure candidates directly")
    return ProfileResult(table, cached, len(cells) - cached, warnings)


STATE_LIMIT = 0.15  # the reference cell >15 % faster or slower: another machine state (a busy or an idle host)
# Readings of the reference cell on one machine state, and under a competing process: docs/profiling.md.


def check_machine_state(measurer: Measurer, cells: list, stats: dict, reference: dict, options: ProfileOptions,
                        reporter: Reporter) -> tuple:
    """Make the cells and the whole-model runs that calibrate and score the table come from one machine state.

    A cell cached on an idle machine next to a dense run on a busy one (or the reverse) makes a table that is
    silently wrong by the load factor. The state is the reference cell's reading: every cell carries the one
    from its group, every whole-model record the one around its job. Cached results from another state were
    not reused (Measurer.cached); here, cells timed in this run more than STATE_LIMIT away from the state of
    the whole-model runs are measured again, and a state that moved while we measured is reported, since no
    table measured then can be trusted. Updates `stats`; returns ({reference_ms, range, stale, ...}, warnings).
    """
    now = measurer.states[-2:] or ([measurer.state_ms] if measurer.state_ms else [])
    if not cells or not now:  # a device side that does not report its state
        return {"checked": False}, []
    ref_now = sum(now) / len(now)
    warnings = []
    if measurer.stale["cell"] or measurer.stale["model"]:
        then = statistics.median(measurer.stale_state_ms)
        warnings.append(f"{len(measurer.stale['cell'])} cached cell(s) and {len(measurer.stale['model'])} cached "
                        "whole-model "
                        f"timing(s) were from another machine state (reference cell {then:.3g} ms then, "
                        f"{ref_now:.3g} ms now): re-measured them")
    off = [c for c in cells if stats[c["key"]].get("reference_ms")
           and abs(stats[c["key"]]["reference_ms"] / ref_now - 1) > measurer.state_limit]
    if off:
        again, _ = measurer.cells(off, reference, options.batch_cells,
                                  reporter.stage("cells_again"), fresh=True, keep_faster=False)
        stats.update(again)
    readings = [r for r in (stats[c["key"]].get("reference_ms") for c in cells) if r] + now + measurer.states
    readings += [d["reference_ms"] for d in measurer.drift if d.get("reference_ms")]
    low, high = min(readings), max(readings)
    if high / low - 1 > measurer.state_limit:
        warnings.append(f"the machine's speed changed by {high / low - 1:.0%} while profiling (reference cell "
                        f"{low:.3g}–{high:.3g} ms): something else is competing for it, so the table and its "
                        "fidelity figures are unreliable; profile again on an idle machine")
    return {"checked": True, "reference_ms": ref_now, "reference_range_ms": [low, high],
            "stale_cells": len(measurer.stale["cell"]), "stale_models": len(measurer.stale["model"]),
            "remeasured_in_run": len(off), "remeasured": [c["key"] for c in off]}, warnings


def _sha(proto) -> str:
    import hashlib

    return hashlib.sha256(proto.SerializeToString()).hexdigest()


IMPLAUSIBLE = 1.6  # a cell this much slower than a wider cell of the same regime was measured in a noise burst


def implausible(cells: list, stats: dict, step: int) -> list:
    """Cells slower than IMPLAUSIBLE × a cell at least as wide in both widths, in the same regime and signature.

    Within a regime (both widths on the channel step, or both off it) a wider convolution or GEMM is never
    much faster; when a measurement says so, the narrower one was timed while the device was busy (on a
    2-core host, one busy core slows a 2-thread run several-fold). Those cells are measured once more.
    """
    from .grid import is_aligned

    by_sig = {}
    for cell in cells:
        regime = (is_aligned(cell["c_in"], step), is_aligned(cell["c_out"], step))
        if regime[0] != regime[1]:
            continue
        by_sig.setdefault((cell["sig_key"], regime), []).append(cell)
    out = []
    for group in by_sig.values():
        for cell in group:
            ms = stats[cell["key"]]["estimate_ms"]
            if any(o is not cell and o["c_in"] >= cell["c_in"] and o["c_out"] >= cell["c_out"]
                   and ms > IMPLAUSIBLE * stats[o["key"]]["estimate_ms"] for o in group):
                out.append(cell)
    return out


def _refinements(signatures: dict, cells: list, stats: dict, step: int) -> list:
    """New cells at on-step midpoints where neighbouring measured cells jump (grid.refine), per signature."""
    from .grid import refine

    by_sig = {}
    for cell in cells:
        by_sig.setdefault(cell["sig_key"], {})[(cell["c_in"], cell["c_out"])] = stats[cell["key"]]["estimate_ms"]
    template = {cell["sig_key"]: cell for cell in cells}
    extra = []
    for sig_key, entry in signatures.items():
        for c_in, c_out in refine(entry, by_sig.get(sig_key, {}), step):
            key = f"{sig_key}@{c_in}x{c_out}"
            if (c_in, c_out) not in by_sig.get(sig_key, {}):
                extra.append(dict(template[sig_key], key=key, c_in=c_in, c_out=c_out))
    return extra


def _variant_key(loaded, dense_key: str, seed: int, aligned: bool, step: int, options: ProfileOptions) -> str:
    """Identity of one variant: the same model, seed, width rules and step build the same variant."""
    import hashlib

    text = json.dumps({"builder": VARIANT_BUILDER, "source": loaded.source_sha256, "dense": dense_key, "seed": seed,
                       "aligned": aligned,
                       "step": step, "keep": list(options.keep_range), "regime": loaded.regime,
                       "seq_len": loaded.seq_len}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _variant_models(loaded, options: ProfileOptions, step: int, workdir: Path, dense_path: Path,
                    measurer: Measurer, reporter: Reporter) -> tuple:
    """Calibration and held-out variants; returns ({model key: onnx path or None if cached}, records).

    A variant whose structure (blocks) and timing are both cached is neither rebuilt nor exported, so a
    re-profile of the same model costs almost nothing.
    """
    import dataclasses
    import hashlib

    from edgeprune.exporters.onnx import export_onnx

    from .blocks import Block

    dense_key = hashlib.sha256(dense_path.read_bytes()).hexdigest()
    models = {dense_key: dense_path}
    info = {"dense": dense_key, "calibration": [], "heldout": [], "slimmable": loaded.slimmable}
    if not loaded.slimmable or options.variants + options.calibration_variants == 0:
        return models, info
    from edgeprune.pruning.variants import make_variant

    module = None
    total = options.calibration_variants + options.variants
    progress = reporter.stage("variants", total)
    for i in range(total):
        role = "calibration" if i < options.calibration_variants else "heldout"
        seed = options.seed * 100003 + i + (7919 if role == "calibration" else 0)
        aligned = i % 2 == 0
        vkey = _variant_key(loaded, dense_key, seed, aligned, step, options)
        known = measurer.cache.get_many("variants", "variant", [vkey]).get(vkey)
        if known and measurer.has_model(known["onnx_sha256"]):
            key = known["onnx_sha256"]
            blocks = [Block(**dict(b, nodes=tuple(b["nodes"]))) for b in known["blocks"]]
            models[key] = None
        else:
            if module is None:
                module = loaded.export_module()
                example = loaded.example_inputs(module)
            variant = make_variant(module, example, seed, aligned=aligned, step=step,
                                   keep_range=options.keep_range, index=i)
            path = workdir / f"variant{i}.onnx"
            proto, _ = export_onnx(variant.module, loaded.example_inputs(variant.module), path)
            key = hashlib.sha256(path.read_bytes()).hexdigest()
            blocks = extract_blocks(proto, head_dim=loaded.head_dim).blocks
            models[key] = path
            measurer.cache.put_many("variants", "variant", {vkey: {
                "onnx_sha256": key, "blocks": [dataclasses.asdict(b) for b in blocks]}})
        info[role].append({"key": key, "aligned": aligned, "blocks": blocks, "seed": seed})
        progress({"progress": i + 1, "total": total, "stage": "variants"})
    reporter.done("variants")
    return models, info


def model_ms(record: dict) -> float:
    """A whole model's latency: the lower of its independent rounds' estimates (each a median of pass minima).

    Noise on a shared host only ever slows a round down, so the faster round is the better reading.
    """
    return min(record["rounds"])


def _calibrate_and_score(table: LatencyTable, graph: GraphBlocks, measured: dict, info: dict,
                         options: ProfileOptions) -> None:
    dense_ms = model_ms(measured[info["dense"]])
    calib = [table.features(v["blocks"]) for v in info["calibration"]]
    calib_meas = [model_ms(measured[v["key"]]) for v in info["calibration"]]
    dense = table.features(graph.blocks)
    table.calibration = choose_calibration(dense, dense_ms, calib, calib_meas)
    if table.two_state:  # what the calibration was fitted on, so another state rule can be judged from the table
        table.memory["calibration_points"] = [{"measured_ms": m, "features": f}
                                              for f, m in zip([dense] + calib, [dense_ms] + calib_meas)]
    heldout = info["heldout"]
    if not heldout:
        table.fidelity = {"n_variants": 0, "status": "not measured: no slimmable source" if not info["slimmable"]
                          else "not measured: --variants 0"}
        return
    predicted, macs_pred, meas, exact, rounds, per_variant = [], [], [], [], [], []
    for v in heldout:
        f = table.features(v["blocks"])
        p = table.calibrate(f)
        m = model_ms(measured[v["key"]])
        q = dense_ms * sum(b.macs for b in v["blocks"]) / graph.macs
        predicted.append(p)
        macs_pred.append(q)
        meas.append(m)
        exact.append(f["exact_share"])
        rounds.append(measured[v["key"]]["rounds"])
        per_variant.append({"aligned": v["aligned"], "seed": v["seed"], "measured_ms": m, "predicted_ms": p,
                            "macs_predicted_ms": q, "exact_cell_share": f["exact_share"], "features": f})

    def subset(values, aligned):
        return [x for x, v in zip(values, heldout) if v["aligned"] == aligned]

    table.fidelity = dict(error_figures(predicted, meas), n_variants=len(heldout), seed=options.seed,
                          exact_cell_share=sum(exact) / len(exact), noise_ceiling=noise_ceiling(rounds),
                          macs=error_figures(macs_pred, meas),
                          aligned=error_figures(subset(predicted, True), subset(meas, True)),
                          arbitrary=error_figures(subset(predicted, False), subset(meas, False)),
                          macs_arbitrary=error_figures(subset(macs_pred, False), subset(meas, False)),
                          variants=per_variant)
