"""A device reached over SSH: the device-side package is copied there as plain source and run with its Python.

The system's OpenSSH client does the work (argv lists, never a local shell), so the user's ~/.ssh/config,
ssh-agent and known_hosts apply as they do for `ssh` itself. Host keys are checked strictly; a new key is
accepted only when the user opts in (`--accept-new-host-key`, ssh's `accept-new`).

How Ctrl-C stops the remote job: closing the connection alone does not (without a pty nothing hangs the job
up). sshd starts every command in a session of its own (setsid), so the job's wrapper shell leads a process
group holding the job and all its children. The wrapper writes that group id to a pid file in the working
dir before it starts Python; when Python ends it stops whatever Python left in the group, then removes the
file. On any exception while the job runs (KeyboardInterrupt, timeout, an error in `on_progress`) the local
`ssh` is stopped, a second `ssh` sends TERM, then KILL, to that group, and the exception is re-raised;
leaving the context removes the working dir. A cancel mark closes the race with a job that starts only
after Ctrl-C (see STOP_JOB). A pty (`ssh -tt`) would also hang the job up, but it merges the job's stdout
and stderr, which the protocol keeps apart (result on stdout, progress on stderr).
"""

from __future__ import annotations

import logging
import math
import os
import pathlib
import re
import secrets
import shlex
import shutil
import subprocess
import tarfile
from collections.abc import Sequence
from typing import IO, Any

from ..atomic import atomic_file
from ..errors import BadInputError, DeviceError
from .job import Completed, ProgressCallback, result, stream
from .local import check_job_name, refuse_links

log = logging.getLogger(__name__)

MIN_PYTHON = (3, 8)  # the device side's floor (JetPack 5 ships Python 3.8)
PROBE = "edgeprune-probe:"  # prefix of the lines the preparation script prints
MISSING = 66  # exit status of the fetch script when the job wrote no such file

_REACH_PATTERNS = (
    "Connection refused",
    "timed out",
    "No route to host",
    "Network is unreachable",
    "Could not resolve hostname",
    "Name or service not known",
    "Temporary failure in name resolution",
    "Connection reset",
    "Connection closed by",
    "kex_exchange_identification",
)
_LOST_PATTERNS = ("closed by remote host", "Broken pipe", "not responding", "Connection to ")

# Run by the device's Python (>= 3.8, checked on connect) to stop a job's process group. It first leaves a
# cancel mark, then reads the pid file; the job's wrapper writes the pid file, then looks for the mark. So a
# job that had not yet started when Ctrl-C came either is found and stopped here, or sees the mark and never
# starts. It waits for the group's live members only: a killed process can stay a zombie for a while (a
# container's init may reap late), which `kill -0` in a shell would count as running.
STOP_JOB = """
import os, signal, sys, time
path, cancel = sys.argv[1], sys.argv[2]
open(cancel, "w").close()
try:
    with open(path) as handle:
        group = int(handle.read().split()[0])
except (OSError, ValueError, IndexError):
    sys.exit(0)

def live_members():
    try:
        pids = [name for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return None
    live = []
    for pid in pids:
        try:
            with open("/proc/%s/stat" % pid) as handle:
                fields = handle.read().rpartition(")")[2].split()
            if int(fields[2]) == group and fields[0] != "Z":
                live.append(pid)
        except (OSError, IndexError, ValueError):
            continue
    return live

def send(sig):
    try:
        os.killpg(group, sig)
    except OSError:
        try:
            os.kill(group, sig)
        except OSError:
            pass

def running():
    live = live_members()
    if live is not None:
        return bool(live)
    try:
        os.killpg(group, 0)
        return True
    except OSError:
        return False

send(signal.SIGTERM)
deadline = time.time() + 3
while running() and time.time() < deadline:
    time.sleep(0.05)
if running():
    send(signal.SIGKILL)
try:
    os.remove(path)
except OSError:
    pass
"""


class SSHTarget:
    """A device at `user@host:port`; use as a context manager (connects, copies `profilers/`, cleans up)."""

    def __init__(
        self,
        host: str,
        user: str | None = None,
        port: int = 22,
        *,
        identity: str | pathlib.Path | None = None,
        known_hosts: str | pathlib.Path | None = None,
        accept_new_host_key: bool = False,
        connect_timeout: float = 10.0,
        remote_python: str = "python3",
    ):
        self.host = host
        self.user = user
        self.port = int(port)
        self.identity = pathlib.Path(identity).expanduser() if identity else None
        self.known_hosts = pathlib.Path(known_hosts).expanduser() if known_hosts else None
        for path, flag in ((self.identity, "--identity"), (self.known_hosts, "--known-hosts")):
            if path is not None:
                check_ssh_path(path, flag)
        self.accept_new_host_key = bool(accept_new_host_key)
        self.connect_timeout = float(connect_timeout)
        self.remote_python = remote_python
        try:
            self.python = shlex.split(remote_python or "")
        except ValueError:
            self.python = []
        if not self.python:
            raise BadInputError(
                f"--remote-python {remote_python!r} names no program",
                "name the device's Python, e.g. --remote-python python3",
            )
        if self.connect_timeout <= 0:
            raise BadInputError("--connect-timeout must be positive", "e.g. --connect-timeout 10")
        self.workdir: str | None = None  # the remote working directory while connected
        self.python_version: tuple[int, ...] | None = None
        self._jobs = 0

    @classmethod
    def parse(cls, spec: str, **options: Any) -> SSHTarget:
        """`user@addr`, `user@addr:port`, `addr`, `[::1]:2222`, `user@[fe80::1]:22` or `ssh://user@addr:port`."""
        text = spec.strip()
        if text.startswith("ssh://"):
            text = text[len("ssh://") :].rstrip("/")
        user, _, rest = text.rpartition("@")
        port = "22"
        if rest.startswith("["):
            match = re.fullmatch(r"\[([0-9A-Fa-f:.%\w]+)\](?::(\d+))?", rest)
            host, port = (match.group(1), match.group(2) or "22") if match else ("", "")
        elif rest.count(":") == 1:
            host, port = rest.split(":")
        else:
            host = rest  # a host name, an IPv4 address or a bare IPv6 address
        bad = (
            not host
            or not port.isdigit()
            or not 0 < int(port) < 65536
            or host.startswith("-")
            or user.startswith("-")
            or any(c.isspace() for c in text)
            or ("@" in text and not user)
        )
        if bad:
            raise BadInputError(
                f"--host {spec!r} is not user@addr[:port]",
                "e.g. --host nvidia@192.168.1.20, --host nvidia@jetson.local:2222, --host 'pi@[fe80::1]:22'",
            )
        return cls(host, user or None, int(port), **options)

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.user}@{host}:{self.port}" if self.user else f"{host}:{self.port}"

    # -- context -----------------------------------------------------------------------------------------

    def __enter__(self) -> SSHTarget:
        if shutil.which("ssh") is None:
            raise DeviceError(
                "no ssh client on this machine", "install OpenSSH's client (apt-get install openssh-client)"
            )
        if self.identity is not None and not self.identity.is_file():
            raise BadInputError(
                f"--identity {self.identity}: no such key file", "pass the private key's path"
            )
        self._prepare()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.workdir is None:
            return
        workdir, self.workdir = self.workdir, None
        self._remove_workdir(shlex.quote(workdir))

    def _remove_workdir(self, path: str) -> None:
        """Remove the working dir (`path` as the remote shell should read it), stopping any job left in it."""
        script = (
            f'for f in {path}/.job-*.pid; do [ -f "$f" ] || continue; pg=$(cat "$f"); '
            'kill -KILL -"$pg" 2>/dev/null || kill -KILL "$pg" 2>/dev/null; done; '
            f"rm -rf {path}"
        )
        try:
            completed = self._ssh(script, what=f"cleanup on {self.where}", timeout=self.connect_timeout + 30)
            if completed.returncode != 0:
                log.warning("could not remove %s on %s: %s", path, self.where, completed.last_stderr_line)
        except Exception as error:  # cleanup must never hide the error that ended the session
            log.warning("could not remove %s on %s: %s", path, self.where, error)

    # -- jobs ----------------------------------------------------------------------------------------------

    def run_profilers(
        self,
        args: Sequence[str],
        files: dict[str, pathlib.Path] | None = None,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> dict:
        return self.run([*self.python, "-m", "profilers", *args], files, on_progress, timeout)

    def run(
        self,
        argv: Sequence[str],
        files: dict[str, pathlib.Path] | None = None,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> dict:
        workdir = self._workdir()
        if files:
            self._put(files)
        self._jobs += 1
        pidfile, cancel = f".job-{self._jobs}.pid", f".job-{self._jobs}.cancel"
        what = f"device job on {self.where}"
        # The group to stop: this shell's, read from /proc, when this shell or its parent (the login shell)
        # leads it, as under sshd; otherwise just this shell's pid, never a group we did not start. When the
        # job's main process ends (done, or killed by a broken pipe after the connection went), the shell
        # stops what it left in its group, so no orphaned child outlives the job.
        script = (
            f"cd {shlex.quote(workdir)} || exit 1; "
            "pg=$(cut -d' ' -f5 /proc/$$/stat 2>/dev/null); "
            'case "$pg" in "$$"|"$PPID") ;; *) pg=$$ ;; esac; '
            f'echo "$pg" > {pidfile}; '
            f"[ -e {cancel} ] && {{ rm -f {pidfile}; exit 130; }}; "
            f"{shlex.join(argv)}; rc=$?; "
            """[ "$pg" = "$$" ] && { trap '' TERM; kill -TERM -$pg 2>/dev/null; }; """
            f"rm -f {pidfile}; exit $rc"
        )
        try:
            completed = self._ssh(script, what=what, on_progress=on_progress, timeout=timeout)
        except BaseException:
            self._stop_job(pidfile)
            raise
        self._raise_for_ssh(completed)
        return result(completed, what)

    def fetch(self, name: str, local_path: str | pathlib.Path) -> pathlib.Path:
        workdir = self._workdir()
        name = check_job_name(name)
        local_path = pathlib.Path(local_path)
        quoted = shlex.quote(name)
        script = f"cd {shlex.quote(workdir)} || exit 1; [ -f {quoted} ] || exit {MISSING}; exec cat {quoted}"
        with atomic_file(local_path, "wb") as sink:
            completed = self._ssh(script, what=f"fetching {name} from {self.where}", stdout_sink=sink)
            if completed.returncode == MISSING:
                raise DeviceError(
                    f"the job on {self.where} wrote no {name}", "check the job's arguments (--out NAME)"
                )
            if completed.returncode != 0:
                self._raise_for_ssh(completed)
                raise DeviceError(
                    f"cannot fetch {name} from {self.where}: {completed.last_stderr_line or 'no output'}",
                    "check the device's free space and the job's output",
                )
        return local_path

    # -- internals -----------------------------------------------------------------------------------------

    def ssh_argv(self, remote_command: str) -> list[str]:
        """The `ssh` command line that runs `remote_command` (one string, run by `sh -c`) on the device."""
        argv = [
            "ssh",
            "-T",
            "-o", "BatchMode=yes",
            "-o", f"StrictHostKeyChecking={'accept-new' if self.accept_new_host_key else 'yes'}",
            "-o", f"ConnectTimeout={max(1, math.ceil(self.connect_timeout))}",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=4",
            "-o", "LogLevel=ERROR",
            "-p", str(self.port),
        ]  # fmt: skip
        if self.known_hosts is not None:
            argv += ["-o", f"UserKnownHostsFile={_ssh_path(self.known_hosts)}"]
        if self.identity is not None:  # not -i: ssh checks -i's path before expanding %, so no escape works
            argv += ["-o", f"IdentityFile={_ssh_path(self.identity)}", "-o", "IdentitiesOnly=yes"]
        destination = f"{self.user}@{self.host}" if self.user else self.host
        return [*argv, "--", destination, "sh -c " + shlex.quote(remote_command)]

    def _ssh(self, script: str, *, what: str, **kwargs: Any) -> Completed:
        return stream(self.ssh_argv(script), what=what, **kwargs)

    def _prepare(self) -> None:
        """One connection: check login and remote Python, make the working dir, unpack `profilers/` there."""
        from . import profilers_source

        _, source = profilers_source()
        python = shlex.join(self.python)
        # Named here rather than by mktemp, so an interrupted connection can still remove it. The random
        # name makes it unguessable; mkdir fails rather than reuse anything that exists.
        workdir = '"${TMPDIR:-/tmp}"/edgeprune.' + secrets.token_hex(8)
        version_check = (
            'import sys; print("%spython %%d.%%d.%%d" %% tuple(sys.version_info[:3])); '
            "sys.exit(0 if sys.version_info[:2] >= (%d, %d) else 3)" % (PROBE, *MIN_PYTHON)
        )
        script = (
            f"command -v {shlex.quote(self.python[0])} >/dev/null 2>&1 "
            f"|| {{ echo {PROBE}no-python; exit 0; }}; "
            f"{python} -c {shlex.quote(version_check)} || exit 0; "
            f'd={workdir}; mkdir -m 700 "$d" || exit 1; '
            f'echo "{PROBE}workdir $d"; '
            f'tar -xf - -C "$d" || exit 1; echo {PROBE}ready'
        )
        try:
            completed = self._ssh(
                script,
                what=f"connecting to {self.where}",
                feed=lambda pipe: _write_tar(pipe, {"profilers": source}),
                timeout=self.connect_timeout + 60,
            )
        except BaseException:  # e.g. Ctrl-C: the directory may exist already, and only its name is known
            self._remove_workdir(workdir)
            raise
        self._raise_for_ssh(completed)
        facts = dict(
            line[len(PROBE) :].partition(" ")[::2]
            for line in completed.stdout.decode("utf-8", errors="replace").splitlines()
            if line.startswith(PROBE)
        )
        last = completed.last_stderr_line or "no output"
        if not facts and completed.returncode == 255:
            raise DeviceError(f"ssh to {self.where} failed: {last}", "check that `ssh` to the device works")
        if "workdir" in facts:
            self.workdir = facts["workdir"].strip()
        if "no-python" in facts:
            raise DeviceError(
                f"{self.where} has no {self.remote_python!r}",
                "install Python 3.8 or newer on the device, or pass --remote-python PATH",
            )
        if "python" not in facts:
            raise DeviceError(
                f"cannot run {self.remote_python!r} on {self.where}: {last}",
                "check the device's Python, or pass --remote-python PATH",
            )
        self.python_version = tuple(int(part) for part in facts["python"].split("."))
        if self.python_version[:2] < MIN_PYTHON:
            raise DeviceError(
                f"{self.remote_python!r} on {self.where} is Python {facts['python']}; "
                f"the device side needs Python {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer",
                "pass --remote-python pointing at a newer Python on the device (JetPack 5 ships python3.8)",
            )
        if "ready" not in facts:
            self.__exit__(None, None, None)
            raise DeviceError(
                f"cannot set up a working directory on {self.where}: {last}",
                "check free space and permissions in the device's /tmp (or its $TMPDIR)",
            )

    def _put(self, files: dict[str, pathlib.Path]) -> None:
        members = {check_job_name(name): pathlib.Path(path) for name, path in files.items()}
        for path in members.values():
            refuse_links(path)
        completed = self._ssh(
            f"cd {shlex.quote(self._workdir())} && tar -xf -",
            what=f"copying files to {self.where}",
            feed=lambda pipe: _write_tar(pipe, members),
        )
        if completed.returncode != 0:
            self._raise_for_ssh(completed)
            raise DeviceError(
                f"cannot copy files to {self.where}: {completed.last_stderr_line or 'no output'}",
                "check free space in the device's /tmp (or its $TMPDIR)",
            )

    def _stop_job(self, pidfile: str) -> None:
        """Stop the job that wrote `pidfile` and its whole process group: TERM, up to 3 s, then KILL."""
        if self.workdir is None:
            return
        path = f"{self.workdir}/{pidfile}"
        command = shlex.join([*self.python, "-c", STOP_JOB, path, path[: -len(".pid")] + ".cancel"])
        try:
            completed = self._ssh(
                command, what=f"stopping the job on {self.where}", timeout=self.connect_timeout + 30
            )
            if completed.returncode != 0:
                log.warning("could not stop the job on %s: %s", self.where, completed.last_stderr_line)
        except Exception as exc:  # the original exception matters more
            log.warning("could not stop the job on %s: %s", self.where, exc)

    def _workdir(self) -> str:
        if self.workdir is None:
            raise RuntimeError("use the target as a context manager: `with open_target(...) as target:`")
        return self.workdir

    def _raise_for_ssh(self, completed: Completed) -> None:
        """Raise the DeviceError that explains ssh's own failure, if ssh failed (exit 255) and said why."""
        error = self._ssh_error(completed.stderr_lines) if completed.returncode == 255 else None
        if error is not None:
            raise error

    def _ssh_error(self, lines: list[str]) -> DeviceError | None:
        text = "\n".join(lines)
        if (
            "REMOTE HOST IDENTIFICATION HAS CHANGED" in text
            or "has changed and you have requested strict" in text
        ):
            found = re.search(r"(SHA256:[A-Za-z0-9+/=]+)", text)
            seen = f" (it now presents {found.group(1)})" if found else ""
            forget = (
                f"ssh-keygen -R '[{self.host}]:{self.port}'"
                if self.port != 22
                else f"ssh-keygen -R {self.host}"
            )
            if self.known_hosts is not None:
                forget += f" -f {shlex.quote(str(self.known_hosts))}"
            return DeviceError(
                f"the host key of {self.where} has CHANGED since it was recorded in known_hosts{seen}; "
                "refusing to connect",
                f"if the device was reinstalled, verify the new key and remove the old one ({forget}); "
                "otherwise someone may be intercepting the connection",
            )
        if "host key is known for" in text or "Host key verification failed" in text:
            key_type = re.search(r"No (\S+) host key is known", text)
            fingerprint = self._fingerprint(key_type.group(1) if key_type else None)
            return DeviceError(
                f"{self.where} presented an unknown host key ({fingerprint}); refusing to connect",
                "verify it (on the device: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then add it to "
                "known_hosts or pass --accept-new-host-key",
            )
        if "Permission denied" in text or "Too many authentication failures" in text:
            return DeviceError(
                f"{self.where} refused the login: authentication failed",
                "pass --identity KEY_FILE or load the key into ssh-agent (ssh-add); "
                "edgeprune never asks for a password",
            )
        for line in reversed(lines):
            if any(pattern in line for pattern in _REACH_PATTERNS):
                reason = line.split(": ")[-1].strip() if line.startswith("ssh: ") else line.strip()
                if "timed out" in reason and "banner" not in reason:
                    reason = f"connection timed out after {self.connect_timeout:g} s"
                return DeviceError(
                    f"cannot reach {self.where}: {reason}",
                    "check the address and the port, that the device is on, and that sshd runs on it",
                )
            if any(pattern in line for pattern in _LOST_PATTERNS):
                return DeviceError(
                    f"lost the connection to {self.where}: {line.strip()}",
                    "check the network and the device's power; measurements done so far are cached, so rerun",
                )
        return None

    def _fingerprint(self, key_type: str | None) -> str:
        """The fingerprint the device's key has, by a separate scan (ssh does not print it in strict mode)."""
        keyscan, keygen = shutil.which("ssh-keyscan"), shutil.which("ssh-keygen")
        if not keyscan or not keygen:
            return "fingerprint unknown: ssh-keyscan is missing"
        timeout = max(1, math.ceil(self.connect_timeout))
        try:
            keys = subprocess.run(
                [keyscan, "-p", str(self.port), "-T", str(timeout), "--", self.host],
                capture_output=True, timeout=timeout + 5, check=False,
            )  # fmt: skip
            listed = subprocess.run(
                [keygen, "-lf", "-"], input=keys.stdout, capture_output=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return "fingerprint unknown: ssh-keyscan failed"
        # "256 SHA256:abc... [host]:port (ED25519)"
        found = []
        for line in listed.stdout.decode("utf-8", errors="replace").splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1].startswith("SHA256:"):
                found.append((parts[-1].strip("()"), parts[1]))
        matching = [
            f"{kind} {fp}" for kind, fp in found if key_type is None or kind.upper() == key_type.upper()
        ]
        shown = matching or [f"{kind} {fp}" for kind, fp in found]
        return ", ".join(shown) if shown else "fingerprint unknown: ssh-keyscan got no key"


def _ssh_path(path: pathlib.Path) -> str:
    """A path as an ssh `-o` value reads back literally: absolute (no ~ expansion), `%` doubled (ssh expands
    %-tokens), in double quotes with `\\` and `"` escaped (ssh splits -o values like its config lines)."""
    text = str(path.absolute()).replace("%", "%%")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def check_ssh_path(path: pathlib.Path, flag: str) -> None:
    """Refuse what ssh cannot read back literally: `${` (expanded as an environment variable, no escape exists)
    and line breaks or other control characters."""
    text = str(path.absolute())
    if "${" in text or any((ord(c) < 32 and c != "\t") or ord(c) == 127 for c in text):
        raise BadInputError(
            f"{flag} {text!r}: ssh cannot take a path containing '${{' or control characters literally",
            "rename the file or use a symlink to it whose path has neither",
        )


def _write_tar(pipe: IO[bytes], members: dict[str, pathlib.Path]) -> None:
    """Stream a tar of `members` (name in the archive -> local file or folder) into `pipe`.

    A member is followed to what its path names; links inside a folder are archived as links, never
    followed (callers refuse them first: `refuse_links`).
    """

    def clean(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        name = pathlib.PurePosixPath(info.name).name
        if name == "__pycache__" or name.endswith((".pyc", ".pyo")):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        info.mode = 0o755 if info.isdir() or info.mode & 0o111 else 0o644
        return info

    with tarfile.open(fileobj=pipe, mode="w|", dereference=False, format=tarfile.PAX_FORMAT) as archive:
        for name, path in members.items():
            archive.add(os.path.realpath(path), arcname=name, recursive=True, filter=clean)
