"""`edgegen build [BUNDLE] --backend tensorrt`: compile and cache TensorRT engines ahead of time.

Engines are a cache keyed by everything that makes them valid (runtime/engine_cache.py), so this
command only saves the first `generate` from waiting on the builder; it is safe to rerun (valid
engines are kept, stale ones rebuilt with the reason shown) and to run concurrently. After each
build it loads the engine it wrote back from disk (checksum, then TensorRT deserialization), so
a "built" line means the engine loads on this machine.
"""

from __future__ import annotations

import logging
import shutil
import sys
from pathlib import Path

import typer

from edgegen.errors import UserError

log = logging.getLogger(__name__)


class _Progress:
    """TensorRT's build phases on one self-rewriting stderr line (only on a terminal)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.live = sys.stderr.isatty()

    def __call__(self, phase: str, step: int, total: int) -> bool:
        try:
            if self.live:
                text = f"  {self.label}: {phase} {step}/{total}" if total else f"  {self.label}: {phase}"
                width = shutil.get_terminal_size((100, 20)).columns - 1
                sys.stderr.write("\r\x1b[2K" + text[:width])
                sys.stderr.flush()
            return True
        except KeyboardInterrupt:  # returning False makes TensorRT cancel the build (then: exit 130)
            return False

    def done(self) -> None:
        if self.live:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()


def _precisions(bundle: object, backend: object, requested: str | None) -> list[str]:
    from edgegen.runtime.generator import choose_precision

    if requested is None:
        return [choose_precision(bundle, backend)[0]]  # what `generate` would pick
    if requested == "all":
        chosen = [p for p in backend.precisions if p in bundle.precisions]
        if not chosen:
            raise UserError(f"TensorRT on this GPU runs {', '.join(backend.precisions)}; the bundle has {', '.join(bundle.precisions)}")
        return chosen
    return [choose_precision(bundle, backend, p)[0] for p in requested.split(",")]


def check_backend(backend: str) -> None:
    """Only tensorrt builds ahead of time; an unknown name lists the valid ones."""
    from edgegen.runtime import backends

    if backend not in backends.names():
        raise UserError(f"unknown --backend {backend!r}; valid: {', '.join(backends.names())} (only tensorrt builds engines ahead of time)")
    if backend != "tensorrt":
        why = "compiles when it loads" if backend in ("trt-rtx", "ort-cuda") else "has nothing to compile"
        raise UserError(f"edgegen build compiles TensorRT engines (--backend tensorrt); {backend} {why}, nothing to build ahead")


def build(
    bundle_path: Path = typer.Argument(None, metavar="BUNDLE", help="Bundle folder (default: the shipped bundle)."),
    backend: str = typer.Option("tensorrt", "--backend", "-b", help="Only tensorrt compiles ahead of time (trt-rtx and ort-cuda compile when they load)."),
    precision: str = typer.Option(None, "--precision", "-p", help="fp32, fp16, int8, fp8, a comma list, or all (default: the precision generate would use)."),
    workspace_mb: int = typer.Option(1024, "--workspace-mb", min=1, help="TensorRT builder workspace limit in MiB (Jetson 8 GB: keep 1024 or less)."),
    opt_level: int = typer.Option(3, "--opt-level", min=0, max=5, help="TensorRT builder optimization level, 0-5 (higher: slower build, maybe faster engine)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even when a valid cached engine exists."),
) -> None:
    """Build and cache a TensorRT engine for every component of the bundle, then load each back."""
    from edgegen.bundle import default_bundle_path, load_bundle
    from edgegen.runtime.backends.tensorrt import TensorRTBackend, deserialize
    from edgegen.runtime.engine_cache import MIB, BuildSettings

    check_backend(backend)
    impl = TensorRTBackend(settings=BuildSettings(workspace_bytes=workspace_mb * MIB, optimization_level=opt_level))
    ok, why = impl.available()
    if not ok:
        raise UserError(f"cannot build TensorRT engines: {why}")
    bundle = load_bundle(default_bundle_path() if bundle_path is None else bundle_path)
    env = impl.environment()
    log.info(
        "TensorRT %s on %s (sm %s), workspace %d MiB, optimization level %d; cache %s",
        env.tensorrt, env.gpu, env.compute_capability, workspace_mb, opt_level, impl.cache.root,
    )
    for prec in _precisions(bundle, impl, precision):
        components = list(bundle.components[prec])
        for i, component in enumerate(components, 1):
            label = f"[{i}/{len(components)}] {component} ({prec})"
            progress = _Progress(label)
            try:
                result = impl.ensure_engine(bundle, component, prec, force=force, progress=progress)
            finally:
                progress.done()
            # Check what is on disk, not what is in memory: checksum against the sidecar, then TensorRT.
            found = impl.cache.load(result.spec)
            if found.status != "hit" or found.plan is None:
                raise UserError(f"{component} ({prec}): the engine just written does not read back ({found.reason}); check {impl.cache.root}")
            engine = deserialize(found.plan, found.path).engine
            state = f"built in {result.seconds:.0f} s" if result.built else "cached, valid"
            typer.echo(
                f"{label}: {state}, {len(found.plan) / MIB:.1f} MiB, loads ({engine.num_io_tensors} I/O tensors): {found.path}"
            )


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("build")(build)
