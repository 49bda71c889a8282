"""Judge a checkpoint with the torch reference pipeline: pass rates per guidance scale / step count.

    python -m edgegen.model.evaluate runs/default/teacher/last.safetensors --guidance 1,3,4,5 --n 24
    python -m edgegen.model.evaluate runs/default/student/last.safetensors --steps 1,2,4 --n 24
    python -m edgegen.model.evaluate runs/default/teacher/last.safetensors --continuation 1,2,3 --n 48
    python -m edgegen.model.evaluate runs/cn/teacher/last.safetensors --free-run 8 --n 48 --t-ctx 0.2

Prompts are `edgegen.world.prompts(split, n, seed)`; one seed per prompt. Prints one JSON line per
setting with the judge's accuracies, so the CFG scale for distillation can be chosen by measurement.

`--continuation K` is teacher forcing: the first K chunks of a real clip (rendered, VAE-encoded,
committed to the cache as the stream would) and the model generates chunk K. For single-object
steady movers (left / right / up / down) it reports how often the generated chunk moves on in the
clip's direction, or stalls: whether motion is lost in continuing it or in starting it.
`--free-run C` is the same measure on the model's own C-chunk streams, chunk by chunk (plus how
often the object is gone): where a stream loses its motion and its object.
`--stutter C` compares the mean frame-to-frame change inside chunks with the change across chunk
boundaries, for the model's C-chunk clips, the world's renders of the same prompts and the VAE's round
trip of them: whether the picture moves steadily or holds still for a chunk and then jumps.
`--primed K` judges `--frames` frames generated after the first K chunks of the world's clip
(K = 0: plain generation): how much of the score is lost in the first chunk, made from the text alone?
`--vae-judge` judges the world's renders and the checkpoint's VAE round trip of them (`--frames`
each): do the attributes survive the autoencoder?
`--first-from CKPT` has another model of the same latent space (e.g. the teacher, `--first-steps 8`)
make every stream's first chunk from the same noise, the checkpoint's model committing it and making
the rest: what a better first chunk is worth to the whole clip.

    python -m edgegen.model.evaluate edgegen/assets/default/checkpoint.safetensors --split heldout --n 200 --frames 32 \
        --first-from checkpoints/teacher-default-objects.safetensors --first-steps 8 --first-guidance 2 --seed-base 1000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np
import torch

from edgegen import sampling
from edgegen.judge import compare, evaluate
from edgegen.model.pipeline import (
    Cache,
    FirstChunk,
    Model,
    commit_level,
    denoise_chunk,
    encode_text,
    generate_video,
    load_model,
    times_for,
)

STEADY = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
OUTCOMES = ("moved", "stalled", "other", "missing")  # of one chunk-to-chunk step of a steady mover


def _emit(row: dict, rows: list[dict]) -> None:
    """One result: a JSON line on stdout (so a long sweep shows progress) and kept for the caller."""
    print(json.dumps(row), flush=True)
    rows.append(row)


def _rates(samples: list[tuple[str, int, np.ndarray]]) -> dict[str, float | None]:
    """The judge's pass rate per attribute (3 decimals; None where no prompt specifies it)."""
    acc = evaluate(samples)["accuracy"]["all"]
    return {k: (round(v["accuracy"], 3) if v["accuracy"] is not None else None) for k, v in acc.items()}


def load(path: str, t_ctx: float | None = None, device: str = "cpu", t_ctx_from: int | None = None) -> Model:
    """The checkpoint's model on `device`; `t_ctx` overrides the level its finished chunks are committed at,
    `t_ctx_from` the first chunk committed at that level (those before it are committed clean)."""
    model = load_model(path).to(device)
    given = {k: v for k, v in (("t_ctx", t_ctx), ("t_ctx_from", t_ctx_from)) if v is not None}
    return dataclasses.replace(model, config=dataclasses.replace(model.config, **given)) if given else model


def sweep(path: str, guidances: list[float | None], steps: list[int | None], n: int, split: str, frames: int,
          t_ctx: float | None = None, first: FirstChunk | None = None, seed_base: int = 0,
          model: Model | None = None) -> list[dict]:
    """Judge pass rates per (guidance, steps): prompt i of `split` at seed `seed_base` + i; with `first`,
    every stream's first chunk is made by that model (`FirstChunk`). `model`: the checkpoint's, if the
    caller has loaded it already."""
    from edgegen.world import prompts

    model = load(path, t_ctx) if model is None else model
    rows = []
    for g in guidances:
        for s in steps:
            t0 = time.perf_counter()
            samples = [(p, seed_base + i, generate_video(model, p, seed=seed_base + i, frames=frames, steps=s, guidance=g, first=first))
                       for i, p in enumerate(prompts(split, n, seed=0))]
            rates = _rates(samples)
            row = {"checkpoint": path, "kind": model.kind, "split": split, "guidance": g if g is not None else model.default_guidance,
                   "steps": s or model.default_steps, "t_ctx": model.config.t_ctx, "t_ctx_from": model.config.t_ctx_from, "n": n, "seed_base": seed_base,
                   **_first_row(first), "seconds": round(time.perf_counter() - t0, 1), **rates}
            _emit(row, rows)
    return rows


def _first_row(first: FirstChunk | None) -> dict:
    """What made the first chunks, for a result row (nothing when the model made them itself)."""
    if first is None:
        return {}
    model = first.model
    return {"first_kind": model.kind, "first_steps": first.steps or model.default_steps,
            "first_guidance": model.default_guidance if first.guidance is None else first.guidance}


def steady_movers(split: str, n: int, seed: int = 0) -> list[str]:
    """The first `n` single-object prompts of `split` whose object moves steadily left/right/up/down."""
    from edgegen.world import parse_prompt, prompts

    found: list[str] = []
    for p in prompts(split, 40 * n, seed):
        objects = parse_prompt(p).objects
        if len(objects) == 1 and objects[0].motion in STEADY:
            found.append(p)
            if len(found) == n:
                break
    return found


def centroid(frame: np.ndarray, threshold: float = 0.25) -> np.ndarray | None:
    """(x, y) in pixels of the pixels far from the frame's median colour (the object); None if none."""
    far = np.linalg.norm(frame - np.median(frame.reshape(-1, 3), axis=0), axis=-1) > threshold
    ys, xs = np.nonzero(far)
    return np.array([xs.mean(), ys.mean()]) if len(xs) else None


@torch.no_grad()
def real_context(model: Model, prompt: str, seed: int, k: int, chunks: int) -> tuple[list[torch.Tensor], Cache, torch.Tensor, np.random.Generator]:
    """The world's clip of `prompt` at `seed`, VAE-encoded (latents of chunks 0..chunks-1), its first
    `k` chunks committed to a fresh cache as a generated chunk would be -> (latents, cache, pooled
    text, the stream's commit source after those commits)."""
    from edgegen.world import parse_prompt, render

    cfg, parts = model.config, model.components
    F = cfg.chunk_frames
    state, real = torch.zeros(1, cfg.height, cfg.width, 3), []
    if chunks:
        clip = torch.from_numpy(render(parse_prompt(prompt), seed, F * chunks, cfg.height)).float()[None] / 255.0
    for i in range(chunks):
        z, state = parts["vae_encoder"](clip[:, i * F : (i + 1) * F], state)
        real.append(z)
    text, pooled = encode_text(model, torch.from_numpy(model.tokenizer.encode(prompt))[None], model.default_guidance)
    cache = Cache(model, text)
    rows = pooled.shape[0]
    commit_rng = sampling.commit_rng(seed)
    for i, z in enumerate(real[:k]):
        t_ctx = commit_level(cfg, i)
        zc = torch.from_numpy(sampling.commit_input(z.numpy(), t_ctx, commit_rng))
        cache.push(parts["commit"](zc.expand(rows, -1, -1, -1), torch.full((rows,), t_ctx), pooled, cache.context, cache.bias))
    return real, cache, pooled, commit_rng


@torch.no_grad()
def generate_after(model: Model, seed: int, cache: Cache, pooled: torch.Tensor, commit_rng: np.random.Generator, chunks: int,
                   steps: int | None = None, start: int = 0) -> list[torch.Tensor]:
    """`chunks` more chunks of a stream whose cache is `cache`, the first of them the stream's chunk
    `start` (it sets their commit levels): chunk noise from `sampling.stream_rng(seed)` (from its first
    draw on, as a plain stream starts), commit noise from `commit_rng`."""
    cfg = model.config
    rng, shape = sampling.stream_rng(seed), (1, cfg.latent_channels, *cfg.latent_size)
    times = times_for(cfg, steps or model.default_steps)
    out = []
    for i in range(start, start + chunks):
        noise = torch.from_numpy(sampling.chunk_noise(rng, shape))
        t_ctx = commit_level(cfg, i)
        commit = torch.from_numpy(sampling.commit_noise(commit_rng, shape)) if t_ctx else None
        out.append(denoise_chunk(model, noise, times, pooled, cache, model.default_guidance, t_ctx, commit))
    return out


@torch.no_grad()
def decode(model: Model, latents: list[torch.Tensor], state: torch.Tensor | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """Latents (1,C,h,w) of consecutive chunks -> (frames float [T, H, W, 3] in [0, 1], the decoder
    state after them), starting from `state` (None: a stream's start)."""
    if state is None:
        state = torch.zeros(1, model.config.latent_channels, *model.config.latent_size)
    frames = []
    for z in latents:
        f, state = model.components["vae_decoder"](z, state)
        frames.append(f[0].numpy())
    return np.concatenate(frames), state


def continue_clip(model: Model, prompt: str, seed: int, k: int, steps: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Real chunks 0..k-1 as context -> (last real frame of chunk k-1, real chunk k's last frame, the
    generated chunk k's last frame), float [H, W, 3] in [0, 1], decoded with the same carried state."""
    real, cache, pooled, commit_rng = real_context(model, prompt, seed, k, k + 1)
    (made,) = generate_after(model, seed, cache, pooled, commit_rng, 1, steps, start=k)
    before, state = decode(model, real[:k])  # the shared prefix, decoded once
    return before[-1], decode(model, real[k:], state)[0][-1], decode(model, [made], state)[0][-1]


def primed_video(model: Model, prompt: str, seed: int, k: int, frames: int, steps: int | None = None) -> np.ndarray:
    """uint8 [frames, H, W, 3] generated after the first `k` chunks of the world's clip (k = 0: the
    plain stream, `generate_video`)."""
    F = model.config.chunk_frames
    real, cache, pooled, commit_rng = real_context(model, prompt, seed, k, k)
    video, _ = decode(model, [*real, *generate_after(model, seed, cache, pooled, commit_rng, -(-frames // F), steps, start=k)])
    return (video[F * k : F * k + frames] * 255.0 + 0.5).astype(np.uint8)


def primed(path: str, context_chunks: list[int], n: int, split: str, frames: int, steps: int | None = None) -> list[dict]:
    """Judge pass rates of clips whose first K chunks are the world's (VAE-encoded, committed), the
    rest generated; only the generated frames are judged. K = 0 is plain generation: how much of the
    score is lost in the first chunk, made from the text alone?"""
    from edgegen.world import prompts

    model = load(path)
    rows: list[dict] = []
    for k in context_chunks:
        samples = [(p, i, primed_video(model, p, i, k, frames, steps)) for i, p in enumerate(prompts(split, n, seed=0))]
        _emit({"checkpoint": path, "kind": model.kind, "split": split, "real_chunks": k, "frames": frames, "n": n,
               **_rates(samples)}, rows)
    return rows


def continuation(path: str, context_chunks: list[int], n: int, split: str, steps: int | None = None,
                 t_ctx: float | None = None) -> list[dict]:
    """Teacher forcing on steady movers: the share of generated chunks that move on in the real clip's
    direction (at least half its displacement along it), stall (under a quarter), do something else,
    or have no object."""
    model = load(path, t_ctx)
    cases = steady_movers(split, n)
    rows = []
    for k in context_chunks:
        tally = dict.fromkeys(OUTCOMES, 0)
        for i, prompt in enumerate(cases):
            before, real, made = (centroid(f) for f in continue_clip(model, prompt, i, k, steps))
            want = None if before is None or real is None else real - before
            if want is None or not np.any(want):
                tally["missing"] += 1
                continue
            norm = float(np.linalg.norm(want))
            tally[along_motion(before, made, want / norm, norm)] += 1
        _emit({"checkpoint": path, "kind": model.kind, "split": split, "context_chunks": k, "t_ctx": model.config.t_ctx, "t_ctx_from": model.config.t_ctx_from, "n": len(cases),
               **{key: round(v / len(cases), 3) for key, v in tally.items()}}, rows)
    return rows


def along_motion(before: np.ndarray | None, after: np.ndarray | None, direction: np.ndarray, expected: float) -> str:
    """"missing" (no object in a frame), "moved" (at least half the expected displacement along the
    direction), "stalled" (under a quarter of it either way) or "other"."""
    if before is None or after is None:
        return "missing"
    along = float(np.dot(after - before, direction)) / expected
    return "moved" if along >= 0.5 else "stalled" if abs(along) < 0.25 else "other"


def free_run(path: str, chunks: int, n: int, split: str, steps: int | None = None, t_ctx: float | None = None) -> list[dict]:
    """The model's own streams of steady movers: per pair of consecutive chunks, the share whose
    object moved on in the prompt's direction, stalled, or is missing."""
    from edgegen.world import parse_prompt
    from edgegen.world.renderer import FPS, SPEED

    model = load(path, t_ctx)
    F, size = model.config.chunk_frames, model.config.width
    expected = SPEED * size * F / FPS  # pixels a steady mover covers in one chunk
    cases = steady_movers(split, n)
    counts = [dict.fromkeys(OUTCOMES, 0) for _ in range(chunks - 1)]
    for i, prompt in enumerate(cases):
        video = generate_video(model, prompt, seed=i, frames=F * chunks, steps=steps).astype(np.float32) / 255.0
        direction = np.array(STEADY[parse_prompt(prompt).objects[0].motion])
        ends = [centroid(video[F * (c + 1) - 1]) for c in range(chunks)]
        for c in range(chunks - 1):
            counts[c][along_motion(ends[c], ends[c + 1], direction, expected)] += 1
    rows = []
    for c, tally in enumerate(counts):
        _emit({"checkpoint": path, "kind": model.kind, "split": split, "chunks": f"{c}->{c + 1}", "t_ctx": model.config.t_ctx, "t_ctx_from": model.config.t_ctx_from, "n": len(cases),
               **{k: round(v / len(cases), 3) for k, v in tally.items()}}, rows)
    return rows


def chunk_steps(video: np.ndarray, chunk_frames: int) -> tuple[float, float]:
    """Mean absolute change between consecutive frames (0-255) inside chunks and across chunk boundaries."""
    d = np.abs(np.diff(video.astype(np.float32), axis=0)).mean(axis=(1, 2, 3))  # d[i]: frame i -> i + 1
    boundary = (np.arange(len(d)) % chunk_frames) == chunk_frames - 1
    return float(d[~boundary].mean()), float(d[boundary].mean())


@torch.no_grad()
def reconstruct(model: Model, clip: np.ndarray) -> np.ndarray:
    """The VAE's round trip of a uint8 clip [T, H, W, 3] (whole chunks), chunk by chunk with carried state."""
    cfg, parts = model.config, model.components
    F = cfg.chunk_frames
    x = torch.from_numpy(clip).float()[None] / 255.0
    state, dstate, out = torch.zeros(1, cfg.height, cfg.width, 3), torch.zeros(1, cfg.latent_channels, *cfg.latent_size), []
    for i in range(len(clip) // F):
        z, state = parts["vae_encoder"](x[:, i * F : (i + 1) * F], state)
        frames, dstate = parts["vae_decoder"](z, dstate)
        out.append(frames[0].numpy())
    return (np.concatenate(out) * 255.0 + 0.5).clip(0, 255).astype(np.uint8)


def stutter(path: str, chunks: int, n: int, split: str, steps: int | None = None, t_ctx: float | None = None) -> list[dict]:
    """Does the picture move inside a chunk or jump between chunks? Mean frame-to-frame change inside
    chunks and across chunk boundaries, for the model's clips and for the world's own renders of the
    same prompts and seeds (where both are about equal: objects move steadily), and for the VAE's
    round trip of those renders."""
    from edgegen.world import parse_prompt, prompts, render

    model = load(path, t_ctx)
    F = model.config.chunk_frames
    made, real, coded = [], [], []
    for i, prompt in enumerate(prompts(split, n, seed=0)):
        clip = render(parse_prompt(prompt), i, F * chunks, model.config.height)
        made.append(chunk_steps(generate_video(model, prompt, seed=i, frames=F * chunks, steps=steps), F))
        real.append(chunk_steps(clip, F))
        coded.append(chunk_steps(reconstruct(model, clip), F))
    rows: list[dict] = []
    for what, pairs in (("model", made), ("vae", coded), ("world", real)):
        inside, across = np.mean(pairs, axis=0)
        _emit({"checkpoint": path, "kind": model.kind, "split": split, "clips": what, "n": n, "chunks": chunks,
               "inside_chunks": round(float(inside), 3), "across_chunks": round(float(across), 3),
               "ratio": round(float(across / max(inside, 1e-9)), 2)}, rows)
    return rows


def vae_judge(path: str, n: int, split: str, frames: int) -> list[dict]:
    """Do the judge's attributes survive the VAE? Pass rates of the world's renders of `n` prompts
    (prompt i at seed i) and of the checkpoint's VAE round trip of the same clips (with its mean PSNR)."""
    from edgegen.world import parse_prompt, prompts, render

    model = load(path)
    F = model.config.chunk_frames
    length = -(-frames // F) * F
    real, coded, db = [], [], []
    for i, prompt in enumerate(prompts(split, n, seed=0)):
        clip = render(parse_prompt(prompt), i, length, model.config.height)
        out = reconstruct(model, clip)
        real.append((prompt, i, clip[:frames]))
        coded.append((prompt, i, out[:frames]))
        db.append(compare(out[:frames], clip[:frames])["psnr"])
    rows: list[dict] = []
    for what, samples, mean_db in (("world", real, None), ("vae", coded, round(float(np.mean(db)), 2))):
        _emit({"checkpoint": path, "split": split, "clips": what, "n": n, "frames": frames, "psnr_db": mean_db,
               **_rates(samples)}, rows)
    return rows


def _counts(ap: argparse.ArgumentParser, flag: str, text: str, least: int) -> list[int]:
    """A comma list of real-chunk counts, each at least `least` (else a one-line usage error)."""
    try:
        counts = [int(x) for x in text.split(",")]
    except ValueError:
        ap.error(f"{flag} takes a comma list of whole numbers, not {text!r}")
    if min(counts) < least:
        ap.error(f"{flag} takes counts of real chunks from {least} up, not {min(counts)}")
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--guidance", default="", help="comma list of CFG scales (teacher); default: the model's")
    ap.add_argument("--steps", default="", help="comma list of step counts; default: the model's")
    ap.add_argument("--n", type=int, default=24)
    ap.add_argument("--split", default="train", choices=("train", "heldout", "all"))
    ap.add_argument("--frames", type=int, default=24)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="torch device of the judge sweep (e.g. cuda); the other measures run on the CPU")
    ap.add_argument("--t-ctx", type=float, default=None, help="commit finished chunks at this noise level (default: the model's t_ctx)")
    ap.add_argument("--t-ctx-from", type=int, default=None, help="the first chunk committed at t_ctx, those before it clean (the judge sweep; default: the model's)")
    ap.add_argument("--continuation", default="", help="comma list of real context chunk counts (teacher forcing; see above)")
    ap.add_argument("--free-run", type=int, default=0, help="chunks per stream for the free-running motion measure (see above)")
    ap.add_argument("--stutter", type=int, default=0, help="chunks per clip for the inside- vs across-chunk frame change (see above)")
    ap.add_argument("--primed", default="", help="comma list of real first-chunk counts K: judge the --frames generated after them (see above)")
    ap.add_argument("--vae-judge", action="store_true", help="judge the world's renders and the checkpoint's VAE round trip of them (see above)")
    ap.add_argument("--seed-base", type=int, default=0, help="prompt i runs at seed SEED_BASE + i (the judge sweep)")
    ap.add_argument("--first-from", default=None, help="another checkpoint of the same latent space makes each stream's first chunk (the judge sweep; see above)")
    ap.add_argument("--first-steps", type=int, default=None, help="its steps for that chunk (default: its own)")
    ap.add_argument("--first-guidance", type=float, default=None, help="its guidance for that chunk (default: its own)")
    a = ap.parse_args()
    if a.t_ctx is not None and not 0.0 <= a.t_ctx < 1.0:
        ap.error(f"--t-ctx must be from 0 up to (not including) 1, not {a.t_ctx}")
    if a.t_ctx_from is not None and a.t_ctx_from < 0:
        ap.error(f"--t-ctx-from must be a chunk index >= 0, not {a.t_ctx_from}")
    if a.threads:
        torch.set_num_threads(a.threads)
    other_measure = bool(a.continuation or a.free_run or a.primed or a.vae_judge or a.stutter)
    if a.t_ctx_from is not None and other_measure:
        ap.error("--t-ctx-from applies to the judge sweep only; leave it out for the other measures")
    if a.device != "cpu" and other_measure:
        ap.error("--device applies to the judge sweep only; leave it out for the other measures")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no CUDA GPU; leave --device out")
    steps = [int(x) for x in a.steps.split(",") if x]
    one_steps = steps[0] if steps else None  # the single-setting measures take the first
    if a.continuation:
        continuation(a.checkpoint, _counts(ap, "--continuation", a.continuation, 1), a.n, a.split, one_steps, a.t_ctx)
        return
    if a.free_run:
        if a.free_run < 2:
            ap.error("--free-run needs at least 2 chunks (it measures chunk-to-chunk motion)")
        free_run(a.checkpoint, a.free_run, a.n, a.split, one_steps, a.t_ctx)
        return
    if a.primed:
        primed(a.checkpoint, _counts(ap, "--primed", a.primed, 0), a.n, a.split, a.frames, one_steps)
        return
    if a.vae_judge:
        vae_judge(a.checkpoint, a.n, a.split, a.frames)
        return
    if a.stutter:
        if a.stutter < 2:
            ap.error("--stutter needs at least 2 chunks (it compares changes inside and across chunks)")
        stutter(a.checkpoint, a.stutter, a.n, a.split, one_steps, a.t_ctx)
        return
    guidances = [float(x) for x in a.guidance.split(",") if x] or [None]
    first = _first_chunk(ap, a)
    model = load(a.checkpoint, a.t_ctx, a.device, a.t_ctx_from)  # once: the check below and the sweep share it
    if first is not None:
        try:
            first.check(model)
        except ValueError as exc:
            ap.error(f"--first-from {a.first_from}: {exc}; pass a checkpoint of the same VAE")
    sweep(a.checkpoint, guidances, steps or [None], a.n, a.split, a.frames, a.t_ctx, first, a.seed_base, model)


def _first_chunk(ap: argparse.ArgumentParser, a: argparse.Namespace) -> FirstChunk | None:
    """--first-from/--first-steps/--first-guidance as a FirstChunk (None without --first-from)."""
    if a.first_from is None:
        if a.first_steps is not None or a.first_guidance is not None:
            ap.error("--first-steps and --first-guidance need --first-from CHECKPOINT")
        return None
    if a.first_steps is not None and a.first_steps < 1:
        ap.error(f"--first-steps must be 1 or more, not {a.first_steps}")
    return FirstChunk(load(a.first_from, device=a.device), a.first_steps, a.first_guidance)


if __name__ == "__main__":
    main()
