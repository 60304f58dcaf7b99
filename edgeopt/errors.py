"""The error hierarchy: every user-facing failure is one of these, each with its exit code.

Exit codes (DESIGN.md): 0 ok · 1 internal error · 2 usage or profile error · 3 invalid or unsafe
input file · 4 model or op not supported by the chosen format · 5 no candidate fits / fidelity below
tolerance · 6 out of memory or disk · 7 device or transport error · 130 interrupted.
"""

from __future__ import annotations

import re


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


_EDGE_OP = re.compile(r"<EdgeOpOverload: ([\w.]+)>")
_OP = re.compile(r"\b((?:aten|prims|quantized_decomposed|torchvision)(?:::|\.)[A-Za-z_][\w.]*)")
_WHERE = re.compile(r'File "([^"]+)", line (\d+), in (\w+)')


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def export_failure(fmt: str, step: str, e: BaseException) -> EdgeoptError:
    """One line from a converter's exception, for ``raise export_failure(...) from e`` in a packager.

    An ``ExportError`` (exit 4) naming the format, then the op and the source line of the layer where the
    converter's text names them (ExecuTorch's SpecViolationError, torch.export's data-dependent guards), then
    the exception's first line. A disk that filled up during the export (ENOSPC, EDQUOT, EFBIG anywhere in the
    exception chain) is a ``ResourceError`` (exit 6) instead: not a property of the model.

    ``fmt`` is the format ("pte", "onnx", "tflite"); ``step`` what failed ("lowering to XNNPACK").
    """
    import errno

    chain, seen = e, set()
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        if isinstance(chain, OSError) and chain.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            where = f" writing {chain.filename}" if chain.filename else ""
            return ResourceError(f"{fmt}: {step} ran out of disk{where} ({chain.strerror}); free some space, raise "
                                 "the file-size limit or pass --out elsewhere")
        chain = chain.__cause__ or chain.__context__
    text = _ANSI.sub("", str(e))
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    parts = []
    op = _EDGE_OP.search(text) or _OP.search(text)
    if op:
        parts.append(f"op {op.group(1).replace('::', '.')}")
    # The model's own source line: the first frame outside the installed libraries.
    where = next((m for m in _WHERE.finditer(text) if "site-packages" not in m.group(1)), None)
    if where:
        parts.append(f"at {where.group(1).rsplit('/', 1)[-1]}:{where.group(2)} in {where.group(3)}()")
    detail = f" ({', '.join(parts)})" if parts else ""
    return ExportError(f"{fmt}: {step} failed{detail}: {type(e).__name__}: {first[:300]}")
