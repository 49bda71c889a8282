"""`edgegen bench`: per-component latency of every backend × precision, side by side.

The measuring lives in `edgegen.runtime.bench` (torch-free; each combination runs in its own
process). This module parses flags, checks the output paths before any work, prints the table on
stdout and writes the JSON report and the PNG chart atomically.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Optional

import typer

log = logging.getLogger(__name__)


def _split(text: Optional[str]) -> Optional[list[str]]:
    """`a,b,c` → ["a", "b", "c"]; None or empty → None (everything)."""
    if not text:
        return None
    return [part.strip() for part in text.split(",") if part.strip()] or None


def _command(bundle: Optional[Path], backend: Optional[str], precision: Optional[str], steps: Optional[int],
             threads: Optional[int], frames: int, repeat: int, warmup: int, prompt: str) -> str:
    """The command that reproduces these measurements (output paths left out), for the report."""
    args = ["edgegen", "bench"]
    for flag, value in (("--bundle", bundle), ("--backend", backend), ("--precision", precision), ("--steps", steps), ("--threads", threads)):
        if value is not None:
            args += [flag, str(value)]
    args += ["--frames", str(frames), "--repeat", str(repeat), "--warmup", str(warmup), "--prompt", prompt]
    return shlex.join(args)


def bench(
    bundle: Optional[Path] = typer.Option(None, "--bundle", help="Bundle folder (default: the shipped one)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Comma-separated backends (default: all registered; unavailable ones are listed as skipped)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="Comma-separated precisions (default: all the bundle carries)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Denoising steps per chunk (default: the bundle's)."),
    frames: int = typer.Option(64, "--frames", help="Frames per timed generation."),
    repeat: int = typer.Option(5, "--repeat", help="Timed generations per combination."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed warm-up generations per combination."),
    prompt: str = typer.Option("a red circle moving right", "--prompt", help="Prompt to generate."),
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads for every backend (default: each backend's own; ort-cpu: physical cores, torch: its default)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the full report as JSON here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG chart (p50 bars, p90 whiskers) here."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing --json / --plot files."),
) -> None:
    """Benchmark per-step, commit, decode and end-to-end latency against the torch fp32 baseline."""
    from edgegen.bundle import default_bundle_path
    from edgegen.runtime import bench as rb

    for path in (json_path, plot):
        if path is not None:
            rb.check_output_path(path, force)
    settings = rb.Settings(
        bundle=str(bundle if bundle is not None else default_bundle_path()),
        backends=_split(backend),
        precisions=_split(precision),
        steps=steps,
        frames=frames,
        repeat=repeat,
        warmup=warmup,
        prompt=prompt,
        threads=threads,
        progress=sys.stderr.isatty(),
        command=_command(bundle, backend, precision, steps, threads, frames, repeat, warmup, prompt),
    )
    report = rb.run_benchmark(settings)
    sys.stdout.write(rb.format_table(report))
    if json_path is not None:
        log.info("wrote %s", rb.write_atomic(json_path, rb.report_json(report), force))
    if plot is not None:
        log.info("wrote %s", rb.write_atomic(plot, rb.draw_chart(report), force))


def register(app: typer.Typer) -> None:
    """Add `edgegen bench` to the root app."""
    app.command("bench")(bench)
