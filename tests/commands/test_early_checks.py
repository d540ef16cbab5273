"""Cheap options are checked before any model loads or any device is contacted.

Loading a model takes seconds to minutes and connecting takes a round trip, so a malformed budget, a missing
data path, a wrong thread count or host must fail first. The `nothing_heavy` fixture makes loading a model or
opening a target fail the test, so a check that ran too late is caught without timing anything.
"""

from __future__ import annotations

import pytest


def invoke(capsys, *args: str) -> tuple[int, str]:
    """Run `edgeprune ARGS` in this process (so monkeypatches apply); (exit code, stderr)."""
    from tests.conftest import run_cli_in_process

    done = run_cli_in_process(capsys, *args)
    return done.returncode, done.stderr


@pytest.fixture
def nothing_heavy(monkeypatch):
    def loaded(*args, **kwargs):
        pytest.fail("a model was loaded before the options were checked")

    def connected(self):
        pytest.fail("a device was contacted before the options were checked")

    monkeypatch.setattr("edgeprune.models.load_model", loaded)
    monkeypatch.setattr("edgeprune.targets.local.LocalTarget.__enter__", connected)
    monkeypatch.setattr("edgeprune.targets.ssh.SSHTarget.__enter__", connected)


MODEL = ["--model", "torchvision:resnet18"]
RATIO = ["--mode", "uniform", "--ratio", "0.3"]

# command line -> what the one error line says
USER_ERRORS = {
    "prune-budget": (["prune", *MODEL, "--budget", "abc"], "cannot read budget 'abc'"),
    "prune-slower-budget": (["prune", *MODEL, "--budget", "0.5x"], "speedup budget below 1x"),
    "prune-missing-calib": (["prune", *MODEL, "--budget", "2x", "--calib", "missing.npz"],
                            "--calib missing.npz does not exist"),
    "prune-budget-without-table": (["prune", *MODEL, "--budget", "2x"], "needs a latency table"),
    "prune-unknown-criterion": (["prune", *MODEL, *RATIO, "--criterion", "l3"], "unknown criterion 'l3'"),
    "prune-criterion-without-data": (["prune", *MODEL, *RATIO, "--criterion", "taylor"], "needs calibration data"),
    "prune-bad-host": (["prune", *MODEL, *RATIO, "--host", "nvidia@jetson:ssh"], "is not user@addr"),
    "prune-ssh-option-without-host": (["prune", *MODEL, *RATIO, "--remote-python", "python3.9"],
                                      "--remote-python only applies to a device reached over SSH"),
    "prune-unknown-device": (["prune", *MODEL, *RATIO, "--device", "jetsn"], "unknown device 'jetsn'"),
    "prune-trust-remote-code-as-model-arg": (["prune", *MODEL, *RATIO, "--model-arg", "trust_remote_code=true"],
                                             "trust_remote_code cannot be set through --model-arg"),
    "profile-unknown-device": (["profile", *MODEL, "--device", "cpux"], "unknown device 'cpux'"),
    "profile-runtime-the-device-lacks": (["profile", *MODEL, "--device", "cpu", "--runtime", "tensorrt"],
                                         "device cpu has no tensorrt runtime"),
    "profile-bad-host": (["profile", *MODEL, "--device", "cpu", "--host", "a b"], "is not user@addr"),
    "profile-bad-input-shape": (["profile", *MODEL, "--device", "cpu", "--input-shape", "1x3xbig"],
                                "cannot read input shape"),
    "profile-known-hosts-path-ssh-cannot-read": (["profile", *MODEL, "--device", "cpu", "--host", "pi@rpi",
                                                  "--known-hosts", "/k/${HOME}/known_hosts"], "cannot take a path"),
    "profile-missing-identity": (["profile", *MODEL, "--device", "cpu", "--host", "pi@rpi", "--identity",
                                  "missing_key"], "--identity missing_key: no such key file"),
    "export-budget": (["export", *MODEL, "--budget", "fast"], "cannot read budget 'fast'"),
    "export-missing-data": (["export", *MODEL, "--data", "missing.npz"], "--data missing.npz does not exist"),
    "export-engine-bad-host": (["export", *MODEL, "--engine", "fp16", "--host", "@rpi"], "is not user@addr"),
    "distill-missing-data": (["distill", "--student", "pruned", "--teacher", "torchvision:resnet18", "--data",
                              "missing.npz"], "--data missing.npz does not exist"),
}

# click's own range checks: a usage error (exit 2) before the command runs
USAGE_ERRORS = {
    "prune-ratio": (["prune", *MODEL, "--mode", "uniform", "--ratio", "1.5"], "Invalid value for '--ratio'"),
    "prune-threads": (["prune", *MODEL, "--budget", "2x", "--threads", "0"], "Invalid value for '--threads'"),
    "profile-threads": (["profile", *MODEL, "--device", "cpu", "--threads", "two"], "Invalid value for '--threads'"),
}


def _out_for(args: list, tmp_path) -> list:
    suffix = ".json" if args[0] == "profile" else ""
    return [*args, "--out", str(tmp_path / f"out{suffix}")]


@pytest.mark.parametrize("case", sorted(USER_ERRORS))
def test_user_errors_come_before_loading_or_connecting(case, nothing_heavy, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, expected = USER_ERRORS[case]
    code, err = invoke(capsys, *_out_for(args, tmp_path))
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert [p.name for p in tmp_path.iterdir()] == []  # nothing written, not even a temporary sibling


@pytest.mark.parametrize("case", sorted(USAGE_ERRORS))
def test_option_ranges_are_usage_errors_before_loading(case, nothing_heavy, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args, expected = USAGE_ERRORS[case]
    code, err = invoke(capsys, *_out_for(args, tmp_path))
    assert code == 2 and expected in err, err
    assert [p.name for p in tmp_path.iterdir()] == []


def test_builtin_digits_needs_no_file(nothing_heavy, capsys, tmp_path, monkeypatch):
    """`--data digits` is not a path: the check passes it, and the command goes on to load the model."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(pytest.fail.Exception, match="a model was loaded"):
        invoke(capsys, "export", *MODEL, "--data", "digits:train", "--out", str(tmp_path / "bundle"))
