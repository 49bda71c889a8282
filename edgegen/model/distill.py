"""Student stage: distil the guided 25-step teacher into a 1/2/4-step sampler with CFG folded in.

Method: knowledge distillation of the guided teacher's ODE coupling, i.e. reflow
(Liu et al. 2022, "Flow Straight and Fast"; Luhman & Luhman 2021, "Knowledge Distillation in
Iterative Generative Models"). The guided teacher is rolled out chunk by chunk from seeded noise
(its own clean outputs as context, as at inference) and the (noise, final latents, tokens)
triples are cached on disk in shards. The student, initialised from the teacher, then learns the
straight line between each noise and the teacher's output: at x_t = (1 - t) x0_T + t n it predicts
v = n - x0_T, at the times of the 1/2/4-step schedules (plus a fraction of uniform t), with the
teacher's clean latents as (noise-augmented) context. One forward per step: the guidance scale is
baked into the targets, so the student runs without the unconditional branch.

Two options (off by default) aim the distillation at where the student loses most: the first
chunk, made from the text alone (`distill_first_pairs` one-chunk teacher rollouts, cheap because
they have no context, `distill_first_batch` of them joining each step), and the objects
(`distill_fg_weight`: positions where the teacher's latents depart from their background weigh more,
as the teacher's `fg_weight`). A config whose DiT is deeper than the teacher's distils into a grown
copy of the teacher's DiT (`train_dit.grow_blocks`): a student with more capacity than its teacher.

`distill_dmd_batch` > 0 adds distribution matching distillation on the first chunk (DMD, Yin et al.
2024; DMD2, Yin et al. 2024b), where the student loses most of its teacher's score: the student samples
first chunks from fresh noise (one of its step times, the steps before it without gradient); each is
noised to a random t and denoised by the guided teacher (the real score) and by a copy of the teacher
trained online on the student's own samples (the fake score); the student's sample moves along the
difference of their clean estimates, fake minus real, normalised per sample. The reflow loss on the
cached pairs stays as DMD's regression term. The fake score is trained in the same step and kept in the
student's checkpoint (`FAKE`) so a run resumes exactly; it is dropped when the checkpoint ships.
`--init` starts the student from a trained student's weights (e.g. the shipped one) instead of the teacher's.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgegen.bundle import sha256_file
from edgegen.errors import UserError
from edgegen.model.checkpoint import load_checkpoint
from edgegen.model.components import build_components
from edgegen.model.config import ModelConfig, TrainConfig
from edgegen.model.data import tokenizer_for
from edgegen.model.dit import DiT
from edgegen.model.pipeline import Model, rollout, times_for
from edgegen.model.text import TextEncoder
from edgegen.model.train import DIT_ARCH, VAE_ARCH, Run, check_resume_config, fit
from edgegen.model.train_dit import (
    chunk_weighted,
    context,
    grow_blocks,
    object_weights,
    sample_t,
    velocity_loss,
    warm_start,
)
from edgegen.model.vae import VAE

log = logging.getLogger(__name__)

# The config numbers that shape a teacher rollout (besides its weights): taken from the current
# config, not the teacher's checkpoint, and part of the rollout cache's key.
TEACHER_SAMPLER = ("guidance", "teacher_steps", "shift", "t_ctx", "t_ctx_from")

SHARD = 64  # rollouts per shard file
FAKE = "fake_dit"  # the DMD fake score's module in a student checkpoint (training only, never shipped)


def load_teacher(path: Path) -> tuple[ModelConfig, dict[str, nn.Module]]:
    ck = load_checkpoint(path)
    if ck.kind != "teacher":
        raise UserError(f"{path} is a {ck.kind} checkpoint, not a teacher; run 'edgegen train teacher' or pass --teacher")
    modules: dict[str, nn.Module] = {"vae": VAE(ck.config), "text": TextEncoder(ck.config), "dit": DiT(ck.config)}
    for name, m in modules.items():
        m.load_state_dict({k: v.float() for k, v in ck.weights()[name].items()})
    return ck.config, modules


def _prompts(rng: np.random.Generator, cfg: ModelConfig, n: int, split: str) -> np.ndarray:
    """Tokens (n, L) of random scene captions of `split` (no rendering needed: only the text)."""
    from edgegen.world import caption, sample_scene

    tok = tokenizer_for(cfg)
    return np.stack([tok.encode(caption(sample_scene(rng, split), rng)) for _ in range(n)])


@torch.no_grad()
def teacher_pairs(teacher: Model, tcfg: TrainConfig, n: int, folder: Path, seed: int, split: str, progress: bool,
                  chunks: int | None = None) -> dict[str, np.ndarray]:
    """(noise, x0, tokens) of `n` guided teacher rollouts of `chunks` chunks (default: the config's clip),
    generated in shards on the teacher's device and cached in `folder`."""
    from tqdm import tqdm

    cfg, device = teacher.config, teacher.device
    folder.mkdir(parents=True, exist_ok=True)
    h, w = cfg.latent_size
    chunks = chunks or tcfg.clip_chunks
    name = split if chunks == tcfg.clip_chunks else f"{split}-{chunks}chunk"
    parts = []
    shards = range(-(-n // SHARD))
    for k in tqdm(shards, desc=f"teacher rollouts ({name})", disable=not progress, dynamic_ncols=True):
        path = folder / f"{name}_{k:05d}.npz"
        m = min(SHARD, n - k * SHARD)
        if path.exists():
            with np.load(path) as f:
                if len(f["tokens"]) == m:
                    parts.append(dict(f))
                    continue
        rng = np.random.default_rng([tcfg.seed, seed, k])
        tokens = _prompts(rng, cfg, m, split)
        shape = (m, chunks, cfg.latent_channels, h, w)
        noise = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32))
        commit = torch.from_numpy(rng.standard_normal(shape, dtype=np.float32)) if cfg.t_ctx else None
        x0 = rollout(teacher, torch.from_numpy(tokens).to(device), noise.to(device), cfg.teacher_steps, cfg.guidance,
                     None if commit is None else commit.to(device)).cpu()
        part = {"noise": noise.numpy().astype(np.float16), "x0": x0.numpy().astype(np.float16), "tokens": tokens}
        tmp = path.with_name(path.stem + ".partial.npz")
        np.savez(tmp, **part)
        tmp.replace(path)
        parts.append(part)
    return {k: np.concatenate([p[k] for p in parts]) for k in ("noise", "x0", "tokens")}


def distill_times(cfg: ModelConfig) -> np.ndarray:
    """The non-zero times the 1/2/4-step schedules evaluate the model at."""
    return np.unique([t for s in cfg.student_steps for t in times_for(cfg, s)[:-1]])


@torch.no_grad()
def student_gap(text: TextEncoder, dit: DiT, cfg: ModelConfig, val: dict[str, np.ndarray]) -> dict[str, float]:
    """MSE of the student's own S-step rollouts (its outputs as context) against the teacher's latents,
    over whole clips (`gap_Sstep`) and over their first chunk, made from the text alone (`first_Sstep`)."""
    model = Model(cfg, tokenizer_for(cfg), build_components(cfg, {"text": text, "dit": dit}), "student")
    device = model.device
    noise, x0 = (torch.from_numpy(val[k].astype(np.float32)).to(device) for k in ("noise", "x0"))
    tokens = torch.from_numpy(val["tokens"]).to(device)
    commit = torch.randn(noise.shape, generator=torch.Generator().manual_seed(0)).to(device) if cfg.t_ctx else None
    out = {}
    for s in cfg.student_steps:
        x = rollout(model, tokens, noise, s, 1.0, commit)
        out[f"gap_{s}step"] = float(F.mse_loss(x, x0))
        out[f"first_{s}step"] = float(F.mse_loss(x[:, 0], x0[:, 0]))
    return out


def _one_chunk(dit: DiT, x: torch.Tensor, t: torch.Tensor, txt: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
    """The velocity of first chunks x (B,C,h,w) at t (B,): no context, as chunk 0 of a stream."""
    return dit.forward_train(x[:, None], t[:, None], x[:, None], txt, pooled)[:, 0]


class FirstChunkDMD:
    """Distribution matching on first chunks (module docstring): the frozen guided teacher is the real
    score, `fake` (a trainable copy of the teacher's DiT, conditioned through the teacher's text encoder)
    the fake one."""

    def __init__(self, text: TextEncoder, dit: DiT, cfg: ModelConfig) -> None:
        self.text = text.eval().requires_grad_(False)
        self.real = dit.eval().requires_grad_(False)
        self.fake = copy.deepcopy(dit).train().requires_grad_(True)
        self.guidance = cfg.guidance
        self.times = times_for(cfg, cfg.default_steps)
        self.t_sampling = "logit_normal"
        self._uncond: tuple[torch.Tensor, torch.Tensor] | None = None  # the all-PAD prompt's features (frozen: once)

    def to_device(self, device: str) -> FirstChunkDMD:
        for m in (self.text, self.real, self.fake):
            m.to(device)
        return self

    @torch.no_grad()
    def _start(self, rng: np.random.Generator, dit: DiT, noise: torch.Tensor, txt: torch.Tensor,
               pooled: torch.Tensor) -> tuple[torch.Tensor, float]:
        """The student's first chunk at one of its step times (chosen at random), reached by its own
        Euler steps from `noise` without gradient -> (x at that time, the time)."""
        k = int(rng.integers(len(self.times) - 1))
        x = noise
        for t, t_next in zip(self.times[:k], self.times[1 : k + 1], strict=True):
            x = x + (t_next - t) * _one_chunk(dit, x, torch.full((len(x),), t, device=x.device), txt, pooled)
        return x, self.times[k]

    def losses(self, rng: np.random.Generator, text: TextEncoder, dit: DiT, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(distribution matching loss of the student's first chunks, the fake score's flow loss on them)."""
        m = len(tokens)
        h, w = dit.cfg.latent_size
        noise = torch.randn(m, dit.cfg.latent_channels, h, w, device=tokens.device)
        txt, pooled = text(tokens)
        x, t = self._start(rng, dit, noise, txt.detach(), pooled.detach())
        tk = torch.full((m,), t, device=x.device)
        x0 = x - t * _one_chunk(dit, x, tk, txt, pooled)  # the student's sample, with gradient
        with torch.no_grad():
            tau = 0.02 + 0.96 * torch.rand(m, device=x.device)
            tt = tau.view(m, 1, 1, 1)
            xt = (1 - tt) * x0 + tt * torch.randn_like(x0)
            cond_txt, cond_pooled = self.text(tokens)
            if self._uncond is None:
                self._uncond = self.text(torch.zeros_like(tokens[:1]))
            real_txt = torch.cat([cond_txt, self._uncond[0].expand_as(cond_txt)])
            real_pooled = torch.cat([cond_pooled, self._uncond[1].expand_as(cond_pooled)])
            v = _one_chunk(self.real, torch.cat([xt, xt]), torch.cat([tau, tau]), real_txt, real_pooled)
            v_real = v[m:] + self.guidance * (v[:m] - v[m:])
            v_fake = _one_chunk(self.fake, xt, tau, real_txt[:m], real_pooled[:m])
            real, fake = xt - tt * v_real, xt - tt * v_fake
            scale = (x0 - real).abs().mean(dim=(1, 2, 3), keepdim=True).clamp_min(1e-4)
            target = x0 - (fake - real) / scale
        loss_dm = 0.5 * F.mse_loss(x0, target)
        # the fake score follows the student's current samples (flow matching on them, no gradient to the student)
        clean = x0.detach()
        s = sample_t(None, (m,), self.t_sampling, clean.device).view(m, 1, 1, 1)
        n = torch.randn_like(clean)
        v = _one_chunk(self.fake, (1 - s) * clean + s * n, s.flatten(), real_txt[:m], real_pooled[:m])
        return loss_dm, F.mse_loss(v, n - clean)


def pairs_key(teacher_path: Path, cfg: ModelConfig, tcfg: TrainConfig) -> str:
    """Cache folder name for teacher rollouts: the teacher file's digest and every number that shapes them."""
    sampler = {f: getattr(cfg, f) for f in TEACHER_SAMPLER}
    if not sampler["t_ctx_from"]:  # the default: keys (and cached rollouts) from before the field stay valid
        del sampler["t_ctx_from"]
    sampler.update(seed=tcfg.seed, clip_chunks=tcfg.clip_chunks)
    text = sha256_file(teacher_path) + json.dumps(sampler, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def train_student(cfg: ModelConfig, tcfg: TrainConfig, run: Run) -> Path:
    teacher_path = Path(run.teacher or run.out / "teacher" / "last.safetensors")
    if not teacher_path.exists():
        raise UserError(f"no teacher at {teacher_path}; run 'edgegen train teacher --config {cfg.name}' first or pass --teacher PATH")
    tcfg_cfg, modules = load_teacher(teacher_path)
    # The student inherits the teacher's architecture, with a deeper DiT if the config asks for one (grown
    # from the teacher's: the new blocks start as identities); sampler numbers come from the current config.
    depth = max(cfg.dit_depth, tcfg_cfg.dit_depth)
    cfg = replace(tcfg_cfg, **{f: getattr(cfg, f) for f in ("student_steps", "default_steps", *TEACHER_SAMPLER)})
    student_cfg = replace(cfg, dit_depth=depth)
    last = run.out / "student" / "last.safetensors"
    if run.resume and last.exists():  # before the rollouts: the student's weights must be of the same shapes
        check_resume_config(last, student_cfg, (*VAE_ARCH, *DIT_ARCH))
    teacher = Model(cfg, tokenizer_for(cfg), build_components(cfg, {k: copy.deepcopy(m).to(run.device) for k, m in modules.items()}),
                    "teacher")
    dmd = (FirstChunkDMD(copy.deepcopy(modules["text"]), copy.deepcopy(modules["dit"]), cfg).to_device(run.device)
           if tcfg.distill_dmd_batch > 0 else None)
    # Rollouts are cached per teacher and sampler: pairs of another teacher or guidance are never reused.
    folder = run.out / "student" / "pairs" / pairs_key(teacher_path, cfg, tcfg)
    pairs = teacher_pairs(teacher, tcfg, tcfg.distill_pairs, folder, 3, "train", run.progress)
    first = (teacher_pairs(teacher, tcfg, tcfg.distill_first_pairs, folder, 5, "train", run.progress, chunks=1)
             if tcfg.distill_first_pairs else None)
    val = teacher_pairs(teacher, tcfg, tcfg.eval_clips, folder, 4, "heldout", False)
    del teacher
    cfg = student_cfg
    if depth > tcfg_cfg.dit_depth:
        torch.manual_seed(tcfg.seed + 2)
        grown = DiT(cfg)
        grown.load_state_dict(grow_blocks(modules["dit"].state_dict(), grown))
        modules["dit"] = grown
    text, dit, vae = modules["text"].to(run.device), modules["dit"].to(run.device), modules["vae"].to(run.device)
    vae.eval().requires_grad_(False)
    if run.init is not None and not (run.resume and last.exists()):  # a trained student's weights, not the teacher's
        warm_start(Path(run.init), {"text": text, "dit": dit})
    times = torch.tensor(distill_times(cfg), dtype=torch.float32)
    B = tcfg.student.batch

    def reflow_loss(rng: np.random.Generator, source: dict[str, np.ndarray], m: int) -> torch.Tensor:
        idx = rng.integers(len(source["tokens"]), size=m)
        n = torch.from_numpy(source["noise"][idx].astype(np.float32)).to(run.device)  # (m, T, C, h, w)
        x0 = torch.from_numpy(source["x0"][idx].astype(np.float32)).to(run.device)
        tokens = torch.from_numpy(source["tokens"][idx]).to(run.device)
        T = n.shape[1]
        t = times[torch.from_numpy(rng.integers(len(times), size=(m, T)))]
        uniform = torch.from_numpy(rng.random((m, T)) < tcfg.distill_random_t)
        t = torch.where(uniform, torch.from_numpy(rng.random((m, T)).astype(np.float32)), t).to(run.device)
        tt = t.view(m, T, 1, 1, 1)
        txt, pooled = text(tokens)
        ctx, label = context(x0, tcfg)
        v = dit.forward_train((1 - tt) * x0 + tt * n, t, ctx, txt, pooled, label)
        weights = object_weights(x0, tcfg.distill_fg_weight, tcfg.fg_threshold) if tcfg.distill_fg_weight > 0 else None
        return velocity_loss(v, n - x0, weights)

    def pair_loss(rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, float], int]:
        loss = reflow_loss(rng, pairs, B)
        if first is None:
            return loss, {}, B
        loss_first = reflow_loss(rng, first, tcfg.distill_first_batch)
        parts = [(loss, B * tcfg.clip_chunks), (loss_first, tcfg.distill_first_batch)]
        return chunk_weighted(parts), {"loss_first": loss_first.item()}, B + tcfg.distill_first_batch

    def loss_fn(rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float], int]:
        loss, logs, clips = pair_loss(rng)
        if dmd is None:
            return loss, logs, clips
        idx = rng.integers(len(pairs["tokens"]), size=tcfg.distill_dmd_batch)
        loss_dm, loss_fake = dmd.losses(rng, text, dit, torch.from_numpy(pairs["tokens"][idx]).to(run.device))
        logs.update(loss_dmd=loss_dm.item(), loss_fake=loss_fake.item())
        return loss + tcfg.distill_dmd_weight * loss_dm + loss_fake, logs, clips + tcfg.distill_dmd_batch

    def before_save(ema: dict[str, nn.Module], step: int) -> tuple[ModelConfig, dict[str, Any]]:
        return cfg, student_gap(ema["text"], ema["dit"], cfg, val)

    trainable, lr_scale = {"text": text, "dit": dit}, {}
    if dmd is not None:
        trainable[FAKE], lr_scale[FAKE] = dmd.fake, tcfg.distill_fake_lr_scale
    method = "reflow distillation of the guided teacher" + (" + distribution matching (DMD) on the first chunk" if dmd else "")
    return fit("student", cfg, tcfg, run, trainable, loss_fn, frozen={"vae": vae}, before_save=before_save,
               extra={"teacher": str(teacher_path), "method": method}, lr_scale=lr_scale)


