"""`edgegen train vae|teacher|student`: train one stage of the model (torch; CPU or CUDA).

Stages build on each other: the teacher needs `<out>/vae/last.safetensors` (or `--vae`), the
student needs `<out>/teacher/last.safetensors` (or `--teacher`). `--minutes` bounds one
invocation's wall clock; `--resume` continues exactly where the last checkpoint left off. A stage
folder that already holds a run is never overwritten silently: pass `--resume` or `--force`.
`--steps` is where to stop; the learning-rate schedule always spans the config's `steps`.

    edgegen train vae     --config default --minutes 60 [--resume]   # -> runs/default/vae/
    edgegen train teacher --config default --minutes 120 [--resume]  # encodes runs/default/latents.npz once
    edgegen train student --config default --minutes 60 [--resume]  # rolls the teacher out once (student/pairs/)
"""

from __future__ import annotations

import logging
from enum import Enum
from pathlib import Path

import typer

from edgegen.errors import UserError, require_train_extra

log = logging.getLogger(__name__)


class Stage(str, Enum):
    vae = "vae"
    teacher = "teacher"
    student = "student"


def train(
    stage: Stage = typer.Argument(..., help="Which stage: vae, then teacher, then student."),
    config: str = typer.Option("default", "--config", "-c", help="Config name in edgegen/configs (default, tiny, large) or a .json path."),
    out: Path = typer.Option(None, "--out", "-o", help="Run folder (default runs/<config name>); the stage writes <out>/<stage>/."),
    resume: bool = typer.Option(False, "--resume", help="Continue from <out>/<stage>/last.safetensors."),
    force: bool = typer.Option(False, "--force", help="Start the stage over even if <out>/<stage>/ holds a run (its checkpoint is replaced at the first save, its log now)."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    steps: int = typer.Option(None, "--steps", min=1, help="Stop at this total step count (default: the config's horizon)."),
    minutes: float = typer.Option(None, "--minutes", min=0.0, help="Stop after this many minutes of wall clock (checkpoint saved)."),
    vae: Path = typer.Option(None, "--vae", help="Teacher stage: the VAE checkpoint (default <out>/vae/last.safetensors)."),
    teacher: Path = typer.Option(None, "--teacher", help="Student stage: the teacher checkpoint (default <out>/teacher/last.safetensors)."),
    init: Path = typer.Option(None, "--init", help="Teacher stage: warm start the text encoder and DiT (and the VAE) from this checkpoint's weights; student stage: start the student from a trained student's (e.g. to fine-tune the shipped one); VAE stage: warm start the VAE (e.g. to fine-tune its decoder); a fresh optimizer either way."),
    threads: int = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's choice)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar (logs still written)."),
) -> None:
    """Train one stage; checkpoints go to <out>/<stage>/last.safetensors, losses to log.jsonl."""
    require_train_extra("training")
    import torch

    from edgegen.model.config import load_config
    from edgegen.model.train import Run, train_stage

    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"unknown device {device!r}; use cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda but torch sees no CUDA GPU; use --device cpu")
    if threads:
        torch.set_num_threads(threads)
    cfg, tcfg = load_config(config)
    out = out or Path("runs") / Path(config).stem
    run = Run(out=out, device=device, steps=steps, minutes=minutes, resume=resume, force=force,
              progress=not no_progress, vae=vae, teacher=teacher, init=init)
    path = train_stage(stage.value, cfg, tcfg, run)
    log.info("wrote %s", path)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("train", no_args_is_help=True)(train)
