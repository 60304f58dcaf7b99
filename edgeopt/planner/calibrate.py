"""Fit a profile's cost-model numbers to benchmark results measured on the device (the closed loop).

``edgeopt profiles calibrate RESULT.json... --out my-device.yaml`` reads stored ``edgeopt bench`` records
(each names its bundle, whose manifest holds the model's ``ModelStats`` and the artifact's precision) and
fits, per runtime, the terms of ``edgeopt.planner.cost.estimate``:

  latency   p50 = FLOPs / rate[precision] + aten_ops x per_op + per_call
  peak RSS      = base_rss + weight_rss_factor[precision] x stored weight bytes + activation_factor x
                  activation peak + KV cache

Both are linear in their unknowns, so each runtime is one weighted least-squares problem over relative
error (a 10% miss on a 5 ms model counts as much as on a 50 ms one). Terms the results cannot tell apart
(one model only: per-op overhead vs rate; one weight size per precision: base RSS vs residency) are held
near their prior, the uncalibrated cost model, by a small ridge penalty on the relative change, so a
calibration from a single bundle still moves what it measured and leaves the rest as it was.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

from edgeopt.errors import InputFileError, UsageError
from edgeopt.jsonio import load_file as load_json_file
from edgeopt.formats import Precision, Runtime

MB = 1024 * 1024
RIDGE = 1e-6  # weight of the pull toward the prior, per unit relative change of a term (only decides what the data cannot)


@dataclass(frozen=True)
class Point:
    """One measured result with what the cost model needs to predict it."""

    source: str
    runtime: Runtime
    precision: Precision
    stats: Any  # ModelStats
    latency_ms: float
    peak_rss_mb: float | None
    threads: int | None
    valid: bool
    invalid_reason: str | None
    profile: dict | None  # the profile the bundle was planned for (its manifest's copy)
    device: str = ""  # the device the runner reported, e.g. "AMD EPYC, 2 cores, x86_64"
    artifact_sha256: str = ""
    runs: int = 1  # how many stored results of this artifact were merged into this point


def merge_repeats(points: list[Point]) -> list[Point]:
    """One point per artifact: repeated runs of the same artifact become their median (latency and RSS), so a
    noisy device benchmarked several times counts each cell once and its outliers do not steer the fit."""
    import statistics

    groups: dict[tuple, list[Point]] = {}
    for p in points:
        key = (p.runtime, p.precision, p.stats.model_name, p.stats.flops, p.artifact_sha256 or p.source, p.threads)
        groups.setdefault(key, []).append(p)
    merged = []
    for group in groups.values():
        rss = [p.peak_rss_mb for p in group if p.peak_rss_mb]
        merged.append(replace(group[0], latency_ms=statistics.median(p.latency_ms for p in group),
                              peak_rss_mb=statistics.median(rss) if rss else None,
                              valid=all(p.valid for p in group), runs=sum(p.runs for p in group),
                              source=group[0].source if len(group) == 1 else f"{len(group)} runs of {group[0].source}"))
    return merged


def _record_files(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("results/*.json")) or sorted(p.glob("*.json"))
            if not found:
                raise InputFileError(f"{p}: no results/*.json in this folder; run `edgeopt bench {p}` first, or "
                                     "pass the result files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise InputFileError(f"{p}: no such file; pass the JSON files `edgeopt bench` stored under "
                                 "<bundle>/results/ (or the bundle folders)")
    return files


def load_points(paths: Iterable[str | Path]) -> list[Point]:
    """Read stored bench records (files, or bundle folders whose ``results/`` hold them).

    Raises:
        InputFileError: a file that is not a stored record, or whose bundle manifest cannot be found.
    """
    from edgeopt.analysis import ModelStats
    from edgeopt.benchmark.result import BenchResult
    from edgeopt.errors import DeviceError

    points = []
    for path in _record_files(paths):
        try:
            record = load_json_file(path, where="", what="JSON")  # bounded: size, nesting
            result = BenchResult.from_dict(record["result"])
        except (OSError, ValueError, KeyError, TypeError, DeviceError) as e:
            raise InputFileError(f"{path}: not a stored edgeopt bench result ({e}); pass the files `edgeopt bench` "
                                 "writes under <bundle>/results/") from None
        inputs = record.get("cost_inputs") or _inputs_from_manifest(path, result.artifact_file)
        if result.latency_ms is None:
            raise InputFileError(f"{path}: the result has no latency percentiles (a native tool's mean only); "
                                 "calibrate from runs of the Python runner")
        points.append(Point(
            source=str(path), runtime=Runtime(result.runtime), precision=Precision(inputs["precision"]),
            stats=ModelStats.from_dict(inputs["stats"]), latency_ms=float(result.latency_ms["p50"]),
            peak_rss_mb=result.peak_rss_mb, threads=(result.raw.get("config") or {}).get("threads"),
            valid=result.valid, invalid_reason=result.invalid_reason, profile=inputs.get("profile"),
            device=_describe(result.raw.get("device")), artifact_sha256=result.artifact_sha256))
    return points


def _describe(device: Any) -> str:
    if not isinstance(device, dict):
        return ""
    parts = [str(device.get("cpu") or device.get("machine") or "")]
    if device.get("cores"):
        parts.append(f"{device['cores']} cores")
    if device.get("machine"):
        parts.append(str(device["machine"]))
    return ", ".join(p for p in parts if p)


def _inputs_from_manifest(path: Path, artifact_file: str) -> dict:
    manifest_path = path.parent.parent / "manifest.json"
    try:
        manifest = load_json_file(manifest_path, where="", what="JSON")
        entry = next(a for a in manifest["artifacts"] if a["file"] == artifact_file)
        return {"precision": entry["precision"], "stats": manifest["stats"], "profile": manifest.get("profile")}
    except (OSError, ValueError, KeyError, TypeError, StopIteration):
        raise InputFileError(f"{path}: cannot find the model statistics for this result: the record has no "
                             f"cost_inputs and {manifest_path} does not describe {artifact_file!r}; keep result "
                             "files inside their bundle's results/ folder") from None


# --------------------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------------------


def _ridge_fit(rows: list[list[float]], targets: list[float], prior: list[float],
               scale: list[float] | None = None, lower: list[float] | None = None) -> list[float]:
    """Minimise sum_i ((x_i . theta - y_i) / y_i)^2 + RIDGE * sum_j ((theta_j - prior_j) / scale_j)^2.

    ``scale`` defaults to the prior itself (a relative pull); a term whose prior is 0 needs a scale of its
    own. Every theta stays >= its ``lower`` bound (default 0): a term that would go below is pinned there
    and the rest refitted.
    """
    import numpy as np

    x = np.asarray(rows, dtype=float)
    y = np.asarray(targets, dtype=float)
    p = np.asarray(prior, dtype=float)
    sc = np.asarray(scale if scale is not None else prior, dtype=float)
    lo = np.asarray(lower if lower is not None else [0.0] * len(prior), dtype=float)
    free = sc > 0
    theta = p.copy()
    for _ in range(len(p) + 1):
        cols = np.flatnonzero(free)
        fixed_part = x[:, ~free] @ theta[~free]
        a = (x[:, cols] * sc[cols]) / y[:, None]
        b = (y - fixed_part - x[:, cols] @ p[cols]) / y
        a = np.vstack([a, math.sqrt(RIDGE) * np.eye(len(cols))])
        b = np.concatenate([b, np.zeros(len(cols))])
        d = np.linalg.lstsq(a, b, rcond=None)[0]
        theta[cols] = p[cols] + sc[cols] * d
        below = cols[theta[cols] < lo[cols]]
        if not len(below):
            break
        theta[below], free[below] = lo[below], False
    return [float(t) for t in theta]


def fit_runtime(points: list[Point], base, runtime: Runtime):
    """Fit one runtime's ``RuntimeCalibration`` to its points (prior: ``base``'s current cost model)."""
    from edgeopt.planner.cost import RUNTIME_COSTS, prior_terms
    from edgeopt.profiles import RuntimeCalibration

    pts = [p for p in points if p.runtime is runtime]
    prior = prior_terms(base, runtime)
    precs = [p for p in Precision if any(q.precision is p for q in pts)]

    # latency: unknowns 1/rate (ms per op, one per precision) and per-op ms. The per-call cost stays at its
    # micro-benchmarked value: fitted, it soaks up the lower GEMM efficiency of small models and extrapolates
    # badly to large ones.
    rows, ys = [], []
    pri = [1e3 / prior["rates"][p] for p in precs] + [prior["per_op_ms"]]
    for q in pts:
        rows.append([q.stats.flops if q.precision is p else 0.0 for p in precs] + [float(q.stats.aten_ops)])
        ys.append(max(q.latency_ms - prior["per_call_ms"], 1e-6))
    # per-op scale: at least 10 us, so a prior from a single-threaded micro-benchmark does not hold it back
    lat = _ridge_fit(rows, ys, pri, pri[:-1] + [max(pri[-1], 0.01)])
    rates = {p: (1e3 / lat[i] / 1e9 if lat[i] > 0 else None) for i, p in enumerate(precs)}

    # peak RSS: unknowns base bytes, residency per precision (resident bytes per stored weight byte), bytes
    # per op (kernel state and each op's arena block) and the activation factor
    from edgeopt.planner.cost import weight_bytes

    rss_pts = [q for q in pts if q.peak_rss_mb]
    rsprecs = [p for p in precs if any(q.precision is p for q in rss_pts)]
    n = len(rsprecs)
    rows, ys = [], []
    for q in rss_pts:
        w = float(weight_bytes(q.stats, q.precision))
        rows.append([1.0] + [w if q.precision is p else 0.0 for p in rsprecs]
                    + [float(q.stats.aten_ops), float(q.stats.activation_peak_bytes)])
        ys.append(max(q.peak_rss_mb * MB - q.stats.kv_cache_bytes, 1.0))
    rss = None
    if rss_pts:
        pri = ([prior["base_bytes"]] + [prior["weight_rss_factor"][p] for p in rsprecs]
               + [prior["op_bytes"], prior["activation_factor"] or 1.0])
        # Physical floors: every stored weight byte is resident at least once (residency >= 1); the runner's
        # base is at least what importing the runtime costs (measured with no model loaded, less 10% for the
        # device); a runtime keeps at least half of eager PyTorch's live activations (it fuses, never drops all).
        rss = _ridge_fit(rows, ys, pri, pri[:-2] + [0.1 * MB, pri[-1]],
                         [0.9 * RUNTIME_COSTS[runtime].import_rss_bytes] + [1.0] * n + [0.0, 0.5])

    cal = RuntimeCalibration(
        fp32_gflops=_round(rates.get(Precision.FP32)), fp16_gflops=_round(rates.get(Precision.FP16)),
        int8_gops=_round(rates.get(Precision.INT8)), int4_gops=_round(rates.get(Precision.INT4)),
        per_op_us=round(lat[-1] * 1e3, 4),
        base_rss_mb=round(rss[0] / MB, 2) if rss else None,
        weight_rss_factor={p.value: round(rss[1 + i], 4) for i, p in enumerate(rsprecs)} if rss else None,
        op_rss_kb=round(rss[1 + n] / 1024, 2) if rss else None,
        activation_factor=round(rss[-1], 4) if rss else None,
        results=len(pts))
    return cal


def _round(value: float | None) -> float | None:
    return None if value is None else float(f"{value:.4g}")


def calibrate(points: list[Point], base) -> Any:
    """A copy of ``base`` (a Profile) whose ``calibration`` is fitted to ``points`` and whose
    ``compute.threads`` is the thread count they ran with.

    Raises:
        UsageError: no points, points for a runtime the profile does not list, or runs at different thread
            counts (rates are only comparable at one).
    """
    from edgeopt.profiles import Calibration

    if not points:
        raise UsageError("profiles calibrate: no results given; pass the JSON files `edgeopt bench` stored")
    points = merge_repeats(points)
    threads = {p.threads for p in points if p.threads}
    if len(threads) > 1:
        raise UsageError(f"profiles calibrate: the results ran with different thread counts {sorted(threads)}; "
                         "calibrate from runs at one --threads (the profile's compute.threads)")
    fitted = {}
    for runtime in sorted({p.runtime for p in points}, key=lambda r: r.value):
        fitted[runtime.value] = fit_runtime(points, base, runtime)
    models = sorted({p.stats.model_name for p in points})
    old = base.calibration
    merged = {r.value: (fitted.get(r.value) or (old.get(r) if old else None)) for r in Runtime}
    source = (f"{len(points)} artifacts ({sum(p.runs for p in points)} runs) of {len(models)} model(s) ({', '.join(models)}) on "
              f"{_device_name(points)}")
    compute = base.compute if not threads else replace(base.compute, threads=threads.pop())
    return replace(base, compute=compute, calibration=Calibration(source=source, **merged))


def _device_name(points: list[Point]) -> str:
    names = sorted({p.device for p in points if p.device})
    return "; ".join(names) if names else "the device"


def residuals(points: list[Point], profile) -> list[dict]:
    """Each point measured vs predicted by ``profile`` (latency p50 and peak RSS; ratio = measured / predicted)."""
    from edgeopt.planner.cost import estimate

    out = []
    for q in points:
        est = estimate(q.stats, profile, q.runtime, q.precision)
        out.append({
            "model": q.stats.model_name, "runtime": q.runtime.value, "precision": q.precision.value,
            "latency_ms": q.latency_ms, "predicted_ms": est.latency_ms,
            "latency_ratio": q.latency_ms / est.latency_ms,
            "peak_rss_mb": q.peak_rss_mb, "predicted_rss_mb": est.peak_ram_bytes / MB,
            "rss_ratio": (q.peak_rss_mb / (est.peak_ram_bytes / MB)) if q.peak_rss_mb else None,
            "valid": q.valid,
        })
    return out
