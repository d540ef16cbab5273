"""`edgeprune export`: a model -> a checksummed bundle (ONNX + manifest + reference outputs)."""

from __future__ import annotations

import functools

import click

from .options import device_options, model_options


@click.command()
@model_options
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Bundle directory to write.")
@click.option("--data", default=None, metavar="PATH",
              help="Real samples for the reference outputs (.npz/.pt/.safetensors, image folder, text, 'digits').")
@click.option("--table", "table_path", default=None, type=click.Path(dir_okay=False),
              help="Latency table whose id, fidelity and runtime travel in the manifest (default: the pruned "
                   "model's provenance).")
@click.option("--budget", default=None, metavar="4.2ms|2x", help="Budget the bundle is validated against.")
@click.option("--baseline-accuracy", type=click.FloatRange(0, 1), default=None,
              help="Accuracy of the unpruned model, for validate's accuracy gate.")
@click.option("--atol", type=float, default=1e-4, show_default=True, help="Parity tolerance (absolute).")
@click.option("--rtol", type=float, default=1e-3, show_default=True, help="Parity tolerance (relative).")
@click.option("--no-clean", is_flag=True, help="Skip onnxslim's graph clean-up.")
@click.option("--engine", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
              help="Also build a TensorRT engine at this precision on the device (INT8 calibrates from --data).")
@click.option("--workspace-mb", type=click.IntRange(1), default=None,
              help="TensorRT builder workspace limit in MiB (default: TensorRT's).")
@click.option("--force", is_flag=True, help="Replace an existing --out.")
@functools.partial(device_options, required=False)
@click.pass_obj
def export(out_obj, model, weights, model_arg, input_shape, seq_len, regime, trust_remote_code, out, data, table_path,
           budget, baseline_accuracy, atol, rtol, no_clean, engine, workspace_mb, force, device, host, ssh):
    """Export MODEL to a bundle: ONNX with a parity check that fails on mismatch, manifest, reference I/O."""
    from edgeprune.api import export as run_export
    from edgeprune.atomic import check_writable

    check_writable(out, force)
    result = run_export(model, out, data=data, table=table_path, budget=budget, baseline_accuracy=baseline_accuracy,
                        atol=atol, rtol=rtol, clean=not no_clean, weights=weights, model_args=model_arg,
                        input_shape=input_shape, seq_len=seq_len, regime=regime, force=force, engine=engine,
                        device=device, host=host, workspace_mb=workspace_mb, trust_remote_code=trust_remote_code,
                        **ssh)
    for note in result.notes:
        out_obj.warn(note)
    m = result.manifest
    worst = max((r.get("max_abs", 0.0) for r in result.parity["outputs"].values()), default=0.0)
    engine_line = ""
    if m.get("engine"):
        e = m["engine"]
        engine_line = (f"  TensorRT {e['tensorrt_version']} engine ({e['settings']['precision']}) built on "
                       f"{e['gpu']['name']} in {e['build_s']:.1f} s\n")
    out_obj.print(f"[bold]bundle[/] {out}  (manifest {m['id'][:12]})\n"
                  f"  parity on {result.parity['samples']} sample(s): max abs {worst:.3g} ≤ atol {atol:g}\n"
                  + engine_line
                  + "  files: " + ", ".join(f"{n} ({f['bytes'] / 1e6:.2f} MB)" for n, f in sorted(m["files"].items())))
    out_obj.result({"out": str(out), "manifest": m})
