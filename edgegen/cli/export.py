"""`edgegen export` (torch checkpoint → ONNX bundle) and `edgegen inspect` (what is in a bundle).

`export` needs the training extra (torch, onnx, onnxscript, onnxslim); `inspect` needs only the
base install, plus onnx for `--trt` (the TensorRT parser-table check).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import typer

from edgegen.errors import UserError, require_train_extra

log = logging.getLogger(__name__)


def export(
    out: Path = typer.Option(..., "--out", "-o", help="Bundle folder to write (created; an earlier export there is reused stage by stage)."),
    checkpoint: Path = typer.Option(None, "--checkpoint", "-c", help="Student checkpoint (default: the shipped checkpoint.safetensors)."),
    precision: str = typer.Option("fp32", "--precision", "-p", help="fp32, or fp16 (adds fp16 beside the fp32 reference); a comma list works."),
    opset: int = typer.Option(20, "--opset", help="ONNX opset (default 20: the highest TensorRT 10.3 / JetPack 6 parses)."),
    force: bool = typer.Option(False, "--force", help="Redo every stage even when a cached ONNX file matches; replace a bundle of another checkpoint in --out."),
    untrained: str = typer.Option(None, "--untrained", metavar="CONFIG", help="Export a config's model with fresh random weights instead of a checkpoint (toolchain tests)."),
    no_slim: bool = typer.Option(False, "--no-slim", help="Skip onnxslim (constant folding, pattern fusion)."),
) -> None:
    """Export a checkpoint to an ONNX bundle, checked by onnx.checker, TensorRT tables and parity with torch."""
    require_train_extra("export", ("torch", "onnx", "safetensors"))
    from edgegen.export.pipeline import EXPORT_PRECISIONS, export_bundle
    from edgegen.export.source import default_checkpoint, source_from_checkpoint, source_from_config

    precisions = [p.strip() for p in precision.split(",") if p.strip()]
    bad = [p for p in precisions if p not in EXPORT_PRECISIONS]
    if bad or not precisions:
        raise UserError(f"unknown --precision {bad[0] if bad else precision!r}; valid: {', '.join(EXPORT_PRECISIONS)} (int8/fp8: edgegen calibrate)")
    if untrained and checkpoint:
        raise UserError("pass either --checkpoint or --untrained, not both")
    source = source_from_config(untrained) if untrained else source_from_checkpoint(checkpoint or default_checkpoint())
    report = export_bundle(source, out, precisions=precisions, opset=opset, slim=not no_slim, force=force)
    typer.echo(report.summary())


# ---------------------------------------------------------------------------------------------
# inspect


def describe(path: Path, trt: str | None = None) -> dict[str, Any]:
    """Everything `inspect` shows, as JSON-ready data (files are checked, not trusted)."""
    from edgegen.bundle import MANIFEST, load_bundle, sha256_file, thaw

    bundle = load_bundle(path, verify_files=False)  # inspect reports bad files instead of refusing
    manifest = thaw(bundle.manifest)
    files = {}
    for name, record in manifest["files"].items():
        file = bundle.file(name)
        if not file.is_file():
            status = "missing"
        elif file.stat().st_size != record["bytes"]:
            status = f"size {file.stat().st_size} != {record['bytes']}"
        else:
            status = "ok" if sha256_file(file) == record["sha256"] else "sha256 mismatch"
        files[name] = {"bytes": record["bytes"], "sha256": record["sha256"], "status": status}
    info: dict[str, Any] = {
        "path": str(bundle.path),
        "manifest": str(bundle.path / MANIFEST),
        "digest": bundle.digest,
        "schema_version": manifest["schema_version"],
        "model": manifest["model"],
        "video": manifest["video"],
        "latent": manifest["latent"],
        "cache": manifest["cache"],
        "sampler": manifest["sampler"],
        "tokenizer": manifest["tokenizer"],
        "precisions": manifest["precisions"],
        "files": files,
        "provenance": manifest["provenance"],
    }
    if trt is not None:
        info["trt"] = check_bundle_trt(bundle, trt)
    return info


def check_bundle_trt(bundle: Any, version: str) -> dict[str, Any]:
    """{"version": ..., "files": {file: [problem, ...]}} for every ONNX file in the bundle."""
    try:
        from edgegen.export.trt_check import check_trt, normalize_version
    except ImportError:
        raise UserError("--trt needs the onnx package: pip install onnx") from None
    version = normalize_version(version)
    names = sorted({entry.file for comps in bundle.components.values() for entry in comps.values()})
    results = {}
    for name in names:
        path = bundle.file(name)
        results[name] = [str(p) for p in check_trt(path, version)] if path.is_file() else ["file missing"]
    return {"version": version, "files": results}


def _mb(n: int) -> str:
    return f"{n / 1e6:.2f} MB"


def _shape(spec: dict[str, Any]) -> str:
    return f"{spec['name']} {spec['dtype']}[{', '.join(str(d) for d in spec['shape'])}]"


def _precision_notes(record: dict[str, Any]) -> list[str]:
    """A quantized precision's calibration and verdict, a line each (the full record: --json)."""
    notes = []
    if record.get("quantized"):
        notes.append(f"quantized: {', '.join(record['quantized'])} (the rest share the fp32 files)")
    if "calibration" in record:
        cal = record["calibration"]
        notes.append(f"calibration: {cal.get('method', '?')}; {cal.get('samples', '?')} samples from {cal.get('prompts', '?')} {cal.get('split', '')} prompts")
    quality = record.get("quality")
    if quality:
        verdict = "passed" if quality.get("passed") else "FAILED"
        per_backend = "".join(f", {b} (its own files): {'passed' if ok else 'FAILED'}" for b, ok in quality.get("passed_by_backend", {}).items())
        failed = [name for name, check in quality.get("checks", {}).items() if not check.get("passed")]
        notes.append(f"quality: {verdict}{per_backend}" + (f"; checks not met: {', '.join(failed)}" if failed else "")
                     + (f"; report {quality['report_markdown']}" if "report_markdown" in quality else ""))
    return notes


def _print(info: dict[str, Any]) -> None:
    echo = typer.echo
    model, video, sampler, prov = info["model"], info["video"], info["sampler"], info["provenance"]
    echo(f"bundle   {info['path']}  (schema {info['schema_version']}, digest {info['digest'][:12]})")
    echo(f"model    {model['name']}: {video['width']}x{video['height']} @ {video['fps']} fps, "
         f"{video['chunk_frames']} frames per chunk, latent {info['latent']['channels']}x{info['latent']['height']}x{info['latent']['width']}, "
         f"KV cache {info['cache']['slots']} slots x {info['cache']['tokens_per_slot']} tokens")
    steps = ", ".join(sorted(sampler["schedules"], key=int))
    echo(f"sampler  {sampler['type']}: steps {steps} (default {sampler['default_steps']}), t_ctx {sampler['t_ctx']} from chunk {sampler.get('t_ctx_from', 0)}")
    for precision, record in info["precisions"].items():
        total = sum(info["files"][c["file"]]["bytes"] for c in record["components"].values())
        echo(f"{precision:<8} {_mb(total)}")
        for line in _precision_notes(record):
            echo(f"  {line}")
        for name, comp in record["components"].items():
            f = info["files"][comp["file"]]
            echo(f"  {name:<13} {comp['file']:<26} {_mb(f['bytes']):>9}  opset {comp['opset']}  [{f['status']}]")
            for backend, variant in comp.get("variants", {}).items():
                v = info["files"].get(variant["file"], {"bytes": 0, "status": "not listed"})
                echo(f"    {backend} variant: {variant['file']} {_mb(v['bytes'])} [{v['status']}]")
            echo(f"    in:  {'; '.join(_shape(s) for s in comp['inputs'])}")
            echo(f"    out: {'; '.join(_shape(s) for s in comp['outputs'])}")
    bad = {n: f["status"] for n, f in info["files"].items() if f["status"] != "ok"}
    echo(f"files    {len(info['files'])} listed, " + ("all checksums ok" if not bad else f"PROBLEMS: {bad}"))
    echo("source   " + ", ".join(f"{k} {v}" for k, v in prov.items() if k != "checkpoint_sha256")
         + f", checkpoint sha256 {str(prov.get('checkpoint_sha256', '?'))[:16]}")
    if "trt" in info:
        problems = {f: p for f, p in info["trt"]["files"].items() if p}
        echo(f"TensorRT {info['trt']['version']} parser tables: " + ("every node parses" if not problems else "PROBLEMS"))
        for file, items in problems.items():
            for p in items:
                echo(f"  {file}: {p}")


def inspect(
    bundle: Path = typer.Argument(None, metavar="[BUNDLE]", help="Bundle folder (default: the shipped bundle)."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output (includes the bundle's path)."),
    trt: str = typer.Option(None, "--trt", metavar="VERSION", help="Check every node against the TensorRT parser tables: 10.3 or 11."),
) -> None:
    """Show a bundle's components, I/O, precisions, sizes, provenance and checksum status."""
    from edgegen.bundle import default_bundle_path

    info = describe(default_bundle_path() if bundle is None else bundle, trt)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
    else:
        _print(info)
    bad = [n for n, f in info["files"].items() if f["status"] != "ok"]
    if bad:
        raise UserError(f"{len(bad)} file(s) do not match the manifest: {', '.join(bad)}; re-export the bundle")
    if trt is not None:
        failing = [f for f, p in info["trt"]["files"].items() if p]
        if failing:
            raise UserError(f"TensorRT {info['trt']['version']} would not parse {', '.join(failing)} (problems listed above)")


def register(app: typer.Typer) -> None:
    """Add `export` and `inspect` to the root app."""
    app.command()(export)
    app.command()(inspect)
