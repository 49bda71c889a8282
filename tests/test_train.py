"""Training CLI and loop on the tiny config: runs end to end, resumes exactly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

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
