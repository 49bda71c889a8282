"""`edgegen calibrate BUNDLE --precision int8|fp8`: a new bundle with a quantized precision.

The input bundle is only read; the output folder is written under a temporary name and renamed
at the end. The quality report (JSON + markdown) lands inside the new bundle.
"""

from __future__ import annotations

import logging
from pathlib import Path

import typer

from edgegen.errors import UserError, require_train_extra

log = logging.getLogger(__name__)


def calibrate(
    bundle_path: Path = typer.Argument(..., metavar="BUNDLE", help="An fp32 bundle folder (from `edgegen export`)."),
    precision: str = typer.Option("int8", "--precision", "-p", help="int8 (ORT CPU, TensorRT, Jetson) or fp8 (TensorRT on Ada/Hopper/Blackwell)."),
    samples: int = typer.Option(128, "--samples", "-n", min=1, help="Calibration inputs per component, spread over every step and chunk."),
    prompts: int = typer.Option(16, "--prompts", min=1, help="Training-split prompts streamed to capture the calibration inputs."),
    eval_prompts: int = typer.Option(8, "--eval-prompts", min=1, help="Held-out prompts captured for the per-component checks."),
    judge_prompts: int = typer.Option(200, "--judge-prompts", min=1, help="Held-out prompts for the end-to-end clips (PSNR vs fp32, judge accuracy; one flip = 100/n points)."),
    out: Path = typer.Option(None, "--out", "-o", help="Output bundle folder (default: BUNDLE-PRECISION beside BUNDLE)."),
    components: str = typer.Option("denoiser,vae_decoder", "--components", help="Comma list of components to quantize; the others stay fp32 (shared files)."),
    seed: int = typer.Option(0, "--seed", min=0, help="First seed of the capture streams."),
    cache_dir: Path = typer.Option(None, "--cache-dir", help="Where captured inputs are cached (default: $EDGEGEN_CACHE or ~/.cache/edgegen)/calibration."),
    no_e2e: bool = typer.Option(False, "--no-e2e", help="Skip the end-to-end clips and latency (component checks only)."),
    latency_rounds: int = typer.Option(15, "--latency-rounds", min=1, help="Interleaved timing rounds per component (each: 10 calls per precision)."),
    no_ort_variants: bool = typer.Option(False, "--no-ort-variants", help="Only the portable Q/DQ files (no ORT-CPU-only int8 files)."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
) -> None:
    """Quantize a bundle (Q/DQ, timestep-aware calibration, sensitivity-guided) and check it against fp32."""
    require_train_extra("calibrate", ("torch", "onnx", "safetensors"))
    from edgegen.calibration import PRECISIONS, Settings, calibrate_bundle, default_out
    from edgegen.calibration.report import one_line

    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision!r} is not supported; valid: {', '.join(PRECISIONS)}")
    chosen = tuple(c.strip() for c in components.split(",") if c.strip())
    if not chosen:
        raise UserError("--components is empty; name the components to quantize, e.g. --components denoiser,vae_decoder")
    settings = Settings(
        precision=precision, samples=samples, prompts=prompts, eval_prompts=eval_prompts, judge_prompts=judge_prompts, seed=seed,
        components=chosen, cache_dir=cache_dir,
        force=force, check_e2e=not no_e2e, latency_rounds=latency_rounds, ort_variants=not no_ort_variants,
    )
    report = calibrate_bundle(bundle_path, out, settings)
    target = out if out is not None else default_out(bundle_path, precision)
    typer.echo(f"wrote {target} ({precision}, {report['seconds']:.0f} s): {one_line(report)}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("calibrate")(calibrate)
