"""The Python API: a few verbs that mirror the CLI and return records instead of printing."""

from __future__ import annotations

from pathlib import Path

from .latency.build import ProfileOptions, ProfileResult, Reporter
from .latency.table import LatencyTable


def profile(model: str, device: str, out: str | Path | None = None, *, host: str | None = None,
            weights: str | None = None, model_args: dict | None = None, input_shape: tuple | None = None,
            seq_len: int | None = None, regime: str = "prefill", threads: int = 1, backend: str | None = None,
            provider: str | None = None,
            precision: str = "fp32", density: str = "coarse", variants: int = 20, seed: int = 0,
            cache: str | Path | None = None, reporter: Reporter | None = None, force: bool = False,
            lock_clocks: bool = False, **ssh_options) -> ProfileResult:
    """Measure a latency table for `model` on `device` (this machine, or `host` over SSH); save it to `out`.

    Clocks are only read and recorded, unless `lock_clocks` runs the device's own locking commands first.
    """
    from .atomic import check_writable
    from .devices import load_registry, lookup_device, open_device
    from .latency.build import profile_model
    from .latency.cache import MeasurementCache
    from .models import load_model

    if out is not None:
        check_writable(out, force)
    registry = load_registry()
    lookup_device(device, registry)  # an unknown device name fails before the model is loaded or a host contacted
    loaded = load_model(model, weights=weights, model_args=model_args, input_shape=input_shape, seq_len=seq_len,
                        regime=regime)
    options = ProfileOptions(threads=threads, precision=precision, backend=backend, provider=provider,
                             density=density, variants=variants, seed=seed)
    measurements = MeasurementCache(cache)
    try:
        with open_device(device, host, ssh_options, registry) as session:
            facts = _lock_clocks(session.target, session.spec) if lock_clocks else session.facts
            result = profile_model(loaded, session.spec, facts, session.target, options, measurements, reporter)
    finally:
        measurements.close()
    if out is not None:
        result.table.save(out)
    return result


def _lock_clocks(target, spec) -> dict:
    """Run the device's clock-locking commands on it; returns the facts read afterwards."""
    import json

    from .errors import BadInputError

    if not spec.clocks.lock:
        raise BadInputError(f"device {spec.name} has no clock-locking command",
                            "drop --lock-clocks; the clock state is recorded in the table as it is")
    target.run_profilers(["lock-clocks", json.dumps([list(argv) for argv in spec.clocks.lock])])
    return target.run_profilers(["info"])


def load_table(path: str | Path) -> LatencyTable:
    """Read a latency table, verifying its format version and content id."""
    return LatencyTable.load(path)
