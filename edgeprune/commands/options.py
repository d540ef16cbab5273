"""Options that mean the same in every command: --model and its settings, --device, --host and SSH.

`device_options` adds --device, --host and the SSH settings; the command receives the SSH settings as one dict
argument `ssh`, to pass on untouched as `open_target(host, **ssh)`. `edgeprune.devices.open_device` connects,
reads the device's facts and resolves --device against them, so every command fails the same way on a wrong
device.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import click

SSH_OPTION_NAMES = ("identity", "known_hosts", "accept_new_host_key", "remote_python", "connect_timeout")


def _apply(func: Callable, options: list[Callable]) -> Callable:
    for option in reversed(options):
        func = option(func)
    return func


def ssh_options(func: Callable) -> Callable:
    """--identity, --known-hosts, --accept-new-host-key, --remote-python, --connect-timeout (as `ssh`)."""

    @functools.wraps(func)
    def command(*args: Any, **kwargs: Any) -> Any:
        kwargs["ssh"] = {name: kwargs.pop(name) for name in SSH_OPTION_NAMES}
        return func(*args, **kwargs)

    return _apply(command, [
        click.option("--identity", type=click.Path(dir_okay=False), default=None,
                     help="SSH private key file for --host (like ssh -i)."),
        click.option("--known-hosts", type=click.Path(dir_okay=False), default=None,
                     help="known_hosts file to check the host key against (default: the system's)."),
        click.option("--accept-new-host-key", is_flag=True, default=False,
                     help="Trust and remember an unknown host key (ssh's StrictHostKeyChecking=accept-new)."),
        click.option("--remote-python", metavar="PATH", default=None,
                     help="Python (>= 3.8) to run on the device (default: python3)."),
        click.option("--connect-timeout", type=click.FloatRange(min=0, min_open=True), default=None,
                     metavar="SECONDS", help="Give up connecting after this long (default: 10)."),
    ])


def device_options(func: Callable, required: bool = True) -> Callable:
    """--device NAME|FILE.yaml, --host user@addr[:port], and the SSH settings (as `ssh`)."""
    extra = "" if required else " Default: the device the latency table was measured on."
    return _apply(ssh_options(func), [
        click.option("--device", required=required, metavar="NAME|FILE.yaml",
                     help="Device kind: a name or alias from `edgeprune devices` (a family such as `jetson` "
                          "picks the model it finds), or a device YAML file." + extra),
        click.option("--host", metavar="USER@ADDR[:PORT]", default=None,
                     help="Reach the device over SSH (absent: this machine, which must be the --device)."),
    ])


def measuring_device_options(func: Callable) -> Callable:
    """Like device_options, with --device optional (commands that default to the table's device)."""
    return device_options(func, required=False)


cache_option = click.option(  # every command that measures reads and fills the same SQLite cache
    "--cache", "cache_path", type=click.Path(dir_okay=False), envvar="EDGEPRUNE_CACHE",
    help="SQLite measurement cache (default: the user cache dir; env EDGEPRUNE_CACHE).")


def pruned_output_options(func: Callable) -> Callable:
    """What every command that writes a pruned-model directory against a measured budget takes (prune, adapt):
    --min-keep, --ignore, --threads, --no-measure, the measuring device, --seed, --cache, --out, --force."""
    return _apply(func, [
        click.option("--min-keep", type=click.FloatRange(0.01, 1.0), default=0.3, show_default=True,
                     help="Never keep less than this fraction of any group."),
        click.option("--ignore", multiple=True, metavar="LAYER",
                     help="Keep this layer whole (module name or prefix, e.g. layer1.0.conv1; layers.3.heads for a "
                          "transformer); repeat for several. For a channel concatenation, ignore the layers feeding "
                          "it."),
        click.option("--threads", type=click.IntRange(1, 256), default=None,
                     help="Runtime threads of the target (must be the table's; default: the table's)."),
        click.option("--no-measure", is_flag=True, help="Trust the table; do not time the result on the device."),
        measuring_device_options,
        click.option("--seed", default=0, show_default=True, type=int),
        cache_option,
        click.option("--out", required=True, type=click.Path(file_okay=False),
                     help="Pruned-model directory to write."),
        click.option("--force", is_flag=True, help="Replace an existing --out."),
    ])


def _model_args(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]) -> dict:
    from ..models import parse_model_args

    return parse_model_args(value)


def _input_shape(ctx: click.Context, param: click.Parameter, value: str | None) -> tuple | None:
    from ..models import parse_shape

    return parse_shape(value)


def trust_remote_code_option(spec_param: str, where: str = "{}") -> Callable[[Callable], Callable]:
    """--trust-remote-code: let the Hugging Face directory in `spec_param` run its own Python files.

    Only this flag switches it on (never --model-arg or a recipe), and it says so on stderr before loading
    (`where` formats the parameter's value for that line).
    """

    def decorate(func: Callable) -> Callable:
        @functools.wraps(func)
        def command(*args: Any, **kwargs: Any) -> Any:
            if kwargs["trust_remote_code"]:
                shown = where.format(kwargs[spec_param])
                click.echo(f"warning: --trust-remote-code: Python code in {shown} will run on this machine", err=True)
            return func(*args, **kwargs)

        return click.option(
            "--trust-remote-code", is_flag=True, default=False,
            help="Let a Hugging Face model directory run the Python files it ships (config.json auto_map). "
                 "Only for code you trust: it runs on this machine.")(command)

    return decorate


def model_options(func: Callable) -> Callable:
    """--model SPEC, --weights, --model-arg key=value (a dict), --input-shape (a tuple), --seq-len,
    --trust-remote-code."""
    return _apply(trust_remote_code_option("model")(func), [
        click.option("--model", required=True, metavar="SPEC",
                     help="torchvision:NAME, timm:NAME, a Hugging Face model directory, an edgeprune "
                          "pruned-model directory, FILE.onnx or a TorchScript file."),
        click.option("--weights", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="Weights for the named architecture: safetensors, or a state_dict (loaded with "
                          "weights_only=True). Without them torchvision/timm models are randomly "
                          "initialised."),
        click.option("--model-arg", "model_arg", multiple=True, metavar="KEY=VALUE", callback=_model_args,
                     help="Constructor option for the model, repeatable (e.g. --model-arg image_size=96)."),
        click.option("--input-shape", metavar="1x3x224x224", default=None, callback=_input_shape,
                     help="Input shape of a vision model (default: from the model family)."),
        click.option("--seq-len", type=click.IntRange(min=1), default=None, metavar="N",
                     help="Sequence length of a language model: prefill at N, one decode step with a past "
                          "of N."),
        click.option("--regime", type=click.Choice(["prefill", "decode"]), default="prefill", show_default=True,
                     help="Latency regime of a language model: N new tokens, or one token after N cached."),
    ])
