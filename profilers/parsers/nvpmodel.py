"""Parse `nvpmodel -q` (Jetson power mode query).

Why: a Jetson's power mode caps its clocks and online cores, so a latency table is only valid for the mode it
was measured in; the fingerprint records the mode's name and id. `nvpmodel -q` prints the name on a `NV Power
Mode: <name>` line and the numeric id on the next line; with `--verbose` the name line carries a `NVPM VERB:
Current mode:` prefix and `NVPM` log lines surround it, which are ignored.
"""

from __future__ import annotations

import re
from typing import Any, Dict

_MODE = re.compile(r"NV Power Mode:\s*(\S.*?)\s*$")
_ID = re.compile(r"^\s*(\d+)\s*$")


def parse_nvpmodel_query(text: str) -> Dict[str, Any]:
    """Return {"mode_name": str, "mode_id": int}; ValueError when either is missing."""
    if not isinstance(text, str):
        raise ValueError("nvpmodel output must be text, got %s" % type(text).__name__)
    lines = text.splitlines()
    for index, line in enumerate(lines):
        match = _MODE.search(line)
        if not match:
            continue
        for following in lines[index + 1 :]:
            if not following.strip() or following.lstrip().startswith("NVPM"):
                continue
            id_match = _ID.match(following)
            if not id_match:
                raise ValueError(
                    "nvpmodel -q: expected the mode id after %r, got %r" % (line.strip(), following.strip())
                )
            return {"mode_name": match.group(1), "mode_id": int(id_match.group(1))}
        raise ValueError("nvpmodel -q: no mode id after %r" % line.strip())
    raise ValueError("not nvpmodel -q output (no 'NV Power Mode:' line): %r" % text[:200])
