"""Training data from the procedural world: clips rendered on the fly, captions tokenized.

Rendering a 16-frame 64x64 clip takes ~7 ms on one core, cheaper than one training step per clip,
so the VAE sees fresh clips every step. The DiT trains on a cached pool of VAE latents
(`LatentPool`), encoded once per VAE checkpoint.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.model.config import ModelConfig, TrainConfig
from edgegen.tokenizer import Tokenizer

log = logging.getLogger(__name__)


def tokenizer_for(cfg: ModelConfig) -> Tokenizer:
    from edgegen.world import VOCABULARY

    return Tokenizer.from_vocabulary(VOCABULARY, max_len=cfg.max_len)


def render_clips(
    rng: np.random.Generator, n: int, cfg: ModelConfig, frames: int, split: str = "train", captions: int = 0,
    start_max: int = 0, workers: Executor | None = None,
) -> tuple[np.ndarray, list[list[str]]]:
    """`n` random scenes of `split`: uint8 [n, frames, H, W, 3] and `captions` phrasings of each.

    With `start_max` > 0 every clip starts later in its scene, at a random chunk boundary in
    [chunk_frames, start_max], and carries the frame before its start first: [n, 1 + frames, H, W, 3]
    (the causal VAE encoder's state for the clip's first chunk). `workers` (`render_workers`) render
    in other processes; rendering draws nothing from `rng`, so the clips are the same either way."""
    from edgegen.world import caption, render_range, sample_scene

    assert cfg.height == cfg.width, "the world renders square clips"
    lead = 1 if start_max > 0 else 0
    jobs: list[tuple[Any, int, int, int, int]] = []
    texts: list[list[str]] = []
    for _ in range(n):
        scene = sample_scene(rng, split)
        seed = int(rng.integers(2**31))
        start = cfg.chunk_frames * int(rng.integers(1, start_max // cfg.chunk_frames + 1)) if lead else 0
        jobs.append((scene, seed, start - lead, start + frames, cfg.height))
        texts.append([caption(scene, rng) for _ in range(captions)])
    clips = np.empty((n, lead + frames, cfg.height, cfg.width, 3), np.uint8)
    if workers is not None and n > 1:
        rendered = workers.map(render_range, *zip(*jobs, strict=True), chunksize=4)
    else:
        rendered = (render_range(*job) for job in jobs)
    for i, clip in enumerate(rendered):
        clips[i] = clip
    return clips, texts


def render_workers() -> Executor | None:
    """A process pool for `render_clips` on machines with cores to spare (a GPU box renders its data
    pools on many cores); None on small machines, where the training itself needs the cores."""
    cores = os.cpu_count() or 1
    if cores <= 4:
        return None
    return ProcessPoolExecutor(min(cores - 1, 16), mp_context=multiprocessing.get_context("spawn"))


def heldout_clips(cfg: ModelConfig, frames: int, n: int = 32, seed: int = 1234) -> np.ndarray:
    """A fixed set of held-out-split clips for evaluation: uint8 [n, frames, H, W, 3]."""
    clips, _ = render_clips(np.random.default_rng(seed), n, cfg, frames, split="heldout")
    return clips


@dataclass
class LatentPool:
    """Normalised VAE latents of rendered clips, with several tokenized captions per clip."""

    latents: np.ndarray  # float16 [N, T, C, h, w]
    tokens: np.ndarray  # int64 [N, K, L]

    def batch(self, rng: np.random.Generator, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """float32 latents [B, T, C, h, w] and int64 tokens [B, L] (one random caption per clip)."""
        idx = rng.integers(len(self.latents), size=batch)
        which = rng.integers(self.tokens.shape[1], size=batch)
        return self.latents[idx].astype(np.float32), self.tokens[idx, which]

    def save(self, path: Path, key: str) -> None:
        tmp = path.with_name(path.name + ".partial.npz")
        np.savez(tmp, latents=self.latents, tokens=self.tokens, key=np.array(key))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, key: str) -> LatentPool | None:
        if not path.exists():
            return None
        with np.load(path) as f:
            if str(f["key"]) != key:
                log.info("latent cache %s belongs to another VAE or config; re-encoding", path)
                return None
            return cls(latents=f["latents"], tokens=f["tokens"])


def pool_key(vae_state: dict, cfg: ModelConfig, tcfg: TrainConfig, late: bool = False) -> str:
    """Identifies a latent pool: the exact VAE weights and statistics, and how the clips were drawn
    (`late`: the pool of clips that start later in their scenes)."""
    h = hashlib.sha256()
    for k in sorted(vae_state):
        h.update(k.encode())
        h.update(vae_state[k].detach().float().cpu().numpy().tobytes())
    h.update(repr((cfg.latent_mean, cfg.latent_std)).encode())
    key = f"{h.hexdigest()}:{tcfg.seed}:{tcfg.pool_clips}:{tcfg.clip_chunks}:{tcfg.captions_per_clip}:{cfg.max_len}"
    return f"{key}:late:{tcfg.late_clips}:{tcfg.late_start_max}" if late else key
