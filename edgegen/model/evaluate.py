"""Judge a checkpoint with the torch reference pipeline: pass rates per guidance scale / step count.

    python -m edgegen.model.evaluate runs/default/teacher/last.safetensors --guidance 1,3,4,5 --n 24
    python -m edgegen.model.evaluate runs/default/student/last.safetensors --steps 1,2,4 --n 24

Prompts are `edgegen.world.prompts(split, n, seed)`; one seed per prompt. Prints one JSON line per
setting with the judge's accuracies, so the CFG scale for distillation can be chosen by measurement.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from edgegen.judge import evaluate
from edgegen.model.pipeline import generate_video, load_model


def sweep(path: str, guidances: list[float | None], steps: list[int | None], n: int, split: str, frames: int) -> list[dict]:
    from edgegen.world import prompts

    model = load_model(path)
    rows = []
    for g in guidances:
        for s in steps:
            t0 = time.perf_counter()
            samples = [(p, i, generate_video(model, p, seed=i, frames=frames, steps=s, guidance=g))
                       for i, p in enumerate(prompts(split, n, seed=0))]
            acc = evaluate(samples)["accuracy"]["all"]
            row = {"checkpoint": path, "kind": model.kind, "split": split, "guidance": g if g is not None else model.default_guidance,
                   "steps": s or model.default_steps, "n": n, "seconds": round(time.perf_counter() - t0, 1),
                   **{k: (round(v["accuracy"], 3) if v["accuracy"] is not None else None) for k, v in acc.items()}}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--guidance", default="", help="comma list of CFG scales (teacher); default: the model's")
    ap.add_argument("--steps", default="", help="comma list of step counts; default: the model's")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--split", default="train", choices=("train", "heldout"))
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--threads", type=int, default=0)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    guidances = [float(x) for x in a.guidance.split(",") if x] or [None]
    steps = [int(x) for x in a.steps.split(",") if x] or [None]
    sweep(a.checkpoint, guidances, steps, a.n, a.split, a.frames)


if __name__ == "__main__":
    main()
