"""The torch-free runtime: bundle → frames, on whichever backend this machine has.

    from edgegen.runtime import Generator
    gen = Generator.load()                      # the shipped bundle, backend "auto"
    for frame in gen.stream("a red circle moving right", seed=0, frames=48):
        ...                                     # uint8 H×W×3, as soon as each chunk is decoded

Nothing here imports torch (a test proves it); backends are plug-ins (`edgegen.runtime.backends`).
"""

from edgegen.runtime.backends import Backend, Session, available_backends, resolve
from edgegen.runtime.generator import ChunkEvent, Generator, Hooks, StepEvent, Stream, TextEvent

__all__ = [
    "Backend", "ChunkEvent", "Generator", "Hooks", "Session", "StepEvent", "Stream", "TextEvent",
    "available_backends", "resolve",
]
