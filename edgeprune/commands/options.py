"""What `--device` and `--host` mean, shared by every command that talks to a device.

`device_options` adds --device, --host and the SSH settings; the command receives the SSH settings as keyword
arguments it passes on untouched (`def cmd(device, host, ..., **ssh)`). `open_device` then connects, reads the
device's facts and resolves --device against them, so every command fails the same way on a wrong device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import click

from ..devices import DeviceSpec, load_registry, lookup_device, resolve_device


def ssh_options(func: Callable) -> Callable:
    """--identity, --known-hosts, --accept-new-host-key, --remote-python, --connect-timeout."""
    options = [
        click.option("--identity", type=click.Path(dir_okay=False), default=None,
                     help="SSH private key file for --host (like ssh -i)."),
        click.option("--known-hosts", type=click.Path(dir_okay=False), default=None,
                     help="known_hosts file to check the host key against (default: the system's)."),
        click.option("--accept-new-host-key", is_flag=True, default=False,
                     help="Trust and remember an unknown host key, like ssh's StrictHostKeyChecking=accept-new."),
        click.option("--remote-python", metavar="PATH", default=None,
                     help="Python (>= 3.8) to run on the device (default: python3)."),
        click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
                     metavar="SECONDS", help="Give up connecting after this long (default: 10)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def device_options(func: Callable) -> Callable:
    """--device NAME|FILE.yaml, --host user@addr[:port], and the SSH settings."""
    func = ssh_options(func)
    func = click.option("--host", metavar="USER@ADDR[:PORT]", default=None,
                        help="Measure the device over SSH (absent: this machine, which must be the --device).")(func)
    return click.option("--device", required=True, metavar="NAME|FILE.yaml",
                        help="Device kind: a name or alias from `edgeprune devices` (a family such as `jetson` "
                             "picks the model it finds), or a device YAML file.")(func)


class DeviceSession(NamedTuple):
    """A resolved device, the facts it reported, and the open target that runs jobs on it."""

    spec: DeviceSpec
    facts: dict
    target: Any


@contextlib.contextmanager
def open_device(device: str, host: str | None, ssh: dict[str, Any]) -> Iterator[DeviceSession]:
    """Connect to the device (or this machine), read its facts, and resolve `device` against them."""
    from ..targets import open_target

    registry = load_registry()
    lookup_device(device, registry)  # an unknown name fails before any connection is made
    with open_target(host, **ssh) as target:
        facts = target.run_profilers(["info"])
        yield DeviceSession(resolve_device(device, host=host, facts=facts, registry=registry), facts, target)
