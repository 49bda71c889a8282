"""Parity: does the ONNX bundle compute what the torch model computes?

Inputs are REAL: a short streaming run of the torch components (through the runtime's own loop,
`edgegen.runtime.generator.Stream`) on real prompts records every feed each component sees —
tokens of the prompts, latents along the sampling trajectory, the rolling KV cache as it fills and
rolls, the VAE state chunk after chunk. Each ONNX component then runs on exactly those feeds in
ONNX Runtime (CPU) and is compared with the recorded torch outputs.

Relative error of a tensor: max|a - b| / max(max|b|, eps), b the reference. One number per
component (the worst over its outputs and records): it is scale-free, and the eps floor keeps an
all-zero reference (an empty KV slot) from turning rounding noise into an infinite error.
End to end: PSNR (dB, uint8 frames, peak 255) between clips from the same prompt and seed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from edgegen.bundle import ComponentEntry
from edgegen.runtime.backends import Session
from edgegen.runtime.generator import Generator

REL_EPS = 1e-3


def relative_error(actual: np.ndarray, reference: np.ndarray, eps: float = REL_EPS) -> float:
    """max|a - b| / max(max|b|, eps)."""
    a, b = np.asarray(actual, np.float64), np.asarray(reference, np.float64)
    assert a.shape == b.shape, f"shape {a.shape} != reference {b.shape}"
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), eps)) if b.size else 0.0


def psnr(clip: np.ndarray, reference: np.ndarray) -> float:
    """PSNR in dB of uint8 frames against a reference (inf when identical)."""
    assert clip.shape == reference.shape, f"clip {clip.shape} != reference {reference.shape}"
    mse = float(np.mean((clip.astype(np.float64) - reference.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)


@dataclass
class RecordingSession:
    """Wraps a session and keeps copies of every (feeds, outputs) pair it served."""

    inner: Session
    records: list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = field(default_factory=list)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outputs = self.inner.run(feeds)
        self.records.append(({k: np.array(v, copy=True) for k, v in feeds.items()}, {k: v.copy() for k, v in outputs.items()}))
        return outputs


Records = dict[str, list[tuple[dict[str, np.ndarray], dict[str, np.ndarray]]]]


def capture(gen: Generator, prompts: Sequence[str], seed: int, frames: int, steps: int | None = None) -> tuple[Records, dict[str, np.ndarray]]:
    """Run `gen` (torch sessions) on real prompts, recording every component's feeds and outputs.

    Returns the records per component and the clips per prompt (the torch reference clips).
    """
    recorders = {name: RecordingSession(session) for name, session in gen.sessions.items()}
    recording = Generator(bundle=gen.bundle, backend=gen.backend, precision=gen.precision, tokenizer=gen.tokenizer, sessions=recorders)
    clips = {p: np.stack(list(recording.stream(p, seed=seed, frames=frames, steps=steps))) for p in prompts}
    return {name: rec.records for name, rec in recorders.items()}, clips


def component_errors(records: Records, sessions: Mapping[str, Session]) -> dict[str, float]:
    """Worst relative error per component of `sessions` on the recorded feeds."""
    errors = {}
    for name, pairs in records.items():
        worst = 0.0
        for feeds, expected in pairs:
            actual = sessions[name].run(feeds)
            for out_name, ref in expected.items():
                worst = max(worst, relative_error(actual[out_name], ref))
        errors[name] = worst
    return errors


def clip_psnr(gen: Generator, references: Mapping[str, np.ndarray], seed: int, steps: int | None = None) -> float:
    """Worst PSNR over prompts of `gen`'s clips against reference clips (same prompt and seed)."""
    worst = math.inf
    for prompt, ref in references.items():
        clip = np.stack(list(gen.stream(prompt, seed=seed, frames=len(ref), steps=steps)))
        worst = min(worst, psnr(clip, ref))
    return worst


def encoder_records(session: Session, entry: ComponentEntry, clips: Mapping[str, np.ndarray], chunk_frames: int) -> Records:
    """Feeds for the VAE encoder from real clips: each clip chunk by chunk, state carried along."""
    pairs = []
    for clip in clips.values():  # (T, H, W, 3) uint8
        state = np.zeros(entry.input("state").concrete_shape(), np.float32)
        usable = len(clip) - len(clip) % chunk_frames
        for start in range(0, usable, chunk_frames):
            frames = (clip[None, start : start + chunk_frames].astype(np.float32) / 255.0)  # (1, F, H, W, 3)
            feeds = {"frames": frames, "state": state}
            outputs = session.run(feeds)
            pairs.append((feeds, outputs))
            state = outputs["state_out"]
    return {"vae_encoder": pairs}
