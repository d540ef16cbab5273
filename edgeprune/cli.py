"""The `edgeprune` command: a lazy click group, so `edgeprune --help` never imports torch."""

from __future__ import annotations

import importlib
import json
import sys
from typing import Any

import click

from .errors import EdgepruneError

# name -> "module:attribute" of a click.Command; imported only when that command runs or shows help.
COMMANDS = {
    "profile": ("edgeprune.commands.profile:profile", "Measure a per-layer latency table on the device."),
    "demo": ("edgeprune.commands.demo:demo", "Run the built-in example end to end on this CPU."),
    "run": ("edgeprune.commands.run:run", "Run a recipe: profile, prune, distill, export, validate."),
    "distill": ("edgeprune.commands.distill:distill", "Recover accuracy by distillation from cached teacher outputs."),
    "grow": ("edgeprune.commands.grow:grow", "Train a model from a shallow seed, growing it when FRAGrow says."),
    "export": ("edgeprune.commands.export:export", "Export a model to a bundle with a parity check."),
    "inspect": ("edgeprune.commands.inspect:inspect", "Verify a bundle's checksums and print its manifest."),
    "validate": ("edgeprune.commands.validate:validate", "Run bundles on the device and gate them."),
    "prune": ("edgeprune.commands.prune:prune", "Prune a model to a latency budget from its table; measure it."),
    "adapt": ("edgeprune.commands.adapt:adapt", "Prune and fine-tune on the device's unlabeled samples (TT-MPD)."),
    "show": ("edgeprune.commands.show:show", "Print a latency table's layers and plot its staircases."),
    "devices": ("edgeprune.commands.devices:devices", "List the known devices."),
    "doctor": ("edgeprune.commands.doctor:doctor", "Say what a device lacks before anything is measured."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name][0].split(":")
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


class Output:
    """What every command prints through: rich text for people, one JSON object for scripts."""

    def __init__(self, as_json: bool, quiet: bool):
        self.as_json = as_json
        self.quiet = quiet or as_json
        self._console = None

    @property
    def console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(stderr=self.as_json, quiet=self.quiet and not self.as_json)
        return self._console

    def print(self, *objects: Any) -> None:
        if not self.quiet:
            self.console.print(*objects)

    def warn(self, message: str) -> None:
        click.echo(f"warning: {message}", err=True)

    def result(self, data: dict) -> None:
        if self.as_json:
            click.echo(json.dumps(data, indent=1, sort_keys=True, default=str))


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--json", "as_json", is_flag=True, help="Print one machine-readable JSON result on stdout.")
@click.option("--quiet", is_flag=True, help="Print nothing but errors.")
@click.version_option(package_name="edgeprune")
@click.pass_context
def cli(ctx: click.Context, as_json: bool, quiet: bool) -> None:
    """Make a PyTorch model meet a latency budget on a named edge device, and prove it there."""
    ctx.obj = Output(as_json, quiet)


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM (a closed terminal, `timeout`, a CI runner) unwinds like Ctrl-C: device jobs run in their own
    session, so only this unwinding stops them and removes half-written outputs."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors become one line and an exit code, bugs keep their traceback."""
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    try:
        code = cli.main(args=argv, standalone_mode=False)  # a ctx.exit(code) comes back here, not raised
    except EdgepruneError as err:
        click.echo(f"error: {err.message}" + (f"; {err.hint}" if err.hint else ""), err=True)
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as err:
        sys.exit(err.exit_code)
    if isinstance(code, int) and not isinstance(code, bool) and code:
        sys.exit(code)


if __name__ == "__main__":
    main()
