"""Parse board identity files: `/proc/device-tree/model` and Jetson's `/etc/nv_tegra_release`.

Why: auto-detection resolves `--device jetson` to the exact board and the L4T release (which fixes the
TensorRT, CUDA and cuDNN versions), and both go into every fingerprint. The device-tree model is one
NUL-terminated string (the same bytes as `/sys/firmware/devicetree/base/model`); `nv_tegra_release` starts
with `# R36 (release), REVISION: 4.3, GCID: ..., BOARD: ..., EABI: ..., DATE: ...` and may carry further `#
KEY: value`, `KEY=value` or vendor comment lines.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Union

_HEADER = re.compile(r"^#\s*R(\d+)\s*\(release\),\s*(.*)$")
_REVISION = re.compile(r"^\d+(?:\.\d+)*$")
_COMMENT_FIELD = re.compile(r"^#\s*([A-Z][A-Z0-9_]*):\s*(.*)$")
_ASSIGNMENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$")


def parse_device_tree_model(data: Union[str, bytes]) -> str:
    """The model string without its trailing NUL / newline; ValueError unless it is one printable string."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ValueError("device-tree model is not UTF-8 text: %s" % exc) from None
    if not isinstance(data, str):
        raise ValueError("device-tree model must be text or bytes, got %s" % type(data).__name__)
    model = data.rstrip("\x00\r\n\t ").strip()
    if not model:
        raise ValueError("empty device-tree model")
    if "\x00" in model:
        raise ValueError(
            "device-tree model holds several NUL-separated strings (is this the 'compatible' file?): %r"
            % model[:120]
        )
    if not model.isprintable():
        raise ValueError("device-tree model has non-printable characters: %r" % model[:120])
    return model


def parse_tegra_release(text: str) -> Dict[str, Any]:
    """Parse /etc/nv_tegra_release into release, revision, l4t_version ("36.4.3"), board, gcid, eabi, date,
    kernel_variant (or None), settings {KEY: value} and the remaining comment lines."""
    if not isinstance(text, str):
        raise ValueError("nv_tegra_release must be text, got %s" % type(text).__name__)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ValueError("empty nv_tegra_release")
    header = _HEADER.match(lines[0])
    if not header:
        raise ValueError(
            "not an nv_tegra_release file (first line is not '# R<major> (release), ...'): %r"
            % lines[0][:120]
        )
    major = int(header.group(1))
    fields = {}
    for part in header.group(2).split(","):
        key, sep, value = part.strip().partition(":")
        if not sep or not key.strip():
            raise ValueError("nv_tegra_release: malformed field %r in %r" % (part.strip(), lines[0][:160]))
        fields[key.strip().upper()] = value.strip()
    revision = fields.get("REVISION")
    if not revision or not _REVISION.match(revision):
        raise ValueError("nv_tegra_release: missing or malformed REVISION in %r" % lines[0][:160])
    result = {
        "release": "R%d" % major,
        "major": major,
        "revision": revision,
        "l4t_version": "%d.%s" % (major, revision),
        "gcid": fields.get("GCID"),
        "board": fields.get("BOARD"),
        "eabi": fields.get("EABI"),
        "date": fields.get("DATE"),
        "kernel_variant": None,
        "settings": {},
        "comments": [],
    }  # type: Dict[str, Any]
    for line in lines[1:]:
        commented = _COMMENT_FIELD.match(line)
        assigned = _ASSIGNMENT.match(line)
        if commented and commented.group(1) == "KERNEL_VARIANT":
            result["kernel_variant"] = commented.group(2).strip()
        elif assigned:
            result["settings"][assigned.group(1)] = assigned.group(2).strip()
        elif line.startswith("#"):
            result["comments"].append(line.lstrip("#").strip())
        else:
            raise ValueError("nv_tegra_release: unrecognised line %r" % line[:120])
    return result
