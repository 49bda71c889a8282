"""Training stages: `vae`, then `teacher` (text encoder + DiT, rectified flow), then `student`.

Every stage runs the same loop (`fit`): AdamW with warmup + cosine decay over the config's step
horizon, an EMA of the weights, a JSONL loss log, periodic atomic checkpoints to
`<out>/<stage>/last.safetensors`, and a wall-clock budget (`--minutes`) so a stage can run for a
fixed time and be resumed later with exactly the same result as an uninterrupted run (model, EMA,
optimizer, step and both RNG states are restored).
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from edgegen.errors import Interrupted, UserError
from edgegen.model.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_weights,
    read_config,
    save_checkpoint,
)
from edgegen.model.config import ModelConfig, StageConfig, TrainConfig
from edgegen.model.data import heldout_clips, render_clips
from edgegen.model.vae import VAE, psnr

log = logging.getLogger(__name__)

STAGES = ("vae", "teacher", "student")


@dataclass
class Run:
    """Where and how long one stage runs (the CLI's flags)."""

    out: Path  # runs/NAME; the stage writes to out/<stage>/
    device: str = "cpu"
    steps: int | None = None  # stop at this total step (default: the config's horizon)
    minutes: float | None = None  # wall-clock budget of this invocation
    resume: bool = False
    force: bool = False  # start the stage over even if out/<stage>/ holds a run (its log is replaced)
    progress: bool = True
    vae: Path | None = None  # teacher: the VAE checkpoint (default out/vae/last.safetensors)
    teacher: Path | None = None  # student: the teacher checkpoint (default out/teacher/last.safetensors)
    init: Path | None = None  # teacher, student or VAE: warm start from these weights (a fresh optimizer, step 0)


def lr_at(step: int, s: StageConfig) -> float:
    """Linear warmup, then cosine decay to 10% over the config's horizon."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    p = min(1.0, (step - s.warmup) / max(1, s.steps - s.warmup))
    return s.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * p)))


def ema_decay(step: int, s: StageConfig) -> float:
    """0 (copy) during warmup, then (1 + n) / (10 + n) capped at `s.ema`: the average never reaches back
    into the fast early phase (a 0.999 EMA of a no-norm conv net 2000 steps in was 7 dB worse than the raw weights)."""
    n = step - s.warmup
    return 0.0 if n < 0 else min(s.ema, (1.0 + n) / (10.0 + n))


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    pe, pm = list(ema.parameters()), list(model.parameters())
    assert len(pe) == len(pm), "the EMA copy has other parameters than its model"
    torch._foreach_lerp_(pe, pm, 1.0 - decay)  # one fused pass on a GPU instead of a launch per tensor


StepFn = Callable[[np.random.Generator, int], tuple[torch.Tensor, dict[str, float], int]]


def fit(
    stage: str,
    cfg: ModelConfig,
    tcfg: TrainConfig,
    run: Run,
    trainable: dict[str, nn.Module],
    loss_fn: StepFn,
    frozen: dict[str, nn.Module] | None = None,
    before_save: Callable[[dict[str, nn.Module], int], tuple[ModelConfig, dict[str, Any]]] | None = None,
    extra: dict[str, Any] | None = None,
    lr_scale: dict[str, float] | None = None,
) -> Path:
    """The shared training loop. `loss_fn(rng, step) -> (loss, logs, clips)`; `before_save(ema, step)`
    may update the config (e.g. latent statistics) and return metrics for the log. `lr_scale` gives
    trainable modules their own learning-rate multiple and their own gradient clipping (e.g. a critic
    trained beside the model, as DMD's fake score); the log's grad_norm is the other modules'."""
    from tqdm import tqdm

    s: StageConfig = getattr(tcfg, stage)
    frozen = frozen or {}
    stage_dir = run.out / stage
    make_dir(stage_dir)
    last = stage_dir / "last.safetensors"
    lr_scale = lr_scale or {}
    assert set(lr_scale) <= set(trainable), "lr_scale names modules that are not trained"
    # (learning-rate multiple, parameters) per clipping set: the modules without a scale first, so a plain
    # run's optimizer groups are what they always were; then each scaled module on its own
    sets = [(1.0, [p for k, m in trainable.items() if k not in lr_scale for p in m.parameters() if p.requires_grad])]
    sets += [(scale, [p for p in trainable[k].parameters() if p.requires_grad]) for k, scale in lr_scale.items()]
    groups = []
    for scale, ps in sets:
        groups += [{"params": [p for p in ps if p.ndim >= 2], "weight_decay": s.weight_decay, "lr_scale": scale},
                   {"params": [p for p in ps if p.ndim < 2], "weight_decay": 0.0, "lr_scale": scale}]
    cuda = run.device.startswith("cuda")
    if cuda:  # TF32 matrix products (10-bit mantissa inputs, fp32 accumulation): the GPU's fast float32 path
        torch.set_float32_matmul_precision("high")
    opt = torch.optim.AdamW(groups, lr=s.lr, betas=(0.9, 0.99), fused=cuda or None)
    if tcfg.autocast == "bf16" and not cuda:
        log.info("autocast bf16 applies on a GPU only; training in fp32 on %s", run.device)
    autocast = torch.autocast(torch.device(run.device).type, dtype=torch.bfloat16, enabled=tcfg.autocast == "bf16" and cuda)
    ema = {k: copy.deepcopy(m).requires_grad_(False) for k, m in trainable.items()}
    rng = np.random.default_rng([tcfg.seed, STAGES.index(stage)])
    torch.manual_seed(tcfg.seed * 3 + STAGES.index(stage))
    step = 0
    if run.resume:
        if not last.exists():
            raise UserError(f"nothing to resume: {last} does not exist; run without --resume first")
        ck = load_checkpoint(last)
        if ck.kind != stage or ck.optimizer is None:
            raise UserError(f"{last} is a {ck.kind} checkpoint without optimizer state; cannot resume {stage}")
        other = f"the checkpoint in {stage_dir} was made with a different config; use another --out or the matching --config"
        for k, m in {**trainable, **frozen}.items():
            load_weights(m, ck.model.get(k), f"{other} [{k}]")
        for k, m in ema.items():
            load_weights(m, ck.ema.get(k), f"{other} [ema {k}]")
        try:
            opt.load_state_dict(ck.optimizer)
        except (ValueError, KeyError, RuntimeError):
            raise UserError(f"{other} (its optimizer state does not fit the weights this config trains)") from None
        if ck.rng_torch is not None:
            torch.set_rng_state(ck.rng_torch)
        if cuda and ck.rng_cuda is not None:
            torch.cuda.set_rng_state(ck.rng_cuda)
        if ck.rng_numpy is not None:
            rng.bit_generator.state = ck.rng_numpy
        step = ck.step
        cfg = ck.config
        log.info("resumed %s at step %d from %s", stage, step, last)
    else:
        (stage_dir / "log.jsonl").unlink(missing_ok=True)  # a new run (--force): the old run's log goes with it
    target = run.steps if run.steps is not None else s.steps
    state = {"cfg": cfg}

    def save() -> None:
        cfg_now, metrics = state["cfg"], {}
        if before_save is not None:
            for m in ema.values():
                m.eval()
            # evaluation must not shift the training RNG streams (the CPU's, and the GPU's when training there)
            with torch.random.fork_rng(devices=[torch.device(run.device).index or 0] if cuda else []):
                cfg_now, metrics = before_save(ema, step)
            state["cfg"] = cfg_now
        save_checkpoint(
            last, {**trainable, **frozen}, cfg_now, step, optimizer=opt, ema={**ema, **frozen}, kind=stage,
            train=tcfg.to_dict(), rng_numpy=rng, extra=extra,
        )
        if metrics:
            _log_line(stage_dir, {"step": step, **metrics})
            log.info("%s step %d: %s", stage, step, " ".join(f"{k}={v:.4g}" for k, v in metrics.items()))

    t0 = time.perf_counter()
    bar = tqdm(total=target, initial=step, desc=stage, disable=not run.progress, dynamic_ncols=True)
    window_clips, window_t = 0, time.perf_counter()
    try:
        for m in trainable.values():
            m.train()
        while step < target:
            if run.minutes is not None and time.perf_counter() - t0 > run.minutes * 60:
                log.info("time budget of %s min reached at step %d", run.minutes, step)
                break
            lr = lr_at(step, s)
            for g in opt.param_groups:
                g["lr"] = lr * g.get("lr_scale", 1.0)  # checkpoints from before lr_scale have none
            with autocast:
                loss, logs, clips = loss_fn(rng, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norms = [torch.nn.utils.clip_grad_norm_(ps, s.grad_clip) if s.grad_clip > 0 and ps else torch.tensor(0.0)
                     for _, ps in sets]
            gnorm = norms[0]
            opt.step()
            decay = ema_decay(step, s)
            for k, m in trainable.items():
                ema_update(ema[k], m, decay)
            step += 1
            window_clips += clips
            bar.update(1)
            if step % s.log_every == 0 or step == target:
                now = time.perf_counter()
                speed = window_clips / max(1e-9, now - window_t)
                window_clips, window_t = 0, now
                bar.set_postfix(loss=f"{loss.item():.4f}", clips_s=f"{speed:.1f}")
                _log_line(stage_dir, {"step": step, "loss": loss.item(), **logs, "grad_norm": float(gnorm),
                                      "lr": lr, "clips_per_s": speed, "elapsed_s": now - t0})
            if step % s.ckpt_every == 0 and step < target:
                save()
    except (KeyboardInterrupt, Interrupted):
        log.warning("interrupted at step %d; saving %s", step, last)
        save()
        raise
    finally:
        bar.close()
    save()
    return last


def make_dir(path: Path) -> None:
    """`mkdir -p path`, or one line saying why not and what to do."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UserError(f"cannot create the folder {path}: a file is in the way; pass another --out") from None
    except OSError as exc:
        raise UserError(f"cannot create the folder {path} ({exc.strerror}); pass an --out folder you can write to") from None


def check_out(stage: str, run: Run) -> None:
    """Before any work: the run folder can be written, and holds no run of `stage` unless resumed or forced."""
    for path in (run.out, *run.out.parents):
        if path.exists():
            if not path.is_dir():
                raise UserError(f"--out {run.out}: {path} is a file, not a folder; pass a folder for the run")
            if not os.access(path, os.W_OK | os.X_OK):
                raise UserError(f"cannot write to the folder {path} (permission denied); pass an --out folder you can write to")
            break
    stage_dir = run.out / stage
    if stage_dir.exists() and (not stage_dir.is_dir() or not os.access(stage_dir, os.W_OK | os.X_OK)):
        raise UserError(f"cannot write to {stage_dir}; pass an --out folder you can write to")
    if run.resume and run.force:
        raise UserError("--resume continues a run and --force starts it over: pass one of them")
    if run.resume and not (stage_dir / "last.safetensors").exists():
        raise UserError(f"nothing to resume: {stage_dir / 'last.safetensors'} does not exist; run without --resume first")
    held = [stage_dir / n for n in ("last.safetensors", "log.jsonl") if (stage_dir / n).exists()]
    if held and not run.resume and not run.force:
        raise UserError(f"{stage_dir} already holds a {stage} run; pass --resume to continue it or --force to start over")


# the config fields that decide the shapes of each stage's weights (a resumed run must match them)
GEOMETRY = ("height", "width", "chunk_frames", "latent_channels")
VAE_ARCH = (*GEOMETRY, "vae_enc_channels", "vae_enc_blocks", "vae_dec_channels", "vae_dec_blocks")
DIT_ARCH = ("max_len", "text_width", "text_depth", "text_heads", "patch", "dit_width", "dit_depth", "dit_heads",
            "mlp_ratio", "window")


def check_resume_config(last: Path, cfg: ModelConfig, fields: tuple[str, ...]) -> None:
    """Refuse early (before pools or rollouts are made) to resume a checkpoint made with another model config."""
    saved = read_config(last)
    differ = [f for f in fields if tuple(_listed(getattr(saved, f))) != tuple(_listed(getattr(cfg, f)))]
    if differ:
        f = differ[0]
        raise UserError(f"the checkpoint in {last.parent} was made with a different config ({f} {getattr(saved, f)} there, "
                        f"{getattr(cfg, f)} now); use another --out or the matching --config")


def _listed(value: Any) -> tuple[Any, ...]:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _log_line(stage_dir: Path, record: dict[str, Any]) -> None:
    with open(stage_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def _to(x: np.ndarray, device: str) -> torch.Tensor:
    return torch.from_numpy(x).to(device)


# ---------------------------------------------------------------------------------------- VAE


def vae_loss(vae: VAE, clips: torch.Tensor, tcfg: TrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    """L1 + L2 + edge (finite-difference) reconstruction, with a fixed relative latent noise; with
    `vae_motion`, plus the error of frame-to-frame changes (`vae_motion_loss`): a decoder that holds each
    chunk's 4 frames still and jumps at chunk boundaries pays for every moving edge. (L1 of it pulls an
    unsure decoder to no change at all, i.e. stiller chunks: measured; L2 to the expected change.)"""
    z = vae.encode_clip(clips)  # (B, T, C, h, w)
    std = z.detach().transpose(0, 2).flatten(1).std(1).view(1, 1, -1, 1, 1)  # per channel
    y = vae.decode_clip(z + tcfg.vae_latent_noise * std * torch.randn_like(z))  # (B, T*F, H, W, 3)
    err = y - clips
    l1, l2 = err.abs().mean(), err.pow(2).mean()
    edge = (err.diff(dim=2).abs().mean() + err.diff(dim=3).abs().mean()) * 0.5
    lat = z.pow(2).mean()
    loss = l1 + tcfg.vae_l2 * l2 + tcfg.vae_edge * edge + tcfg.vae_latent_l2 * lat
    logs = {"l1": l1.item(), "psnr": float(-10 * math.log10(max(l2.item(), 1e-10))), "latent_rms": lat.sqrt().item()}
    if tcfg.vae_motion > 0:
        d = err.diff(dim=1)  # = d(recon)/dt - d(clip)/dt
        if tcfg.vae_motion_loss not in ("l1", "l2"):
            raise UserError(f"unknown vae_motion_loss {tcfg.vae_motion_loss!r}; use l1 or l2")
        motion = d.abs().mean() if tcfg.vae_motion_loss == "l1" else d.pow(2).mean()
        loss = loss + tcfg.vae_motion * motion
        logs["motion"] = motion.item()
    return loss, logs


@torch.no_grad()
def latent_stats(vae: VAE, cfg: ModelConfig, tcfg: TrainConfig) -> tuple[list[float], list[float]]:
    """Per-channel mean/std of raw latents over a fixed set of training clips."""
    n = 2 * tcfg.eval_clips
    clips, _ = render_clips(np.random.default_rng([tcfg.seed, 99]), n, cfg, tcfg.clip_chunks * cfg.chunk_frames)
    device = next(vae.parameters()).device
    zs = [vae.encode_clip(_to(clips[i : i + 16], device).float() / 255.0) for i in range(0, n, 16)]
    z = torch.cat(zs).transpose(0, 2).flatten(1)  # (C, ...)
    return z.mean(1).tolist(), z.std(1).clamp_min(1e-4).tolist()


@torch.no_grad()
def eval_vae(vae: VAE, cfg: ModelConfig, tcfg: TrainConfig) -> float:
    """Mean PSNR (dB) of clamped reconstructions of fixed held-out clips, chunk-causal as at inference."""
    n = tcfg.eval_clips
    clips = heldout_clips(cfg, tcfg.clip_chunks * cfg.chunk_frames, n)
    device = next(vae.parameters()).device
    out = []
    for i in range(0, n, 16):
        x = _to(clips[i : i + 16], device).float() / 255.0
        out.append(psnr(vae.decode_clip(vae.encode_clip(x)).flatten(0, 1), x.flatten(0, 1)))
    return float(torch.stack(out).mean())


def train_vae(cfg: ModelConfig, tcfg: TrainConfig, run: Run) -> Path:
    torch.manual_seed(tcfg.seed)
    vae = VAE(cfg).to(run.device)
    if run.init is not None and not (run.resume and (run.out / "vae" / "last.safetensors").exists()):
        cfg = warm_start_vae(Path(run.init), vae, cfg)
    if tcfg.vae_freeze_encoder:
        if run.init is None:
            raise UserError("vae_freeze_encoder needs --init (a trained VAE whose encoder to keep)")
        vae.encoder.requires_grad_(False)
    frames = tcfg.clip_chunks * cfg.chunk_frames
    batch = tcfg.vae.batch // tcfg.clip_chunks  # the batch counts chunks; a clip has clip_chunks

    def loss_fn(rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float], int]:
        clips, _ = render_clips(rng, batch, cfg, frames)
        x = _to(clips, run.device).float() / 255.0  # (B, T*F, H, W, 3)
        loss, logs = vae_loss(vae, x, tcfg)
        return loss, logs, batch

    def before_save(ema: dict[str, nn.Module], step: int) -> tuple[ModelConfig, dict[str, Any]]:
        mean, std = latent_stats(ema["vae"], cfg, tcfg)
        metrics = {"heldout_psnr": eval_vae(ema["vae"], cfg, tcfg), "heldout_psnr_raw": eval_vae(vae, cfg, tcfg)}
        return replace(cfg, latent_mean=tuple(mean), latent_std=tuple(std)), metrics

    return fit("vae", cfg, tcfg, run, {"vae": vae}, loss_fn, before_save=before_save)


def vae_checkpoint(path: Path, cfg: ModelConfig) -> Checkpoint:
    """The checkpoint at `path`, if it holds a VAE (vae, teacher or student) for `cfg`'s geometry."""
    ck = load_checkpoint(path)
    if ck.kind not in ("vae", "teacher", "student") or "vae" not in ck.model:
        raise UserError(f"{path} holds no VAE (a {ck.kind} checkpoint); train one with 'edgegen train vae' and pass its checkpoint")
    mismatch = [f for f in ("height", "width", "chunk_frames", "latent_channels") if getattr(ck.config, f) != getattr(cfg, f)]
    if mismatch:
        raise UserError(f"the VAE in {path} was trained for another geometry ({', '.join(mismatch)} differ); use the matching config")
    return ck


def warm_start_vae(path: Path, vae: VAE, cfg: ModelConfig) -> ModelConfig:
    """Load the (EMA) VAE weights of any checkpoint that has a VAE into `vae`; `cfg` with its latent statistics."""
    ck = vae_checkpoint(path, cfg)
    load_weights(vae, {k: v.float() for k, v in ck.weights()["vae"].items()},
                 f"the --init checkpoint {path} was made with a different VAE config; pass one made with this --config")
    log.info("warm start from %s (%s step %d): vae", path, ck.kind, ck.step)
    return replace(cfg, latent_mean=ck.config.latent_mean, latent_std=ck.config.latent_std)


def train_stage(stage: str, cfg: ModelConfig, tcfg: TrainConfig, run: Run) -> Path:
    """Dispatch one stage by name (the CLI's entry)."""
    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    check_out(stage, run)
    last = run.out / stage / "last.safetensors"
    if run.resume and last.exists() and stage != "student":  # the student's shapes are its teacher's (distill checks)
        check_resume_config(last, cfg, VAE_ARCH if stage == "vae" else (*GEOMETRY, *DIT_ARCH))
    if stage == "vae":
        return train_vae(cfg, tcfg, run)
    if stage == "teacher":
        from edgegen.model.train_dit import train_teacher

        return train_teacher(cfg, tcfg, run)
    if stage == "student":
        from edgegen.model.distill import train_student

        return train_student(cfg, tcfg, run)
    raise UserError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
