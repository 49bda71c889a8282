"""A small stand-in for the model's components (DESIGN.md signatures), for export/runtime tests.

Random weights, the real I/O contract: enough to test tracing, checking, parity and streaming
without a trained checkpoint.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgegen.bundle import BATCH, TensorSpec
from edgegen.export.pipeline import ComponentSource, ExportSource
from edgegen.tokenizer import Tokenizer
from edgegen.world import VOCABULARY

L, D, C, h, w, W, DEPTH, FRAMES, H = 24, 32, 4, 8, 8, 2, 2, 4, 32
N = (h // 2) * (w // 2)
S = 16  # VAE state size


class TextEncoder(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.emb, self.ln, self.lin = nn.Embedding(vocab, D), nn.LayerNorm(D), nn.Linear(D, D)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.lin(self.ln(self.emb(tokens)))
        mask = (tokens != 0).float().unsqueeze(-1)
        return x, (x * mask).sum(1) / mask.sum(1).clamp(min=1)


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    freqs = torch.exp(-math.log(10000) * torch.arange(dim // 2, dtype=torch.float32) / (dim // 2))
    angles = t[:, None] * 1000 * freqs[None]
    return torch.cat([angles.sin(), angles.cos()], -1)


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln, self.ln2 = nn.LayerNorm(D), nn.LayerNorm(D)
        self.qkv, self.o = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.mlp = nn.Sequential(nn.Linear(D, 2 * D), nn.GELU(), nn.Linear(2 * D, D))
        self.age = nn.Parameter(torch.randn(W, D) * 0.02)

    def forward(self, x, text, cache_k, cache_v, valid):  # x (B, N, D), cache (B, W, N, D)
        b = x.shape[0]
        q, k, v = self.qkv(self.ln(x)).chunk(3, -1)
        keys = torch.cat([k, (cache_k + self.age[None, :, None]).reshape(b, W * N, D), text], 1)
        values = torch.cat([v, cache_v.reshape(b, W * N, D), text], 1)
        mask = torch.cat([torch.ones(b, N), valid.repeat_interleave(N, 1), torch.ones(b, text.shape[1])], 1)
        att = torch.softmax(q @ keys.transpose(1, 2) / math.sqrt(D) + (1 - mask)[:, None, :] * -1e4, -1)
        x = x + self.o(att @ values)
        return x + self.mlp(self.ln2(x)), k, v


class Denoiser(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.patch, self.t, self.p = nn.Conv2d(C, D, 2, 2), nn.Linear(D, D), nn.Linear(D, D)
        self.blocks = nn.ModuleList([Block() for _ in range(DEPTH)])
        self.out = nn.Linear(D, C * 4)

    def forward(self, latent, t, text, text_pooled, kv_cache, cache_valid):
        b = latent.shape[0]
        x = self.patch(latent).flatten(2).transpose(1, 2)  # (B, N, D)
        x = x + (self.t(timestep_embedding(t, D)) + self.p(text_pooled))[:, None]
        new = []
        for i, block in enumerate(self.blocks):
            x, k, v = block(x, text, kv_cache[:, i, 0], kv_cache[:, i, 1], cache_valid)
            new.append(torch.stack([k, v], 1))  # (B, 2, N, D)
        fresh = torch.stack(new, 1)[:, :, :, None]  # (B, depth, 2, 1, N, D)
        kv_out = torch.cat([kv_cache[:, :, :, 1:], fresh], 3)
        y = self.out(x).transpose(1, 2).reshape(b, C * 4, h // 2, w // 2)
        return F.pixel_shuffle(y, 2), kv_out


class VaeDecoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.s_in, self.s_out = nn.Conv2d(C + 1, 3 * FRAMES * 16, 3, padding=1), nn.Linear(S, h * w), nn.Linear(C * h * w, S)

    def forward(self, latent, state):
        b = latent.shape[0]
        y = F.pixel_shuffle(self.conv(torch.cat([latent, self.s_in(state).reshape(b, 1, h, w)], 1)), 4)
        frames = torch.sigmoid(y).reshape(b, FRAMES, 3, H, H).permute(0, 1, 3, 4, 2)
        return frames, torch.tanh(self.s_out(latent.flatten(1)) + state)


class VaeEncoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.s_out, self.s_in = nn.Conv2d(3 * FRAMES, C, 4, 4), nn.Linear(C * h * w, S), nn.Linear(S, C * h * w)

    def forward(self, frames, state):
        b = frames.shape[0]
        latent = self.conv(frames.permute(0, 1, 4, 2, 3).reshape(b, FRAMES * 3, H, H)) + self.s_in(state).reshape(b, C, h, w)
        return latent, torch.tanh(self.s_out(latent.flatten(1)))


def _t(name: str, *shape: int, dtype: str = "float32") -> TensorSpec:
    return TensorSpec(name, dtype, (BATCH, *shape))


def standin_source(seed: int = 0) -> ExportSource:
    torch.manual_seed(seed)
    tokenizer = Tokenizer.from_vocabulary(VOCABULARY, max_len=L)
    kv = (DEPTH, 2, W, N, D)
    comps = {
        "text_encoder": ComponentSource(
            TextEncoder(tokenizer.vocab_size), (_t("tokens", L, dtype="int64"),), (_t("text", L, D), _t("text_pooled", D)),
            (torch.randint(1, tokenizer.vocab_size, (2, L)),),
        ),
        "denoiser": ComponentSource(
            Denoiser(),
            (_t("latent", C, h, w), _t("t"), _t("text", L, D), _t("text_pooled", D), _t("kv_cache", *kv), _t("cache_valid", W)),
            (_t("velocity", C, h, w), _t("kv_cache_out", *kv)),
            (torch.randn(2, C, h, w), torch.rand(2), torch.randn(2, L, D), torch.randn(2, D), torch.randn(2, *kv), torch.ones(2, W)),
        ),
        "vae_decoder": ComponentSource(
            VaeDecoder(), (_t("latent", C, h, w), _t("state", S)), (_t("frames", FRAMES, H, H, 3), _t("state_out", S)),
            (torch.randn(2, C, h, w), torch.randn(2, S)),
        ),
        "vae_encoder": ComponentSource(
            VaeEncoder(), (_t("frames", FRAMES, H, H, 3), _t("state", S)), (_t("latent", C, h, w), _t("state_out", S)),
            (torch.rand(2, FRAMES, H, H, 3), torch.randn(2, S)),
        ),
    }
    for comp in comps.values():
        comp.module.eval()
    return ExportSource(
        name="standin",
        config={"name": "standin", "height": H, "width": H},
        components=comps,
        tokenizer=tokenizer,
        checkpoint_sha256=f"standin-seed-{seed}",
        video={"height": H, "width": H, "chunk_frames": FRAMES, "fps": 24},
        latent={"channels": C, "height": h, "width": w},
        cache={"slots": W, "tokens_per_slot": N},
        steps=(1, 2, 4),
        default_steps=2,
        shift=1.0,
        t_ctx=0.0,
        prompts=("a red ball moving right", "the big blue star, sliding downward"),
    )
