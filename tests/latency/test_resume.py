"""Measurer commits each measurement the device streams, so an interrupted profile resumes with the rest.

The target here plays the device: it streams one record per cell (or model) of the plan it was sent, the way
`profilers run` does, and can be stopped part-way like a Ctrl-C.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeprune.errors import DeviceError
from edgeprune.latency.build import Measurer
from edgeprune.latency.cache import MeasurementCache, fingerprint_key

FP = {"device": "cpu", "threads": 1}
CELLS = [{"key": f"conv@{w}x{w}", "kind": "conv", "c_in": w, "c_out": w} for w in range(8, 88, 8)]


def stats(ms: float) -> dict:
    return {"estimate_ms": ms, "min_ms": ms, "median_ms": ms, "p90_ms": ms, "mad_ms": 0.0, "n": 9}


class ScriptedDevice:
    """Streams a record per planned cell/model; `stop_after` records in, raises KeyboardInterrupt (Ctrl-C)."""

    where = "a scripted device"

    def __init__(self, ms: dict | None = None, stop_after: int | None = None, stream: bool = True,
                 extra: tuple | None = None):
        self.ms, self.stop_after, self.stream, self.extra = ms or {}, stop_after, stream, extra
        self.plans = []

    def run_profilers(self, args, files=None, on_progress=None, timeout=None) -> dict:
        plan = json.loads(Path(files[args[1]]).read_text())
        self.plans.append(plan)
        reply = {"cells": {}, "models": {}, "errors": {}, "drift": []}
        records = [("cell", c["key"], "stats", stats(self.ms.get(c["key"], 1.0))) for c in plan.get("cells", [])]
        records += [("model", m["key"], "rounds", [stats(2.0), stats(2.1)]) for m in plan.get("models", [])]
        if self.extra:
            records.insert(1, self.extra)
        for sent, (kind, key, name, payload) in enumerate(records):
            if sent == self.stop_after:
                raise KeyboardInterrupt
            if self.stream:
                on_progress({"record": kind, "key": key, name: payload})
            reply[kind + "s"][key] = payload
        return reply


@pytest.fixture
def cache(tmp_path):
    cache = MeasurementCache(tmp_path / "cache.sqlite")
    yield cache
    cache.close()


def measurer(device, cache, tmp_path) -> Measurer:
    return Measurer(device, cache, FP, {"backend": "onnxruntime"}, {}, {}, tmp_path)


def cached_cells(cache) -> dict:
    return cache.get_many(fingerprint_key(FP), "cell", [c["key"] for c in CELLS])


def test_cells_are_committed_as_they_stream_and_a_rerun_measures_only_the_rest(cache, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        measurer(ScriptedDevice(stop_after=4), cache, tmp_path).cells(CELLS, None, 200, lambda e: None)
    assert set(cached_cells(cache)) == {c["key"] for c in CELLS[:4]}

    device = ScriptedDevice()
    got, cached = measurer(device, cache, tmp_path).cells(CELLS, None, 3, lambda e: None)
    assert cached == 4 and set(got) == {c["key"] for c in CELLS}
    assert [c["key"] for plan in device.plans for c in plan["cells"]] == [c["key"] for c in CELLS[4:]]
    assert cached_cells(cache) == got


def test_progress_counts_cached_cells_and_each_batch(cache, tmp_path):
    cache.put_many(fingerprint_key(FP), "cell", {c["key"]: stats(1.0) for c in CELLS[:4]})

    class WithProgress(ScriptedDevice):
        def run_profilers(self, args, files=None, on_progress=None, timeout=None):
            reply = super().run_profilers(args, files, on_progress, timeout)
            on_progress({"progress": len(reply["cells"]), "total": len(reply["cells"]), "stage": "cells"})
            return reply

    seen = []
    measurer(WithProgress(), cache, tmp_path).cells(CELLS, None, 4, seen.append)
    assert [e["progress"] for e in seen] == [4, 8, 10]
    assert {e["total"] for e in seen} == {len(CELLS)}


def test_fresh_keeps_the_faster_of_the_cached_and_the_new_reading(cache, tmp_path):
    a, b = CELLS[0]["key"], CELLS[1]["key"]
    cache.put_many(fingerprint_key(FP), "cell", {a: stats(1.0), b: stats(1.0)})
    device = ScriptedDevice(ms={a: 0.5, b: 2.0})
    got, cached = measurer(device, cache, tmp_path).cells(CELLS[:2], None, 200, lambda e: None, fresh=True)
    assert cached == 0 and len(device.plans[0]["cells"]) == 2
    assert got[a]["estimate_ms"] == 0.5 and got[b]["estimate_ms"] == 1.0
    assert cached_cells(cache) == got


def test_cells_the_stream_did_not_bring_are_committed_from_the_reply(cache, tmp_path):
    got, _ = measurer(ScriptedDevice(stream=False), cache, tmp_path).cells(CELLS, None, 200, lambda e: None)
    assert cached_cells(cache) == got and len(got) == len(CELLS)


@pytest.mark.parametrize("extra, message", [
    (("cell", "conv@999x999", "stats", stats(1.0)), "did not ask for"),
    (("cell", CELLS[1]["key"], "stats", dict(stats(1.0), estimate_ms=None)), "malformed stats record for conv@16x16: estimate_ms: expected a number"),
])
def test_a_bad_record_is_refused_and_not_cached(cache, tmp_path, extra, message):
    device = ScriptedDevice(extra=extra)
    with pytest.raises(DeviceError, match=message):
        measurer(device, cache, tmp_path).cells(CELLS[:2], None, 200, lambda e: None)
    assert set(cached_cells(cache)) == {CELLS[0]["key"]}  # the good record before it stays


def test_models_are_committed_as_they_stream(cache, tmp_path):
    models = {"m1": tmp_path / "m1.onnx", "m2": tmp_path / "m2.onnx"}
    with pytest.raises(KeyboardInterrupt):
        measurer(ScriptedDevice(stop_after=1), cache, tmp_path).models(models, 2, lambda e: None)
    assert set(cache.get_many(fingerprint_key(FP), "model", list(models))) == {"m1"}

    device = ScriptedDevice()
    got = measurer(device, cache, tmp_path).models(models, 2, lambda e: None)
    assert [m["key"] for m in device.plans[0]["models"]] == ["m2"]
    assert got["m2"] == {"rounds": [2.0, 2.1], "stats": stats(2.0)}
    assert cache.get_many(fingerprint_key(FP), "model", list(models)) == got
