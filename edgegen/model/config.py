"""The one config that travels inside every checkpoint (`ModelConfig`) and the training recipe.

A config file in `edgegen/configs/NAME.json` is `{"model": {...ModelConfig...}, "train": {...TrainConfig...}}`.
`ModelConfig` is everything needed to rebuild the networks and run them (geometry, widths, latent
normalisation, sampler numbers); `TrainConfig` is only how to train them and is not needed at export.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgegen.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class ModelConfig:
    name: str = "default"
    # video geometry: a chunk of `chunk_frames` frames is one latent frame
    height: int = 64
    width: int = 64
    chunk_frames: int = 4
    fps: int = 24
    # causal video VAE (x4 spatial via two stride-2 stages, x4 temporal by stacking frames on channels)
    latent_channels: int = 8
    vae_enc_channels: tuple[int, ...] = (32, 64, 128)  # at full, 1/2, 1/4 resolution
    vae_enc_blocks: tuple[int, ...] = (1, 1, 2)
    vae_dec_channels: tuple[int, ...] = (128, 64, 32)  # at 1/4, 1/2, full resolution (decoder is light)
    vae_dec_blocks: tuple[int, ...] = (2, 1, 1)
    latent_mean: tuple[float, ...] = ()  # per channel, filled after VAE training; () = identity
    latent_std: tuple[float, ...] = ()
    # text encoder
    vocab_size: int = 0  # set from the tokenizer at training time
    max_len: int = 24
    text_width: int = 128
    text_depth: int = 2
    text_heads: int = 4
    # block-causal DiT over latent tokens
    patch: int = 2
    dit_width: int = 128
    dit_depth: int = 4
    dit_heads: int = 4
    mlp_ratio: float = 4.0
    window: int = 3  # cached context chunks (KV-cache slots)
    # sampler
    shift: float = 1.0
    t_ctx: float = 0.0
    t_ctx_from: int = 0  # chunks before this one are committed clean (level 0), the rest at t_ctx
    teacher_steps: int = 25
    guidance: float = 4.0
    student_steps: tuple[int, ...] = (1, 2, 4)
    default_steps: int = 2

    @property
    def latent_size(self) -> tuple[int, int]:
        return self.height // 4, self.width // 4

    @property
    def tokens_per_chunk(self) -> int:
        h, w = self.latent_size
        return (h // self.patch) * (w // self.patch)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return _from_dict(cls, data, "model")


@dataclass
class StageConfig:
    """Optimisation of one stage (vae, teacher or student)."""

    batch: int = 32
    lr: float = 1e-3
    warmup: int = 200
    steps: int = 20000  # cosine decay horizon and default stop
    weight_decay: float = 0.0
    ema: float = 0.999
    grad_clip: float = 1.0
    ckpt_every: int = 500
    log_every: int = 25
    eval_every: int = 0  # 0 = only at the end


@dataclass
class TrainConfig:
    seed: int = 0
    clip_chunks: int = 4  # training clips are clip_chunks * chunk_frames frames
    pool_clips: int = 2048  # rendered clips kept in memory (and cached on disk)
    pool_refresh: int = 0  # re-render this many pool clips every 100 steps (0 = fixed pool)
    captions_per_clip: int = 4
    eval_clips: int = 32  # held-out clips for the metrics logged at each checkpoint
    # "bf16": each step's loss and backward under bfloat16 autocast (weights, optimizer and EMA stay fp32);
    # on a GPU only (on this project's CPU bf16 was 2x slower): a CPU run says so and trains in fp32
    autocast: str = "none"
    # VAE losses
    vae_l2: float = 1.0
    vae_edge: float = 0.5
    vae_latent_l2: float = 1e-4  # keeps the latent scale bounded against the fixed noise below
    vae_latent_noise: float = 0.05  # decoder sees z + noise: robust to the DiT's imperfect latents
    vae_motion: float = 0.0  # weight of the error of frame-to-frame changes (motion inside a chunk) ...
    vae_motion_loss: str = "l2"  # ... as its mean square ("l2") or mean absolute value ("l1")
    vae_freeze_encoder: bool = False  # train the decoder only (with --init): the latent space stays the DiT's
    # teacher
    text_dropout: float = 0.1  # all-PAD tokens, for classifier-free guidance
    ctx_noise_prob: float = 0.5  # context (clean stream) noise augmentation
    ctx_noise_max: float = 0.1
    # Labelled context noise (GameNGen, Valevski et al. 2024; Diffusion Forcing): the commit pass is told
    # the context's noise level s (t = s instead of t_ctx), so high levels can be trained; at inference
    # the finished chunk is then noised to the model's t_ctx before its commit pass (`sampling.commit_input`).
    ctx_noise_label: bool = False
    t_sampling: str = "logit_normal"  # or "uniform"
    # Faded context: this share of clips gets each context chunk's deviation from its own background
    # (per-channel spatial median) scaled by U(ctx_fade_min, 1): fainter objects, as in a rollout.
    ctx_fade_prob: float = 0.0
    ctx_fade_min: float = 0.5
    # Own-estimate context: this share of clips gets, as its clean context, the model's own one-step
    # estimate of each chunk from a copy noised to t ~ U(self_ctx_tmin, self_ctx_tmax); the target stays real.
    self_ctx_prob: float = 0.0
    self_ctx_tmin: float = 0.3
    self_ctx_tmax: float = 1.0
    # Late clips: a second pool of clips that start later in their scenes (at a chunk boundary up to
    # late_start_max frames); late_batch of them join every teacher step, with loss only on the chunks
    # whose cache is full (the chunks before are context, as mid-stream).
    late_clips: int = 0
    late_start_max: int = 224
    late_batch: int = 0
    # First chunks: this many more clips per teacher step are cut to their first chunk, which sees only
    # the text (no context): the chunk that decides the scene (object count, colours, places) gets more
    # of the training signal at a quarter of a clip's cost.
    first_batch: int = 0
    # Object-weighted flow loss: latent positions where the clean chunk departs from its background
    # (per-channel spatial median) by more than fg_threshold (L2 over channels, normalised latents),
    # grown by one position, weigh 1 + fg_weight in the loss (normalised to a mean weight of 1). The
    # objects are a small share of the positions, so an unweighted MSE spends the model on the background.
    fg_weight: float = 0.0
    fg_threshold: float = 3.0
    # student (reflow distillation of the guided teacher)
    distill_pairs: int = 1024  # teacher rollouts cached on disk
    distill_random_t: float = 0.25  # fraction of samples at uniform t (rest at the 1/2/4-step times)
    # First-chunk pairs: this many more teacher rollouts of the first chunk alone (a quarter of a clip's
    # cost, no context), distill_first_batch of them per student step: the chunk made from the text alone,
    # which decides the scene, is otherwise learnt from one sample per cached clip.
    distill_first_pairs: int = 0
    distill_first_batch: int = 0
    # Object-weighted distillation loss (as `fg_weight`, with objects found in the teacher's latents).
    distill_fg_weight: float = 0.0
    # Distribution matching on the first chunk (DMD, Yin et al. 2024): distill_dmd_batch first chunks per
    # student step, sampled by the student from fresh noise, are pushed toward the guided teacher's
    # distribution by the difference of a "fake" score (trained online on the student's samples) and the
    # teacher's, weighted distill_dmd_weight; the reflow loss on the cached pairs stays as DMD's regression term.
    distill_dmd_batch: int = 0
    distill_dmd_weight: float = 1.0
    # The fake score's learning rate as a multiple of the student's (it must track the student's samples;
    # DMD2 gives it several updates per student step for the same reason), with its own gradient clipping.
    distill_fake_lr_scale: float = 5.0
    vae: StageConfig = field(default_factory=lambda: StageConfig(batch=32, lr=1e-3, steps=20000))
    teacher: StageConfig = field(default_factory=lambda: StageConfig(batch=64, lr=5e-4, steps=40000))
    student: StageConfig = field(default_factory=lambda: StageConfig(batch=64, lr=1e-4, steps=5000))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        for stage in ("vae", "teacher", "student"):
            if stage in data:
                data[stage] = _from_dict(StageConfig, data[stage], f"train.{stage}")
        return _from_dict(cls, data, "train")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    if not isinstance(data, dict):
        raise UserError(f"{where or cls.__name__} must be a JSON object {{...}}, not {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise UserError(f"unknown key {key!r}{_did_you_mean(unknown[0], fields)}; remove it or use one of: {', '.join(sorted(fields))}")
    kwargs = {}
    for k, v in data.items():
        kwargs[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(known), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def config_path(name: str) -> Path:
    """A config name (`default`, `tiny`, `large`) or a path to a JSON file."""
    path = Path(name)
    if path.suffix == ".json" and path.exists():
        return path
    if path.suffix == ".json" or len(path.parts) > 1:
        raise UserError(f"config file {path} does not exist; pass a .json file that exists or a config name")
    path = CONFIG_DIR / f"{name}.json"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
        raise UserError(f"no config named {name!r}; use one of: {known}, or a path to a .json file")
    return path


SECTIONS = ("model", "train")


def load_config(name: str) -> tuple[ModelConfig, TrainConfig]:
    """The checked configs in a config file: one line naming the key and what it may be if any is wrong."""
    path = config_path(name)
    data = _read_json(path)
    try:
        if not isinstance(data, dict):
            raise UserError(f"the file must hold a JSON object {{\"model\": {{...}}, \"train\": {{...}}}}, not {type(data).__name__}")
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise UserError(f"unknown section {unknown[0]!r}{_did_you_mean(unknown[0], SECTIONS)}; a config has only {' and '.join(SECTIONS)}")
        model = ModelConfig.from_dict(data.get("model", {}))
        train = TrainConfig.from_dict(data.get("train", {}))
        validate(model, train)
    except UserError as exc:
        raise UserError(f"config {path}: {exc}") from None
    return model, train


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read config {path} ({exc}); pass a readable .json file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"config {path} is not valid JSON at line {exc.lineno}:{exc.colno} ({exc.msg}); fix the file") from None


# ------------------------------------------------------------------------------------ validation

Rule = tuple[Callable[[Any], bool], str]


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _ints(lo: int) -> Rule:
    return (lambda v: _int(v) and v >= lo), f"a whole number >= {lo}"


def _nums(lo: float, hi: float = math.inf, hi_open: bool = False) -> Rule:
    def ok(v: Any) -> bool:
        return _num(v) and v >= lo and (v < hi if hi_open else v <= hi)

    top = "" if hi == math.inf else f" and {'<' if hi_open else '<='} {hi:g}"
    return ok, f"a number >= {lo:g}{top}"


def _positive() -> Rule:
    return (lambda v: _num(v) and v > 0), "a number > 0"


def _int_list(lo: int, length: int | None = None) -> Rule:
    def ok(v: Any) -> bool:
        return isinstance(v, tuple) and all(_int(x) and x >= lo for x in v) and (len(v) == length if length else len(v) > 0)

    size = f"a list of {length}" if length else "a non-empty list of"
    return ok, f"{size} whole numbers >= {lo}"


def _float_list() -> Rule:
    return (lambda v: isinstance(v, tuple) and all(_num(x) for x in v)), "a list of numbers"


def _one_of(*allowed: Any) -> Rule:
    return (lambda v: v in allowed and type(v) is type(allowed[0])), f"one of {', '.join(map(repr, allowed))}"


_BOOL: Rule = (lambda v: isinstance(v, bool)), "true or false"
_STR: Rule = (lambda v: isinstance(v, str) and bool(v)), "a non-empty string"
_PROB = _nums(0.0, 1.0)

MODEL_RULES: dict[str, Rule] = {
    "name": _STR, "height": _ints(8), "width": _ints(8), "chunk_frames": _ints(1), "fps": _ints(1),
    "latent_channels": _ints(1), "vae_enc_channels": _int_list(1, 3), "vae_enc_blocks": _int_list(0, 3),
    "vae_dec_channels": _int_list(1, 3), "vae_dec_blocks": _int_list(0, 3),
    "latent_mean": _float_list(), "latent_std": _float_list(),
    "vocab_size": _ints(0), "max_len": _ints(1), "text_width": _ints(1), "text_depth": _ints(1), "text_heads": _ints(1),
    "patch": _ints(1), "dit_width": _ints(4), "dit_depth": _ints(1), "dit_heads": _ints(1), "mlp_ratio": _positive(),
    "window": _ints(1), "shift": _positive(), "t_ctx": _nums(0.0, 1.0, hi_open=True), "t_ctx_from": _ints(0), "teacher_steps": _ints(1),
    "guidance": _nums(0.0), "student_steps": _int_list(1), "default_steps": _ints(1),
}
STAGE_RULES: dict[str, Rule] = {
    "batch": _ints(1), "lr": _positive(), "warmup": _ints(0), "steps": _ints(1), "weight_decay": _nums(0.0),
    "ema": _PROB, "grad_clip": _nums(0.0), "ckpt_every": _ints(1), "log_every": _ints(1), "eval_every": _ints(0),
}
TRAIN_RULES: dict[str, Rule] = {
    "seed": _ints(0), "clip_chunks": _ints(1), "pool_clips": _ints(1), "pool_refresh": _ints(0),
    "captions_per_clip": _ints(1), "eval_clips": _ints(1), "autocast": _one_of("none", "bf16"),
    "vae_l2": _nums(0.0), "vae_edge": _nums(0.0), "vae_latent_l2": _nums(0.0), "vae_latent_noise": _nums(0.0),
    "vae_motion": _nums(0.0), "vae_motion_loss": _one_of("l2", "l1"), "vae_freeze_encoder": _BOOL,
    "text_dropout": _PROB, "ctx_noise_prob": _PROB, "ctx_noise_max": _PROB, "ctx_noise_label": _BOOL,
    "t_sampling": _one_of("logit_normal", "uniform"), "ctx_fade_prob": _PROB, "ctx_fade_min": _PROB,
    "self_ctx_prob": _PROB, "self_ctx_tmin": _PROB, "self_ctx_tmax": _PROB,
    "late_clips": _ints(0), "late_start_max": _ints(0), "late_batch": _ints(0), "first_batch": _ints(0),
    "fg_weight": _nums(0.0), "fg_threshold": _positive(),
    "distill_pairs": _ints(1), "distill_random_t": _PROB,
    "distill_first_pairs": _ints(0), "distill_first_batch": _ints(0), "distill_fg_weight": _nums(0.0),
    "distill_dmd_batch": _ints(0), "distill_dmd_weight": _nums(0.0), "distill_fake_lr_scale": _positive(),
}


def _check(obj: Any, rules: dict[str, Rule], where: str) -> None:
    for f in dataclasses.fields(obj):
        if f.name in rules:
            ok, allowed = rules[f.name]
            value = getattr(obj, f.name)
            if not ok(value):
                shown = list(value) if isinstance(value, tuple) else value
                raise UserError(f"{where}.{f.name} must be {allowed}, not {json.dumps(shown)}")


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def validate_model(model: ModelConfig) -> None:
    """Refuse model values the network or the sampler cannot run with (UserError naming the key)."""
    _check(model, MODEL_RULES, "model")


def validate(model: ModelConfig, train: TrainConfig) -> None:
    """Refuse values the model or the training loop cannot run with; each message names the key."""
    validate_model(model)
    _check(train, TRAIN_RULES, "train")
    for stage in ("vae", "teacher", "student"):
        _check(getattr(train, stage), STAGE_RULES, f"train.{stage}")
    m = model
    _require(m.height == m.width, f"model.height and model.width must be equal (the world renders square clips), not {m.height} and {m.width}")
    _require(m.height % (4 * m.patch) == 0 and m.height % 8 == 0,
             f"model.height must be a multiple of 8 and of 4 * model.patch ({4 * m.patch}), not {m.height}")
    _require(m.dit_width % 4 == 0 and m.dit_width % m.dit_heads == 0,
             f"model.dit_width must be a multiple of 4 and of model.dit_heads ({m.dit_heads}), not {m.dit_width}")
    _require(m.text_width % m.text_heads == 0, f"model.text_width must be a multiple of model.text_heads ({m.text_heads}), not {m.text_width}")
    for key in ("latent_mean", "latent_std"):
        n = len(getattr(m, key))
        _require(n in (0, m.latent_channels), f"model.{key} must have model.latent_channels ({m.latent_channels}) numbers or none, not {n}")
    _require(all(s > 0 for s in m.latent_std), "model.latent_std must be all > 0")
    _require(train.self_ctx_tmin <= train.self_ctx_tmax,
             f"train.self_ctx_tmin must be <= train.self_ctx_tmax, not {train.self_ctx_tmin} > {train.self_ctx_tmax}")
    _require((train.distill_first_pairs > 0) == (train.distill_first_batch > 0),
             "train.distill_first_pairs and train.distill_first_batch go together: set both above 0 (first-chunk "
             f"pairs and how many join each student step) or both to 0, not {train.distill_first_pairs} and {train.distill_first_batch}")
    _require(train.vae.batch >= train.clip_chunks,
             f"train.vae.batch counts chunks: it must be at least train.clip_chunks ({train.clip_chunks}), not {train.vae.batch}")
