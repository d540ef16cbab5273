"""Parse `tegrastats` lines (Jetson: TX2 / Nano / Xavier on L4T R32, Orin on R35-R36, Thor on R38).

Why: the clock and thermal state during a timing run decides whether two runs are comparable, and on a Jetson
`tegrastats` is the one tool that reports it all. Its line format drifted across releases (no units vs `mW`,
`EMC_FREQ 0%` vs `0%@2133`, `GR3D_FREQ 0%@76` vs `0%@[0,0]` vs `@[0,0,0]`, optional timestamp, rails named
`VDD_IN` or just `GPU`), so the line is read field by field with one small grammar; any field the grammar does
not know makes the whole line a ValueError instead of being skipped.

Result of `parse_tegrastats_line` (absent fields are None or empty):

    timestamp        "MM-DD-YYYY HH:MM:SS" as printed, or None
    ram              {used_mb, total_mb, lfb_blocks, lfb_block_mb}
    swap, iram       {used_mb, total_mb, cached_mb} / {used_kb, total_kb, lfb_kb}, or None
    cpus             [{online, load_pct, freq_mhz}], one per core in order ("off" cores: online False)
    gpu              GR3D_FREQ as {load_pct, freq_mhz: [per-GPC MHz]}; load_pct None when not printed (Thor)
    emc              EMC_FREQ as {load_pct, freq_mhz}
    engines          every other unit by its printed name: {on, load_pct, freq_mhz}
    mts              {fg_pct, bg_pct} (Xavier on R32), or None
    temperatures_c   {sensor: float}; None for a sensor printed as -256C (offline on Orin)
    power_mw         {rail: {current, average}} in mW; a repeated rail name gets "#2", "#3"
"""

from __future__ import annotations

import re
from typing import Any, Dict, List, Optional

_TIMESTAMP = re.compile(r"(\d{2}-\d{2}-\d{4} \d{2}:\d{2}:\d{2}) +")
_NAME = r"[A-Za-z][A-Za-z0-9_]*"
_UNIT = r"[A-Z][A-Z0-9_]*"

# (kind, pattern), tried in order at the current position; each must end at a space or the end of the line.
_FIELDS = [
    ("ram", re.compile(r"RAM (\d+)/(\d+)MB(?: \(lfb (\d+)x(\d+)MB\))?")),
    ("swap", re.compile(r"SWAP (\d+)/(\d+)MB(?: \(cached (\d+)MB\))?")),
    ("iram", re.compile(r"IRAM (\d+)/(\d+)kB ?\(lfb (\d+)kB\)")),
    ("cpu", re.compile(r"CPU \[([^\]]*)\](?:@(\d+))?")),
    ("mts", re.compile(r"MTS fg (\d+)% bg (\d+)%")),
    ("temp", re.compile(r"(" + _NAME + r")@(-?\d+(?:\.\d+)?)C")),
    ("rail", re.compile(r"(" + _NAME + r") (\d+)mW/(\d+)mW")),
    ("rail", re.compile(r"(" + _NAME + r") (\d+)/(\d+)")),
    ("unit_list", re.compile(r"(" + _UNIT + r") (?:(\d+)%)?@\[(\d+(?:,\d+)*)\]")),
    ("unit_freq", re.compile(r"(" + _UNIT + r") (?:(\d+)%)?@(\d+)")),
    ("unit_load", re.compile(r"(" + _UNIT + r") (\d+)%")),
    ("unit_off", re.compile(r"(" + _UNIT + r") off")),
    ("unit_mhz", re.compile(r"(" + _UNIT + r") (\d+)")),
]
_END = re.compile(r" +|$")
_CPU_CORE = re.compile(r"(\d+)%(?:@(\d+))?$")
_OFFLINE_SENSOR_C = -256.0


def parse_tegrastats_line(line: str) -> Dict[str, Any]:
    """Parse one line of `tegrastats` output; raise ValueError naming the first field that does not parse."""
    if not isinstance(line, str):
        raise ValueError("tegrastats line must be text, got %s" % type(line).__name__)
    text = line.strip()
    if not text:
        raise ValueError("empty tegrastats line")
    result = {
        "timestamp": None,
        "ram": None,
        "swap": None,
        "iram": None,
        "cpus": [],
        "gpu": None,
        "emc": None,
        "engines": {},
        "mts": None,
        "temperatures_c": {},
        "power_mw": {},
    }  # type: Dict[str, Any]
    pos = 0
    stamp = _TIMESTAMP.match(text)
    if stamp:
        result["timestamp"] = stamp.group(1)
        pos = stamp.end()
    while pos < len(text):
        kind, match = _next_field(text, pos)
        _store(result, kind, match, text)
        pos = _END.match(text, match.end()).end()
    if result["ram"] is None:
        raise ValueError("not a tegrastats line (no 'RAM used/totalMB' field): %r" % _clip(text))
    if not result["cpus"]:
        raise ValueError("not a tegrastats line (no 'CPU [...]' field): %r" % _clip(text))
    engines = result["engines"]
    result["gpu"] = engines.pop("GR3D_FREQ", None)
    result["emc"] = engines.pop("EMC_FREQ", None)
    if result["gpu"] is not None and not isinstance(result["gpu"]["freq_mhz"], list):
        freq = result["gpu"]["freq_mhz"]
        result["gpu"]["freq_mhz"] = [] if freq is None else [freq]
    return result


def parse_tegrastats_output(text: str) -> List[Dict[str, Any]]:
    """Parse every non-empty line of a `tegrastats` capture (e.g. a `--logfile`), in order."""
    lines = [line for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty tegrastats output")
    return [parse_tegrastats_line(line) for line in lines]


def _next_field(text, pos):
    for kind, pattern in _FIELDS:
        match = pattern.match(text, pos)
        if match and _END.match(text, match.end()):
            return kind, match
    raise ValueError(
        "unrecognised tegrastats field at column %d: %r (line: %r)"
        % (pos, _clip(text[pos:], 40), _clip(text))
    )


def _store(result, kind, m, text):
    if kind == "ram":
        _once(
            result,
            "ram",
            text,
            {
                "used_mb": int(m.group(1)),
                "total_mb": int(m.group(2)),
                "lfb_blocks": _int(m.group(3)),
                "lfb_block_mb": _int(m.group(4)),
            },
        )
    elif kind == "swap":
        _once(
            result,
            "swap",
            text,
            {"used_mb": int(m.group(1)), "total_mb": int(m.group(2)), "cached_mb": _int(m.group(3))},
        )
    elif kind == "iram":
        _once(
            result,
            "iram",
            text,
            {"used_kb": int(m.group(1)), "total_kb": int(m.group(2)), "lfb_kb": int(m.group(3))},
        )
    elif kind == "cpu":
        if result["cpus"]:
            raise ValueError("two CPU fields in one tegrastats line: %r" % _clip(text))
        result["cpus"] = _cpus(m.group(1), _int(m.group(2)), text)
    elif kind == "mts":
        _once(result, "mts", text, {"fg_pct": int(m.group(1)), "bg_pct": int(m.group(2))})
    elif kind == "temp":
        value = float(m.group(2))
        _unique_put(result["temperatures_c"], m.group(1), None if value == _OFFLINE_SENSOR_C else value)
    elif kind == "rail":
        _unique_put(result["power_mw"], m.group(1), {"current": int(m.group(2)), "average": int(m.group(3))})
    elif kind == "unit_list":
        freqs = [int(f) for f in m.group(3).split(",")]
        _unit(result, m.group(1), text, {"on": True, "load_pct": _int(m.group(2)), "freq_mhz": freqs})
    elif kind == "unit_freq":
        _unit(
            result, m.group(1), text, {"on": True, "load_pct": _int(m.group(2)), "freq_mhz": int(m.group(3))}
        )
    elif kind == "unit_load":
        _unit(result, m.group(1), text, {"on": True, "load_pct": int(m.group(2)), "freq_mhz": None})
    elif kind == "unit_off":
        _unit(result, m.group(1), text, {"on": False, "load_pct": None, "freq_mhz": None})
    elif kind == "unit_mhz":
        _unit(result, m.group(1), text, {"on": True, "load_pct": None, "freq_mhz": int(m.group(2))})
    else:  # pragma: no cover - the grammar above lists every kind
        raise AssertionError(kind)


def _cpus(body, shared_mhz, text):
    cores = []
    for entry in body.split(","):
        entry = entry.strip()
        if entry == "off":
            cores.append({"online": False, "load_pct": None, "freq_mhz": None})
            continue
        m = _CPU_CORE.match(entry)
        if not m:
            raise ValueError("unrecognised CPU core entry %r in tegrastats line: %r" % (entry, _clip(text)))
        mhz = _int(m.group(2))
        cores.append(
            {"online": True, "load_pct": int(m.group(1)), "freq_mhz": mhz if mhz is not None else shared_mhz}
        )
    return cores


def _unit(result, name, text, value):
    if name in result["engines"]:
        raise ValueError("unit %s appears twice in tegrastats line: %r" % (name, _clip(text)))
    result["engines"][name] = value


def _once(result, key, text, value):
    if result[key] is not None:
        raise ValueError("field %s appears twice in tegrastats line: %r" % (key.upper(), _clip(text)))
    result[key] = value


def _unique_put(mapping, name, value):
    """Orin prints placeholder rails (e.g. `NC`) more than once; keep every reading under a distinct key."""
    key, n = name, 1
    while key in mapping:
        n += 1
        key = "%s#%d" % (name, n)
    mapping[key] = value


def _int(text: Optional[str]) -> Optional[int]:
    return None if text is None else int(text)


def _clip(text, limit=120):
    return text if len(text) <= limit else text[:limit] + "..."
