"""Torch reference sampling: the DESIGN.md streaming loop over the component modules.

Per chunk: the context graph over the cache, Euler steps of the flow ODE from numpy noise
(`edgegen.sampling`, the same draws every backend makes), a commit pass at the chunk's level (`t_ctx` from
chunk `t_ctx_from` on, else 0: `commit_level`; on the chunk
noised to `t_ctx` when that is above 0, `sampling.commit_input`) whose K/V roll into the cache, then the VAE decoder with its carried state. Classifier-free guidance (teacher only; the student has it
folded in) runs the conditional and all-PAD prompts as a batch of 2 with one cache each:
v = v_uncond + g (v_cond - v_uncond) (Ho & Salimans 2022).
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from edgegen import sampling
from edgegen.model.components import load_components
from edgegen.model.config import ModelConfig
from edgegen.model.data import tokenizer_for
from edgegen.tokenizer import Tokenizer


@dataclass(frozen=True)
class Model:
    """Immutable: config, tokenizer and the component modules of one checkpoint."""

    config: ModelConfig
    tokenizer: Tokenizer
    components: dict[str, nn.Module]
    kind: str  # teacher | student (| vae)

    @property
    def default_steps(self) -> int:
        return self.config.teacher_steps if self.kind == "teacher" else self.config.default_steps

    @property
    def default_guidance(self) -> float:
        return self.config.guidance if self.kind == "teacher" else 1.0

    @property
    def device(self) -> torch.device:
        """Where the weights are (the sampling loops put their tensors there and hand numpy back)."""
        params = (p for m in self.components.values() for p in m.parameters())
        return next(params, torch.empty(0)).device

    def to(self, device: str | torch.device) -> Model:
        """This model on `device` (e.g. "cuda"): its modules are moved, in place as `nn.Module.to` does. The
        sampling loops give the same outputs up to the device's arithmetic."""
        return dataclasses.replace(self, components={k: m.to(device) for k, m in self.components.items()})


def load_model(path: str | Path) -> Model:
    cfg, components, kind = load_components(path)
    return Model(cfg, tokenizer_for(cfg), components, kind)


def times_for(cfg: ModelConfig, steps: int) -> list[float]:
    return sampling.schedule(steps, cfg.shift)


class Cache:
    """The rolling K/V cache of a batch of streams and the per-chunk context built from it."""

    def __init__(self, model: Model, text: torch.Tensor) -> None:
        cfg = model.config
        B = text.shape[0]
        self._components = model.components
        self.text = text
        self.kv = torch.zeros(B, cfg.dit_depth, 2, cfg.window, cfg.tokens_per_chunk, cfg.dit_width, device=text.device)
        self.valid = torch.zeros(B, cfg.window, device=text.device)
        self.refresh()

    def refresh(self) -> None:
        self.context, self.bias = self._components["context"](self.kv, self.valid, self.text)

    def push(self, kv: torch.Tensor) -> None:
        """A finished chunk's K/V (B,depth,2,N,D) become the newest slot; the oldest is dropped."""
        self.kv = torch.cat([self.kv[:, :, :, 1:], kv.unsqueeze(3)], dim=3)
        self.valid = torch.cat([self.valid[:, 1:], torch.ones_like(self.valid[:, :1])], dim=1)
        self.refresh()


@torch.no_grad()
def euler(model: Model, x: torch.Tensor, times: list[float], pooled: torch.Tensor, cache: Cache, guidance: float) -> torch.Tensor:
    """A chunk's Euler steps over `times` from x (B,C,h,w); with guidance != 1 `pooled` and the cache
    hold [cond; uncond] stacked (2B). Returns x0 (B,C,h,w)."""
    B = x.shape[0]
    cfg = guidance != 1.0
    denoiser = model.components["denoiser"]
    for t, t_next in itertools.pairwise(times):
        xin = torch.cat([x, x]) if cfg else x
        v = denoiser(xin, torch.full((xin.shape[0],), t, device=x.device), pooled, cache.context, cache.bias)
        if cfg:
            v = v[B:] + guidance * (v[:B] - v[B:])
        x = x + (t_next - t) * v  # Euler: x_{t'} = x_t + (t' - t) v
    return x


@torch.no_grad()
def commit_chunk(model: Model, x: torch.Tensor, pooled: torch.Tensor, cache: Cache, guidance: float, t_ctx: float,
                 commit_noise: torch.Tensor | None = None) -> None:
    """The commit pass: the finished chunk x (B,C,h,w) at t_ctx becomes the newest cache slot. With
    t_ctx > 0 it sees (1 - t_ctx) x + t_ctx commit_noise, as in training."""
    xin = committed(x, t_ctx, commit_noise)
    xin = torch.cat([xin, xin]) if guidance != 1.0 else xin
    cache.push(model.components["commit"](xin, torch.full((xin.shape[0],), t_ctx, device=x.device), pooled, cache.context, cache.bias))


@torch.no_grad()
def denoise_chunk(
    model: Model, x: torch.Tensor, times: list[float], pooled: torch.Tensor, cache: Cache, guidance: float, t_ctx: float,
    commit_noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """One chunk: Euler over `times` (`euler`), then the commit pass into `cache` (`commit_chunk`). Returns x0."""
    x = euler(model, x, times, pooled, cache, guidance)
    commit_chunk(model, x, pooled, cache, guidance, t_ctx, commit_noise)
    return x


@dataclass(frozen=True)
class FirstChunk:
    """Another model of the same latent space that makes a stream's first chunk, the one generated
    from the text alone (e.g. the teacher, with its guidance, at a few more steps); the stream's own
    model commits that chunk and makes the rest. `steps` / `guidance` None: that model's defaults."""

    model: Model
    steps: int | None = None
    guidance: float | None = None

    def check(self, model: Model) -> None:
        """ValueError unless this model's chunks are latents the stream's model reads the same way."""
        fields = ("latent_channels", "latent_size", "latent_mean", "latent_std", "chunk_frames", "height", "width")
        differ = [f for f in fields if getattr(self.model.config, f) != getattr(model.config, f)]
        mine, theirs = (m.components.get("vae_encoder") for m in (self.model, model))
        if mine is not None and theirs is not None:  # the same encoder made both models' latents (compared in fp16:
            other = theirs.state_dict()             # a run's fp32 weights and their shipped fp16 copy are one encoder)
            if any(not torch.equal(v.half(), other[k].half()) for k, v in mine.state_dict().items()):
                differ.append("VAE encoder")
        if differ:
            raise ValueError(f"the first-chunk model has another latent space ({', '.join(differ)} differ)")

    @torch.no_grad()
    def sample(self, tokens: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The first chunk (B,C,h,w) from noise x, for tokens (B,L): an empty cache, no commit pass."""
        model = self.model
        guidance = model.default_guidance if self.guidance is None else self.guidance
        text, pooled = encode_text(model, tokens.to(model.device), guidance)
        times = times_for(model.config, self.steps or model.default_steps)
        return euler(model, x.to(model.device), times, pooled, Cache(model, text), guidance)


def commit_level(cfg: ModelConfig, chunk: int) -> float:
    """The level the model's finished chunk `chunk` (0-based) is committed at (`sampling.commit_level`)."""
    return sampling.commit_level(cfg.t_ctx, cfg.t_ctx_from, chunk)


def committed(x: torch.Tensor, t_ctx: float, noise: torch.Tensor | None) -> torch.Tensor:
    """What the commit pass sees of a finished chunk x: x itself at t_ctx = 0, else x noised to t_ctx."""
    if t_ctx == 0.0:
        return x
    if noise is None:
        raise ValueError("t_ctx > 0 needs commit noise (sampling.commit_input draws it per stream)")
    return (1.0 - t_ctx) * x + t_ctx * noise


@torch.no_grad()
def encode_text(model: Model, tokens: torch.Tensor, guidance: float) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (B,L) -> text, pooled; with guidance != 1 the all-PAD prompt's rows are appended (2B)."""
    if guidance != 1.0:
        tokens = torch.cat([tokens, torch.zeros_like(tokens)])
    return model.components["text_encoder"](tokens)


@torch.no_grad()
def rollout(model: Model, tokens: torch.Tensor, noise: torch.Tensor, steps: int, guidance: float,
            commit_noise: torch.Tensor | None = None) -> torch.Tensor:
    """Batched streaming generation from given noise: tokens (B,L), noise (B,T,C,h,w) -> latents (B,T,C,h,w),
    on the device the inputs are on (the model's); `commit_noise` (B,T,C,h,w) is needed when the model's t_ctx > 0
    (chunks before its `t_ctx_from` are committed clean and ignore theirs)."""
    cfg = model.config
    text, pooled = encode_text(model, tokens, guidance)
    cache = Cache(model, text)
    times = times_for(cfg, steps)
    return torch.stack([denoise_chunk(model, noise[:, i], times, pooled, cache, guidance, commit_level(cfg, i),
                                      None if commit_noise is None else commit_noise[:, i]) for i in range(noise.shape[1])], dim=1)


@torch.no_grad()
def generate_latents(
    model: Model, prompt: str, seed: int, chunks: int, steps: int | None = None, guidance: float | None = None,
    first: FirstChunk | None = None,
) -> Iterator[np.ndarray]:
    """Normalised latents (1,C,h,w) float32, one chunk at a time, noise from `sampling.stream_rng(seed)`;
    with `first`, chunk 0 is that model's from the same noise (`FirstChunk`)."""
    cfg = model.config
    if first is not None:
        first.check(model)
    steps = steps or model.default_steps
    guidance = model.default_guidance if guidance is None else guidance
    device = model.device
    tokens = torch.from_numpy(model.tokenizer.encode(prompt))[None].to(device)
    text, pooled = encode_text(model, tokens, guidance)
    cache = Cache(model, text)
    rng, commit_rng = sampling.stream_rng(seed), sampling.commit_rng(seed)
    times = times_for(cfg, steps)
    shape = (1, cfg.latent_channels, *cfg.latent_size)
    for i in range(chunks):
        x = torch.from_numpy(sampling.chunk_noise(rng, shape)).to(device)
        t_ctx = commit_level(cfg, i)
        noise = torch.from_numpy(sampling.commit_noise(commit_rng, shape)).to(device) if t_ctx else None
        if i == 0 and first is not None:
            x = first.sample(torch.from_numpy(first.model.tokenizer.encode(prompt))[None], x).to(device)
            commit_chunk(model, x, pooled, cache, guidance, t_ctx, noise)
        else:
            x = denoise_chunk(model, x, times, pooled, cache, guidance, t_ctx, noise)
        yield x.cpu().numpy()


@torch.no_grad()
def decode_latents(model: Model, latents: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
    """Normalised latents (1,C,h,w) -> frames float32 [F,H,W,3] in [0,1] per chunk, carrying the decoder state."""
    cfg = model.config
    state = torch.zeros(1, cfg.latent_channels, *cfg.latent_size, device=model.device)
    for z in latents:
        frames, state = model.components["vae_decoder"](torch.from_numpy(z).to(state.device), state)
        yield frames[0].cpu().numpy()


def generate_video(
    model: Model, prompt: str, seed: int = 0, frames: int = 48, steps: int | None = None, guidance: float | None = None,
    first: FirstChunk | None = None,
) -> np.ndarray:
    """uint8 [frames, H, W, 3]: the reference output of the streaming loop for one prompt and seed."""
    chunks = -(-frames // model.config.chunk_frames)
    latents = generate_latents(model, prompt, seed, chunks, steps, guidance, first)
    video = np.concatenate(list(decode_latents(model, latents)))
    return (video[:frames] * 255.0 + 0.5).astype(np.uint8)
