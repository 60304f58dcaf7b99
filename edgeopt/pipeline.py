"""The package flow: load → analyse → plan → (build → verify)* → bundle.

``package`` walks the plan's feasible candidates in order, builds each in its packager, runs it in its
real runtime on held-out inputs and accepts the first whose fidelity meets the profile's tolerance.
A quantized candidate that misses is retried with its most sensitive layers kept at float before the
next candidate is tried. Every attempt is recorded in the plan, with what it measured.

When no candidate of the model as given fits the estimates, the model is pruned at each depth of the
planner's ladder (weight magnitude, for the estimates only) and planned again; a pruned candidate is built
from the model pruned on calibration inputs (activation importance, optional distillation), and its
fidelity is measured against the original fp32 model, so the table shows what pruning cost.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from edgeopt.errors import EdgeoptError, FidelityError, NoFitError, ResourceError, UnsupportedError
from edgeopt.families import LOGIT_OUTPUTS
from edgeopt.formats import Precision, Runtime
from edgeopt.planner import CandidateRow, Plan, Status, make_plan
from edgeopt.quantize import Activations

EVAL_SAMPLES = 16  # held-out inputs for fidelity
CALIBRATION_SAMPLES = 4  # for sensitivity (and, later, static quantization)
PARITY_SAMPLES = 8  # stored in inputs.npz for the device runner
LM_SENSITIVITY_TOKENS = 32  # tokens of the one calibration sample a decoder LM's layer sensitivity is measured on
# Fractions of the linear layers kept float, tried in turn when a quantized build misses the tolerance.
KEEP_FLOAT_STEPS = (1 / 12, 1 / 6, 1 / 4)
DEFAULT_RECOVER_SECONDS = 60.0  # distillation after pruning, when a pruned candidate is built

Progress = Callable[[str], None]


@dataclass
class PackageResult:
    bundle_path: Path
    manifest: dict
    plan: Plan


@dataclass
class Built:
    """An artifact that was built and measured on the host in its runtime."""

    artifact: object  # packagers.Artifact
    fidelity: object  # verify.Fidelity
    expected: list  # the artifact's own outputs on the eval samples
    model: object = None  # the LoadedModel it was exported from (the pruned one for a pruned candidate)
    pruning: dict | None = None  # PruneReport.to_dict() for a pruned candidate


def package(profile, model: str | None = None, *, out: Path = Path("dist"), runtime: Runtime | None = None,
            precision: Precision | None = None, activations: Activations | None = None, all_formats: bool = False,
            force: bool = False, allow_pickle: bool = False, progress: Progress | None = None,
            recover_seconds: float = DEFAULT_RECOVER_SECONDS) -> PackageResult:
    """Build, verify and bundle the best candidate for ``model`` on ``profile``.

    ``runtime``/``precision``/``activations`` bypass the planner's choice. ``all_formats`` also builds the
    chosen scheme in every other format that can, verifies each, and bundles those that pass; the
    manifest's ``all_formats`` table records every one tried. ``recover_seconds`` bounds the distillation
    that follows pruning (0: none), when a pruned candidate is built.

    Raises:
        NoFitError: nothing fits the estimates, or every built candidate missed the tolerance (exit 5).
        BundleError / ResourceError: the output cannot be written (exit 2 / 6).
    """
    import torch

    say = progress or (lambda _msg: None)
    threads_before, threads = torch.get_num_threads(), host_threads()
    torch.set_num_threads(threads)
    try:
        return _package(profile, model, out=out, runtime=runtime, precision=precision, activations=activations,
                        all_formats=all_formats, force=force, allow_pickle=allow_pickle, say=say,
                        recover_seconds=recover_seconds, host_threads=threads)
    finally:
        torch.set_num_threads(threads_before)


def host_threads() -> int:
    """Threads for the host-side work (fp32 reference, export, verification in the runtime).

    ``EDGEOPT_HOST_THREADS`` when set; else the CPUs this process may run on less what other processes keep
    busy (the 1-minute load average), at least 1. torch's default, one thread per core, oversubscribes a shared
    machine, and every op's parallel region then waits for a descheduled thread: on 2 cores at load 7 a
    SmolLM2-135M prefill took 32 s with 2 threads and 2.3 s with 1, a decode step 4 s and 0.2-0.4 s.
    """
    import os

    env = os.environ.get("EDGEOPT_HOST_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return spare_cpus()


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def spare_cpus() -> int:
    """``usable_cpus`` less what other processes keep busy (the 1-minute load average), at least 1."""
    import os

    cpus = usable_cpus()
    try:
        busy = os.getloadavg()[0]
    except (AttributeError, OSError):
        busy = 0.0
    return max(1, min(cpus, int(cpus - busy + 0.5)))


def _package(profile, model, *, out, runtime, precision, activations, all_formats, force, allow_pickle, say,
             recover_seconds, host_threads: int) -> PackageResult:
    from edgeopt.analysis import analyse
    from edgeopt.bundle import BundleWriter, bundle_dir
    from edgeopt.models import load_model

    say("load: reading the model")
    loaded = load_model(model, allow_pickle=allow_pickle)
    shapes = profile.shapes
    say(f"analyse: {loaded.name} at batch {shapes.batch}, seq {shapes.seq_len}")
    stats = analyse(loaded, shapes.batch, shapes.seq_len, shapes.context_len)
    restrict = {"runtimes": [runtime] if runtime else None, "precisions": [precision] if precision else None,
                "activations": activations}
    plan = make_plan(stats, profile, **restrict)
    if not plan.feasible and _pruning_could_help(plan, profile):
        pruned = pruned_stats(loaded, shapes, say)
        if pruned:
            plan = make_plan(stats, profile, **restrict, pruned=pruned)
    if not plan.feasible:
        raise _no_fit(plan, "no candidate fits the profile's limits")
    if _is_lm(loaded):
        _refuse_over_memory(plan, loaded)
    target = bundle_dir(Path(out), loaded.name, profile.name)
    protected = (Path(loaded.source),) if Path(loaded.source).exists() else ()
    with BundleWriter(target, force=force, protected=protected) as writer:
        data = _Data(loaded, shapes.batch, shapes.seq_len, recover_seconds,
                     threads=min(profile.compute.threads, host_threads), lm=_is_lm(loaded))
        data.isa = tuple(profile.device.isa)
        if _is_lm(loaded):
            data.prepare_lm(loaded, shapes, say)
        work = writer.staging / ".work"
        built = [_build_first_passing(plan, loaded, profile, data, work, say)]
        side_by_side = None
        if all_formats:
            more, side_by_side = _build_other_formats(built[0], loaded, profile, data, work, say)
            built += more
        say(f"bundle: writing {target}")
        manifest = _write_bundle(writer.staging, loaded, stats, profile, plan, built, data, side_by_side)
        writer.commit()
    return PackageResult(target, manifest, plan)


def _build_other_formats(chosen: Built, loaded, profile, data: "_Data", work: Path, say: Progress):
    """The chosen scheme (layers kept float included) in every other format; each verified."""
    from edgeopt.errors import EdgeoptError
    from edgeopt.packagers import available_runtimes, get_packager

    scheme = chosen.artifact.scheme
    loaded = chosen.model or loaded
    rows = [_side_row(chosen.artifact.runtime, scheme, "chosen", chosen, None)]
    built = []
    for runtime in available_runtimes():
        if runtime is chosen.artifact.runtime:
            continue
        packager = get_packager(runtime)
        try:
            packager.check_available()
            say(f"export: {runtime.value}/{scheme.precision.value} (--all-formats)")
            artifact = _export(packager, runtime, loaded, scheme, work / f"all-{runtime.value}", data)
            say(f"verify: {runtime.value}/{scheme.precision.value} in {runtime.value}")
            fidelity, expected = _verify(packager, artifact, loaded, data)
        except EdgeoptError as e:
            rows.append(_side_row(runtime, scheme, "failed", None, str(e).splitlines()[0]))
            continue
        miss = _misses(fidelity, profile.targets.fidelity.for_precision(scheme.precision))
        b = Built(artifact, fidelity, expected, loaded, chosen.pruning)
        rows.append(_side_row(runtime, scheme, "bundled" if miss is None else "rejected", b, miss))
        if miss is None:
            built.append(b)
    return built, rows


def _side_row(runtime: Runtime, scheme, status: str, built: Built | None, reason: str | None) -> dict:
    art = built.artifact if built else None
    return {
        "runtime": runtime.value,
        "precision": scheme.precision.value,
        "status": status,
        "file": art.path.name if art else None,
        "bytes": art.path.stat().st_size if art and art.path.exists() else None,
        "fidelity": built.fidelity.to_dict() if built else None,
        "delegation": (art.details or {}).get("delegation") if art else None,
        "reason": reason,
    }


class _Data:
    """Samples and fp32 reference outputs, computed once and shared by every attempt."""

    def __init__(self, loaded, batch: int, seq_len: int, recover_seconds: float = 0.0, threads: int = 1,
                 lm: bool = False):
        import os

        import torch

        self.shapes = (batch, seq_len)
        self.recover_seconds = recover_seconds
        self.threads = max(1, min(threads, os.cpu_count() or 1))
        self.lm = None  # quality.LMData for decoder LMs (prepare_lm)
        self.isa: tuple[str, ...] = ()  # the profile's device.isa: ONNX picks its int8 kernels by it
        self._pruned: dict = {}
        self.eval = loaded.sample_inputs(EVAL_SAMPLES, batch=batch, seq_len=seq_len, split="eval")
        self.calibration = loaded.sample_inputs(CALIBRATION_SAMPLES, batch=batch, seq_len=seq_len, split="calibration")
        # A decoder LM is verified by the LM gate (prepare_lm) alone: its fp32 reference is the gate's. The
        # full-vocabulary logits of every eval sample would be 16 x seq_len x vocab floats (1.2 GB for a
        # 152k vocabulary) and as many forwards, used by nothing.
        self.reference = []
        if not lm:
            with torch.no_grad():
                self.reference = [[t.numpy() for t in loaded.module(*s)] for s in self.eval]
            _check_finite_reference(loaded, self.reference)
        self.eval_np = [tuple(t.numpy() for t in s) for s in self.eval]
        self._sensitivity: dict = {}
        self._probes: dict = {}

    def prepare_lm(self, loaded, shapes, say: Progress) -> None:
        """Held-out windows and prompts with the fp32 model's logits and greedy tokens, for the LM gate."""
        from edgeopt.lm import quality
        from edgeopt.packagers.lm import lm_lengths

        prompt_len, context_len = lm_lengths(loaded.config, shapes.seq_len, shapes.context_len)
        say(f"verify: fp32 reference on held-out text (prompt {prompt_len} tokens, KV cache {context_len})")
        self.lm = quality.prepare(loaded, prompt_len=prompt_len, context_len=context_len)
        _check_finite_reference(loaded, [[logits] for logits in self.lm.reference_logits])

    def probes(self, loaded, lengths):
        """The eval samples at their real lengths plus the probe lengths (``lengths.probe_samples``), with the
        fp32 model's outputs at those lengths; computed once per model and length description."""
        key = (id(loaded.module), repr(lengths.to_dict()))
        if key not in self._probes:
            import torch

            from edgeopt.lengths import probe_samples

            samples = probe_samples(self.eval_np, tuple(loaded.input_names), lengths)
            with torch.no_grad():
                reference = [[t.numpy() for t in loaded.module(*(torch.from_numpy(x) for x in s))] for s in samples]
            self._probes[key] = (samples, reference)
        return self._probes[key]

    def sensitivity(self, loaded):
        if id(loaded.module) not in self._sensitivity:
            from edgeopt.quantize import sensitivity

            samples = self.calibration
            if self.lm is not None:
                # One full forward per linear layer and sample: 211 layers x 4 x 128 tokens of a 135M LM is half
                # an hour on 2 cores. The ranking of a decoder LM's layers is taken from one 32-token sample.
                samples = [tuple(t[..., :LM_SENSITIVITY_TOKENS] for t in self.calibration[0])]
            self._sensitivity[id(loaded.module)] = sensitivity.measure(loaded.module, samples)
        return self._sensitivity[id(loaded.module)]

    def pruned(self, loaded, spec, say: Progress):
        """The model pruned by ``spec`` on the calibration inputs (then distilled), once per spec."""
        if spec not in self._pruned:
            from edgeopt.prune import prune

            say(f"prune: {loaded.name}, {spec.describe()} (activation importance"
                + (f", then up to {self.recover_seconds:g} s of distillation)" if self.recover_seconds else ")"))
            self._pruned[spec] = prune(loaded, spec, self.calibration, recover_seconds=self.recover_seconds)
        return self._pruned[spec]


def _build_first_passing(plan: Plan, loaded, profile, data: _Data, work: Path, say: Progress):
    from edgeopt.packagers import get_packager

    original = loaded
    memory_refused = 0
    for row in plan.feasible:
        tol = profile.targets.fidelity.for_precision(row.candidate.precision)
        packager = get_packager(row.candidate.runtime)
        try:
            packager.check_available()
        except EdgeoptError as e:
            _reject(row, str(e))
            continue
        scheme, pruning = row.candidate.scheme, None
        loaded = original
        if row.candidate.prune is not None:
            result = data.pruned(original, row.candidate.prune, say)
            loaded, pruning = result.loaded, result.report.to_dict()
            pruned_cosine = result.report.fidelity.mean_cosine
            if pruned_cosine < tol.min_cosine:  # quantizing it can only lose more: skip the builds
                row.fidelity = result.report.fidelity.to_dict()
                _reject(row, f"pruned model alone (fp32, {result.report.summary()}) keeps mean cosine "
                             f"{pruned_cosine:.4f} < {tol.min_cosine}")
                continue
        for keep in _keep_float_schedule(data, loaded, scheme):
            attempt_scheme = scheme.with_keep_float(keep) if keep else scheme
            say(f"export: {row.candidate.key} ({attempt_scheme.describe()})")
            # Before each LM export (the previous attempts' memory may not be back): a build that would not fit
            # this host's memory is rejected, and the next candidate may fit.
            why = _memory_shortfall(loaded, row.candidate.runtime, attempt_scheme.precision) if data.lm is not None else None
            if why:
                _reject(row, why)
                memory_refused += 1
                break
            try:
                artifact = _export(packager, row.candidate.runtime, loaded, attempt_scheme,
                                   work / f"{row.candidate.key.replace('/', '-')}-{len(keep)}", data)
            except UnsupportedError as e:
                _reject(row, str(e))
                break
            say(f"verify: {row.candidate.key} in {row.candidate.runtime.value} on {len(data.eval)} held-out inputs")
            try:
                fidelity, expected = _verify(packager, artifact, loaded, data)
            except UnsupportedError as e:
                _reject(row, str(e))
                break
            row.attempts.append({"scheme": attempt_scheme.to_dict(), "fidelity": fidelity.to_dict(),
                                 "bytes": artifact.path.stat().st_size, "build_seconds": round(artifact.build_seconds, 2),
                                 **({"pruning": pruning} if pruning else {})})
            miss = _misses(fidelity, tol)
            if miss is None:
                row.status, row.fidelity = Status.CHOSEN, fidelity.to_dict()
                row.candidate = type(row.candidate)(row.candidate.runtime, row.candidate.precision, attempt_scheme,
                                                    row.candidate.prune)
                say(f"verify: {row.candidate.key} passes: {fidelity.summary()}")
                return Built(artifact, fidelity, expected, loaded, pruning)
            say(f"verify: {row.candidate.key} misses: {miss}")
            row.fidelity = fidelity.to_dict()
            if not fidelity.finite:
                break
        if row.status is not Status.REJECTED:
            _reject(row, _attempts_reason(row, tol))
    if memory_refused and not any(r.attempts or r.fidelity for r in plan.rows):
        raise _no_fit(plan, "no candidate can be built in this host's memory", cls=ResourceError)
    if not any(r.attempts or r.fidelity for r in plan.rows):  # nothing built or measured: a format limitation
        raise _no_fit(plan, "no candidate could be built in its format", cls=UnsupportedError)
    raise _no_fit(plan, "every candidate built missed the fidelity tolerance or failed to build",
                  cls=FidelityError)


def _pruning_could_help(plan: Plan, profile) -> bool:
    """Whether some rejected candidate failed only on what pruning shrinks (weights, activations, FLOPs):
    not on a precision or runtime the profile excludes, a packager that cannot build it, or a RAM limit the
    runtime's own overhead already exceeds. Saves pruning the model just to print the same reasons."""
    limit = profile.limits.model_ram_mb * 1024 * 1024
    for row in plan.rows:
        c, est = row.candidate, row.estimate or {}
        if c.precision not in profile.limits.precisions or c.runtime not in profile.runtimes:
            continue
        if any("packager" in r or "cannot build" in r for r in row.reasons):
            continue
        if (est.get("breakdown") or {}).get("runtime_overhead_bytes", 0) >= limit:
            continue
        return True
    return False


def pruned_stats(loaded, shapes, say: Progress) -> dict:
    """ModelStats of ``loaded`` pruned at each depth of the planner's ladder (by weight magnitude: the shapes
    and so the estimates are those of the real build, which ranks by calibration data instead).
    Empty for models edgeopt cannot prune (a file.py:factory module, an unsupported architecture)."""
    from edgeopt.analysis import analyse
    from edgeopt.errors import UsageError
    from edgeopt.planner.search import PRUNE_LADDER
    from edgeopt.prune import plan_shape, prune

    if loaded.config is None:
        return {}
    out = {}
    for spec in PRUNE_LADDER:
        try:
            plan_shape(loaded.config, spec, where=loaded.name)
        except (UnsupportedError, UsageError):
            continue
        say(f"analyse: {loaded.name} pruned ({spec.describe()}), for the estimates")
        small = prune(loaded, spec, None, eval_inputs=[loaded.example_inputs(shapes.batch, shapes.seq_len)]).loaded
        out[spec] = analyse(small, shapes.batch, shapes.seq_len, shapes.context_len)
    return out


def _keep_float_schedule(data: _Data, loaded, scheme) -> Iterator[tuple[str, ...]]:
    """The plain scheme first; for quantized schemes, then the most sensitive layers kept float."""
    yield ()
    if not scheme.is_quantized:
        return
    ranked = [s.name for s in data.sensitivity(loaded)]
    for fraction in KEEP_FLOAT_STEPS:
        k = max(1, round(len(ranked) * fraction))
        yield tuple(ranked[:k])


def _check_finite_reference(loaded, reference: list) -> None:
    """The fp32 model itself producing NaN/Inf on held-out inputs is exit 5: nothing can be verified against it."""
    import numpy as np

    for j, name in enumerate(loaded.output_names):
        bad = sum(int((~np.isfinite(r[j])).sum()) for r in reference)
        if bad:
            raise FidelityError(f"{loaded.name}: the fp32 model's output {name!r} holds {bad} NaN/Inf values on "
                                f"held-out inputs; fix the model (or its weights) first: no artifact can be verified "
                                "against it")


def _is_lm(loaded) -> bool:
    """A transformers causal LM: packaged with its KV cache and gated on perplexity and KL."""
    from edgeopt.models import Family

    return loaded.family is Family.DECODER and loaded.config is not None and hasattr(loaded.module, "model")


def _export(packager, runtime: Runtime, loaded, scheme, work: Path, data: _Data):
    """The artifact for one attempt: the KV-cache LM export for decoder LMs, else the packager's export.
    An architecture the format cannot build at this precision (edgeopt.families) is refused first."""
    from edgeopt.families import check_build

    check_build(getattr(loaded.config, "model_type", None), runtime, scheme.precision)
    if data.lm is None:
        kw = {"isa": data.isa} if runtime is Runtime.ONNXRUNTIME and data.isa else {}
        return packager.export(loaded, scheme, work, shapes=data.shapes, calibration=data.calibration, **kw)
    from edgeopt.packagers.lm import export_lm, release_memory

    release_memory()  # the previous attempt's converter state and artifact buffers, before this one allocates

    return export_lm(runtime, loaded, scheme, work, prompt_len=data.lm.prompt_len, context_len=data.lm.context_len)


def _memory_shortfall(loaded, runtime: Runtime, precision: Precision) -> str | None:
    """Why building decoder LM ``loaded`` for ``runtime`` at ``precision`` would not fit this host's memory."""
    from edgeopt.packagers.lm import LM_MODULES, fp32_weight_bytes, memory_shortfall

    others = tuple((r, p) for r in LM_MODULES for p in ("int4", "int8", "fp32")
                   if (r, p) != (runtime, precision.value))
    return memory_shortfall(runtime, precision.value, fp32_weight_bytes(loaded.module), name=loaded.name,
                            alternatives=others)


def _refuse_over_memory(plan: Plan, loaded) -> None:
    """Before any export work (and before the minutes of fp32 reference the LM gate computes): each feasible
    candidate its LM export refuses (``check_lm``: an architecture, a size) or whose build would not fit the
    host's memory (``edgeopt.packagers.lm.memory_shortfall``) is rejected with why. None left: exit 6 when
    memory refused one, else exit 4."""
    from edgeopt.packagers.lm import lm_module

    refused = []
    for row in plan.feasible:
        try:
            lm_module(row.candidate.runtime).check_lm(loaded, row.candidate.scheme)
        except UnsupportedError as e:
            _reject(row, str(e))
            continue
        except ImportError:  # a converter not installed: the build loop's check_available says which
            continue
        why = _memory_shortfall(loaded, row.candidate.runtime, row.candidate.precision)
        if why:
            _reject(row, why)
            refused.append(why)
    if not plan.feasible and not refused:
        raise _no_fit(plan, "no candidate could be built in its format", cls=UnsupportedError)
    if refused and not plan.feasible:
        err = ResourceError(f"out of host memory for the build: {refused[0]}"
                            + (f"\n{plan.why_nothing_fits()}" if len(refused) > 1 else ""))
        err.plan = plan
        raise err


def _verify(packager, artifact, loaded, data: _Data):
    from edgeopt.verify import compare

    if data.lm is not None:
        from edgeopt.lm import quality

        from edgeopt.packagers.lm import release_memory

        release_memory()  # the exporter's graphs hold reference cycles (fx nodes): free them before the runtime loads
        session = quality.open_session(artifact.runtime.value, artifact.path, artifact.details["lm"], data.threads)
        return quality.measure(session, data.lm)

    outputs = _run_in_runtime(packager, artifact, data.eval_np)
    lengths = getattr(artifact, "lengths", None)
    if lengths is None or not lengths.variable:
        fidelity = compare(data.reference, outputs, loaded.output_names, logits=loaded.output_names[0] in LOGIT_OUTPUTS)
        return fidelity, outputs
    # As the app sends them: every held-out input at its real length, and each bucket (or both bounds), against
    # the fp32 model at that length; plus every input padded to the maximum. One gate over all of them.
    samples, reference = data.probes(loaded, lengths)
    at_lengths = _run_in_runtime(packager, artifact, samples)
    fidelity = compare(data.reference + reference, outputs + at_lengths, loaded.output_names,
                       logits=loaded.output_names[0] in LOGIT_OUTPUTS)
    by_length = compare(reference, at_lengths, loaded.output_names)
    artifact.details["lengths_parity"] = {
        "lengths": sorted({int(s[0].shape[lengths.axis]) for s in samples}),
        "samples": len(samples), "mean_cosine": round(by_length.mean_cosine, 6),
        "min_cosine": round(by_length.min_cosine, 6), "max_abs_err": float(f"{by_length.max_abs_err:.3g}")}
    return fidelity, _Expected(outputs, at_lengths[:len(data.eval_np)])


class _Expected(list):
    """The artifact's host outputs on the eval samples padded to seq_len, and (``trimmed``) at their real lengths."""

    def __init__(self, padded: list, trimmed: list):
        super().__init__(padded)
        self.trimmed = trimmed


def _run_in_runtime(packager, artifact, samples):
    """The artifact's outputs in its runtime; a runtime that fails on a built artifact is that format's limit for
    this model (ExportError, exit 4, naming the runtime's message), never a traceback."""
    try:
        return packager.run(artifact, samples)
    except EdgeoptError:
        raise
    except Exception as e:  # noqa: BLE001 - the runtime's own error types differ per runtime
        from edgeopt.errors import ExportError

        first = (str(e).strip().splitlines() or [""])[0][:400]
        raise ExportError(f"{artifact.runtime.value}: the {artifact.precision.value} artifact was built but fails in "
                          f"its runtime on held-out inputs ({type(e).__name__}: {first}); try another --format "
                          "or --precision") from e


def _misses(fidelity, tol) -> str | None:
    if fidelity.perplexity is not None:
        from edgeopt.lm import quality

        return quality.misses(fidelity, tol)
    if not fidelity.finite:
        return "outputs contain NaN or Inf"
    if fidelity.mean_cosine < tol.min_cosine:
        return f"mean cosine {fidelity.mean_cosine:.4f} < {tol.min_cosine}"
    if tol.min_sqnr_db is not None and fidelity.sqnr_db < tol.min_sqnr_db:
        return f"SQNR {fidelity.sqnr_db:.1f} dB < {tol.min_sqnr_db} dB"
    return None


def _attempts_reason(row: CandidateRow, tol) -> str:
    parts, lm = [], False
    for a in row.attempts:
        kept = len(a["scheme"]["keep_float"])
        fid = a["fidelity"]
        cos = fid["mean_cosine"]
        label = f"{kept} layers float" if kept else "as planned"
        if "perplexity" in fid:
            lm = True
            ratio = fid.get("perplexity_ratio")
            parts.append(f"{label}: perplexity x{ratio:.4f}, KL {fid['kl']:.4f}" if ratio is not None
                         else f"{label}: NaN/Inf outputs")
        else:
            parts.append(f"{label}: cosine {cos:.4f}" if cos is not None else f"{label}: NaN/Inf outputs")
    if lm:
        limits = [f"max_perplexity_ratio {tol.max_perplexity_ratio}" if tol.max_perplexity_ratio is not None else "",
                  f"max_kl {tol.max_kl}" if tol.max_kl is not None else ""]
        what = " / ".join(x for x in limits if x) or f"min_cosine {tol.min_cosine}"
        return f"measured LM quality misses {what} ({'; '.join(parts)})"
    return f"measured fidelity below min_cosine {tol.min_cosine} ({'; '.join(parts)})"


def _reject(row: CandidateRow, reason: str) -> None:
    row.status = Status.REJECTED
    row.reasons.append(reason)


def _no_fit(plan: Plan, headline: str, cls=NoFitError) -> NoFitError:
    err = cls(f"{headline}\n{plan.why_nothing_fits()}")
    err.plan = plan
    return err


def _write_bundle(staging: Path, loaded, stats, profile, plan, built: list[Built], data: _Data,
                  side_by_side: list[dict] | None) -> dict:
    from edgeopt import __version__
    from edgeopt.bundle import SCHEMA_VERSION, file_hashes, write_json
    from edgeopt.packagers import get_packager
    from edgeopt.report_md import bundle_readme, bundle_report
    from edgeopt.tokenizer_bundle import write_tokenizer

    for b in built:
        _move_into(staging, b.artifact)
    shutil.rmtree(staging / ".work", ignore_errors=True)
    _write_inputs(staging / "inputs.npz", loaded, data, built)
    _copy_runners(staging, [b.artifact.runtime for b in built])

    toolchain = {}
    for b in built:
        toolchain.update(get_packager(b.artifact.runtime).toolchain_versions())
    chosen = plan.chosen
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "edgeopt_version": __version__,
        "created_unix": int(time.time()),
        "toolchain": toolchain,
        "model": {"name": loaded.name, "source": loaded.source, "sha256": loaded.source_sha256,
                  "family": loaded.family.value,
                  "task": loaded.task.value if loaded.task else None, "inputs": list(loaded.input_names), "outputs": list(loaded.output_names)},
        "profile": profile.to_dict(),
        "stats": stats.to_dict(),
        "plan": plan.to_dict(),
        "artifacts": [_artifact_entry(staging, b) for b in built],
        "estimates": chosen.estimate if chosen else None,
        "fidelity": built[0].fidelity.to_dict(),
    }
    if built[0].pruning:
        manifest["pruning"] = built[0].pruning
    if side_by_side is not None:
        manifest["all_formats"] = side_by_side
    tokenizer = write_tokenizer(staging, loaded, data, built, samples=PARITY_SAMPLES)
    if tokenizer:
        manifest["tokenizer"] = tokenizer
    (staging / "README.md").write_text(bundle_readme(manifest), encoding="utf-8")
    (staging / "report.md").write_text(bundle_report(manifest), encoding="utf-8")
    manifest["files"] = file_hashes(staging)
    write_json(staging / "manifest.json", manifest)
    return manifest


def _move_into(staging: Path, artifact) -> None:
    """Move an artifact (and its extra files) from its work folder to the bundle's top level."""
    final = staging / artifact.path.name
    if final.exists():
        raise FileExistsError(f"two artifacts named {final.name}")
    shutil.move(str(artifact.path), final)
    artifact.path = final
    moved = []
    for extra in artifact.extra_files:
        shutil.move(str(extra), staging / extra.name)
        moved.append(staging / extra.name)
    artifact.extra_files = tuple(moved)


def _write_inputs(path: Path, loaded, data: _Data, built: list[Built]) -> None:
    """inputs.npz: input.<name> [K, ...], reference.<output> (fp32 model), expected.<output> per artifact."""
    import numpy as np

    if data.lm is not None:
        np.savez(path, **_lm_arrays(data, built))
        return
    k = min(PARITY_SAMPLES, len(data.eval_np))
    arrays = {}
    for i, name in enumerate(loaded.input_names):
        arrays[f"input.{name}"] = np.stack([s[i] for s in data.eval_np[:k]])
    for j, name in enumerate(loaded.output_names):
        arrays[f"reference.{name}"] = np.stack([r[j] for r in data.reference[:k]])
        for n, b in enumerate(built):
            key = f"expected.{name}" if n == 0 else f"expected.{b.artifact.path.name}.{name}"
            arrays[key] = np.stack([np.asarray(e[j]) for e in b.expected[:k]])
            trimmed = getattr(b.expected, "trimmed", None)
            if trimmed is not None:  # at the real lengths, zero-padded to seq_len: what the device runner runs
                arrays["trimmed" + key[len("expected"):]] = np.stack(
                    [_zero_pad(np.asarray(e[j]), np.asarray(full[j]).shape) for e, full in zip(trimmed[:k], b.expected[:k])])
    np.savez(path, **arrays)


def _zero_pad(x, shape):
    import numpy as np

    return np.pad(x, [(0, t - h) for h, t in zip(x.shape, shape)])


def _lm_arrays(data: _Data, built: list[Built]) -> dict:
    """inputs.npz of an LM bundle: held-out windows and prompts, the fp32 model's mean NLL per window and
    greedy tokens (reference.*), and each artifact's own on the host (expected.*, suffixed by file after the first)."""
    import numpy as np

    lm = data.lm
    arrays = {"lm.windows": np.stack(lm.windows), "lm.prompts": np.stack(lm.prompts),
              "reference.nll": np.asarray(lm.reference_nll, dtype=np.float64),
              "reference.tokens": np.stack(lm.reference_tokens)}
    for n, b in enumerate(built):
        suffix = "" if n == 0 else f".{b.artifact.path.name}"
        arrays[f"expected{suffix}.nll"] = np.asarray(b.expected.nll, dtype=np.float64)
        arrays[f"expected{suffix}.tokens"] = np.stack(b.expected.tokens)
    return arrays


def _copy_runners(staging: Path, runtimes: list[Runtime]) -> None:
    from edgeopt.resources import builtin_dir

    src = builtin_dir("runtimes")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "__init__.py")
    shutil.copytree(src / "common", staging / "runner" / "common", ignore=ignore)
    for runtime in dict.fromkeys(runtimes):
        shutil.copytree(src / runtime.value, staging / "runner" / runtime.value, ignore=ignore)
    shutil.copy2(src / "common" / "bench.sh", staging / "bench.sh")
    (staging / "bench.sh").chmod(0o755)


def _artifact_entry(staging: Path, b: Built) -> dict:
    from edgeopt.bundle import sha256_file

    art = b.artifact
    return {
        "file": art.path.name,
        "format": art.format.value,
        "runtime": art.runtime.value,
        "precision": art.precision.value,
        "scheme": art.scheme.to_dict(),
        "sha256": sha256_file(art.path),
        "bytes": art.path.stat().st_size,
        "inputs": [t.to_dict() for t in art.inputs],
        "outputs": [t.to_dict() for t in art.outputs],
        "quantization": art.coverage.to_dict() if art.coverage else None,
        "fidelity": b.fidelity.to_dict(),
        "extra_files": [p.name for p in art.extra_files],
        "details": art.details,
        "build_seconds": round(art.build_seconds, 2),
        **({"lm": art.details["lm"]} if "lm" in (art.details or {}) else {}),
        **({"lengths": art.lengths.to_dict()} if getattr(art, "lengths", None) is not None else {}),
    }
