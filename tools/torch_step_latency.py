"""Per-call latency of a checkpoint's components in torch eager on a device (e.g. a lent GPU).

Not the edgegen runtime (that runs the exported bundle on ONNX Runtime or TensorRT; `edgegen bench`):
this is the torch reference modules' cost per call, for a GPU where neither is installed. Each
component runs on device-resident inputs of one chunk of a stream with a full cache, timed with
CUDA events (or the host clock on a CPU) over `--calls` calls after `--warmup`; medians in ms.
Batch 1 is the student's step, batch 2 the teacher's guided step (conditional + all-PAD rows).

    python tools/torch_step_latency.py edgegen/assets/default/checkpoint.safetensors --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from edgegen.model.pipeline import Cache, Model, load_model


def timed(fn: Callable[[], object], device: str, calls: int, warmup: int) -> float:
    """Median milliseconds of `fn()` over `calls` calls."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(calls):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            out.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            out.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(out)


@torch.no_grad()
def component_times(model: Model, batch: int, device: str, calls: int, warmup: int) -> dict[str, float]:
    cfg, parts = model.config, model.components
    tokens = torch.from_numpy(model.tokenizer.encode("a red circle moving right"))[None].repeat(batch, 1).to(device)
    text, pooled = parts["text_encoder"](tokens)
    cache = Cache(model, text)
    cache.valid.fill_(1.0)  # a full window: the steady state of a stream
    cache.kv.normal_()
    cache.refresh()
    x = torch.randn(batch, cfg.latent_channels, *cfg.latent_size, device=device)
    t = torch.full((batch,), 0.5, device=device)
    state = torch.zeros_like(x)
    return {
        "text_encoder": timed(lambda: parts["text_encoder"](tokens), device, calls, warmup),
        "context": timed(lambda: parts["context"](cache.kv, cache.valid, cache.text), device, calls, warmup),
        "denoiser (one step)": timed(lambda: parts["denoiser"](x, t, pooled, cache.context, cache.bias), device, calls, warmup),
        "commit": timed(lambda: parts["commit"](x, t, pooled, cache.context, cache.bias), device, calls, warmup),
        "vae_decoder": timed(lambda: parts["vae_decoder"](x, state), device, calls, warmup),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--warmup", type=int, default=30)
    a = ap.parse_args()
    if a.device.startswith("cuda"):
        print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, fp32 (TF32 matrix products off)")
    for path in a.checkpoints:
        model = load_model(path)
        model = Model(model.config, model.tokenizer, {k: m.to(a.device) for k, m in model.components.items()}, model.kind)
        params = sum(p.numel() for p in model.components["denoiser"].parameters()) / 1e6
        print(f"\n{path} ({model.kind}, DiT width {model.config.dit_width} depth {model.config.dit_depth}, {params:.2f} M)")
        print(f"{'component':<22} {'batch 1 ms':>11} {'batch 2 ms':>11}")
        one, two = (component_times(model, b, a.device, a.calls, a.warmup) for b in (1, 2))
        for k in one:
            print(f"{k:<22} {one[k]:>11.3f} {two[k]:>11.3f}")
        chunk = one["context"] + model.config.default_steps * one["denoiser (one step)"] + one["commit"] + one["vae_decoder"]
        print(f"per chunk at {model.config.default_steps} steps, batch 1: {chunk:.2f} ms = "
              f"{model.config.chunk_frames / chunk * 1e3:.0f} frames/s (sum of the parts, one stream)")


if __name__ == "__main__":
    main()
