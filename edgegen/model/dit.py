"""Block-causal DiT over latent tokens with a rolling K/V cache of the last W clean chunks.

DiT blocks with adaLN-zero (Peebles & Xie 2023) conditioned on timestep embedding + pooled text.
Attention in every block: queries = this chunk's N tokens; keys/values = [this chunk's tokens,
the W cached clean chunks (oldest first, masked by `cache_valid`), the text tokens]. Cached K/V
get a learned per-(layer, slot) embedding added in-graph (slot j holds age W - j), so order is
known without absolute time positions and a stream can run forever; space is a fixed 2D sin-cos
embedding added at the input.

Training mirrors the streaming loop exactly (`forward_train`): per clip of T chunks two token
streams run through the same blocks. The clean (context) stream: clean chunk i attends to itself
+ clean chunks i-1..i-W; its K/V are what the commit pass writes to the cache at inference. The
noisy stream: noisy chunk i attends to itself + the clean stream's K/V of chunks i-1..i-W. Both
are built by shifting the clean K/V along T per slot (zero pad + valid mask), the same function
`forward_chunk` computes one chunk at a time, and the runtime's three graphs (`context` once per
chunk, `velocity` per step, `commit` per chunk) compute in pieces (tests/test_model.py checks both). In the spirit of
CausVid (Yin et al. 2025) and Diffusion Forcing (Chen et al. 2024): every noisy chunk has its
own t, and the clean stream is always labelled t = 0 (= `t_ctx`) even when training adds small
noise to it, so the model learns to trust-but-verify imperfect context at rollout.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from edgegen.model.config import ModelConfig
from edgegen.model.text import MLP, attention

NEG = -1e4  # masked-key bias: large but fp16-safe (no -inf: NaN-free softmax when rows are masked)


def sincos_2d(h: int, w: int, dim: int) -> torch.Tensor:
    """Fixed 2D sin-cos position embedding: [h*w, dim] (half the channels for y, half for x)."""
    assert dim % 4 == 0
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")

    def emb(pos: torch.Tensor) -> torch.Tensor:
        a = pos.flatten()[:, None] * omega[None]
        return torch.cat([a.sin(), a.cos()], dim=1)

    return torch.cat([emb(ys), emb(xs)], dim=1).float()


def timestep_embedding(t: torch.Tensor, dim: int = 256) -> torch.Tensor:
    """Sinusoidal features of t in [0, 1] (scaled by 1000 as in DDPM/DiT): [B] -> [B, dim]."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    a = (t.float() * 1000.0)[:, None] * freqs[None]
    return torch.cat([a.cos(), a.sin()], dim=1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        D = cfg.dit_width
        self.heads = cfg.dit_heads
        self.norm1 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(D, 3 * D)
        self.text_kv = nn.Linear(D, 2 * D)
        self.proj = nn.Linear(D, D)
        self.norm2 = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(D, int(D * cfg.mlp_ratio))
        self.ada = nn.Linear(D, 6 * D)
        self.age = nn.Parameter(torch.randn(2, cfg.window, D) * 0.02)  # (k/v, slot, D): slot j = age W-j
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def modulation(self, c: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.ada(F.silu(c)).unsqueeze(1).chunk(6, dim=-1)  # 6 x (M, 1, D)

    def qkv_of(self, x: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return self.qkv(modulate(self.norm1(x), mod[0], mod[1])).chunk(3, dim=-1)  # 3 x (M, N, D)

    def attend(self, q, k, v, ctx_k, ctx_v, ctx_bias, txt_k, txt_v, fused: bool = False) -> torch.Tensor:
        """q/k/v (M,N,D) this chunk; ctx_k/v (M,W,N,D) raw cached K/V; ctx_bias (M,1,1,W*N); txt (M,L,D).
        `fused`: torch's fused attention kernel (`attention`; training)."""
        M, N, D = q.shape
        ctx_k = (ctx_k + self.age[0][:, None]).reshape(M, -1, D)  # (M, W*N, D)
        ctx_v = (ctx_v + self.age[1][:, None]).reshape(M, -1, D)
        keys = torch.cat([k, ctx_k, txt_k], dim=1)  # (M, N + W*N + L, D)
        values = torch.cat([v, ctx_v, txt_v], dim=1)
        zeros_self = torch.zeros_like(ctx_bias[..., :1]).expand(-1, -1, -1, N)
        zeros_txt = torch.zeros_like(ctx_bias[..., :1]).expand(-1, -1, -1, txt_k.shape[1])
        bias = torch.cat([zeros_self, ctx_bias, zeros_txt], dim=-1)  # (M, 1, 1, N + W*N + L)
        return attention(q, keys, values, self.heads, bias, fused=fused)

    def attend_context(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, context: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """`attend` with the cache and text side prepared once per chunk (`DiT.context`): q/k/v (B,N,D)
        this chunk; context (B,2,H,M,dh) keys/values, heads split; bias (B, N+M). Same keys in the same order."""
        B, N, D = q.shape
        dh = D // self.heads
        q = split_heads(q * dh**-0.5, self.heads)  # (B, H, N, dh), scaled first as in `attention`
        keys = torch.cat([split_heads(k, self.heads), context[:, 0]], dim=2)  # (B, H, N + M, dh)
        values = torch.cat([split_heads(v, self.heads), context[:, 1]], dim=2)
        s = q @ keys.transpose(-1, -2) + bias[:, None, None, :]  # (B, H, N, N + M)
        return (s.softmax(-1) @ values).transpose(1, 2).reshape(B, N, D)

    def finish(self, x: torch.Tensor, o: torch.Tensor, mod: tuple[torch.Tensor, ...]) -> torch.Tensor:
        x = x + mod[2] * self.proj(o)
        return x + mod[5] * self.mlp(modulate(self.norm2(x), mod[3], mod[4]))


class DiT(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        D, p, C = cfg.dit_width, cfg.patch, cfg.latent_channels
        h, w = cfg.latent_size
        self.hp, self.wp = h // p, w // p
        self.patch_embed = nn.Conv2d(C, D, p, stride=p)
        self.register_buffer("pos", sincos_2d(self.hp, self.wp, D), persistent=False)  # (N, D)
        self.t_embed = nn.Sequential(nn.Linear(256, D), nn.SiLU(), nn.Linear(D, D))
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.dit_depth)])
        self.norm_out = nn.LayerNorm(D, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Linear(D, 2 * D)
        self.out = nn.Linear(D, p * p * C)
        for m in (self.ada_out, self.out):
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    # -- pieces shared by both forwards -----------------------------------------------------------
    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos  # (M, C, h, w) -> (M, N, D)

    def cond(self, t: torch.Tensor, text_pooled: torch.Tensor) -> torch.Tensor:
        return self.t_embed(timestep_embedding(t)) + text_pooled  # (M, D)

    def unembed(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada_out(F.silu(c)).unsqueeze(1).chunk(2, dim=-1)
        x = self.out(modulate(self.norm_out(x), shift, scale))  # (M, N, p*p*C)
        M, p, C = x.shape[0], self.cfg.patch, self.cfg.latent_channels
        x = x.reshape(M, self.hp, self.wp, p, p, C).permute(0, 5, 1, 3, 2, 4)  # (M, C, hp, p, wp, p)
        return x.reshape(M, C, self.hp * p, self.wp * p)

    # -- inference: one chunk against the cache ---------------------------------------------------
    def forward_chunk(
        self, x: torch.Tensor, t: torch.Tensor, text: torch.Tensor, text_pooled: torch.Tensor,
        kv_cache: torch.Tensor, cache_valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B,C,h,w), t (B,), text (B,L,D), text_pooled (B,D), kv_cache (B,depth,2,W,N,D), cache_valid (B,W)
        -> velocity (B,C,h,w), this chunk's K/V (B,depth,2,N,D)."""
        N = self.hp * self.wp
        h = self.embed(x)  # (B, N, D)
        c = self.cond(t, text_pooled)
        ctx_bias = ((1.0 - cache_valid) * NEG).repeat_interleave(N, dim=1)[:, None, None, :]  # (B, 1, 1, W*N)
        new_kv = []
        for i, blk in enumerate(self.blocks):
            mod = blk.modulation(c)
            q, k, v = blk.qkv_of(h, mod)
            txt_k, txt_v = blk.text_kv(text).chunk(2, dim=-1)  # (B, L, D)
            o = blk.attend(q, k, v, kv_cache[:, i, 0], kv_cache[:, i, 1], ctx_bias, txt_k, txt_v)
            h = blk.finish(h, o, mod)
            new_kv.append(torch.stack([k, v], dim=1))  # (B, 2, N, D)
        return self.unembed(h, c), torch.stack(new_kv, dim=1)  # (B,C,h,w), (B,depth,2,N,D)

    # -- inference in three graphs: context (per chunk), velocity (per step), commit (per chunk) ----
    # The same function as `forward_chunk`, cut where the work changes rate: what every step of a
    # chunk attends to besides the chunk itself (cached K/V + age embedding, the text's K/V) is
    # built once per chunk, so a denoising step is the chunk's own tokens through the blocks.
    def context(self, kv_cache: torch.Tensor, cache_valid: torch.Tensor, text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """kv_cache (B,depth,2,W,N,D) raw, cache_valid (B,W), text (B,L,D) -> context (B,depth,2,H,M,dh)
        with M = W*N + L (cached chunks oldest first, then the text), and bias (B, N + M): 0 where a
        key is attended, NEG for empty slots; the first N columns are the chunk's own tokens."""
        B, _, _, W, N, D = kv_cache.shape
        layers = []
        for i, blk in enumerate(self.blocks):
            txt_k, txt_v = blk.text_kv(text).chunk(2, dim=-1)  # (B, L, D)
            k = torch.cat([(kv_cache[:, i, 0] + blk.age[0][:, None]).reshape(B, W * N, D), txt_k], dim=1)  # (B, M, D)
            v = torch.cat([(kv_cache[:, i, 1] + blk.age[1][:, None]).reshape(B, W * N, D), txt_v], dim=1)
            layers.append(torch.stack([split_heads(k, blk.heads), split_heads(v, blk.heads)], dim=1))  # (B, 2, H, M, dh)
        zeros = torch.zeros_like(cache_valid[:, :1])
        bias = torch.cat([zeros.expand(-1, N), ((1.0 - cache_valid) * NEG).repeat_interleave(N, dim=1), zeros.expand(-1, text.shape[1])], dim=1)
        return torch.stack(layers, dim=1), bias

    def velocity(self, x: torch.Tensor, t: torch.Tensor, text_pooled: torch.Tensor, context: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """One denoising step: x (B,C,h,w), t (B,), text_pooled (B,D), context/bias from `context` -> velocity (B,C,h,w)."""
        return self._chunk_blocks(x, t, text_pooled, context, bias, commit=False)

    def commit(self, x: torch.Tensor, t: torch.Tensor, text_pooled: torch.Tensor, context: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """The finished chunk x at t = t_ctx -> its K/V in every block (B,depth,2,N,D): the next cache entry."""
        return self._chunk_blocks(x, t, text_pooled, context, bias, commit=True)

    def _chunk_blocks(self, x: torch.Tensor, t: torch.Tensor, text_pooled: torch.Tensor, context: torch.Tensor, bias: torch.Tensor,
                      commit: bool) -> torch.Tensor:
        """The chunk through the blocks against its context: the velocity, or (commit) every block's K/V,
        for which the last block's attention and MLP are not needed and not run."""
        h, c = self.embed(x), self.cond(t, text_pooled)
        kv = []
        for i, blk in enumerate(self.blocks):
            mod = blk.modulation(c)
            q, k, v = blk.qkv_of(h, mod)
            if commit:
                kv.append(torch.stack([k, v], dim=1))  # (B, 2, N, D)
                if i + 1 == len(self.blocks):
                    return torch.stack(kv, dim=1)
            h = blk.finish(h, blk.attend_context(q, k, v, context[:, i], bias), mod)
        return self.unembed(h, c)

    # -- training: whole clips, both streams, block-causal ---------------------------------------
    def forward_train(
        self, x_noisy: torch.Tensor, t: torch.Tensor, x_ctx: torch.Tensor, text: torch.Tensor, text_pooled: torch.Tensor,
        t_ctx: float | torch.Tensor = 0.0,
    ) -> torch.Tensor:
        """x_noisy (B,T,C,h,w), t (B,T), x_ctx (B,Tc,C,h,w) clean context for chunks 0..Tc-1 (Tc >= T-1),
        text (B,L,D), text_pooled (B,D) -> velocity (B,T,C,h,w). Same function as streaming chunk by
        chunk with the commit pass run on x_ctx at t_ctx (a number, or one per clip (B,))."""
        B, T = x_noisy.shape[:2]
        Tc = T - 1  # the last clean chunk is nobody's context
        W, N = self.cfg.window, self.hp * self.wp
        xc = x_ctx[:, :Tc]
        hn = self.embed(x_noisy.flatten(0, 1))  # (B*T, N, D)
        cn = self.cond(t.flatten(), text_pooled.repeat_interleave(T, dim=0))  # (B*T, D)
        bias_n = self._ctx_bias(B, T, x_noisy)  # (B*T, 1, 1, W*N)
        if Tc > 0:
            hc = self.embed(xc.flatten(0, 1))  # (B*Tc, N, D)
            tc = (t_ctx.to(x_noisy.device).repeat_interleave(Tc) if torch.is_tensor(t_ctx)
                  else torch.full((B * Tc,), t_ctx, device=x_noisy.device))
            cc = self.cond(tc, text_pooled.repeat_interleave(Tc, dim=0))
            bias_c = self._ctx_bias(B, Tc, x_noisy)
        for blk in self.blocks:
            txt_k, txt_v = blk.text_kv(text).chunk(2, dim=-1)  # (B, L, D)
            if Tc > 0:
                mod_c = blk.modulation(cc)
                qc, kc, vc = blk.qkv_of(hc, mod_c)  # (B*Tc, N, D)
                kc, vc = kc.reshape(B, Tc, N, -1), vc.reshape(B, Tc, N, -1)
                tk_c, tv_c = txt_k.repeat_interleave(Tc, dim=0), txt_v.repeat_interleave(Tc, dim=0)
                oc = blk.attend(qc, kc.flatten(0, 1), vc.flatten(0, 1), _slots(kc, W, Tc), _slots(vc, W, Tc), bias_c, tk_c, tv_c,
                                fused=True)
                ctx_k, ctx_v = _slots(kc, W, T), _slots(vc, W, T)  # (B*T, W, N, D)
                hc = blk.finish(hc, oc, mod_c)
            else:
                ctx_k = ctx_v = torch.zeros(B * T, W, N, hn.shape[-1], device=hn.device, dtype=hn.dtype)
            mod_n = blk.modulation(cn)
            qn, kn, vn = blk.qkv_of(hn, mod_n)
            tk_n, tv_n = txt_k.repeat_interleave(T, dim=0), txt_v.repeat_interleave(T, dim=0)
            hn = blk.finish(hn, blk.attend(qn, kn, vn, ctx_k, ctx_v, bias_n, tk_n, tv_n, fused=True), mod_n)
        return self.unembed(hn, cn).reshape(B, T, *x_noisy.shape[2:])

    def _ctx_bias(self, B: int, T: int, like: torch.Tensor) -> torch.Tensor:
        """(B*T, 1, 1, W*N): 0 where slot j of chunk i holds a real chunk (i - (W - j) >= 0), else NEG."""
        W, N = self.cfg.window, self.hp * self.wp
        i = torch.arange(T, device=like.device)[:, None]
        j = torch.arange(W, device=like.device)[None, :]
        valid = (i - (W - j) >= 0).to(like.dtype)  # (T, W)
        bias = ((1.0 - valid) * NEG).repeat_interleave(N, dim=1)  # (T, W*N)
        return bias.repeat(B, 1)[:, None, None, :]


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, T, D) -> (B, heads, T, D / heads)."""
    B, T, D = x.shape
    return x.reshape(B, T, heads, D // heads).transpose(1, 2)


def _slots(kc: torch.Tensor, W: int, T: int) -> torch.Tensor:
    """Clean K or V (B,Tc,N,D) -> per-chunk cache (B*T, W, N, D): slot j of chunk i = clean chunk i-(W-j)
    (zeros before the clip starts; those slots are masked)."""
    B, _Tc, N, D = kc.shape
    kp = torch.cat([kc.new_zeros(B, W, N, D), kc], dim=1)  # index = chunk + W
    if kp.shape[1] < W - 1 + T:  # only when Tc < T - 1 (not used) or T = 1
        kp = torch.cat([kp, kc.new_zeros(B, W - 1 + T - kp.shape[1], N, D)], dim=1)
    return torch.stack([kp[:, j : j + T] for j in range(W)], dim=2).flatten(0, 1)  # (B*T, W, N, D)
