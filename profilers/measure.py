"""Run a measurement plan: synthesise and time every cell, time whole models, return one result record."""

import json
import os
import sys
import time

from . import FORMAT_VERSION, synth
from .backends import runner_class
from .errors import ProfilerError
from .timing import Estimator, measure_interleaved

DRIFT_LIMIT = 0.03
GROUP_SIZE = 24  # cells per interleaved group: the most an interrupted job discards (docs/profiling.md)
# Cold cells (weights read from memory, not cache): each holds ~2x the last-level cache in copies, so a group
# of 4 keeps ~8x the cache in memory (256 MB for a 32 MB cache) while it is timed.
COLD_GROUP_SIZE = 4
COLD_FOOTPRINT = 2.0  # a cold cell's copies together hold at least this many times the last-level cache
MAX_COPIES = 64


def progress(stage, done, total):
    """One JSON line on stderr; the host turns these into a progress bar."""
    _line({"progress": done, "total": total, "stage": stage})


def emit(kind, key, **fields):
    """A finished measurement as one JSON line on stderr, written the moment it is final.

    The host commits each such record to its cache as it arrives, so a job stopped half-way keeps everything it
    finished. A line cut off by a kill is not JSON, so the host never takes half a record for a whole one.
    """
    record = {"record": kind, "key": key}
    record.update(fields)
    _line(record)


def _line(obj):
    sys.stderr.write(json.dumps(obj) + "\n")
    sys.stderr.flush()


def _cell_bytes(cell):
    model = synth.build_cell(cell["signature"], cell["c_in"], cell["c_out"], seed=cell.get("seed", 0))
    return model.SerializeToString()


def cold_copies(copy_bytes, llc_bytes, cap=MAX_COPIES):
    """How many copies of a cell's weights a cold timing rotates over (at least 2, at most `cap`).

    Enough that the copies together hold COLD_FOOTPRINT x the last-level cache: by the time a copy runs again
    the others have pushed its weights out, so each run reads them from memory, as a layer of a model too big
    for the cache does. The cap bounds sessions per cell (each costs a session start). It means that a cell
    whose copy holds less than 2 x LLC / cap (1 MB for a 32 MB cache) rotates over less than twice the cache,
    so part of its weights can stay in the last level; what it then under-counts is the memory read of at most
    that much per run.
    """
    if not copy_bytes or not llc_bytes:
        return 2
    return int(max(2, min(cap, -(-int(COLD_FOOTPRINT * llc_bytes) // int(copy_bytes)))))


def model_bytes(model):
    """Bytes of a ModelProto's initializers: what one copy of a cell holds in memory."""
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(init).nbytes for init in model.graph.initializer)


class Rotation(object):
    """One cell timed cold: `infer` runs the next of K copies, each a session holding its own weights.

    It follows the runner contract, so the ordinary estimator (`measure_interleaved`) times it like any cell.
    Copies run on the first copy's input and output buffers where the backend can share them
    (`Runner.share_io`), so the activations stay warm, as inside a whole model, and only the weights are cold.
    """

    def __init__(self, runners):
        self.runners = list(runners)
        self.model_path = self.runners[0].model_path
        self.used = [0] * len(self.runners)  # runs per copy (the tests read it)
        self.shared_io = False
        self.next = 0
        self.active = False

    def activate(self):
        """Activate every copy not yet active (the first usually is: copies are made from it)."""
        done = []
        try:
            for runner in self.runners:
                if not runner.active:
                    runner.activate()
                    done.append(runner)
            self.shared_io = all([r.share_io(self.runners[0]) for r in self.runners[1:]])
        except Exception:
            for runner in done:
                runner.deactivate()
            raise
        self.active = True

    def infer(self):
        i = self.next
        self.runners[i].infer()
        self.used[i] += 1
        self.next = (i + 1) % len(self.runners)

    def deactivate(self):
        for runner in self.runners:
            runner.deactivate()
        self.active = False


def _cold_runner(cell, make_runner, llc_bytes, cap):
    """(active Rotation over copies of `cell`, copies, bytes per copy).

    Every copy is its own session holding its own weights (the same values: caches see addresses, not values),
    made by the runner's `copy`, which on ONNX Runtime's CPU EP skips re-optimising the graph.
    """
    model = synth.build_cell(cell["signature"], cell["c_in"], cell["c_out"], seed=cell.get("seed", 0))
    copy_bytes = model_bytes(model)
    copies = cold_copies(copy_bytes, llc_bytes, cap)
    first = make_runner(model.SerializeToString())
    first.activate()
    try:
        rotation = Rotation([first] + [first.copy() for _ in range(copies - 1)])
        rotation.activate()
    except Exception:
        first.deactivate()
        raise
    return rotation, copies, copy_bytes


class _Reference(object):
    """The reference cell, loaded once and re-timed between groups.

    It is timed longer than a cell (5 passes of >= 50 ms) so its own noise does not read as drift; keeping its
    session loaded saves a session start and a warm-up per reading.
    """

    def __init__(self, make_runner, reference, estimator):
        self.runner = make_runner(_cell_bytes(reference))
        self.runner.activate()
        self.estimator = Estimator.from_dict(dict(estimator.to_dict(), passes=5, pass_s=max(estimator.pass_s, 0.05)))
        self.warm = False

    def time_ms(self):
        stats = measure_interleaved([self.runner], self.estimator, warm=not self.warm)[0]
        self.warm = True
        return stats["estimate_ms"]

    def close(self):
        self.runner.deactivate()


def _time_group(group, make_runner, estimator, errors, llc_bytes=None, cap=MAX_COPIES):
    """([keys], [stats]) of one group's cells timed in interleaved passes; cells the runtime refuses go to errors.

    A cell whose `state` is "cold" is a `Rotation` over copies of its weights; its stats say how many copies
    (`copies`), the bytes of each (`copy_bytes`) and the last-level cache they were sized for (`llc_bytes`).
    """
    runners, keys, extra = [], [], []
    try:
        for cell in group:
            try:
                if cell.get("state") == "cold":
                    runner, copies, copy_bytes = _cold_runner(cell, make_runner, llc_bytes, cap)
                    about = {"copies": copies, "copy_bytes": copy_bytes, "llc_bytes": llc_bytes,
                             "shared_io": runner.shared_io}
                else:
                    runner, about = make_runner(_cell_bytes(cell)), {}
                    runner.activate()
            except ProfilerError as err:
                errors[cell["key"]] = err.record()
                continue
            except Exception as err:  # the runtime refused the cell: report it, measure the rest
                errors[cell["key"]] = ProfilerError(
                    "cell_failed", "the runtime cannot run cell %s: %s" % (cell["key"], str(err)[:200]),
                    "this block shape is not supported by the runtime").record()
                continue
            runners.append(runner)
            keys.append(cell["key"])
            extra.append(about)
        stats = measure_interleaved(runners, estimator) if runners else []
        for stat, about in zip(stats, extra):
            stat.update(about)
        return keys, stats
    finally:
        for runner in runners:
            runner.deactivate()


def _groups(cells, group_size, cold_group_size):
    """Warm cells in groups of `group_size`, then cold ones (state "cold") in groups of `cold_group_size`."""
    warm = [c for c in cells if c.get("state") != "cold"]
    cold = [c for c in cells if c.get("state") == "cold"]
    return [warm[i:i + group_size] for i in range(0, len(warm), group_size)] + \
        [cold[i:i + cold_group_size] for i in range(0, len(cold), cold_group_size)]


def measure_cells(cells, make_runner, estimator, reference=None, group_size=GROUP_SIZE, retries=1,
                  cold_group_size=COLD_GROUP_SIZE, llc_bytes=None, max_copies=MAX_COPIES):
    """Time cells in interleaved groups; a reference cell timed between groups detects drift.

    A group whose reference moved by more than 3 % between before and after is measured again (at most
    `retries` times). The reading after one group is the reading before the next. A group's cells are final
    once its drift check passes: each is then emitted as a record (see `emit`), so a group is the most an
    interrupted job can lose. The drift seen is returned so the host can record it.

    Each cell's stats carry `reference_ms`, the reference cell's reading around its group: the machine's state
    when the cell was timed, which lets the host tell a cached cell from another state (an idle machine, a busy
    one) from one comparable with today's readings.

    Cells whose `state` is "cold" are timed with their weights coming from memory (a `Rotation` over copies
    sized by `cold_copies` from `llc_bytes`), in smaller groups because each holds twice the cache in copies.
    """
    results, errors, drift = {}, {}, []
    total = len(cells)
    ref = _Reference(make_runner, reference, estimator) if reference and cells else None
    try:
        before = ref.time_ms() if ref else None
        done = 0
        for number, group in enumerate(_groups(cells, group_size, cold_group_size)):
            attempts = 0
            while True:
                attempts += 1
                keys, stats = _time_group(group, make_runner, estimator, errors, llc_bytes, max_copies)
                after = ref.time_ms() if ref else None
                moved = abs(after / before - 1.0) if ref and before > 0 else 0.0
                state = (before + after) / 2.0 if ref else None
                before = after
                if moved <= DRIFT_LIMIT or attempts > retries:
                    break
            drift.append({"group": number, "drift": moved, "attempts": attempts,
                          "reference_ms": state})
            for key, stat in zip(keys, stats):
                if state is not None:
                    stat["reference_ms"] = state
                results[key] = stat
                emit("cell", key, stats=stat)
            done += len(group)
            progress("cells", done, total)
    finally:
        if ref:
            ref.close()
    return results, errors, drift


def measure_models(models, make_runner, estimator, rounds=1, base_dir="."):
    """Time whole models interleaved with each other; `rounds` independent rounds give the noise ceiling."""
    runners, keys, errors = [], [], {}
    for entry in models:
        path = os.path.join(base_dir, entry["file"])
        try:
            runner = make_runner(path)
            runner.activate()
        except ProfilerError as err:
            errors[entry["key"]] = err.record()
            continue
        except Exception as err:  # a corrupt model file is the user's input, not our bug
            errors[entry["key"]] = ProfilerError("bad_model", "cannot load %s: %s" % (entry["file"], err),
                                                 "check that the file is a valid model for this runtime").record()
            continue
        runners.append(runner)
        keys.append(entry["key"])
    results = {key: [] for key in keys}
    round_s = []
    try:
        for r in range(rounds):
            started = time.time()
            round_estimator = Estimator.from_dict(dict(estimator.to_dict(), seed=estimator.seed + r))
            for key, stat in zip(keys, measure_interleaved(runners, round_estimator, warm=(r == 0))):
                results[key].append(stat)
            round_s.append(time.time() - started)
            progress("models", r + 1, rounds)
    finally:
        for runner in runners:
            runner.deactivate()
    for key in keys:  # a model is final with its last round; the rounds are interleaved, so all end together
        emit("model", key, rounds=results[key])
    return results, errors, round_s


def run_plan(plan, base_dir="."):
    """Execute a plan dict and return the result dict (format in DESIGN.md, 'plan / result')."""
    from .sysinfo import collect, last_level_cache

    if plan.get("format_version") != FORMAT_VERSION:
        raise ProfilerError("bad_plan", "plan format_version %r is not %d" % (plan.get("format_version"),
                                                                               FORMAT_VERSION),
                            "use the same edgeprune version on host and device")
    runtime = plan["runtime"]
    cls = runner_class(runtime["backend"])
    estimator = Estimator.from_dict(plan.get("estimator", {}))

    def make_runner(model, spinning=True):
        return cls(model, threads=runtime.get("threads", 1), provider=runtime.get("provider"),
                   precision=runtime.get("precision", "fp32"), spinning=spinning)

    def make_cell_runner(model):
        return make_runner(model, spinning=False)

    started = time.time()
    cells, cell_errors, drift = measure_cells(plan.get("cells", []), make_cell_runner, estimator,
                                              reference=plan.get("reference"),
                                              group_size=plan.get("group_size", GROUP_SIZE),
                                              cold_group_size=plan.get("cold_group_size", COLD_GROUP_SIZE),
                                              llc_bytes=plan.get("llc_bytes") or last_level_cache()[0],
                                              max_copies=plan.get("max_copies", MAX_COPIES))
    state = []  # the reference cell around the whole models: the machine state they were timed in
    ref = None
    if plan.get("reference") and plan.get("models"):
        ref = _Reference(make_cell_runner, plan["reference"], Estimator.from_dict(plan.get("reference_estimator")
                                                                                  or plan.get("estimator", {})))
    try:
        if ref:
            state.append(ref.time_ms())
        models, model_errors, round_s = measure_models(plan.get("models", []), make_runner, estimator,
                                                       rounds=plan.get("model_rounds", 1), base_dir=base_dir)
        if ref:
            state.append(ref.time_ms())
    finally:
        if ref:
            ref.close()
    errors = dict(cell_errors)
    errors.update(model_errors)
    return {"format_version": FORMAT_VERSION, "kind": "result", "facts": collect(), "runtime": runtime,
            "estimator": estimator.to_dict(), "cells": cells, "models": models, "errors": errors,
            "drift": drift, "model_round_s": round_s, "state_ms": state, "wall_s": time.time() - started}
