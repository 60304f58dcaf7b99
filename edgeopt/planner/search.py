"""Candidate search: enumerate runtime × precision, estimate, reject with reasons, order the rest.

Feasible candidates are ordered by delivery first (one that fits ``limits.model_storage_mb`` and ships inside
the app before one that fits only ``limits.model_download_mb`` and is downloaded after install: an app downloads
a model only when none fits its package), then by accuracy risk (fp32 < fp16 < int8 < int4), then by estimated
latency; estimates within ``SAME_SPEED`` of the fastest of their precision count as a tie, broken by the
profile's runtime preference. Speed enters as a constraint: the profile's ``targets.latency_ms`` rejects
candidates estimated slower (for decoder LMs, slower per generated token), so a generous profile keeps full
precision and a tight one forces quantization. The
build-and-verify loop that walks this order lives in ``edgeopt.pipeline``; rows it tries get their
measured fidelity recorded here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace

from edgeopt.formats import Precision, Runtime, Target
from edgeopt.planner.cost import Delivery
from edgeopt.prune import PruneSpec
from edgeopt.quantize import Activations, QuantScheme, default_scheme

# Pruning depths the planner tries, least aggressive first, only when no unpruned candidate fits: width
# (FFN channels, and KV-head groups where the config can say so) kept, and whole blocks dropped. On MiniLM
# (benchmarks/bench_prune.py) these keep mean cosine 0.955, 0.931, 0.881, 0.827 and 0.666 before distillation.
PRUNE_LADDER = (PruneSpec(0.9), PruneSpec(1.0, drop_blocks=1), PruneSpec(0.75), PruneSpec(0.75, drop_blocks=1),
                PruneSpec(0.5, drop_blocks=2))


class Status(str, enum.Enum):
    CHOSEN = "chosen"
    FEASIBLE = "feasible"  # fits the estimates; not (yet) built
    REJECTED = "rejected"  # by an estimate, a capability, or a measurement


def prune_tag(spec: PruneSpec) -> str:
    """``prune:w75%-1b`` (width kept, blocks dropped), the suffix of a pruned candidate's key."""
    heads = f",h{spec.head_ratio:.0%}" if spec.head_ratio is not None else ""
    return f"prune:w{spec.width_ratio:.0%}{heads}-{spec.drop_blocks}b"


@dataclass(frozen=True)
class Candidate:
    """One point of the search space: runtime x precision (its quantization scheme) x pruning depth."""

    runtime: Runtime
    precision: Precision
    scheme: QuantScheme
    prune: PruneSpec | None = None  # None: the model as given

    @property
    def key(self) -> str:
        base = f"{self.runtime.value}/{self.precision.value}"
        return base if self.prune is None else f"{base}+{prune_tag(self.prune)}"

    def to_dict(self) -> dict:
        return {"runtime": self.runtime.value, "precision": self.precision.value, "scheme": self.scheme.to_dict(),
                "prune": self.prune.to_dict() if self.prune else None}

    @classmethod
    def from_dict(cls, d: dict) -> "Candidate":
        prune = PruneSpec.from_dict(d["prune"]) if d.get("prune") else None
        return cls(Runtime(d["runtime"]), Precision(d["precision"]), QuantScheme.from_dict(d["scheme"]), prune)


@dataclass
class CandidateRow:
    """One line of the plan table."""

    candidate: Candidate
    estimate: dict | None  # Estimate.to_dict(); None when no estimate applies
    status: Status
    reasons: list[str] = field(default_factory=list)
    fidelity: dict | None = None  # Fidelity.to_dict() once built and measured
    attempts: list[dict] = field(default_factory=list)  # each build tried: scheme + measured fidelity
    delivery: Delivery | None = None  # bundled / download by its size; None: too large for either budget
    delivery_note: str | None = None  # why, with the numbers ("130 MB > model_storage_mb 32 (the bundled ...")
    # where the runtime executes it on the device, most preferred first (the profile's execution targets its
    # runtime has a backend for); empty when it has none, and the row is rejected for that
    targets: tuple[Target, ...] = (Target.CPU,)

    def to_dict(self) -> dict:
        return {
            "candidate": self.candidate.to_dict(),
            "estimate": self.estimate,
            "status": self.status.value,
            "reasons": list(self.reasons),
            "fidelity": self.fidelity,
            "attempts": list(self.attempts),
            "delivery": self.delivery.value if self.delivery else None,
            "delivery_note": self.delivery_note,
            "targets": [t.value for t in self.targets],
        }

    @classmethod
    def from_dict(cls, d: dict) -> "CandidateRow":
        how = d.get("delivery")  # absent in plans written before delivery existed
        return cls(Candidate.from_dict(d["candidate"]), d.get("estimate"), Status(d["status"]), list(d.get("reasons", [])),
                   d.get("fidelity"), list(d.get("attempts", [])), Delivery(how) if how else None,
                   d.get("delivery_note"),
                   tuple(Target(t) for t in d.get("targets", ["cpu"])))  # absent before targets existed: the CPU


@dataclass
class Plan:
    """The candidate table for one model on one profile, in the order candidates are tried."""

    model_name: str
    profile_name: str
    rows: list[CandidateRow]
    context: dict = field(default_factory=dict)  # the profile's limits and targets the rows were judged by

    @property
    def feasible(self) -> list[CandidateRow]:
        return [r for r in self.rows if r.status is Status.FEASIBLE]

    @property
    def chosen(self) -> CandidateRow | None:
        return next((r for r in self.rows if r.status is Status.CHOSEN), None)

    def to_dict(self) -> dict:
        return {"model": self.model_name, "profile": self.profile_name, "context": dict(self.context),
                "rows": [r.to_dict() for r in self.rows]}

    @classmethod
    def from_dict(cls, d: dict) -> "Plan":
        return cls(d["model"], d["profile"], [CandidateRow.from_dict(r) for r in d["rows"]], dict(d.get("context") or {}))

    def why_nothing_fits(self) -> str:
        lines = [f"no candidate fits profile {self.profile_name!r} for {self.model_name}:"]
        lines += [f"  {r.candidate.key}: {'; '.join(r.reasons)}" for r in self.rows]
        return "\n".join(lines)


def make_plan(stats, profile, *, runtimes: list[Runtime] | None = None,
              precisions: list[Precision] | None = None, activations: Activations | None = None,
              pruned: dict | None = None) -> Plan:
    """Estimate every runtime × precision candidate for ``stats`` on ``profile``; nothing is built.

    ``runtimes``/``precisions`` restrict the space (``--format``/``--precision`` overrides); a
    restriction the profile does not allow is still listed, rejected with the reason. ``activations``
    sets how quantized candidates treat activations (dynamic by default; static = calibrated).
    ``pruned`` maps PruneSpec -> the ModelStats of the model pruned that way; its candidates are added
    (after every unpruned one) only when no unpruned candidate fits: pruning costs accuracy that
    quantization alone does not.
    """
    rows = _rows(stats, profile, runtimes, precisions, activations, None)
    if pruned and not any(r.status is Status.FEASIBLE for r in rows):
        for spec, pstats in pruned.items():
            rows += _rows(pstats, profile, runtimes, precisions, activations, spec)
    _order(rows, runtimes or list(profile.runtimes))
    return Plan(stats.model_name, profile.name, rows, _context(stats, profile))


def _rows(stats, profile, runtimes, precisions, activations, prune: PruneSpec | None) -> list[CandidateRow]:
    from edgeopt.packagers import PACKAGERS, available_runtimes
    from edgeopt.planner.cost import delivery, delivery_note, estimate, fit_reasons

    have = set(available_runtimes())
    lm = stats.family == "decoder" and stats.num_layers is not None  # packaged with its KV cache
    rows = []
    for runtime in runtimes or list(profile.runtimes):
        targets, no_backend = execution_targets(profile, runtime)
        if no_backend:  # estimating it would use rates of a device it cannot run on: no estimate at all
            rows += [CandidateRow(Candidate(runtime, precision, default_scheme(precision), prune), None, Status.REJECTED,
                                  [no_backend], targets=()) for precision in precisions or list(Precision)]
            continue
        for precision in precisions or list(Precision):
            scheme = default_scheme(precision)
            if activations is not None and scheme.is_quantized:
                scheme = replace(scheme, activations=activations)
            cand = Candidate(runtime, precision, scheme, prune)
            reasons = []
            if runtime not in profile.runtimes:
                reasons.append(f"{runtime.value} not in the profile's runtimes ({', '.join(r.value for r in profile.runtimes)})")
            if runtime not in have:
                reasons.append(f"no {runtime.value} packager in this edgeopt version")
            else:
                caps = _lm_capabilities(runtime) if lm else PACKAGERS.get(runtime.value).capabilities
                if caps is None:
                    reasons.append(f"{runtime.value} packager cannot build decoder LMs with a KV cache")
                elif precision not in caps.precisions:
                    reasons.append(caps.notes.get(precision, f"{runtime.value} packager cannot build {precision.value}"))
                elif scheme.activations not in caps.activations:
                    reasons.append(f"{runtime.value} packager cannot build {scheme.activations.value} activations")
            est = estimate(stats, profile, runtime, precision)
            est_dict = est.to_dict()
            step = None
            if lm:
                step = estimate(_decode_step(stats), profile, runtime, precision).latency_ms
                est_dict["decode_ms"] = step
                est_dict["decode_tokens_per_s"] = 1000.0 / step if step > 0 else None
            reasons += fit_reasons(est, profile, precision) + _latency_reasons(est, profile, decode_ms=step)
            rows.append(CandidateRow(cand, est_dict, Status.REJECTED if reasons else Status.FEASIBLE, reasons,
                                     delivery=delivery(est, profile), delivery_note=delivery_note(est, profile),
                                     targets=targets))
    return rows


def execution_targets(profile, runtime: Runtime) -> tuple[tuple[Target, ...], str | None]:
    """The profile's execution targets for ``runtime`` that its packager has a backend for (profile order), and
    None; or ``((), reason)`` when it has none of them: the reason names the targets, what the runtime runs on
    instead, and what the user can do (a runtime that can run there, or a profile for the device it runs on).

    A runtime without a packager in this edgeopt gets its targets as asked (it is rejected for that already).
    """
    from edgeopt.packagers import PACKAGERS, available_runtimes

    runtime = Runtime(runtime)
    execution = getattr(profile, "execution", None)  # absent on profile-like test objects: the CPU
    wanted = tuple(execution.targets(runtime)) if execution is not None else (Target.CPU,)
    if runtime not in set(available_runtimes()):
        return wanted, None
    can = PACKAGERS.get(runtime.value).capabilities.targets
    usable = tuple(t for t in wanted if t in can)
    if usable:
        return usable, None
    names = " or ".join(t.value for t in wanted)
    others = sorted(r.value for r in available_runtimes()
                    if r is not runtime and any(t in PACKAGERS.get(r.value).capabilities.targets for t in wanted))
    instead = (f"use {' or '.join(others)} (--format {Runtime(others[0]).format.value})" if others
               else "no runtime in this edgeopt can")
    cpu = (f"; to plan {runtime.value} for the host CPU, use a CPU profile (desktop-cpu, or `edgeopt profiles "
           f"detect` on the host)") if Target.CPU in can else ""
    return (), (f"{runtime.value} has no {names} backend in edgeopt (it executes on: "
                f"{', '.join(sorted(t.value for t in can))} only), so it cannot run on this profile's device: {instead}{cpu}")


def _decode_step(stats):
    """``stats`` for one decode step: one token through every layer (FLOPs per token of the prefill), plus
    attention over a full KV cache (QK and AV: 4 x layers x hidden x context FLOPs)."""
    per_token = stats.flops / max(stats.seq_len * stats.batch, 1)
    attention = 4 * (stats.num_layers or 0) * (stats.hidden_size or 0) * (stats.context_len or stats.seq_len)
    return replace(stats, flops=int((per_token + attention) * stats.batch), seq_len=1,
                   activation_peak_bytes=stats.activation_peak_bytes // max(stats.seq_len, 1))


def _lm_capabilities(runtime: Runtime):
    """What ``runtime``'s decoder-LM (KV-cache) export can build; None when it has none."""
    from edgeopt.packagers.lm import lm_capabilities

    return lm_capabilities(runtime)


def _context(stats, profile) -> dict:
    """What the rows were judged by, for the explanation printed under the table."""
    cal = getattr(profile, "calibration", None)
    fid = profile.targets.fidelity
    return {
        "model_ram_mb": profile.limits.model_ram_mb, "model_storage_mb": profile.limits.model_storage_mb,
        "model_download_mb": getattr(profile.limits, "model_download_mb", None),
        "precisions": [p.value for p in profile.limits.precisions],
        "runtimes": [r.value for r in profile.runtimes],
        "latency_ms": profile.targets.latency_ms, "threads": profile.compute.threads,
        "min_cosine": fid.min_cosine, "max_perplexity_ratio": fid.max_perplexity_ratio, "max_kl": fid.max_kl,
        "batch": stats.batch, "seq_len": stats.seq_len,
        "context_len": stats.context_len, "family": stats.family,
        "calibrated": cal.source if cal else None,
    }


# Estimates closer than this factor count as equally fast: the calibrated cost model is within ~35% per
# cell, but its errors are shared by runtimes of one precision, so 10% apart is a real difference.
SAME_SPEED = 1.10
_RISK = {Precision.FP32: 0, Precision.FP16: 1, Precision.INT8: 2, Precision.INT4: 3}


def _order(rows: list[CandidateRow], runtime_order: list[Runtime]) -> None:
    """Feasible first; among them bundled before download (an app ships a model in its package when one fits
    and downloads only when none does), then least accuracy risk (no pruning before pruning, shallow before
    deep; then fp32 < fp16 < int8 < int4), then estimated latency (ties within SAME_SPEED: runtime preference)."""
    rank = {r: i for i, r in enumerate(runtime_order)}
    depth = {None: 0, **{spec: i + 1 for i, spec in enumerate(PRUNE_LADDER)}}
    fastest: dict[tuple, float] = {}
    for r in rows:
        if r.status is Status.FEASIBLE and r.estimate:
            k = (r.candidate.prune, r.candidate.precision)
            fastest[k] = min(fastest.get(k, float("inf")), r.estimate["latency_ms"])

    def key(row: CandidateRow):
        latency = row.estimate["latency_ms"] if row.estimate else float("inf")
        best = fastest.get((row.candidate.prune, row.candidate.precision))
        # tier 0: within SAME_SPEED of the fastest of this pruning depth and precision; later tiers by latency
        tier = 0 if best and latency <= best * SAME_SPEED else 1
        return (row.status is not Status.FEASIBLE, row.delivery is not Delivery.BUNDLED,
                depth.get(row.candidate.prune, len(depth)),
                _RISK[row.candidate.precision], tier, rank.get(row.candidate.runtime, len(rank)) if tier == 0 else 0,
                latency)

    rows.sort(key=key)


def _latency_reasons(est, profile, decode_ms: float | None = None) -> list[str]:
    """The latency target's verdict. A decoder LM (``decode_ms`` given) is judged per generated token: what a
    user waits for between words; its prefill of ``shapes.seq_len`` tokens happens once per prompt (the plan
    still reports it as est ms)."""
    target = profile.targets.latency_ms
    if target is None:
        return []
    if decode_ms is not None:
        if decode_ms > target:
            return [f"estimated decode step {decode_ms:.1f} ms per token > target {target:g} ms"]
        return []
    if est.latency_ms > target:
        return [f"estimated latency {est.latency_ms:.1f} ms > target {target:g} ms"]
    return []
