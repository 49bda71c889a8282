"""The procedural video world the model learns: a prompt grammar, scenes, splits and a renderer.

Torch-free (the runtime imports it). Submodules: `scene` (attributes, `Scene`, splits),
`grammar` (vocabulary, `parse_prompt`, `caption`), `renderer` (frames from a scene and a seed).
"""

from edgegen.world.grammar import VOCABULARY, caption, parse_prompt, prompts
from edgegen.world.renderer import render, render_range
from edgegen.world.scene import (
    COLOURS,
    MOTIONS,
    SHAPES,
    SIZES,
    ObjectSpec,
    Scene,
    sample_scene,
    split_of,
)

__all__ = [
    "COLOURS",
    "MOTIONS",
    "SHAPES",
    "SIZES",
    "VOCABULARY",
    "ObjectSpec",
    "Scene",
    "caption",
    "parse_prompt",
    "prompts",
    "render",
    "render_range",
    "sample_scene",
    "split_of",
]
