"""Native benchmark binaries (devices without Python): the parsers on outputs in each tool's documented
format, the envelope bench.sh --native prints, and bench.sh's flags for each runtime.

The samples follow the tools' own print statements (TFLite's BenchmarkLoggingListener and Stat
OutputToStream, onnxruntime's perftest PerformanceRunner and DumpToFile, ExecuTorch's executor_runner
ET_LOG lines); the numbers are made up. No native binary can be installed here (none is on PyPI), so the
bench.sh tests use a stand-in executable that records its argv and prints such a sample: what is tested
is bench.sh's command line, the envelope and the parsing, not the tool.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeopt.benchmark import BenchResult, compare, run_local
from edgeopt.benchmark.job import Artifact, BenchOptions, native_module, result_of
from edgeopt.errors import DeviceError, UnsupportedError, UsageError
from edgeopt.resources import builtin_dir

native = native_module()
_RUNNER_TESTS = Path(__file__).resolve().parents[1] / "runtimes" / "test_runner.py"
SHA = "cd" * 32

BENCHMARK_MODEL = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Min num runs: [50]
INFO: Num threads: [4]
INFO: Graph: [model.tflite]
INFO: Loaded model model.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
VERBOSE: Replacing 312 out of 312 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 1 partitions for subgraph 0.
INFO: The input model file size (MB): 22.7311
INFO: Initialized session in 84.215ms.
INFO: Running benchmark for at least 10 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=14 first=41877 curr=35112 min=34890 max=41877 avg=36120.4 std=1790 p5=34890 median=35610 p95=41877

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=50 first=35240 curr=35018 min=34702 max=38990 avg=35377.6 std=702 p5=34788 median=35190 p95=36912

INFO: Inference timings in us: Init: 84215, First inference: 41877, Warmup (avg): 36120.4, Inference (avg): 35377.6
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=31.2031 overall=33.5742
INFO: Overall peak memory footprint (MB) via periodic monitoring: 41.2773
"""

BENCHMARK_MODEL_OLD = """\
Initialized session in 3.33ms
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=5 first=118829 curr=105453 min=102652 max=118829 avg=107354 std=5819

Running benchmark for at least 100 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=100 first=102919 curr=102428 min=101417 max=109982 avg=104036 std=1565

Average inference timings in us: Warmup: 107354, Init: 3330, no stats: 104036
"""

BENCHMARK_MODEL_FAILED = """\
INFO: Loaded model model.tflite
ERROR: tensorflow/lite/kernels/batch_matmul.cc:353 lhs_data->type == rhs_data->type was not true.
ERROR: Node number 57 (BATCH_MATMUL) failed to prepare.
ERROR: Failed to allocate tensors!
ERROR: Benchmarking failed.
"""

ORT_PERF = """\
Setting intra_op_num_threads to 2
Session creation time cost: 0.0412 s
First inference time cost: 9 ms
Total inference time cost: 0.2204 s
Total inference requests: 40
Average inference time cost: 5.51 ms
Total inference run time: 0.2211 s
Number of inferences per second: 180.91
Avg CPU usage: 96 %
Peak working set size: 58720256 bytes
Avg CPU usage:96
Peak working set size:58720256
Runs:40
Min Latency: 0.00502 s
Max Latency: 0.00731 s
P50 Latency: 0.00546 s
P90 Latency: 0.00598 s
P95 Latency: 0.00655 s
P99 Latency: 0.00731 s
P999 Latency: 0.00731 s
"""

ORT_PERF_OLD = """\
Total time cost:58.8053
Total iterations:1000
Average time cost:58.8053 ms
Total run time:58.8102 s
Min Latency is 0.0559777sec
Max Latency is 0.0623472sec
P50 Latency is 0.0587108sec
P90 Latency is 0.0599845sec
P95 Latency is 0.0605676sec
P99 Latency is 0.0619517sec
P999 Latency is 0.0623472sec
"""

EXECUTOR_RUNNER = """\
I 00:00:00.000612 executorch:executor_runner.cpp:181] Resetting threadpool with num threads = 4
I 00:00:00.003120 executorch:executor_runner.cpp:263] Model file model.pte is loaded.
I 00:00:00.003131 executorch:executor_runner.cpp:272] Using method forward
I 00:00:00.003140 executorch:executor_runner.cpp:319] Setting up planned buffer 0, size 1204224.
I 00:00:00.011913 executorch:executor_runner.cpp:344] Method loaded.
I 00:00:00.912460 executorch:executor_runner.cpp:404] Model executed successfully 25 time(s) in 893.250000 ms.
I 00:00:00.912477 executorch:executor_runner.cpp:413] 1 outputs:
Output 0: tensor(sizes=[1, 384], [0.0312, -0.0145, ..., 0.0871])
"""


def per_run_lines(times_s: list[float]) -> str:
    """onnxruntime_perf_test's result file: model,seconds,peak,cpu,index per run, then the statistics."""
    rows = [f"model,{t},58720256,96,{i}" for i, t in enumerate(times_s)]
    return "\n".join(rows) + "\n\nP50 Latency is 0.00546sec\n"


def envelope(tool: str, runtime: str, output: str, *, sha: str = SHA, per_run: str | None = None,
             extra: str = "") -> str:
    head = (f"edgeopt-native 1\ntool {tool}\nruntime {runtime}\nartifact model.bin\nsha256 {sha}\nthreads 4\n"
            "cores_pinned 4,5\nruns 50\nwarmup 10\nmin_seconds 1.0\ntimestamp 2026-03-04T05:06:07Z\n"
            "machine aarch64\nos Linux 6.1.25-android14\ncpu Cortex-A78\ncores 8\nram_kb 7794304\n"
            "temp_before 41000 38500\nfreq_before 4=2400000 5=2400000 0=1800000\n"
            "temp_after 44000 39000\nfreq_after 4=2300000 5=2300000 0=1000000\n" + extra)
    body = "--- tool output ---\n" + output + "\n"
    if per_run is not None:
        body += "--- per-run ---\n" + per_run + "\n"
    return head + body + "--- end ---\n"


# --------------------------------------------------------------------------------------------- parsers


def test_benchmark_model_reports_mean_std_min_max_median_but_no_p90():
    s = native.parse_benchmark_model(BENCHMARK_MODEL)
    assert s["load_ms"] == pytest.approx(84.215) and s["first_inference_ms"] == pytest.approx(41.877)
    assert s["timed_runs"] == 50  # the second count= line is the timed block, not the warm-up one
    assert s["reported"] == pytest.approx({"mean": 35.3776, "std": 0.702, "min": 34.702, "max": 38.99,
                                           "p50": 35.19, "p5": 34.788, "p95": 36.912})
    assert s["peak_rss_mb"] == pytest.approx(41.2773)


def test_benchmark_model_old_format():
    s = native.parse_benchmark_model(BENCHMARK_MODEL_OLD)
    assert s["load_ms"] == pytest.approx(3.33) and s["first_inference_ms"] is None
    assert s["timed_runs"] == 100
    assert s["reported"] == pytest.approx({"mean": 104.036, "std": 1.565, "min": 101.417, "max": 109.982})


def test_benchmark_model_failure_quotes_its_errors():
    with pytest.raises(native.NativeOutputError, match=r"no timings: .*Failed to allocate tensors!"):
        native.parse_benchmark_model(BENCHMARK_MODEL_FAILED)


def test_onnxruntime_perf_test_summary_and_per_run_times():
    times = [0.0050 + 0.0001 * (i % 7) + (0.002 if i == 39 else 0.0) for i in range(40)]
    s = native.parse_onnxruntime_perf_test(ORT_PERF, per_run_lines(times))
    ms = np.array(times) * 1000
    assert s["load_ms"] == pytest.approx(41.2) and s["first_inference_ms"] == 9.0
    assert s["peak_rss_mb"] == 56.0 and s["timed_runs"] == 40
    # Every statistic from the per-run times, percentiles interpolated exactly as the Python runner does.
    assert s["reported"]["p90"] == pytest.approx(np.percentile(ms, 90), abs=1e-4)
    assert s["reported"]["p99"] == pytest.approx(np.percentile(ms, 99), abs=1e-4)
    assert s["reported"]["std"] == pytest.approx(ms.std(), abs=1e-4)
    assert s["reported"]["mean"] == pytest.approx(ms.mean(), abs=1e-4)


def test_onnxruntime_perf_test_without_result_file_has_no_std():
    s = native.parse_onnxruntime_perf_test(ORT_PERF)
    assert s["reported"] == pytest.approx({"mean": 5.51, "min": 5.02, "max": 7.31, "p50": 5.46, "p90": 5.98,
                                           "p95": 6.55, "p99": 7.31})
    assert "std" not in s["reported"]


def test_onnxruntime_perf_test_old_format():
    s = native.parse_onnxruntime_perf_test(ORT_PERF_OLD)
    assert s["timed_runs"] == 1000 and s["load_ms"] is None
    assert s["reported"]["mean"] == pytest.approx(58.8053) and s["reported"]["p90"] == pytest.approx(59.9845)


def test_onnxruntime_per_run_times_that_contradict_the_summary_are_dropped():
    s = native.parse_onnxruntime_perf_test(ORT_PERF, per_run_lines([0.5] * 40))  # 500 ms vs 5.51 ms reported
    assert "std" not in s["reported"] and s["reported"]["mean"] == 5.51
    assert s["notes"] == ["per-run times disagree with the reported average; ignored"]


def test_executor_runner_gives_a_mean_over_its_executions():
    s = native.parse_executor_runner(EXECUTOR_RUNNER)
    assert s["reported"] == {"mean": pytest.approx(35.73)} and s["timed_runs"] == 25
    assert "includes the first execution" in s["notes"][0]


def test_executor_runner_without_timing_is_refused():
    old = "I 00:00:00.9 executorch:executor_runner.cpp:170] Model executed successfully 10 time(s).\n"
    with pytest.raises(native.NativeOutputError, match="does not print its execution time"):
        native.parse_executor_runner(old)


# -------------------------------------------------------------------------------------------- envelope


def test_envelope_to_schema_result_with_readings():
    data = native.result_from_envelope(envelope("benchmark_model", "litert", BENCHMARK_MODEL), SHA)
    r = BenchResult.from_dict(data)  # the host's validator: the same schema as the Python runner's
    assert (r.runtime, r.runtime_version, r.verified, r.valid, r.parity, r.latency_ms) == (
        "litert", None, True, False, None, None)
    assert r.load_ms == pytest.approx(84.215) and r.peak_rss_mb == pytest.approx(41.2773)
    assert data["device"] == {"machine": "aarch64", "cpu": "Cortex-A78", "cores": 8, "ram_mb": 7611,
                              "os": "Linux 6.1.25-android14", "python": native.NATIVE_PYTHON}
    assert data["config"]["cores"] == [4, 5] and data["config"]["threads"] == 4
    # Hottest zone, and the mean frequency of the pinned cores only (cpu0's drop is not counted).
    assert data["thermal_c"] == {"before": 41.0, "after": 44.0}
    assert data["cpu_freq_mhz"] == {"before": 2400.0, "after": 2300.0}
    assert data["extra"]["native"]["not_reported"] == ["p90", "p99"]
    assert r.invalid_reason == ("no parity: benchmark_model does not compare outputs with the reference; "
                                "incomplete latency: benchmark_model does not report p90, p99 (what it reports "
                                "is in extra.native)")
    assert data["timestamp"] == "2026-03-04T05:06:07Z"


def test_onnxruntime_envelope_fills_latency_from_per_run_times():
    times = [0.0055] * 39 + [0.0069]
    data = native.result_from_envelope(envelope("onnxruntime_perf_test", "onnxruntime", ORT_PERF,
                                                per_run=per_run_lines(times)), SHA)
    r = BenchResult.from_dict(data)
    assert r.latency_ms["p50"] == 5.5 and r.latency_ms["max"] == 6.9 and data["timed_runs"] == 40
    assert data["repeats_p90_ms"] == [r.latency_ms["p90"]]
    assert r.invalid_reason == "no parity: onnxruntime_perf_test does not compare outputs with the reference"


def test_sha256_mismatch_or_unavailable_is_not_verified():
    other = native.result_from_envelope(envelope("executor_runner", "executorch", EXECUTOR_RUNNER, sha="ee" * 32), SHA)
    assert other["artifact"] == {"file": "model.bin", "sha256": "ee" * 32, "verified": False}
    assert other["invalid_reason"].startswith(f"not verified: the device's sha256 of model.bin is {'ee' * 32}")
    none = native.result_from_envelope(envelope("executor_runner", "executorch", EXECUTOR_RUNNER, sha="-"), SHA)
    assert none["artifact"]["verified"] is False and "sha256 of model.bin is -" in none["invalid_reason"]


def test_thermal_rise_makes_a_reason():
    text = envelope("executor_runner", "executorch", EXECUTOR_RUNNER).replace("temp_after 44000", "temp_after 61000")
    data = native.result_from_envelope(text, SHA)
    assert "thermal: temperature rose 20.0 C (41.0 -> 61.0) > 15.0 C" in data["invalid_reason"]


@pytest.mark.parametrize("mangle, message", [
    (lambda t: t.replace("edgeopt-native 1", "Segmentation fault"), "not a bench.sh --native envelope"),
    (lambda t: t[: t.index("--- end ---")], "does not end with '--- end ---'"),
    (lambda t: t.replace("tool executor_runner", "tool trtexec"), "unknown tool 'trtexec'"),
    (lambda t: t.replace("sha256 " + SHA + "\n", ""), "no 'sha256' line"),
])
def test_malformed_envelopes_are_refused(mangle, message):
    with pytest.raises(native.NativeOutputError, match=message):
        native.result_from_envelope(mangle(envelope("executor_runner", "executorch", EXECUTOR_RUNNER)), SHA)


def test_host_maps_bad_native_output_to_device_error():
    artifact = Artifact("model.bin", "executorch", SHA)
    options = BenchOptions(native="/data/local/tmp/executor_runner")
    text = envelope("executor_runner", "executorch", EXECUTOR_RUNNER)
    truncated = text[: text.index("Output 0")].encode()  # the connection dropped mid-transfer
    with pytest.raises(DeviceError, match="native benchmark output not understood: .*'--- end ---'"):
        result_of("adb:X: ", 0, truncated, b"", artifact, options, remote=True)
    ok = result_of("adb:X: ", 0, envelope("executor_runner", "executorch", EXECUTOR_RUNNER).encode(), b"",
                   artifact, options, remote=True)
    assert ok.raw["extra"]["native"]["reported"]["mean"] == pytest.approx(35.73)


def test_native_py_runs_on_a_device_with_python(tmp_path):
    (tmp_path / "manifest.json").write_text(json.dumps({"artifacts": [{"file": "model.bin", "sha256": SHA}]}))
    proc = subprocess.run([sys.executable, str(builtin_dir("runtimes") / "common" / "native.py"), "--bundle",
                           str(tmp_path)], input=envelope("benchmark_model", "litert", BENCHMARK_MODEL),
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert BenchResult.from_dict(json.loads(proc.stdout)).raw["extra"]["native"]["reported"]["p50"] == 35.19


# ------------------------------------------------------------------------------------ bench.sh --native


def _runner_tests():
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) and Path(module.__file__).resolve() == _RUNNER_TESTS:
            return module
    spec = importlib.util.spec_from_file_location("edgeopt_tests_runner_bundles", _RUNNER_TESTS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # found again by the loop above: one torch export per session
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_bundle(tmp_path_factory) -> Path:
    return _runner_tests().tiny_bundle(tmp_path_factory)


@pytest.fixture
def bundle(tiny_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_bundle, tmp_path / "bundle"))


def stand_in(tmp_path: Path, name: str, output: str, *, code: int = 0, per_run: str | None = None) -> Path:
    """An executable named like the tool: records its argv, prints ``output``, writes the ORT result file."""
    sample = tmp_path / f"{name}.out"
    sample.write_text(output)
    script = f'printf "%s\\n" "$@" > "{tmp_path}/{name}.argv"\ncat "{sample}"\n'
    if per_run is not None:
        (tmp_path / "per_run.sample").write_text(per_run)
        script += f'for last; do :; done\ncp "{tmp_path}/per_run.sample" "$last"\n'
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + script + f"exit {code}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def argv_of(tmp_path: Path, name: str) -> list[str]:
    return (tmp_path / f"{name}.argv").read_text().splitlines()


def test_bench_sh_drives_onnxruntime_perf_test(bundle, tmp_path):
    times = [0.0055] * 40
    tool = stand_in(tmp_path, "onnxruntime_perf_test", ORT_PERF, per_run=per_run_lines(times))
    result = run_local(bundle, native=str(tool), runs=40, threads=2, warmup=3, min_seconds=0.5, repeats=2)
    argv = argv_of(tmp_path, "onnxruntime_perf_test")
    assert argv[:-1] == ["-m", "times", "-r", "40", "-e", "cpu", "-I", "-s", "-x", "2", "model.onnx"]
    assert argv[-1].startswith(".native-") and argv[-1].endswith("/per_run.txt")
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert result.verified and result.artifact_sha256 == manifest["artifacts"][0]["sha256"]  # sha256sum on "device"
    assert result.latency_ms["p50"] == 5.5 and result.raw["config"]["runs"] == 40
    assert result.raw["device"]["cores"] == os.cpu_count()
    assert not any(p.name.startswith(".native-") for p in bundle.iterdir())
    assert compare(result, manifest)["latency_ms"]["measured"] == 5.5


def test_bench_sh_drives_benchmark_model_and_executor_runner(bundle, tmp_path):
    tool = stand_in(tmp_path, "benchmark_model", BENCHMARK_MODEL)
    proc = subprocess.run(["sh", str(bundle / "bench.sh"), "--native", str(tool), "--artifact", "model.onnx",
                           "--runtime", "litert", "--runs", "50", "--threads", "4", "--warmup", "10",
                           "--min-seconds", "1.5", "--repeats", "3"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert argv_of(tmp_path, "benchmark_model") == ["--graph=model.onnx", "--num_runs=50", "--min_secs=1.5",
                                                    "--warmup_runs=10", "--num_threads=4"]
    sha = hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
    result = BenchResult.from_dict(native.result_from_envelope(proc.stdout, sha))
    assert (result.runtime, result.verified, result.latency_ms) == ("litert", True, None)
    assert compare(result, {})["latency_ms"]["statistic"] == "mean (native tool, no percentiles)"
    assert compare(result, {})["latency_ms"]["measured"] == pytest.approx(35.3776)
    tool = stand_in(tmp_path, "executor_runner", EXECUTOR_RUNNER)
    proc = subprocess.run(["sh", str(bundle / "bench.sh"), "--native", str(tool), "--artifact", "model.onnx",
                           "--runs", "25", "--threads", "3"], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert argv_of(tmp_path, "executor_runner") == ["--model_path=model.onnx", "--num_executions=25", "--cpu_threads=3"]
    head = native.parse_envelope(proc.stdout)["header"]  # no --runtime: the tool's name decides
    assert (head["runtime"], head["tool"], head["sha256"]) == ("executorch", "executor_runner", sha)


def test_the_wrong_tool_for_the_artifact_is_a_usage_error(bundle, tmp_path):
    tool = stand_in(tmp_path, "benchmark_model", BENCHMARK_MODEL)
    with pytest.raises(UsageError, match="runner exited 2: bench.sh: benchmark_model benchmarks litert artifacts, "
                                         "but model.onnx is for onnxruntime"):
        run_local(bundle, native=str(tool), runs=5)
    assert not (tmp_path / "benchmark_model.argv").exists()


def test_a_failing_tool_is_unsupported_with_its_output(bundle, tmp_path):
    failed = ("2026-03-04 05:06:07.1 [E:onnxruntime:, inference_session.cc:2045 operator()] Exception during "
              "initialization: Could not find an implementation for MatMulInteger(10) node with name 'mm'\n")
    tool = stand_in(tmp_path, "onnxruntime_perf_test", failed, code=255)
    with pytest.raises(UnsupportedError, match=r"(?s)runner exited 4: bench.sh: onnxruntime_perf_test exited 255.*"
                                               r"Could not find an implementation for MatMulInteger"):
        run_local(bundle, native=str(tool), runs=5)


@pytest.mark.parametrize("args, code, message", [
    (["--native", "TOOL"], 2, "--native needs --artifact FILE"),
    (["--native", "TOOL", "--artifact", "nope.onnx"], 3, "nope.onnx is not in this bundle"),
    (["--native", "/no/such/onnxruntime_perf_test", "--artifact", "model.onnx"], 7, "is not an executable file"),
    (["--native", "TOOL", "--artifact", "model.onnx", "--out", "x.json"], 2, "--out is not a flag of --native mode"),
    (["--runs", "5", "--native"], 2, "--native needs the path of a benchmark binary"),
])
def test_bench_sh_native_usage_errors(bundle, tmp_path, args, code, message):
    tool = stand_in(tmp_path, "onnxruntime_perf_test", ORT_PERF)
    args = [str(tool) if a == "TOOL" else a for a in args]
    proc = subprocess.run(["sh", str(bundle / "bench.sh"), *args], capture_output=True, text=True, timeout=60, check=False)
    assert (proc.returncode, proc.stdout) == (code, "")
    assert message in proc.stderr
