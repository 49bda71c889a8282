"""What gets exported: a trained checkpoint (or a config with fresh weights) → `ExportSource`.

The component modules, their I/O specs and sample inputs come from `edgegen.model.components`
(the single description of the DESIGN.md signatures); the sampler numbers from the ModelConfig
stored in the checkpoint; the reference clips for the end-to-end parity gate from the torch
reference pipeline (`edgegen.model.pipeline`), which is independent of the runtime's loop.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from edgegen.bundle import sha256_file
from edgegen.errors import UserError
from edgegen.export.pipeline import ComponentSource, ExportSource

log = logging.getLogger(__name__)

def default_checkpoint() -> Path:
    """The checkpoint shipped with the package (`edgegen/assets/default/checkpoint.safetensors`)."""
    import edgegen

    path = Path(edgegen.__file__).resolve().parent / "assets" / "default" / "checkpoint.safetensors"
    if not path.is_file():
        raise UserError(f"no shipped checkpoint at {path}; pass --checkpoint (e.g. runs/default/student/last.safetensors)")
    return path


def parity_prompts() -> tuple[str, ...]:
    """Real prompts for the parity run: two from the training split, one held out."""
    from edgegen.world import prompts

    return (*prompts("train", 2, seed=0), *prompts("heldout", 1, seed=0))


def source_from_checkpoint(path: str | Path) -> ExportSource:
    """The student (or teacher) checkpoint at `path`, ready to export."""
    from edgegen.model.components import load_components

    path = Path(path)
    config, components, kind = load_components(path)
    if "denoiser" not in components or "text_encoder" not in components:
        raise UserError(f"{path} is a {kind} checkpoint without the DiT and text encoder; export a student checkpoint")
    if kind == "teacher":
        log.warning("%s is a teacher checkpoint: the runtime does not apply classifier-free guidance, "
                    "so its clips will be unguided; export the distilled student for shipping", path.name)
    return _source(config, components, kind, checkpoint_sha256=sha256_file(path))


def source_from_config(config: str | Path, seed: int = 0, jitter: float = 0.02) -> ExportSource:
    """A config's model with random weights (tests, and the export toolchain without training).

    The model's init is zero in places (adaLN-zero, identity residual blocks), which would make the
    velocity exactly 0 and every parity check trivially pass; every parameter is therefore jittered
    with N(0, jitter²) so each path of every graph carries signal.
    """
    import torch

    from edgegen.model.components import build_components, build_modules
    from edgegen.model.config import load_config
    from edgegen.model.data import tokenizer_for

    cfg, _ = load_config(str(config))
    if not cfg.vocab_size:
        cfg.vocab_size = tokenizer_for(cfg).vocab_size
    torch.manual_seed(seed)
    modules = build_modules(cfg)
    with torch.no_grad():
        for module in modules.values():
            for p in module.parameters():
                p.add_(jitter * torch.randn_like(p))
    components = build_components(cfg, modules)
    return _source(cfg, components, "student", checkpoint_sha256=f"untrained:{cfg.name}:seed{seed}")


def _source(cfg, components, kind: str, checkpoint_sha256: str) -> ExportSource:
    from edgegen.model.components import component_specs
    from edgegen.model.data import tokenizer_for

    specs = component_specs(cfg)
    comps = {}
    for name, module in components.items():
        spec = specs[name]
        sample = spec.sample_inputs(batch=2, seed=0)
        comps[name] = ComponentSource(module, spec.inputs, spec.outputs, tuple(sample[s.name] for s in spec.inputs))
    steps = tuple(sorted({*cfg.student_steps, cfg.default_steps, cfg.teacher_steps}))
    h, w = cfg.latent_size
    return ExportSource(
        name=cfg.name,
        config=cfg.to_dict(),
        components=comps,
        tokenizer=tokenizer_for(cfg),
        checkpoint_sha256=checkpoint_sha256,
        video={"height": cfg.height, "width": cfg.width, "chunk_frames": cfg.chunk_frames, "fps": cfg.fps},
        latent={"channels": cfg.latent_channels, "height": h, "width": w},
        cache={"slots": cfg.window, "tokens_per_slot": cfg.tokens_per_chunk},
        steps=steps,
        default_steps=cfg.default_steps,
        shift=cfg.shift,
        t_ctx=cfg.t_ctx,
        t_ctx_from=cfg.t_ctx_from,
        prompts=parity_prompts(),
        reference=_reference(cfg, components, kind),
    )


def _reference(cfg, components, kind: str):
    """Clips from the torch reference pipeline (no guidance: the runtime applies none)."""
    from edgegen.model.data import tokenizer_for
    from edgegen.model.pipeline import Model, generate_video

    model = Model(cfg, tokenizer_for(cfg), components, kind)

    def clip(prompt: str, seed: int, frames: int, steps: int) -> np.ndarray:
        return generate_video(model, prompt, seed=seed, frames=frames, steps=steps, guidance=1.0)

    return clip
