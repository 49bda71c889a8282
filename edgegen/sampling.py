"""Rectified-flow sampling in numpy, shared by every backend (torch included).

Convention: x_t = (1 - t) x0 + t noise, t = 1 is pure noise; the model predicts v = noise - x0.
Euler steps follow the straight-line ODE (Liu et al. 2022, "Flow Straight and Fast").
A finished chunk enters the cache through the commit pass at `t_ctx`; when `t_ctx` > 0 it is first
noised to that level (`commit_input`) with noise from the stream's own commit source, the way the
model was trained (labelled context noise), so every backend commits the same input. With
`t_ctx_from` = k the first k chunks are committed clean (level 0, no draw) and the later ones at
`t_ctx` (`commit_level`): a stream's opening sets its motion from clean context, and the rest of it
leans on the text instead of copying a context that degrades over a long stream.
"""

from __future__ import annotations

import numpy as np


def schedule(steps: int, shift: float = 1.0) -> list[float]:
    """Times from 1 to 0 (steps + 1 values); `shift` > 1 spends more steps at high noise (SD3)."""
    assert steps >= 1
    t = np.linspace(1.0, 0.0, steps + 1)
    t = shift * t / (1.0 + (shift - 1.0) * t)
    return [float(x) for x in t]


def euler_step(x: np.ndarray, velocity: np.ndarray, t: float, t_next: float) -> np.ndarray:
    """One Euler step of the flow ODE from t to t_next (< t)."""
    return x + np.float32(t_next - t) * velocity


def stream_rng(seed: int) -> np.random.Generator:
    """The noise source of one stream; every backend draws chunk noise from it in the same order."""
    return np.random.Generator(np.random.PCG64(seed))


def chunk_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Noise for the next chunk: float32, drawn in stream order."""
    return rng.standard_normal(shape, dtype=np.float32)


def commit_rng(seed: int) -> np.random.Generator:
    """The commit-noise source of one stream: separate from the chunk noise, so a stream at t_ctx = 0
    draws exactly what it drew before and the order of commits and chunks does not matter."""
    return np.random.Generator(np.random.PCG64([seed, 1]))


def commit_noise(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Noise for the next commit: float32, drawn in stream order from `commit_rng`."""
    return rng.standard_normal(shape, dtype=np.float32)


def commit_level(t_ctx: float, t_ctx_from: int, chunk: int) -> float:
    """The level the finished chunk `chunk` (0-based) is committed at: 0 before chunk `t_ctx_from`, then `t_ctx`."""
    return t_ctx if chunk >= t_ctx_from else 0.0


def commit_input(x: np.ndarray, t_ctx: float, rng: np.random.Generator) -> np.ndarray:
    """The finished chunk as the commit pass sees it: x itself at t_ctx = 0 (no draw), else noised
    to t_ctx, (1 - t_ctx) x + t_ctx n (float32, one draw in stream order)."""
    if t_ctx == 0.0:
        return x
    noise = commit_noise(rng, x.shape)
    return (np.float32(1.0 - t_ctx) * x + np.float32(t_ctx) * noise).astype(np.float32)
