"""Where a teacher training step's time goes: median step time per variant and the top operators.

Random latents and tokens of the config's shapes stand in for the pool (the step's cost does not
depend on the data), so nothing is rendered. Each variant runs `--steps` timed steps (loss, backward,
AdamW) after `--warmup`; then torch's profiler lists the operators with the most device time
(CPU time on a CPU) for the first variant.

    python tools/train_step_profile.py experiments/gpu-wide-g2.json --device cuda --variants tf32,fp32,bf16
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from dataclasses import replace

import torch

from edgegen.model.config import load_config
from edgegen.model.data import tokenizer_for
from edgegen.model.dit import DiT
from edgegen.model.text import TextEncoder
from edgegen.model.train_dit import chunk_weighted, flow_loss


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def make_step(config: str, device: str, variant: str, batch: int | None):
    cfg, tcfg = load_config(config)
    cfg = replace(cfg, vocab_size=tokenizer_for(cfg).vocab_size)
    B = batch or tcfg.teacher.batch
    text, dit = TextEncoder(cfg).to(device), DiT(cfg).to(device)
    opt = torch.optim.AdamW([*text.parameters(), *dit.parameters()], lr=1e-4, fused=device.startswith("cuda") or None)
    h, w = cfg.latent_size
    x0 = torch.randn(B, tcfg.clip_chunks, cfg.latent_channels, h, w, device=device)
    first = torch.randn(tcfg.first_batch, 1, cfg.latent_channels, h, w, device=device)
    tokens = torch.randint(1, cfg.vocab_size, (B, cfg.max_len), device=device)
    torch.set_float32_matmul_precision("high" if variant in ("tf32", "bf16") else "highest")
    amp = (torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16) if variant == "bf16"
           else contextlib.nullcontext())

    def step() -> None:
        with amp:
            parts = [(flow_loss(text, dit, x0, tokens, tcfg), B * tcfg.clip_chunks)]
            if tcfg.first_batch:
                parts.append((flow_loss(text, dit, first, tokens[: tcfg.first_batch], tcfg), tcfg.first_batch))
            loss = chunk_weighted(parts)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, B + tcfg.first_batch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--variants", default="tf32", help="comma list of fp32, tf32, bf16 (autocast)")
    ap.add_argument("--batch", type=int, default=None, help="clips per step (default: the config's teacher batch)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()
    for i, variant in enumerate(a.variants.split(",")):
        step, clips = make_step(a.config, a.device, variant, a.batch)
        for _ in range(a.warmup):
            step()
        times = []
        for _ in range(a.steps):
            sync(a.device)
            t0 = time.perf_counter()
            step()
            sync(a.device)
            times.append(time.perf_counter() - t0)
        ms = statistics.median(times) * 1e3
        print(f"{variant:<5} batch {a.batch or 'config'}: {ms:8.1f} ms/step  {clips / ms * 1e3:8.0f} clips/s", flush=True)
        if i == 0 and a.top:
            acts = [torch.profiler.ProfilerActivity.CPU]
            if a.device.startswith("cuda"):
                acts.append(torch.profiler.ProfilerActivity.CUDA)
            with torch.profiler.profile(activities=acts) as prof:
                for _ in range(3):
                    step()
                sync(a.device)
            key = "self_cuda_time_total" if a.device.startswith("cuda") else "self_cpu_time_total"
            print(prof.key_averages().table(sort_by=key, row_limit=a.top, max_name_column_width=48), flush=True)


if __name__ == "__main__":
    main()
