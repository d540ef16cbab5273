"""This machine as the target: the device-side package runs in a child Python, not in the host process.

A child keeps the measurement away from the host's torch thread pools and imported libraries, and makes the
local and the SSH paths behave alike (same working dir rules, same progress and error protocol).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import sys
import tempfile
from collections.abc import Sequence

from ..atomic import atomic_file
from ..errors import BadInputError, DeviceError
from . import profilers_source
from .job import ProgressCallback, result, stream


class LocalTarget:
    """Runs jobs in a temporary working directory on this machine, removed on exit."""

    where = "this machine"

    def __init__(self) -> None:
        self.workdir: pathlib.Path | None = None

    def __enter__(self) -> LocalTarget:
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="edgeprune-job-"))
        return self

    def __exit__(self, *exc: object) -> None:
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def run_profilers(
        self,
        args: Sequence[str],
        files: dict[str, pathlib.Path] | None = None,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> dict:
        module, folder = profilers_source()
        env = None
        if module == "profilers":  # source checkout: make the folder's parent importable, like on a device
            env = dict(os.environ)
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder.parent), env.get("PYTHONPATH")) if p)
        return self._run([sys.executable, "-m", module, *args], files, on_progress, timeout, env)

    def run(
        self,
        argv: Sequence[str],
        files: dict[str, pathlib.Path] | None = None,
        on_progress: ProgressCallback | None = None,
        timeout: float | None = None,
    ) -> dict:
        return self._run(list(argv), files, on_progress, timeout, None)

    def fetch(self, name: str, local_path: str | os.PathLike) -> pathlib.Path:
        source = self._workdir() / check_job_name(name)
        if not source.is_file():
            raise DeviceError(
                f"the job on {self.where} wrote no {name}", "check the job's arguments (--out NAME)"
            )
        local_path = pathlib.Path(local_path)
        with open(source, "rb") as reader, atomic_file(local_path, "wb") as writer:
            shutil.copyfileobj(reader, writer)
        return local_path

    def _run(self, argv, files, on_progress, timeout, env) -> dict:
        workdir = self._workdir()
        for name, path in (files or {}).items():
            place(pathlib.Path(path), workdir / check_job_name(name))
        what = f"device job on {self.where}"
        try:
            completed = stream(
                argv, what=what, cwd=workdir, env=env, on_progress=on_progress, timeout=timeout
            )
        except FileNotFoundError as exc:
            raise DeviceError(
                f"{what} cannot start: {exc.strerror}: {argv[0]}", "check the program name"
            ) from None
        return result(completed, what)

    def _workdir(self) -> pathlib.Path:
        if self.workdir is None:
            raise RuntimeError("use the target as a context manager: `with open_target(...) as target:`")
        return self.workdir


RESERVED_NAMES = ("profilers",)  # the device-side package itself lives in the SSH job's working dir


def check_job_name(name: str) -> str:
    """A name in the job's working dir: a relative path that stays inside it and hides nothing of ours."""
    parts = pathlib.PurePosixPath(name).parts
    if (
        not name
        or name.startswith("/")
        or "\\" in name
        or any(part in ("..", ".") for part in parts)
        or parts[0] in RESERVED_NAMES
        or parts[0].startswith(".job-")
    ):
        raise ValueError(f"job file names must be relative paths inside the job's directory, got {name!r}")
    return name


def refuse_links(source: pathlib.Path) -> None:
    """A folder sent to the device may hold no symbolic link: a link inside it (say, a bundle's notes.txt ->
    ~/.ssh/id_ed25519) would carry what it points at out of the folder. `source` itself is what the caller named."""
    if not source.exists():
        raise BadInputError(f"cannot send {source} to the device: no such file or folder", "check the path")
    if not source.is_dir():
        return
    for root, dirs, files in os.walk(source):  # does not descend into linked folders; they are listed in dirs
        for name in sorted(dirs + files):
            path = pathlib.Path(root, name)
            if path.is_symlink():
                raise BadInputError(f"cannot send {source} to the device: {path} is a symbolic link",
                                    "remove the link (or replace it with the file itself if it belongs there)")


def place(source: pathlib.Path, dest: pathlib.Path) -> None:
    """Copy a file or a folder into the job's working dir, never following a link inside the folder."""
    refuse_links(source)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():  # symlinks=True: a link that appeared after the check is copied as a link, not followed
        shutil.copytree(source, dest, symlinks=True, dirs_exist_ok=True)
    else:
        shutil.copyfile(source, dest)
