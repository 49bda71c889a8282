"""The one config that travels inside every checkpoint (`ModelConfig`) and the training recipe.

A config file in `edgegen/configs/NAME.json` is `{"model": {...ModelConfig...}, "train": {...TrainConfig...}}`.
`ModelConfig` is everything needed to rebuild the networks and run them (geometry, widths, latent
normalisation, sampler numbers); `TrainConfig` is only how to train them and is not needed at export.
"""

from __future__ import annotations

import dataclasses
import json
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
        return _from_dict(cls, data)


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
    # student (reflow distillation of the guided teacher)
    distill_pairs: int = 1024  # teacher rollouts cached on disk
    distill_random_t: float = 0.25  # fraction of samples at uniform t (rest at the 1/2/4-step times)
    vae: StageConfig = field(default_factory=lambda: StageConfig(batch=32, lr=1e-3, steps=20000))
    teacher: StageConfig = field(default_factory=lambda: StageConfig(batch=64, lr=5e-4, steps=40000))
    student: StageConfig = field(default_factory=lambda: StageConfig(batch=64, lr=1e-4, steps=5000))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        data = dict(data)
        for stage in ("vae", "teacher", "student"):
            if stage in data:
                data[stage] = _from_dict(StageConfig, data[stage])
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for k, v in data.items():
        kwargs[k] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def config_path(name: str) -> Path:
    """A config name (`default`, `tiny`, `large`) or a path to a JSON file."""
    path = Path(name)
    if path.suffix == ".json" and path.exists():
        return path
    path = CONFIG_DIR / f"{name}.json"
    if not path.exists():
        known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.json")))
        raise UserError(f"no config named {name!r}; use one of: {known}, or a path to a .json file")
    return path


def load_config(name: str) -> tuple[ModelConfig, TrainConfig]:
    data = json.loads(config_path(name).read_text())
    model = ModelConfig.from_dict(data.get("model", {}))
    train = TrainConfig.from_dict(data.get("train", {}))
    return model, train
