"""The planner on MiniLM with crafted profiles: the limits drive the choice, and the table explains it.

MiniLM-L6 at seq 128 (22.7 M parameters) is stored as ~86.7 MB fp32, ~43.3 MB fp16, ~22.0 MB int8 and ~18.0 MB
int4 (the cost model's storage rule, tested by hand in test_cost.py), so storage limits of 100, 40 and 20 MB
leave fp32, int8 and int4 as the least risky candidate that fits.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import yaml

from edgeopt.formats import Precision, Runtime
from edgeopt.planner import make_plan
from edgeopt.planner.search import Status
from edgeopt.profiles import Profile, load_profile
from edgeopt.report_md import plan_explanation, plan_rows

FP32, FP16, INT8, INT4 = Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4


@pytest.fixture(scope="module")
def minilm_stats():
    from edgeopt.analysis import analyse
    from edgeopt.models import load_model

    return analyse(load_model(None), 1, 128, None)


def crafted(name: str, *, ram=2048, storage=1024, precisions=("fp32", "fp16", "int8", "int4"), latency=None,
            runtimes=("onnxruntime", "executorch", "litert")) -> dict:
    d = load_profile("desktop-cpu").to_dict()
    d["name"] = name
    d["limits"] = {"model_ram_mb": ram, "model_storage_mb": storage, "precisions": list(precisions)}
    d["runtimes"] = list(runtimes)
    d["targets"]["latency_ms"] = latency
    return d


def plan_for(stats, d: dict):
    return make_plan(stats, Profile.from_dict(d, source=f"<{d['name']}>"))


def test_generous_profile_keeps_full_precision(minilm_stats):
    plan = plan_for(minilm_stats, crafted("generous"))
    first = plan.feasible[0]
    assert first.candidate.precision is FP32
    # every candidate fits, tried least risk first: all fp32 rows, then fp16, int8, int4
    assert [r.candidate.precision for r in plan.rows] == [FP32] * 3 + [FP16] * 3 + [INT8] * 3 + [INT4] * 3
    # within one precision, the fastest estimate first (runtime order only breaks ties within 10%)
    fp32 = [r.estimate["latency_ms"] for r in plan.rows[:3]]
    assert fp32[0] <= min(fp32) * 1.10
    text = "\n".join(plan_explanation(plan.to_dict()))
    assert "least accuracy risk first (no pruning before pruning, shallow before deep; then fp32, fp16, int8, int4)" in text
    assert f"builds {first.candidate.key} first" in text
    assert "RAM <= 2048 MB, storage <= 1024 MB" in text and "no latency target" in text


def test_tight_storage_forces_int8(minilm_stats):
    plan = plan_for(minilm_stats, crafted("tight", storage=40))
    assert plan.feasible[0].candidate.precision is INT8
    reasons = {r.candidate.key: r.reasons for r in plan.rows if r.status is Status.REJECTED}
    assert reasons["onnxruntime/fp32"] == ["exceeds model_storage_mb: 87 > 40"]
    assert reasons["onnxruntime/fp16"] == ["exceeds model_storage_mb: 44 > 40"]
    assert {r.candidate.precision for r in plan.feasible} == {INT8, INT4}


def test_tighter_storage_forces_int4(minilm_stats):
    plan = plan_for(minilm_stats, crafted("tighter", storage=20))
    assert plan.feasible[0].candidate.precision is INT4
    rejected = {r.candidate.key: r.reasons for r in plan.rows if r.status is Status.REJECTED}
    assert rejected["litert/int8"] == ["exceeds model_storage_mb: 22 > 20"]


def test_latency_target_rejects_slow_candidates_with_the_estimate(minilm_stats):
    base = plan_for(minilm_stats, crafted("any"))
    fp32_ms = min(r.estimate["latency_ms"] for r in base.rows if r.candidate.precision is FP32)
    int8_ms = min(r.estimate["latency_ms"] for r in base.rows if r.candidate.precision is INT8)
    assert int8_ms < fp32_ms
    target = round((fp32_ms + int8_ms) / 2, 2)
    plan = plan_for(minilm_stats, crafted("fast", latency=target))
    assert plan.feasible[0].candidate.precision is INT8
    fp32_row = next(r for r in plan.rows if r.candidate.precision is FP32)
    assert fp32_row.reasons == [f"estimated latency {fp32_row.estimate['latency_ms']:.1f} ms > target {target:g} ms"]


def test_ram_limit_names_the_runtime_overhead(minilm_stats):
    # executorch's Python runner imports torch (~355 MB); at 300 MB only the other two runtimes fit
    plan = plan_for(minilm_stats, crafted("small-ram", ram=300))
    assert all(r.candidate.runtime is not Runtime.EXECUTORCH for r in plan.feasible)
    et = next(r for r in plan.rows if r.candidate.key == "executorch/int4")
    assert et.reasons[0].startswith("exceeds model_ram_mb: ") and et.reasons[0].endswith(" > 300")


def test_impossible_profile_exits_5_within_seconds_listing_every_reason(tmp_path):
    d = crafted("impossible", ram=16, storage=8, precisions=("fp32", "int8"), runtimes=("onnxruntime", "litert"))
    path = tmp_path / "impossible.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "edgeopt.cli", "plan", "--profile", str(path)],
                          capture_output=True, text=True, timeout=300)
    elapsed = time.perf_counter() - t
    assert proc.returncode == 5, proc.stderr
    assert elapsed < 60  # load + one eager forward + estimates; nothing exported
    assert "no candidate fits profile 'impossible'" in proc.stderr and "Traceback" not in proc.stderr
    out = proc.stdout
    for runtime in ("onnxruntime", "litert"):
        assert f"{runtime}/fp32" in out and f"{runtime}/int8" in out
    assert out.count("fp16 not in precisions") == 2 and out.count("int4 not in precisions") == 2
    assert out.count("exceeds model_storage_mb: 87 > 8") == 2 and out.count("exceeds model_storage_mb: 22 > 8") == 2
    assert out.count("exceeds model_ram_mb") == 8
    assert "nothing fits: loosen the limits named in the reasons" in out


def test_package_stops_before_any_export_when_nothing_fits(tmp_path):
    d = crafted("impossible", ram=16, storage=8)
    path = tmp_path / "impossible.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    proc = subprocess.run([sys.executable, "-m", "edgeopt.cli", "package", "--profile", str(path),
                           "--out", str(tmp_path / "dist")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 5, proc.stderr
    assert "export" not in proc.stderr + proc.stdout.replace("exceeds", "")
    assert not (tmp_path / "dist").exists() or not any((tmp_path / "dist").iterdir())


def test_every_builtin_profile_plans_minilm_and_a_tiny_decoder(minilm_stats, tiny_llama_dir):
    from edgeopt.analysis import analyse
    from edgeopt.models import load_model
    from edgeopt.profiles import load_builtin_profiles

    decoder = load_model(str(tiny_llama_dir))
    for prof in load_builtin_profiles():
        dec_stats = analyse(decoder, prof.shapes.batch, min(prof.shapes.seq_len, 64), prof.shapes.context_len)
        for stats in (minilm_stats, dec_stats):
            plan = make_plan(stats, prof)
            assert plan.feasible, f"{prof.name}/{stats.model_name}: {plan.why_nothing_fits()}"
            rows = plan_rows(plan.to_dict())
            assert rows[0][0] == "1" and all(r[0] == "-" for r, row in zip(rows, plan.rows)
                                             if row.status is Status.REJECTED)
        assert dec_stats.kv_cache_bytes > 0


def test_too_tight_for_quantization_alone_plans_pruning(minilm_stats):
    """A latency target below every unpruned estimate: the plan adds pruned candidates (and only then), least
    deep first, each estimated from the model really pruned to that shape."""
    from edgeopt.models import load_model
    from edgeopt.pipeline import pruned_stats
    from edgeopt.profiles import Shapes

    pruned = pruned_stats(load_model(None), Shapes(1, 128, None), lambda _m: None)
    assert len(pruned) == 5  # MiniLM has 6 blocks: every depth of the ladder applies
    for spec, stats in pruned.items():
        assert stats.params_total < minilm_stats.params_total
        assert stats.flops < minilm_stats.flops
        assert stats.num_layers == 6 - spec.drop_blocks
    fastest = min(r.estimate["latency_ms"] for r in plan_for(minilm_stats, crafted("any")).rows)
    target = round(fastest * 0.9, 2)
    d = crafted("too-fast", latency=target)
    without = plan_for(minilm_stats, d)
    assert not without.feasible
    plan = make_plan(minilm_stats, Profile.from_dict(d, source="<too-fast>"), pruned=pruned)
    first = plan.feasible[0]
    assert first.candidate.prune is not None
    assert all(r.candidate.prune is not None for r in plan.feasible)
    assert all(r.status is Status.REJECTED for r in plan.rows if r.candidate.prune is None)
    assert first.estimate["latency_ms"] <= target
    assert "+prune:w" in first.candidate.key
    text = "\n".join(plan_explanation(plan.to_dict()))
    assert "no pruning before pruning" in text


@pytest.mark.slow
def test_package_prunes_when_precision_alone_cannot_fit(tmp_path, minilm_stats):
    """End to end on MiniLM: a profile too tight for quantization alone gives a pruned, quantized bundle whose
    manifest records what was pruned and what it cost in fidelity; the artifact runs in its runtime."""
    from edgeopt import api

    fastest = min(r.estimate["latency_ms"] for r in plan_for(minilm_stats, crafted("any")).rows)
    d = crafted("prune-me", latency=round(fastest * 0.9, 2), precisions=("int8",), runtimes=("onnxruntime",))
    d["targets"]["fidelity"]["min_cosine"] = 0.5  # pruning a quarter of MiniLM's FFN costs far more than int8
    res = api.package(None, profile=Profile.from_dict(d, source="<prune-me>"), out=tmp_path, recover_seconds=15)
    m = res.manifest
    pr = m["pruning"]
    assert pr["params_after"] < pr["params_before"] == 22713216
    assert pr["importance"] == "activation" and pr["recovery_seconds"] <= 15 + 5
    assert pr["fidelity_before"]["mean_cosine"] > 0.5
    chosen = next(r for r in m["plan"]["rows"] if r["status"] == "chosen")
    assert chosen["candidate"]["prune"] == pr["spec"]
    assert m["artifacts"][0]["precision"] == "int8"
    assert m["fidelity"]["mean_cosine"] >= 0.5  # measured against the ORIGINAL fp32 model
    report = (res.bundle_path / "report.md").read_text()
    assert "## Pruning" in report and pr["summary"] in report and "+prune:w" in report
    run = api.bench(res.bundle_path, runs=5, min_seconds=0.1, warmup=1, repeats=1, save=False)
    # the bundle's runner: the pruned artifact matches its host run, and the original model as measured above
    assert run.parity["host_max_abs_err"] < 1e-3
    assert abs(run.parity["mean_cosine"] - m["fidelity"]["mean_cosine"]) < 0.05
