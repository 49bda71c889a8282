"""Training CLI and loop on the tiny config: runs end to end, resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from edgegen.errors import UserError
from edgegen.model.checkpoint import load_checkpoint
from edgegen.model.config import load_config
from edgegen.model.train import Run, train_stage


def _weights(path: Path) -> dict[str, torch.Tensor]:
    ck = load_checkpoint(path)
    return {f"{g}.{m}.{k}": v for g, states in (("model", ck.model), ("ema", ck.ema)) for m, sd in states.items() for k, v in sd.items()}


def _assert_same(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def tiny() -> tuple:
    return load_config("tiny")


def _run(out: Path, stage: str, cfg_tcfg: tuple, steps: int, resume: bool = False) -> Path:
    cfg, tcfg = cfg_tcfg
    return train_stage(stage, cfg, tcfg, Run(out=out, steps=steps, resume=resume, progress=False))


def test_vae_resume_is_exact(tmp_path: Path, tiny: tuple) -> None:
    full = _run(tmp_path / "a", "vae", tiny, 4)
    _run(tmp_path / "b", "vae", tiny, 2)
    split = _run(tmp_path / "b", "vae", tiny, 4, resume=True)
    _assert_same(full, split)
    ck = load_checkpoint(full)
    assert ck.kind == "vae" and ck.step == 4
    assert len(ck.config.latent_mean) == ck.config.latent_channels
    assert (tmp_path / "a" / "vae" / "log.jsonl").exists()


def test_cli_train_vae(tmp_path: Path) -> None:
    from edgegen.cli import main

    assert main(["train", "vae", "--config", "tiny", "--out", str(tmp_path), "--steps", "2", "--no-progress"]) == 0
    assert (tmp_path / "vae" / "last.safetensors").exists()
    assert main(["train", "vae", "--config", "nope", "--out", str(tmp_path)]) == 2


def test_teacher_resume_student_and_sampling(tmp_path: Path, tiny: tuple) -> None:
    cfg, tcfg = tiny
    vae = _run(tmp_path / "v", "vae", tiny, 2)
    full = train_stage("teacher", cfg, tcfg, Run(out=tmp_path / "a", steps=4, vae=vae, progress=False))
    train_stage("teacher", cfg, tcfg, Run(out=tmp_path / "b", steps=2, vae=vae, progress=False))
    split = train_stage("teacher", cfg, tcfg, Run(out=tmp_path / "b", steps=4, vae=vae, resume=True, progress=False))
    _assert_same(full, split)
    assert (tmp_path / "a" / "latents.npz").exists()

    student = train_stage("student", cfg, tcfg, Run(out=tmp_path / "a", steps=2, progress=False))
    ck = load_checkpoint(student)
    assert ck.kind == "student" and set(ck.model) == {"vae", "text", "dit"}
    assert len(list((tmp_path / "a" / "student" / "pairs").glob("*/train_*.npz"))) == 1

    from edgegen.model.pipeline import generate_video, load_model

    model = load_model(student)
    video = generate_video(model, "a red circle moving right", seed=3, frames=6)
    assert video.shape == (6, cfg.height, cfg.width, 3) and video.dtype.name == "uint8"
    again = generate_video(model, "a red circle moving right", seed=3, frames=6)
    assert (video == again).all()


def test_teacher_warm_starts_from_a_compact_checkpoint(tmp_path: Path, tiny: tuple) -> None:
    """`--init`: a shipped-form (fp16, EMA-only) teacher seeds a new run with a fresh optimizer."""
    from edgegen.model.checkpoint import ship_checkpoint
    from edgegen.model.train_dit import warm_start

    cfg, tcfg = tiny
    vae = _run(tmp_path / "v", "vae", tiny, 2)
    teacher = train_stage("teacher", cfg, tcfg, Run(out=tmp_path / "a", steps=2, vae=vae, progress=False))
    compact = ship_checkpoint(teacher, tmp_path / "teacher.fp16.safetensors")
    assert load_checkpoint(compact).optimizer is None
    again = train_stage("teacher", cfg, tcfg, Run(out=tmp_path / "b", steps=1, init=compact, progress=False))
    assert load_checkpoint(again).step == 1  # a new run from step 0, not a resume
    from edgegen.model.dit import DiT

    ck = load_checkpoint(compact)
    dit = DiT(ck.config)
    warm_start(compact, {"dit": dit})
    for name, value in ck.weights()["dit"].items():
        assert torch.equal(dit.state_dict()[name], value.float()), name
    with pytest.raises(UserError, match="--init"):
        warm_start(vae, {"text": torch.nn.Linear(1, 1)})
