"""targets/job.py: record lines reach `on_progress`, and a job stopped early still hands over what it wrote."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading

import pytest

from edgeprune.targets.job import stream

# A child that reports its pid, writes five records at once, then hangs until it is stopped.
CHILD = (
    "import json, os, sys, time\n"
    "lines = [json.dumps({'record': 'cell', 'key': 'pid', 'pid': os.getpid()})]\n"
    "lines += [json.dumps({'record': 'cell', 'key': 'c%d' % i}) for i in range(5)]\n"
    "lines.append('{\"record\": \"cell\", \"key\": \"half')\n"  # a half-written line is never a record
    "sys.stderr.write('\\n'.join(lines) + '\\n')\n"
    "sys.stderr.flush()\n"
    "time.sleep(600)\n"
)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.mark.parametrize("where", ["in_callback", "while_waiting"])
def test_an_interrupted_job_is_stopped_and_hands_over_every_record_it_wrote(where):
    seen = []

    def on_progress(event):
        seen.append(event)
        if where == "in_callback" and [e["key"] for e in seen] == ["pid", "c0"]:
            raise KeyboardInterrupt  # Ctrl-C while the caller commits c0
        if where == "while_waiting" and event["key"] == "c4":  # Ctrl-C arrives while waiting for more lines
            threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT)).start()

    with pytest.raises(KeyboardInterrupt):
        stream([sys.executable, "-c", CHILD], what="test job", on_progress=on_progress)
    keys = [e["key"] for e in seen]
    assert keys[0] == "pid" and set(keys[1:]) == {f"c{i}" for i in range(5)}
    if where == "in_callback":
        assert keys.count("c0") == 2  # the record cut short is handed over again (commits are idempotent)
    assert gone(seen[0]["pid"])


def test_a_failing_callback_is_not_called_again():
    seen = []

    def on_progress(event):
        seen.append(event["key"])
        if event["key"] == "c1":
            raise ValueError("bad record")

    with pytest.raises(ValueError):
        stream([sys.executable, "-c", CHILD], what="test job", on_progress=on_progress)
    assert seen == ["pid", "c0", "c1"]


def test_progress_and_records_arrive_in_order_and_other_lines_stay_in_the_tail():
    code = ("import json, sys\n"
            "for line in [{'progress': 1, 'total': 2}, {'record': 'cell', 'key': 'a'}, {'progress': 2, 'total': 2}]:\n"
            "    sys.stderr.write(json.dumps(line) + '\\n')\n"
            "sys.stderr.write('{\"note\": 1}\\nplain words\\n')\n")
    seen = []
    done = stream([sys.executable, "-c", code], what="test job", on_progress=seen.append)
    assert done.returncode == 0
    assert [e.get("progress", e.get("key")) for e in seen] == [1, "a", 2]
    assert done.stderr_lines == ['{"note": 1}', "plain words"]
    json.dumps(seen)
