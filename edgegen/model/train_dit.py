"""Teacher stage: text encoder + block-causal DiT trained with rectified flow on cached VAE latents.

Rectified flow (Liu et al. 2022; Lipman et al. 2023): x_t = (1 - t) x0 + t noise, the model predicts
v = noise - x0, loss = MSE. t per chunk from a logit-normal (Esser et al. 2024, SD3) or uniform.
Every noisy chunk gets its own t (the chunks never attend to each other, only to clean context).
Context augmentation: with probability `ctx_noise_prob` a clip's clean stream is replaced by
(1 - s) x0 + s n, s ~ U(0, ctx_noise_max), still labelled t = t_ctx, so the model tolerates the
imperfect chunks it will be fed at rollout. With probability `self_ctx_prob` the clean stream is
instead the model's own one-step estimate of the clip (`own_estimate`): fainter, blurrier objects
where the model is unsure, like the chunks of its own rollout, while the target stays real
(exposure bias; cf. scheduled sampling, Bengio et al. 2015, and Self-Forcing, Huang et al. 2025,
which trains on full rollouts). With probability `ctx_fade_prob` the context's objects are faded
toward each chunk's background (`fade`). Late clips (`late_batch` per step) start later in their scenes, so
a stream's later phases (objects easing out at an edge, a full cache) are in the training data.
First chunks (`first_batch` per step): clips cut to their first chunk, which is generated from the
text alone and decides the scene, so it gets more of the signal for a quarter of a clip's cost.
With `ctx_noise_label` the commit pass is told each clip's context noise level (GameNGen-style noise
augmentation, Valevski et al. 2024), so levels high enough to hide a rollout's small errors can be
trained, and sampling noises each finished chunk to `t_ctx` before committing it.
With `fg_weight` the loss weighs the positions where the clean chunk departs from its background
(the objects, a small share of the picture, and a ring around them) more than the background.
Text dropout (all-PAD prompt) 10% for CFG (Ho & Salimans 2022).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from edgegen.errors import UserError
from edgegen.model.checkpoint import load_checkpoint, load_weights
from edgegen.model.config import ModelConfig, TrainConfig
from edgegen.model.data import LatentPool, pool_key, render_clips, render_workers, tokenizer_for
from edgegen.model.dit import DiT
from edgegen.model.text import TextEncoder
from edgegen.model.train import Run, eval_vae, fit, latent_stats, vae_checkpoint
from edgegen.model.vae import VAE

log = logging.getLogger(__name__)

VAE_FIELDS = ("height", "width", "chunk_frames", "latent_channels", "vae_enc_channels", "vae_enc_blocks",
              "vae_dec_channels", "vae_dec_blocks", "latent_mean", "latent_std")


def load_vae(path: Path, cfg: ModelConfig, tcfg: TrainConfig | None = None) -> tuple[VAE, ModelConfig]:
    """The trained VAE (EMA weights, frozen) and `cfg` with the VAE's geometry and latent statistics."""
    ck = vae_checkpoint(path, cfg)
    if not ck.config.latent_std:
        raise UserError(f"the VAE in {path} has no latent statistics; let 'edgegen train vae' save a checkpoint")
    cfg = replace(cfg, **{f: getattr(ck.config, f) for f in VAE_FIELDS})
    vae = VAE(cfg)
    vae.load_state_dict({k: v.float() for k, v in ck.weights()["vae"].items()})
    vae.eval().requires_grad_(False)
    if ck.kind == "vae" and tcfg is not None and "vae" in ck.ema:
        # A VAE stopped early can have an EMA that still lags the raw weights: keep the better one
        # (held-out PSNR) and recompute the latent statistics for it.
        raw = VAE(cfg)
        raw.load_state_dict({k: v.float() for k, v in ck.model["vae"].items()})
        raw.eval().requires_grad_(False)
        p_ema, p_raw = eval_vae(vae, cfg, tcfg), eval_vae(raw, cfg, tcfg)
        log.info("VAE %s: held-out PSNR %.2f dB (EMA), %.2f dB (raw weights)", path, p_ema, p_raw)
        if p_raw > p_ema:
            log.info("using the raw VAE weights (better than the EMA)")
            vae = raw
            mean, std = latent_stats(vae, cfg, tcfg)
            cfg = replace(cfg, latent_mean=tuple(mean), latent_std=tuple(std))
    return vae, cfg


@torch.no_grad()
def encode_pool(vae: VAE, cfg: ModelConfig, tcfg: TrainConfig, n: int, seed: int, split: str, device: str, progress: bool,
                start_max: int = 0) -> LatentPool:
    """Render `n` clips of `split` with captions and encode them to normalised latents (float16);
    `start_max` > 0: clips that start later in their scenes (`render_clips`)."""
    from tqdm import tqdm

    tok = tokenizer_for(cfg)
    rng = np.random.default_rng([tcfg.seed, seed])
    frames = tcfg.clip_chunks * cfg.chunk_frames
    mean = torch.tensor(cfg.latent_mean).view(1, 1, -1, 1, 1).to(device)
    std = torch.tensor(cfg.latent_std).view(1, 1, -1, 1, 1).to(device)
    h, w = cfg.latent_size
    latents = np.empty((n, tcfg.clip_chunks, cfg.latent_channels, h, w), np.float16)
    tokens = np.empty((n, max(1, tcfg.captions_per_clip), cfg.max_len), np.int64)
    vae = vae.to(device)
    workers = render_workers() if n > 256 else None
    block = 32 if workers is None else 256  # clips rendered, then encoded, at a time
    try:
        for i in tqdm(range(0, n, block), desc=f"encode {split} pool", disable=not progress, dynamic_ncols=True, unit_scale=block):
            m = min(block, n - i)
            clips, texts = render_clips(rng, m, cfg, frames, split=split, captions=tokens.shape[1], start_max=start_max,
                                        workers=workers)
            x = torch.from_numpy(clips).to(device).float() / 255.0
            z = vae.encode_clip(x[:, 1:], first_prev=x[:, 0]) if start_max else vae.encode_clip(x)  # (m, T, C, h, w)
            latents[i : i + m] = ((z - mean) / std).cpu().numpy().astype(np.float16)
            tokens[i : i + m] = [[tok.encode(t) for t in caps] for caps in texts]
    finally:
        if workers is not None:
            workers.shutdown(cancel_futures=True)
    return LatentPool(latents, tokens)


def cached_pool(cache: Path, key: str, encode: Callable[[], LatentPool], what: str) -> LatentPool:
    """The latent pool in `cache` if it was made with `key`, else `encode()` it and save it there."""
    pool = LatentPool.load(cache, key)
    if pool is None:
        log.info("encoding %s to latents (once per VAE) -> %s", what, cache)
        pool = encode()
        cache.parent.mkdir(parents=True, exist_ok=True)
        pool.save(cache, key)
    return pool


def latent_pools(vae: VAE, cfg: ModelConfig, tcfg: TrainConfig, run: Run) -> tuple[LatentPool, LatentPool]:
    """(train pool, held-out pool), cached in <out>/latents.npz keyed by the VAE weights and the config."""
    key = pool_key(vae.state_dict(), cfg, tcfg)
    pool = cached_pool(run.out / "latents.npz", key, lambda: encode_pool(
        vae, cfg, tcfg, tcfg.pool_clips, 1, "train", run.device, run.progress), f"{tcfg.pool_clips} training clips")
    val = cached_pool(run.out / "latents_heldout.npz", key, lambda: encode_pool(
        vae, cfg, tcfg, tcfg.eval_clips, 2, "heldout", run.device, False), f"{tcfg.eval_clips} held-out clips")
    return pool, val


def late_pool(vae: VAE, cfg: ModelConfig, tcfg: TrainConfig, run: Run) -> LatentPool | None:
    """The pool of clips that start later in their scenes (None when the config has none), cached
    in <out>/latents_late.npz like the main pool."""
    if tcfg.late_clips <= 0 or tcfg.late_batch <= 0:
        return None
    if tcfg.late_start_max < cfg.chunk_frames:
        raise UserError(f"late_start_max must be at least chunk_frames ({cfg.chunk_frames}), not {tcfg.late_start_max}")
    return cached_pool(run.out / "latents_late.npz", pool_key(vae.state_dict(), cfg, tcfg, late=True), lambda: encode_pool(
        vae, cfg, tcfg, tcfg.late_clips, 3, "train", run.device, run.progress, start_max=tcfg.late_start_max),
        f"{tcfg.late_clips} late-start clips")


def sample_t(rng: torch.Generator | None, shape: tuple[int, ...], how: str, device: str) -> torch.Tensor:
    if how == "logit_normal":
        return torch.sigmoid(torch.randn(shape, device=device))
    if how == "uniform":
        return torch.rand(shape, device=device)
    raise UserError(f"unknown t_sampling {how!r}; use logit_normal or uniform")


def context(x0: torch.Tensor, tcfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Clean context with training-time noise on a random subset of clips (and, with
    `ctx_fade_prob`, faded objects on another): x0 (B,T,C,h,w) -> (same, the commit pass's t per clip (B,):
    the noise level with `ctx_noise_label`, else 0)."""
    B = x0.shape[0]
    s = torch.rand(B, 1, 1, 1, 1, device=x0.device) * tcfg.ctx_noise_max
    s = s * (torch.rand(B, 1, 1, 1, 1, device=x0.device) < tcfg.ctx_noise_prob)
    ctx = (1 - s) * x0 + s * torch.randn_like(x0)
    label = s.flatten() if tcfg.ctx_noise_label else torch.zeros(B, device=x0.device)
    return (fade(ctx, tcfg) if tcfg.ctx_fade_prob > 0 else ctx), label


def fade(x: torch.Tensor, tcfg: TrainConfig) -> torch.Tensor:
    """Fainter objects on a random `ctx_fade_prob` of clips: each chunk's deviation from its
    background (per-channel median over space) scaled by a ~ U(ctx_fade_min, 1), per chunk."""
    B, T = x.shape[:2]
    bg = x.flatten(3).median(dim=3).values[..., None, None]  # (B, T, C, 1, 1)
    a = tcfg.ctx_fade_min + (1 - tcfg.ctx_fade_min) * torch.rand(B, T, 1, 1, 1, device=x.device)
    a = torch.where(torch.rand(B, 1, 1, 1, 1, device=x.device) < tcfg.ctx_fade_prob, a, torch.ones_like(a))
    return bg + a * (x - bg)


@torch.no_grad()
def own_estimate(dit: DiT, x0: torch.Tensor, txt: torch.Tensor, pooled: torch.Tensor, tcfg: TrainConfig) -> torch.Tensor:
    """The model's one-step estimate of every chunk of x0 (B,T,C,h,w): x0_hat = x_t - t v(x_t), each
    clip noised to one t ~ U(self_ctx_tmin, self_ctx_tmax), each chunk seeing the real chunks before it."""
    B, T = x0.shape[:2]
    t = tcfg.self_ctx_tmin + (tcfg.self_ctx_tmax - tcfg.self_ctx_tmin) * torch.rand(B, 1, device=x0.device)
    t = t.expand(B, T).contiguous()
    tt = t.view(B, T, 1, 1, 1)
    xt = (1 - tt) * x0 + tt * torch.randn_like(x0)
    return xt - tt * dit.forward_train(xt, t, x0, txt, pooled)


def object_weights(x0: torch.Tensor, fg_weight: float, fg_threshold: float) -> torch.Tensor:
    """Loss weights (B,T,1,h,w) for clean chunks x0 (B,T,C,h,w): 1 + fg_weight where a position departs
    from its chunk's background (per-channel spatial median) by more than fg_threshold, grown by one
    position so an object's edge counts too; 1 elsewhere."""
    B, T, _, h, w = x0.shape
    bg = x0.flatten(3).median(dim=3).values[..., None, None]
    far = ((x0 - bg).square().sum(2) > fg_threshold**2).float()  # (B, T, h, w)
    grown = F.max_pool2d(far.view(B * T, 1, h, w), 3, stride=1, padding=1).view(B, T, 1, h, w)
    return 1.0 + fg_weight * grown


def chunk_weighted(parts: list[tuple[torch.Tensor, int]]) -> torch.Tensor:
    """One loss from parts that are each a mean over their own trained chunks: (loss, chunks) pairs
    weighted by those chunks, so every trained chunk counts the same."""
    if len(parts) == 1:
        return parts[0][0]
    return sum(loss * n for loss, n in parts) / sum(n for _, n in parts)


def velocity_loss(v: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """MSE, or with `weights` (broadcast over channels) the weighted mean of the squared error."""
    if weights is None:
        return F.mse_loss(v, target)
    weights = weights.expand_as(v)
    return (weights * (v - target).square()).sum() / weights.sum()


def flow_loss(text: TextEncoder, dit: DiT, x0: torch.Tensor, tokens: torch.Tensor, tcfg: TrainConfig,
              noise: torch.Tensor | None = None, t: torch.Tensor | None = None, first: int = 0,
              augment: bool = True) -> torch.Tensor:
    """Rectified-flow MSE over a batch of clips x0 (B,T,C,h,w) with tokens (B,L), on chunks `first`.. only
    (the chunks before are context), objects weighted by `fg_weight` (`object_weights`); `augment=False`:
    the plain MSE with the real clip as context, none of the config's augmentations or weights (the
    held-out metric, comparable across configs)."""
    B, T = x0.shape[:2]
    noise = torch.randn_like(x0) if noise is None else noise
    t = sample_t(None, (B, T), tcfg.t_sampling, x0.device) if t is None else t
    tt = t.view(B, T, 1, 1, 1)
    xt = (1 - tt) * x0 + tt * noise
    txt, pooled = text(tokens)
    if not augment:
        return F.mse_loss(dit.forward_train(xt, t, x0, txt, pooled)[:, first:], (noise - x0)[:, first:])
    ctx, label = context(x0, tcfg)
    own = torch.rand(B, device=x0.device) < tcfg.self_ctx_prob if tcfg.self_ctx_prob > 0 else None
    if own is not None and own.any():
        ctx[own] = own_estimate(dit, x0[own], txt[own].detach(), pooled[own].detach(), tcfg)
        label[own] = 0.0
    v = dit.forward_train(xt, t, ctx, txt, pooled, label)
    weights = object_weights(x0[:, first:], tcfg.fg_weight, tcfg.fg_threshold) if tcfg.fg_weight > 0 else None
    return velocity_loss(v[:, first:], (noise - x0)[:, first:], weights)


@torch.no_grad()
def heldout_loss(text: TextEncoder, dit: DiT, val: LatentPool, tcfg: TrainConfig, device: str) -> float:
    """Flow loss on the held-out pool with fixed noise, t and no context noise: comparable across steps."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.from_numpy(val.latents.astype(np.float32)).to(device)
    tokens = torch.from_numpy(val.tokens[:, 0]).to(device)
    noise = torch.randn(x0.shape, generator=g).to(device)
    t = torch.rand(x0.shape[:2], generator=g).to(device)
    return float(flow_loss(text, dit, x0, tokens, tcfg, noise, t, augment=False))


def warm_start(path: Path, modules: dict[str, nn.Module]) -> None:
    """Load the (EMA) weights of a teacher or student checkpoint into `modules`; the optimizer
    starts fresh. Lets a long teacher run continue from a compact committed checkpoint."""
    ck = load_checkpoint(path)
    weights = ck.weights()
    if ck.kind not in ("teacher", "student") or not all(name in weights for name in modules):
        raise UserError(f"{path} is a {ck.kind} checkpoint without {', '.join(modules)} weights; pass a teacher checkpoint to --init")
    other = f"the --init checkpoint {path} was made with a different config; pass one made with this --config (only a deeper DiT is supported)"
    for name, module in modules.items():
        state = {k: v.float() for k, v in weights[name].items()}
        if isinstance(module, DiT):
            state = grow_blocks(state, module)
        load_weights(module, state, f"{other} [{name}]")
    log.info("warm start from %s (%s step %d): %s", path, ck.kind, ck.step, ", ".join(modules))


def _depth(state: dict[str, torch.Tensor]) -> int:
    return len({k.split(".")[1] for k in state if k.startswith("blocks.")})


def grow_blocks(state: dict[str, torch.Tensor], dit: DiT) -> dict[str, torch.Tensor]:
    """`state` of a DiT with fewer blocks than `dit`, spread over `dit`'s depth (old block i becomes
    block floor(i * new / old)), the blocks between keeping `dit`'s fresh weights. A fresh block's
    adaLN-zero gates are 0, so it passes its input through: the grown DiT computes exactly what the
    old one did, and training goes on from there with more capacity (a deeper model without a restart)."""
    old, new = _depth(state), len(dit.blocks)
    if old == new:
        return state
    if old > new:
        raise UserError(f"the --init checkpoint's DiT has {old} blocks, the config {new}: a DiT can grow deeper, not shallower")
    grown = {k: v for k, v in dit.state_dict().items()}
    for key, value in state.items():
        if key.startswith("blocks."):
            _, i, rest = key.split(".", 2)
            key = f"blocks.{int(i) * new // old}.{rest}"
        grown[key] = value
    log.info("DiT grown from %d to %d blocks (old blocks at %s; the others start as identities)",
             old, new, ", ".join(str(i * new // old) for i in range(old)))
    return grown


def train_teacher(cfg: ModelConfig, tcfg: TrainConfig, run: Run) -> Path:
    vae_path = run.vae or run.init or run.out / "vae" / "last.safetensors"
    if not Path(vae_path).exists():
        raise UserError(f"no VAE at {vae_path}; run 'edgegen train vae --config {cfg.name}' first or pass --vae PATH")
    last = run.out / "teacher" / "last.safetensors"
    if run.resume and last.exists():  # the VAE the run started with, even if the VAE stage went on since
        vae, cfg = load_vae(last, cfg)
    else:
        vae, cfg = load_vae(Path(vae_path), cfg, tcfg)
    cfg = replace(cfg, vocab_size=tokenizer_for(cfg).vocab_size)
    pool, val = latent_pools(vae, cfg, tcfg, run)
    late = late_pool(vae, cfg, tcfg, run)
    torch.manual_seed(tcfg.seed + 1)
    text, dit = TextEncoder(cfg).to(run.device), DiT(cfg).to(run.device)
    if run.init is not None and not (run.resume and last.exists()):
        warm_start(Path(run.init), {"text": text, "dit": dit})
    B = tcfg.teacher.batch

    def batch_loss(rng: np.random.Generator, source: LatentPool, n: int, first: int, chunks: int | None = None) -> torch.Tensor:
        x0, tokens = source.batch(rng, n)
        drop = rng.random(n) < tcfg.text_dropout
        tokens = np.where(drop[:, None], 0, tokens)
        x0 = x0[:, :chunks]
        return flow_loss(text, dit, torch.from_numpy(x0).to(run.device), torch.from_numpy(tokens).to(run.device), tcfg, first=first)

    def loss_fn(rng: np.random.Generator, step: int) -> tuple[torch.Tensor, dict[str, float], int]:
        # every part's loss is a mean over its trained chunks: weight the parts by those chunks
        T = tcfg.clip_chunks
        parts = [(batch_loss(rng, pool, B, 0), B * T)]
        logs: dict[str, float] = {}
        if late is not None:  # late clips train only their chunks with a full cache
            first = min(cfg.window, T - 1)
            parts.append((batch_loss(rng, late, tcfg.late_batch, first), tcfg.late_batch * (T - first)))
            logs["loss_late"] = parts[-1][0].item()
        if tcfg.first_batch > 0:  # first chunks only: generated from the text alone
            parts.append((batch_loss(rng, pool, tcfg.first_batch, 0, chunks=1), tcfg.first_batch))
            logs["loss_first"] = parts[-1][0].item()
        return chunk_weighted(parts), logs, B + (tcfg.late_batch if late is not None else 0) + tcfg.first_batch

    def before_save(ema: dict[str, nn.Module], step: int) -> tuple[ModelConfig, dict[str, Any]]:
        return cfg, {"heldout_loss": heldout_loss(ema["text"], ema["dit"], val, tcfg, run.device),
                     "heldout_loss_raw": heldout_loss(text, dit, val, tcfg, run.device)}

    return fit("teacher", cfg, tcfg, run, {"text": text, "dit": dit}, loss_fn, frozen={"vae": vae.to(run.device)},
               before_save=before_save, extra={"vae": str(vae_path)})
