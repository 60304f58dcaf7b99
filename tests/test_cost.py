"""The cost model: storage rule by hand, estimate terms, fit reasons."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest

from edgeopt.analysis import ModelStats
from edgeopt.errors import EdgeoptError, UsageError
from edgeopt.formats import Precision, Runtime
from edgeopt.planner.cost import MB, RUNTIME_COSTS, Estimate, estimate, fit_table, weight_bytes

FP32, FP16, INT8, INT4 = Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4


def _stats(linear=((64, 32), (32, 64)), embedding=((100, 32),), rest=96 + 64, act=8192, kv=0, flops=10**9,
           ops=100) -> ModelStats:
    """Hand-built stats: ``rest`` parameters that are neither Linear nor Embedding weights (biases, norms)."""
    lin, emb = sum(r * c for r, c in linear), sum(r * c for r, c in embedding)
    return ModelStats(
        model_name="hand", family="decoder" if kv else "encoder", params_total=lin + emb + rest,
        params_by_kind={"embeddings": emb, "attention": 0, "ffn": lin, "norms": rest, "head": 0, "other": 0},
        quantizable_linear_params=lin, embedding_params=emb, linear_layers=len(linear),
        embedding_layers=len(embedding), tied_head=False, bytes_at={}, flops=flops, activation_peak_bytes=act,
        kv_cache_bytes=kv, batch=1, seq_len=16, context_len=None, num_layers=None, hidden_size=None, num_heads=None,
        intermediate_size=None, vocab_size=None, linear_shapes=tuple(linear), embedding_shapes=tuple(embedding),
        aten_ops=ops)


def _profile(ram_mb=512, storage_mb=200, precisions=(FP32, FP16, INT8, INT4), runtimes=(Runtime.ONNXRUNTIME,),
             fp16_gflops=None, int4_gops=None, name="p"):
    compute = SimpleNamespace(threads=4, fp32_gflops=100.0, int8_gops=400.0, memory_bandwidth_gbps=10.0,
                              fp16_gflops=fp16_gflops, int4_gops=int4_gops)
    limits = SimpleNamespace(model_ram_mb=ram_mb, model_storage_mb=storage_mb, precisions=tuple(precisions))
    return SimpleNamespace(name=name, limits=limits, compute=compute, runtimes=tuple(runtimes),
                           shapes=SimpleNamespace(batch=1, seq_len=16, context_len=None))


def test_weight_bytes_by_hand():
    s = _stats()  # Linear (64 out, 32 in) + (32 out, 64 in); Embedding 100 x 32; 160 other parameters
    assert s.params_total == 2048 + 2048 + 3200 + 160 == 7456
    assert weight_bytes(s, FP32) == 4 * 7456
    assert weight_bytes(s, FP16) == 2 * 7456
    # int8: 1 B/weight + fp32 scale per output channel; embedding 1 B + fp32 per row; the rest fp32
    assert weight_bytes(s, INT8) == (4096 + (64 + 32) * 4) + (3200 + 100 * 4) + 160 * 4 == 8720
    # int4, group 32: half a byte per weight + fp32 scale per 32 weights of a row; embedding stays int8
    lin4 = (64 * 16 + 64 * 1 * 4) + (32 * 32 + 32 * 2 * 4)
    assert weight_bytes(s, INT4) == lin4 + 3600 + 640 == 6800
    lin4_g16 = (64 * 16 + 64 * 2 * 4) + (32 * 32 + 32 * 4 * 4)
    assert weight_bytes(s, INT4, group_size=16) == lin4_g16 + 3600 + 640 == 7312
    assert weight_bytes(s, INT8, quantize_embeddings=False) == 4480 + 4 * 3200 + 640 == 17920


def test_weight_bytes_rejects_bad_input():
    with pytest.raises(UsageError, match="group_size must be a positive integer, got 0"):
        weight_bytes(_stats(), INT4, group_size=0)
    import dataclasses

    broken = dataclasses.replace(_stats(), quantizable_linear_params=1)
    with pytest.raises(EdgeoptError, match="linear_shapes sum to 4096 weights but the total says 1"):
        weight_bytes(broken, INT8)


def test_estimate_terms_add_up():
    s, p = _stats(kv=4096), _profile()
    cost = RUNTIME_COSTS[Runtime.ONNXRUNTIME]
    e = estimate(s, p, Runtime.ONNXRUNTIME, FP32)
    weights = 4 * 7456
    resident = weights * cost.weight_rss_factor[FP32]
    assert e.peak_ram_bytes == math.ceil(resident + 8192 * cost.activation_factor + 4096 + cost.base_rss_bytes)
    assert e.artifact_bytes == weights + cost.artifact_base_bytes + 100 * cost.artifact_bytes_per_op
    rate = 100e9 * cost.efficiency[FP32]  # the profile's fp32 rate x what onnxruntime reaches of it
    assert e.breakdown["compute_ms"] == pytest.approx(1e9 / rate * 1e3)
    assert e.breakdown["memory_ms"] == pytest.approx(weights / 10e9 * 1e3)
    op_ms = cost.per_call_overhead_ms + 100 * cost.per_op_overhead_ms
    assert e.latency_ms == pytest.approx(1e12 / rate + op_ms)  # compute bound: ms >> 3 us of weight traffic
    assert Estimate.from_dict(json.loads(json.dumps(e.to_dict()))) == e


def test_estimate_is_monotone_in_precision():
    s, p = _stats(linear=((512, 512),) * 4, embedding=((1000, 512),)), _profile()
    ests = {prec: estimate(s, p, Runtime.EXECUTORCH, prec) for prec in (FP32, FP16, INT8, INT4)}
    sizes = [ests[x].artifact_bytes for x in (INT4, INT8, FP16, FP32)]
    rams = [ests[x].peak_ram_bytes for x in (INT4, INT8, FP16, FP32)]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4
    assert rams == sorted(rams) and len(set(rams)) == 4
    # int8 runs at int8_gops (4x fp32 here); int4 falls back to int8 math; fp16 to fp32 math on this profile;
    # each times what executorch reaches of that nominal rate at that precision
    eff = RUNTIME_COSTS[Runtime.EXECUTORCH].efficiency
    fp32_ms = ests[FP32].breakdown["compute_ms"]
    assert ests[INT8].breakdown["compute_ms"] == pytest.approx(fp32_ms / 4 * eff[FP32] / eff[INT8])
    assert ests[INT4].breakdown["compute_ms"] == pytest.approx(fp32_ms / 4 * eff[FP32] / eff[INT4])
    assert ests[FP16].breakdown["compute_ms"] == pytest.approx(fp32_ms * eff[FP32] / eff[FP16])


def test_fp16_math_halves_compute_and_activations():
    s, factor = _stats(kv=4096), RUNTIME_COSTS[Runtime.LITERT].activation_factor
    plain = estimate(s, _profile(), Runtime.LITERT, FP16)
    fast = estimate(s, _profile(fp16_gflops=200.0), Runtime.LITERT, FP16)
    assert fast.breakdown["compute_ms"] == pytest.approx(plain.breakdown["compute_ms"] / 2)  # 200 vs 100 nominal
    assert (fast.breakdown["activation_bytes"], fast.breakdown["kv_cache_bytes"]) == (4096 * factor, 2048)
    assert (plain.breakdown["activation_bytes"], plain.breakdown["kv_cache_bytes"]) == (8192 * factor, 4096)


def test_fit_table_reasons_for_a_tiny_profile():
    # 1024 x 1024 Linear + bias: 4 MiB of fp32 weights, over a 1 MB storage limit; ORT's own 42.5 MiB
    # is over a 1 MB RAM limit at every precision.
    s = _stats(linear=((1024, 1024),), embedding=(), rest=1024, act=8192, ops=10)
    tiny = _profile(ram_mb=1, storage_mb=1, precisions=(FP32, INT8), name="tiny")
    roomy = _profile(ram_mb=512, storage_mb=200, name="roomy", runtimes=(Runtime.LITERT, Runtime.ONNXRUNTIME))
    rows = {(r["profile"], r["precision"]): r for r in fit_table(s, [tiny, roomy])}
    assert len(rows) == 8
    ort = RUNTIME_COSTS[Runtime.ONNXRUNTIME]
    fp32_ram = 4 * (1024 * 1024 + 1024) * ort.weight_rss_factor[FP32] + 8192 * ort.activation_factor + ort.base_rss_bytes
    int8_ram = (1024 * 1024 + 1024 * 4 + 1024 * 4) * ort.weight_rss_factor[INT8] + 8192 * ort.activation_factor + ort.base_rss_bytes
    # rounded up to whole MB in the message
    assert rows["tiny", "fp32"]["reason"] == f"exceeds model_ram_mb: {math.ceil(fp32_ram / MB)} > 1; exceeds model_storage_mb: 5 > 1"
    assert rows["tiny", "int8"]["reason"] == f"exceeds model_ram_mb: {math.ceil(int8_ram / MB)} > 1; exceeds model_storage_mb: 2 > 1"
    assert rows["tiny", "int4"]["reason"].startswith("int4 not in precisions; exceeds model_ram_mb: ")
    assert rows["tiny", "fp16"]["fits"] is False
    roomy_fp32 = rows["roomy", "fp32"]
    assert roomy_fp32["fits"] is True and roomy_fp32["reason"] is None and roomy_fp32["runtime"] == "litert"
    lt = RUNTIME_COSTS[Runtime.LITERT]
    litert_ram = (4 * 1049600 * lt.weight_rss_factor[FP32] + 10 * lt.op_rss_bytes + 8192 * lt.activation_factor
                  + lt.base_rss_bytes)
    assert roomy_fp32["peak_ram_mb"] == pytest.approx(litert_ram / MB, abs=0.01)


def test_fit_table_on_builtin_profiles():
    from edgeopt.profiles import load_builtin_profiles

    profiles = list(load_builtin_profiles())
    rows = fit_table(_stats(), profiles, precisions=[INT8])
    assert [(r["profile"], r["precision"]) for r in rows] == [(p.name, "int8") for p in profiles]
    for row, prof in zip(rows, profiles):
        cost = RUNTIME_COSTS[prof.runtimes[0]]
        assert row["runtime"] == prof.runtimes[0].value
        assert row["artifact_mb"] == round((8720 + cost.artifact_base_bytes + 100 * cost.artifact_bytes_per_op) / MB, 2)


def test_delivery_and_fit_at_the_storage_boundaries():
    """Bundled up to model_storage_mb inclusive, a download above it up to model_download_mb inclusive, then a
    reason that names both budgets; with no download budget the reason is the one it always was."""
    from edgeopt.planner.cost import Delivery, delivery, delivery_note, fit_reasons

    prof = _profile(storage_mb=32)
    prof.limits.model_download_mb = 1024
    at = lambda n: Estimate(artifact_bytes=n, peak_ram_bytes=MB, latency_ms=1.0, breakdown={})  # noqa: E731
    assert delivery(at(32 * MB), prof) is Delivery.BUNDLED and fit_reasons(at(32 * MB), prof, INT8) == []
    assert delivery_note(at(32 * MB), prof) == "32 MB <= model_storage_mb 32"
    assert delivery(at(32 * MB + 1), prof) is Delivery.DOWNLOAD and fit_reasons(at(32 * MB + 1), prof, INT8) == []
    assert delivery_note(at(32 * MB + 1), prof) == ("33 MB > model_storage_mb 32 (the bundled budget), "
                                                    "<= model_download_mb 1024")
    assert delivery(at(1024 * MB), prof) is Delivery.DOWNLOAD
    assert delivery(at(1024 * MB + 1), prof) is None and delivery_note(at(1024 * MB + 1), prof) is None
    assert fit_reasons(at(1024 * MB + 1), prof, INT8) == [
        "exceeds model_storage_mb: 1025 > 32 (bundled) and model_download_mb: 1025 > 1024 (download)"]
    one = _profile(storage_mb=32)  # no model_download_mb attribute at all: one budget
    assert delivery(at(32 * MB + 1), one) is None
    assert fit_reasons(at(32 * MB + 1), one, INT8) == ["exceeds model_storage_mb: 33 > 32"]
    rows = fit_table(_stats(), [prof])
    assert {r["delivery"] for r in rows} == {"bundled"} and all(r["fits"] for r in rows)


def test_lm_int4_tables_and_the_tied_head_per_runtime():
    """A decoder LM's tables are int4 at int4; a tied head is a second quantized copy in ExecuTorch and LiteRT,
    shared at int4 in ONNX (the numbers are SmolLM2-135M's real .onnx int4 file: 80.4 MiB)."""
    import dataclasses

    from edgeopt.analysis import ModelStats
    from edgeopt.formats import Precision, Runtime
    from edgeopt.planner.cost import weight_bytes

    fields = {f.name: None for f in dataclasses.fields(ModelStats)}
    layer = ((576, 576), (192, 576), (192, 576), (576, 576), (1536, 576), (1536, 576), (576, 1536))
    linear = sum(r * c for r, c in layer) * 30
    table = 49152 * 576
    stats = ModelStats(**{**fields, "model_name": "smollm2-shape", "family": "decoder", "params_total":
                          linear + table + 576 * 61, "params_by_kind": {}, "quantizable_linear_params": linear,
                          "embedding_params": table, "linear_layers": 210, "embedding_layers": 1, "tied_head": True,
                          "bytes_at": {}, "flops": 0, "activation_peak_bytes": 0, "kv_cache_bytes": 0, "batch": 1,
                          "seq_len": 128, "linear_shapes": layer * 30, "embedding_shapes": ((49152, 576),)})
    int4_table = 49152 * 288 + 49152 * 18 * 4
    onnx = weight_bytes(stats, Precision.INT4, runtime=Runtime.ONNXRUNTIME)
    assert onnx / 2**20 == pytest.approx(80.3, abs=0.1)
    for runtime in (Runtime.EXECUTORCH, Runtime.LITERT):
        assert weight_bytes(stats, Precision.INT4, runtime=runtime) == onnx + int4_table
    int8 = weight_bytes(stats, Precision.INT8, runtime=Runtime.ONNXRUNTIME)  # int8: twice everywhere
    assert int8 == weight_bytes(stats, Precision.INT8, runtime=Runtime.EXECUTORCH)
    assert int8 - weight_bytes(stats, Precision.INT8) == table + 49152 * 4
    encoder = dataclasses.replace(stats, family="encoder", tied_head=False)  # encoders keep int8 tables at int4
    assert weight_bytes(encoder, Precision.INT4) - weight_bytes(stats, Precision.INT4) == table + 49152 * 4 - int4_table
