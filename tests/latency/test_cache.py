"""The SQLite measurement cache: shared across instances, keyed by fingerprint and kind, corruption-safe."""

import pytest

from edgeprune.errors import BadInputError
from edgeprune.latency.cache import MeasurementCache, default_path, fingerprint_key

FP_A = {"device": "cpu", "threads": 1, "runtime": "onnxruntime"}
FP_B = {"device": "cpu", "threads": 2, "runtime": "onnxruntime"}
STATS = {"estimate_ms": 0.125, "min_ms": 0.12, "median_ms": 0.13, "p90_ms": 0.14, "mad_ms": 0.002, "n": 60}


@pytest.fixture
def path(tmp_path):
    return tmp_path / "sub" / "cache.sqlite"


def test_fingerprint_key_is_stable_and_discriminating():
    key = fingerprint_key(FP_A)
    assert key == fingerprint_key(dict(reversed(list(FP_A.items()))))
    assert key != fingerprint_key(FP_B)
    assert len(key) == 16


def test_put_then_get_from_another_instance(path):
    writer = MeasurementCache(path)
    assert path.is_file()  # parent folder created
    writer.put_many(
        fingerprint_key(FP_A), "cell", {"conv@8x8": STATS, "conv@8x16": dict(STATS, n=30)}, body=FP_A
    )
    reader = MeasurementCache(path)
    try:
        got = reader.get_many(fingerprint_key(FP_A), "cell", ["conv@8x8", "conv@8x16", "conv@16x16"])
        assert got == {"conv@8x8": STATS, "conv@8x16": dict(STATS, n=30)}  # the absent key is simply absent
        assert reader.count() == 2 and reader.count(fingerprint_key(FP_A)) == 2
        body = reader.db.execute(
            "SELECT body FROM fingerprints WHERE key=?", (fingerprint_key(FP_A),)
        ).fetchone()
        assert body is not None and '"threads": 1' in body[0]
    finally:
        writer.close()
        reader.close()


def test_keys_are_separated_by_fingerprint_and_kind(path):
    cache = MeasurementCache(path)
    a, b = fingerprint_key(FP_A), fingerprint_key(FP_B)
    cache.put_many(a, "cell", {"k": dict(STATS, estimate_ms=1.0)})
    cache.put_many(b, "cell", {"k": dict(STATS, estimate_ms=2.0)})
    cache.put_many(a, "model", {"k": {"rounds": [3.0, 3.1]}})
    assert cache.get_many(a, "cell", ["k"])["k"]["estimate_ms"] == 1.0
    assert cache.get_many(b, "cell", ["k"])["k"]["estimate_ms"] == 2.0
    assert cache.get_many(a, "model", ["k"]) == {"k": {"rounds": [3.0, 3.1]}}
    assert cache.get_many(b, "model", ["k"]) == {}
    assert cache.count(a) == 2 and cache.count(b) == 1 and cache.count() == 3
    cache.close()


def test_put_replaces(path):
    cache = MeasurementCache(path)
    fp = fingerprint_key(FP_A)
    cache.put_many(fp, "cell", {"k": {"estimate_ms": 1.0}})
    cache.put_many(fp, "cell", {"k": {"estimate_ms": 0.5}})
    assert cache.get_many(fp, "cell", ["k"]) == {"k": {"estimate_ms": 0.5}}
    assert cache.count() == 1
    cache.close()


def test_many_keys_beyond_one_query_chunk(path):
    cache = MeasurementCache(path)
    fp = fingerprint_key(FP_A)
    items = {f"cell@{i}x{i}": {"estimate_ms": i / 1000} for i in range(1234)}
    cache.put_many(fp, "cell", items)
    assert cache.get_many(fp, "cell", list(items)) == items
    cache.close()


def test_wal_mode(path):
    cache = MeasurementCache(path)
    assert cache.db.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    cache.close()


def test_corrupt_file_is_bad_input(tmp_path):
    path = tmp_path / "cache.sqlite"
    path.write_bytes(b"this is not an SQLite database, just some bytes " * 100)
    with pytest.raises(BadInputError) as info:
        MeasurementCache(path)
    assert str(path) in info.value.message
    assert "EDGEPRUNE_CACHE" in info.value.hint


def test_default_path(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEPRUNE_CACHE", str(tmp_path / "x.sqlite"))
    assert default_path() == tmp_path / "x.sqlite"
    monkeypatch.delenv("EDGEPRUNE_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_path() == tmp_path / "xdg" / "edgeprune" / "measurements.sqlite"
    cache = MeasurementCache()
    assert cache.path == default_path() and cache.path.is_file()
    cache.close()


def test_put_is_visible_to_another_connection_at_once(path):
    writer, reader = MeasurementCache(path), MeasurementCache(path)
    fp = fingerprint_key(FP_A)
    writer.put(fp, "cell", "conv@8x8", STATS, body=FP_A)
    assert reader.get_many(fp, "cell", ["conv@8x8"]) == {"conv@8x8": STATS}  # committed, not pending
    writer.close()
    reader.close()


def test_every_put_survives_a_killed_writer(path):
    """A record is durable once `put` returns, even when the writer is SIGKILLed right after (WAL, synchronous
    NORMAL): the writer prints each key after its put, and every printed key is found afterwards."""
    import os
    import signal
    import subprocess
    import sys

    code = ("import json, sys, time\n"
            "from edgeprune.latency.cache import MeasurementCache\n"
            "cache = MeasurementCache(sys.argv[1])\n"
            "for i in range(100000):\n"
            "    cache.put('fp', 'cell', 'c%d' % i, {'estimate_ms': i + 1.0})\n"
            "    print('c%d' % i, flush=True)\n"
            "    time.sleep(0.001)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    printed = [proc.stdout.readline().strip() for _ in range(50)]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    printed += proc.stdout.read().split()
    cache = MeasurementCache(path)
    got = cache.get_many("fp", "cell", [f"c{i}" for i in range(len(printed) + 5)])
    assert set(printed) <= set(got)
    assert all(got[key] == {"estimate_ms": int(key[1:]) + 1.0} for key in got)  # no half-written record
    cache.close()
