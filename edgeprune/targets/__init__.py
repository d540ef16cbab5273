"""Where the device-side package runs: this machine, or a device reached over SSH.

Every command that measures or validates goes through one `Target`:

    with open_target(host, identity=..., known_hosts=...) as target:
        info = target.run_profilers(["info"])
        target.run_profilers(["run", "plan.json", "--out", "result.json"], files={"plan.json": plan_path},
                             on_progress=bar.update)
        target.fetch("result.json", out_dir / "result.json")

A job runs in its own working directory on the target (a temporary directory, removed on exit), so `args`
refer to `files` and to what the job writes by plain names. Ctrl-C stops the job on the target too.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from ..errors import BadInputError, EdgepruneError
from .job import ProgressCallback

__all__ = ["Target", "open_target", "profilers_source"]

# The SSH options, their defaults, and the command-line flag each comes from (for messages).
SSH_OPTION_FLAGS = {
    "identity": ("--identity", None),
    "known_hosts": ("--known-hosts", None),
    "accept_new_host_key": ("--accept-new-host-key", False),
    "connect_timeout": ("--connect-timeout", 10.0),
    "remote_python": ("--remote-python", "python3"),
}


@runtime_checkable
class Target(Protocol):
    """A place that runs the device-side package; use it as a context manager."""

    where: str  # "this machine" or "user@host:port", for messages

    def __enter__(self) -> Target: ...

    def __exit__(self, *exc: object) -> None: ...

    def run_profilers(
        self,
        args: Sequence[str],
        files: dict[str, pathlib.Path] | None = None,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> dict:
        """Run `python -m profilers *args` in the job's working dir; return the JSON object it printed.

        `files` (name -> local path of a file or folder) are placed in the working dir first. A job that
        fails on purpose (non-zero exit, `{"error": {...}}` on stdout) raises DeviceError with its message
        and hint; any other failure raises DeviceError with the job's last stderr line.
        """
        ...

    def run(
        self,
        argv: Sequence[str],
        files: dict[str, pathlib.Path] | None = None,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> dict:
        """Like `run_profilers`, for any program on the target (argv[0] is looked up there)."""
        ...

    def fetch(self, name: str, local_path: str | os.PathLike) -> pathlib.Path:
        """Copy the file `name` from the job's working dir to `local_path` (atomically)."""
        ...


def open_target(host: str | None, **ssh_options: Any) -> Target:
    """The target for `--host`: this machine when None, else the SSH device `user@addr[:port]`.

    `ssh_options` are SSHTarget's keyword options (identity, known_hosts, accept_new_host_key,
    connect_timeout, remote_python); passing a non-default one without a host is an error, not ignored.
    """
    unknown = sorted(set(ssh_options) - set(SSH_OPTION_FLAGS))
    if unknown:
        raise TypeError(f"open_target() got unknown SSH options: {', '.join(unknown)}")
    if host is None:
        for name, value in ssh_options.items():
            flag, default = SSH_OPTION_FLAGS[name]
            if value is not None and value != default:
                raise BadInputError(
                    f"{flag} only applies to a device reached over SSH", "add --host user@addr"
                )
        from .local import LocalTarget

        return LocalTarget()
    from .ssh import SSHTarget

    return SSHTarget.parse(host, **{k: v for k, v in ssh_options.items() if v is not None})


def profilers_source() -> tuple[str, pathlib.Path]:
    """The device-side package as (module name to run with -m, folder holding its source).

    Installed, it is `edgeprune.profilers`; in a source checkout it is the top-level `profilers/` folder
    beside `edgeprune/`. Both are found without importing the package.
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec("edgeprune.profilers")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        return "edgeprune.profilers", pathlib.Path(next(iter(spec.submodule_search_locations)))
    checkout = pathlib.Path(__file__).resolve().parents[2] / "profilers"
    try:
        spec = importlib.util.find_spec("profilers")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        found = pathlib.Path(next(iter(spec.submodule_search_locations))).resolve()
        if found == checkout:  # a foreign top-level `profilers` package must not be mistaken for ours
            return "profilers", found
    if (checkout / "__main__.py").is_file():
        return "profilers", checkout
    raise EdgepruneError(
        "cannot find edgeprune's device-side package (edgeprune.profilers)",
        "reinstall edgeprune (pip install edgeprune), or run from a complete source checkout",
    )
