"""Helpers shared by the per-format packager suites (imported as a plain module: tests/ has no packages)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SEQ = 32  # tiny models are exported at this sequence length
N_EVAL = 8  # held-out samples per check


def cosines(reference, outputs, index=0) -> list[float]:
    out = []
    for r, o in zip(reference, outputs):
        a, b = np.asarray(r[index], np.float64).ravel(), np.asarray(o[index], np.float64).ravel()
        out.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))))
    return out


def build(packager, loaded, scheme, work: Path, n_eval: int = N_EVAL, seq: int = SEQ):
    """Export ``scheme``, run it on held-out samples; returns (artifact, outputs, fp32 eager reference)."""
    import torch

    samples = loaded.sample_inputs(n_eval, seq_len=seq, split="eval")
    calibration = loaded.sample_inputs(4, seq_len=seq, split="calibration")
    artifact = packager.export(loaded, scheme, work, shapes=(1, seq), calibration=calibration)
    outputs = packager.run(artifact, [tuple(t.numpy() for t in s) for s in samples])
    with torch.no_grad():
        reference = [[t.numpy() for t in loaded.module(*s)] for s in samples]
    return artifact, outputs, reference


def packager_or_skip(runtime):
    """The registered packager for ``runtime``; a missing optional converter skips, naming the install."""
    import pytest

    from edgeopt.errors import MissingDependencyError
    from edgeopt.packagers import get_packager

    packager = get_packager(runtime)
    try:
        packager.check_available()
    except MissingDependencyError as e:
        pytest.skip(str(e))
    return packager
