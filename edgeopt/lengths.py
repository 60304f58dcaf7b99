"""Input lengths as the app sends them: one text encoder artifact, many sequence lengths.

A text encoder (``input_ids`` / ``attention_mask`` / ``token_type_ids``) is exported with its sequence
axis free up to the profile's ``seq_len`` where the format can (ONNX dynamic axes, ExecuTorch bounded
dynamic shapes), and as one signature per length bucket where it cannot (TFLite: 16/32/64/.../seq_len).
An app then trims the tokenizer's padding and runs at the real length (or the smallest bucket that
holds it) instead of paying for ``seq_len`` tokens on every query.

``Lengths`` is the one description of that: written into the manifest's artifact entry as ``lengths``,
read by the pipeline's verification, the bundle README and the device runner (which re-implements
``fit`` with the standard library, as it may not import edgeopt). numpy only here; no converters.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from edgeopt.models import LoadedModel

SEQ_AXIS = 1  # [batch, seq] inputs; [batch, seq, hidden] outputs
MIN_BUCKET = 16
DYNAMIC_MIN = 2  # torch.export specializes a dimension of size 0 or 1; [CLS] + [SEP] is 2 tokens anyway
TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MASK = "attention_mask"


class LengthMode(str, enum.Enum):
    STATIC = "static"  # every input padded to seq_len
    DYNAMIC = "dynamic"  # any length in [min, max]
    BUCKETS = "buckets"  # one fixed-length entry point per bucket (TFLite signatures)


@dataclass(frozen=True)
class Lengths:
    """How an artifact takes its sequence length.

    ``inputs`` / ``outputs`` name the tensors whose axis ``axis`` is the sequence; ``signatures`` maps each
    bucket to its entry point (TFLite signature key) in BUCKETS mode.
    """

    mode: LengthMode
    max: int
    min: int = 1
    buckets: tuple[int, ...] = ()
    signatures: dict[int, str] = field(default_factory=dict)
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    axis: int = SEQ_AXIS

    @property
    def variable(self) -> bool:
        return self.mode is not LengthMode.STATIC

    def fit(self, n: int) -> int:
        """The length to run ``n`` real tokens at: ``n`` itself (dynamic, raised to ``min``), the smallest
        bucket that holds it, or ``max`` (static).

        Raises:
            ValueError: ``n`` exceeds ``max`` (the message says what to do).
        """
        if n > self.max:
            raise ValueError(f"{n} tokens exceed the artifact's maximum length {self.max}; truncate the input "
                             f"to {self.max} tokens (or package with a larger shapes.seq_len)")
        if self.mode is LengthMode.DYNAMIC:
            return max(n, self.min)
        if self.mode is LengthMode.BUCKETS:
            return next(b for b in self.buckets if b >= n)
        return self.max

    def probe_lengths(self) -> tuple[int, ...]:
        """Lengths verification must cover besides the samples' own: every bucket, or both bounds."""
        if self.mode is LengthMode.BUCKETS:
            return self.buckets
        if self.mode is LengthMode.DYNAMIC:
            return (self.min, self.max)
        return (self.max,)

    def to_dict(self) -> dict:
        out = {"mode": self.mode.value, "min": self.min, "max": self.max, "axis": self.axis,
               "inputs": list(self.inputs), "outputs": list(self.outputs)}
        if self.variable:
            out["mask"] = MASK  # the input whose last kept position gives the real length
        if self.mode is LengthMode.BUCKETS:
            out["buckets"] = list(self.buckets)
            out["signatures"] = {str(b): self.signatures[b] for b in self.buckets}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> Lengths:
        buckets = tuple(int(b) for b in data.get("buckets", ()))
        return cls(LengthMode(data["mode"]), int(data["max"]), int(data.get("min", 1)), buckets,
                   {int(k): str(v) for k, v in (data.get("signatures") or {}).items()},
                   tuple(data.get("inputs", ())), tuple(data.get("outputs", ())), int(data.get("axis", SEQ_AXIS)))


def buckets_for(seq_len: int) -> tuple[int, ...]:
    """Powers of two from 16 below ``seq_len``, then ``seq_len`` itself: 16/32/64/128 for 128."""
    out, b = [], MIN_BUCKET
    while b < seq_len:
        out.append(b)
        b *= 2
    return (*out, seq_len)


def text_encoder_axes(loaded: LoadedModel) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(inputs, outputs) with a sequence axis when ``loaded`` is a Hugging Face text encoder, else None.

    Only these get variable lengths: a ``file.py:factory`` module or a non-text input keeps its static shape,
    and decoder LMs have their own KV-cache exports.
    """
    from edgeopt.models import Family

    names = tuple(loaded.input_names)
    if loaded.family is not Family.ENCODER or loaded.config is None or MASK not in names:
        return None
    if not set(names) <= set(TEXT_INPUTS):
        return None
    from edgeopt.families import PER_TOKEN_OUTPUTS

    outputs = tuple(n for n in loaded.output_names if n in PER_TOKEN_OUTPUTS)
    return names, outputs


def plan_lengths(loaded: LoadedModel, seq_len: int, mode: LengthMode) -> Lengths:
    """The ``Lengths`` an export of ``loaded`` at ``seq_len`` in ``mode`` will have (STATIC for non-text models)."""
    axes = text_encoder_axes(loaded)
    if axes is None or mode is LengthMode.STATIC or seq_len <= DYNAMIC_MIN:
        return Lengths(LengthMode.STATIC, seq_len, seq_len)
    inputs, outputs = axes
    if mode is LengthMode.DYNAMIC:
        return Lengths(mode, seq_len, DYNAMIC_MIN, inputs=inputs, outputs=outputs)
    buckets = buckets_for(seq_len)
    return Lengths(mode, seq_len, 1, buckets, {b: f"seq_{b}" for b in buckets}, inputs, outputs)


# --- samples at their real lengths -------------------------------------------------------------


def real_length(sample: tuple, input_names: tuple[str, ...]) -> int:
    """Tokens up to the last one the attention mask keeps (the longest row of the batch); at least 1."""
    import numpy as np

    mask = np.asarray(sample[input_names.index(MASK)])
    kept = np.nonzero(mask.reshape(mask.shape[0], -1).any(axis=0))[0]
    return int(kept[-1]) + 1 if kept.size else 1


def at_length(sample: tuple, input_names: tuple[str, ...], lengths: Lengths, n: int) -> tuple:
    """``sample`` cut or zero-padded (attention mask 0) along the sequence axis to ``n`` tokens."""
    import numpy as np

    out = []
    for name, x in zip(input_names, sample):
        x = np.asarray(x)
        if name in lengths.inputs:
            have = x.shape[lengths.axis]
            if have >= n:
                x = np.take(x, np.arange(n), axis=lengths.axis)
            else:
                pad = [(0, 0)] * x.ndim
                pad[lengths.axis] = (0, n - have)
                x = np.pad(x, pad)
        out.append(np.ascontiguousarray(x))
    return tuple(out)


def crop_outputs(outputs: list, output_names: tuple[str, ...], lengths: Lengths, n: int) -> list:
    """Outputs with a sequence axis cut to the first ``n`` positions (the real tokens)."""
    import numpy as np

    return [np.take(np.asarray(o), np.arange(n), axis=lengths.axis) if name in lengths.outputs else o
            for name, o in zip(output_names, outputs)]


def probe_samples(samples: list[tuple], input_names: tuple[str, ...], lengths: Lengths) -> list[tuple]:
    """Every sample trimmed to its real length, then the first one cut or padded to each probe length."""
    trimmed = [at_length(s, input_names, lengths, real_length(s, input_names)) for s in samples]
    extra = [at_length(samples[0], input_names, lengths, n) for n in lengths.probe_lengths()]
    return trimmed + extra


def run_fitted(run_one, sample: tuple, input_names: tuple[str, ...], output_names: tuple[str, ...],
               lengths: Lengths) -> list:
    """Run ``sample`` (any length up to max) as an app would: padded up to ``lengths.fit`` of its length, then
    the outputs cut back to that length. ``run_one(feeds_tuple, length)`` runs the artifact once."""
    n = int(sample[input_names.index(lengths.inputs[0])].shape[lengths.axis]) if lengths.inputs else lengths.max
    target = lengths.fit(n)
    outputs = run_one(at_length(sample, input_names, lengths, target) if target != n else sample, target)
    return crop_outputs(list(outputs), output_names, lengths, n) if target != n else list(outputs)


def torch_dynamic_shapes(lengths: Lengths, input_names: tuple[str, ...]) -> tuple | None:
    """``dynamic_shapes`` for torch.export / torch.onnx: the sequence axis as ``Dim("seq", min, max)``."""
    if lengths.mode is not LengthMode.DYNAMIC:
        return None
    import torch

    seq = torch.export.Dim("seq", min=lengths.min, max=lengths.max)
    return tuple({lengths.axis: seq} if n in lengths.inputs else None for n in input_names)


def seq_shapes(specs, lengths: Lengths, names) -> tuple:
    """``specs`` (TensorSpec) with the sequence axis of ``names`` written as -1 (dynamic)."""
    from edgeopt.packagers import TensorSpec

    out = []
    for s in specs:
        shape = list(s.shape)
        if s.name in names and len(shape) > lengths.axis:
            shape[lengths.axis] = -1
        out.append(TensorSpec(s.name, s.dtype, tuple(shape)))
    return tuple(out)
