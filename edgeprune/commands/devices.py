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
    """One step per line ("8", "int8 32", "avx512 16"), so the column never breaks inside a figure."""
    steps = [str(spec.alignment)]
    steps += [f"{p} {step}" for p, step in spec.alignment_by_precision.items() if step != spec.alignment]
    if spec.alignment_avx512:
        steps.append(f"avx512 {spec.alignment_avx512}")
    return "\n".join(steps)


def device_table(registry: dict, here: DeviceSpec | None):
    """The device list as a rich table that fits 80 columns without breaking a word.

    Names, aliases, runtimes and precisions go one per line (never folded), borders are dropped, and the
    family column is left out: family names (`jetson`, `rpi`) are listed among the aliases, and `--json` has it.
    """
    from rich import box
    from rich.table import Table

    table = Table(title="edgeprune devices", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False,
                  collapse_padding=True,
                  caption="* this machine. --device takes a name or any alias below. Peak GFLOPS and GB/s hold "
                          "in the power mode the device's YAML file names (--json shows it).")
    table.add_column("device, aliases", no_wrap=True)
    table.add_column("runtime", no_wrap=True)
    table.add_column("precisions", no_wrap=True)
    table.add_column("step", no_wrap=True)
    for column in ("fp32", "fp16", "GB/s"):
        table.add_column(column, justify="right", no_wrap=True)
    for spec in registry.values():
        peak = spec.peak
        aliases = "\n".join(dict.fromkeys((*spec.aliases, *spec.family_aliases)))
        table.add_row(
            f"[bold]{spec.name}[/]{' *' if spec is here else ''}\n[dim]{aliases}[/]",
            "\n".join(_short(r) for r in spec.runtimes),
            "\n".join(" ".join(r.precisions) for r in spec.runtimes),
            _alignment(spec),
            _figure(peak.fp32_gflops if peak else None),
            _figure(peak.fp16_gflops if peak else None),
            _figure(peak.bandwidth_gbs if peak else None),
            style="bold" if spec is here else None,
            end_section=True,
        )
    return table


@click.command()
@click.pass_obj
def devices(out) -> None:
    """List the known devices; the one this machine is gets marked."""
    registry = load_registry()
    here = detect_device(local_facts(), registry)
    rows = []
    for spec in registry.values():
        row = spec.to_dict()
        row["this_machine"] = spec is here
        rows.append(row)
    out.result({"devices": rows, "detected": here.name if here else None})
    out.print(device_table(registry, here))
