"""Shared pytest fixtures."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def isolated_measurement_cache(tmp_path_factory):
    """Tests never read or write the user's own measurement cache (a test that wants one passes --cache)."""
    path = tmp_path_factory.mktemp("edgeprune-cache") / "cache.sqlite"
    old = os.environ.get("EDGEPRUNE_CACHE")
    os.environ["EDGEPRUNE_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("EDGEPRUNE_CACHE", None)
    else:
        os.environ["EDGEPRUNE_CACHE"] = old


# ---------------------------------------------------------------------------------------------------------
# SSH: a real sshd on 127.0.0.1 for the SSH target's end-to-end tests (helper module: tests/sshd.py).
# Missing sshd/ssh skips those tests on a developer machine, but fails them in CI (CI=true), where
# .ci/run installs openssh-server and openssh-client.
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def sshd_server():
    """A running sshd that the current user can log in to with `identity`; stopped at session end."""
    import sshd

    server = None
    try:
        server = sshd.Server()
        info = server.start()
    except sshd.Unavailable as exc:
        if server is not None:
            server.stop()
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"sshd is required in CI: {exc}")
        pytest.skip(f"no sshd for the SSH tests: {exc}")
    try:
        yield info
    finally:
        server.stop()


# --------------------------------------------------------------------------------------- end of SSH section


@pytest.fixture
def formula_device(monkeypatch):
    """Devices opened without --host answer from a known formula (tests/formula_device.py): for logic tests."""
    from tests.formula_device import install

    return install(monkeypatch)


def run_cli_in_process(capsys, *args: str):
    """Run `edgeprune ARGS` in this process (so monkeypatches and fixtures apply); a CompletedProcess."""
    import subprocess

    from edgeprune.cli import main

    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)


@pytest.fixture
def cli_in_process(capsys, monkeypatch):
    """`run_cli_in_process` as a fixture; `cache=PATH` sets the measurement cache for that call."""

    def invoke(*args: str, cache=None):
        if cache is not None:
            monkeypatch.setenv("EDGEPRUNE_CACHE", str(cache))
        return run_cli_in_process(capsys, *args)

    return invoke
