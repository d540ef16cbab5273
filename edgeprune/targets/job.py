"""One device-side job as a child process: stream its progress, collect its result, stop it on Ctrl-C.

Both targets run their job through `stream()`: the local one runs Python directly, the SSH one runs `ssh`.
The child gets its own session, so a terminal's Ctrl-C reaches only the host process, which then stops
the child (and, for SSH, the remote job) in a known order instead of racing it. A job leaves no process
behind: when its main process ends, whatever it left running in its process group is stopped too.

Stderr carries JSON lines of two sorts, both handed to `on_progress`: progress (`{"progress": n, ...}`) and
finished measurements (`{"record": kind, "key": ...}`), which the caller commits as they come. When a job is
stopped early (Ctrl-C, SIGTERM, timeout) the lines it wrote before it stopped are still handed over, so
nothing the device finished is lost to the interruption.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from ..errors import DeviceError

ProgressCallback = Callable[[dict], Any]

STDERR_TAIL = 50  # stderr lines kept for error messages; a chatty job must not grow memory without bound
STOP_GRACE_S = 3.0  # after SIGTERM, how long a child may take before SIGKILL


@dataclass
class Completed:
    """What a finished child left behind."""

    returncode: int
    stdout: bytes = b""
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def last_stderr_line(self) -> str:
        return self.stderr_lines[-1] if self.stderr_lines else ""


def stream(
    argv: Sequence[str],
    *,
    what: str,
    cwd: str | os.PathLike | None = None,
    env: dict[str, str] | None = None,
    feed: Callable[[IO[bytes]], None] | None = None,
    stdout_sink: IO[bytes] | None = None,
    on_progress: ProgressCallback | None = None,
    timeout: float | None = None,
) -> Completed:
    """Run `argv` to completion; call `on_progress` (in this thread) for each JSON progress or record line on stderr.

    Args:
        what: names the job in error messages ("device job on root@jetson:22").
        feed: writes the child's stdin (from a helper thread, so a full stderr pipe cannot deadlock it).
        stdout_sink: receives stdout as it arrives; without one, stdout is collected into `Completed.stdout`.
        timeout: seconds; past it the child is stopped and DeviceError raised.

    Any exception raised here (timeout, an error in `on_progress`, KeyboardInterrupt) stops the child first;
    then, unless `on_progress` itself failed, the lines the child wrote before it stopped are handed to
    `on_progress` (the one a KeyboardInterrupt cut short is handed over again: callers must be idempotent).
    """
    proc = subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env,
        stdin=subprocess.PIPE if feed else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    lines: queue.Queue[bytes | None] = queue.Queue()
    collected = stdout_sink if stdout_sink is not None else _Buffer()
    failures: list[BaseException] = []

    def read_stderr() -> None:
        try:
            for raw in proc.stderr:
                lines.put(raw)
        except (OSError, ValueError):
            pass
        lines.put(None)

    def read_stdout() -> None:
        try:
            for chunk in iter(lambda: proc.stdout.read(65536), b""):
                collected.write(chunk)
        except BaseException as exc:  # e.g. disk full while fetching; re-raised in the caller's thread
            failures.append(exc)
            stop(proc)

    def write_stdin() -> None:
        try:
            feed(proc.stdin)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the child exited early; its exit status and stderr say why
        except BaseException as exc:
            failures.append(exc)
        finally:
            try:
                proc.stdin.close()
            except OSError:
                pass

    helpers = [
        threading.Thread(target=read_stderr, daemon=True),
        threading.Thread(target=read_stdout, daemon=True),
    ]
    if feed:
        helpers.append(threading.Thread(target=write_stdin, daemon=True))
    for helper in helpers:
        helper.start()

    tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL)
    deadline = time.monotonic() + timeout if timeout is not None else None
    delivering: dict | None = None  # the line `on_progress` is handling; set while it runs
    try:
        while True:
            wait = 0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic()))
            try:
                raw = lines.get(timeout=wait)
            except queue.Empty:
                raw = b""
                if proc.poll() is not None:
                    _end_stragglers(proc)  # they may hold stderr open, and the job is over
            if deadline is not None and time.monotonic() >= deadline:
                raise DeviceError(
                    f"{what} did not finish within {timeout:g} s",
                    "allow more time, or check the device: is it hung, throttling or out of memory?",
                )
            if raw is None:
                break
            if not raw:
                continue
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            progress = _progress_record(line)
            if progress is None:
                if line.strip():
                    tail.append(line)
            elif on_progress is not None:
                delivering = progress
                on_progress(progress)
                delivering = None
        remaining = None if deadline is None else max(0.1, deadline - time.monotonic())
        try:
            returncode = proc.wait(remaining)
        except subprocess.TimeoutExpired:
            raise DeviceError(f"{what} did not finish within {timeout:g} s", "allow more time") from None
        _end_stragglers(proc)
        for helper in helpers:
            helper.join()
    except BaseException as exc:
        stop(proc)
        for helper in helpers:
            helper.join(STOP_GRACE_S)
        if on_progress is not None and (delivering is None or isinstance(exc, KeyboardInterrupt)):
            for event in ([delivering] if delivering else []) + _queued_records(lines):
                on_progress(event)
        raise
    finally:
        if not any(helper.is_alive() for helper in helpers):
            for pipe in (proc.stdin, proc.stdout, proc.stderr):
                if pipe is not None:
                    try:
                        pipe.close()
                    except OSError:
                        pass
    if failures:
        raise failures[0]
    stdout = collected.getvalue() if isinstance(collected, _Buffer) else b""
    return Completed(returncode, stdout, list(tail))


def stop(proc: subprocess.Popen) -> None:
    """Stop a child started by `stream()` and everything in its process group: TERM, then KILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            break
        try:
            proc.wait(STOP_GRACE_S)
            break
        except subprocess.TimeoutExpired:
            continue


def _end_stragglers(proc: subprocess.Popen) -> None:
    """TERM what the finished child left running in its process group: a job leaves no orphans behind."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


def result(completed: Completed, what: str) -> dict:
    """The JSON object a finished job printed; a failed job becomes DeviceError.

    A job exits 0 and prints one JSON object on stdout (the last JSON line wins, so a runtime that logs to
    stdout cannot hide it). A job that fails on purpose exits non-zero and prints
    `{"error": {kind, message, hint}}`; anything else that fails is described by its last stderr line.
    An empty stdout from a successful job reads as `{}`.
    """
    text = completed.stdout.decode("utf-8", errors="replace")
    record = _last_json_object(text)
    if completed.returncode == 0:
        if record is not None:
            return record
        if not text.strip():
            return {}
        raise DeviceError(
            f"{what} printed no JSON result: {text.strip().splitlines()[-1][:200]}",
            "the device side and the host side may be different edgeprune versions",
        )
    error = record.get("error") if record is not None else None
    if isinstance(error, dict) and error.get("message"):
        err = DeviceError(str(error["message"]), str(error.get("hint") or ""))
        err.kind = str(error.get("kind") or "")
        err.stderr_tail = completed.stderr_lines
        raise err
    last = completed.last_stderr_line or "no output"
    err = DeviceError(
        f"{what} failed ({describe_exit(completed.returncode)}): {last}",
        "run `edgeprune doctor` with the same --device/--host to see what the device lacks",
    )
    err.kind = "crash"
    err.stderr_tail = completed.stderr_lines
    raise err


def describe_exit(returncode: int) -> str:
    """`exit 2`, or the signal that killed the job (a remote shell reports signal N as 128 + N)."""
    number = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if number:
        try:
            return f"exit {returncode}: killed by {signal.Signals(number).name}"
        except ValueError:
            pass
    return f"exit {returncode}"


def _progress_record(line: str) -> dict | None:
    """A progress or record line as a dict; None for anything else (a half-written line is not JSON)."""
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) and ("progress" in record or "record" in record) else None


def _queued_records(lines: queue.Queue) -> list[dict]:
    """The progress and record lines a stopped child wrote that were not handed over yet."""
    out = []
    while True:
        try:
            raw = lines.get_nowait()
        except queue.Empty:
            return out
        if raw is None:
            return out
        event = _progress_record(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
        if event is not None:
            out.append(event)


def _last_json_object(text: str) -> dict | None:
    try:
        record = json.loads(text)
        return record if isinstance(record, dict) else None
    except ValueError:
        pass
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                return record
    return None


class _Buffer:
    """A bytes collector the stdout thread appends to."""

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def write(self, chunk: bytes) -> None:
        self._parts.append(chunk)

    def getvalue(self) -> bytes:
        return b"".join(self._parts)
