"""`edgeprune devices`: the known device kinds, with the one this machine is marked."""

from __future__ import annotations

import click

from ..devices import DeviceSpec, RuntimeSpec, detect_device, load_registry, local_facts


def _figure(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _short(runtime: RuntimeSpec) -> str:
    if runtime.provider is None:
        return runtime.backend
    return "ort-" + runtime.provider.removesuffix("ExecutionProvider").lower().replace("tensorrt", "trt")


def _alignment(spec: DeviceSpec) -> str:
    steps = [str(spec.alignment)]
    steps += [f"{p} {step}" for p, step in spec.alignment_by_precision.items() if step != spec.alignment]
    if spec.alignment_avx512:
        steps.append(f"avx512 {spec.alignment_avx512}")
    return ", ".join(steps)


@click.command()
@click.pass_obj
def devices(out) -> None:
    """List the known devices; the one this machine is gets marked."""
    from rich.table import Table

    registry = load_registry()
    here = detect_device(local_facts(), registry)
    rows = []
    for spec in registry.values():
        row = spec.to_dict()
        row["this_machine"] = spec is here
        rows.append(row)
    out.result({"devices": rows, "detected": here.name if here else None})

    table = Table(title="edgeprune devices",
                  caption="* this machine. Peak fp32/fp16 GFLOPS and GB/s hold in the power mode the "
                          "device's YAML file names (`--json` shows it).")
    table.add_column("name, aliases", overflow="fold")
    table.add_column("family")
    table.add_column("runtimes: precisions")
    table.add_column("step")
    for column in ("fp32", "fp16", "GB/s"):
        table.add_column(column, justify="right", no_wrap=True)
    for spec in registry.values():
        peak = spec.peak
        aliases = ", ".join((*spec.aliases, *spec.family_aliases))
        table.add_row(
            f"{spec.name}{' *' if spec is here else ''}\n[dim]{aliases}[/]",
            spec.family,
            "\n".join(f"{_short(r)}: {' '.join(r.precisions)}" for r in spec.runtimes),
            _alignment(spec),
            _figure(peak.fp32_gflops if peak else None),
            _figure(peak.fp16_gflops if peak else None),
            _figure(peak.bandwidth_gbs if peak else None),
            style="bold" if spec is here else None,
        )
    out.print(table)
