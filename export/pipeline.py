"""`edgegen export`: torch components → a checked ONNX bundle, in cached stages.

Per component and precision: trace (fp32) or convert (fp16) → onnxslim → onnx.checker (full) →
TensorRT parser tables (10.3 and 11) → save; one log line each. Then parity on real inputs (each
component against torch on inputs captured from a streaming run; end to end, the ORT runtime's
clip against the torch reference pipeline's) and, only if every figure holds, `manifest.json`
(written last and atomically, so a folder with a manifest is a bundle that passed).

Stage cache: each ONNX file carries a stamp in its metadata (checkpoint sha256, component,
precision, opset, exporter, slim, torch/onnx versions); a file whose stamp matches is reused, so
re-running an export is cheap and idempotent. `force=True` redoes every stage.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from edgegen import __version__, sampling
from edgegen.bundle import (
    MANIFEST,
    SCHEMA_VERSION,
    Bundle,
    TensorSpec,
    bundle_from_manifest,
    component_json,
    file_record,
    sha256_file,
    write_manifest,
)
from edgegen.errors import UserError
from edgegen.export import fp16 as fp16_convert
from edgegen.export import onnx_export, parity
from edgegen.export.trt_check import check_trt, max_opset, trt_versions
from edgegen.model.torch_backend import TorchSession
from edgegen.runtime.backends.ort_cpu import OrtCpuBackend
from edgegen.runtime.generator import Generator
from edgegen.tokenizer import Tokenizer

log = logging.getLogger(__name__)

DEFAULT_OPSET = 20
EXPORT_PRECISIONS = ("fp32", "fp16")
# Quality gates (export fails below them).
FP32_MAX_REL_ERROR = 1e-4
FP32_MIN_PSNR = 40.0
FP16_MIN_PSNR = 35.0
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class ComponentSource:
    """One torch component with its I/O contract and a sample input (batch dim first)."""

    module: torch.nn.Module
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    sample: tuple[torch.Tensor, ...]


@dataclass(frozen=True)
class ExportSource:
    """Everything the exporter needs from a trained model; see `edgegen.export.source`."""

    name: str
    config: Mapping[str, Any]  # ModelConfig as JSON, stored in the manifest
    components: Mapping[str, ComponentSource]
    tokenizer: Tokenizer
    checkpoint_sha256: str
    video: Mapping[str, int]  # height, width, chunk_frames, fps
    latent: Mapping[str, int]  # channels, height, width
    cache: Mapping[str, int]  # slots, tokens_per_slot
    steps: tuple[int, ...]  # step counts with a stored schedule
    default_steps: int
    shift: float
    t_ctx: float
    t_ctx_from: int
    prompts: tuple[str, ...]  # real prompts for the parity run
    # (prompt, seed, frames, steps) -> uint8 clip from an independent torch reference pipeline;
    # None: the torch components driven by the runtime's own loop are the reference.
    reference: Callable[[str, int, int, int], np.ndarray] | None = None


@dataclass
class ExportReport:
    path: Path
    files: dict[str, str] = field(default_factory=dict)  # "fp32/denoiser" -> "exported" | "cached"
    rel_errors: dict[str, dict[str, float]] = field(default_factory=dict)  # precision -> component -> error
    psnr: dict[str, float] = field(default_factory=dict)  # precision -> dB vs its reference
    loop_psnr: float | None = None  # torch components in the runtime loop vs the reference pipeline
    seconds: float = 0.0

    def summary(self) -> str:
        parts = []
        for precision, errors in self.rel_errors.items():
            worst = max(errors.values()) if errors else 0.0
            parts.append(f"{precision}: max rel err {worst:.1e}, PSNR {_db(self.psnr.get(precision, math.nan))}")
        return f"bundle {self.path}: " + "; ".join(parts) + f" ({self.seconds:.0f}s)"


def _db(value: float) -> str:
    return "inf dB (identical)" if math.isinf(value) else f"{value:.1f} dB"


def _stamp(source: ExportSource, component: str, precision: str, opset: int, slim: bool) -> dict[str, Any]:
    return {
        "checkpoint_sha256": source.checkpoint_sha256,
        "component": component,
        "precision": precision,
        "opset": opset,
        "exporter": onnx_export.EXPORTER,
        "slim": slim,
        "fp32_ops": list(fp16_convert.FP32_OPS) if precision == "fp16" else [],
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "edgegen": __version__,
    }


def file_name(component: str, precision: str) -> str:
    return f"{component}.onnx" if precision == "fp32" else f"{component}.{precision}.onnx"


def export_bundle(
    source: ExportSource,
    out: str | Path,
    *,
    precisions: Sequence[str] = ("fp32",),
    opset: int = DEFAULT_OPSET,
    slim: bool = True,
    force: bool = False,
    parity_frames: int | None = None,
    seed: int = 0,
) -> ExportReport:
    """Export `source` to the bundle folder `out`; raises UserError if any check fails."""
    with _torch_threads(1):
        return _export_bundle(source, Path(out), precisions, opset, slim, force, parity_frames, seed)


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """torch on one thread while exporting: the models are small, and with more threads OpenMP's
    busy-waiting collapses on a busy machine (tiny denoiser, 2 loaded cores: 248 ms → 10 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _export_bundle(source: ExportSource, out: Path, precisions: Sequence[str], opset: int, slim: bool,
                   force: bool, parity_frames: int | None, seed: int) -> ExportReport:
    start = time.perf_counter()
    wanted = _check_settings(precisions, opset)
    wanted = _keep_earlier_precisions(out, source, wanted, force)
    _prepare_folder(out, force)
    report = ExportReport(path=out)
    versions = _trt_versions_for(opset)
    for precision in wanted:
        for name, comp in source.components.items():
            report.files[f"{precision}/{name}"] = _export_file(source, name, comp, precision, out, opset, slim, force, versions)
    source.tokenizer.save(out / TOKENIZER_FILE)
    manifest = _manifest(source, out, wanted, opset)
    bundle = bundle_from_manifest(out, manifest)
    # Enough chunks to fill the KV cache and roll it once: every cache state the runtime meets.
    frames = parity_frames or bundle.chunk_frames * (int(bundle.manifest["cache"]["slots"]) + 2)
    _check_parity(source, bundle, report, wanted, frames, seed)
    write_manifest(out, manifest)
    report.seconds = time.perf_counter() - start
    log.debug("%s", report.summary())  # the CLI prints it as its result; said once
    return report


def _check_settings(precisions: Sequence[str], opset: int) -> list[str]:
    unknown = [p for p in precisions if p not in EXPORT_PRECISIONS]
    if unknown:
        raise UserError(f"cannot export precision {unknown[0]!r}; valid: {', '.join(EXPORT_PRECISIONS)} (int8/fp8 come from `edgegen calibrate`)")
    if not 18 <= opset <= 24:
        raise UserError(f"opset {opset} is not supported; use 18-24 (default {DEFAULT_OPSET}, the highest TensorRT 10.3 parses)")
    if opset > DEFAULT_OPSET:
        log.warning("opset %d: TensorRT 10.3 (JetPack 6) cannot parse opsets above %d", opset, DEFAULT_OPSET)
    # fp32 is always exported: it is the parity reference for fp16 and the input of calibration.
    return ["fp32", *(p for p in EXPORT_PRECISIONS if p in precisions and p != "fp32")]


def _trt_versions_for(opset: int) -> list[str]:
    versions = [v for v in trt_versions() if max_opset(v) >= opset]
    skipped = [v for v in trt_versions() if v not in versions]
    if skipped:
        log.warning("opset %d: TensorRT %s cannot parse it (max opset %s); checking %s only",
                    opset, ", ".join(skipped), ", ".join(str(max_opset(v)) for v in skipped), ", ".join(versions))
    return versions


def _earlier_manifest(out: Path) -> dict[str, Any] | None:
    """The manifest of a bundle already in `out`, or None (no bundle, or one too broken to read)."""
    try:
        return json.loads((out / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _keep_earlier_precisions(out: Path, source: ExportSource, wanted: list[str], force: bool) -> list[str]:
    """An export over a bundle of the same checkpoint keeps its exported precisions (so the
    manifest keeps listing the files left in the folder); over another checkpoint's bundle it
    stops unless --force, since that would replace the user's bundle; over a calibrated bundle it
    stops (the user's calibrated precision would be lost)."""
    earlier = _earlier_manifest(out)
    if earlier is None:
        return wanted
    calibrated = [p for p in earlier.get("precisions", {}) if p not in EXPORT_PRECISIONS]
    if calibrated:  # its quantized files were calibrated from the fp32 files an export would rewrite
        raise UserError(f"--out {out} holds a calibrated bundle ({', '.join(calibrated)}), which an export would not keep; "
                        "export to a new folder, then `edgegen calibrate` it")
    made_from = earlier.get("provenance", {}).get("checkpoint_sha256")
    if made_from != source.checkpoint_sha256:
        if not force:
            raise UserError(f"--out {out} holds a bundle of another checkpoint (sha256 {str(made_from)[:12]}); "
                            "choose a new folder, or pass --force to replace it")
        return wanted
    kept = [p for p in EXPORT_PRECISIONS if p in earlier.get("precisions", {}) and p not in wanted]
    if kept:
        log.info("keeping %s: the bundle in %s already has it (same checkpoint)", ", ".join(kept), out)
    return [p for p in EXPORT_PRECISIONS if p in wanted or p in kept]


def _prepare_folder(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file; pass a folder for the bundle")
    if out.is_dir():
        # A bundle folder (an earlier export) is reused; checkpoints may sit beside a bundle
        # (the shipped default: edgegen/assets/default/ holds both). Anything else is not ours.
        foreign = [p.name for p in out.iterdir() if not (p.name == MANIFEST or p.suffix in (".onnx", ".json", ".safetensors") or p.name.endswith(".partial"))]
        if foreign:
            raise UserError(f"--out {out} holds {foreign[0]!r}, which no bundle has; pick an empty or new folder")
    out.mkdir(parents=True, exist_ok=True)
    # The manifest goes last: while the export runs (or if it fails), the folder is not a bundle.
    (out / MANIFEST).unlink(missing_ok=True)


def _export_file(source: ExportSource, name: str, comp: ComponentSource, precision: str, out: Path,
                 opset: int, slim: bool, force: bool, versions: Sequence[str]) -> str:
    path = out / file_name(name, precision)
    stamp = _stamp(source, name, precision, opset, slim)
    if precision != "fp32":  # derived from the fp32 file: redo it whenever that file changes
        stamp["from_sha256"] = sha256_file(out / file_name(name, "fp32"))
    if not force and onnx_export.read_stamp(path) == stamp:
        log.info("%s %s: cached (%s, same checkpoint and settings)", name, precision, path.name)
        return "cached"
    t0 = time.perf_counter()
    if precision == "fp32":
        model = onnx_export.trace_to_onnx(comp.module, comp.inputs, comp.outputs, comp.sample, opset)
        how = f"traced with {onnx_export.EXPORTER}"
    else:
        model = fp16_convert.to_fp16(onnx.load(str(out / file_name(name, "fp32"))))
        how = "converted from fp32 (LayerNorm, Softmax, timestep embedding kept fp32)"
    if slim:
        model = onnx_export.slim(model)
    onnx_export.set_stamp(model, stamp)
    model.producer_name, model.producer_version = "edgegen", __version__
    for version in versions:
        problems = check_trt(model, version)
        if problems:
            raise UserError(f"{path.name}: TensorRT {version} would not parse it: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
    onnx_export.check_and_save(model, path)
    log.info("%s %s: %s, %d nodes, opset %d, %.2f MB, onnx.checker ok, TensorRT %s tables ok (%.1fs)",
             name, precision, how, len(model.graph.node), opset, path.stat().st_size / 1e6, "/".join(versions), time.perf_counter() - t0)
    return "exported"


def _manifest(source: ExportSource, out: Path, precisions: Sequence[str], opset: int) -> dict[str, Any]:
    steps = sorted(set(source.steps) | {source.default_steps})
    files = {TOKENIZER_FILE: file_record(out / TOKENIZER_FILE)}
    records = {}
    for precision in precisions:
        comps = {}
        for name, comp in source.components.items():
            fname = file_name(name, precision)
            files[fname] = file_record(out / fname)
            comps[name] = component_json(fname, comp.inputs, comp.outputs, opset)
        records[precision] = {"components": comps}
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": "edgegen.bundle",
        "model": {"name": source.name, "config": dict(source.config)},
        "video": dict(source.video),
        "latent": dict(source.latent),
        "cache": dict(source.cache),
        "sampler": {
            "type": "rectified-flow-euler",
            "default_steps": source.default_steps,
            "shift": source.shift,
            "schedules": {str(s): sampling.schedule(s, source.shift) for s in steps},
            "t_ctx": source.t_ctx,
            "t_ctx_from": source.t_ctx_from,
        },
        "tokenizer": {"file": TOKENIZER_FILE, "max_len": source.tokenizer.max_len},
        "precisions": records,
        "files": files,
        "provenance": {
            "checkpoint_sha256": source.checkpoint_sha256,
            "edgegen": __version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": _ort_version(),
            "exporter": onnx_export.EXPORTER,
            "opset": opset,
            "exported": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _check_parity(source: ExportSource, bundle: Bundle, report: ExportReport, precisions: Sequence[str], frames: int, seed: int) -> None:
    """Per-component relative error on captured real inputs and end-to-end PSNR; raise if below the gates."""
    t0 = time.perf_counter()
    tokenizer = source.tokenizer
    entries = {name: bundle.component("fp32", name) for name in source.components}
    torch_sessions = {name: TorchSession(source.components[name].module, entries[name].input_names, entries[name].output_names)
                      for name in entries}
    torch_gen = Generator(bundle=bundle, backend="torch", precision="fp32", tokenizer=tokenizer,
                          sessions={k: v for k, v in torch_sessions.items() if k != "vae_encoder"})
    steps = bundle.default_steps
    records, torch_clips = parity.capture(torch_gen, source.prompts, seed=seed, frames=frames, steps=steps)
    if "vae_encoder" in entries:
        records |= parity.encoder_records(torch_sessions["vae_encoder"], entries["vae_encoder"], torch_clips, bundle.chunk_frames)
    n_inputs = sum(len(v) for v in records.values())
    reference, against = torch_clips, "torch"
    if source.reference is not None:
        reference = {p: source.reference(p, seed, frames, steps) for p in source.prompts}
        report.loop_psnr = min(parity.psnr(torch_clips[p], reference[p]) for p in source.prompts)
        against = "the torch reference pipeline"
        log.info("runtime loop on torch components vs the torch reference pipeline: PSNR %s", _db(report.loop_psnr))
    backend = OrtCpuBackend()
    clips: dict[str, dict[str, np.ndarray]] = {}
    for precision in precisions:
        sessions = {name: backend.open(bundle, name, precision) for name in entries}
        report.rel_errors[precision] = parity.component_errors(records, sessions)
        ort_gen = Generator(bundle=bundle, backend=backend.name, precision=precision, tokenizer=tokenizer,
                            sessions={k: v for k, v in sessions.items() if k != "vae_encoder"})
        clips[precision] = {p: np.stack(list(ort_gen.stream(p, seed=seed, frames=frames, steps=steps))) for p in source.prompts}
        base = reference if precision == "fp32" else clips["fp32"]
        report.psnr[precision] = min(parity.psnr(clips[precision][p], base[p]) for p in source.prompts)
        errors = ", ".join(f"{k} {v:.1e}" for k, v in report.rel_errors[precision].items())
        log.info("parity %s (ORT CPU vs torch on %d captured inputs from %d prompts): max rel err %s; %d-frame clip PSNR vs %s %s",
                 precision, n_inputs, len(source.prompts), errors, frames, against if precision == "fp32" else "ORT fp32",
                 _db(report.psnr[precision]))
    fp32_worst = max(report.rel_errors["fp32"].items(), key=lambda kv: kv[1])
    if fp32_worst[1] > FP32_MAX_REL_ERROR:
        raise UserError(f"parity failed: {fp32_worst[0]} fp32 ONNX differs from torch by {fp32_worst[1]:.2e} relative (limit {FP32_MAX_REL_ERROR:.0e})")
    if report.psnr["fp32"] < FP32_MIN_PSNR:
        raise UserError(f"parity failed: fp32 clip PSNR vs {against} is {report.psnr['fp32']:.1f} dB (limit {FP32_MIN_PSNR:.0f} dB)")
    if "fp16" in report.psnr and report.psnr["fp16"] < FP16_MIN_PSNR:
        raise UserError(f"parity failed: fp16 clip PSNR vs fp32 is {report.psnr['fp16']:.1f} dB (limit {FP16_MIN_PSNR:.0f} dB)")
    log.info("parity ok (%.1fs)", time.perf_counter() - t0)
