"""`edgeprune inspect BUNDLE`: verify a bundle's checksums and print its manifest."""

from __future__ import annotations

import click


@click.command()
@click.argument("bundle", type=click.Path())
@click.pass_obj
def inspect(out_obj, bundle):
    """Verify BUNDLE (manifest, every checksum, nothing unlisted, no links) and print what it holds."""
    from edgeprune.exporters.bundle import read_bundle

    m = read_bundle(bundle)
    spec = ", ".join(f"{i['name']} {'x'.join(map(str, i['shape']))} {i['dtype']}" for i in m["inputs"])
    table = m.get("table") or {}
    fid = table.get("fidelity") or {}
    lines = [f"[bold]bundle[/] {bundle}  (manifest {m['id'][:12]}, checksums ok)",
             f"  source: {m['source']['spec']}" + (f" (pruned from {m['source']['pruned_from']})"
                                                   if m["source"].get("pruned_from") else ""),
             f"  input: {spec}; preprocessing: {(m.get('preprocessing') or {}).get('kind')}",
             f"  runtime: {m['runtime'].get('backend')} {m['runtime'].get('provider') or ''} "
             f"{m['runtime'].get('precision')} · {m['runtime'].get('threads')} thread(s)",
             f"  table: {str(table.get('id'))[:12] if table else '—'}"
             + (f" (±10 %: {fid.get('within_10'):.0%})" if fid.get("within_10") is not None else ""),
             f"  budget: {m.get('budget') or '—'}"
             + (f" = {m['budget_ms']:.3f} ms" if m.get("budget_ms") else "")
             + (f"; predicted {m['predicted_ms']:.3f} ms" if m.get("predicted_ms") else ""),
             f"  baseline accuracy: {m.get('baseline_accuracy') if m.get('baseline_accuracy') is not None else '—'}",
             f"  engine: {_engine_line(m.get('engine'))}",
             "  files: " + ", ".join(f"{n} {f['sha256'][:12]}" for n, f in sorted(m["files"].items()))]
    out_obj.print("\n".join(lines))
    out_obj.result(m)


def _engine_line(engine: dict | None) -> str:
    if not engine:
        return "—"
    settings = engine.get("settings") or {}
    calib = settings.get("int8_calibration")
    return (f"TensorRT {engine.get('tensorrt_version')} {settings.get('precision')} for "
            f"{(engine.get('gpu') or {}).get('name')} (sm {(engine.get('gpu') or {}).get('compute_capability')})"
            + (f", INT8 calibrated on {calib['samples']} samples" if isinstance(calib, dict) else ""))
