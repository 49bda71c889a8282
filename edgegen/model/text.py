"""Text encoder: word tokens -> per-token features (cross-attended by the DiT) + a pooled vector.

A 2-layer pre-LN transformer over learned token + position embeddings (no padding mask: PAD is a
token like any other, so the graph is one static shape and the all-PAD prompt is the
unconditional input of classifier-free guidance). `text_pooled` is an MLP over the concatenated
token embeddings: word order and every attribute word reach the adaLN conditioning directly,
which in a prototype was what made colour learnable.
Attention is written with matmul + softmax (no fused SDPA op) so the exported graph is plain
opset-17..20 ops that TensorRT 10.3 parses.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgegen.model.config import ModelConfig


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, bias: torch.Tensor | None = None,
              fused: bool = False) -> torch.Tensor:
    """Multi-head attention, heads merged in and out: q [M,Nq,D], k/v [M,Nk,D], bias broadcast to [M,H,Nq,Nk].
    `fused`: torch's fused kernel (training: the scores are never stored whole, the step's largest
    tensors on a GPU); the same function, but not in exported graphs, whose plain ops every backend runs."""
    M, Nq, D = q.shape
    dh = D // heads
    if fused:
        qh, kh, vh = (x.reshape(M, -1, heads, dh).transpose(1, 2) for x in (q, k, v))
        return F.scaled_dot_product_attention(qh, kh, vh, attn_mask=bias).transpose(1, 2).reshape(M, Nq, D)
    q = (q * dh**-0.5).reshape(M, Nq, heads, dh).transpose(1, 2)  # (M, H, Nq, dh), scaled first: fp16-safe
    k = k.reshape(M, -1, heads, dh).transpose(1, 2)  # (M, H, Nk, dh)
    v = v.reshape(M, -1, heads, dh).transpose(1, 2)
    s = q @ k.transpose(-1, -2)  # (M, H, Nq, Nk)
    if bias is not None:
        s = s + bias
    return (s.softmax(-1) @ v).transpose(1, 2).reshape(M, Nq, D)  # (M, Nq, D)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)))  # SiLU: exports as Sigmoid*Mul everywhere (no Gelu op)


class TextLayer(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, 4 * dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)  # each (B, L, E)
        x = x + self.proj(attention(q, k, v, self.heads))
        return x + self.mlp(self.norm2(x))


class TextEncoder(nn.Module):
    """tokens int64 [B, L] -> text [B, L, D], text_pooled [B, D] (D = the DiT width)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        assert cfg.vocab_size > 0, "set cfg.vocab_size from the tokenizer before building the text encoder"
        E, D, L = cfg.text_width, cfg.dit_width, cfg.max_len
        self.tok = nn.Embedding(cfg.vocab_size, E)
        self.pos = nn.Parameter(torch.randn(L, E) * 0.02)
        self.layers = nn.ModuleList([TextLayer(E, cfg.text_heads) for _ in range(cfg.text_depth)])
        self.norm = nn.LayerNorm(E)
        self.out = nn.Linear(E, D)
        self.pooled = nn.Sequential(nn.Linear(L * E, D), nn.SiLU(), nn.Linear(D, D))
        nn.init.normal_(self.tok.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.tok(tokens)  # (B, L, E)
        x = e + self.pos
        for layer in self.layers:
            x = layer(x)
        text = self.out(self.norm(x))  # (B, L, D)
        pooled = self.pooled(e.flatten(1))  # (B, D)
        return text, pooled
