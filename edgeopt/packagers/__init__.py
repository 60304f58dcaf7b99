"""Packagers: one module per format, each registering itself and declaring what it can do as data.

A packager turns a (transformed) model and a ``QuantScheme`` into an ``Artifact`` and can run that
artifact in its real runtime on the host (for verification). Modules here must stay light at import:
converters and runtimes are imported inside the functions that use them.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from edgeopt.formats import Format, Precision, Runtime, Target
from edgeopt.quantize import Activations, QuantScheme
from edgeopt.registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from edgeopt.models import LoadedModel


@dataclass(frozen=True)
class Capabilities:
    """What a packager can build; the planner reads this instead of knowing formats."""

    precisions: frozenset[Precision]
    activations: frozenset[Activations] = frozenset({Activations.FLOAT, Activations.DYNAMIC})
    supports_pruned: bool = True
    notes: dict[Precision, str] = field(default_factory=dict)  # why a precision is missing
    # where the runtime can execute what this packager builds (its device runner has a backend for each)
    targets: frozenset[Target] = frozenset({Target.CPU})


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    shape: tuple[int, ...]

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class Coverage:
    """Which weight tensors a quantized artifact really stores quantized.

    ``quantized`` and ``kept_float`` hold module names of the wrapped model; ``kept_float`` maps each
    to the reason (``kept float: sensitive layer``, ``not quantized by the toolchain``).
    """

    quantized: tuple[str, ...]
    kept_float: dict[str, str]

    @property
    def total(self) -> int:
        return len(self.quantized) + len(self.kept_float)

    def unexpected(self) -> dict[str, str]:
        """Layers left float that nobody asked to keep float: a failed quantization, never a warning."""
        return {k: v for k, v in self.kept_float.items() if not v.startswith("kept float")}

    def to_dict(self) -> dict:
        return {
            "quantized_count": len(self.quantized),
            "float_count": len(self.kept_float),
            "total": self.total,
            "quantized": list(self.quantized),
            "kept_float": dict(self.kept_float),
        }


@dataclass
class Artifact:
    """A file a packager wrote, with what is needed to run, verify and describe it."""

    path: Path
    format: Format
    precision: Precision
    scheme: QuantScheme
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    coverage: Coverage | None = None
    extra_files: tuple[Path, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)
    build_seconds: float = 0.0
    lengths: Any = None  # edgeopt.lengths.Lengths: how the sequence length varies (None: static shapes)

    @property
    def runtime(self) -> Runtime:
        return self.format.runtime


class Packager(Protocol):
    runtime: Runtime
    capabilities: Capabilities

    def check_available(self) -> None:
        """Raise MissingDependencyError naming the pip install when the converter or runtime is missing."""

    def export(self, loaded: "LoadedModel", scheme: QuantScheme, work_dir: Path, *, shapes: tuple[int, int],
               calibration: list[tuple]) -> Artifact:
        """Write the artifact for ``loaded`` under ``work_dir`` at ``shapes`` = (batch, seq_len)."""

    def run(self, artifact: Artifact, samples: list[tuple["np.ndarray", ...]]) -> list[list["np.ndarray"]]:
        """Run the artifact in its real runtime on the host: outputs per sample, in manifest order."""

    def toolchain_versions(self) -> dict[str, str]:
        """Versions of the converter and runtime packages, for the manifest."""


PACKAGERS: Registry[Packager] = Registry("packager")
_loaded = False


def register(packager: Packager) -> Packager:
    """Called by each packager module at import."""
    return PACKAGERS.register(packager.runtime.value, packager)


def _load_all() -> None:
    global _loaded
    if _loaded:
        return
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True


def get_packager(runtime: Runtime) -> Packager:
    """The packager for ``runtime`` (UsageError listing the available ones when there is none)."""
    _load_all()
    return PACKAGERS.get(runtime.value)


def available_runtimes() -> list[Runtime]:
    """Runtimes that have a packager module (installed converters or not)."""
    _load_all()
    return [Runtime(name) for name in PACKAGERS.names()]
