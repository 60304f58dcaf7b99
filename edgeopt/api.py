"""The public Python API; the CLI calls only these.

    >>> import edgeopt
    >>> edgeopt.load_profile("arm-mobile").limits.model_ram_mb
    512
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from edgeopt.formats import Precision, Runtime

Progress = Callable[[str], None]


def load_profile(name_or_path):
    """A built-in profile by name, or a profile YAML file (strictly validated)."""
    from edgeopt.profiles import Profile
    from edgeopt.profiles import load_profile as _load

    return name_or_path if isinstance(name_or_path, Profile) else _load(name_or_path)


def inspect(model: str | None = None, *, profile="arm-mobile", allow_pickle: bool = False,
            progress: Progress | None = None) -> dict:
    """Model statistics at the profile's shapes and a fit table against every built-in profile.

    Returns a dict: ``{"stats": ModelStats.to_dict(), "fit": [row, ...]}``.
    """
    from edgeopt.analysis import analyse
    from edgeopt.models import load_model
    from edgeopt.planner.cost import fit_table
    from edgeopt.profiles import load_builtin_profiles

    prof = load_profile(profile)
    say = progress or (lambda _m: None)
    say("load: reading the model")
    loaded = load_model(model, allow_pickle=allow_pickle)
    say("analyse: counting parameters, FLOPs and activation memory")
    stats = analyse(loaded, prof.shapes.batch, prof.shapes.seq_len, prof.shapes.context_len)
    return {"stats": stats.to_dict(), "fit": fit_table(stats, load_builtin_profiles())}


def make_plan(model: str | None = None, *, profile="arm-mobile", fmt: str | None = None, precision: str | None = None,
              activations: str | None = None, allow_pickle: bool = False, progress: Progress | None = None):
    """The candidate table for ``model`` on ``profile``; nothing is built. Returns a ``Plan``."""
    from edgeopt.analysis import analyse
    from edgeopt.models import load_model
    from edgeopt.planner import make_plan as _make_plan

    prof = load_profile(profile)
    runtime, prec = _overrides(fmt, precision)
    say = progress or (lambda _m: None)
    say("load: reading the model")
    loaded = load_model(model, allow_pickle=allow_pickle)
    say("analyse: counting parameters, FLOPs and activation memory")
    stats = analyse(loaded, prof.shapes.batch, prof.shapes.seq_len, prof.shapes.context_len)
    return _make_plan(stats, prof, runtimes=[runtime] if runtime else None, precisions=[prec] if prec else None,
                      activations=_activations(activations))


def package(model: str | None = None, *, profile="arm-mobile", out: str | Path = "dist", fmt: str | None = None,
            precision: str | None = None, activations: str | None = None, all_formats: bool = False,
            force: bool = False, allow_pickle: bool = False, progress: Progress | None = None):
    """Plan, build, verify and bundle. Returns a ``PackageResult`` (bundle path, manifest, plan).

    ``fmt``/``precision``/``activations`` ("dynamic" or "static") bypass the planner's choice;
    ``all_formats`` also builds the chosen scheme in every other format and bundles those that pass.
    """
    from edgeopt.pipeline import package as _package

    runtime, prec = _overrides(fmt, precision)
    return _package(load_profile(profile), model, out=Path(out), runtime=runtime, precision=prec,
                    activations=_activations(activations), all_formats=all_formats, force=force,
                    allow_pickle=allow_pickle, progress=progress)


def bench(bundle: str | Path, *, device: str = "local", runs: int = 100, min_seconds: float = 5.0, warmup: int = 10,
          repeats: int = 3, threads: int | None = None, runtime: str | None = None):
    """Run a bundle's runner on ``device`` and return the validated ``BenchResult``."""
    from edgeopt.bench import run_local
    from edgeopt.bundle import Bundle
    from edgeopt.errors import UsageError

    b = Bundle.open(bundle)
    if device != "local":
        raise UsageError(f"unknown device {device!r}; available now: local")
    if threads is None:
        # The profile's thread count, but never more than this machine has: oversubscribed threads
        # measure contention, not the model.
        import os

        wanted = b.manifest.get("profile", {}).get("compute", {}).get("threads") or 1
        threads = max(1, min(int(wanted), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))
    return run_local(b.path, runs=runs, min_seconds=min_seconds, warmup=warmup, repeats=repeats, threads=threads,
                     runtime=Runtime.parse(runtime).value if runtime else None)


def _activations(value: str | None):
    from edgeopt.errors import UsageError
    from edgeopt.quantize import Activations
    from edgeopt.registry import unknown_name_message

    if value is None:
        return None
    allowed = [Activations.DYNAMIC.value, Activations.STATIC.value]
    if value not in allowed:
        raise UsageError(unknown_name_message("activation mode", value, allowed))
    return Activations(value)


def _overrides(fmt: str | None, precision: str | None) -> tuple[Runtime | None, Precision | None]:
    return (Runtime.parse(fmt) if fmt else None, Precision.parse(precision) if precision else None)
