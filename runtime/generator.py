"""The streaming loop: `Generator` (immutable: bundle, tokenizer, sessions) and `Stream` (state).

Per chunk (DESIGN.md, "Streaming with a rolling KV cache"):

    context(kv, valid, text) → ctx, bias                        # what every step attends to
    x = noise                                                   # (1, C, h, w)
    S × denoiser(x, t_k, pooled, ctx, bias) → Euler step        # the chunk's latent
    vae_decoder(x, state) → frames, state                       # yielded right away
    commit(x, t_ctx, pooled, ctx, bias) → new K/V               # commit pass (before the next chunk)
    kv, valid ← roll left, newest slot = the new K/V, valid = 1

Decoding runs before the commit pass, so a chunk's frames go out one denoiser forward earlier; the
commit of the last chunk of a bounded stream is skipped (nothing would read it). Both change no
numbers. The loop is backend-agnostic (StreamDiffusion-style duck typing): it calls
`Session.run`, or a session's per-stream device binding when it offers `bind()`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgegen import sampling
from edgegen.bundle import Bundle, ComponentEntry, default_bundle_path, load_bundle
from edgegen.errors import PromptError, UserError
from edgegen.runtime import backends
from edgegen.tokenizer import Tokenizer
from edgegen.world import parse_prompt

log = logging.getLogger(__name__)

STREAM_COMPONENTS = ("text_encoder", "context", "denoiser", "commit", "vae_decoder")
MAX_SEED = 2**63 - 1


# ---------------------------------------------------------------------------------------------
# Hooks: timings for progress bars and benchmarks


@dataclass(frozen=True)
class StepEvent:
    """One denoiser forward (a sampling step, or `step == steps` for the commit pass)."""

    chunk: int
    step: int
    steps: int
    t: float
    seconds: float


@dataclass(frozen=True)
class ChunkEvent:
    """One finished chunk, reported just before its frames are yielded."""

    chunk: int
    frames: int  # frames this chunk yields (the last chunk may be trimmed)
    frames_total: int  # frames yielded by the stream after this chunk
    seconds: float  # this chunk's work: its steps, the previous commit pass and the decode
    decode_seconds: float
    elapsed: float  # since the stream started (chunk 0: the first-frame latency)


@dataclass(frozen=True)
class TextEvent:
    """The text encoder's one call at the start of a stream (its latency, for benchmarks)."""

    seconds: float


class Hooks:
    """Subclass and override what you need; every method is a no-op by default."""

    def on_text(self, event: TextEvent) -> None:
        pass

    def on_step(self, event: StepEvent) -> None:
        pass

    def on_chunk(self, event: ChunkEvent) -> None:
        pass


HookArg = Hooks | Callable[[TextEvent | StepEvent | ChunkEvent], Any] | Any | None


class _Adapter(Hooks):
    """Any object with on_text, on_step and/or on_chunk, or one callable that receives every event."""

    def __init__(self, hooks: HookArg) -> None:
        if any(hasattr(hooks, name) for name in ("on_text", "on_step", "on_chunk")):
            self._text = getattr(hooks, "on_text", None)
            self._step = getattr(hooks, "on_step", None)
            self._chunk = getattr(hooks, "on_chunk", None)
        elif callable(hooks):
            self._text = self._step = self._chunk = hooks
        else:
            raise TypeError(f"hooks must be a callable or have on_text/on_step/on_chunk, not {type(hooks).__name__}")

    def on_text(self, event: TextEvent) -> None:
        if self._text is not None:
            self._text(event)

    def on_step(self, event: StepEvent) -> None:
        if self._step is not None:
            self._step(event)

    def on_chunk(self, event: ChunkEvent) -> None:
        if self._chunk is not None:
            self._chunk(event)


class _Fanout(Hooks):
    def __init__(self, hooks: list[Hooks]) -> None:
        self._hooks = hooks

    def on_text(self, event: TextEvent) -> None:
        for h in self._hooks:
            h.on_text(event)

    def on_step(self, event: StepEvent) -> None:
        for h in self._hooks:
            h.on_step(event)

    def on_chunk(self, event: ChunkEvent) -> None:
        for h in self._hooks:
            h.on_chunk(event)


def _as_hooks(hooks: HookArg) -> Hooks:
    """None, a Hooks, any object with some of on_text/on_step/on_chunk, a callable, or a list of those."""
    if hooks is None:
        return Hooks()
    if isinstance(hooks, (list, tuple)):
        return _Fanout([_as_hooks(h) for h in hooks])
    return hooks if isinstance(hooks, Hooks) else _Adapter(hooks)


# ---------------------------------------------------------------------------------------------
# Precision: the one place the default is decided


def choose_precision(bundle: Bundle, backend: backends.Backend, requested: str | None = None) -> tuple[str, str]:
    """(precision, why). Default: the first precision in the backend's order that the bundle carries
    and whose recorded quality check (if any) passed on the files that backend runs. Backends list
    their precisions in default order: measured fastest first on ort-cpu; on the GPU backends a
    reasoned order (fp16 first), since none has been measured on a GPU."""
    supported = tuple(backend.precisions)
    if requested is not None:
        if requested not in bundle.precisions:
            raise UserError(f"the bundle has no {requested!r} precision; valid --precision: {', '.join(bundle.precisions)}")
        if requested not in supported:
            raise UserError(f"backend {backend.name} cannot run {requested!r}; it runs: {', '.join(supported)}")
        return requested, "requested"
    skipped = []
    for precision in supported:
        if precision not in bundle.precisions:
            continue
        if not _quality_passed(bundle, precision, backend.name):
            skipped.append(f"{precision} failed its quality check")
            continue
        why = f"{backend.name}'s first choice among the bundle's precisions"
        return precision, why + (f" ({'; '.join(skipped)})" if skipped else "")
    raise UserError(
        f"backend {backend.name} runs {', '.join(supported)} but the bundle has {', '.join(bundle.precisions)}"
        + (f" ({'; '.join(skipped)})" if skipped else "") + "; pick another --backend or --precision"
    )


def _quality_passed(bundle: Bundle, precision: str, backend: str) -> bool:
    """The precision's recorded quality check for the files `backend` runs: its own verdict where the
    calibration judged files of its own (ORT CPU's variants), else the portable files'; no record passes."""
    quality = bundle.precision_info(precision).get("quality", {})
    return quality.get("passed_by_backend", {}).get(backend, quality.get("passed", True)) is not False


# ---------------------------------------------------------------------------------------------
# Generator


@dataclass(frozen=True)
class Generator:
    """A loaded bundle on one backend at one precision. Immutable and shareable across threads."""

    bundle: Bundle
    backend: str
    precision: str
    tokenizer: Tokenizer
    sessions: Mapping[str, backends.Session]

    @classmethod
    def load(
        cls,
        bundle: Bundle | str | Path | None = None,
        backend: str = backends.AUTO,
        precision: str | None = None,
        threads: int | None = None,
    ) -> Generator:
        """Load a bundle (default: the shipped one), pick the backend and precision, open sessions.

        `threads` fixes the CPU threads of a CPU backend's sessions (ort-cpu; by default it measures
        1 thread against all cores per component at load): e.g. 1 when several streams run at once
        from different threads, so they do not fight over the cores."""
        if threads is not None and threads < 1:
            raise UserError(f"threads={threads}: use 1 or more, or None to let the backend choose")
        if not isinstance(bundle, Bundle):
            bundle = load_bundle(default_bundle_path() if bundle is None else bundle)
        impl = backends.resolve(backend)
        if threads is not None:
            if not hasattr(impl, "threads"):
                raise UserError(f"backend {impl.name} does not take a CPU thread count; drop --threads (it applies to ort-cpu)")
            impl.threads = threads
        chosen, why = choose_precision(bundle, impl, precision)
        log.info("precision %s: %s", chosen, why)
        sessions = {name: impl.open(bundle, name, chosen) for name in STREAM_COMPONENTS}
        return cls(bundle=bundle, backend=impl.name, precision=chosen, tokenizer=bundle.tokenizer(), sessions=sessions)

    # -- validation -------------------------------------------------------------------------
    def check_prompt(self, prompt: str) -> np.ndarray:
        """Token ids for `prompt` (int64 [L]); PromptError naming the problem if it is not valid."""
        if not isinstance(prompt, str):
            raise PromptError(f"the prompt must be a string, not {type(prompt).__name__}")
        # The parser first: it names non-ASCII and control characters, which the tokenizer's
        # word split would cut into misleading "unknown word" fragments ('bäll' → 'b').
        parse_prompt(prompt)  # empty, unknown word, three objects, two motions → PromptError
        return self.tokenizer.encode(prompt)  # more words than the bundle's max_len → PromptError

    def check_steps(self, steps: int | None) -> int:
        steps = self.bundle.default_steps if steps is None else steps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or int(steps) not in self.bundle.steps_available:
            valid = ", ".join(str(s) for s in self.bundle.steps_available)
            raise UserError(f"steps {steps!r} is not supported by this bundle; valid: {valid}")
        return int(steps)

    # -- generation -------------------------------------------------------------------------
    def stream(
        self,
        prompt: str,
        seed: int = 0,
        frames: int | None = None,
        steps: int | None = None,
        hooks: HookArg = None,
    ) -> Stream:
        """An iterator of uint8 H×W×3 frames; `frames=None` streams without end at fixed memory."""
        if frames is not None and (isinstance(frames, bool) or not isinstance(frames, (int, np.integer)) or frames < 1):
            raise UserError(f"frames must be a whole number ≥ 1, not {frames!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed <= MAX_SEED:
            raise UserError(f"seed must be a whole number from 0 to {MAX_SEED}, not {seed!r}")
        tokens = self.check_prompt(prompt)
        return Stream(self, tokens, int(seed), None if frames is None else int(frames), self.check_steps(steps), _as_hooks(hooks))

    def generate(self, prompt: str, seed: int = 0, frames: int = 16, steps: int | None = None, hooks: HookArg = None) -> np.ndarray:
        """The whole clip at once: uint8 [frames, H, W, 3]."""
        return np.stack(list(self.stream(prompt, seed=seed, frames=frames, steps=steps, hooks=hooks)))


# ---------------------------------------------------------------------------------------------
# Stream


class Stream(Iterator[np.ndarray]):
    """One clip being generated: owns the rng, the KV cache, the VAE state and every buffer.

    State lives in buffers allocated once per stream: host arrays for plain sessions (outputs are
    copied into them), or a per-stream device binding when the session offers one
    (`DeviceSession.bind()`, see `backends/device.py`: the KV cache and the VAE state then never
    leave the GPU). Either way memory does not grow with the stream's length. One thread per stream.
    """

    def __init__(self, gen: Generator, tokens: np.ndarray, seed: int, frames: int | None, steps: int, hooks: Hooks) -> None:
        self.generator = gen
        self.seed = seed
        self.frames = frames
        self.steps = steps
        self._hooks = hooks
        self._times = gen.bundle.schedule(steps)
        self._t_ctx, self._t_ctx_from = gen.bundle.t_ctx, gen.bundle.t_ctx_from
        self._rng = sampling.stream_rng(seed)
        self._commit_rng = sampling.commit_rng(seed)
        self._tokens = tokens[None, :]  # (1, L)
        self._latent_shape = gen.bundle.component(gen.precision, "denoiser").input("latent").concrete_shape()  # (1, C, h, w)
        self._iter = self._run()

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> np.ndarray:
        return next(self._iter)

    def close(self) -> None:
        self._iter.close()

    def _run(self) -> Iterator[np.ndarray]:
        gen = self.generator
        start = time.perf_counter()
        encoded = gen.sessions["text_encoder"].run({"tokens": self._tokens})
        self._hooks.on_text(TextEvent(time.perf_counter() - start))
        denoiser = _Denoiser(gen, encoded["text"], encoded["text_pooled"])  # (1, L, D), (1, D)
        decoder = _decoder_driver(gen)
        try:
            emitted, chunk, pending_commit = 0, 0, None
            while self.frames is None or emitted < self.frames:
                chunk_start = time.perf_counter()
                if pending_commit is not None:  # the previous chunk's K/V, now that more frames are wanted
                    step_start = time.perf_counter()
                    t_ctx = sampling.commit_level(self._t_ctx, self._t_ctx_from, chunk - 1)
                    denoiser.commit(sampling.commit_input(pending_commit, t_ctx, self._commit_rng), t_ctx)
                    self._hooks.on_step(StepEvent(chunk - 1, self.steps, self.steps, t_ctx, time.perf_counter() - step_start))
                x = sampling.chunk_noise(self._rng, self._latent_shape)  # (1, C, h, w)
                for k, (t, t_next) in enumerate(zip(self._times[:-1], self._times[1:], strict=True)):
                    step_start = time.perf_counter()
                    x = sampling.euler_step(x, denoiser.velocity(x, t), t, t_next)
                    self._hooks.on_step(StepEvent(chunk, k, self.steps, t, time.perf_counter() - step_start))
                decode_start = time.perf_counter()
                clip = _to_uint8(decoder.decode(x)[0])  # (F, H, W, 3)
                now = time.perf_counter()
                if self.frames is not None:
                    clip = clip[: self.frames - emitted]
                emitted += len(clip)
                self._hooks.on_chunk(ChunkEvent(chunk, len(clip), emitted, now - chunk_start, now - decode_start, now - start))
                yield from clip
                pending_commit = x
                chunk += 1
        finally:
            denoiser.close()
            decoder.close()


# ---------------------------------------------------------------------------------------------
# Drivers: the same three calls on host buffers (plain Session.run) or on a device binding


class _Denoiser:
    """The denoiser's three graphs for one stream. The rolling cache lives in host arrays owned by
    the stream; `context` and `commit` run once per chunk through `Session.run`; the per-step
    `denoiser` runs through a step driver (plain feeds, or a device binding that keeps the
    chunk's context on the device and moves only the latent, t and velocity per step)."""

    def __init__(self, gen: Generator, text: np.ndarray, pooled: np.ndarray) -> None:
        entry = gen.bundle.component(gen.precision, "context")
        self._context = gen.sessions["context"]
        self._commit = gen.sessions["commit"]
        self._cache = {
            "kv_cache": np.zeros(entry.input("kv_cache").concrete_shape(), np.float32),  # (1, depth, 2, W, N, D)
            "cache_valid": np.zeros(entry.input("cache_valid").concrete_shape(), np.float32),  # (1, W)
            "text": text,
        }
        self._feeds = {"text_pooled": pooled, "t": np.zeros((1,), np.float32)}  # + context, latent: the step inputs
        self._step = _step_driver(gen, self._feeds)
        self._refresh()

    def _refresh(self) -> None:
        out = self._context.run(self._cache)
        self._feeds["context"], self._feeds["context_bias"] = out["context"], out["context_bias"]
        self._step.set_context(out["context"], out["context_bias"])

    def velocity(self, x: np.ndarray, t: float) -> np.ndarray:
        return self._step.velocity(x, t)

    def commit(self, x: np.ndarray, t_ctx: float) -> None:
        """Run the finished chunk once at t_ctx: its K/V become the newest cache slot."""
        self._feeds["latent"] = x
        self._feeds["t"][0] = t_ctx
        kv = self._commit.run(self._feeds)["kv"]  # (1, depth, 2, N, D)
        _roll_cache(self._cache["kv_cache"], self._cache["cache_valid"], kv)
        self._refresh()

    def close(self) -> None:
        self._step.close()


class _HostStep:
    """Plain `Session.run` on the stream's step feeds (shared with the commit pass)."""

    def __init__(self, session: backends.Session, feeds: dict[str, np.ndarray]) -> None:
        self._session = session
        self._feeds = feeds

    def set_context(self, context: np.ndarray, bias: np.ndarray) -> None:
        pass  # the shared feeds already hold them

    def velocity(self, x: np.ndarray, t: float) -> np.ndarray:
        self._feeds["latent"] = x
        self._feeds["t"][0] = t
        return self._session.run(self._feeds)["velocity"]

    def close(self) -> None:
        pass


class _BoundStep:
    """A device binding: pooled text and the chunk's context stay on the device; latent and t go up,
    velocity comes back."""

    def __init__(self, binding: Any, feeds: dict[str, np.ndarray]) -> None:
        self._b = binding
        self._t = np.zeros((1,), np.float32)
        binding.write("text_pooled", feeds["text_pooled"])

    def set_context(self, context: np.ndarray, bias: np.ndarray) -> None:
        self._b.write("context", context)
        self._b.write("context_bias", bias)

    def velocity(self, x: np.ndarray, t: float) -> np.ndarray:
        self._t[0] = t
        self._b.write("latent", x)
        self._b.write("t", self._t)
        return self._b.step(read=["velocity"])["velocity"]

    def close(self) -> None:
        self._b.close()


class _HostDecoder:
    def __init__(self, session: backends.Session, entry: ComponentEntry) -> None:
        self._session = session
        self._state = np.zeros(entry.input("state").concrete_shape(), np.float32)  # (1, *S_dec)

    def decode(self, x: np.ndarray) -> np.ndarray:
        """Frames (1, F, H, W, 3) in [0, 1] for latent x; carries the causal state forward."""
        out = self._session.run({"latent": x, "state": self._state})
        np.copyto(self._state, out["state_out"])
        return out["frames"]

    def close(self) -> None:
        pass


class _BoundDecoder:
    def __init__(self, binding: Any, entry: ComponentEntry) -> None:
        self._b = binding
        binding.write("state", np.zeros(entry.input("state").concrete_shape(), np.float32))

    def decode(self, x: np.ndarray) -> np.ndarray:
        self._b.write("latent", x)
        frames = self._b.step(read=["frames"])["frames"]
        self._b.carry("state_out", "state")
        return frames

    def close(self) -> None:
        self._b.close()


def _step_driver(gen: Generator, feeds: dict[str, np.ndarray]) -> _HostStep | _BoundStep:
    session = gen.sessions["denoiser"]
    if callable(getattr(session, "bind", None)):
        return _BoundStep(session.bind(), feeds)
    return _HostStep(session, feeds)


def _decoder_driver(gen: Generator) -> _HostDecoder | _BoundDecoder:
    session, entry = gen.sessions["vae_decoder"], gen.bundle.component(gen.precision, "vae_decoder")
    if callable(getattr(session, "bind", None)):
        return _BoundDecoder(session.bind(), entry)
    return _HostDecoder(session, entry)


def _roll_cache(kv_cache: np.ndarray, valid: np.ndarray, kv: np.ndarray) -> None:
    """Slot ages shift by one: drop the oldest, the chunk just committed (kv: (B,depth,2,N,D)) is the
    newest slot, now valid. In place: the stream's memory does not grow."""
    kv_cache[:, :, :, :-1] = kv_cache[:, :, :, 1:]
    kv_cache[:, :, :, -1] = kv
    valid[:, :-1] = valid[:, 1:]
    valid[:, -1] = 1.0


def _to_uint8(frames: np.ndarray) -> np.ndarray:
    """[0, 1] float frames → uint8, rounded (F, H, W, 3)."""
    return np.rint(np.clip(frames, 0.0, 1.0) * 255.0).astype(np.uint8)
