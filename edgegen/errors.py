"""User-facing errors.

Anything a user can fix (a bad prompt, a missing file, a wrong flag) is raised as a `UserError`
whose message is one line that names the problem and says what to do. The CLI prints it without
a traceback and exits non-zero. Internal invariants stay `assert`s.
"""


TRAIN_EXTRA_INSTALL = "pip install torch==2.13.0 && pip install 'edgegen[train]'"  # torch first, pinned: unpinned pulls CUDA


class UserError(Exception):
    """A problem the user can fix; the message is shown as one line."""

    exit_code = 2


class PromptError(UserError, ValueError):
    """A prompt the world cannot parse (unknown word, empty, too many objects, ...)."""


class BundleError(UserError):
    """A bundle that cannot be loaded (missing/tampered file, unknown schema, bad I/O names)."""


class BackendUnavailable(UserError):
    """A backend that is not installed or cannot run on this machine."""


class Interrupted(Exception):
    """Raised from a signal handler (SIGTERM) so `finally` blocks and atomic writers clean up."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum


def require_train_extra(what: str, modules: tuple[str, ...] = ("torch", "safetensors")) -> None:
    """A one-line UserError saying how to install the train extra if `what` cannot import `modules`."""
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            raise UserError(f"{what} needs PyTorch and the train extra ({module} is not installed): {TRAIN_EXTRA_INSTALL}") from None
