"""Targets end to end: this machine, and a real sshd on 127.0.0.1 (fixture `sshd_server`, tests/sshd.py).

Jobs here are small Python programs run with this interpreter (the "device" is this machine), so the tests
cover the protocol (result JSON, error records, progress lines, files, fetch) and the SSH failure modes
without depending on what the device-side package measures.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sys
import time
import uuid
from pathlib import Path

import pytest
import sshd

from edgeprune.errors import BadInputError, DeviceError
from edgeprune.targets import Target, open_target, profilers_source
from edgeprune.targets.job import Completed, result
from edgeprune.targets.local import LocalTarget
from edgeprune.targets.ssh import SSHTarget

PY = sys.executable
REPO = Path(__file__).resolve().parents[1]

# A job that reports progress, chats on stderr and prints its result.
TALKER = r"""
import json, sys
for i in range(3):
    sys.stderr.write(json.dumps({"progress": i + 1, "total": 3, "stage": "cells"}) + "\n")
    sys.stderr.flush()
sys.stderr.write("a warning from some runtime\n")
print("a runtime that logs to stdout")
print(json.dumps({"ok": True, "args": sys.argv[1:]}))
"""

# A job that starts a child, says so, and sleeps: both carry the marker in their command lines.
SLEEPER = r"""
import json, subprocess, sys, time
marker = sys.argv[1]
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", marker])
sys.stderr.write(json.dumps({"progress": 0, "total": 1, "stage": "sleeping"}) + "\n")
sys.stderr.flush()
time.sleep(120)
"""


def connect(host: str, **options) -> None:
    """Open a target and close it again: what fails to connect raises on the way in."""
    with open_target(host, **options):
        pass


def wait_until(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


@pytest.fixture
def ssh_options(sshd_server):
    return {
        "identity": sshd_server.identity,
        "known_hosts": sshd_server.known_hosts,
        "remote_python": PY,
        "connect_timeout": 5,
    }


@pytest.fixture(params=["local", "ssh"])
def make_target(request):
    """A factory, so a test can open the target inside `pytest.raises`."""
    if request.param == "local":
        return lambda: open_target(None)
    server = request.getfixturevalue("sshd_server")
    options = request.getfixturevalue("ssh_options")
    return lambda: open_target(server.host, **options)


# -- pure parts ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, user, host, port, where",
    [
        ("nvidia@192.168.1.20", "nvidia", "192.168.1.20", 22, "nvidia@192.168.1.20:22"),
        ("nvidia@jetson.local:2222", "nvidia", "jetson.local", 2222, "nvidia@jetson.local:2222"),
        ("jetson", None, "jetson", 22, "jetson:22"),
        ("[::1]:2222", None, "::1", 2222, "[::1]:2222"),
        ("pi@[fe80::1]", "pi", "fe80::1", 22, "pi@[fe80::1]:22"),
        ("fe80::1", None, "fe80::1", 22, "[fe80::1]:22"),
        ("ssh://pi@rpi:22/", "pi", "rpi", 22, "pi@rpi:22"),
    ],
)
def test_parse_host(spec, user, host, port, where):
    target = SSHTarget.parse(spec)
    assert (target.user, target.host, target.port, target.where) == (user, host, port, where)


@pytest.mark.parametrize(
    "spec", ["", "user@", "@host", "host:0", "host:99999", "host:ssh", "-oProxyCommand=x", "a b"]
)
def test_parse_host_refuses_malformed(spec):
    with pytest.raises(BadInputError, match="is not user@addr"):
        SSHTarget.parse(spec)


def test_ssh_command_line_is_strict_by_default():
    argv = SSHTarget.parse("pi@rpi:2222", identity="/k/id", known_hosts="/k/known hosts").ssh_argv("true")
    options = [argv[i + 1] for i, word in enumerate(argv) if word == "-o"]
    assert argv[0] == "ssh" and argv[-3:] == ["--", "pi@rpi", "sh -c true"]
    assert "BatchMode=yes" in options and "StrictHostKeyChecking=yes" in options
    assert 'UserKnownHostsFile="/k/known hosts"' in options and "ConnectTimeout=10" in options
    assert argv[argv.index("-p") + 1] == "2222" and 'IdentityFile="/k/id"' in options
    assert "IdentitiesOnly=yes" in options and "-i" not in argv
    accepting = SSHTarget.parse("pi@rpi", accept_new_host_key=True).ssh_argv("true")
    assert "StrictHostKeyChecking=accept-new" in accepting and "UserKnownHostsFile" not in " ".join(accepting)


def test_ssh_paths_are_escaped_for_ssh_options():
    argv = SSHTarget.parse("pi@rpi", identity='/k/a%h "b" c\\d', known_hosts="/k/x%%y").ssh_argv("true")
    options = [argv[i + 1] for i, word in enumerate(argv) if word == "-o"]
    assert 'IdentityFile="/k/a%%h \\"b\\" c\\\\d"' in options
    assert 'UserKnownHostsFile="/k/x%%%%y"' in options


@pytest.mark.parametrize("option", ["identity", "known_hosts"])
@pytest.mark.parametrize("name", ["key${HOME}", "key\nname"])
def test_ssh_paths_ssh_cannot_read_literally_are_refused_before_connecting(option, name, monkeypatch):
    monkeypatch.setattr("edgeprune.targets.ssh.stream", lambda *a, **k: pytest.fail("ssh must not run"))
    flag = "--" + option.replace("_", "-")
    with pytest.raises(BadInputError, match=f"^{flag} .*cannot take a path") as caught:
        connect("pi@rpi", **{option: f"/k/{name}"})
    assert "rename the file" in caught.value.hint


def test_both_targets_follow_the_protocol():
    assert isinstance(LocalTarget(), Target) and isinstance(SSHTarget.parse("pi@rpi"), Target)


def test_open_target_local_refuses_ssh_only_options():
    assert isinstance(
        open_target(None, identity=None, connect_timeout=10.0, remote_python="python3"), LocalTarget
    )
    with pytest.raises(BadInputError, match="--identity only applies"):
        open_target(None, identity="/k/id")


def test_profilers_source_is_the_device_package():
    module, folder = profilers_source()
    assert module in ("profilers", "edgeprune.profilers")
    assert (folder / "__main__.py").is_file() and folder.resolve() == (REPO / "profilers").resolve()


def test_result_protocol():
    assert result(Completed(0, b'{"a": 1}\n'), "job") == {"a": 1}
    assert result(Completed(0, b'log line\n{"a": 2}\n'), "job") == {"a": 2}
    assert result(Completed(0, b""), "job") == {}
    with pytest.raises(DeviceError, match="printed no JSON result"):
        result(Completed(0, b"hello\n"), "job")
    record = {"error": {"kind": "runtime_unavailable", "message": "no TensorRT", "hint": "install it"}}
    with pytest.raises(DeviceError) as caught:
        result(Completed(2, json.dumps(record).encode()), "job")
    assert (caught.value.message, caught.value.hint, caught.value.kind) == (
        "no TensorRT",
        "install it",
        record["error"]["kind"],
    )
    with pytest.raises(DeviceError, match=r"job failed \(exit 1\): ValueError: bad") as caught:
        result(Completed(1, b"", ["Traceback (most recent call last):", "ValueError: bad"]), "job")
    assert caught.value.stderr_tail[-1] == "ValueError: bad"
    with pytest.raises(DeviceError, match="killed by SIGKILL"):
        result(Completed(137, b"", []), "job")


# -- jobs on both targets ------------------------------------------------------------------------------------


def test_result_progress_and_noise(make_target):
    seen = []
    with make_target() as target:
        out = target.run([PY, "-c", TALKER, "x", "y z"], on_progress=seen.append)
    assert out == {"ok": True, "args": ["x", "y z"]}
    assert [record["progress"] for record in seen] == [1, 2, 3] and seen[0]["stage"] == "cells"


def test_error_record_becomes_device_error(make_target):
    record = {"error": {"kind": "k", "message": "no CUDA here", "hint": "use cpu"}}
    job = f"import sys; print({json.dumps(record)!r}); sys.exit(2)"
    with make_target() as target, pytest.raises(DeviceError) as caught:
        target.run([PY, "-c", job])
    assert (caught.value.message, caught.value.hint) == ("no CUDA here", "use cpu")


def test_crash_reports_last_stderr_line(make_target):
    with make_target() as target, pytest.raises(DeviceError, match=r"failed \(exit 1\): RuntimeError: boom"):
        target.run([PY, "-c", "raise RuntimeError('boom')"])


def test_files_arrive_and_results_come_back(make_target, tmp_path):
    (tmp_path / "plan.json").write_text('{"cells": 3}')
    bundle = tmp_path / "bundle"
    (bundle / "sub").mkdir(parents=True)
    (bundle / "model.onnx").write_bytes(bytes(range(256)) * 100)
    (bundle / "sub" / "manifest.json").write_text("{}")
    job = (
        "import hashlib, json, os\n"
        "plan = json.load(open('plan.json'))\n"
        "blob = open('bundle/model.onnx', 'rb').read()\n"
        "open('result.bin', 'wb').write(blob[::-1])\n"
        "sha = hashlib.sha256(blob).hexdigest()\n"
        "print(json.dumps({'plan': plan, 'sha': sha, 'sub': os.listdir('bundle/sub')}))"
    )
    with make_target() as target:
        out = target.run([PY, "-c", job], files={"plan.json": tmp_path / "plan.json", "bundle": bundle})
        fetched = target.fetch("result.bin", tmp_path / "back" / "result.bin")
        with pytest.raises(DeviceError, match="wrote no nothing.json"):
            target.fetch("nothing.json", tmp_path / "nothing.json")
    assert out == {
        "plan": {"cells": 3},
        "sha": hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest(),
        "sub": ["manifest.json"],
    }
    assert fetched.read_bytes() == (bundle / "model.onnx").read_bytes()[::-1]
    assert not (tmp_path / "nothing.json").exists()


def test_device_package_runs(make_target):
    """`python -m profilers` is found: installed, from the checkout, or as the copy in the SSH working dir."""
    with make_target() as target, pytest.raises(DeviceError, match="invalid choice"):
        target.run_profilers(["no-such-command"])


def test_timeout_stops_the_job(make_target):
    marker = f"edgeprune-timeout-{uuid.uuid4().hex}"
    start = time.monotonic()
    with make_target() as target, pytest.raises(DeviceError, match="did not finish within 1 s"):
        target.run([PY, "-c", SLEEPER, marker], timeout=1)
    assert wait_until(lambda: not sshd.processes_with(marker), 5), sshd.processes_with(marker)
    assert time.monotonic() - start < 15


def test_a_finished_job_leaves_no_process_behind(make_target):
    """A child the job started and did not wait for is stopped when the job ends (and cannot hang the run)."""
    marker = f"edgeprune-orphan-{uuid.uuid4().hex}"
    job = (
        "import subprocess, sys\n"
        f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)', {marker!r}])\n"
        "print('{\"started\": true}')"
    )
    start = time.monotonic()
    with make_target() as target:
        assert target.run([PY, "-c", job], timeout=30) == {"started": True}
        assert wait_until(lambda: not sshd.processes_with(marker), 5), sshd.processes_with(marker)
    assert time.monotonic() - start < 15


def test_ctrl_c_stops_the_job_and_its_children(make_target):
    """A real SIGINT to this process while a job runs: the job (here or remote) and its child must go."""
    marker = f"edgeprune-ctrl-c-{uuid.uuid4().hex}"
    running: dict[int, str] = {}

    def interrupt(record):
        running.update(sshd.processes_with(marker))
        os.kill(os.getpid(), signal.SIGINT)

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt), make_target() as target:
        workdir = Path(target.workdir)
        target.run([PY, "-c", SLEEPER, marker], on_progress=interrupt)
    commands = list(running.values())  # the job and its child were running when Ctrl-C came
    assert any("subprocess.Popen" in c for c in commands) and any("time.sleep(120)" in c for c in commands)
    assert wait_until(lambda: not sshd.processes_with(marker), 5), sshd.processes_with(marker)
    assert not workdir.exists()
    assert time.monotonic() - start < 15


def test_run_profilers_info_is_the_same_here_and_over_ssh(sshd_server, ssh_options):
    """The same machine seen locally and through SSH (with this Python) reports the same facts."""
    with open_target(None) as local:
        here = local.run_profilers(["info"])
    with open_target(sshd_server.host, **ssh_options) as remote:
        there = remote.run_profilers(["info"])
    assert here and here.keys() == there.keys()
    stable = [
        key for key in ("format_version", "python_executable", "python_version", "machine") if key in here
    ]
    assert {key: here[key] for key in stable} == {key: there[key] for key in stable}


# -- SSH only ------------------------------------------------------------------------------------------------


def test_ssh_copies_the_device_package_and_removes_its_workdir(sshd_server, ssh_options):
    job = "import json, os, profilers; print(json.dumps({'at': os.path.dirname(profilers.__file__)}))"
    with open_target(sshd_server.host, **ssh_options) as target:
        workdir = Path(target.workdir)
        assert workdir.is_dir() and workdir.name.startswith("edgeprune.")
        out = target.run([PY, "-c", job])
        assert target.python_version[:2] == sys.version_info[:2]
    assert out["at"] == str(workdir / "profilers")
    assert not list(Path(out["at"]).parent.glob("profilers/**/__pycache__"))
    assert not workdir.exists()


@pytest.mark.parametrize("name", ['100%h key', 'a"quote', "it's #1 \\ %%d"])
def test_ssh_takes_identity_and_known_hosts_paths_literally(sshd_server, ssh_options, tmp_path, name):
    # ssh expands %-tokens and splits -o values at quotes: such paths once failed as "authentication failed"
    # or "invalid quotes"; here the real files must be the ones used.
    folder = tmp_path / name
    folder.mkdir()
    identity, known_hosts = folder / f"id {name}", folder / f"known_hosts {name}"
    identity.write_bytes(sshd_server.identity.read_bytes())
    identity.chmod(0o600)
    known_hosts.write_bytes(sshd_server.known_hosts.read_bytes())
    ssh_options.update(identity=identity, known_hosts=known_hosts)
    with open_target(sshd_server.host, **ssh_options) as target:
        assert target.run([PY, "-c", "print('{\"ok\": 1}')"]) == {"ok": 1}
    known_hosts.write_bytes(sshd_server.empty_known_hosts.read_bytes())  # the file named is the file read
    with pytest.raises(DeviceError, match="unknown host key"):
        connect(sshd_server.host, **ssh_options)


def test_unknown_host_key_is_refused_with_its_fingerprint(sshd_server, ssh_options):
    ssh_options["known_hosts"] = sshd_server.empty_known_hosts
    with pytest.raises(DeviceError, match="unknown host key") as caught:
        connect(sshd_server.host, **ssh_options)
    assert sshd_server.host_key_fingerprint in caught.value.message
    assert "--accept-new-host-key" in caught.value.hint and "known_hosts" in caught.value.hint


def test_accept_new_host_key_records_it(sshd_server, ssh_options, tmp_path):
    fresh = tmp_path / "known_hosts"
    ssh_options["known_hosts"] = fresh
    with open_target(sshd_server.host, accept_new_host_key=True, **ssh_options) as target:
        assert target.run([PY, "-c", "print('{}')"]) == {}
    key = (sshd_server.root / "host_ed25519.pub").read_text().split()[1]
    assert key in fresh.read_text()
    with open_target(sshd_server.host, **ssh_options) as target:  # now known, no opt-in needed
        assert target.run([PY, "-c", "print('{\"again\": 1}')"]) == {"again": 1}


def test_changed_host_key_is_refused(sshd_server, ssh_options, tmp_path):
    other = sshd.make_key(tmp_path / "other_host_key")
    changed = tmp_path / "known_hosts"
    changed.write_text(sshd.known_hosts_line(sshd_server.port, other.with_suffix(".pub")))
    ssh_options["known_hosts"] = changed
    with pytest.raises(DeviceError, match="has CHANGED") as caught:  # accept-new never overrides a known key
        connect(sshd_server.host, accept_new_host_key=True, **ssh_options)
    assert sshd_server.host_key_fingerprint in caught.value.message and "ssh-keygen -R" in caught.value.hint


def test_wrong_key_is_an_authentication_failure(sshd_server, ssh_options, tmp_path):
    ssh_options["identity"] = sshd.make_key(tmp_path / "wrong_key")
    with pytest.raises(DeviceError, match="refused the login: authentication failed") as caught:
        connect(sshd_server.host, **ssh_options)
    assert "--identity" in caught.value.hint and "ssh-agent" in caught.value.hint


def test_closed_port_cannot_be_reached_fast(sshd_server, ssh_options):
    port = sshd.free_port()  # nothing listens there
    start = time.monotonic()
    host = f"{sshd_server.user}@127.0.0.1:{port}"
    with pytest.raises(DeviceError) as caught:
        connect(host, **ssh_options)
    assert caught.value.message == f"cannot reach {host}: Connection refused"
    assert time.monotonic() - start < ssh_options["connect_timeout"] + 3
    assert "sshd" in caught.value.hint


def test_silent_server_times_out_after_connect_timeout(sshd_server, ssh_options):
    with socket.socket() as silent:  # accepts TCP (the kernel's backlog) but never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        ssh_options["connect_timeout"] = 1
        start = time.monotonic()
        with pytest.raises(DeviceError, match=r"cannot reach .*timed out"):
            connect(f"{sshd_server.user}@127.0.0.1:{port}", **ssh_options)
    assert time.monotonic() - start < 1 + 4


def test_missing_remote_python(sshd_server, ssh_options):
    ssh_options["remote_python"] = "/nonexistent/python3"
    with pytest.raises(DeviceError, match="has no '/nonexistent/python3'") as caught:
        connect(sshd_server.host, **ssh_options)
    assert "--remote-python" in caught.value.hint


def test_too_old_remote_python(sshd_server, ssh_options, tmp_path):
    old = tmp_path / "python3.6"
    old.write_text('#!/bin/sh\necho "edgeprune-probe:python 3.6.9"\nexit 3\n')  # as the check would there
    old.chmod(0o755)
    ssh_options["remote_python"] = str(old)
    with pytest.raises(DeviceError, match=r"is Python 3\.6\.9; the device side needs Python 3\.8 or newer"):
        connect(sshd_server.host, **ssh_options)
