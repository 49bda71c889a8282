"""The runtime components as torch modules with exactly the ONNX signatures of DESIGN.md.

Export traces these, the `torch` backend runs them, and every backend drives them with the same
streaming loop; `component_specs(config)` is the single description of their I/O (names, dtypes,
shapes with a symbolic "batch") from which export writes the manifest and the runtime allocates
zero caches and states.

| component | runs | inputs | outputs |
| text_encoder | once per stream | tokens i64 [B,L] | text [B,L,D], text_pooled [B,D] |
| context | once per chunk | kv_cache [B,depth,2,W,N,D], cache_valid [B,W], text | context [B,depth,2,H,M,dh], context_bias [B,N+M] |
| denoiser | every step | latent [B,C,h,w], t [B], text_pooled, context, context_bias | velocity [B,C,h,w] |
| commit | once per chunk | latent (the finished chunk), t (= t_ctx), text_pooled, context, context_bias | kv [B,depth,2,N,D] |
| vae_decoder | once per chunk | latent [B,C,h,w] (normalised), state [B,C,h,w] (previous raw latent) | frames [B,F,H,W,3] in [0,1], state_out |
| vae_encoder | (video input) | frames [B,F,H,W,3] in [0,1], state [B,H,W,3] (previous last frame) | latent [B,C,h,w] (normalised), state_out |

M = W*N + L: the cached chunks' tokens (oldest first) and the text tokens. The denoiser is cut in
three so that a step computes only the chunk's own tokens: what every step of a chunk attends to
besides itself is built once per chunk by `context`, and the finished chunk's K/V come from
`commit`; the stream rolls `kv` into its cache (oldest slot dropped, newest = slot W-1).
Zero states and caches (with `cache_valid` = 0) are the start of every stream. The decoder's state
is the *raw* latent so that its zero start is exactly what training saw for the first chunk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from edgegen.bundle import BATCH, TensorSpec
from edgegen.model.config import ModelConfig
from edgegen.model.dit import DiT
from edgegen.model.text import TextEncoder
from edgegen.model.vae import VAE

COMPONENTS = ("text_encoder", "context", "denoiser", "commit", "vae_decoder", "vae_encoder")


def _latent_stats(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    C = cfg.latent_channels
    mean = torch.tensor(cfg.latent_mean or [0.0] * C, dtype=torch.float32).view(1, C, 1, 1)
    std = torch.tensor(cfg.latent_std or [1.0] * C, dtype=torch.float32).view(1, C, 1, 1)
    return mean, std


class TextEncoderComponent(nn.Module):
    def __init__(self, text: TextEncoder) -> None:
        super().__init__()
        self.text = text

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text(tokens)  # (B, L, D), (B, D)


class ContextComponent(nn.Module):
    def __init__(self, dit: DiT) -> None:
        super().__init__()
        self.dit = dit

    def forward(self, kv_cache: torch.Tensor, cache_valid: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dit.context(kv_cache, cache_valid, text)


class _StepInputsComponent(nn.Module):
    """A DiT method over the per-step inputs: `velocity` (the denoiser) or `commit`."""

    method = ""

    def __init__(self, dit: DiT) -> None:
        super().__init__()
        self.dit = dit

    def forward(
        self, latent: torch.Tensor, t: torch.Tensor, text_pooled: torch.Tensor, context: torch.Tensor, context_bias: torch.Tensor,
    ) -> torch.Tensor:
        return getattr(self.dit, self.method)(latent, t, text_pooled, context, context_bias)


class DenoiserComponent(_StepInputsComponent):
    method = "velocity"


class CommitComponent(_StepInputsComponent):
    method = "commit"


class VaeDecoderComponent(nn.Module):
    def __init__(self, vae: VAE, cfg: ModelConfig) -> None:
        super().__init__()
        self.decoder = vae.decoder
        mean, std = _latent_stats(cfg)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, latent: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = latent * self.std + self.mean  # (B, C, h, w) raw
        frames = self.decoder(z, state).clamp(0.0, 1.0)  # (B, F, H, W, 3)
        return frames, z


class VaeEncoderComponent(nn.Module):
    def __init__(self, vae: VAE, cfg: ModelConfig) -> None:
        super().__init__()
        self.encoder = vae.encoder
        mean, std = _latent_stats(cfg)
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, frames: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = self.encoder(frames, state)  # (B, C, h, w) raw
        return (z - self.mean) / self.std, frames[:, -1]


@dataclass(frozen=True)
class ComponentSpec:
    """A component's I/O contract plus how to make a plausible sample input."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    vocab_size: int = 0
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)  # uniform inputs

    def sample_inputs(self, batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
        """Inputs in their real ranges: tokens ids, t in [0,1], frames in [0,1], valid cache slots, N(0,1) else."""
        g = torch.Generator().manual_seed(seed)
        out = {}
        for spec in self.inputs:
            shape = spec.concrete_shape(batch)
            if spec.dtype == "int64":
                x = torch.randint(1, max(2, self.vocab_size), shape, generator=g)
                x[:, shape[1] // 2 :] = 0  # a prompt is words then PAD
            elif spec.name == "cache_valid":
                x = torch.ones(shape)
                x[:, 0] = 0.0  # one empty slot, as early in a stream
            elif spec.name == "context_bias":
                x = torch.zeros(shape)  # every key attended
            elif spec.name in self.ranges:
                lo, hi = self.ranges[spec.name]
                x = lo + (hi - lo) * torch.rand(shape, generator=g)
            else:
                x = torch.randn(shape, generator=g)
            out[spec.name] = x
        return out


def component_specs(cfg: ModelConfig) -> dict[str, ComponentSpec]:
    """Names, dtypes and shapes of every component's inputs and outputs ("batch" is symbolic)."""
    L, D, C, H = cfg.max_len, cfg.dit_width, cfg.latent_channels, cfg.dit_heads
    h, w = cfg.latent_size
    H_, W_, F = cfg.height, cfg.width, cfg.chunk_frames
    N, M = cfg.tokens_per_chunk, cfg.window * cfg.tokens_per_chunk + L
    kv = (BATCH, cfg.dit_depth, 2, cfg.window, N, D)

    def f32(name: str, *shape: int | str) -> TensorSpec:
        return TensorSpec(name, "float32", (BATCH, *shape))

    latent = f32("latent", C, h, w)
    context = (f32("context", cfg.dit_depth, 2, H, M, D // H), f32("context_bias", N + M))
    step_inputs = (latent, f32("t"), f32("text_pooled", D), *context)
    return {
        "text_encoder": ComponentSpec(
            "text_encoder", (TensorSpec("tokens", "int64", (BATCH, L)),), (f32("text", L, D), f32("text_pooled", D)),
            vocab_size=cfg.vocab_size,
        ),
        "context": ComponentSpec(
            "context", (TensorSpec("kv_cache", "float32", kv), f32("cache_valid", cfg.window), f32("text", L, D)), context,
        ),
        "denoiser": ComponentSpec("denoiser", step_inputs, (f32("velocity", C, h, w),), ranges={"t": (0.0, 1.0)}),
        "commit": ComponentSpec("commit", step_inputs, (f32("kv", cfg.dit_depth, 2, N, D),), ranges={"t": (0.0, 0.0)}),
        "vae_decoder": ComponentSpec(
            "vae_decoder", (latent, f32("state", C, h, w)), (f32("frames", F, H_, W_, 3), f32("state_out", C, h, w)),
        ),
        "vae_encoder": ComponentSpec(
            "vae_encoder", (f32("frames", F, H_, W_, 3), f32("state", H_, W_, 3)), (latent, f32("state_out", H_, W_, 3)),
            ranges={"frames": (0.0, 1.0), "state": (0.0, 1.0)},
        ),
    }


def sample_inputs(cfg: ModelConfig, batch: int = 1, seed: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Sample inputs of every component: {component: {input name: tensor}}."""
    return {name: spec.sample_inputs(batch, seed) for name, spec in component_specs(cfg).items()}


def build_components(cfg: ModelConfig, modules: dict[str, nn.Module]) -> dict[str, nn.Module]:
    """Wrap trained modules ({"vae", "text", "dit"}; any subset) as the runtime components, eval mode."""
    out: dict[str, nn.Module] = {}
    if "text" in modules:
        out["text_encoder"] = TextEncoderComponent(modules["text"])
    if "dit" in modules:
        out["context"] = ContextComponent(modules["dit"])
        out["denoiser"] = DenoiserComponent(modules["dit"])
        out["commit"] = CommitComponent(modules["dit"])
    if "vae" in modules:
        out["vae_decoder"] = VaeDecoderComponent(modules["vae"], cfg)
        out["vae_encoder"] = VaeEncoderComponent(modules["vae"], cfg)
    return {k: m.float().eval().requires_grad_(False) for k, m in out.items()}


def build_modules(cfg: ModelConfig, names: tuple[str, ...] = ("vae", "text", "dit")) -> dict[str, nn.Module]:
    factories = {"vae": VAE, "text": TextEncoder, "dit": DiT}
    return {n: factories[n](cfg) for n in names}


def load_components(path: str | Path, prefer_ema: bool = True) -> tuple[ModelConfig, dict[str, nn.Module], str]:
    """A checkpoint -> (config, components by name, kind). EMA weights (what ships) by default."""
    from edgegen.model.checkpoint import MODEL_MODULES, load_checkpoint

    ck = load_checkpoint(path)
    states = ck.weights(prefer_ema)
    modules = build_modules(ck.config, tuple(n for n in MODEL_MODULES if n in states))  # training-only modules stay out
    for name, m in modules.items():
        m.load_state_dict({k: v.float() for k, v in states[name].items()})
    return ck.config, build_components(ck.config, modules), ck.kind
