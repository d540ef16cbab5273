"""`edgeprune doctor`: what a device lacks to be measured (Python, numpy, onnx, the runtime, clocks)."""

from __future__ import annotations

import click

from ..devices import BACKENDS, PROVIDERS, open_device
from ..errors import CheckFailedError
from .options import device_options


@click.command()
@device_options
@click.option("--runtime", type=click.Choice(BACKENDS), default=None,
              help="Check only this runtime (default: every runtime the device lists; one usable suffices).")
@click.option("--provider", type=click.Choice(PROVIDERS), default=None,
              help="With onnxruntime: check only this execution provider.")
@click.pass_obj
def doctor(out, device: str, host: str | None, ssh: dict, runtime: str | None, provider: str | None) -> None:
    """Say what a device lacks before anything is measured; exit 1 when a required check fails."""
    with open_device(device, host, ssh) as session:
        spec = session.spec
        runtimes = ([spec.runtime(backend=runtime, provider=provider, precision=None)]
                    if runtime or provider else list(spec.runtimes))
        results = {}
        for choice in runtimes:
            args = ["doctor", "--backend", choice.backend]
            if choice.provider:
                args += ["--provider", choice.provider]
            results[choice] = session.target.run_profilers(args)["checks"]

    rows, seen = [], set()
    for checks in results.values():
        for check in checks:
            key = (check["check"], check.get("runtime"))
            if key not in seen:
                seen.add(key)
                rows.append(check)
    failed_common = [c for c in rows if c.get("runtime") is None and c["required"] and not c["ok"]]
    usable = [r for r, checks in results.items()
              if all(c["ok"] for c in checks if c.get("runtime") is not None and c["required"])]
    ok = not failed_common and bool(usable)
    where = host or "this machine"
    out.result({"device": spec.name, "host": host, "ok": ok, "checks": rows,
                "usable_runtimes": [{"backend": r.backend, "provider": r.provider} for r in usable]})
    _print(out, spec.name, where, rows, [r.label for r in usable])
    if not ok:
        failed = failed_common or [c for c in rows if c["required"] and not c["ok"]]
        raise CheckFailedError(
            f"{spec.name} on {where} is not ready: {', '.join(c['check'] for c in failed)} failed",
            failed[0]["fix"] or "see the checks above")


def _print(out, name: str, where: str, rows: list[dict], usable: list[str]) -> None:
    from rich.table import Table

    table = Table(title=f"edgeprune doctor: {name} on {where}")
    for column in ("check", "runtime", "status", "detail", "fix"):
        table.add_column(column)
    for row in rows:
        status = "[green]ok[/]" if row["ok"] else ("[red]FAIL[/]" if row["required"] else "[yellow]warn[/]")
        table.add_row(row["check"], row.get("runtime") or "", status, str(row["detail"]), row["fix"])
    out.print(table)
    out.print(f"usable runtimes: {', '.join(usable) if usable else '[red]none[/]'}")
