"""The latency table file: what was measured, where, how, and how well it predicts (DESIGN.md format).

format_version 2 is the two-state table: besides its warm reading (`estimate_ms`, weights in cache, as an
isolated cell runs) each cell with weights carries `cold_ms` (weights read from memory, as a layer of a model too
big for the last-level cache reads them), and `memory` holds the cache size and the rule that picks the state
from a candidate's weight footprint. A table without cold cells is written as format_version 1, exactly as before,
and both versions load.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeprune.atomic import write_json
from edgeprune.errors import BadInputError
from edgeprune.profilers.schema import Bool, Const, Either, Int, ListOf, MapOf, Maybe, Num, Obj, Str, Tagged, check
from edgeprune.profilers.synth import weight_elems

from .blocks import Block, cell_key
from .grid import Axis
from .predict import interpolate

FORMAT_VERSION = 2  # two-state tables (cold cells and `memory`)
WARM_ONLY_VERSION = 1  # tables without cold cells are written as before, so their content ids do not change
READS = (WARM_ONLY_VERSION, FORMAT_VERSION)
BYTES_PER_WEIGHT = {"fp32": 4, "fp16": 2, "int8": 1}

MS = Num(min=0)
SHARE = Maybe(Num(min=0, max=1))
WIDTH = Int(min=1)
AXIS = Obj({"aligned": ListOf(WIDTH), "off": ListOf(WIDTH)}, {"fixed": Bool()})
# the calibration kinds `apply_calibration` reads, or {} (no calibration)
CALIBRATION = Either(Const({}), Tagged("kind", {
    "ratio": Obj({"value": Num(min=0)}), "additive": Obj({"value": Num()}),
    "layout": Obj({"value": Num(), "layout_on_step_ms_per_m": Num(), "layout_off_step_ms_per_m": Num()}),
    "regime": Obj({"value": Num(min=0), "other_ratio": Num(min=0)})}),
    what="an object")
# Two-state tables: the candidate's weight bytes F against the last-level cache C give its cold share
# α = clamp((F/C − warm_below) / (cold_above − warm_below), 0, 1); warm_below == cold_above is a hard switch.
# Cells holding less than `cold_min_bytes` of weights have no cold reading and read the same in both states.
MEMORY = Obj({"llc_bytes": Int(min=1), "bytes_per_weight": Int(min=1), "warm_below": Num(min=0),
              "cold_above": Num(min=0)}, {"dense_weight_bytes": Int(min=0), "cold_min_bytes": Int(min=0),
                                          "calibration_points": ListOf(Obj())})
TABLE = Obj({
    "fingerprint": Obj({}, {"device": Maybe(Str()), "threads": Maybe(Int(min=1))}),
    "runtime": Obj({"backend": Str(), "threads": Int(min=1)},
                   {"provider": Maybe(Str()), "precision": Str(), "version": Maybe(Str())}),
    "model": Obj({"spec": Str()}, {"family": Maybe(Str()), "input_shape": Maybe(ListOf(Int(min=0))),
                                   "seq_len": Maybe(Int(min=1)), "regime": Maybe(Str())}),
    "estimator": Obj({"name": Str()}, {"models": Obj()}),
    "step": Int(min=1),
    "signatures": MapOf(Obj({"signature": Obj(), "c_in": AXIS, "c_out": AXIS, "tied": Bool()})),
    "cells": MapOf(Obj({"kind": Str(), "signature": Str(), "c_in": WIDTH, "c_out": WIDTH, "estimate_ms": MS,
                        "min_ms": MS, "median_ms": MS, "p90_ms": MS, "mad_ms": MS, "n": Int(min=0)},
                       {"cold_ms": MS, "cold_copies": Int(min=1)})),
    "layers": MapOf(Obj({"kind": Str(), "c_in": WIDTH, "c_out": WIDTH},
                        {"signature": Str(), "cell": Str(), "in_fixed": Bool(), "out_fixed": Bool(),
                         "macs": Num(min=0)})),
}, {
    "calibration": CALIBRATION,
    "fidelity": Obj({}, {"within_10": SHARE, "within_5": SHARE, "mape": Maybe(Num(min=0)),
                         "noise_ceiling": SHARE, "exact_cell_share": SHARE, "n_variants": Int(min=0)}),
    "uncovered": MapOf(Int(min=0)), "layout_ops": MapOf(Int(min=0)), "notes": ListOf(Str()), "profile": Obj(),
    "memory": MEMORY,
})


def content_id(data: dict) -> str:
    """sha256 of the canonical JSON of everything but the id itself (tables, bundle manifests)."""
    body = {k: v for k, v in data.items() if k != "id"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


@dataclass
class LatencyTable:
    """Measured cells per block signature, the model's layers, calibration and fidelity."""

    fingerprint: dict
    runtime: dict  # backend, version, provider, precision, threads
    model: dict  # spec, sha256, input shape, family
    estimator: dict
    step: int
    signatures: dict  # sig key -> {signature, c_in axis, c_out axis, tied}
    cells: dict  # cell key -> {kind, signature key, c_in, c_out, estimate_ms, min_ms, median_ms, p90_ms, mad_ms, n}
    layers: dict  # layer name -> {kind, c_in, c_out, cell, in_fixed, out_fixed, macs}
    calibration: dict = field(default_factory=dict)
    fidelity: dict = field(default_factory=dict)
    uncovered: dict = field(default_factory=dict)
    layout_ops: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    profile: dict = field(default_factory=dict)  # wall times, cache hits, drift
    memory: dict = field(default_factory=dict)  # two-state tables: cache size and the state rule (MEMORY)

    @property
    def two_state(self) -> bool:
        """Whether the table holds cold cells and a rule to choose between them and the warm ones."""
        return bool(self.memory)

    def to_dict(self) -> dict:
        data = {
            "format_version": FORMAT_VERSION if self.two_state else WARM_ONLY_VERSION, "kind": "latency_table",
            "fingerprint": self.fingerprint,
            "runtime": self.runtime, "model": self.model, "estimator": self.estimator, "step": self.step,
            "interpolation": "regime-bilinear (see edgeprune/latency/predict.py)",
            "signatures": self.signatures, "cells": self.cells, "layers": self.layers,
            "calibration": self.calibration, "fidelity": self.fidelity, "uncovered": self.uncovered,
            "layout_ops": self.layout_ops, "notes": self.notes, "profile": self.profile,
        }
        if self.two_state:
            data["memory"] = self.memory
        data["id"] = content_id(data)
        return data

    @property
    def id(self) -> str:
        return self.to_dict()["id"]

    @classmethod
    def from_dict(cls, data: dict) -> "LatencyTable":
        return cls(data["fingerprint"], data["runtime"], data["model"], data["estimator"], data["step"],
                   data["signatures"], data["cells"], data["layers"], data.get("calibration", {}),
                   data.get("fidelity", {}), data.get("uncovered", {}), data.get("layout_ops", {}),
                   data.get("notes", []), data.get("profile", {}), data.get("memory", {}))

    def save(self, path: str | Path) -> str:
        data = self.to_dict()
        write_json(path, data)
        return data["id"]

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        path = Path(path)
        if not path.is_file():
            raise BadInputError(f"latency table {path} does not exist", "create one with edgeprune profile")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise BadInputError(f"latency table {path} is not valid JSON ({err})", "re-run edgeprune profile") from None
        if not isinstance(data, dict) or data.get("kind") != "latency_table":
            raise BadInputError(f"{path} is not an edgeprune latency table", "give the file edgeprune profile wrote")
        if data.get("format_version") not in READS:
            raise BadInputError(f"latency table {path} has format_version {data.get('format_version')}, "
                                f"this edgeprune reads {' and '.join(map(str, READS))}", "re-run edgeprune profile")
        if data.get("id") != content_id(data):
            raise BadInputError(f"latency table {path} was modified after it was written (id mismatch)",
                                "re-run edgeprune profile instead of editing the table")
        check(data, TABLE, lambda bad: BadInputError(f"latency table {path}: {bad}", "re-run edgeprune profile"))
        if data["format_version"] == FORMAT_VERSION and not data.get("memory"):
            raise BadInputError(f"latency table {path}: format_version 2 without its memory section",
                                "re-run edgeprune profile")
        for name, layer in data["layers"].items():  # a layer must point at a measured signature
            if "signature" in layer and layer["signature"] not in data["signatures"]:
                raise BadInputError(f"latency table {path}: layers[{name!r}].signature {layer['signature']!r} "
                                    "is not among the table's signatures", "re-run edgeprune profile")
        return cls.from_dict(data)

    # -- prediction ---------------------------------------------------------------------------------
    def _values(self, sig_key: str, state: str = "warm") -> dict:
        """{(c_in, c_out): ms} of a signature's cells in one state.

        Cold, a cell holding less than `memory.cold_min_bytes` of weights (none: a pool, an element-wise op)
        reads as it does warm; a larger cell without a cold reading is left out, so a prediction that needs it
        fails as a missing cell.
        """
        cache = self.__dict__.setdefault("_value_cache", {})
        if (sig_key, state) not in cache:
            cells = [c for c in self.cells.values() if c["signature"] == sig_key]
            if state == "cold":
                signature = self.signatures[sig_key]["signature"]
                least = max(1, self.memory.get("cold_min_bytes", 0)) / self.memory.get("bytes_per_weight", 4)
                values = {(c["c_in"], c["c_out"]): c.get("cold_ms", c["estimate_ms"]) for c in cells
                          if "cold_ms" in c or weight_elems(signature, c["c_in"], c["c_out"]) < least}
            else:
                values = {(c["c_in"], c["c_out"]): c["estimate_ms"] for c in cells}
            cache[(sig_key, state)] = values
        return cache[(sig_key, state)]

    def forget_values(self) -> None:
        """Drop the per-signature values read from `cells` (after cells were re-measured)."""
        self.__dict__.pop("_value_cache", None)

    def block_ms(self, block: Block, state: str = "warm") -> tuple:
        """(raw ms before calibration, exact) for one block at its widths, warm (weights in cache) or cold."""
        sig_key = self._signature_of(block)
        if sig_key not in self.signatures:
            raise BadInputError(f"latency table has no block like {block.name} ({block.kind} {sig_key})",
                                "profile this model (or one with the same block shapes) first")
        entry = self.signatures[sig_key]
        return interpolate(self._values(sig_key, state), Axis.from_dict(entry["c_in"]),
                           Axis.from_dict(entry["c_out"]), entry["tied"], block.c_in, block.c_out, self.step,
                           where=sig_key)

    def weight_bytes(self, blocks: list) -> int:
        """Bytes of weights the blocks read per run at their widths (the candidate's footprint)."""
        per = self.memory.get("bytes_per_weight") or BYTES_PER_WEIGHT.get(self.runtime.get("precision"), 4)
        return sum(block_weight_elems(b) for b in blocks) * per

    def cold_share(self, weight_bytes: int) -> float:
        """The share of the cold state in a prediction for a candidate holding `weight_bytes` of weights.

        0 for a warm-only table. Otherwise the footprint against the last-level cache by the table's rule
        (`memory`): 0 at or below `warm_below` × LLC, 1 above `cold_above` × LLC, linear between.
        """
        if not self.two_state:
            return 0.0
        ratio = weight_bytes / self.memory["llc_bytes"]
        lo, hi = self.memory["warm_below"], self.memory["cold_above"]
        if hi <= lo:
            return 1.0 if ratio > lo else 0.0
        return min(1.0, max(0.0, (ratio - lo) / (hi - lo)))

    def _signature_of(self, block: Block) -> str:
        """The block's signature, or its layer's in this table when both are one op written two ways: a grouped
        conv cut to one channel per group reads as depthwise (groups = channels), and so does a depthwise conv
        with a channel multiplier cut to one output per group (a held-out variant exported at such widths)."""
        layer = self.layers.get(block.name) or {}
        known = self.signatures.get(layer.get("signature"), {}).get("signature")
        if block.sig_key in self.signatures or block.kind != "conv" or not known:
            return block.sig_key

        def count(sig):  # the group count the op runs with at this block's widths
            return block.c_in if sig.get("groups") == "depthwise" else sig.get("groups", 1)

        same = {k: v for k, v in known.items() if k != "groups"} == \
            {k: v for k, v in block.signature.items() if k != "groups"}
        return layer["signature"] if same and count(known) == count(block.signature) else block.sig_key

    def raw_ms(self, blocks: list) -> tuple:
        """(Σ cells in ms, share of blocks that hit a measured cell exactly), in the candidate's state."""
        sums = self._sums(blocks)
        return sums["cells_ms"], sums["exact_share"]

    def _sums(self, blocks: list) -> dict:
        """Σ cells (in the candidate's state), split into on-step convs and the rest; on a two-state table also
        Σ warm, Σ cold, the blocks' weight bytes and their cold share."""
        readings = [self.block_ms(b) for b in blocks]
        warm = np.array([ms for ms, _ in readings], float)
        exact = sum(hit for _, hit in readings)
        value = warm
        out = {"exact_share": exact / len(blocks) if blocks else 1.0}
        if self.two_state:
            cold = np.array([self.block_ms(b, "cold")[0] for b in blocks], float)
            footprint = self.weight_bytes(blocks)
            share = self.cold_share(footprint)
            value = (1 - share) * warm + share * cold
            out.update(cells_warm_ms=float(warm.sum()), cells_cold_ms=float(cold.sum()), weight_bytes=footprint,
                       cold_share=share)
        on = np.array([on_step_conv(b, self.step) for b in blocks], bool)
        out.update(cells_ms=float(value.sum()), cells_on_step_ms=float(value[on].sum()),
                   cells_other_ms=float(value[~on].sum()))
        return out

    def features(self, blocks: list) -> dict:
        """What calibration reads: Σ cells (whole, and split into on-step convs and the rest), and the elements
        convs move through layout changes, in millions.

        A micro-model pays its input/output layout conversion (e.g. ONNX Runtime's NCHW <-> NCHWc reorders)
        that an on-step conv inside the whole model does not, while an off-step conv pays them in the model too.
        """
        out = dict(self._sums(blocks))
        out["layout_on_step_m"] = sum(b.io_elems for b in blocks if on_step_conv(b, self.step)) / 1e6
        out["layout_off_step_m"] = sum(b.io_elems for b in blocks
                                       if b.kind == "conv" and not on_step_conv(b, self.step)) / 1e6
        return out

    def calibrate(self, features: dict) -> float:
        """The table's calibration applied to a candidate's `features` (only `cells_ms` for ratio/additive)."""
        return apply_calibration(self.calibration, features)

    def predict_ms(self, blocks: list) -> float:
        """Predicted end-to-end latency of a graph's blocks, in the table's estimator."""
        return self.calibrate(self.features(blocks))


def apply_calibration(cal: dict, features: dict) -> float:
    """ratio: r·Σ; additive: Σ + a; layout: r·Σ + b_on·L_on + b_off·L_off; regime: r_on·Σ_on-step convs +
    r_other·Σ_rest (all fitted on measured models, latency/fidelity.py)."""
    raw = features["cells_ms"]
    if not cal:
        return raw
    if cal["kind"] == "ratio":
        return raw * cal["value"]
    if cal["kind"] == "additive":
        return raw + cal["value"]
    if cal["kind"] == "regime":
        return features["cells_on_step_ms"] * cal["value"] + features["cells_other_ms"] * cal["other_ratio"]
    return raw * cal["value"] + cal["layout_on_step_ms_per_m"] * features["layout_on_step_m"] \
        + cal["layout_off_step_ms_per_m"] * features["layout_off_step_m"]


def on_step_conv(block: Block, step: int) -> bool:
    """A conv the runtime keeps in its blocked layout inside the model: what calibration prices apart."""
    return block.kind == "conv" and block.on_step(step)


def block_term(cal: dict, ms: float, block: Block, step: int) -> float:
    """One block's share of a calibrated prediction (an additive calibration's constant is not a block's)."""
    kind = cal.get("kind")
    if kind == "ratio":
        return ms * cal["value"]
    if kind == "regime":
        return ms * (cal["value"] if on_step_conv(block, step) else cal["other_ratio"])
    if kind == "layout":
        per_m = cal["layout_on_step_ms_per_m"] if block.on_step(step) else cal["layout_off_step_ms_per_m"]
        return ms * cal["value"] + (per_m * block.io_elems / 1e6 if block.kind == "conv" else 0.0)
    return ms


def block_weight_elems(block: Block) -> int:
    """Weights a block holds at its widths (profilers/synth.py counts them the way it builds the cells)."""
    return weight_elems(block.signature, block.c_in, block.c_out)


def cell_record(block_kind: str, sig_key: str, c_in: int, c_out: int, stats: dict, cold: dict | None = None
                ) -> tuple:
    """(key, table record) of a measured cell; `cold` adds its cold reading (`cold_ms`, `cold_copies`)."""
    key = cell_key(sig_key, c_in, c_out)
    record = {"kind": block_kind, "signature": sig_key, "c_in": c_in, "c_out": c_out}
    record.update({k: stats[k] for k in ("estimate_ms", "min_ms", "median_ms", "p90_ms", "mad_ms", "n")})
    if cold is not None:
        record.update(cold_ms=cold["estimate_ms"], cold_copies=cold.get("copies", 1))
    return key, record
