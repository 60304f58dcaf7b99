"""Measured against predicted: a result beside the plan's estimates and the profile's latency target.

The latency estimate is compared with the measured p50 (the cost model predicts a typical run); the target
with the measured p90 (a target is a promise for most runs, not for the median one); for a decoder LM the
target is held to the p90 decode step, as the planner judges it. Where a native binary
reported no percentiles, its mean stands in for both and ``statistic`` says so.
"""

from __future__ import annotations

import math
from typing import Any

from edgeopt.benchmark.result import BenchResult

MB = 1024 * 1024


def compare(result: BenchResult, manifest: dict[str, Any]) -> dict[str, Any]:
    """The ``comparison`` block: latency and peak RAM, measured vs estimated (ratio), and the target.

    ``ratio`` is measured / estimated (2.0: twice as slow as planned); null where either side is missing.
    """
    estimate = _estimate_for(result, manifest)
    measured, statistic = _typical_latency(result)
    tail, tail_statistic = _tail_latency(result)
    estimated_ms = _positive(estimate.get("latency_ms"))
    target_ms = _positive(((manifest.get("profile") or {}).get("targets") or {}).get("latency_ms"))
    estimated_ram = _positive(estimate.get("peak_ram_bytes"))
    measured_ram = _positive(result.peak_rss_mb)
    return {
        "latency_ms": {
            "measured": measured, "statistic": statistic, "estimated": _round(estimated_ms),
            "ratio": _ratio(measured, estimated_ms),
            "target": target_ms, "target_statistic": tail_statistic, "target_measured": tail,
            "meets_target": None if target_ms is None or tail is None else tail <= target_ms,
        },
        "peak_ram_mb": {
            "measured": measured_ram, "estimated": _round(estimated_ram / MB) if estimated_ram else None,
            "ratio": _ratio(measured_ram, estimated_ram / MB if estimated_ram else None),
        },
        "valid": result.valid,
    }


def _estimate_for(result: BenchResult, manifest: dict[str, Any]) -> dict[str, Any]:
    """The plan's estimate for the benchmarked artifact: its plan row, else the chosen one's when it is first."""
    artifacts = [a for a in manifest.get("artifacts") or [] if isinstance(a, dict)]
    entry = next((a for a in artifacts if a.get("file") == result.artifact_file), None)
    if entry is None:
        return {}
    rows = ((manifest.get("plan") or {}).get("rows")) or []
    for row in rows:
        cand = row.get("candidate") if isinstance(row, dict) else None
        if (isinstance(cand, dict) and cand.get("runtime") == result.runtime
                and cand.get("precision") == entry.get("precision") and isinstance(row.get("estimate"), dict)):
            return row["estimate"]
    if artifacts and artifacts[0] is entry and isinstance(manifest.get("estimates"), dict):
        return manifest["estimates"]
    return {}


def _typical_latency(result: BenchResult) -> tuple[float | None, str | None]:
    gen = result.raw.get("generation")
    if gen:  # a decoder LM: the estimate is a forward at the profile's seq_len, i.e. the prompt's prefill
        return gen["ttft_ms"], "time to first token (median prefill of the prompt)"
    if result.latency_ms is not None:
        return result.latency_ms["p50"], "p50"
    mean = _native_reported(result, "mean")
    return (mean, "mean (native tool, no percentiles)") if mean is not None else (None, None)


def _tail_latency(result: BenchResult) -> tuple[float | None, str]:
    gen = result.raw.get("generation")
    if gen and result.latency_ms is not None:  # the planner holds a decoder LM's target to one decode step
        return result.latency_ms["p90"], "p90 decode step (ms per generated token)"
    if gen:
        return gen["ttft_ms"], "time to first token (median prefill of the prompt)"
    if result.latency_ms is not None:
        return result.latency_ms["p90"], "p90"
    mean = _native_reported(result, "mean")
    return mean, "mean (native tool, no percentiles)"


def _native_reported(result: BenchResult, key: str) -> float | None:
    # extra is free-form in the schema; only a plain finite number is taken from it.
    extra = result.raw.get("extra")
    native = extra.get("native") if isinstance(extra, dict) else None
    reported = native.get("reported") if isinstance(native, dict) else None
    value = reported.get(key) if isinstance(reported, dict) else None
    return _positive(value)


def _positive(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return None
    return float(value)


def _ratio(measured: float | None, estimated: float | None) -> float | None:
    return round(measured / estimated, 3) if measured and estimated else None


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def format_comparison(comparison: dict[str, Any]) -> str:
    """Plain-text lines: measured vs predicted with the ratio, and the target verdict."""
    lat, ram = comparison["latency_ms"], comparison["peak_ram_mb"]
    lines = []
    if lat["measured"] is not None:
        est = (f"estimated {lat['estimated']:.3f} ms, measured/estimated {lat['ratio']:.2f}x"
               if lat["estimated"] else "no estimate in the manifest")
        lines.append(f"latency {lat['statistic']}  {lat['measured']:.3f} ms ({est})")
    if lat["target"] is not None and lat["target_measured"] is not None:
        verdict = "meets" if lat["meets_target"] else "MISSES"
        lines.append(f"latency target  {lat['target_statistic']} {lat['target_measured']:.3f} ms {verdict} the "
                     f"profile's {lat['target']:g} ms")
    if ram["measured"] is not None:
        est = (f"estimated {ram['estimated']:.1f} MB, measured/estimated {ram['ratio']:.2f}x"
               if ram["estimated"] else "no estimate in the manifest")
        lines.append(f"peak RAM  {ram['measured']:.1f} MB ({est})")
    if not comparison["valid"]:
        lines.append("(the run is not valid: compare these numbers with care)")
    return "\n".join(lines)
