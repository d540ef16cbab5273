"""Parse Raspberry Pi `vcgencmd` replies: `measure_temp`, `measure_clock <clock>`, `get_throttled`.

Why: a Pi throttles silently (under-voltage, soft temperature limit, arm frequency cap), and a run measured
while throttled is not the device's real speed; these readings are recorded with every timing and checked
between groups. Each command prints one `key=value` line: `temp=62.3'C`, `frequency(48)=1500000000`,
`throttled=0x50005`.
"""

from __future__ import annotations

import re
from typing import Any, Dict

_TEMP = re.compile(r"^temp=(-?\d+(?:\.\d+)?)'C$")
_CLOCK = re.compile(r"^frequency\((\d+)\)=(\d+)$")
_THROTTLED = re.compile(r"^throttled=0x([0-9a-fA-F]+)$")

# Bit meanings from the Raspberry Pi documentation of `vcgencmd get_throttled`.
THROTTLE_BITS = {
    "under_voltage": 0,
    "arm_frequency_capped": 1,
    "throttled": 2,
    "soft_temperature_limit": 3,
    "under_voltage_occurred": 16,
    "arm_frequency_capped_occurred": 17,
    "throttled_occurred": 18,
    "soft_temperature_limit_occurred": 19,
}


def parse_measure_temp(text: str) -> float:
    """SoC temperature in degrees C from `vcgencmd measure_temp`."""
    return float(_one_line(text, _TEMP, "measure_temp", "temp=NN.N'C").group(1))


def parse_measure_clock(text: str) -> Dict[str, Any]:
    """{"clock_id", "hz", "mhz"} from `vcgencmd measure_clock <clock>`; 0 Hz means the block is idle/gated."""
    match = _one_line(text, _CLOCK, "measure_clock", "frequency(N)=HZ")
    hz = int(match.group(2))
    return {"clock_id": int(match.group(1)), "hz": hz, "mhz": hz / 1e6}


def parse_get_throttled(text: str) -> Dict[str, Any]:
    """{"raw": int, <flag>: bool for each THROTTLE_BITS entry, "ok": no flag set now or since boot}."""
    raw = int(_one_line(text, _THROTTLED, "get_throttled", "throttled=0xHEX").group(1), 16)
    result = {"raw": raw}  # type: Dict[str, Any]
    for name, bit in THROTTLE_BITS.items():
        result[name] = bool(raw >> bit & 1)
    result["ok"] = not any(result[name] for name in THROTTLE_BITS)
    return result


def _one_line(text, pattern, command, shape):
    if not isinstance(text, str):
        raise ValueError("vcgencmd %s output must be text, got %s" % (command, type(text).__name__))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValueError(
            "vcgencmd %s: expected one line like %r, got %d lines: %r"
            % (command, shape, len(lines), text[:200])
        )
    match = pattern.match(lines[0])
    if not match:
        raise ValueError("vcgencmd %s: expected %r, got %r" % (command, shape, lines[0][:120]))
    return match
