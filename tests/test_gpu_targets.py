"""Execution targets on a machine without a GPU: where a profile runs each runtime, what the plan rejects for it,
and that a GPU run that fell back to the CPU is reported as such, never as a GPU number.

Everything here runs on the CPU build of onnxruntime, as CI does. Asking it for CUDA is the real fallback case:
the CPU build has no CUDAExecutionProvider, so onnxruntime creates a CPU session, and the runner must say
``valid: false`` with the reason.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from edgeopt.errors import ProfileError
from edgeopt.formats import Precision, Runtime, Target
from edgeopt.planner import make_plan
from edgeopt.planner.search import Status, execution_targets
from edgeopt.profiles import Profile, load_profile
from edgeopt.resources import builtin_dir
sys.path.insert(0, str(Path(__file__).parent / "packagers"))  # packager_cases, shared with the packager suites
from packager_cases import build, cosines, packager_or_skip  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RUNTIMES = builtin_dir("runtimes")
FAST = ["--runs", "5", "--min-seconds", "0.05", "--repeats", "2", "--warmup", "1", "--cooldown-s", "0",
        "--threads", "1", "--max-spread", "100"]


def _backend():
    spec = importlib.util.spec_from_file_location("ort_backend_under_test", RUNTIMES / "onnxruntime" / "backend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def backend():
    return _backend()


@pytest.fixture(scope="module")
def no_cuda():
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("this onnxruntime has a CUDA provider: the fallback case needs the CPU build")
    return ort


@pytest.fixture(scope="module")
def minilm_stats():
    from edgeopt.analysis import analyse
    from edgeopt.models import load_model

    return analyse(load_model(None), 8, 128, None)


def gpu_profile(**execution) -> Profile:
    d = load_profile("server-gpu").to_dict()
    d["execution"] = execution
    return Profile.from_dict(d, source="<gpu>")


# ------------------------------------------------------------------------------------------ profiles


def test_server_gpu_names_its_targets_and_cpu_profiles_default_to_the_cpu():
    gpu = load_profile("server-gpu")
    assert gpu.execution.targets(Runtime.ONNXRUNTIME) == (Target.TENSORRT, Target.CUDA)
    assert gpu.execution.targets(Runtime.EXECUTORCH) == gpu.execution.targets(Runtime.LITERT) == (Target.CUDA,)
    d = gpu.to_dict()
    assert d["execution"] == {"onnxruntime": ["tensorrt", "cuda"], "executorch": ["cuda"], "litert": ["cuda"]}
    assert Profile.from_dict(d) == Profile.from_dict(gpu.to_dict())  # the manifest's copy loads back the same
    for name in ("arm-mobile", "desktop-cpu", "embedded-board"):
        prof = load_profile(name)
        assert all(prof.execution.targets(r) == (Target.CPU,) for r in Runtime), name
        assert "execution" not in prof.to_dict(), name  # CPU-only profiles' manifests stay as they were
    text = (builtin_dir("profiles") / "server-gpu.yaml").read_text()
    assert "no ExecuTorch CUDA backend in edgeopt" in text


def test_a_runtime_left_out_of_execution_runs_on_the_cpu():
    prof = gpu_profile(onnxruntime=["cuda"])
    assert prof.execution.targets(Runtime.ONNXRUNTIME) == (Target.CUDA,)
    assert prof.execution.targets(Runtime.LITERT) == (Target.CPU,)


def test_bad_execution_entries_are_listed_together_with_the_fix(tmp_path):
    text = (builtin_dir("profiles") / "server-gpu.yaml").read_text().replace(
        "  onnxruntime: [tensorrt, cuda]", "  onnxruntime: [gpu, cuda, cuda]\n  tflite: [cpu]").replace(
        "  litert: [cuda]", "  litert: cuda").replace("runtimes: [onnxruntime, executorch, litert]",
                                                       "runtimes: [onnxruntime, litert]")
    path = tmp_path / "gpu.yaml"
    path.write_text(text)
    with pytest.raises(ProfileError) as e:
        load_profile(str(path))
    msg = str(e.value)
    assert f"{path}: 5 problems in this profile:" in msg
    lines = msg.splitlines()[1:]
    assert any("execution.onnxruntime[0] must be one of cpu, cuda, tensorrt, got 'gpu' (name the GPU backend: "
               "'cuda' for NVIDIA GPUs" in line for line in lines)
    assert any("execution.onnxruntime[2] repeats 'cuda' (remove the duplicate)" in line for line in lines)
    assert any("execution.tflite is not a known key; allowed here: executorch, litert, onnxruntime "
               "(did you mean 'litert'?)" in line for line in lines)
    assert any("execution.litert must be a non-empty list of execution targets from cpu, cuda, tensorrt, got 'cuda'"
               in line for line in lines)
    assert any("execution.executorch names a runtime the profile does not list in runtimes (onnxruntime, litert) "
               "(add executorch to runtimes, or remove this entry)" in line for line in lines)
    line_of = {n + 1: s for n, s in enumerate(text.splitlines())}
    bad = next(line for line in lines if "execution.onnxruntime[0]" in line)
    number = int(bad.split(":")[1])
    assert "gpu" in line_of[number]  # the line of the offending key


def test_a_provider_name_is_not_a_target():
    with pytest.raises(ProfileError, match="got 'CUDAExecutionProvider' .*write the target 'cuda'"):
        gpu_profile(onnxruntime=["CUDAExecutionProvider"])


# ------------------------------------------------------------------------------------------ the plan


def test_server_gpu_plan_builds_only_onnxruntime_on_the_gpu(minilm_stats):
    plan = make_plan(minilm_stats, load_profile("server-gpu"))
    feasible = [r for r in plan.rows if r.status is Status.FEASIBLE]
    assert feasible and {r.candidate.runtime for r in feasible} == {Runtime.ONNXRUNTIME}
    assert all(r.targets == (Target.TENSORRT, Target.CUDA) for r in feasible)
    others = [r for r in plan.rows if r.candidate.runtime is not Runtime.ONNXRUNTIME]
    assert len(others) == 2 * len(Precision)
    for row in others:
        rt = row.candidate.runtime.value
        assert row.status is Status.REJECTED and row.targets == ()
        assert row.estimate is None and row.delivery is None  # never estimated at the GPU's rates
        assert row.reasons == [
            f"{rt} has no cuda backend in edgeopt (it executes on: cpu only), so it cannot run on this profile's "
            f"device: use onnxruntime (--format onnx); to plan {rt} for the host CPU, use a CPU profile "
            f"(desktop-cpu, or `edgeopt profiles detect` on the host)"]
    d = plan.to_dict()
    assert d["rows"][0]["targets"] == ["tensorrt", "cuda"]
    assert type(plan).from_dict(d).rows[0].targets == (Target.TENSORRT, Target.CUDA)


def test_old_plans_without_targets_read_as_cpu(minilm_stats):
    from edgeopt.planner.search import CandidateRow

    d = make_plan(minilm_stats, load_profile("desktop-cpu")).to_dict()["rows"][0]
    assert d["targets"] == ["cpu"]
    del d["targets"]
    assert CandidateRow.from_dict(d).targets == (Target.CPU,)


def test_a_runtime_keeps_the_targets_it_has_in_profile_order():
    prof = gpu_profile(onnxruntime=["cuda", "tensorrt", "cpu"], executorch=["cuda", "cpu"], litert=["cuda"])
    assert execution_targets(prof, Runtime.ONNXRUNTIME) == ((Target.CUDA, Target.TENSORRT, Target.CPU), None)
    assert execution_targets(prof, Runtime.EXECUTORCH) == ((Target.CPU,), None)  # falls to the target it has
    targets, reason = execution_targets(prof, Runtime.LITERT)
    assert targets == () and reason.startswith("litert has no cuda backend in edgeopt")


def test_gpu_estimates_use_the_profile_rates_not_cpu_efficiencies(minilm_stats):
    from edgeopt.planner.cost import RUNTIME_COSTS, prior_terms

    gpu = load_profile("server-gpu")
    terms = prior_terms(gpu, Runtime.ONNXRUNTIME)
    assert terms["rates"][Precision.FP16] == pytest.approx(gpu.compute.fp16_gflops * 1e9)
    cpu = prior_terms(load_profile("desktop-cpu"), Runtime.ONNXRUNTIME)
    eff = RUNTIME_COSTS[Runtime.ONNXRUNTIME].efficiency[Precision.FP32]
    assert cpu["rates"][Precision.FP32] == pytest.approx(load_profile("desktop-cpu").compute.fp32_gflops * 1e9 * eff)


def test_plan_command_shows_the_targets_and_the_rejections():
    proc = subprocess.run([sys.executable, "-m", "edgeopt.cli", "plan", "--profile", "server-gpu", "--json"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)["rows"]
    assert {r["candidate"]["runtime"] for r in rows if r["status"] != "rejected"} == {"onnxruntime"}
    assert all("has no cuda backend in edgeopt" in r["reasons"][0]
               for r in rows if r["candidate"]["runtime"] != "onnxruntime")
    from edgeopt.report_md import plan_rows

    cells = plan_rows({"rows": rows})
    assert cells[0][1] == "onnxruntime/fp32 on tensorrt,cuda"


# ------------------------------------------------------------------------------------------ the device runner


def test_provider_list_follows_the_targets_then_the_cpu(backend):
    trt, cuda, cpu = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
    assert backend.providers_for(["tensorrt", "cuda"], [trt, cuda, cpu]) == ([trt, cuda, cpu], [])
    assert backend.providers_for(["tensorrt", "cuda"], [cuda, cpu]) == ([cuda, cpu], ["tensorrt"])
    assert backend.providers_for(["cuda"], [cpu]) == ([cpu], ["cuda"])
    assert backend.providers_for(None, [cuda, cpu]) == ([cpu], [])
    with pytest.raises(ValueError, match="unknown execution target 'npu' for onnxruntime"):
        backend.providers_for(["npu"], [cpu])


def test_fallback_rules(backend):
    cuda, cpu = "CUDAExecutionProvider", "CPUExecutionProvider"
    assert backend.fallback_reason(["cpu"], [cpu], None) is None
    assert backend.fallback_reason(["cuda"], [cuda, cpu], {cuda: 0.97, cpu: 0.03}) is None  # shape ops on the CPU
    reason = backend.fallback_reason(["cuda"], [cuda, cpu], {cuda: 0.4, cpu: 0.6})
    assert reason.startswith("fell back to CPU: 60% of kernel time ran on CPUExecutionProvider (more than 10%)")
    reason = backend.fallback_reason(["tensorrt", "cuda"], [cpu], None, ["tensorrt", "cuda"])
    assert reason.startswith("fell back to CPU: asked for tensorrt, cuda, but the session runs on "
                             "CPUExecutionProvider only") and "install onnxruntime-gpu" in reason


def test_profile_events_count_the_last_run_only(backend):
    def node(provider, ts, dur):
        return {"cat": "Node", "name": "n_kernel_time", "ts": ts, "dur": dur, "args": {"provider": provider}}

    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 100}, node("CPUExecutionProvider", 10, 90),
              {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100}, node("CUDAExecutionProvider", 210, 60),
              node("CPUExecutionProvider", 280, 20), {"cat": "Node", "name": "n_fence_before", "ts": 250, "dur": 5}]
    assert backend.node_events(events) == {"nodes": {"CUDAExecutionProvider": 1, "CPUExecutionProvider": 1},
                                           "time_share": {"CUDAExecutionProvider": 0.75, "CPUExecutionProvider": 0.25}}


def _matmul_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    w = helper.make_tensor("w", TensorProto.FLOAT, [16, 8], rng.standard_normal(128).astype(np.float32))
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def test_cuda_asked_of_the_cpu_build_reports_the_fallback(backend, no_cuda, tmp_path):
    model = backend.load(str(_matmul_model(tmp_path / "m.onnx")), 1, ["cuda"])
    x = np.ones((1, 16), np.float32)
    for _ in range(3):
        model.run({"x": x})
    report = model.execution_report()
    assert report["requested"] == ["cuda"] and report["providers"] == ["CPUExecutionProvider"]
    assert report["io_binding"] is False
    assert report["nodes"] == {"CPUExecutionProvider": 2} and report["time_share"] == {"CPUExecutionProvider": 1.0}
    assert report["invalid_reason"].startswith("fell back to CPU: asked for cuda, but the session runs on "
                                               "CPUExecutionProvider only (this onnxruntime has no cuda provider")
    assert not list(Path(tempfile.gettempdir()).glob(f"edgeopt-ort-profile-{os.getpid()}*"))  # profile removed
    cpu = backend.load(str(tmp_path / "m.onnx"), 1)
    cpu.run({"x": x})
    assert cpu.execution_report()["invalid_reason"] is None and cpu.execution_report()["nodes"] is None


def test_io_binding_gives_the_plain_run_outputs(backend, tmp_path):
    model = backend.load(str(_matmul_model(tmp_path / "m.onnx")), 1)
    x = np.random.default_rng(1).standard_normal((1, 16)).astype(np.float32)
    bound = backend.OrtModel(model._session, io_binding_device="cpu")
    (a,), (b,) = model.run({"x": x}), bound.run({"x": x})
    np.testing.assert_array_equal(a, b)
    assert bound.execution_report()["io_binding"] is True


def _bundle(root: Path, execution: dict | None) -> Path:
    root.mkdir(parents=True)
    model = _matmul_model(root / "model.onnx")
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    xs = np.random.default_rng(2).standard_normal((3, 1, 16)).astype(np.float32)
    ys = np.stack([session.run(None, {"x": x})[0] for x in xs])
    np.savez(root / "inputs.npz", **{"input.x": xs, "reference.y": ys, "expected.y": ys})
    ignore = shutil.ignore_patterns("__pycache__")
    for folder in ("common", "onnxruntime"):
        shutil.copytree(RUNTIMES / folder, root / "runner" / folder, ignore=ignore)
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    profile = {"name": "gpu-test", "compute": {"threads": 1}, **({"execution": execution} if execution else {})}
    manifest = {"schema_version": 1, "profile": profile, "plan": {}, "artifacts": [{
        "file": "model.onnx", "format": "onnx", "runtime": "onnxruntime", "precision": "fp32", "sha256": sha,
        "bytes": model.stat().st_size, "inputs": [{"name": "x", "dtype": "float32", "shape": [1, 16]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 8]}]}]}
    # every file's sha256, as edgeopt.bundle writes them (the runner verifies what the manifest lists)
    manifest["files"] = {f.relative_to(root).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
                         for f in sorted(root.rglob("*")) if f.is_file()}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def _run(bundle: Path) -> tuple[int, dict | None, str]:
    proc = subprocess.run([sys.executable, str(bundle / "runner" / "common" / "runner.py"), "--bundle", str(bundle),
                           *FAST], capture_output=True, text=True, timeout=120)
    return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else None, proc.stderr


def _schema_errors(result: dict) -> list[str]:
    from jsonschema import Draft202012Validator

    schema = json.loads((RUNTIMES / "common" / "result_schema.json").read_text())
    return [e.message for e in Draft202012Validator(schema).iter_errors(result)]


def test_runner_marks_a_cpu_fallback_invalid_never_a_gpu_number(no_cuda, tmp_path):
    code, result, stderr = _run(_bundle(tmp_path / "gpu", {"onnxruntime": ["tensorrt", "cuda"]}))
    assert code == 0, stderr
    assert _schema_errors(result) == []
    assert result["valid"] is False
    assert result["invalid_reason"].startswith("fell back to CPU: asked for tensorrt, cuda")
    assert result["execution"]["providers"] == ["CPUExecutionProvider"]
    assert result["execution"]["nodes"] == {"CPUExecutionProvider": 2}
    assert result["latency_ms"]["p50"] > 0  # measured and kept, but labelled for what it is
    assert "measured, but not valid: fell back to CPU" in stderr and "on tensorrt, cuda" in stderr


def test_runner_on_a_cpu_bundle_records_the_cpu_provider(tmp_path):
    code, result, stderr = _run(_bundle(tmp_path / "cpu", None))
    assert code == 0, stderr
    assert _schema_errors(result) == []
    assert result["execution"] == {"requested": ["cpu"], "providers": ["CPUExecutionProvider"], "io_binding": False,
                                   "nodes": None, "time_share": None, "invalid_reason": None}
    assert "fell back" not in (result["invalid_reason"] or "")


def test_runner_refuses_a_target_its_backend_cannot_run(tmp_path):
    spec = importlib.util.spec_from_file_location("runner_under_test", RUNTIMES / "common" / "runner.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    cpu_only = type("Backend", (), {})()  # a backend without `targets` (executorch's, litert's) runs on the CPU
    manifest = {"profile": {"execution": {"executorch": ["cuda"]}}}
    with pytest.raises(runner.RunnerExit, match=r"runner/executorch/backend.py cannot execute on cuda \(it runs on: "
                                                r"cpu\)") as e:
        runner.execution_targets(manifest, "executorch", cpu_only)
    assert e.value.code == runner.EXIT_UNSUPPORTED
    assert runner.execution_targets({"profile": {}}, "onnxruntime", _backend()) is None
    assert runner.execution_targets({"profile": {"execution": {"onnxruntime": ["cpu"]}}}, "onnxruntime",
                                    _backend()) is None
    with pytest.raises(runner.RunnerExit, match="must be a list of target names"):
        runner.execution_targets({"profile": {"execution": {"onnxruntime": "cuda"}}}, "onnxruntime", _backend())


# ------------------------------------------------------------------------------------------ fp16 for the GPU


def _float_types(model) -> dict[str, int]:
    """Element type per tensor name, as the fp16 converter recorded it (onnx shape inference trips over the Casts
    the converter names after their target type, so the recorded value_info is the record)."""
    g = model.graph
    types = {v.name: v.type.tensor_type.elem_type for v in list(g.value_info) + list(g.input) + list(g.output)}
    types.update({t.name: t.data_type for t in g.initializer})
    return types


def test_fp16_keeps_the_listed_ops_fp32_and_matches_on_the_cpu(tiny_bert, tmp_path):
    import onnx
    from onnx import TensorProto

    from edgeopt.packagers.onnx import FP16_KEEP_FP32
    from edgeopt.quantize import QuantScheme

    packager = packager_or_skip(Runtime.ONNXRUNTIME)
    artifact, outputs, reference = build(packager, tiny_bert, QuantScheme(Precision.FP16), tmp_path / "fp16")
    assert artifact.details["fp16"]["kept_fp32_ops"] == list(FP16_KEEP_FP32)
    assert {"LayerNormalization", "ReduceMean", "Pow", "Sqrt"} <= set(FP16_KEEP_FP32)
    model = onnx.load(str(artifact.path))
    types = _float_types(model)
    kept = [n for n in model.graph.node if n.op_type in FP16_KEEP_FP32]
    assert kept, "the tiny BERT's graph has LayerNormalization nodes"
    for node in kept:
        floats = [types.get(name) for name in list(node.input)[:1] + list(node.output)[:1]]
        assert floats == [TensorProto.FLOAT, TensorProto.FLOAT], (node.op_type, node.name, floats)
    matmul_weights = [types[n.input[1]] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in
                      {t.name for t in model.graph.initializer}]
    assert matmul_weights and set(matmul_weights) == {TensorProto.FLOAT16}  # the rest is really fp16
    assert [i.type.tensor_type.elem_type for i in model.graph.output] == [TensorProto.FLOAT] * len(model.graph.output)
    assert min(cosines(reference, outputs)) >= 0.9999  # measured 1.000000 (as the packager suite's fp16 row)


def test_minilm_fp16_parity_on_the_cpu(minilm, tmp_path):
    from edgeopt.quantize import QuantScheme

    packager = packager_or_skip(Runtime.ONNXRUNTIME)
    artifact, outputs, reference = build(packager, minilm, QuantScheme(Precision.FP16), tmp_path / "minilm", n_eval=4,
                                         seq=128)
    # the GPU target is cosine >= 0.995; on the CPU provider fp16 measured 1.000000 (min of 4 samples)
    assert min(cosines(reference, outputs)) >= 0.995
    assert artifact.path.stat().st_size < 0.55 * 90_700_000  # half the fp32 file, plus the fp32-kept norms



def test_decoder_lms_ask_cuda_for_tensorrt_and_report_a_cpu_fallback(backend, no_cuda, tmp_path):
    """TensorRT would rebuild its engine at every cache length of a decode loop: an LM asks CUDA instead; on the CPU
    build of onnxruntime that is still reported as a fallback."""
    lm = {"cache": "explicit", "context_len": 8, "past_inputs": [], "present_outputs": [], "num_kv_heads": 1,
          "head_dim": 1}
    session = backend.load_lm(str(_matmul_model(tmp_path / "m.onnx")), 1, lm, ["tensorrt", "cuda"])
    report = session.execution_report()
    assert report["requested"] == ["cuda"] and report["nodes"] is None
    assert report["invalid_reason"].startswith("fell back to CPU: asked for cuda")
