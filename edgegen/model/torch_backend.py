"""The `torch` runtime backend: runs the component modules of `edgegen.model.components` directly.

A reference, not a fast path: it lets the runtime's streaming loop run on the training code's
own modules (no ONNX in between), so a difference between `torch` and an ONNX backend is an
export problem, not a loop problem. The weights come from the checkpoint a bundle was exported
from: `checkpoint.safetensors` beside the manifest (the shipped default bundle has it), else the
shipped default checkpoint, and in both cases its sha256 must match the manifest's provenance.
A checkpoint path can also be passed instead of a bundle.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.errors import TRAIN_EXTRA_INSTALL, BackendUnavailable, BundleError

CHECKPOINT = "checkpoint.safetensors"
_lock = threading.Lock()
_loaded: dict[tuple[str, float], tuple[Any, dict[str, Any]]] = {}  # (path, mtime) -> (config, components)


def shipped_checkpoint() -> Path:
    import edgegen

    return Path(edgegen.__file__).resolve().parent / "assets" / "default" / CHECKPOINT


def checkpoint_for(bundle_or_checkpoint: Any) -> Path:
    """The checkpoint a bundle was exported from (checked against its provenance), or the path given."""
    if isinstance(bundle_or_checkpoint, (str, Path)):
        path = Path(bundle_or_checkpoint)
        if path.is_file():
            return path
        from edgegen.bundle import load_bundle

        bundle_or_checkpoint = load_bundle(path)
    bundle = bundle_or_checkpoint
    want = str(bundle.manifest.get("provenance", {}).get("checkpoint_sha256", ""))
    from edgegen.bundle import sha256_file

    for candidate in (bundle.path / CHECKPOINT, shipped_checkpoint()):
        if candidate.is_file() and (not want or sha256_file(candidate) == want):
            return candidate
    raise BundleError(
        f"the torch backend needs the checkpoint bundle {bundle.path} was exported from (sha256 {want[:12]}...); "
        f"copy it to {bundle.path / CHECKPOINT} or use an ONNX backend (--backend ort-cpu)"
    )


def _components(path: Path) -> tuple[Any, dict[str, Any]]:
    from edgegen.model.components import load_components

    key = (str(path.resolve()), path.stat().st_mtime)
    with _lock:
        if key not in _loaded:
            config, components, _kind = load_components(path)
            _loaded[key] = (config, components)
        return _loaded[key]


class TorchSession:
    """One component module; inputs and outputs by the names of `component_specs`."""

    def __init__(self, module: Any, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> None:
        self.module = module
        self.inputs = inputs
        self.outputs = outputs

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        missing = [n for n in self.inputs if n not in feeds]
        if missing:
            raise BundleError(f"torch backend: missing inputs {missing}; expected {list(self.inputs)}")
        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.inputs))
        if isinstance(out, torch.Tensor):  # one-output components
            out = (out,)
        return {name: t.numpy() for name, t in zip(self.outputs, out, strict=True)}


class TorchBackend:
    name = "torch"
    precisions = ("fp32",)

    def available(self) -> tuple[bool, str]:
        try:
            import torch
        except ImportError:
            return False, f"torch is not installed; {TRAIN_EXTRA_INSTALL}"
        return True, f"torch {torch.__version__} on the CPU (reference, fp32)"

    def open(self, bundle: Any, component: str, precision: str = "fp32") -> TorchSession:
        if precision not in self.precisions:
            raise BackendUnavailable(f"the torch backend runs only fp32, not {precision!r}; use --precision fp32")
        from edgegen.model.components import component_specs

        config, components = _components(checkpoint_for(bundle))
        if component not in components:
            raise BundleError(f"the checkpoint has no {component!r} component; it has {', '.join(components)}")
        spec = component_specs(config)[component]
        return TorchSession(components[component], tuple(s.name for s in spec.inputs), tuple(s.name for s in spec.outputs))
