"""The planner on MiniLM with crafted profiles: the limits drive the choice, and the table explains it.

MiniLM-L6 at seq 128 (22.7 M parameters) is stored as ~86.7 MB fp32, ~43.3 MB fp16, ~22.0 MB int8 and ~18.0 MB
int4 (the cost model's storage rule, tested by hand in test_cost.py), so storage limits of 100, 40 and 20 MB
leave fp32, int8 and int4 as the least risky candidate that fits.
"""

from __future__ import annotations

import json
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
    # onnxruntime's runner has the largest base RSS (~97 MB with the session set up, against ~58 for executorch's
    # C++ runtime, what an app embeds, and ~31 for LiteRT): at 100 MB its int4 (~116 MB) no longer fits, while
    # executorch and LiteRT int8 (~82-86 MB) do
    plan = plan_for(minilm_stats, crafted("small-ram", ram=100))
    assert {r.candidate.runtime for r in plan.feasible} == {Runtime.EXECUTORCH, Runtime.LITERT}
    assert {"executorch/int8", "litert/int8"} <= {r.candidate.key for r in plan.feasible}
    ort = next(r for r in plan.rows if r.candidate.key == "onnxruntime/int4")
    assert ort.reasons[0].startswith("exceeds model_ram_mb: ") and ort.reasons[0].endswith(" > 100")
    assert ort.estimate["breakdown"]["runtime_overhead_bytes"] > 90 * 2**20  # the reason is the runtime, not weights


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


# ---------------------------------------------------------------- delivery: bundled vs downloaded, LLM shapes

def _shape_model(name: str):
    """The LLM of ``edgeopt.lm.shapes`` shape ``name`` as load_model would give it, without writing or reading a
    checkpoint: built on the meta device, then given uninitialised CPU memory. Sizes, FLOPs, activation peak and
    op count depend on the shapes only (test_shape_stats_match_the_built_folder checks they are identical)."""
    import json

    import torch
    import transformers

    from edgeopt.families import resolve
    from edgeopt.lm.shapes import make_config, shape
    from edgeopt.models import Family, LoadedModel, _wrap

    config = make_config(name, attn_implementation="eager")  # what models._from_pretrained loads with
    with torch.device("meta"):
        model = getattr(transformers, shape(name).model_class)(config)
    model = model.to_empty(device="cpu").eval()
    model.tie_weights()  # to_empty gives the tied head storage of its own
    resolved = resolve(json.loads(config.to_json_string()), where=name)
    module, inputs, example = _wrap(model, resolved, None)
    return LoadedModel(name=name, source=f"shape:{name}", source_sha256="", module=module, input_names=inputs,
                       output_names=resolved.outputs, family=Family.DECODER, config=model.config, task=resolved.task,
                       _example=example)


@pytest.fixture(scope="module")
def phone():
    return load_profile("arm-mobile")


@pytest.fixture(scope="module")
def smollm2_stats(phone):
    from edgeopt.analysis import analyse

    s = phone.shapes
    return analyse(_shape_model("smollm2-135m"), s.batch, s.seq_len, s.context_len)


@pytest.fixture(scope="module")
def qwen_stats(phone):
    from edgeopt.analysis import analyse

    s = phone.shapes
    return analyse(_shape_model("qwen2.5-0.5b"), s.batch, s.seq_len, s.context_len)


def _mb(row, key):
    import math

    return math.ceil(row.estimate[key] / 2**20)


def test_minilm_on_the_phone_stays_bundled_int8(minilm_stats, phone):
    """fp32 (87 MB) and fp16 (44 MB) now fit the phone as downloads, but every bundled candidate comes first:
    the app ships int8 (22 MB) in its package."""
    from edgeopt.planner.cost import Delivery

    plan = make_plan(minilm_stats, phone)
    first = plan.feasible[0]
    assert first.candidate.key == "executorch/int8" and first.delivery is Delivery.BUNDLED
    assert (_mb(first, "artifact_bytes"), _mb(first, "peak_ram_bytes")) == (22, 82)  # the C++ runtime an app embeds
    assert first.delivery_note == "22 MB <= model_storage_mb 32"
    deliveries = [r.delivery for r in plan.feasible]
    assert deliveries == [Delivery.BUNDLED] * 6 + [Delivery.DOWNLOAD] * 6  # int8, int4 bundled; fp32, fp16 after
    assert [r.candidate.precision for r in plan.feasible[:6]] == [INT8] * 3 + [INT4] * 3
    fp32 = next(r for r in plan.rows if r.candidate.key == "onnxruntime/fp32")
    assert fp32.status is Status.FEASIBLE and fp32.delivery is Delivery.DOWNLOAD and fp32.reasons == []
    assert fp32.delivery_note == "87 MB > model_storage_mb 32 (the bundled budget), <= model_download_mb 1024"
    text = "\n".join(plan_explanation(plan.to_dict()))
    assert "storage <= 32 MB bundled in the app, or <= 1024 MB downloaded after install" in text
    assert "builds executorch/int8 first, delivered bundled in the app: 22 MB <= model_storage_mb 32." in text
    rows = plan_rows(plan.to_dict())
    assert rows[0][1:4] == ["executorch/int8", "22.0", "bundled"] and rows[6][1:4] == ["executorch/fp32", "86.7", "download"]


def test_smollm2_135m_fits_the_phone_as_a_download_at_int8_and_int4(smollm2_stats, phone):
    """SmolLM2-135M's shape (134.5 M parameters, KV cache for 512 tokens): 157 MB at int8 (its tied 49152 x 576
    table stored twice: lookup and head) and 81 (ONNX: one shared int4 table, 80.4 MB measured) to 98 MB at int4,
    too big for the 32 MB bundled budget, within the 1024 MB download budget; fp32 (514 MB) fits that too but not
    the 512 MB of RAM. ExecuTorch is planned with its C++ runtime (what an app embeds, ~58 MB), not its Python
    runner's ~383 MB (torch imported): its int8 is first; LiteRT's int8 misses RAM (XNNPACK's per-op memory)."""
    from edgeopt.planner.cost import Delivery

    assert smollm2_stats.params_total == 134_515_008 and smollm2_stats.kv_cache_bytes == 2 * 30 * 3 * 64 * 512 * 4
    plan = make_plan(smollm2_stats, phone)
    rows = {r.candidate.key: r for r in plan.rows}
    first = plan.feasible[0]
    assert first.candidate.key == "executorch/int8" and first.delivery is Delivery.DOWNLOAD
    assert (_mb(first, "artifact_bytes"), _mb(first, "peak_ram_bytes")) == (157, 250)
    assert first.delivery_note == "157 MB > model_storage_mb 32 (the bundled budget), <= model_download_mb 1024"
    assert first.estimate["decode_ms"] == pytest.approx(32.5, abs=0.1)  # judged per token against 50 ms
    assert [r.candidate.key for r in plan.feasible] == [
        "executorch/int8", "onnxruntime/int8", "executorch/int4", "litert/int4", "onnxruntime/int4"]
    assert all(r.delivery is Delivery.DOWNLOAD for r in plan.feasible)
    assert [_mb(rows[k], "peak_ram_bytes") for k in ("executorch/int4", "litert/int4", "onnxruntime/int4")] == [191, 503, 212]
    assert [_mb(rows[k], "artifact_bytes") for k in ("executorch/int4", "litert/int4", "onnxruntime/int4")] == [98, 98, 81]
    assert rows["executorch/int8"].reasons == [] and _mb(rows["onnxruntime/int8"], "peak_ram_bytes") == 288
    assert rows["litert/int8"].reasons == ["exceeds model_ram_mb: 562 > 512"]
    for runtime, ram in (("onnxruntime", 645), ("executorch", 606), ("litert", 919)):
        fp32 = rows[f"{runtime}/fp32"]
        assert fp32.status is Status.REJECTED and fp32.reasons == [f"exceeds model_ram_mb: {ram} > 512"]
        assert fp32.delivery is Delivery.DOWNLOAD and _mb(fp32, "artifact_bytes") == 514
    text = "\n".join(plan_explanation(plan.to_dict()))
    assert ("builds executorch/int8 first, delivered as a download after install: 157 MB > model_storage_mb 32 "
            "(the bundled budget), <= model_download_mb 1024.") in text
    assert "the latency target (50 ms) applies to each decoded token" in text


def test_qwen25_05b_fits_the_phone_at_int4_only(qwen_stats, phone):
    """Qwen2.5-0.5B's shape (494 M parameters): int4 is 376 MB to download and 484 MB of RAM in ExecuTorch (295 and
    441 in ONNX Runtime, whose int4 lookup shares the tied head's blocks); int8 (604 MB: the 151936 x 896 table
    twice) fits the download budget but no runtime's RAM; fp32 (1885 MB) fits neither storage budget."""
    from edgeopt.planner.cost import Delivery

    assert qwen_stats.params_total == 494_032_768
    plan = make_plan(qwen_stats, phone)
    rows = {r.candidate.key: r for r in plan.rows}
    assert [r.candidate.key for r in plan.feasible] == ["executorch/int4", "onnxruntime/int4"]
    int4 = plan.feasible[0]
    assert int4.delivery is Delivery.DOWNLOAD and (_mb(int4, "artifact_bytes"), _mb(int4, "peak_ram_bytes")) == (376, 484)
    assert (_mb(plan.feasible[1], "artifact_bytes"), _mb(plan.feasible[1], "peak_ram_bytes")) == (295, 441)
    assert int4.delivery_note == "376 MB > model_storage_mb 32 (the bundled budget), <= model_download_mb 1024"
    for runtime, ram in (("onnxruntime", 750), ("executorch", 712), ("litert", 942)):
        int8 = rows[f"{runtime}/int8"]
        assert int8.reasons == [f"exceeds model_ram_mb: {ram} > 512"] and int8.delivery is Delivery.DOWNLOAD
    assert rows["litert/int4"].reasons == ["exceeds model_ram_mb: 715 > 512"]
    fp32 = rows["onnxruntime/fp32"]
    assert fp32.delivery is None and fp32.delivery_note is None
    assert fp32.reasons == ["exceeds model_ram_mb: 2031 > 512",
                            "exceeds model_storage_mb: 1885 > 32 (bundled) and model_download_mb: 1885 > 1024 (download)",
                            "estimated decode step 70.9 ms per token > target 50 ms"]
    # the plan JSON carries the delivery of every row and reads back
    d = plan.to_dict()
    assert [r["delivery"] for r in d["rows"]][:1] == ["download"] and d["context"]["model_download_mb"] == 1024
    again = type(plan).from_dict(json.loads(json.dumps(d)))
    assert [(r.delivery, r.delivery_note) for r in again.rows] == [(r.delivery, r.delivery_note) for r in plan.rows]


def test_without_a_download_budget_nothing_is_a_download(smollm2_stats, phone):
    """The same phone with one storage budget (model_download_mb left out): SmolLM2 does not fit, and the reason
    names the one budget as before."""
    d = phone.to_dict()
    del d["limits"]["model_download_mb"]
    plan = make_plan(smollm2_stats, Profile.from_dict(d, source="<one-budget>"))
    assert not plan.feasible
    row = next(r for r in plan.rows if r.candidate.key == "onnxruntime/int8")
    assert row.reasons == ["exceeds model_storage_mb: 157 > 32"] and row.delivery is None
    assert "downloaded after install" not in "\n".join(plan_explanation(plan.to_dict()))


def test_decoder_latency_target_is_per_decoded_token(smollm2_stats, phone):
    """A decoder LM's latency target bounds one decode step, not the prefill of a whole prompt (102 ms here)."""
    d = phone.to_dict()
    d["targets"]["latency_ms"] = 31.0
    plan = make_plan(smollm2_stats, Profile.from_dict(d, source="<fast-tokens>"))
    row = next(r for r in plan.rows if r.candidate.key == "onnxruntime/int8")
    assert row.estimate["latency_ms"] > 100 and row.estimate["decode_ms"] > 31
    assert row.reasons == [f"estimated decode step {row.estimate['decode_ms']:.1f} ms per token > target 31 ms"]
    assert all(r.estimate["decode_ms"] <= 31 for r in plan.feasible) and plan.feasible


@pytest.mark.slow
def test_shape_stats_match_the_built_folder(smollm2_stats, phone):
    """The meta-device shortcut above gives the same ModelStats as loading build_shape's folder."""
    from edgeopt.analysis import analyse
    from edgeopt.lm.shapes import build_shape
    from edgeopt.models import load_model

    s = phone.shapes
    built = analyse(load_model(str(build_shape("smollm2-135m"))), s.batch, s.seq_len, s.context_len)
    a, b = smollm2_stats.to_dict(), built.to_dict()
    a.pop("model_name"), b.pop("model_name")
    assert a == b


def test_bench_holds_a_decoder_target_to_the_decode_step_the_planner_judged():
    """edgeopt bench compares a decoder LM's measured p90 decode step (the runner's latency_ms) with the target,
    as the planner does, not its time to first token."""
    from types import SimpleNamespace

    from edgeopt.benchmark.compare import compare

    lat = {"mean": 30.0, "std": 1.0, "min": 28.0, "p50": 30.0, "p90": 32.0, "p99": 35.0, "max": 36.0}
    result = SimpleNamespace(raw={"generation": {"ttft_ms": 120.0}}, latency_ms=lat, peak_rss_mb=300.0, valid=True,
                             artifact_file="model.onnx", runtime="onnxruntime")
    manifest = {"profile": {"targets": {"latency_ms": 50}}, "artifacts": [{"file": "model.onnx", "precision": "int8"}],
                "estimates": {"latency_ms": 102.5, "peak_ram_bytes": 261 * 2**20}}
    got = compare(result, manifest)["latency_ms"]
    assert got["statistic"].startswith("time to first token") and got["measured"] == 120.0  # vs the prefill estimate
    assert (got["target_measured"], got["meets_target"]) == (32.0, True)
    assert got["target_statistic"] == "p90 decode step (ms per generated token)"


def test_bundle_report_says_how_the_built_artifact_is_delivered():
    """report.md judges the real artifact's bytes against both budgets (only profiles with a download budget)."""
    from edgeopt.report_md import _delivery_lines

    phone = load_profile("arm-mobile").to_dict()["limits"]
    assert _delivery_lines(22 * 2**20, phone)[0] == "Delivery: **bundled** in the app (22.0 MB <= model_storage_mb 32)."
    assert _delivery_lines(135_530_027, phone)[0].startswith(
        "Delivery: **download after install** (129.3 MB > model_storage_mb 32, the bundled budget; "
        "<= model_download_mb 1024)")
    assert _delivery_lines(2**31, phone)[0] == "Delivery: 2048.0 MB exceeds both model_storage_mb 32 and model_download_mb 1024."
    assert _delivery_lines(22 * 2**20, load_profile("embedded-board").to_dict()["limits"]) == []
