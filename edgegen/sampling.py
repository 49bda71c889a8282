"""Rectified-flow sampling in numpy, shared by every backend (torch included).

Convention: x_t = (1 - t) x0 + t noise, t = 1 is pure noise; the model predicts v = noise - x0.
Euler steps follow the straight-line ODE (Liu et al. 2022, "Flow Straight and Fast").
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
