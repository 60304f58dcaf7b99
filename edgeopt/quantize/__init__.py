"""Quantization schemes as data. Each packager maps a scheme onto its own toolchain.

A scheme says what is quantized and how (bits, granularity, activations, calibration, layers kept
at higher precision); it never names a toolchain preset string.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from edgeopt.formats import Precision


class Activations(str, enum.Enum):
    """How activations are treated at run time."""

    FLOAT = "float"  # weight-only, or no quantization
    DYNAMIC = "dynamic"  # int8, scales computed per run from the tensor's range
    STATIC = "static"  # int8, scales fixed from calibration data


class Granularity(str, enum.Enum):
    PER_TENSOR = "per_tensor"
    PER_CHANNEL = "per_channel"
    PER_GROUP = "per_group"


@dataclass(frozen=True)
class QuantScheme:
    """What a packager must produce.

    Attributes:
        precision: the weight precision of the linear layers.
        activations: float, dynamic int8 or static int8 (calibrated).
        granularity: weight-scale granularity for linear layers.
        group_size: elements per scale for PER_GROUP.
        quantize_embeddings: store embedding tables at int8 (row-wise) too.
        keep_float: module names (of the wrapped model) left at float on purpose, e.g. sensitive layers.
        symmetric: symmetric weights (zero point 0).
    """

    precision: Precision
    activations: Activations = Activations.FLOAT
    granularity: Granularity = Granularity.PER_CHANNEL
    group_size: int | None = None
    quantize_embeddings: bool = False
    keep_float: tuple[str, ...] = field(default_factory=tuple)
    symmetric: bool = True

    @property
    def is_quantized(self) -> bool:
        return self.precision in (Precision.INT8, Precision.INT4)

    def with_keep_float(self, names: tuple[str, ...]) -> "QuantScheme":
        return replace(self, keep_float=tuple(sorted(set(self.keep_float) | set(names))))

    def describe(self) -> str:
        """One line a person reads: ``int8 weights per-channel, dynamic int8 activations, embeddings int8``."""
        if not self.is_quantized:
            return f"{self.precision.value} weights and activations"
        parts = [f"{self.precision.value} weights {self.granularity.value.replace('_', '-')}"]
        if self.group_size:
            parts[0] += f" (group {self.group_size})"
        parts.append({"float": "float activations", "dynamic": "dynamic int8 activations", "static": "static int8 activations (calibrated)"}[self.activations.value])
        if self.quantize_embeddings:
            # int4: a decoder LM's token table is int4 in groups (every format); an encoder's tables stay int8
            parts.append("embeddings int8" if self.precision is not Precision.INT4 else
                         "embeddings quantized (int4 groups in LMs, int8 in encoders)")
        if self.keep_float:
            parts.append(f"{len(self.keep_float)} layer(s) kept float")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {
            "precision": self.precision.value,
            "activations": self.activations.value,
            "granularity": self.granularity.value,
            "group_size": self.group_size,
            "quantize_embeddings": self.quantize_embeddings,
            "keep_float": list(self.keep_float),
            "symmetric": self.symmetric,
            "description": self.describe(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "QuantScheme":
        return cls(
            precision=Precision(d["precision"]),
            activations=Activations(d["activations"]),
            granularity=Granularity(d["granularity"]),
            group_size=d.get("group_size"),
            quantize_embeddings=bool(d.get("quantize_embeddings", False)),
            keep_float=tuple(d.get("keep_float", ())),
            symmetric=bool(d.get("symmetric", True)),
        )


def default_scheme(precision: Precision) -> QuantScheme:
    """The scheme edgeopt uses for a precision unless the plan says otherwise.

    int8: dynamic int8 activations with per-channel int8 weights and int8 embeddings — the accurate,
    calibration-free default (per-tensor weights lose ~4 points of cosine on MiniLM).
    int4: int4 weights in groups of 32 with dynamic int8 activations; embeddings int8 in encoders, int4 groups
    in decoder LMs.
    """
    if precision is Precision.INT8:
        return QuantScheme(Precision.INT8, Activations.DYNAMIC, Granularity.PER_CHANNEL, quantize_embeddings=True)
    if precision is Precision.INT4:
        return QuantScheme(Precision.INT4, Activations.DYNAMIC, Granularity.PER_GROUP, group_size=32, quantize_embeddings=True)
    return QuantScheme(precision)
