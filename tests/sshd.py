"""A real OpenSSH server on 127.0.0.1 for the SSH target's end-to-end tests.

It runs as the current user with its own host key, a user key pair and an authorized_keys file, all in a
private directory. sshd's StrictModes (kept on, as on a real device) rejects an authorized_keys file when any
directory above it is group- or world-writable, and /tmp is world-writable, so the directory is made where
every parent is safe: the temp dir when it qualifies, else under the user's ~/.cache.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

SSHD = "/usr/sbin/sshd"
START_TIMEOUT_S = 10.0


class Unavailable(Exception):
    """sshd or the ssh client is missing or cannot start here; the reason says which."""


@dataclass(frozen=True)
class SSHServer:
    """What a test needs to reach the server."""

    host: str  # "user@127.0.0.1:PORT", as --host takes it
    user: str
    port: int
    identity: Path  # private key that may log in
    known_hosts: Path  # has the server's key for [127.0.0.1]:PORT
    empty_known_hosts: Path  # exists, empty: the server's key is unknown there
    host_key_fingerprint: str  # "SHA256:..."
    root: Path  # the server's private directory (tests may make more files here)


def missing_tools() -> list[str]:
    """The programs the fixture needs that this machine lacks."""
    needed = {"sshd": SSHD, "ssh": "ssh", "ssh-keygen": "ssh-keygen", "ssh-keyscan": "ssh-keyscan"}
    return [name for name, program in needed.items() if not shutil.which(program)]


def processes_with(marker: str) -> dict[int, str]:
    """{pid: command line} of live processes whose command line contains `marker` (from /proc: no procps)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":  # a zombie has already stopped; only its parent's reaping lags
            found[int(entry.name)] = cmdline
    return found


def children_of(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == pid:
                children.append(int(entry.name))
    return children


def make_key(path: Path, comment: str = "edgeprune-test") -> Path:
    """An ed25519 key pair at `path` and `path.pub` (no passphrase)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True, stdin=subprocess.DEVNULL, capture_output=True,
    )  # fmt: skip
    return path


def fingerprint(public_key: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-lf", str(public_key)], check=True, capture_output=True, text=True)
    return out.stdout.split()[1]


def known_hosts_line(port: int, public_key: Path) -> str:
    key_type, key = public_key.read_text().split()[:2]
    return f"[127.0.0.1]:{port} {key_type} {key}\n"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _safe_for_strict_modes(directory: Path) -> bool:
    """True when sshd's StrictModes accepts files below `directory`: no parent is group/world-writable."""
    uid = os.getuid()
    for part in [directory, *directory.parents]:
        try:
            info = part.stat()
        except OSError:
            return False
        if info.st_uid not in (0, uid) or info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            return False
    return True


def private_dir() -> Path:
    """A fresh 0700 directory that sshd's StrictModes accepts."""
    candidates = [Path(tempfile.gettempdir()), Path.home() / ".cache"]
    for base in candidates:
        if base == Path.home() / ".cache":
            base.mkdir(mode=0o700, parents=True, exist_ok=True)
        if base.is_dir() and _safe_for_strict_modes(base.resolve()):
            return Path(tempfile.mkdtemp(prefix="edgeprune-sshd-", dir=base)).resolve()
    raise Unavailable(
        "no directory whose parents sshd's StrictModes accepts (checked the temp dir and ~/.cache)"
    )


class Server:
    """Starts and stops one sshd; `info` describes it once started."""

    def __init__(self) -> None:
        self.root = private_dir()
        self.process: subprocess.Popen | None = None
        self.info: SSHServer | None = None

    def start(self) -> SSHServer:
        missing = missing_tools()
        if missing:
            raise Unavailable(f"missing {', '.join(missing)} (apt-get install openssh-server openssh-client)")
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation directory
        root = self.root
        host_key = make_key(root / "host_ed25519", "edgeprune-test-host")
        identity = make_key(root / "id_ed25519")
        authorized = root / "authorized_keys"
        authorized.write_text((root / "id_ed25519.pub").read_text())
        authorized.chmod(0o600)
        empty = root / "known_hosts.empty"
        empty.touch(mode=0o600)
        user = getpass.getuser()
        last_log = ""
        for _ in range(3):  # a free port can be taken between the check and sshd's bind; then try another
            port = free_port()
            config = root / "sshd_config"
            config.write_text(
                "\n".join(
                    [
                        f"Port {port}",
                        "ListenAddress 127.0.0.1",
                        f"HostKey {host_key}",
                        f"PidFile {root / 'sshd.pid'}",
                        f"AuthorizedKeysFile {authorized}",
                        "PermitRootLogin prohibit-password",
                        "PubkeyAuthentication yes",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "UsePAM no",
                        "StrictModes yes",
                        "MaxStartups 50",
                        "KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org",
                        "LogLevel VERBOSE",
                        "",
                    ]
                )
            )
            config.chmod(0o600)
            log_path = root / "sshd.log"
            with open(log_path, "ab") as log:
                self.process = subprocess.Popen(
                    [SSHD, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log
                )
            if self._wait_listening(port):
                known_hosts = root / "known_hosts"
                known_hosts.write_text(known_hosts_line(port, host_key.with_suffix(".pub")))
                known_hosts.chmod(0o600)
                self.info = SSHServer(
                    host=f"{user}@127.0.0.1:{port}",
                    user=user,
                    port=port,
                    identity=identity,
                    known_hosts=known_hosts,
                    empty_known_hosts=empty,
                    host_key_fingerprint=fingerprint(host_key.with_suffix(".pub")),
                    root=root,
                )
                return self.info
            last_log = log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
            self._stop_process()
        raise Unavailable(f"sshd did not start: {last_log[0] if last_log else 'no output'}")

    def _wait_listening(self, port: int) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            with socket.socket() as sock:
                sock.settimeout(0.5)
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    return True
            time.sleep(0.05)
        return False

    def _stop_process(self) -> None:
        if self.process is not None and self.process.poll() is None:
            for child in children_of(self.process.pid):  # per-connection sshds outlive the listener otherwise
                try:
                    os.kill(child, signal.SIGTERM)
                except OSError:
                    pass
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def stop(self) -> None:
        """Stop the listener and the connections it still serves; remove its directory."""
        self._stop_process()
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        path = self.root / "sshd.log"
        return path.read_text(errors="replace") if path.exists() else ""
