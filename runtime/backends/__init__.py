"""Backends: the plug-in protocol and the registry (name → "module:Class", imported lazily).

A backend turns one component of a bundle at one precision into a `Session`; the streaming loop
(`edgegen.runtime.generator`) only ever calls `Session.run`, so it never knows which library is
underneath. Fast paths (I/O binding, CUDA graphs, device-resident buffers) are the backend's
business, behind the same call.

Registering a backend is one line in `REGISTRY`; the module is imported only when the backend is
asked for, so a missing optional library (onnxruntime-gpu, tensorrt, torch) costs nothing until
then, and asking for it explains what to install. `auto` picks the best available backend for
this machine and logs which it chose and why; it never falls back silently after a failure.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from edgegen.errors import BackendUnavailable, UserError

if TYPE_CHECKING:
    from edgegen.bundle import Bundle

log = logging.getLogger(__name__)

AUTO = "auto"

# name -> "module:Class". The torch backend lives with the model so nothing under runtime/ imports torch.
REGISTRY: dict[str, str] = {
    "ort-cpu": "edgegen.runtime.backends.ort_cpu:OrtCpuBackend",
    "ort-cuda": "edgegen.runtime.backends.ort_cuda:OrtCudaBackend",
    "tensorrt": "edgegen.runtime.backends.tensorrt:TensorRTBackend",
    "trt-rtx": "edgegen.runtime.backends.trt_rtx:TrtRtxBackend",
    "torch": "edgegen.model.torch_backend:TorchBackend",
}

# What `auto` tries, best first. torch is a reference, never picked automatically.
AUTO_ORDER: tuple[str, ...] = ("tensorrt", "trt-rtx", "ort-cuda", "ort-cpu")

# How to get each backend when its module cannot be imported at all.
INSTALL_HINTS: dict[str, str] = {
    "ort-cpu": 'pip install "edgegen"',
    "ort-cuda": 'pip install "edgegen[gpu]", then pip uninstall -y onnxruntime && pip install --force-reinstall onnxruntime-gpu (and an NVIDIA GPU with CUDA 12)',
    "tensorrt": 'pip install "edgegen[tensorrt]" (and an NVIDIA GPU)',
    "trt-rtx": "pip install onnxruntime-ep-nv-tensorrt-rtx (and an NVIDIA RTX GPU, compute capability 7.5, 8.6, 8.9 or 12.x)",
    "torch": 'pip install torch==2.13.0, then pip install "edgegen[train]" (torch first and pinned, as CI does)',
}


@runtime_checkable
class Session(Protocol):
    """One component, ready to run. `run` must be safe to call from several threads at once."""

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Inputs by manifest name → outputs by manifest name (host numpy arrays)."""
        ...


@runtime_checkable
class Backend(Protocol):
    """A way to run bundle components. Instances are cheap; `open` does the work."""

    name: str
    # Precisions this backend can run in default order (first wins; the default-precision rule walks
    # this list): measured fastest first on ort-cpu, a reasoned order on the GPU backends (unmeasured).
    precisions: tuple[str, ...]

    def available(self) -> tuple[bool, str]:
        """(usable here?, reason): the reason says what is missing and how to install it."""
        ...

    def open(self, bundle: Bundle, component: str, precision: str) -> Session:
        """A session for `component` at `precision`; checks the model's I/O names against the manifest."""
        ...


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def _load_class(name: str) -> tuple[type | None, str]:
    """(class, "") or (None, why it cannot be imported and how to install it)."""
    module_name, _, class_name = REGISTRY[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return None, f"cannot import {exc.name or module_name}; {INSTALL_HINTS[name]}"
    return getattr(module, class_name), ""


def create(name: str) -> Backend:
    """An instance of a registered backend (no availability check): unknown names list the valid ones."""
    if name not in REGISTRY:
        raise UserError(f"unknown backend {name!r}; valid: {AUTO}, {', '.join(REGISTRY)}")
    cls, why = _load_class(name)
    if cls is None:
        raise BackendUnavailable(f"backend {name!r} is not available: {why}")
    return cls()


def status(name: str) -> tuple[bool, str]:
    """(available, reason) for one backend, importing it if needed; the reason says what to install."""
    if name not in REGISTRY:
        raise UserError(f"unknown backend {name!r}; valid: {AUTO}, {', '.join(REGISTRY)}")
    cls, why = _load_class(name)
    if cls is None:
        return False, why
    return cls().available()


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine, in registry order."""
    return [name for name in REGISTRY if status(name)[0]]


def resolve(name: str = AUTO) -> Backend:
    """The backend called `name`, or for `auto` the best available one; raises if unusable."""
    if name == AUTO:
        skipped = []
        for candidate in AUTO_ORDER:
            ok, reason = status(candidate)
            if ok:
                note = f"; not available here: {', '.join(skipped)} (--backend NAME says why)" if skipped else ""
                log.info("backend auto: using %s (%s)%s", candidate, reason, note)
                return create(candidate)
            log.debug("backend auto: skipping %s: %s", candidate, reason)
            skipped.append(candidate)
        raise BackendUnavailable("no backend is available: " + "; ".join(f"{c}: {status(c)[1]}" for c in AUTO_ORDER))
    backend = create(name)
    ok, reason = backend.available()
    if not ok:
        raise BackendUnavailable(f"backend {name!r} is not available: {reason}")
    return backend
