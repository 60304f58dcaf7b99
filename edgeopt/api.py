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
          repeats: int = 3, threads: int | None = None, runtime: str | None = None, cores=None,
          native: str | None = None, python: str | None = None, identity_file: str | None = None,
          timeout_s: float | None = None, cooldown_s: float = 1.0, save: bool = True):
    """Benchmark a bundle on a device, compare it with the plan, and store it under the bundle's ``results/``.

    Args:
        device: ``local``, ``ssh://user@host[:port]`` or ``adb[:serial]``.
        runs, min_seconds, warmup, repeats, threads, cooldown_s: the runner's flags; threads default to the
            profile's, capped to the device's CPUs (decided on the device).
        runtime: which artifact of a multi-artifact bundle (a runtime or format name).
        cores: CPU ids to pin to on the device ("4,5,6,7" or a list), e.g. a phone's big cores.
        native: path ON THE DEVICE of the runtime's benchmark binary (onnxruntime_perf_test, benchmark_model,
            executor_runner), for devices without Python.
        python: the interpreter on the device (default: python3 there; locally this interpreter).
        identity_file: SSH private key (default ``EDGEOPT_SSH_IDENTITY``, else ssh's own).
        timeout_s: limit for the whole run (default 600 s locally, 1800 s on a device).
        save: store the record under ``<bundle>/results/<timestamp>-<device>.json``.

    Returns:
        The validated ``BenchResult``; ``.record`` is the stored form (device, bundle, result and the
        ``comparison`` with the estimates and target), ``.saved_to`` its path (None without ``save``).

    Raises:
        UsageError: a bad device address or flag. InputFileError: the bundle fails its checks.
        DeviceError: the transport failed or the device's output is not a valid result (never a number).
        UnsupportedError: the runtime is missing on the device. BundleError: the result cannot be stored.
    """
    from dataclasses import replace

    from edgeopt.bench import (
        BenchOptions,
        DeviceKind,
        compare,
        make_record,
        parse_device,
        run_on,
        save_record,
    )
    from edgeopt.bench.job import parse_cores
    from edgeopt.bench.ssh import SshOptions
    from edgeopt.bundle import Bundle

    b = Bundle.open(bundle)
    address = parse_device(device)
    options = BenchOptions(runs=runs, min_seconds=min_seconds, warmup=warmup, repeats=repeats, threads=threads,
                           cores=parse_cores(cores), cooldown_s=cooldown_s,
                           runtime=Runtime.parse(runtime).value if runtime else None, native=native, python=python)
    ssh = SshOptions.from_env(identity_file) if address.kind is DeviceKind.SSH else None
    result = run_on(address, b.path, options, ssh=ssh, timeout_s=timeout_s)
    record = make_record(result, address, b.manifest, compare(result, b.manifest))
    saved = str(save_record(b.path, record, address)) if save else None
    return replace(result, record=record, saved_to=saved)


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
