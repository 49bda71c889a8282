"""edgegen: edge-optimized, compressed text-to-video generation.

Importing this package is cheap and torch-free: the runtime (`edgegen.runtime`) builds on it.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("edgegen")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
