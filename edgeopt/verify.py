"""Fidelity: how close an artifact's outputs are to the original model's, on held-out inputs.

Cosine is computed per sample on each output (flattened); the primary output (the first) decides
pass/fail. Top-1 agreement is reported for outputs that are logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

SQNR_CAP_DB = 200.0
_LM_KEYS = ("perplexity", "reference_perplexity", "kl", "greedy_agreement", "greedy_prefix")


@dataclass(frozen=True)
class OutputFidelity:
    name: str
    mean_cosine: float
    min_cosine: float
    sqnr_db: float
    max_abs_err: float
    top1_agreement: float | None = None
    finite: bool = True

    def to_dict(self) -> dict:
        return {k: _json_float(v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Fidelity:
    """Measured closeness of candidate outputs to reference outputs.

    ``mean_cosine``/``min_cosine``/``sqnr_db``/``max_abs_err`` are those of the primary output.
    """

    mean_cosine: float
    min_cosine: float
    sqnr_db: float
    max_abs_err: float
    samples: int
    reference: str
    top1_agreement: float | None = None
    finite: bool = True
    outputs: tuple[OutputFidelity, ...] = field(default_factory=tuple)
    # Decoder LMs only (None otherwise): measured on held-out text through the artifact's KV-cache session.
    perplexity: float | None = None  # the artifact's, exp(mean NLL) over every predicted token
    reference_perplexity: float | None = None  # the fp32 model's on the same tokens
    kl: float | None = None  # mean per-token KL(fp32 || artifact), nats
    greedy_agreement: float | None = None  # fraction of greedy tokens equal to the fp32 model's
    greedy_prefix: float | None = None  # mean length of the identical greedy prefix, tokens

    @property
    def perplexity_ratio(self) -> float | None:
        if self.perplexity is None or not self.reference_perplexity:
            return None
        return self.perplexity / self.reference_perplexity

    def to_dict(self) -> dict:
        d = {k: _json_float(v) for k, v in self.__dict__.items() if k != "outputs"}
        d["outputs"] = [o.to_dict() for o in self.outputs]
        if self.perplexity is None:  # an encoder: no LM keys
            for k in _LM_KEYS:
                d.pop(k, None)
        else:
            d["perplexity_ratio"] = _json_float(self.perplexity_ratio)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Fidelity":
        outs = tuple(OutputFidelity(**o) for o in d.get("outputs", []))
        return cls(**{k: v for k, v in d.items() if k not in ("outputs", "perplexity_ratio")}, outputs=outs)

    def summary(self) -> str:
        """``cosine 0.9931 (worst 0.9871), SQNR 21.3 dB``; for LMs perplexity, KL and greedy agreement first."""
        if not self.finite:
            return "outputs contain NaN or Inf"
        if self.perplexity is not None:
            return (f"perplexity {self.perplexity:.3f} vs fp32 {self.reference_perplexity:.3f} "
                    f"(x{self.perplexity_ratio:.4f}), KL {self.kl:.4f}, greedy tokens {self.greedy_agreement:.0%} "
                    f"equal, logits cosine {self.mean_cosine:.4f}")
        s = f"cosine {self.mean_cosine:.4f} (worst {self.min_cosine:.4f}), SQNR {self.sqnr_db:.1f} dB"
        if self.top1_agreement is not None:
            s += f", top-1 {self.top1_agreement:.1%}"
        return s


def compare(
    reference: Sequence[Sequence["np.ndarray"]],
    candidate: Sequence[Sequence["np.ndarray"]],
    output_names: Sequence[str],
    *,
    reference_name: str = "fp32",
    logits: bool = False,
) -> Fidelity:
    """Compare per-sample output lists. ``reference[i][j]`` is sample i, output j."""
    import numpy as np

    if len(reference) != len(candidate) or not reference:
        raise ValueError(f"need the same non-zero number of samples, got {len(reference)} and {len(candidate)}")
    per_output = []
    for j, name in enumerate(output_names):
        refs = [np.asarray(r[j], dtype=np.float64) for r in reference]
        cands = [np.asarray(c[j], dtype=np.float64) for c in candidate]
        per_output.append(_output_fidelity(name, refs, cands, logits=logits and j == 0))
    primary = per_output[0]
    return Fidelity(
        mean_cosine=primary.mean_cosine,
        min_cosine=primary.min_cosine,
        sqnr_db=primary.sqnr_db,
        max_abs_err=primary.max_abs_err,
        samples=len(reference),
        reference=reference_name,
        top1_agreement=primary.top1_agreement,
        finite=all(o.finite for o in per_output),
        outputs=tuple(per_output),
    )


def _output_fidelity(name: str, refs: list, cands: list, *, logits: bool) -> OutputFidelity:
    import numpy as np

    finite = all(np.isfinite(c).all() for c in cands)
    if not finite:
        nan = float("nan")
        return OutputFidelity(name, nan, nan, nan, float("inf"), None, False)
    cosines, sig, noise, max_err = [], 0.0, 0.0, 0.0
    for r, c in zip(refs, cands):
        if r.shape != c.shape:
            raise ValueError(f"output {name}: shape {c.shape} differs from the reference {r.shape}")
        cosines.append(cosine(r, c))
        sig += float((r * r).sum())
        noise += float(((r - c) ** 2).sum())
        max_err = max(max_err, float(np.abs(r - c).max()) if r.size else 0.0)
    # Capped at 200 dB: beyond that the outputs are bit-identical for any practical purpose (and JSON has no inf).
    sqnr = SQNR_CAP_DB if noise == 0 else min(SQNR_CAP_DB, 10.0 * math.log10(max(sig, 1e-30) / noise))
    top1 = None
    if logits:
        agree = [float((r.argmax(-1) == c.argmax(-1)).mean()) for r, c in zip(refs, cands)]
        top1 = float(np.mean(agree))
    return OutputFidelity(name, float(np.mean(cosines)), float(np.min(cosines)), sqnr, max_err, top1, True)


def cosine(a: "np.ndarray", b: "np.ndarray") -> float:
    """Cosine similarity of two arrays, flattened; 1.0 for two all-zero arrays."""
    import numpy as np

    a = a.reshape(-1)
    b = b.reshape(-1)
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def _json_float(v):
    """NaN/Inf (only ever from non-finite outputs) become null: JSON has no such numbers."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v
