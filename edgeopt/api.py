"""The public Python API; the CLI calls only these.

One verb per job, each mirrored by a command: ``load_profile`` (``edgeopt profiles show``), ``inspect``
(``edgeopt inspect``), ``make_plan`` (``edgeopt plan``), ``package`` (``edgeopt package``), ``bench``
(``edgeopt bench``), ``report`` (``edgeopt report``). Every example below runs as a test
(tests/test_api_docs.py), in that order, in one scratch folder, on the built-in all-MiniLM-L6-v2:

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
    """A built-in profile by name, or a profile YAML file (strictly validated).

    Args:
        name_or_path: a built-in name (``edgeopt profiles list``), a YAML path, or a ``Profile`` (returned as is).

    Returns:
        The frozen ``Profile``: ``limits`` (model_ram_mb, model_storage_mb, model_download_mb, precisions), ``shapes``, ``compute``,
        ``targets``, ``runtimes`` in order of preference.

    Raises:
        ProfileError: an unknown name (with the names that exist) or a file with problems (every one listed).

    Example:

        >>> import edgeopt
        >>> phone = edgeopt.load_profile("arm-mobile")
        >>> phone.limits.model_ram_mb, phone.limits.model_storage_mb, phone.shapes.seq_len
        (512, 32, 128)
        >>> [r.value for r in phone.runtimes]
        ['executorch', 'litert', 'onnxruntime']
        >>> edgeopt.load_profile("arm-mobil")
        Traceback (most recent call last):
        ...
        edgeopt.errors.ProfileError: unknown profile 'arm-mobil'...did you mean 'arm-mobile'?...
    """
    from edgeopt.profiles import Profile
    from edgeopt.profiles import load_profile as _load

    return name_or_path if isinstance(name_or_path, Profile) else _load(name_or_path)


def inspect(model: str | None = None, *, profile="arm-mobile", allow_pickle: bool = False,
            progress: Progress | None = None) -> dict:
    """Model statistics at the profile's shapes and a fit table against every built-in profile.

    Args:
        model: a Hugging Face directory, ``org/name`` from the local cache, ``file.py:factory``, or None for the
            built-in all-MiniLM-L6-v2.
        profile: whose shapes (batch, sequence, context) the FLOPs and activation memory are counted at.
        allow_pickle: permit pickle checkpoints (they can run code).
        progress: called with one line per stage.

    Returns:
        ``{"stats": ModelStats.to_dict(), "fit": [row, ...]}``; stats has params_total, bytes_at (per precision),
        flops, activation_peak_bytes, kv_cache_bytes...; each fit row is one profile × runtime × precision with
        artifact_mb, peak_ram_mb, latency_ms, fits and the reason when it does not.

    Raises:
        ModelError: the model cannot be found or loaded. ProfileError: a bad ``profile``.

    Example:

        >>> import edgeopt
        >>> info = edgeopt.inspect()  # the built-in all-MiniLM-L6-v2, at arm-mobile's shapes
        >>> info["stats"]["params_total"]
        22713216
        >>> round(info["stats"]["bytes_at"]["int8"] / 2**20, 1)  # weights alone, int8
        21.9
        >>> for row in info["fit"]:  # each profile's preferred runtime, every precision
        ...     if row["profile"] == "arm-mobile":
        ...         print(row["runtime"], row["precision"], row["artifact_mb"], row["delivery"], row["reason"] or "fits")
        executorch fp32 86.66 download fits
        executorch fp16 43.34 download fits
        executorch int8 21.96 bundled fits
        executorch int4 18.03 bundled fits
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
    """The candidate table for ``model`` on ``profile``; nothing is built.

    Args:
        model: as for ``inspect`` (None: the built-in all-MiniLM-L6-v2).
        profile: a built-in name, a YAML path or a ``Profile``.
        fmt, precision: keep only that runtime/format (``onnx``, ``pte``, ``tflite`` or a runtime name) or precision.
        activations: ``"dynamic"`` or ``"static"`` (int8 activations calibrated on shipped text).

    Returns:
        A ``Plan``: ``rows`` in the order ``package`` tries them, each a ``CandidateRow`` with its ``candidate``
        (runtime, precision, scheme), ``estimate`` (artifact bytes, peak RAM, latency), ``status``, ``reasons`` and
        ``delivery`` (bundled in the app, or downloaded after install, with ``delivery_note`` saying why).

    Raises:
        UsageError: an unknown format, precision or activation mode (with what exists). ModelError, ProfileError.

    Example:

        >>> import edgeopt
        >>> plan = edgeopt.make_plan(profile="arm-mobile")
        >>> [row.candidate.key for row in plan.feasible][:3]  # fits the phone, in the order tried
        ['executorch/int8', 'litert/int8', 'onnxruntime/int8']
        >>> plan.feasible[0].delivery.value, plan.feasible[0].delivery_note  # shipped inside the app
        ('bundled', '22 MB <= model_storage_mb 32')
        >>> fp32 = next(row for row in plan.rows if row.candidate.key == "onnxruntime/fp32")
        >>> fp32.status.value, fp32.delivery.value, fp32.delivery_note  # fits only as a download: tried after
        ('feasible', 'download', '87 MB > model_storage_mb 32 (the bundled budget), <= model_download_mb 1024')
    """
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
            force: bool = False, allow_pickle: bool = False, progress: Progress | None = None,
            recover_seconds: float = 60.0):
    """Plan, build, verify in the real runtime, and write the bundle ``out/<model>-<profile>/``.

    Args:
        model, profile: as for ``make_plan``.
        out: the folder the bundle goes into (written in a staging folder, swapped into place at the end).
        fmt, precision, activations: bypass the planner's choice (``activations``: "dynamic" or "static").
        all_formats: also build the chosen scheme in every other format and bundle those that pass.
        force: replace an existing bundle (otherwise that is a UsageError and nothing is touched).
        recover_seconds: bounds the distillation after pruning, when the plan has to prune (0: none).
        progress: called with one line per stage.

    Returns:
        A ``PackageResult``: ``bundle_path``, ``manifest`` (the dict written to manifest.json: artifacts with
        sha256, inputs/outputs; measured ``fidelity``; the plan with every candidate's status) and ``plan``.

    Raises:
        NoFitError (exit 4): nothing fits or nothing built passes the profile's fidelity target.
        FidelityError (exit 5): the reference model itself gives non-finite outputs. ExportError (exit 3): the
        converter failed, with the format and the op. ResourceError (exit 6): out of memory or disk.

    Example (arm-mobile would try ExecuTorch first; ``fmt="onnx"`` keeps this example quick):

        >>> import edgeopt
        >>> result = edgeopt.package(profile="arm-mobile", fmt="onnx", out="dist")
        >>> result.bundle_path.as_posix()
        'dist/all-MiniLM-L6-v2-arm-mobile'
        >>> art = result.manifest["artifacts"][0]
        >>> art["file"], art["runtime"], art["precision"], art["bytes"] < 32 * 2**20
        ('model.onnx', 'onnxruntime', 'int8', True)
        >>> [(i["name"], i["dtype"], i["shape"]) for i in art["inputs"]]  # -1: the sequence axis is dynamic
        [('input_ids', 'int64', [1, -1]), ('attention_mask', 'int64', [1, -1]), ('token_type_ids', 'int64', [1, -1])]
        >>> art["lengths"]["mode"], art["lengths"]["min"], art["lengths"]["max"]  # any length the app sends, up to seq_len
        ('dynamic', 2, 128)
        >>> result.manifest["tokenizer"]["golden"]  # the tokenizer travels with the model
        'tokenizer/golden.json'
        >>> result.manifest["fidelity"]["min_cosine"] >= 0.99  # in onnxruntime, against the fp32 model
        True
    """
    from edgeopt.pipeline import package as _package

    runtime, prec = _overrides(fmt, precision)
    return _package(load_profile(profile), model, out=Path(out), runtime=runtime, precision=prec,
                    activations=_activations(activations), all_formats=all_formats, force=force,
                    allow_pickle=allow_pickle, progress=progress, recover_seconds=_recover(recover_seconds))


def calibrate_profile(results: list[str | Path], *, profile=None, out: str | Path | None = None,
                      name: str | None = None) -> dict:
    """Fit a profile's cost-model numbers to stored ``edgeopt bench`` results (see ``edgeopt.planner.calibrate``).

    Args:
        results: result JSON files (``<bundle>/results/*.json``) or bundle folders.
        profile: the profile to start from; default: the one the results' bundles were planned for.
        out: where to write the calibrated profile YAML (written atomically; nothing is written on error).
        name: the new profile's name (default ``<base>-calibrated``).

    Returns:
        A dict: base, name, out, invalid (how many results the runner marked invalid), points (per result:
        measured vs predicted latency and peak RSS before and after), summary (worst misses), profile
        (the calibrated profile as a dict).

    Raises:
        InputFileError: a result file that is not a stored bench record. UsageError: no results, or results
        that disagree (thread counts, base profiles). ProfileError: a bad ``profile``.
    """
    from edgeopt.errors import UsageError
    from edgeopt.planner.calibrate import (
        calibrate,
        load_points,
        merge_repeats,
        residuals,
    )
    from edgeopt.profiles import Profile, dump_profile_yaml

    points = merge_repeats(load_points(results))
    if profile is not None:
        base = load_profile(profile)
    else:
        names = {(p.profile or {}).get("name") for p in points}
        if len(names) != 1 or None in names:
            raise UsageError(f"profiles calibrate: the results come from bundles planned for different profiles "
                             f"({', '.join(sorted(str(n) for n in names))}); pass --profile to say which to calibrate")
        base = Profile.from_dict(points[0].profile, source=f"the manifest of {points[0].source}")
    new_name = name or f"{base.name}-calibrated"
    fitted = calibrate(points, base)
    from dataclasses import replace

    fitted = replace(fitted, name=new_name, description=f"{base.description} (calibrated: {fitted.calibration.source})")
    before, after = residuals(points, base), residuals(points, fitted)
    rows = [{**b, "before_ms": b["predicted_ms"], "after_ms": a["predicted_ms"],
             "before_rss_mb": b["predicted_rss_mb"], "after_rss_mb": a["predicted_rss_mb"]}
            for b, a in zip(before, after)]

    def worst(rs, key):
        vals = [abs(r[key] - 1) for r in rs if r[key] is not None]
        return max(vals) if vals else 0.0

    summary = {k: {"worst_latency": worst(rs, "latency_ratio"), "worst_rss": worst(rs, "rss_ratio")}
               for k, rs in (("before", before), ("after", after))}
    if out is not None:
        header = (f"# edgeopt device profile written by `edgeopt profiles calibrate` from {base.name}\n"
                  f"# calibration fitted from {fitted.calibration.source}\n"
                  f"# worst miss on those results: latency {summary['after']['worst_latency']:.0%}, "
                  f"peak RSS {summary['after']['worst_rss']:.0%} (before: {summary['before']['worst_latency']:.0%}, "
                  f"{summary['before']['worst_rss']:.0%})")
        _write_text_atomic(Path(out), dump_profile_yaml(fitted.to_dict(), header=header))
    return {"base": base.name, "name": new_name, "out": str(out) if out else None,
            "invalid": sum(not p.valid for p in points), "runs": sum(p.runs for p in points), "points": rows, "summary": summary,
            "profile": fitted.to_dict()}


def _write_text_atomic(path: Path, text: str, *, what: str = "the profile", flag: str = "--out") -> None:
    """Write ``text`` to ``path`` through a temp file beside it: readers see the old file or the new one."""
    import errno
    import os
    import tempfile

    from edgeopt.errors import BundleError, ResourceError

    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent if str(path.parent) else ".")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it the mode a plain open() would
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)  # a failed write leaves no temp file beside the target
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # out of disk: exit 6, like every other write
            raise ResourceError(f"{path}: out of disk writing {what} ({e.strerror}); free some space or pick "
                                f"another {flag}") from None
        raise BundleError(f"{path}: cannot write {what} ({e.strerror or e}); pick a writable {flag}") from None


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

    Example (the bundle ``package`` wrote above, on this machine; a phone is ``device="adb"``):

        >>> import edgeopt
        >>> run = edgeopt.bench("dist/all-MiniLM-L6-v2-arm-mobile", runs=20, min_seconds=0.5, repeats=2)
        >>> run.runtime, run.verified  # verified: the artifact's sha256 matched the manifest
        ('onnxruntime', True)
        >>> run.parity["host_max_abs_err"] < 1e-4  # the same outputs as on the host at package time
        True
        >>> sorted(run.latency_ms)
        ['max', 'mean', 'min', 'p50', 'p90', 'p99', 'std']
        >>> sorted(run.comparison)  # measured vs the plan's estimates and the profile's target
        ['latency_ms', 'peak_ram_mb', 'valid']
        >>> run.saved_to.startswith("dist/all-MiniLM-L6-v2-arm-mobile/results/")
        True
    """
    from dataclasses import replace

    from edgeopt.benchmark import (
        BenchOptions,
        DeviceKind,
        compare,
        make_record,
        parse_device,
        run_on,
        save_record,
    )
    from edgeopt.benchmark.job import parse_cores
    from edgeopt.benchmark.ssh import SshOptions
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


def report(bundles: list[str | Path], *, html: str | Path | None = None) -> str:
    """Summarize bundles: plan, fidelity, estimates against stored bench results, every candidate built.

    Args:
        bundles: bundle folders (what ``package`` wrote; bench results are read from their ``results/``).
        html: also write a self-contained HTML page here (plan tables, fidelity, bench results, and plots:
            the Pareto front of size vs latency vs fidelity and the latency distribution per device), atomically.

    Returns:
        The plain-text summary (for the terminal).

    Raises:
        InputFileError: a folder that is not a bundle, or a stored result that does not validate.
        UsageError: no bundles. BundleError: the HTML file cannot be written. ResourceError: out of disk.

    Example (the bundle and the bench run from the examples above):

        >>> import edgeopt
        >>> print(edgeopt.report(["dist/all-MiniLM-L6-v2-arm-mobile"], html="report.html"))
        all-MiniLM-L6-v2-arm-mobile (dist/all-MiniLM-L6-v2-arm-mobile): chosen onnxruntime/int8, ... MB, cos 0.99...
          bench local onnxruntime model.onnx at ...: p50 ... ms, p90 ... ms (estimated ... ms, ...x), peak RSS ... MB...
        candidates built (size, latency, fidelity; * Pareto-optimal):
          * all-MiniLM-L6-v2-arm-mobile onnxruntime/int8: ... MB, ... ms (measured...), cos 0.99... chosen
        HTML report: report.html
    """
    from edgeopt.report_html import render_html, summarize

    paths = [Path(b) for b in bundles]
    text = summarize(paths)
    if html is not None:
        _write_text_atomic(Path(html), render_html(paths), what="the report", flag="--html path")
        text += f"\nHTML report: {html}"
    return text


def sweep(spec: str | Path, *, out: str | Path | None = None, ray_address: str | None = None, jobs: int | None = None,
          bench: bool = True, progress: Progress | None = None):
    """Build every cell of a sweep spec (models × profiles × formats × precisions), bench each bundle on the
    spec's devices, and write one report over all (``edgeopt sweep``; the spec format: ``edgeopt.sweeps.spec``).

    Args:
        spec: the sweep YAML file (or a ``SweepSpec``).
        out: replaces the spec's ``out`` folder.
        ray_address: run the cells as tasks on this Ray cluster (``host:port``, or ``auto``) instead of the local
            pool; the out folder must be one every node sees.
        jobs: local pool size (default: one per spare core, fewer when the builds' estimated peak memory
            would not fit in the memory available).
        bench: bench the bundles on the spec's ``bench.devices`` (False: build only).

    Returns:
        A ``SweepResult``: ``cells`` (status ok/skipped/failed/killed/interrupted, exit_code, attempts, retried,
        bundle, artifact, fidelity, bench per device), ``report``, ``wall_s``, ``exit_code``.

    Raises:
        SpecError (exit 2): the spec has problems (all listed), before any work. MissingDependencyError: ray is
        not installed. DeviceError: the Ray cluster cannot be reached. KeyboardInterrupt: Ctrl-C (finished
        bundles stay; running cells are stopped and leave nothing behind).
    """
    from edgeopt.sweeps import sweep as _sweep

    return _sweep(spec, out=out, ray_address=ray_address, jobs=jobs, bench=bench, progress=progress)


def _recover(value) -> float:
    import math

    from edgeopt.errors import UsageError

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise UsageError(f"recover_seconds must be a number of seconds >= 0, got {value!r} (0 turns distillation off)")
    return float(value)


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
