"""A real `edgeprune profile` stopped part-way keeps what the device finished; a rerun measures only the rest.

The profile runs as a subprocess and is stopped the ways users stop one: Ctrl-C (SIGINT), SIGTERM, SIGKILL.
To know which cells the device had reported finished, its jobs start through a shim that appends each record
line the device writes on stderr to a log before passing the line on unchanged: the host's `sys.executable`
(the interpreter LocalTarget starts device jobs with) is pointed at the shim, and nothing else changes.
Nothing here depends on how fast this machine is: the test waits for events with generous deadlines and
asserts counts and identities, never timings.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from profilers.measure import GROUP_SIZE

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 600.0

SHIM = """#!{python}
import subprocess, sys
proc = subprocess.Popen([{python!r}] + sys.argv[1:], stderr=subprocess.PIPE)
with open({log!r}, "ab") as log:
    for line in proc.stderr:
        if line.startswith(b'{{"record"'):
            log.write(line)
            log.flush()
        sys.stderr.buffer.write(line)
        sys.stderr.buffer.flush()
sys.exit(proc.wait())
"""
DRIVER = "import sys; sys.executable = sys.argv.pop(1); from edgeprune.cli import main; main(sys.argv[1:])"


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A CNN with ~110 table cells at 16x16 px: several groups, each cheap to time."""
    import torch
    from edgeprune.exporters.onnx import export_onnx

    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 64, 3, stride=2, padding=1),
                        nn.ReLU(), nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(64, 10))
    path = tmp_path_factory.mktemp("resume") / "cnn.onnx"
    export_onnx(net, (torch.randn(1, 3, 16, 16),), path)
    return path


def profile_args(model: Path, out: Path) -> list:
    # Resuming is what is tested: a busy CI machine between the runs must not make the kept cells stale.
    return ["--json", "profile", "--device", "cpu", "--model", str(model), "--out", str(out),
            "--state-tolerance", "100"]


def logged(log: Path) -> dict:
    """{cell key: stats} of every cell record the device wrote so far (a last line still being written is skipped)."""
    out = {}
    for line in log.read_bytes().splitlines() if log.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("record") == "cell":
            out[record["key"]] = record["stats"]
    return out


def cached(cache: Path) -> dict:
    """{cell key: stats} in the cache file, read with plain sqlite3; every row must parse (no half record)."""
    if not cache.exists():
        return {}
    db = sqlite3.connect(str(cache))
    try:
        rows = db.execute("SELECT key, stats FROM measurements WHERE kind='cell'").fetchall()
    finally:
        db.close()
    return {key: json.loads(stats) for key, stats in rows}


def caught_up(log: Path, cache: Path) -> dict:
    """The device's records once there are at least a group of them and the cache holds every one; else {}."""
    reported = logged(log)
    return reported if len(reported) >= GROUP_SIZE and set(reported) <= set(cached(cache)) else {}


def processes_of(marker: str) -> list:
    """Live processes whose environment holds `marker` (the run's unique cache path): the host and its jobs."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if state != "Z" and marker.encode() in environ:
            found.append(int(entry.name))
    return found


def wait_for(condition, what: str, proc: subprocess.Popen | None = None):
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the profile ended (exit {proc.returncode}) before {what}")
        time.sleep(0.01)
    pytest.fail(f"no {what} within {DEADLINE_S:.0f} s")


def run_cli(args: list, cache: Path) -> dict:
    env = dict(os.environ, EDGEPRUNE_CACHE=str(cache))
    proc = subprocess.run([sys.executable, "-m", "edgeprune", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=DEADLINE_S)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_a_stopped_profile_keeps_what_the_device_finished_and_resumes(model, tmp_path, sig):
    cache, log, out = tmp_path / "cache.sqlite", tmp_path / "device-records.log", tmp_path / "table.json"
    shim = tmp_path / "device-python"
    shim.write_text(SHIM.format(python=sys.executable, log=str(log)))
    shim.chmod(0o755)
    env = dict(os.environ, EDGEPRUNE_CACHE=str(cache))
    with open(tmp_path / "host.stderr", "w") as host_err:
        host = subprocess.Popen([sys.executable, "-c", DRIVER, str(shim), *profile_args(model, out)],
                                stdout=subprocess.DEVNULL, stderr=host_err, env=env, cwd=REPO)
        try:
            if sig == signal.SIGKILL:  # once the host has committed all the device reported, at least a group
                reported = wait_for(lambda: caught_up(log, cache), "a finished group, committed", host)
            else:  # once the device has finished a group and the host committed some of it
                wait_for(lambda: len(logged(log)) >= GROUP_SIZE and cached(cache), "a finished group", host)
            host.send_signal(sig)
            returncode = host.wait(DEADLINE_S)
        finally:
            if host.poll() is None:
                host.kill()
    stderr = (tmp_path / "host.stderr").read_text()
    # The device job ends with the host (after SIGKILL: at its next write into the closed pipe).
    try:
        wait_for(lambda: not processes_of(str(cache)), "end of every process of the run")
    finally:
        for pid in processes_of(str(cache)):
            os.kill(pid, signal.SIGKILL)
    assert not out.exists()  # an interrupted profile writes no table
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(out.name)] == []

    kept = cached(cache)
    assert all(stats["estimate_ms"] > 0 for stats in kept.values())
    assert set(kept) <= set(logged(log))  # nothing in the cache that the device did not report
    for key, stats in kept.items():
        assert stats == logged(log)[key]
    if sig == signal.SIGKILL:
        # Every record committed before the kill survives it. (Records the device had written to the pipe and
        # the host had not yet committed die with the host: a SIGKILL cannot be drained.)
        assert returncode == -signal.SIGKILL
        assert set(reported) <= set(kept)
    else:
        # The host stops the device job, then commits every record the job wrote before it stopped. The shim
        # may have logged one line it could not pass on before it was stopped with the job.
        assert returncode == 130, stderr
        assert "aborted" in stderr and "Traceback" not in stderr
        assert len(set(logged(log)) - set(kept)) <= 1

    # A rerun measures only the missing cells, and takes the kept ones as they were measured.
    again = run_cli(profile_args(model, tmp_path / "resumed.json"), cache)
    table = json.loads((tmp_path / "resumed.json").read_text())
    assert again["cached_cells"] == len(kept) > 0
    assert table["profile"]["measured_cells"] == table["profile"]["cells"] - len(kept) > 0
    remeasured = table["profile"]["implausible_remeasured"]  # re-timed as noise suspects: the faster reading wins
    differ = [k for k, stats in kept.items() if table["cells"][k]["estimate_ms"] != stats["estimate_ms"]]
    assert len(differ) <= remeasured
    assert all(table["cells"][k]["estimate_ms"] < kept[k]["estimate_ms"] for k in differ)

    if sig == signal.SIGTERM:  # once is enough: the resumed table is complete, a third run measures nothing
        final = run_cli(profile_args(model, tmp_path / "final.json"), cache)
        assert final["cached_cells"] == final["cells"] == again["cells"]
        assert json.loads((tmp_path / "final.json").read_text())["cells"] == table["cells"]
