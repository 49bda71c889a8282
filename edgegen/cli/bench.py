"""`edgegen bench`: per-component latency of every backend × precision, side by side.

The measuring lives in `edgegen.runtime.bench` (torch-free; each combination runs in its own
process; it returns the report as a dict following `REPORT_SCHEMA`). This module is the
presentation: flags, the output paths checked before any work, the table on stdout, the JSON
report and the PNG chart written atomically.
"""

from __future__ import annotations

import io
import json
import logging
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional

import typer

from edgegen.errors import UserError
from edgegen.files import atomic_write_bytes

log = logging.getLogger(__name__)

CHART_COMPONENTS = ("denoise_step", "commit", "vae_decode")
MAX_FRAMES = 10_000  # per timed clip: each combination generates (warmup + repeat) such clips
THREADS_PER_CPU = 4  # --threads above this many per CPU only oversubscribes the machine
CHART_SUFFIX = ".png"


class NothingRan(UserError):
    """Every requested combination failed: the table says why; exit 1 (2 stays for bad input)."""

    exit_code = 1


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
    frames: int = typer.Option(64, "--frames", help=f"Frames per timed generation, 1 to {MAX_FRAMES}."),
    repeat: int = typer.Option(5, "--repeat", help="Timed generations per combination."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed warm-up generations per combination."),
    prompt: str = typer.Option("a red circle moving right", "--prompt", help="Prompt to generate."),
    threads: Optional[int] = typer.Option(None, "--threads", help=f"CPU threads for every backend, 1 to {THREADS_PER_CPU}x the CPU count (default: each backend's own; ort-cpu: 1 or all cores, measured per component at load; torch: its default)."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the full report as JSON here."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG chart (p50 bars, p90 whiskers) here; the name must end in .png."),
    force: bool = typer.Option(False, "--force", help="Overwrite existing --json / --plot files."),
) -> None:
    """Benchmark per-step, commit, decode and end-to-end latency against the torch fp32 baseline."""
    from edgegen.bundle import default_bundle_path, load_bundle
    from edgegen.runtime import bench as rb

    if json_path is not None and plot is not None and json_path.resolve() == plot.resolve():
        raise UserError(f"--json and --plot both name {json_path}; give each its own file")
    check_flags(frames, threads, plot, prompt)
    for path in (json_path, plot):
        if path is not None:
            check_output_path(path, force)
    backends, precisions = _split(backend), _split(precision)
    bundle_path = bundle if bundle is not None else default_bundle_path()
    loaded = load_bundle(bundle_path)
    loaded.tokenizer().encode(prompt)  # more words than this bundle reads: PromptError now, not failed rows later
    check_something_runs(rb.plan(loaded, backends, precisions), backends, precisions)
    settings = rb.Settings(
        bundle=str(bundle_path),
        backends=backends,
        precisions=precisions,
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
    sys.stdout.write(format_table(report))
    if json_path is not None:
        log.info("wrote %s", write_atomic(json_path, report_json(report), force))
    if plot is not None:
        log.info("wrote %s", write_atomic(plot, draw_chart(report), force))
    check_requested_ran(report["results"], backends, precisions)


# ---------------------------------------------------------------------------------------------
# Checks before and after measuring


def check_flags(frames: int, threads: Optional[int], plot: Optional[Path], prompt: str) -> None:
    """Flag checks that need no bundle; one-line UserErrors saying what is valid."""
    from edgegen.world import parse_prompt

    if not 1 <= frames <= MAX_FRAMES:
        raise UserError(f"--frames {frames} is out of range; use 1 to {MAX_FRAMES}")
    if threads is not None:
        most = THREADS_PER_CPU * (os.cpu_count() or 1)
        if threads < 1:
            raise UserError(f"--threads must be at least 1, not {threads}")
        if threads > most:
            raise UserError(f"--threads {threads} is more than {THREADS_PER_CPU}x this machine's {os.cpu_count() or 1} CPUs; use 1 to {most}")
    if plot is not None and plot.suffix.lower() != CHART_SUFFIX:
        raise UserError(f"--plot {plot}: the chart is a PNG image; name a file ending in {CHART_SUFFIX}")
    parse_prompt(prompt)  # empty, unknown word, ...: a PromptError before any worker starts


def _requested(backend: str, precision: str, backends: Optional[Sequence[str]], precisions: Optional[Sequence[str]]) -> bool:
    """Whether the user asked for this combination (the torch fp32 baseline runs either way)."""
    return (backends is None or backend in backends) and (precisions is None or precision in precisions)


def check_something_runs(combos: Sequence[Any], backends: Optional[Sequence[str]], precisions: Optional[Sequence[str]]) -> None:
    """Refuse up front when no requested combination can run here, saying why for each."""
    wanted = [c for c in combos if _requested(c.backend, c.precision, backends, precisions)]
    if wanted and all(c.skip is not None for c in wanted):
        why = _not_run_lines([{"status": "cannot run", "backend": c.backend, "precision": c.precision, "reason": c.skip} for c in wanted])
        raise UserError("nothing to benchmark: " + "; ".join(why))


def check_requested_ran(results: Sequence[Mapping[str, Any]], backends: Optional[Sequence[str]], precisions: Optional[Sequence[str]]) -> None:
    """Exit 1 when every requested combination failed (the table above lists the reasons)."""
    wanted = [r for r in results if _requested(r["backend"], r["precision"], backends, precisions)]
    if wanted and not any(r["status"] == "ok" for r in wanted):
        raise NothingRan(f"none of the {len(wanted)} requested combinations ran; the reasons are listed above")


# ---------------------------------------------------------------------------------------------
# The table, the chart, the files


def format_table(report: Mapping[str, Any]) -> str:
    """The report as text: one block per combination, then the skipped and failed ones with reasons."""
    s, b, m = report["settings"], report["bundle"], report["machine"]
    lines = [
        f"edgegen bench: bundle {b['model']} ({b['video']['width']}x{b['video']['height']} @ {b['video']['fps']} fps), "
        f"{s['steps']} steps, {s['frames']} frames, {s['repeat']} timed + {s['warmup']} warm-up clips per combination, "
        + (f"{s['threads']} CPU threads each" if s["threads"] else "each backend's default CPU threads"),
        "machine: " + _machine_line(m),
        "",
        "wall-clock ms per call; cpu = process CPU ms per call (all threads); speed-ups are torch fp32 eager / this",
        f"{'backend':<10} {'prec':<5} {'per call':<13} {'n':>5} {'p50 ms':>9} {'p90':>9} {'p95':>9} {'p99':>9} {'mean':>9} {'cpu p50':>9}"
        f"  {'speed-up p50 (p95)':<18} {'cpu':>6}",
    ]
    for r in report["results"]:
        if r["status"] == "ok":
            lines += _result_rows(r, s["frames"])
    lines += _not_run_lines(report["results"])
    return "\n".join(lines) + "\n"


def _not_run_lines(results: Sequence[Mapping[str, Any]]) -> list[str]:
    """Skipped and failed combinations, one line per (status, backend, reason) with its precisions."""
    groups: dict[tuple[str, str, str], list[str]] = {}
    for r in results:
        if r["status"] != "ok":
            groups.setdefault((r["status"], r["backend"], r["reason"]), []).append(r["precision"])
    return [f"{status}: {backend} {', '.join(precs)}: {reason}" for (status, backend, reason), precs in groups.items()]


def _machine_line(m: Mapping[str, Any]) -> str:
    cpu = m["cpu"]
    gpu = f"{m['gpu']['name']} (driver {m['gpu']['driver']})" if m["gpu"] else "no GPU"
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    load = f", load {cpu['load_average'][0]:.1f}" if cpu["load_average"] else ""
    return f"{cpu['model']}, {cpu['physical_cores']} cores{load}; {gpu}; {libs}"


def _result_rows(r: Mapping[str, Any], frames: int) -> list[str]:
    rows = []
    for i, (name, stats) in enumerate(r["latency"].items()):  # in the order of rb.COMPONENTS
        head = f"{r['backend']:<10} {r['precision']:<5}" if i == 0 else " " * 16
        label = f"generate {frames}f" if name == "generate" else name
        if stats is None:
            rows.append(f"{head} {label:<13} {0:>5}  (none: too few chunks)")
            continue
        ratio, cpu_ratio = r["speedup"][name], r["cpu_speedup"].get(name)
        ratio_text = f"{ratio['p50']:.2f}x ({ratio['p95']:.2f}x)" if ratio else "-"
        cpu = r["cpu_latency"].get(name)
        values = "".join(f" {stats[k]:>9.3f}" for k in ("p50_ms", "p90_ms", "p95_ms", "p99_ms", "mean_ms"))
        values += f" {cpu['p50_ms']:>9.3f}" if cpu else f" {'-':>9}"
        rows.append(f"{head} {label:<13} {stats['n']:>5}{values}  {ratio_text:<18} {f'{cpu_ratio:.2f}x' if cpu_ratio else '-':>6}")
    t, mem, load = r["throughput"], r["memory"], r["load"]
    gpu = f", GPU +{mem['gpu']['peak_increase_bytes'] / 2**20:.0f} MiB" if mem["gpu"] else ""
    steady = f" (steady {t['steady_fps']:.1f})" if t["steady_fps"] else ""
    rows.append(
        f"{'':16} {t['fps']:.1f} fps{steady}, real-time factor {t['realtime_factor']:.2f}x; load {load['total_s']:.2f} s; "
        f"peak RSS {mem['peak_rss_bytes'] / 2**20:.0f} MiB (+{(mem['peak_rss_bytes'] - mem['rss_start_bytes']) / 2**20:.0f}){gpu}; "
        f"{r['threads'] or '?'} threads, {r['cpu']['utilization']:.2f} cores busy"
    )
    if r.get("thread_plans"):
        plans = ", ".join(f"{name} {plan}" for name, plan in r["thread_plans"].items())
        rows.append(f"{'':16} threads measured at load: {plans}")
    return rows


_COLOURS = {"denoise_step": (52, 101, 164), "commit": (78, 154, 6), "vae_decode": (204, 120, 0)}


def draw_chart(report: Mapping[str, Any]) -> bytes:
    """PNG bytes: per backend × precision, p50 latency bars with p90 whiskers for the denoising
    step, the commit pass and the VAE decode (one panel each, own scale)."""
    from PIL import Image, ImageDraw, ImageFont

    ok = [r for r in report["results"] if r["status"] == "ok"]
    font = ImageFont.load_default()
    label_w, bar_w, row_h, pad = 150, 420, 22, 10
    panel_h = 28 + row_h * max(1, len(ok))
    width, height = label_w + bar_w + 140, 40 + panel_h * len(CHART_COMPONENTS)
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    s = report["settings"]
    draw.text((pad, pad), f"edgegen bench: {report['bundle']['model']}, {s['steps']} steps - wall-clock ms per call, p50 bars, p90 whiskers", fill="black", font=font)
    top = 40
    for name in CHART_COMPONENTS:
        _panel(draw, font, ok, name, top, label_w, bar_w, row_h)
        top += panel_h
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _panel(draw: Any, font: Any, ok: Sequence[Mapping[str, Any]], name: str, top: int, label_w: int, bar_w: int, row_h: int) -> None:
    draw.text((10, top), f"{name} (per call)", fill="black", font=font)
    stats = [r["latency"][name] for r in ok]
    scale = max((st["p90_ms"] for st in stats if st), default=1.0) or 1.0
    x0 = label_w
    for i, (r, st) in enumerate(zip(ok, stats, strict=True)):
        y = top + 18 + i * row_h
        draw.text((10, y + 4), f"{r['backend']} {r['precision']}", fill="black", font=font)
        if st is None:
            draw.text((x0, y + 4), "no samples", fill="gray", font=font)
            continue
        p50 = x0 + bar_w * st["p50_ms"] / scale
        p90 = x0 + bar_w * st["p90_ms"] / scale
        draw.rectangle([x0, y + 3, max(p50, x0 + 1), y + row_h - 5], fill=_COLOURS[name])
        mid = y + row_h // 2 - 1
        draw.line([p50, mid, p90, mid], fill="black", width=1)
        draw.line([p90, y + 5, p90, y + row_h - 7], fill="black", width=1)
        speed = (r.get("speedup") or {}).get(name)
        note = f"{st['p50_ms']:.3g} ms" + (f"  {speed['p50']:.2f}x vs torch" if speed else "")
        draw.text((p90 + 6, y + 4), note, fill="black", font=font)


def check_output_path(path: str | os.PathLike[str], force: bool) -> Path:
    """Fail before benchmarking (one line) if a report cannot be written to `path`."""
    target = Path(path)
    if target.is_dir():
        raise UserError(f"{target} is a folder; name a file for the report")
    if target.exists() and not force:
        raise UserError(f"{target} exists; pass --force to overwrite")
    if not target.parent.is_dir():
        raise UserError(f"folder {target.parent} does not exist; create it or pick another path")
    if not os.access(target.parent, os.W_OK):
        raise UserError(f"cannot write to folder {target.parent}; pick another path")
    return target


def write_atomic(path: str | os.PathLike[str], data: bytes, force: bool) -> Path:
    """Write via a temporary file beside `path` and rename; an existing file needs `force`."""
    target = check_output_path(path, force)
    atomic_write_bytes(target, data)
    return target


def report_json(report: Mapping[str, Any]) -> bytes:
    return (json.dumps(report, indent=2) + "\n").encode()


def register(app: typer.Typer) -> None:
    """Add `edgegen bench` to the root app."""
    app.command("bench")(bench)
