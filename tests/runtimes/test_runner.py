"""The device runner (runtimes/common/runner.py) on real tiny bundles, run in real onnxruntime.

Bundles are built here without edgeopt's packager: a torch MLP exported with torch.onnx (dynamo) and,
for the NaN path, a one-node ONNX graph. tests/bench/test_local.py reuses ``tiny_bundle`` from this file.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeopt.resources import builtin_dir

RUNTIMES = builtin_dir("runtimes")
RUNNER = RUNTIMES / "common" / "runner.py"
BACKEND = RUNTIMES / "onnxruntime" / "backend.py"
SCHEMA = RUNTIMES / "common" / "result_schema.json"
SAMPLES = 4
FAST = ["--runs", "5", "--min-seconds", "0.05", "--repeats", "2", "--warmup", "1", "--cooldown-s", "0",
        "--threads", "1"]
_BUILT: dict[str, Path] = {}  # one torch export per pytest session, shared with tests/bench


# ------------------------------------------------------------------------------------- bundle builders


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_bundle(root: Path, model_path: Path, inputs: dict, outputs_spec: list, references: dict,
                 runtime_outputs: dict) -> Path:
    """Lay out a bundle as edgeopt.bundle does: manifest, model.onnx, inputs.npz, runner/, bench.sh."""
    root.mkdir(parents=True)
    shutil.copyfile(model_path, root / "model.onnx")
    arrays = {f"input.{k}": v for k, v in inputs.items()}
    arrays.update({f"reference.{k}": v for k, v in references.items()})
    arrays.update({f"expected.{k}": v for k, v in runtime_outputs.items()})
    np.savez(root / "inputs.npz", **arrays)
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(RUNTIMES / "common", root / "runner" / "common", ignore=ignore)
    shutil.copytree(RUNTIMES / "onnxruntime", root / "runner" / "onnxruntime", ignore=ignore)
    shutil.copyfile(RUNTIMES / "common" / "bench.sh", root / "bench.sh")
    artifact = {
        "file": "model.onnx", "format": "onnx", "runtime": "onnxruntime", "precision": "fp32",
        "sha256": sha256_of(root / "model.onnx"), "bytes": (root / "model.onnx").stat().st_size,
        "inputs": [{"name": k, "dtype": str(v.dtype), "shape": list(v.shape[1:])} for k, v in inputs.items()],
        "outputs": outputs_spec,
    }
    manifest = {
        "schema_version": 1, "edgeopt_version": "0.1.0", "model": {"name": "tiny-mlp"},
        "profile": {"name": "desktop-cpu", "compute": {"threads": 2}}, "plan": {}, "artifacts": [artifact],
    }
    # Every file, as edgeopt.bundle.file_hashes lists them: the runner refuses a bundle with unlisted files.
    manifest["files"] = {p.relative_to(root).as_posix(): sha256_of(p) for p in sorted(root.rglob("*")) if p.is_file()}
    (root / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return root


def ort_outputs(model_path: Path, inputs: dict) -> dict:
    """Outputs ``[K, ...]`` of the model in onnxruntime on the host (the bundle's ``expected.*``)."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    runs = [session.run(names, {k: v[i] for k, v in inputs.items()}) for i in range(SAMPLES)]
    return {name: np.stack([r[j] for r in runs]) for j, name in enumerate(names)}


def build_mlp_bundle(root: Path) -> Path:
    """A token-embedding + features MLP with two outputs; the manifest lists them in reverse session order."""
    import torch

    class TinyMLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(50, 12)
            self.mix = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.GELU(), torch.nn.Linear(32, 8))
            self.head = torch.nn.Linear(8, 3)

        def forward(self, input_ids, features):
            x = torch.cat([self.embed(input_ids).mean(dim=1), features], dim=-1)
            embedding = self.mix(x)
            return embedding, self.head(embedding)

    torch.manual_seed(0)
    model = TinyMLP().eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 50, (SAMPLES, 1, 6), generator=gen)
    feats = torch.randn(SAMPLES, 1, 4, generator=gen)
    onnx_path = root.parent / f"{root.name}-export.onnx"
    program = torch.onnx.export(model, (ids[0], feats[0]), dynamo=True, input_names=["input_ids", "features"],
                                output_names=["sentence_embedding", "scores"])
    program.save(str(onnx_path))
    with torch.no_grad():
        refs = [model(ids[i], feats[i]) for i in range(SAMPLES)]
    references = {"sentence_embedding": torch.stack([r[0] for r in refs]).numpy(),
                  "scores": torch.stack([r[1] for r in refs]).numpy()}
    inputs = {"input_ids": ids.numpy(), "features": feats.numpy()}
    outputs_spec = [{"name": "scores", "dtype": "float32", "shape": [1, 3]},
                    {"name": "sentence_embedding", "dtype": "float32", "shape": [1, 8]}]
    return write_bundle(root, onnx_path, inputs, outputs_spec, references, ort_outputs(onnx_path, inputs))


def build_log_bundle(root: Path) -> Path:
    """y = Log(x): negative samples make NaN, so the runner must report non-finite outputs."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Log", ["x"], ["y"])], "log",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx_path = root.parent / f"{root.name}-log.onnx"
    onnx.save(model, str(onnx_path))
    x = np.linspace(-1.0, 2.0, SAMPLES * 5, dtype=np.float32).reshape(SAMPLES, 1, 5)
    return write_bundle(root, onnx_path, {"x": x}, [{"name": "y", "dtype": "float32", "shape": [1, 5]}],
                        {"y": np.log(np.abs(x) + 1)}, {})


def tiny_bundle(tmp_path_factory) -> Path:
    """The MLP bundle, built once per session; callers copy it before changing anything in it."""
    if "mlp" not in _BUILT:
        _BUILT["mlp"] = build_mlp_bundle(tmp_path_factory.mktemp("tiny") / "bundle")
    return _BUILT["mlp"]


@pytest.fixture(scope="session")
def mlp_bundle(tmp_path_factory) -> Path:
    return tiny_bundle(tmp_path_factory)


@pytest.fixture
def bundle_copy(mlp_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(mlp_bundle, tmp_path / "bundle"))


def run_runner(bundle: Path, *flags: str, python_args: tuple = ()) -> subprocess.CompletedProcess:
    """The bundle's own runner copy, in a fresh interpreter without this source tree on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, *python_args, str(bundle / "runner" / "common" / "runner.py"), "--bundle", str(bundle),
           *flags]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=bundle.parent)


def schema_errors(result: dict) -> list[str]:
    import jsonschema

    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(result)]


def load_runner_module():
    spec = importlib.util.spec_from_file_location("edgeopt_device_runner", RUNNER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner = load_runner_module()


# ------------------------------------------------------------------------------------- end to end


def test_runner_result_matches_schema_with_parity(bundle_copy, tmp_path):
    import onnxruntime

    out = tmp_path / "result.json"
    proc = run_runner(bundle_copy, *FAST, "--cores", "0", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1  # exactly one JSON object on stdout; logs went to stderr
    result = json.loads(lines[0])
    assert schema_errors(result) == []
    assert json.loads(out.read_text()) == result
    assert result["runtime"] == {"name": "onnxruntime", "version": onnxruntime.__version__}
    assert result["artifact"] == {"file": "model.onnx", "sha256": sha256_of(bundle_copy / "model.onnx"),
                                  "verified": True}
    assert result["config"]["threads"] == 1 and result["config"]["cores"] == [0]
    assert result["config"]["runs"] == 5 and result["config"]["repeats"] == 2
    parity = result["parity"]
    assert parity["samples"] == SAMPLES and parity["reference"] == "fp32"
    assert parity["min_cosine"] > 0.9999
    assert parity["max_abs_err"] < 1e-4
    assert parity["host_max_abs_err"] < 1e-5
    lat = result["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert result["timed_runs"] >= 10 and len(result["repeats_p90_ms"]) == 2
    assert result["load_ms"] > 0 and result["first_inference_ms"] > 0
    # numpy + onnxruntime + a tiny model; not the few hundred MB of this torch-laden pytest that started it.
    assert 10 < result["peak_rss_mb"] < 250
    assert result["valid"] is (result["invalid_reason"] is None)


def test_flipped_byte_is_refused_before_loading(bundle_copy):
    model = bundle_copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0x01
    model.write_bytes(bytes(data))
    manifest_sha = json.loads((bundle_copy / "manifest.json").read_text())["artifacts"][0]["sha256"]
    proc = run_runner(bundle_copy, *FAST, python_args=("-X", "importtime"))
    assert proc.returncode == 3
    result = json.loads(proc.stdout)
    assert schema_errors(result) == []
    assert result["valid"] is False and result["artifact"]["verified"] is False
    actual = hashlib.sha256(bytes(data)).hexdigest()
    assert result["invalid_reason"] == f"sha256 mismatch: manifest {manifest_sha}, file {actual}"
    assert result["artifact"]["sha256"] == actual
    assert result["load_ms"] is None and result["latency_ms"] is None and result["runtime"]["version"] is None
    imported = [line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines() if "import time:" in line]
    assert "numpy" in imported and not any(m.split(".")[0] == "onnxruntime" for m in imported)


def test_tampered_inputs_npz_is_refused(bundle_copy):
    with (bundle_copy / "inputs.npz").open("ab") as f:
        f.write(b"\0")
    proc = run_runner(bundle_copy, *FAST)
    assert proc.returncode == 3 and proc.stdout == ""
    assert "inputs.npz: sha256 mismatch: manifest" in proc.stderr


def test_missing_runtime_exits_4_naming_pip(mlp_bundle):
    # The interpreter cannot import onnxruntime (as on a device without it); the runner itself is unchanged.
    code = ("import runpy, sys; sys.modules['onnxruntime'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code, str(mlp_bundle / "runner" / "common" / "runner.py"),
                           "--bundle", str(mlp_bundle), *FAST], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 4 and proc.stdout == ""
    assert "onnxruntime is not installed on this device" in proc.stderr
    assert "python3 -m pip install onnxruntime" in proc.stderr


def test_nan_outputs_make_the_result_invalid(tmp_path):
    bundle = build_log_bundle(tmp_path / "log")
    proc = run_runner(bundle, *FAST)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert schema_errors(result) == []
    assert result["valid"] is False and result["parity"] is None
    negatives = int((np.load(bundle / "inputs.npz")["input.x"] < 0).sum())
    assert result["invalid_reason"].startswith(f"non-finite outputs: y has {negatives} NaN/Inf values")


def test_bad_flags_and_unknown_artifact(mlp_bundle):
    proc = run_runner(mlp_bundle, "--runs", "0")
    assert proc.returncode == 2 and "--runs: must be at least 1, got '0'" in proc.stderr
    proc = run_runner(mlp_bundle, "--min-seconds", "5", "--max-seconds", "1")
    assert proc.returncode == 2 and "--max-seconds (1) must be at least --min-seconds (5)" in proc.stderr
    proc = run_runner(mlp_bundle, "--artifact", "model.pte")
    assert proc.returncode == 2
    assert "no artifact 'model.pte' in this bundle; it has: model.onnx (onnxruntime)" in proc.stderr


def test_manifest_file_outside_bundle_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["artifacts"][0]["file"] = "../model.onnx"
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    proc = run_runner(bundle_copy, *FAST)
    assert proc.returncode == 3
    assert "artifacts[0].file must be a plain file name inside the bundle, got '../model.onnx'" in proc.stderr


def test_samples_that_contradict_the_manifest_are_refused(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["artifacts"][0]["inputs"][0]["shape"] = [1, 7]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    proc = run_runner(bundle_copy, *FAST)
    assert proc.returncode == 3 and proc.stdout == ""
    assert "'input.input_ids' samples have shape [1, 6], the manifest says [1, 7]" in proc.stderr


# ------------------------------------------------------------------------------------- timing loop


def test_timed_block_stops_at_runs_when_min_seconds_is_met():
    calls = []
    times = runner.timed_block(lambda: calls.append(1), warmup=3, runs=7, min_seconds=0.0, max_seconds=60,
                               max_runs=1000)
    assert len(times) == 7 and len(calls) == 10


def test_timed_block_keeps_running_until_min_seconds():
    import time

    start = time.perf_counter()
    times = runner.timed_block(lambda: time.sleep(0.01), warmup=0, runs=2, min_seconds=0.2, max_seconds=60,
                               max_runs=1000)
    assert time.perf_counter() - start >= 0.2
    assert len(times) >= 10 and sum(times) >= 0.2 * 1000 * 0.9


def test_timed_block_caps_end_a_slow_or_fast_model():
    import time

    start = time.perf_counter()
    times = runner.timed_block(lambda: time.sleep(0.02), warmup=0, runs=10 ** 6, min_seconds=0.0,
                               max_seconds=0.1, max_runs=10 ** 6)
    assert time.perf_counter() - start < 1.0 and 1 <= len(times) <= 10
    times = runner.timed_block(lambda: None, warmup=0, runs=10, min_seconds=30.0, max_seconds=60, max_runs=50)
    assert len(times) == 50


def test_latency_stats_numbers():
    stats = runner.latency_stats([float(v) for v in range(1, 101)])
    assert stats == {"mean": 50.5, "std": 28.8661, "min": 1.0, "p50": 50.5, "p90": 90.1, "p99": 99.01,
                     "max": 100.0}


# ------------------------------------------------------------------------------------- validity checks


def test_unstable_repeats_are_invalid():
    assert runner.stability_reason([10.0, 12.3, 11.0], 0.15) == "unstable: p90 across repeats spread 23% > 15%"
    assert runner.stability_reason([10.0, 11.0, 11.5], 0.15) is None
    assert runner.stability_reason([10.0], 0.15) is None
    assert runner.stability_reason([0.0, 0.0], 0.15) is None


def test_validity_joins_every_reason():
    args = runner.parse_args(["--bundle", "."])
    result = {"repeats_p90_ms": [1.0, 2.0], "thermal_c": {"before": 40.0, "after": 60.5},
              "cpu_freq_mhz": {"before": 2000.0, "after": 1500.0}}
    runner.validity(result, args, None)
    assert result["valid"] is False
    assert result["invalid_reason"] == (
        "unstable: p90 across repeats spread 100% > 15%; "
        "thermal: temperature rose 20.5 C (40.0 -> 60.5) > 15.0 C; "
        "throttled: CPU frequency fell 25% (2000 -> 1500 MHz) > 15%")
    result = {"repeats_p90_ms": [1.0, 1.1], "thermal_c": {"before": None, "after": None},
              "cpu_freq_mhz": {"before": 2000.0, "after": 1800.0}}
    runner.validity(result, args, None)
    assert result["valid"] is True and result["invalid_reason"] is None


def test_parity_numbers():
    out = {"y": [np.array([[1.0, 0.0]], np.float32), np.array([[0.0, 2.0]], np.float32)]}
    refs = {"y": np.array([[[1.0, 0.0]], [[0.0, 2.5]]], np.float32)}
    host = {"y": np.array([[[1.0, 0.0]], [[0.0, 2.25]]], np.float32)}
    assert runner.parity(out, refs, host) == {"reference": "fp32", "max_abs_err": 0.5, "min_cosine": 1.0,
                                              "mean_cosine": 1.0, "host_max_abs_err": 0.25, "samples": 2}
    assert runner.cosine([1.0, 0.0], [0.0, 1.0]) == 0.0 and runner.cosine([0.0], [0.0]) == 1.0
    assert runner.cosine([1.0, 1.0], [-1.0, -1.0]) == pytest.approx(-1.0, abs=1e-12)


def test_nonfinite_reason_counts():
    outs = {"a": [np.array([1.0, np.nan, np.inf])], "b": [np.array([1.0])]}
    assert runner.nonfinite_reason(outs) == "non-finite outputs: a has 2 NaN/Inf values"
    assert runner.nonfinite_reason({"b": [np.array([1.0])]}) is None


# ------------------------------------------------------------------------------------- device constraints


DEVICE_FILES = [RUNNER, BACKEND, RUNTIMES / "common" / "lmeval.py", RUNTIMES / "common" / "generate.py"]


@pytest.mark.parametrize("path", DEVICE_FILES, ids=lambda p: p.parent.name + "/" + p.name)
def test_device_code_parses_as_python_3_9(path):
    ast.parse(path.read_text(), filename=str(path), feature_version=(3, 9))


@pytest.mark.parametrize("path", DEVICE_FILES, ids=lambda p: p.parent.name + "/" + p.name)
def test_device_code_imports_stdlib_numpy_and_its_runtime_only(path):
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            roots.add(node.module.split(".")[0])
    third_party = roots - set(sys.stdlib_module_names) - {"__future__"}
    # lmeval.py, generate.py and runner.py are siblings in runner/common; generate.py also needs `tokenizers`
    allowed = {"numpy", "onnxruntime", "lmeval", "generate", "runner"}
    allowed |= {"tokenizers"} if path.name == "generate.py" else set()
    assert third_party <= allowed, third_party
    assert "torch" not in roots and "edgeopt" not in roots


def test_bench_sh_is_posix_and_runs_the_runner(mlp_bundle):
    script = (RUNTIMES / "common" / "bench.sh").read_text()
    assert script.startswith("#!/bin/sh\n") and 'cd "$(dirname "$0")"' in script
    assert 'exec "$PY" runner/common/runner.py --bundle . "$@"' in script
    assert subprocess.run(["sh", "-n", str(RUNTIMES / "common" / "bench.sh")]).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(["sh", str(mlp_bundle / "bench.sh"), "--help"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0 and "--min-seconds" in proc.stdout


@pytest.mark.parametrize("spin", ["on", "off"])
def test_spin_flag_reaches_onnxruntime_and_the_result(bundle_copy, spin):
    proc = run_runner(bundle_copy, *FAST, "--threads", "2", "--spin", spin)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert schema_errors(result) == []
    assert result["config"]["threads"] == 2  # what the session was created with, not only the flag
    assert result["extra"]["spinning"] is (spin == "on")


def _with_compute(bundle: Path, **compute) -> Path:
    """The bundle with its manifest's profile.compute extended by ``compute`` (the manifest is not hashed)."""
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["profile"]["compute"].update(compute)
    path.write_text(json.dumps(manifest, indent=2))
    return bundle


@pytest.mark.parametrize("spinning", [True, False])
def test_the_profiles_spinning_reaches_onnxruntime_and_the_flag_wins(bundle_copy, spinning):
    _with_compute(bundle_copy, spinning=spinning)
    proc = run_runner(bundle_copy, *FAST)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert schema_errors(result) == []
    assert result["extra"]["spinning"] is spinning
    flag = "off" if spinning else "on"
    result = json.loads(run_runner(bundle_copy, *FAST, "--spin", flag).stdout)
    assert result["extra"]["spinning"] is (flag == "on")


def test_affinity_none_and_cores_are_recorded(bundle_copy):
    _with_compute(bundle_copy, affinity="none")
    result = json.loads(run_runner(bundle_copy, *FAST).stdout)
    assert result["config"]["affinity"] == {"mode": "none", "cores": None, "reason": "profile compute.affinity: none"}
    assert result["config"]["cores"] is None
    result = json.loads(run_runner(bundle_copy, *FAST, "--cores", "0").stdout)
    assert result["config"]["affinity"] == {"mode": "cores", "cores": [0], "reason": "--cores"}
    assert schema_errors(result) == []


def test_affinity_fastest_without_core_types_pins_nothing_and_says_why(bundle_copy):
    """On this host (one core type, or no cpufreq in a VM) 'fastest' leaves the scheduler alone, with the reason."""
    _with_compute(bundle_copy, affinity="fastest")
    proc = run_runner(bundle_copy, *FAST)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["config"]["affinity"]["mode"] == "none" and result["config"]["cores"] is None
    assert result["config"]["affinity"]["reason"].startswith("profile asks for fastest, but ")
    assert schema_errors(result) == []


def test_affinity_fastest_picks_the_big_cores_of_a_big_little_table(monkeypatch):
    """The choice itself, on a Snapdragon 8 Gen 2-like table (3 x 2.0 GHz, 4 x 2.8 GHz, 1 x 3.2 GHz): the
    frequency table stands in for sysfs, which a VM does not have."""
    khz = {0: 2016000, 1: 2016000, 2: 2016000, 3: 2803200, 4: 2803200, 5: 2803200, 6: 2803200, 7: 3187200}
    monkeypatch.setattr(runner.os, "sched_getaffinity", lambda pid: set(khz), raising=False)
    monkeypatch.setattr(runner, "core_max_freqs", lambda cpus: {c: khz[c] for c in cpus})
    args = runner.parse_args(["--bundle", "x"])
    manifest = {"profile": {"compute": {"threads": 4, "affinity": "fastest"}}}
    affinity, cores = runner.pick_affinity(manifest, args)
    assert cores == [3, 4, 5, 7] and affinity["mode"] == "fastest"  # the X3 and three of the A715/A710s
    args = runner.parse_args(["--bundle", "x", "--threads", "1"])
    assert runner.pick_affinity(manifest, args)[1] == [7]
