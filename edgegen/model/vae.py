"""Causal video autoencoder: a chunk of 4 frames at HxW -> one latent frame C x H/4 x W/4.

Temporal compression stacks the chunk's frames on channels; causality comes from a carried state:
the encoder sees the previous chunk's last frame, the decoder the previous chunk's latent (zeros
for the first chunk). Every chunk has the same static shape, so one graph is replayed per chunk.

Deterministic encoder with a fixed-variance Gaussian posterior (z + sigma * eps during training)
and a small latent L2 penalty: the scale stays bounded and the decoder learns to tolerate
imperfect latents (the DiT's samples), the cheap cousin of a KL-regularised VAE
(Kingma & Welling 2014; Rombach et al. 2022 use a tiny KL weight for the same reason).
No normalisation layers: the decoder runs per chunk on a 2-core CPU, so it is convs and SiLU only.
Upsampling is nearest + conv (not transposed conv: no checkerboards, Odena et al. 2016).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgegen.model.config import ModelConfig


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)  # each block starts as identity: trains stably without norms
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class Upsample(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    """frames [B,F,H,W,3] + last previous frame [B,H,W,3] -> raw latent [B,C,H/4,W/4]."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c0, c1, c2 = cfg.vae_enc_channels
        b0, b1, b2 = cfg.vae_enc_blocks
        self.conv_in = nn.Conv2d((cfg.chunk_frames + 1) * 3, c0, 3, padding=1)
        self.stage0 = nn.Sequential(*[ResBlock(c0) for _ in range(b0)])
        self.down0 = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.stage1 = nn.Sequential(*[ResBlock(c1) for _ in range(b1)])
        self.down1 = nn.Conv2d(c1, c2, 3, stride=2, padding=1)
        self.stage2 = nn.Sequential(*[ResBlock(c2) for _ in range(b2)])
        self.conv_out = nn.Conv2d(c2, cfg.latent_channels, 3, padding=1)

    def forward(self, frames: torch.Tensor, last_frame: torch.Tensor) -> torch.Tensor:
        B, F_, H, W, _ = frames.shape
        x = torch.cat([last_frame.unsqueeze(1), frames], dim=1)  # (B, F+1, H, W, 3)
        x = x.permute(0, 1, 4, 2, 3).reshape(B, (F_ + 1) * 3, H, W) * 2.0 - 1.0  # (B, 3(F+1), H, W)
        x = self.stage0(self.conv_in(x))
        x = self.stage1(self.down0(F.silu(x)))  # (B, c1, H/2, W/2)
        x = self.stage2(self.down1(F.silu(x)))  # (B, c2, H/4, W/4)
        return self.conv_out(F.silu(x))  # (B, C, H/4, W/4)


class Decoder(nn.Module):
    """raw latent [B,C,h,w] + previous raw latent [B,C,h,w] -> frames [B,F,4h,4w,3] (unclamped)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        c2, c1, c0 = cfg.vae_dec_channels
        b2, b1, b0 = cfg.vae_dec_blocks
        self.frames = cfg.chunk_frames
        self.conv_in = nn.Conv2d(2 * cfg.latent_channels, c2, 3, padding=1)
        self.stage2 = nn.Sequential(*[ResBlock(c2) for _ in range(b2)])
        self.up1 = Upsample(c2, c1)
        self.stage1 = nn.Sequential(*[ResBlock(c1) for _ in range(b1)])
        self.up0 = Upsample(c1, c0)
        self.stage0 = nn.Sequential(*[ResBlock(c0) for _ in range(b0)])
        self.conv_out = nn.Conv2d(c0, cfg.chunk_frames * 3, 3, padding=1)

    def forward(self, z: torch.Tensor, z_prev: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.conv_in(torch.cat([z, z_prev], dim=1)))  # (B, c2, h, w)
        x = self.stage1(self.up1(F.silu(x)))  # (B, c1, 2h, 2w)
        x = self.stage0(self.up0(F.silu(x)))  # (B, c0, 4h, 4w)
        x = self.conv_out(F.silu(x))  # (B, 3F, H, W)
        B, _, H, W = x.shape
        x = x.reshape(B, self.frames, 3, H, W).permute(0, 1, 3, 4, 2)  # (B, F, H, W, 3)
        return x * 0.5 + 0.5


class VAE(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)

    def encode_clip(self, frames: torch.Tensor, first_prev: torch.Tensor | None = None) -> torch.Tensor:
        """A whole clip [B,T*F,H,W,3] -> raw latents [B,T,C,h,w], chunk by chunk with carried state.
        `first_prev` [B,H,W,3]: the frame before the clip when it starts mid-stream (default: a stream start)."""
        B, n, H, W, _ = frames.shape
        chunks = frames.reshape(B * (n // self.cfg.chunk_frames), self.cfg.chunk_frames, H, W, 3)
        last = frames[:, self.cfg.chunk_frames - 1 :: self.cfg.chunk_frames]  # (B, T, H, W, 3)
        first = torch.zeros_like(last[:, :1]) if first_prev is None else first_prev[:, None]
        prev = torch.cat([first, last[:, :-1]], dim=1).reshape(-1, H, W, 3)
        z = self.encoder(chunks, prev)  # chunks are independent given the state: one batched call
        return z.reshape(B, -1, *z.shape[1:])

    def decode_clip(self, z: torch.Tensor) -> torch.Tensor:
        """Raw latents [B,T,C,h,w] -> frames [B,T*F,H,W,3] (unclamped)."""
        B, T = z.shape[:2]
        prev = torch.cat([torch.zeros_like(z[:, :1]), z[:, :-1]], dim=1)
        x = self.decoder(z.flatten(0, 1), prev.flatten(0, 1))  # (B*T, F, H, W, 3)
        return x.reshape(B, T * x.shape[1], *x.shape[2:])


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """PSNR in dB of images in [0, 1], averaged over the batch (dim 0)."""
    mse = (x.clamp(0, 1) - y).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return (-10.0 * torch.log10(mse)).mean()
