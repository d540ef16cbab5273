"""Parse `trtexec` logs (TensorRT 8.2 and later, 10.x included): version, precision, performance summary.

Why: users without the TensorRT Python API build and time engines with `trtexec`; its
`=== Performance summary ===` block is then the measurement, so it is read exactly (every statistic, every
percentile trtexec printed, in the units it printed) and the version and precision flags go into the
fingerprint. Lines may carry trtexec's `[MM/DD/YYYY-HH:MM:SS] [I]` prefixes or not. Logs from before the
summary block existed (TensorRT 7 / 8.0 style "Host Latency / min: ...") are rejected with a ValueError, as is
any summary line that does not have the expected shape.
"""

from __future__ import annotations

import re
import shlex
from typing import Any, Dict, List, Optional

_PREFIX = re.compile(r"^(?:\[\d{2}/\d{2}/\d{4}-\d{2}:\d{2}:\d{2}\]\s*)?(?:\[([A-Z])\]\s?)?(.*)$")
_STATUS = re.compile(
    r"^&&&& (RUNNING|PASSED|FAILED|WAIVED) TensorRT\.trtexec \[TensorRT v([0-9.]+)\]"
    r"(?: \[(b\d+)\])?(?: # (.*))?$"
)
_VERSION = re.compile(r"^TensorRT version: (\d+\.\d+\.\d+(?:\.\d+)?)$")
_PRECISION = re.compile(r"^Precision: (.+)$")
_DEVICE = re.compile(r"^Selected Device: (.+)$")
_THROUGHPUT = re.compile(r"^Throughput: ([0-9.eE+-]+) qps$")
_TOTAL = re.compile(r"^(Total Host Walltime|Total GPU Compute Time): ([0-9.eE+-]+) s$")
_STAT_LINE = re.compile(r"^([A-Za-z0-9 -]+?): (min = .*)$")
_STAT_ITEM = re.compile(r"^(min|max|mean|median|percentile\((\d+(?:\.\d+)?)%\)) = ([0-9.eE+-]+) ms$")
_SUMMARY_START = "=== Performance summary ==="

# Summary line label -> result key; the first three are required.
_STATS = [
    ("Latency", "latency_ms", True),
    ("GPU Compute Time", "gpu_compute_time_ms", True),
    ("End-to-End Host Latency", "end_to_end_host_latency_ms", False),
    ("Enqueue Time", "enqueue_time_ms", False),
    ("H2D Latency", "h2d_latency_ms", False),
    ("D2H Latency", "d2h_latency_ms", False),
]
_PRECISION_FLAGS = ("--fp16", "--bf16", "--int8", "--fp8", "--int4", "--best", "--noTF32", "--stronglyTyped")


def parse_trtexec_output(text: str) -> Dict[str, Any]:
    """Parse a trtexec log. Keys: tensorrt_version, build, status, command (argv list), precision_flags,
    build_precision, device, throughput_qps, latency_ms, gpu_compute_time_ms, end_to_end_host_latency_ms,
    enqueue_time_ms, h2d_latency_ms, d2h_latency_ms (each {min, max, mean, median, percentiles: {"99": ms}}
    or None), total_host_walltime_s, total_gpu_compute_time_s, warnings (the [W] lines of the summary)."""
    if not isinstance(text, str):
        raise ValueError("trtexec output must be text, got %s" % type(text).__name__)
    result = {
        "tensorrt_version": None,
        "build": None,
        "status": None,
        "command": None,
        "precision_flags": [],
        "build_precision": None,
        "device": None,
        "throughput_qps": None,
        "total_host_walltime_s": None,
        "total_gpu_compute_time_s": None,
        "warnings": [],
    }  # type: Dict[str, Any]
    for _, key, _ in _STATS:
        result[key] = None
    tag_version = None
    in_summary = False
    seen_summary = False
    for raw in text.splitlines():
        level, body = _PREFIX.match(raw.rstrip()).groups()
        body = body.strip()
        status = _STATUS.match(body)
        if status:
            in_summary = False
            result["status"] = status.group(1)
            tag_version = decode_version_tag(status.group(2))
            result["build"] = status.group(3)
            if status.group(4):
                result["command"] = _split_command(status.group(4))
            continue
        if body == _SUMMARY_START:
            if seen_summary:
                raise ValueError("trtexec output holds two performance summaries; parse one run at a time")
            in_summary = seen_summary = True
            continue
        if body.startswith("=== ") and body.endswith(" ==="):
            in_summary = False
            continue
        if in_summary:
            if level == "W":
                result["warnings"].append(body)
            else:
                _summary_line(result, body)
            continue
        for pattern, key in (
            (_VERSION, "tensorrt_version"),
            (_PRECISION, "build_precision"),
            (_DEVICE, "device"),
        ):
            match = pattern.match(body)
            if match and result[key] is None:
                result[key] = match.group(1).strip()
    if not seen_summary:
        raise ValueError(
            "no '%s' section in trtexec output (TensorRT older than 8.2, or run with "
            "--skipInference?)" % _SUMMARY_START
        )
    if result["throughput_qps"] is None:
        raise ValueError("trtexec performance summary has no 'Throughput: N qps' line")
    for label, key, required in _STATS:
        if required and result[key] is None:
            raise ValueError("trtexec performance summary has no '%s:' line" % label)
    if result["tensorrt_version"] is None:
        result["tensorrt_version"] = tag_version
    if result["command"]:
        result["precision_flags"] = [arg for arg in result["command"][1:] if arg in _PRECISION_FLAGS]
    return result


def decode_version_tag(tag: str) -> str:
    """trtexec's `[TensorRT v8502]` tag as a dotted version: 8502 -> 8.5.2, 101300 -> 10.13.0.

    TensorRT 8 encodes major*1000 + minor*100 + patch, TensorRT 10 major*10000 + minor*100 + patch.
    """
    tag = tag.lstrip("v")
    if "." in tag:
        return tag
    if not tag.isdigit():
        raise ValueError("unrecognised TensorRT version tag %r" % tag)
    value = int(tag)
    if value >= 100000:
        return "%d.%d.%d" % (value // 10000, value // 100 % 100, value % 100)
    if value >= 1000:
        return "%d.%d.%d" % (value // 1000, value // 100 % 10, value % 100)
    raise ValueError("unrecognised TensorRT version tag %r" % tag)


def _summary_line(result, body):
    if not body or body.startswith("Explanations of the performance metrics"):
        return
    throughput = _THROUGHPUT.match(body)
    if throughput:
        result["throughput_qps"] = float(throughput.group(1))
        return
    total = _TOTAL.match(body)
    if total:
        key = (
            "total_host_walltime_s" if total.group(1) == "Total Host Walltime" else "total_gpu_compute_time_s"
        )
        result[key] = float(total.group(2))
        return
    stat = _STAT_LINE.match(body)
    if stat:
        for label, key, _ in _STATS:
            if stat.group(1) == label:
                if result[key] is not None:
                    raise ValueError("trtexec summary repeats the '%s' line" % label)
                result[key] = _parse_stats(label, stat.group(2))
                return
    raise ValueError("unrecognised line in trtexec performance summary: %r" % body[:160])


def _parse_stats(label: str, body: str) -> Dict[str, Any]:
    stats = {"percentiles": {}}  # type: Dict[str, Any]
    for part in body.split(", "):
        item = _STAT_ITEM.match(part.strip())
        if not item:
            raise ValueError(
                "trtexec '%s': cannot read %r (expected 'min = X ms' style items)" % (label, part)
            )
        value = float(item.group(3))
        if item.group(2) is not None:
            stats["percentiles"][item.group(2)] = value
        elif item.group(1) in stats:
            raise ValueError("trtexec '%s': %s given twice" % (label, item.group(1)))
        else:
            stats[item.group(1)] = value
    missing = [name for name in ("min", "max", "mean", "median") if name not in stats]
    if missing:
        raise ValueError("trtexec '%s': missing %s in %r" % (label, ", ".join(missing), body[:160]))
    return stats


def _split_command(command: str) -> Optional[List[str]]:
    try:
        return shlex.split(command, posix=True)
    except ValueError:
        return command.split()
