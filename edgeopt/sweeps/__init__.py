"""``edgeopt sweep``: many models × many device profiles (× formats × precisions), one bundle per cell, built in
parallel on this machine or on a Ray cluster, benchmarked on a list of devices, with one report over all.

Importing this package imports neither torch nor ray: ray is imported only when ``ray_address`` is given.
"""

from __future__ import annotations

from pathlib import Path

from edgeopt.sweeps.spec import BenchSpec, Cell, SpecError, SweepSpec, load_spec

__all__ = ["sweep", "load_spec", "SweepSpec", "Cell", "BenchSpec", "SpecError"]


def sweep(spec, *, out: str | Path | None = None, ray_address: str | None = None, jobs: int | None = None,
          bench: bool = True, progress=None):
    """Build every cell of a sweep spec, bench the bundles, and write one report (see ``edgeopt.api.sweep``)."""
    from edgeopt.sweeps.run import run_sweep

    parsed = spec if isinstance(spec, SweepSpec) else load_spec(spec, out=out)
    return run_sweep(parsed, ray_address=ray_address, jobs=jobs, bench=bench, progress=progress)

