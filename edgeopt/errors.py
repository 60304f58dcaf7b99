"""The error hierarchy: every user-facing failure is one of these, each with its exit code.

Exit codes (DESIGN.md): 0 ok · 1 internal error · 2 usage or profile error · 3 invalid or unsafe
input file · 4 model or op not supported by the chosen format · 5 no candidate fits / fidelity below
tolerance · 6 out of memory or disk · 7 device or transport error · 130 interrupted.
"""

from __future__ import annotations


class EdgeoptError(Exception):
    """Base class. ``exit_code`` is what the CLI exits with; the message is one line a user can act on."""

    exit_code = 1


class UsageError(EdgeoptError):
    """Bad flags or arguments, an unknown name, a missing optional dependency."""

    exit_code = 2


class ProfileError(UsageError):
    """A device profile that does not load or does not validate."""


class MissingDependencyError(UsageError):
    """An optional converter or runtime is not installed; the message names the pip command."""

    def __init__(self, what: str, extra: str, package: str | None = None):
        pkg = package or what
        super().__init__(
            f"{what} is not installed; install it with: pip install 'edgeopt[{extra}]' (or: pip install {pkg})"
        )


class InputFileError(EdgeoptError):
    """A model, checkpoint or artifact that is missing, corrupt or unsafe to load."""

    exit_code = 3


class UnsupportedError(EdgeoptError):
    """The model, or one of its ops, cannot be expressed in the chosen format."""

    exit_code = 4


class ExportError(UnsupportedError):
    """A converter failed; the message names the format and, where known, the op and layer."""


class NoFitError(EdgeoptError):
    """No candidate fits the profile, or every candidate built missed the fidelity tolerance."""

    exit_code = 5


class FidelityError(NoFitError):
    """An artifact's measured fidelity is below the tolerance (never a warning)."""


class ResourceError(EdgeoptError):
    """Out of memory or out of disk."""

    exit_code = 6


class DeviceError(EdgeoptError):
    """A device or transport failed: never turned into a latency number."""

    exit_code = 7


class BundleError(EdgeoptError):
    """The output location cannot be written (exists without --force, unwritable, is the input)."""

    exit_code = 2
