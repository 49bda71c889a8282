"""`edgegen world render | prompts`: ground-truth clips and prompts from the procedural world."""

from __future__ import annotations

import logging

import typer

from edgegen.errors import UserError

log = logging.getLogger(__name__)

MAX_FRAMES = 100_000
MAX_PROMPTS = 1_000_000
MAX_SEED = 2**63 - 1  # the range `edgegen generate` accepts, so one seed works in both

world_app = typer.Typer(
    name="world",
    help="The procedural world the model learns: render ground-truth clips, list prompts.",
    no_args_is_help=True,
)


def check_frames(frames: int) -> None:
    if not 1 <= frames <= MAX_FRAMES:
        raise UserError(f"--frames {frames} is out of range; use 1 to {MAX_FRAMES}")


def check_size(size: int) -> None:
    if size < 8 or size % 8 or size > 2048:
        raise UserError(f"--size {size} is not supported; use a multiple of 8 from 8 to 2048")


def check_seed(seed: int, flag: str = "--seed") -> None:
    if not 0 <= seed <= MAX_SEED:
        raise UserError(f"{flag} {seed} is out of range; use 0 to {MAX_SEED}")


def check_split(split: str) -> None:
    """train, heldout, or all (the two alternating), as every command with --split takes."""
    from edgegen.world.scene import SPLITS

    if split not in (*SPLITS, "all"):
        raise UserError(f"unknown --split {split!r}; use one of: {', '.join(SPLITS)}, all")


@world_app.command("render", no_args_is_help=True, context_settings={"allow_extra_args": True})
def render_command(
    ctx: typer.Context,
    prompt: str = typer.Argument(..., help='A scene, in quotes, e.g. "a red circle moving right and a small blue star".'),
    out: str = typer.Option("clip.mp4", "--out", "-o", help="Video file (.mp4, .gif, .y4m), a folder for PNG frames, or - for y4m on stdout."),
    seed: int = typer.Option(0, "--seed", help="Picks placement, background and anything the prompt leaves out."),
    frames: int = typer.Option(48, "--frames", "-n", help="Number of frames (24 fps)."),
    size: int = typer.Option(64, "--size", help="Frame width and height in pixels (a multiple of 8)."),
    fps: float = typer.Option(24.0, "--fps", help="Frame rate written to the file (motion is always 24 fps)."),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite --out if it exists."),
) -> None:
    """Render the ground-truth clip of a prompt (deterministic in prompt + seed)."""
    from edgegen import video
    from edgegen.cli.generate import one_prompt
    from edgegen.world import parse_prompt
    from edgegen.world.renderer import render_chunks

    prompt = one_prompt(prompt, ctx.args, "world render")
    check_frames(frames)
    check_size(size)
    check_seed(seed)
    video.check_fps(out, fps)
    scene = parse_prompt(prompt)
    video.check_writable(out, force=force)
    with video.open_writer(out, fps, force=force) as writer:
        for chunk in render_chunks(scene, seed, frames, size):
            for frame in chunk:
                writer.write(frame)
    log.info("wrote %d frames (%dx%d) of %r to %s", frames, size, size, prompt, "stdout" if out == "-" else out)


@world_app.command("prompts")
def prompts_command(
    split: str = typer.Option("train", "--split", help="train, heldout (held-out colour/shape/motion combinations), or all (the two alternating)."),
    n: int = typer.Option(10, "--n", "-n", help="How many prompts."),
    seed: int = typer.Option(0, "--seed", help="Same split + n + seed = same list."),
) -> None:
    """Print random prompts of a split, one per line."""
    check_split(split)
    if not 1 <= n <= MAX_PROMPTS:
        raise UserError(f"--n {n} is out of range; use 1 to {MAX_PROMPTS}")
    from edgegen.world import prompts

    check_seed(seed)
    typer.echo("\n".join(prompts(split, n, seed=seed)))


def register(app: typer.Typer) -> None:
    """Add `world render` and `world prompts` to the root app."""
    app.add_typer(world_app, name="world")
