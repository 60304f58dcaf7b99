"""Profile calibration: the fit recovers known numbers, moves only what was measured, and reads real results."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from edgeopt.analysis import ModelStats
from edgeopt.errors import InputFileError, UsageError
from edgeopt.formats import Precision, Runtime
from edgeopt.planner.calibrate import Point, calibrate, load_points, residuals
from edgeopt.planner.cost import MB, estimate
from edgeopt.profiles import Calibration, Profile, RuntimeCalibration, load_profile

FP32, FP16, INT8, INT4 = Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4


def _stats(name: str, width: int, layers: int, ops: int, act: int) -> ModelStats:
    linear = tuple((width, width) for _ in range(layers))
    lin = width * width * layers
    emb = 1000 * width
    return ModelStats(
        model_name=name, family="encoder", params_total=lin + emb, params_by_kind={"embeddings": emb, "attention": 0,
        "ffn": lin, "norms": 0, "head": 0, "other": 0}, quantizable_linear_params=lin, embedding_params=emb,
        linear_layers=layers, embedding_layers=1, tied_head=False, bytes_at={}, flops=2 * 128 * lin,
        activation_peak_bytes=act, kv_cache_bytes=0, batch=1, seq_len=128, context_len=None, num_layers=layers,
        hidden_size=width, num_heads=None, intermediate_size=None, vocab_size=1000, linear_shapes=linear,
        embedding_shapes=((1000, width),), aten_ops=ops)


BIG = _stats("big", 1024, 24, ops=300, act=2 * MB)
SMALL = _stats("small", 256, 8, ops=900, act=24 * MB)
TRUE = RuntimeCalibration(fp32_gflops=40.0, fp16_gflops=15.0, int8_gops=90.0, int4_gops=55.0, per_op_us=4.0,
                          base_rss_mb=60.0, weight_rss_factor={"fp32": 1.0, "fp16": 2.0, "int8": 1.3, "int4": 1.1},
                          activation_factor=1.0)


def _base() -> Profile:
    return replace(load_profile("desktop-cpu"), limits=replace(load_profile("desktop-cpu").limits,
                                                                precisions=(FP32, FP16, INT8, INT4)))


def _points(truth: Profile, models=(BIG, SMALL), runtime=Runtime.ONNXRUNTIME, threads=4) -> list[Point]:
    pts = []
    for stats in models:
        for p in Precision:
            est = estimate(stats, truth, runtime, p)
            pts.append(Point(source=f"{stats.model_name}-{p.value}", runtime=runtime, precision=p, stats=stats,
                             latency_ms=est.latency_ms, peak_rss_mb=est.peak_ram_bytes / MB, threads=threads,
                             valid=True, invalid_reason=None, profile=None))
    return pts


def test_fit_recovers_the_numbers_that_made_the_measurements():
    base = _base()
    truth = replace(base, calibration=Calibration(source="truth", onnxruntime=TRUE))
    fitted = calibrate(_points(truth), base).calibration.onnxruntime
    for p in Precision:
        assert fitted.rate(p) == pytest.approx(TRUE.rate(p), rel=0.02), p
    assert fitted.per_op_us == pytest.approx(4.0, rel=0.02)
    # RSS terms are only weakly told apart by two models (base, residency and arena all grow with the model),
    # so they come back within 10% while the predictions they make match to 1%
    assert fitted.base_rss_mb == pytest.approx(60.0, rel=0.1)
    for name in ("fp32", "fp16"):  # the int8/int4 weights are too small next to the base RSS to pin down
        assert fitted.weight_rss_factor[name] == pytest.approx(TRUE.weight_rss_factor[name], rel=0.1), name
    for row in residuals(_points(truth), replace(base, calibration=Calibration(onnxruntime=fitted))):
        assert row["rss_ratio"] == pytest.approx(1.0, abs=0.01) and row["latency_ratio"] == pytest.approx(1.0, abs=0.01)
    assert fitted.results == 8


def test_fit_from_one_model_reproduces_it_and_leaves_unmeasured_runtimes_alone():
    base = _base()
    truth = replace(base, calibration=Calibration(source="truth", onnxruntime=TRUE))
    points = _points(truth, models=(BIG,))
    fitted = calibrate(points, base)
    for row in residuals(points, fitted):
        assert row["latency_ratio"] == pytest.approx(1.0, abs=0.03), row
        assert row["rss_ratio"] == pytest.approx(1.0, abs=0.03), row
    assert fitted.calibration.executorch is None and fitted.calibration.litert is None
    assert estimate(BIG, fitted, Runtime.LITERT, INT8) == estimate(BIG, base, Runtime.LITERT, INT8)
    assert fitted.compute.threads == 4 and fitted.calibration.source.startswith("4 artifacts (4 runs) of 1 model(s) (big)")


def test_calibrated_profile_round_trips_through_yaml(tmp_path):
    from edgeopt.profiles import dump_profile_yaml

    base = _base()
    truth = replace(base, calibration=Calibration(source="truth", onnxruntime=TRUE))
    fitted = calibrate(_points(truth), base)
    path = tmp_path / "cal.yaml"
    path.write_text(dump_profile_yaml(fitted.to_dict()))
    loaded = load_profile(str(path))
    assert loaded.calibration == fitted.calibration
    assert estimate(BIG, loaded, Runtime.ONNXRUNTIME, INT8).latency_ms == pytest.approx(
        estimate(BIG, truth, Runtime.ONNXRUNTIME, INT8).latency_ms, rel=0.02)


def test_results_at_different_thread_counts_are_refused():
    base = _base()
    pts = _points(base, threads=2) + _points(base, runtime=Runtime.LITERT, threads=4)
    with pytest.raises(UsageError, match=r"different thread counts \[2, 4\]"):
        calibrate(pts, base)
    with pytest.raises(UsageError, match="no results given"):
        calibrate([], base)


def test_bad_result_files_name_the_file_and_the_fix(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(InputFileError, match="no such file"):
        load_points([missing])
    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    with pytest.raises(InputFileError, match=r"junk.json: not a stored edgeopt bench result"):
        load_points([junk])
    with pytest.raises(InputFileError, match="no results/\\*.json in this folder"):
        load_points([tmp_path / "empty"] if (tmp_path / "empty").mkdir() is None else [])


def test_calibration_section_is_validated():
    d = load_profile("desktop-cpu").to_dict()
    d["calibration"] = {"onnxruntime": {"int8_gops": -3, "weight_rss_factor": {"int9": 1.0}}, "tflite": {}}
    from edgeopt.errors import ProfileError

    with pytest.raises(ProfileError) as e:
        Profile.from_dict(d)
    text = str(e.value)
    assert "calibration.onnxruntime.int8_gops must be a positive number, got -3" in text
    assert "calibration.onnxruntime.weight_rss_factor.int9 is not a known key" in text
    assert "calibration.tflite is not a known key" in text and "did you mean 'litert'" in text


@pytest.mark.slow
def test_calibrate_from_a_real_bench_run(tmp_path, tiny_bert_dir, small_profile):
    """Package, bench on this machine in the real runtime, calibrate from the stored record: the new profile
    predicts that run within a few percent and the CLI writes a profile that loads."""
    import subprocess
    import sys

    from edgeopt import api

    def edgeopt(*args):
        return subprocess.run([sys.executable, "-m", "edgeopt.cli", *args], capture_output=True, text=True, timeout=300)

    res = api.package(str(tiny_bert_dir), profile=small_profile, out=tmp_path / "dist", fmt="onnx", precision="int8")
    run = api.bench(res.bundle_path, runs=20, min_seconds=0.2, warmup=3, repeats=1, threads=1)
    record = json.loads(open(run.saved_to).read())
    assert record["cost_inputs"]["precision"] == "int8"
    assert record["cost_inputs"]["stats"]["model_name"] == res.manifest["stats"]["model_name"]
    out = tmp_path / "cal.yaml"
    result = edgeopt("profiles", "calibrate", run.saved_to, "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    fit = json.loads(result.stdout)
    assert fit["summary"]["after"]["worst_latency"] < 0.05
    assert fit["summary"]["after"]["worst_rss"] < 0.05
    prof = load_profile(str(out))
    assert prof.name.endswith("-calibrated") and prof.calibration.onnxruntime.results == 1
    assert prof.compute.threads == 1
    assert out.read_text().startswith("# edgeopt device profile written by `edgeopt profiles calibrate`")
    # a result copied out of its bundle still calibrates: the record carries its cost inputs
    lone = tmp_path / "lone.json"
    lone.write_text(json.dumps(record))
    assert load_points([lone])[0].stats.flops == res.manifest["stats"]["flops"]
    # an unwritable --out loses nothing and says what to do
    bad = edgeopt("profiles", "calibrate", str(lone), "--out", str(tmp_path / "no" / "x.yaml"))
    assert bad.returncode == 2 and "pick a writable --out" in bad.stderr and "Traceback" not in bad.stderr
    missing = edgeopt("profiles", "calibrate", str(tmp_path / "missing.json"), "--out", str(tmp_path / "y.yaml"))
    assert missing.returncode == 3 and "no such file" in missing.stderr and not (tmp_path / "y.yaml").exists()
    table = edgeopt("profiles", "calibrate", str(lone), "--out", str(tmp_path / "z.yaml"))
    assert table.returncode == 0 and "measured vs predicted before and after calibration" in table.stdout
    assert "plan with it: edgeopt plan --profile" in table.stdout
