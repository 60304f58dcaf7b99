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
        ``group_size`` weights of a row (symmetric, no zero point); the rest fp32. Embedding tables: a
        decoder LM's are int4 in the same groups along each row (every packager: ExecuTorch embedding_4bit,
        ONNX GatherBlockQuantized, LiteRT EMBEDDING_LOOKUP int4), int8 rows where the width does not split into
        whole groups; an encoder's stay int8 per row.
  A tied LM head shares the embedding's storage in the checkpoint. Quantized, ExecuTorch and LiteRT store it
  twice (the table for the lookup, the head with the linear scheme), ONNX once at int4 (the lookup reads the
  head's MatMulNBits blocks) and twice at int8; without a runtime (``runtime=None``) it is counted once.
  Checked against real files of SmolLM2-135M's shape (MiB): 2 of 30 layers as .pte at int4, 37.7 measured vs
  38.0 predicted; all 30 as .onnx at int4, 80.4 measured vs 80.3 (the rule before, int8 tables and the head
  not counted, gave 90.6 for every runtime).
"""

from __future__ import annotations

import enum
import math
from dataclasses import asdict, dataclass, field, fields
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


_ONE = {p: 1.0 for p in Precision}


@dataclass(frozen=True)
class RuntimeCost:
    """Per-runtime constants of the cost model (see ``RUNTIME_COSTS`` for how each was measured)."""

    overhead_bytes: int            # resident memory of the native runtime library with a model loaded
    per_op_overhead_ms: float      # dispatch cost per op, multiplied by ModelStats.aten_ops
    activation_factor: float       # runtime activation arena / eager live-tensor peak
    per_call_overhead_ms: float = 0.0   # fixed cost of one inference call
    artifact_base_bytes: int = 0        # artifact size of a one-op model, weights aside
    artifact_bytes_per_op: int = 0      # graph bytes each further op adds to the artifact
    # RSS of edgeopt's Python device runner with the runtime imported and no model: what `edgeopt bench`
    # measures on top of the model, and so what the planner budgets.
    base_rss_bytes: int = 0
    import_rss_bytes: int = 0  # python + numpy + the runtime imported, no model: the floor of base_rss_bytes
    # rate this runtime reaches / the profile's nominal rate, per precision (kernels differ by runtime)
    efficiency: dict = field(default_factory=lambda: dict(_ONE), hash=False)
    # resident bytes / stored weight bytes, per precision (fp16 unpacked to fp32 = 2, pre-packed copies > 1)
    weight_rss_factor: dict = field(default_factory=lambda: dict(_ONE), hash=False)
    # resident bytes each op adds (kernel objects, packed-weight headers, its block of the arena)
    op_rss_bytes: int = 0


# How measured. Two sets of numbers, both from this x86-64 build host (AMD EPYC, 2 cores, AVX2, no VNNI):
#
# Micro-benchmarks (Nov 2025; method recorded here, scripts were throwaway):
# * overhead_bytes: RSS of the native runtime library with a one-op model loaded (y = x + x, [1, 8]) over bare
#   python; for ExecuTorch the growth of load_program + load_method + execute with the library imported
#   (2.5 MiB) + its _C.so (0.5 MiB), because an app embedding the C++ runtime carries no torch.
# * per_call_overhead_ms: the call time of a one-op model, 1 thread, 2000 calls after 50 warm-ups.
# * artifact_*: file size of 1-op and 201-op artifacts: base, and (201-op - 1-op) / 200.
#
# Fitted to edgeopt bench (Nov 2026): `python benchmarks/bench_cost_model.py` packaged all-MiniLM-L6-v2 and a
# 5.3 M-parameter Llama in every runtime x precision for this host's `profiles detect` profile (fp32 78.3 GFLOPS,
# int8 156.6 GOPS, 2 threads), ran each bundle's Python runner 3 times interleaved and fitted the terms with
# edgeopt.planner.calibrate (the same code `edgeopt profiles calibrate` runs). With these numbers the detected
# profile predicts those 24 cells within 28% (latency p50) and 12% (peak RSS); a third model (a 3.5 M-parameter
# BERT) left out of the fit is the out-of-sample check, printed by the same benchmark.
# * efficiency: the rate reached / the profile's nominal rate for that precision (fp16 and int4 against the
#   fp32 and int8 rates, as this CPU has no fp16 math and computes int4 in int8). Above 1 where the runtime
#   beats the profile convention of "about half the vector peak" (XNNPACK fp32 GEMMs); int4 ~0.4-0.5: the
#   blockwise int4 kernels unpack weights every run on AVX2.
# * per_op_overhead_ms: 12-38 us per eager aten op at 2 threads, not the 0.05-0.6 us a single-threaded op
#   chain costs: each op's work is split over the thread pool and joined, and small GEMMs run below the
#   large ones' rate; the fitted per-op term carries both.
# * base_rss_bytes: the Python runner with the runtime imported and a model loaded, before its weights: the
#   import alone (python + numpy + runtime) is 44.3 MiB for onnxruntime and 34.3 for ai_edge_litert; the fit adds
#   session and arena set-up. executorch is planned with what an app embedding its C++ runtime pays, measured
#   with edgeopt's light runner (runtimes/executorch/light.cpp: the wheel's libexecutorch*, XNNPACK and kernels
#   behind ctypes, no torch; Dec 2026): 29.1 MiB imported, 58.2 MiB base (int8 MiniLM: 81.8 MiB peak, predicted
#   82). Its Python pybindings import torch and torchao: 354.5 MiB imported, 383.4 base, 401.6 peak for the same
#   model - a cost of the Python harness, not of an app, which `edgeopt bench` reports as runner: pybindings.
# * weight_rss_factor: resident bytes per stored weight byte, floored at 1. fp16 is unpacked to fp32 by
#   XNNPACK in LiteRT (3.3: the mapped file + an fp32 copy) and partly by onnxruntime's CPU EP (1.7).
# * op_rss_bytes: LiteRT keeps ~218 KiB per op (XNNPACK packed-weight headers and per-op workspace).
# * activation_factor: 0.5, the floor: these models' activations (2-3 MiB) are too small next to the rest
#   to measure; a runtime's arena holds at least half of eager PyTorch's live-tensor peak.
_FP16, _INT8, _INT4, _FP32 = Precision.FP16, Precision.INT8, Precision.INT4, Precision.FP32
RUNTIME_COSTS: dict[Runtime, RuntimeCost] = {
    Runtime.ONNXRUNTIME: RuntimeCost(
        overhead_bytes=int(27.8 * MB), per_op_overhead_ms=0.0124, activation_factor=0.5,
        per_call_overhead_ms=0.0152, artifact_base_bytes=122, artifact_bytes_per_op=57,
        base_rss_bytes=int(96.7 * MB), import_rss_bytes=int(44.3 * MB),
        efficiency={_FP32: 1.209, _FP16: 1.200, _INT8: 0.936, _INT4: 0.501},
        weight_rss_factor={_FP32: 1.0, _FP16: 1.709, _INT8: 1.0, _INT4: 1.0}),
    Runtime.EXECUTORCH: RuntimeCost(
        overhead_bytes=int(3.0 * MB), per_op_overhead_ms=0.0178, activation_factor=0.5,
        per_call_overhead_ms=0.0224, artifact_base_bytes=1392, artifact_bytes_per_op=84,
        base_rss_bytes=int(58.2 * MB), import_rss_bytes=int(29.1 * MB),
        efficiency={_FP32: 1.342, _FP16: 0.489, _INT8: 0.796, _INT4: 0.384},
        weight_rss_factor={_FP32: 1.0, _FP16: 1.0, _INT8: 1.0, _INT4: 1.0}),
    Runtime.LITERT: RuntimeCost(
        overhead_bytes=int(12.0 * MB), per_op_overhead_ms=0.0382, activation_factor=0.5,
        per_call_overhead_ms=0.0021, artifact_base_bytes=732, artifact_bytes_per_op=104,
        base_rss_bytes=int(30.9 * MB), import_rss_bytes=int(34.3 * MB), op_rss_bytes=int(218.5 * 1024),
        efficiency={_FP32: 1.860, _FP16: 1.589, _INT8: 0.900, _INT4: 0.524},
        weight_rss_factor={_FP32: 1.0, _FP16: 3.278, _INT8: 1.0, _INT4: 1.0}),
}


MEASURED_ARCH = "x86_64"  # where the efficiencies and per-op costs above were measured
# per-op cost given to every runtime on other architectures: the median of the three measured above
NEUTRAL_PER_OP_MS = sorted(c.per_op_overhead_ms for c in RUNTIME_COSTS.values())[len(RUNTIME_COSTS) // 2]


def _check_shapes(stats: "ModelStats") -> None:
    # The per-channel and per-group scale counts come from the shapes; a stats object whose totals
    # disagree with them would silently drop weights from the int8/int4 sizes.
    for label, shapes, total in (("linear_shapes", stats.linear_shapes, stats.quantizable_linear_params),
                                 ("embedding_shapes", stats.embedding_shapes, stats.embedding_params)):
        if sum(r * c for r, c in shapes) != total:
            raise EdgeoptError(f"ModelStats for {stats.model_name!r}: {label} sum to "
                               f"{sum(r * c for r, c in shapes)} weights but the total says {total}")


def weight_bytes(stats: "ModelStats", precision: Precision, *, quantize_embeddings: bool = True,
                 group_size: int = 32, runtime: Runtime | None = None) -> int:
    """Bytes of weights as a packager stores them at ``precision`` (the rule is in the module docstring);
    ``runtime`` decides whether a tied LM head is stored a second time.

    Raises UsageError for a non-positive ``group_size``.
    """
    if not isinstance(group_size, int) or group_size <= 0:
        raise UsageError(f"weight_bytes: group_size must be a positive integer, got {group_size!r} (e.g. 32)")
    precision = Precision(precision)
    if precision in (Precision.FP32, Precision.FP16):
        return stats.params_total * precision.weight_bits // 8
    _check_shapes(stats)
    rest = stats.params_total - stats.quantizable_linear_params - stats.embedding_params

    def int8_rows(r: int, c: int) -> int:
        return r * c + r * _SCALE_BYTES

    def int4_groups(r: int, c: int) -> int:
        return r * math.ceil(c / 2) + r * math.ceil(c / group_size) * _SCALE_BYTES

    int4 = precision is Precision.INT4
    decoder = stats.family == "decoder"
    if quantize_embeddings:
        emb = sum(int4_groups(r, c) if int4 and decoder and c % group_size == 0 else int8_rows(r, c)
                  for r, c in stats.embedding_shapes)
    else:
        emb = 4 * stats.embedding_params
    lin = sum((int4_groups if int4 else int8_rows)(r, c) for r, c in stats.linear_shapes)
    head = 0
    if stats.tied_head and stats.embedding_shapes and runtime is not None and quantize_embeddings:
        twice = Runtime(runtime) in (Runtime.EXECUTORCH, Runtime.LITERT) or not int4
        if twice:  # the head GEMM's own quantized copy of the token table (the first, largest table)
            r, c = stats.embedding_shapes[0]
            head = (int4_groups if int4 else int8_rows)(r, c)
    return lin + emb + head + 4 * rest


def _ops_per_s(compute, precision: Precision) -> float:
    """Nominal ops/s of ``compute`` (a profile's compute section) for ``precision``."""
    if precision is Precision.FP32:
        g = compute.fp32_gflops
    elif precision is Precision.FP16:
        g = compute.fp16_gflops or compute.fp32_gflops  # CPUs without fp16 math run fp32 kernels
    elif precision is Precision.INT8:
        g = compute.int8_gops
    else:
        g = compute.int4_gops or compute.int8_gops  # int4 weights are unpacked and run int8 math
    return float(g) * 1e9


def prior_terms(profile, runtime: Runtime) -> dict[str, Any]:
    """The cost-model terms ``estimate`` uses for ``runtime`` on ``profile``.

    A term the profile's ``calibration`` section measured for this runtime wins; otherwise it comes from the
    profile's nominal ``compute`` rates times the runtime's measured ``efficiency`` and ``RUNTIME_COSTS``.
    Keys: rates (Precision -> ops/s), per_op_ms, per_call_ms, base_bytes, weight_rss_factor (Precision ->
    factor), activation_factor, calibrated (names of the terms taken from the calibration).
    """
    runtime = Runtime(runtime)
    cost, compute = RUNTIME_COSTS[runtime], profile.compute
    cal = profile.calibration.get(runtime) if getattr(profile, "calibration", None) else None
    # Runtime efficiencies and per-op costs were measured on x86-64; how runtimes rank on another
    # architecture is not known until measured there, so there every runtime gets the same neutral terms
    # (the profile's runtime order then decides between them) until `profiles calibrate` says otherwise.
    arch = getattr(getattr(profile, "device", None), "arch", MEASURED_ARCH)
    # The same holds for a runtime that executes on an accelerator (the profile's execution targets): its CPU
    # efficiencies say nothing about its GPU kernels.
    execution = getattr(profile, "execution", None)
    on_accelerator = execution is not None and execution.targets(runtime)[0].is_accelerator
    same_arch = arch == MEASURED_ARCH and not on_accelerator
    calibrated: list[str] = []
    rates = {}
    for p in Precision:
        measured = cal.rate(p) if cal else None
        if measured:
            calibrated.append(f"{p.value} rate")
        rates[p] = measured * 1e9 if measured else _ops_per_s(compute, p) * (cost.efficiency[p] if same_arch else 1.0)
    factors = dict(cost.weight_rss_factor)
    for name, value in ((cal.weight_rss_factor or {}) if cal else {}).items():
        factors[Precision(name)] = float(value)
        calibrated.append(f"{name} weight residency")

    def pick(name: str, measured, default):
        if measured is None:
            return default
        calibrated.append(name)
        return measured

    return {
        "rates": rates,
        "per_op_ms": pick("per-op overhead", cal.per_op_us / 1e3 if cal and cal.per_op_us is not None else None,
                          cost.per_op_overhead_ms if same_arch else NEUTRAL_PER_OP_MS),
        "per_call_ms": cost.per_call_overhead_ms,
        "base_bytes": pick("base RSS", cal.base_rss_mb * MB if cal and cal.base_rss_mb is not None else None,
                           float(cost.base_rss_bytes)),
        "weight_rss_factor": factors,
        "op_bytes": pick("per-op memory", cal.op_rss_kb * 1024 if cal and cal.op_rss_kb is not None else None,
                         float(cost.op_rss_bytes)),
        "activation_factor": pick("activation factor", cal.activation_factor if cal else None,
                                  cost.activation_factor),
        "calibrated": calibrated,
    }


def estimate(stats: "ModelStats", profile, runtime: Runtime, precision: Precision) -> Estimate:
    """Predict artifact size, peak RAM and latency of ``stats`` at ``precision`` in ``runtime`` on ``profile``.

    Peak RAM = the runner's base RSS with the runtime loaded + stored weight bytes x the runtime's residency
    factor at this precision (2.0 where it unpacks fp16 to fp32, >1 where it pre-packs a copy) + activation
    peak x the runtime's arena factor + KV cache. Activations and KV cache halve at fp16 only when the profile
    has fp16 math (``compute.fp16_gflops``); otherwise runtimes upcast to fp32.
    Latency = max(FLOPs / rate, weight bytes / memory bandwidth) + per-call + per-op overhead x aten ops, where
    rate is the profile's calibrated rate for this runtime and precision, else its nominal rate x the
    runtime's efficiency (see ``prior_terms``).
    """
    runtime, precision = Runtime(runtime), Precision(precision)
    cost, compute = RUNTIME_COSTS[runtime], profile.compute
    terms = prior_terms(profile, runtime)
    weights = weight_bytes(stats, precision, runtime=runtime)
    half = precision is Precision.FP16 and bool(compute.fp16_gflops)
    act = stats.activation_peak_bytes * terms["activation_factor"] / (2 if half else 1)
    kv = stats.kv_cache_bytes / (2 if half else 1)
    resident = weights * terms["weight_rss_factor"][precision] + terms["op_bytes"] * stats.aten_ops
    compute_ms = stats.flops / terms["rates"][precision] * 1e3
    memory_ms = weights / (float(compute.memory_bandwidth_gbps) * 1e9) * 1e3
    op_ms = terms["per_call_ms"] + terms["per_op_ms"] * stats.aten_ops
    breakdown = {
        "weights_bytes": float(weights), "resident_weights_bytes": float(resident),
        "activation_bytes": float(act), "kv_cache_bytes": float(kv),
        "runtime_overhead_bytes": float(terms["base_bytes"]),
        "compute_ms": compute_ms, "memory_ms": memory_ms, "op_overhead_ms": op_ms,
        "rate_gops": terms["rates"][precision] / 1e9, "calibrated": float(bool(terms["calibrated"])),
    }
    return Estimate(
        artifact_bytes=weights + cost.artifact_base_bytes + cost.artifact_bytes_per_op * stats.aten_ops,
        peak_ram_bytes=int(math.ceil(resident + act + kv + terms["base_bytes"])),
        latency_ms=max(compute_ms, memory_ms) + op_ms,
        breakdown=breakdown,
    )


class Delivery(str, enum.Enum):
    """How an artifact reaches the device: inside the app package or image, or downloaded after install."""

    BUNDLED = "bundled"    # fits limits.model_storage_mb
    DOWNLOAD = "download"  # larger than model_storage_mb, fits limits.model_download_mb


def delivery(est: Estimate, profile) -> Delivery | None:
    """``BUNDLED`` when the artifact fits ``model_storage_mb``, ``DOWNLOAD`` when it fits only
    ``model_download_mb``, None when it fits neither (or the profile has no download budget and it is too big)."""
    limits = profile.limits
    if est.artifact_bytes <= limits.model_storage_mb * MB:
        return Delivery.BUNDLED
    download_mb = getattr(limits, "model_download_mb", None)
    if download_mb and est.artifact_bytes <= download_mb * MB:
        return Delivery.DOWNLOAD
    return None


def delivery_note(est: Estimate, profile) -> str | None:
    """Why a candidate is delivered as it is, with the numbers, e.g. ``130 MB > model_storage_mb 32 (the bundled
    budget), <= model_download_mb 1024`` for a download (None when it fits neither budget)."""
    how = delivery(est, profile)
    limits, size_mb = profile.limits, math.ceil(est.artifact_bytes / MB)
    if how is Delivery.BUNDLED:
        return f"{size_mb} MB <= model_storage_mb {limits.model_storage_mb}"
    if how is Delivery.DOWNLOAD:
        return (f"{size_mb} MB > model_storage_mb {limits.model_storage_mb} (the bundled budget), "
                f"<= model_download_mb {limits.model_download_mb}")
    return None


def fit_reasons(est: Estimate, profile, precision: Precision) -> list[str]:
    """Why a candidate does not fit ``profile`` (empty when it fits). Sizes are rounded up to whole MB.

    An artifact larger than ``model_storage_mb`` still fits when the profile has a ``model_download_mb`` it
    stays within (delivered as a download, see ``delivery``); above both, the reason names both.
    """
    reasons = []
    if precision not in tuple(profile.limits.precisions):
        reasons.append(f"{precision.value} not in precisions")
    ram_mb, storage_mb = math.ceil(est.peak_ram_bytes / MB), math.ceil(est.artifact_bytes / MB)
    if est.peak_ram_bytes > profile.limits.model_ram_mb * MB:
        reasons.append(f"exceeds model_ram_mb: {ram_mb} > {profile.limits.model_ram_mb}")
    if delivery(est, profile) is None:
        download_mb = getattr(profile.limits, "model_download_mb", None)
        both = f" (bundled) and model_download_mb: {storage_mb} > {download_mb} (download)" if download_mb else ""
        reasons.append(f"exceeds model_storage_mb: {storage_mb} > {profile.limits.model_storage_mb}{both}")
    return reasons


def fit_table(stats: "ModelStats", profiles: Iterable, precisions: Iterable[Precision] | None = None) -> list[dict]:
    """One row per profile x precision, estimated in the profile's preferred (first) runtime.

    Row keys: profile, runtime, precision, artifact_mb, peak_ram_mb, latency_ms, fits, delivery ("bundled",
    "download", or None when too large for the profile's storage), reason (``"; "``-joined reasons, or None when
    it fits). For ``edgeopt inspect``.
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
                "delivery": how.value if (how := delivery(est, profile)) else None,
                "reason": "; ".join(reasons) if reasons else None,
            })
    return rows
