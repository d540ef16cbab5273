"""The result record a device's `profilers run` job returns (DESIGN.md "plan / result"), checked on arrival.

Every number in it ends up in the SQLite cache and then in tables, so a malformed reply (a device side from
another edgeprune version, a runtime that printed over it) is refused as one line here instead of a
traceback, or a null timing, much later.
"""

from __future__ import annotations

from edgeprune.errors import DeviceError
from edgeprune.profilers.schema import Int, ListOf, MapOf, Maybe, Num, Obj, Str, check

MS = Num(min=0)
STATS = Obj({"estimate_ms": MS, "min_ms": MS, "median_ms": MS, "p90_ms": MS, "mad_ms": MS, "n": Int(min=1)},
            {"passes": Int(min=0), "pass_spread": Num(), "reference_ms": Maybe(MS)})
ERROR = Obj({"error": Obj({"message": Str()}, {"kind": Maybe(Str()), "hint": Maybe(Str())})})
RESULT = Obj({"cells": MapOf(STATS), "models": MapOf(ListOf(STATS, min_len=1))}, {
    "errors": MapOf(ERROR), "drift": ListOf(Obj()), "facts": Maybe(Obj()), "model_round_s": ListOf(MS),
    "wall_s": Maybe(MS), "state_ms": ListOf(MS),
})


def check_result(reply: dict, where: str) -> dict:
    """`reply` when it is a well-formed result record; else DeviceError naming the field."""
    return check(reply, RESULT, lambda bad: DeviceError(
        f"the measurement job on {where} returned a malformed result: {bad}",
        "the device side and the host side may be different edgeprune versions; reinstall edgeprune"))
