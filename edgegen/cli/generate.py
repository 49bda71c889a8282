"""`edgegen generate PROMPT --out clip.mp4`: stream a clip from a bundle into a video file.

Everything a user can get wrong is checked before any generating: the flags, the output path
(exists without --force, folder missing, not writable), the bundle (schema, checksums), the
backend, the prompt. Frames go into the writer as each chunk is decoded; the writer is atomic, so
an interrupted run leaves no half-written file behind.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import typer

from edgegen.errors import UserError

log = logging.getLogger(__name__)

MAX_FRAMES = 100_000  # ~70 minutes at 24 fps: far beyond any sane request, well within fixed memory
MAX_SEED = 2**63 - 1
PRECISIONS = ("fp32", "fp16", "int8", "fp8")


def validate_args(frames: int, seed: int, backend: str, precision: str | None, threads: int | None = None) -> None:
    """Flag checks that need no bundle; one-line UserErrors listing what is valid."""
    from edgegen.runtime import backends

    if not 1 <= frames <= MAX_FRAMES:
        raise UserError(f"--frames {frames} is out of range; use 1 to {MAX_FRAMES}")
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"--seed {seed} is out of range; use 0 to {MAX_SEED}")
    if backend != backends.AUTO and backend not in backends.names():
        raise UserError(f"unknown --backend {backend!r}; valid: {backends.AUTO}, {', '.join(backends.names())}")
    if precision is not None and precision not in PRECISIONS:
        raise UserError(f"unknown --precision {precision!r}; valid: {', '.join(PRECISIONS)}")
    if threads is not None and threads < 1:
        raise UserError(f"--threads {threads} is out of range; use 1 or more, or leave it out to let ort-cpu measure")


class _Progress:
    """tqdm bar on stderr (frames, fps, ETA), only when stderr is a terminal."""

    def __init__(self, frames: int) -> None:
        self.bar = None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=frames, unit="frame", desc="generating", file=sys.stderr, leave=False, dynamic_ncols=True)

    def on_chunk(self, event: object) -> None:
        if self.bar is not None:
            self.bar.update(event.frames)  # type: ignore[attr-defined]

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Timing:
    def __init__(self) -> None:
        self.first_frame: float | None = None

    def on_chunk(self, event: object) -> None:
        if self.first_frame is None:
            self.first_frame = event.elapsed  # type: ignore[attr-defined]


# A prompt typed without quotes arrives as several arguments; the command takes the extras
# (instead of click's "unexpected extra arguments") so the error can say to quote it.
EXTRA_ARGS = {"allow_extra_args": True}


def one_prompt(prompt: str, extra: list[str], command: str) -> str:
    """The prompt, when it is one argument; extra arguments (words typed unquoted) are a one-line hint to quote it."""
    if not extra:
        return prompt
    from edgegen.video import SUFFIXES

    words = [prompt, *extra]
    paths = [w for w in words if "/" in w or Path(w).suffix.lower() in SUFFIXES]
    scene = " ".join(w for w in words if w not in paths)
    raise UserError(
        f"the prompt must be one argument, got {len(words)} ({', '.join(map(repr, words))}); quote it and name the "
        f'output with --out, e.g. edgegen {command} "{scene}" --out {paths[0] if paths else "clip.mp4"}'
    )


def generate(
    ctx: typer.Context,
    prompt: str = typer.Argument(..., help='What to show, in quotes, e.g. "a red circle moving right".'),
    out: str = typer.Option("clip.mp4", "--out", "-o", help="Video file (.mp4, .gif, .y4m), a folder for PNG frames, or - for y4m on stdout."),
    frames: int = typer.Option(48, "--frames", "-n", help="Number of frames (whole chunks are generated, the tail trimmed)."),
    steps: int = typer.Option(None, "--steps", "-s", help="Sampling steps per chunk (default: the bundle's; see `edgegen inspect`)."),
    seed: int = typer.Option(0, "--seed", help="Noise seed: same prompt + seed + backend + precision → same frames."),
    backend: str = typer.Option("auto", "--backend", "-b", help="auto, ort-cpu, ort-cuda, tensorrt, trt-rtx or torch."),
    precision: str = typer.Option(None, "--precision", "-p", help="fp32, fp16, int8 or fp8 (default: the fastest this backend runs well)."),
    bundle: Path = typer.Option(None, "--bundle", help="Bundle folder (default: the shipped model)."),
    fps: float = typer.Option(None, "--fps", help="Frame rate written to the file (default: the bundle's)."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite --out if it exists."),
    threads: int = typer.Option(None, "--threads", help="CPU threads per session (ort-cpu; default: 1 or all cores, measured per component at load)."),
) -> None:
    """Generate a clip from a text prompt, streaming frames into --out as they are made."""
    from edgegen import video
    from edgegen.runtime.generator import Generator
    from edgegen.world import parse_prompt

    prompt = one_prompt(prompt, ctx.args, "generate")
    validate_args(frames, seed, backend, precision, threads)
    if fps is not None:
        video.check_fps(out, fps)
    parse_prompt(prompt)  # cheap: a bad prompt fails before the bundle loads
    video.check_writable(out, force=force)
    gen = Generator.load(bundle, backend=backend, precision=precision, threads=threads)
    stream_steps = gen.check_steps(steps)
    timing, progress = _Timing(), _Progress(frames)
    stream = gen.stream(prompt, seed=seed, frames=frames, steps=stream_steps, hooks=[timing, progress])
    rate = fps or gen.bundle.fps
    start = time.perf_counter()
    try:
        with video.open_writer(out, rate, force=force) as writer:
            for frame in stream:
                writer.write(frame)
    finally:
        progress.close()
        stream.close()
    seconds = time.perf_counter() - start
    where = "stdout" if out == "-" else out
    log.info(
        "wrote %d frames to %s: backend %s, precision %s, %d steps, first frame %.0f ms, %.1f fps",
        frames, where, gen.backend, gen.precision, stream_steps, 1000 * (timing.first_frame or 0.0), frames / seconds,
    )


def register(app: typer.Typer) -> None:
    """Add `generate` to the root app."""
    app.command(no_args_is_help=True, context_settings=EXTRA_ARGS)(generate)
