"""Checkpoints: one safetensors file with the `ModelConfig` JSON in its metadata.

Tensor keys: `model.<module>.<param>` (the trained weights), `ema.<module>.<param>`,
`optim.<index>.<state>` (optimizer state by parameter index) and `rng.torch`. Metadata (strings):
`format`, `kind` (vae | teacher | student), `step`, `config` (ModelConfig JSON), and for resume
`train` (TrainConfig JSON), `optim_groups`, `rng_numpy`, `extra`. A shipped checkpoint keeps only
the EMA weights in fp16 under `model.` (`ship_checkpoint`). Writes are atomic (temp file + rename).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from edgegen.errors import UserError
from edgegen.files import atomic_path
from edgegen.model.config import ModelConfig, validate_model

FORMAT = "edgegen.checkpoint.v1"
MODEL_MODULES = ("vae", "text", "dit")  # what a model runs with; a checkpoint may hold training-only modules too


@dataclass
class Checkpoint:
    config: ModelConfig
    kind: str
    step: int
    model: dict[str, dict[str, torch.Tensor]]  # module name -> state dict
    ema: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    optimizer: dict[str, Any] | None = None
    rng_torch: torch.Tensor | None = None
    rng_cuda: torch.Tensor | None = None  # the current CUDA device's generator, for runs trained on a GPU
    rng_numpy: dict[str, Any] | None = None
    train: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    def weights(self, prefer_ema: bool = True) -> dict[str, dict[str, torch.Tensor]]:
        """The weights to run with: EMA where present (what ships), else the raw weights."""
        return self.ema if (prefer_ema and self.ema) else self.model


def _flatten(prefix: str, states: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    out = {}
    for module, sd in states.items():
        for k, v in sd.items():
            out[f"{prefix}.{module}.{k}"] = v.detach().cpu().clone().contiguous()
    return out


def module_states(modules: dict[str, nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    return {name: m.state_dict() for name, m in modules.items()}


def save_checkpoint(
    path: str | Path,
    modules: dict[str, nn.Module] | dict[str, dict[str, torch.Tensor]],
    config: ModelConfig,
    step: int,
    optimizer: torch.optim.Optimizer | None = None,
    ema: dict[str, nn.Module] | dict[str, dict[str, torch.Tensor]] | None = None,
    *,
    kind: str = "model",
    train: dict[str, Any] | None = None,
    rng_numpy: np.random.Generator | None = None,
    extra: dict[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> Path:
    """Write modules (+ EMA, optimizer, RNG state for exact resume) atomically to `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def states(ms: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
        return {k: (v.state_dict() if isinstance(v, nn.Module) else v) for k, v in ms.items()}

    tensors = _flatten("model", states(modules))
    if ema:
        tensors.update(_flatten("ema", states(ema)))
    if dtype is not None:
        tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    meta = {"format": FORMAT, "kind": kind, "step": str(step), "config": json.dumps(config.to_dict())}
    if optimizer is not None:
        sd = optimizer.state_dict()
        for idx, st in sd["state"].items():
            for k, v in st.items():
                tensors[f"optim.{idx}.{k}"] = torch.as_tensor(v).detach().clone().contiguous().cpu()
        meta["optim_groups"] = json.dumps(sd["param_groups"])
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            tensors["rng.cuda"] = torch.cuda.get_rng_state()
    if rng_numpy is not None:
        meta["rng_numpy"] = json.dumps(rng_numpy.bit_generator.state)
    if train is not None:
        meta["train"] = json.dumps(train)
    meta["extra"] = json.dumps(extra or {})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint; says in one line what is wrong if the file is not one."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; train the stage first or pass the right path")
    if path.is_dir():
        found = sorted(path.rglob("*.safetensors"))[:3]
        hint = f", e.g. {', '.join(str(p) for p in found)}" if found else ""
        raise UserError(f"checkpoint {path} is a folder; pass the .safetensors file{hint}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except Exception as exc:
        raise UserError(f"{path} is not a readable safetensors checkpoint ({exc})") from exc
    if meta.get("format") != FORMAT:
        raise UserError(f"{path} is not an edgegen checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    groups: dict[str, dict[str, dict[str, torch.Tensor]]] = {"model": {}, "ema": {}}
    optim_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        prefix, rest = key.split(".", 1)
        if prefix in groups:
            module, param = rest.split(".", 1)
            groups[prefix].setdefault(module, {})[param] = value
        elif prefix == "optim":
            idx, name = rest.split(".", 1)
            optim_state.setdefault(int(idx), {})[name] = value
    optimizer = None
    if "optim_groups" in meta:
        optimizer = {"state": optim_state, "param_groups": json.loads(meta["optim_groups"])}
    return Checkpoint(
        config=ModelConfig.from_dict(json.loads(meta["config"])),
        kind=meta.get("kind", "model"),
        step=int(meta.get("step", 0)),
        model=groups["model"],
        ema=groups["ema"],
        optimizer=optimizer,
        rng_torch=tensors.get("rng.torch"),
        rng_cuda=tensors.get("rng.cuda"),
        rng_numpy=json.loads(meta["rng_numpy"]) if "rng_numpy" in meta else None,
        train=json.loads(meta["train"]) if "train" in meta else None,
        extra=json.loads(meta.get("extra", "{}")),
        path=path,
    )


def read_config(path: str | Path) -> ModelConfig:
    """The `ModelConfig` of a checkpoint from its metadata alone (no tensors read)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as exc:
        raise UserError(f"{path} is not a readable safetensors checkpoint ({exc})") from exc
    if meta.get("format") != FORMAT or "config" not in meta:
        raise UserError(f"{path} is not an edgegen checkpoint (format {meta.get('format')!r}, expected {FORMAT!r})")
    return ModelConfig.from_dict(json.loads(meta["config"]))


def state_mismatch(module: nn.Module, state: dict[str, torch.Tensor] | None) -> str | None:
    """What keeps `state` from loading into `module` (the first differing tensor), or None if it fits."""
    if state is None:
        return "no weights for it"
    own = module.state_dict()
    for key, value in own.items():
        if key not in state:
            return f"{key} missing"
        if tuple(state[key].shape) != tuple(value.shape):
            return f"{key} is {tuple(state[key].shape)}, the config makes {tuple(value.shape)}"
    extra = sorted(set(state) - set(own))
    return f"{extra[0]} is not in the config's model" if extra else None


def load_weights(module: nn.Module, state: dict[str, torch.Tensor] | None, mismatch: str) -> None:
    """`module.load_state_dict(state)`, or a UserError: `mismatch` (what is wrong and what to do) and the first differing tensor."""
    problem = state_mismatch(module, state)
    if problem is not None:
        raise UserError(f"{mismatch} ({problem})")
    module.load_state_dict(state)  # type: ignore[arg-type]


SAMPLER_FIELDS = ("t_ctx", "t_ctx_from")  # how a stream runs, not what was trained: settable when shipping


def ship_checkpoint(src: str | Path, dst: str | Path, **sampler: Any) -> Path:
    """The shipped form of a trained checkpoint: EMA weights of the model's own modules only (no
    training-only ones such as a DMD fake score), fp16, no optimizer or RNG; `sampler` sets
    `SAMPLER_FIELDS` of its config (e.g. t_ctx=0.1, t_ctx_from=2), which the export carries into the bundle."""
    unknown = sorted(set(sampler) - set(SAMPLER_FIELDS))
    if unknown:
        raise ValueError(f"{', '.join(unknown)} cannot be set when shipping; only {', '.join(SAMPLER_FIELDS)}")
    ck = load_checkpoint(src)
    weights = {k: v for k, v in ck.weights().items() if k in MODEL_MODULES}
    config = dataclasses.replace(ck.config, **sampler)
    validate_model(config)
    return save_checkpoint(dst, weights, config, ck.step, kind=ck.kind, extra=ck.extra, dtype=torch.float16)


def with_vae_decoder(src: str | Path, vae_src: str | Path, dst: str | Path) -> Path:
    """`src` (a teacher or student) with the VAE decoder of `vae_src` (a decoder fine-tune that kept
    `src`'s encoder, so the latent space, and with it the DiT, is unchanged): EMA weights, fp16."""
    ck, vae_ck = load_checkpoint(src), load_checkpoint(vae_src)
    weights, vae = {k: v for k, v in ck.weights().items() if k in MODEL_MODULES}, vae_ck.weights().get("vae")
    if "vae" not in weights or vae is None:
        raise UserError(f"both checkpoints need VAE weights ({src}: {ck.kind}, {vae_src}: {vae_ck.kind})")
    encoder = {k: v for k, v in weights["vae"].items() if k.startswith("encoder.")}
    # compared at the precision the result is saved in: an fp32 run and its fp16 copy are one encoder
    if any(not torch.equal(v.half(), vae[k].half()) for k, v in encoder.items()):
        raise UserError(f"the VAE in {vae_src} has another encoder than {src}: its latents are not the DiT's; fine-tune the decoder only")
    weights["vae"] = {**weights["vae"], **{k: v for k, v in vae.items() if k.startswith("decoder.")}}
    extra = {**ck.extra, "vae_decoder": f"{Path(vae_src).name} ({vae_ck.kind} step {vae_ck.step})"}
    return save_checkpoint(dst, weights, ck.config, ck.step, kind=ck.kind, extra=extra, dtype=torch.float16)
