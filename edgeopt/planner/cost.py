"""The cost model: artifact size, peak run-time RAM and latency of one (runtime, precision) candidate.

A roofline with per-runtime constants. Every constant below was measured on the build host (x86-64,
Python 3.11, 2 cores) and says how; a calibration step may refit ``RUNTIME_COSTS`` from on-device
``BenchResult``s, which is why they live in one table of plain numbers rather than in the formulas.

Storage rule (``weight_bytes``), the one every packager's size is estimated with:
  fp32  4 B per parameter.   fp16  2 B per parameter.
  int8  1 B per Linear weight + one fp32 scale per output channel; nn.Embedding weights 1 B + one
        fp32 scale per row (or fp32 when ``quantize_embeddings=False``); everything else (biases,
        norms, raw parameters) fp32.
  int4  0.5 B per Linear weight (two per byte, rows padded to whole bytes) + one fp32 scale per
        ``group_size`` weights of a row (symmetric, no zero point); embeddings stay int8 per row,
        as ExecuTorch/torchao, ONNX Runtime and LiteRT do when linears go to 4 bits; the rest fp32.
  A tied LM head shares the embedding's storage and is counted once, as the embedding.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, Iterable

from edgeopt.errors import EdgeoptError, InputFileError, UsageError
from edgeopt.formats import Precision, Runtime

if TYPE_CHECKING:
    from edgeopt.analysis import ModelStats

MB = 1024 * 1024  # profiles' *_mb limits are mebibytes
_SCALE_BYTES = 4  # fp32 scales (torchao/ExecuTorch int8 and 8da4w store fp32; fp16 scales would be smaller)


@dataclass(frozen=True)
class Estimate:
    """The cost model's prediction for one candidate; ``breakdown`` holds the terms it was summed from."""

    artifact_bytes: int
    peak_ram_bytes: int
    latency_ms: float
    breakdown: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Estimate":
        """Rebuild from ``to_dict`` output; raises InputFileError naming missing or unknown keys."""
        names = {f.name for f in fields(cls)}
        if set(d) != names:
            raise InputFileError(
                f"estimate: missing keys {sorted(names - set(d))}, unknown keys {sorted(set(d) - names)}; "
                f"expected {sorted(names)}")
        return cls(int(d["artifact_bytes"]), int(d["peak_ram_bytes"]), float(d["latency_ms"]),
                   {str(k): float(v) for k, v in d["breakdown"].items()})


@dataclass(frozen=True)
class RuntimeCost:
    """Per-runtime constants of the cost model (see ``RUNTIME_COSTS`` for how each was measured)."""

    overhead_bytes: int            # resident memory of the runtime itself with a model loaded
    per_op_overhead_ms: float      # dispatch cost per op, multiplied by ModelStats.aten_ops
    activation_factor: float       # runtime activation arena / eager live-tensor peak
    per_call_overhead_ms: float = 0.0   # fixed cost of one inference call
    artifact_base_bytes: int = 0        # artifact size of a one-op model, weights aside
    artifact_bytes_per_op: int = 0      # graph bytes each further op adds to the artifact


# How measured (build host, Nov 2025; scripts were throwaway, method recorded here):
# * overhead_bytes: VmRSS of a fresh `python -c` that imports the runtime, loads a one-op model
#   (y = x + x, [1, 8]) and runs it once, minus VmRSS of a bare `python -c pass` (10.6 MiB);
#   median of 3 processes. These Python-runner numbers include numpy (14.7 MiB) because the device
#   runner imports it.
# * per_op_overhead_ms / per_call_overhead_ms: mean call time of a chain of 201 tanh ops on a [1, 8]
#   tensor minus that of 1 tanh op, divided by 200 (per op), and the 1-op time (per call); 1 thread,
#   2000 timed calls after 50 warm-ups. ORT with graph optimisations off so the chain stays 201 ops;
#   ExecuTorch through the XNNPACK delegate; LiteRT through ai_edge_litert's Interpreter (a chain of
#   adds is constant-folded to one op by the TFLite converter, hence tanh). Host x86 numbers: a phone's
#   little cores are slower, which is what calibration is for.
# * artifact_*: file size of those 1-op and 201-op artifacts: base, and (201-op - 1-op) / 200.
# * activation_factor: NOT measured yet: 1.0 assumes the runtime's arena holds what eager PyTorch holds
#   live at its peak. Calibration against bench peak_rss_mb is expected to replace it.
RUNTIME_COSTS: dict[Runtime, RuntimeCost] = {
    # 42.5 MiB over bare python: onnxruntime 1.31 CPU EP (27.8) + numpy (14.7).
    # 0.63 us/op, 15.2 us/call; 122 B for one op, 57 B/op.
    Runtime.ONNXRUNTIME: RuntimeCost(
        overhead_bytes=int(42.5 * MB), per_op_overhead_ms=0.00063, activation_factor=1.0,
        per_call_overhead_ms=0.0152, artifact_base_bytes=122, artifact_bytes_per_op=57),
    # executorch 1.5.1: importing executorch.runtime costs 346 MiB over bare python, but 344 MiB of that
    # is torch + exir, which the Python pybindings import and no app embedding the C++ runtime carries.
    # Counted instead: RSS growth of load_program + load_method + execute with the library already
    # imported (2.5 MiB) + the native extension's size (_C.so, 0.5 MiB) = 3.0 MiB.
    # 0.25 us/op, 22.4 us/call (XNNPACK delegate); 1392 B for one op, 84 B/op.
    Runtime.EXECUTORCH: RuntimeCost(
        overhead_bytes=int(3.0 * MB), per_op_overhead_ms=0.00025, activation_factor=1.0,
        per_call_overhead_ms=0.0224, artifact_base_bytes=1392, artifact_bytes_per_op=84),
    # 26.7 MiB over bare python: ai_edge_litert Interpreter (12.0) + numpy (14.7).
    # 0.05 us/op, 2.1 us/call; 732 B for one op, 104 B/op.
    Runtime.LITERT: RuntimeCost(
        overhead_bytes=int(26.7 * MB), per_op_overhead_ms=0.00005, activation_factor=1.0,
        per_call_overhead_ms=0.0021, artifact_base_bytes=732, artifact_bytes_per_op=104),
}


def _check_shapes(stats: "ModelStats") -> None:
    # The per-channel and per-group scale counts come from the shapes; a stats object whose totals
    # disagree with them would silently drop weights from the int8/int4 sizes.
    for label, shapes, total in (("linear_shapes", stats.linear_shapes, stats.quantizable_linear_params),
                                 ("embedding_shapes", stats.embedding_shapes, stats.embedding_params)):
        if sum(r * c for r, c in shapes) != total:
            raise EdgeoptError(f"ModelStats for {stats.model_name!r}: {label} sum to "
                               f"{sum(r * c for r, c in shapes)} weights but the total says {total}")


def weight_bytes(stats: "ModelStats", precision: Precision, *, quantize_embeddings: bool = True,
                 group_size: int = 32) -> int:
    """Bytes of weights as a packager stores them at ``precision`` (the rule is in the module docstring).

    Raises UsageError for a non-positive ``group_size``.
    """
    if not isinstance(group_size, int) or group_size <= 0:
        raise UsageError(f"weight_bytes: group_size must be a positive integer, got {group_size!r} (e.g. 32)")
    precision = Precision(precision)
    if precision in (Precision.FP32, Precision.FP16):
        return stats.params_total * precision.weight_bits // 8
    _check_shapes(stats)
    rest = stats.params_total - stats.quantizable_linear_params - stats.embedding_params
    if quantize_embeddings:
        emb = sum(r * c + r * _SCALE_BYTES for r, c in stats.embedding_shapes)
    else:
        emb = 4 * stats.embedding_params
    if precision is Precision.INT8:
        lin = sum(r * c + r * _SCALE_BYTES for r, c in stats.linear_shapes)
    else:
        lin = sum(r * math.ceil(c / 2) + r * math.ceil(c / group_size) * _SCALE_BYTES
                  for r, c in stats.linear_shapes)
    return lin + emb + 4 * rest


def _ops_per_s(compute, precision: Precision) -> float:
    """Effective ops/s of ``compute`` (a profile's compute section) for ``precision``."""
    if precision is Precision.FP32:
        g = compute.fp32_gflops
    elif precision is Precision.FP16:
        g = compute.fp16_gflops or compute.fp32_gflops  # CPUs without fp16 math run fp32 kernels
    elif precision is Precision.INT8:
        g = compute.int8_gops
    else:
        g = compute.int4_gops or compute.int8_gops  # int4 weights are unpacked and run int8 math
    return float(g) * 1e9


def estimate(stats: "ModelStats", profile, runtime: Runtime, precision: Precision) -> Estimate:
    """Predict artifact size, peak RAM and latency of ``stats`` at ``precision`` in ``runtime`` on ``profile``.

    Peak RAM = weights as loaded (int8/int4 runtimes keep weights packed) + activation peak x the
    runtime's arena factor + KV cache + the runtime's own overhead. Activations and KV cache halve at
    fp16 only when the profile has fp16 math (``compute.fp16_gflops``); otherwise runtimes upcast to fp32.
    Latency = max(FLOPs / ops-per-second, weight bytes / memory bandwidth) + call and per-op overhead.
    """
    runtime, precision = Runtime(runtime), Precision(precision)
    cost, compute = RUNTIME_COSTS[runtime], profile.compute
    weights = weight_bytes(stats, precision)
    half = precision is Precision.FP16 and bool(compute.fp16_gflops)
    act = stats.activation_peak_bytes * cost.activation_factor / (2 if half else 1)
    kv = stats.kv_cache_bytes / (2 if half else 1)
    compute_ms = stats.flops / _ops_per_s(compute, precision) * 1e3
    memory_ms = weights / (float(compute.memory_bandwidth_gbps) * 1e9) * 1e3
    op_ms = cost.per_call_overhead_ms + cost.per_op_overhead_ms * stats.aten_ops
    breakdown = {
        "weights_bytes": float(weights), "activation_bytes": float(act), "kv_cache_bytes": float(kv),
        "runtime_overhead_bytes": float(cost.overhead_bytes),
        "compute_ms": compute_ms, "memory_ms": memory_ms, "op_overhead_ms": op_ms,
    }
    return Estimate(
        artifact_bytes=weights + cost.artifact_base_bytes + cost.artifact_bytes_per_op * stats.aten_ops,
        peak_ram_bytes=int(math.ceil(weights + act + kv + cost.overhead_bytes)),
        latency_ms=max(compute_ms, memory_ms) + op_ms,
        breakdown=breakdown,
    )


def fit_reasons(est: Estimate, profile, precision: Precision) -> list[str]:
    """Why a candidate does not fit ``profile`` (empty when it fits). Sizes are rounded up to whole MB."""
    reasons = []
    if precision not in tuple(profile.limits.precisions):
        reasons.append(f"{precision.value} not in precisions")
    ram_mb, storage_mb = math.ceil(est.peak_ram_bytes / MB), math.ceil(est.artifact_bytes / MB)
    if est.peak_ram_bytes > profile.limits.model_ram_mb * MB:
        reasons.append(f"exceeds model_ram_mb: {ram_mb} > {profile.limits.model_ram_mb}")
    if est.artifact_bytes > profile.limits.model_storage_mb * MB:
        reasons.append(f"exceeds model_storage_mb: {storage_mb} > {profile.limits.model_storage_mb}")
    return reasons


def fit_table(stats: "ModelStats", profiles: Iterable, precisions: Iterable[Precision] | None = None) -> list[dict]:
    """One row per profile x precision, estimated in the profile's preferred (first) runtime.

    Row keys: profile, runtime, precision, artifact_mb, peak_ram_mb, latency_ms, fits, reason
    (``"; "``-joined reasons, or None when it fits). For ``edgeopt inspect``.
    """
    precs = [Precision(p) for p in (precisions if precisions is not None else Precision)]
    rows = []
    for profile in profiles:
        runtime = Runtime(profile.runtimes[0])
        for precision in precs:
            est = estimate(stats, profile, runtime, precision)
            reasons = fit_reasons(est, profile, precision)
            rows.append({
                "profile": profile.name, "runtime": runtime.value, "precision": precision.value,
                "artifact_mb": round(est.artifact_bytes / MB, 2), "peak_ram_mb": round(est.peak_ram_bytes / MB, 2),
                "latency_ms": round(est.latency_ms, 3), "fits": not reasons,
                "reason": "; ".join(reasons) if reasons else None,
            })
    return rows
