"""run_local on a real tiny ONNX bundle: bench.sh in a fresh process, the result parsed as untrusted input.

The bundle comes from tests/runtimes/test_runner.py (one torch export per session for both files).
Where a runner failure is needed, ``python`` points at a small interpreter wrapper: the runner code and
onnxruntime stay real, only what the "device" has installed or prints is changed.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import stat
import sys
from pathlib import Path

import pytest

from edgeopt.benchmark import format_table, run_local
from edgeopt.errors import DeviceError, InputFileError, UnsupportedError, UsageError

FAST = {"runs": 5, "min_seconds": 0.05, "repeats": 2, "warmup": 1, "threads": 1, "cooldown_s": 0.0}
_RUNNER_TESTS = Path(__file__).resolve().parents[1] / "runtimes" / "test_runner.py"


def _runner_tests():
    """tests/runtimes/test_runner.py as pytest imported it (so its one export is shared), else by path."""
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) and Path(module.__file__).resolve() == _RUNNER_TESTS:
            return module
    spec = importlib.util.spec_from_file_location("edgeopt_tests_runner_bundles", _RUNNER_TESTS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def mlp_bundle(tmp_path_factory) -> Path:
    return _runner_tests().tiny_bundle(tmp_path_factory)


@pytest.fixture
def bundle_copy(mlp_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(mlp_bundle, tmp_path / "bundle"))


def fake_python(tmp_path: Path, body: str) -> str:
    """An executable that stands in for the device's python3 (``PYTHON`` for bench.sh)."""
    path = tmp_path / "python3"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def test_run_local_end_to_end(mlp_bundle):
    import onnxruntime

    before = listing(mlp_bundle)
    result = run_local(mlp_bundle, **FAST)
    assert listing(mlp_bundle) == before  # the runner ran on a copy
    manifest = json.loads((mlp_bundle / "manifest.json").read_text())
    assert (result.runtime, result.runtime_version) == ("onnxruntime", onnxruntime.__version__)
    assert result.verified and result.artifact_sha256 == manifest["artifacts"][0]["sha256"]
    assert result.parity["samples"] == 4 and result.parity["min_cosine"] > 0.9999
    assert result.parity["host_max_abs_err"] < 1e-5
    assert 0 < result.latency_ms["p50"] <= result.latency_ms["p99"]
    assert result.raw["timed_runs"] >= 10 and result.raw["config"]["threads"] == 1
    # On a shared 2-core machine the repeats may disagree; then the result says so instead of lying.
    assert result.valid or result.invalid_reason.startswith("unstable: p90 across repeats spread")
    table = format_table(result)
    assert f"onnxruntime {onnxruntime.__version__}" in table and "min cosine 1.000000" in table


def test_flipped_byte_is_not_benchmarked(bundle_copy, tmp_path):
    model = bundle_copy / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-10] ^= 0x80
    model.write_bytes(bytes(data))
    never = fake_python(tmp_path, f"touch {tmp_path}/ran; exit 0")
    with pytest.raises(InputFileError, match=r"model.onnx: sha256 mismatch: manifest [0-9a-f]{64}, file [0-9a-f]{64}; "
                                             "not benchmarked"):
        run_local(bundle_copy, python=never, **FAST)
    assert not (tmp_path / "ran").exists()


def test_unknown_runtime_lists_what_the_bundle_has(mlp_bundle):
    with pytest.raises(UsageError, match="has no artifact for runtime 'litert'; it has: onnxruntime"):
        run_local(mlp_bundle, runtime="litert", **FAST)


def test_missing_manifest(tmp_path):
    with pytest.raises(InputFileError, match=r"not an edgeopt bundle \(no manifest.json\)"):
        run_local(tmp_path, **FAST)


def test_runtime_missing_on_the_device_is_unsupported(mlp_bundle, tmp_path):
    code = ("import runpy, sys; sys.modules['onnxruntime'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    python = fake_python(tmp_path, f"exec '{sys.executable}' -c \"{code}\" \"$@\"")
    with pytest.raises(UnsupportedError, match="runner exited 4: .*python3 -m pip install onnxruntime"):
        run_local(mlp_bundle, python=python, **FAST)


def test_runner_exit_3_is_input_file_error(bundle_copy):
    # Every file matches its hash (the host checks those before the copy), but the manifest's input shape
    # contradicts the stored samples: only the runner finds that, and says so with exit 3.
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["artifacts"][0]["inputs"][0]["shape"] = [1, 7]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputFileError, match=r"runner exited 3: .*samples have shape \[1, 6\].*; not benchmarked"):
        run_local(bundle_copy, **FAST)


def test_other_failures_are_device_errors_with_stderr_tail(mlp_bundle, tmp_path):
    crash = fake_python(tmp_path, "echo 'Illegal instruction (core dumped)' >&2; exit 132")
    with pytest.raises(DeviceError, match=r"runner exited 132: Illegal instruction \(core dumped\)"):
        run_local(mlp_bundle, python=crash, **FAST)


def test_garbage_on_stdout_is_a_device_error(mlp_bundle, tmp_path):
    chatty = fake_python(tmp_path, "echo 'hello from the device'; exit 0")
    with pytest.raises(DeviceError, match="bench result is not JSON"):
        run_local(mlp_bundle, python=chatty, **FAST)


def test_result_for_another_artifact_is_refused(mlp_bundle, tmp_path):
    # A real run whose result is rewritten on the way back, as a broken transport might.
    rewrite = f's/"sha256": "[0-9a-f]*"/"sha256": "{"0" * 64}"/'
    liar = fake_python(tmp_path, f"'{sys.executable}' \"$@\" | sed '{rewrite}'")
    with pytest.raises(DeviceError, match="the runner reported sha256 0{64} for model.onnx, but the manifest has"):
        run_local(mlp_bundle, python=liar, **FAST)


def test_timeout_is_a_device_error(mlp_bundle, tmp_path):
    slow = fake_python(tmp_path, "exec sleep 30")
    with pytest.raises(DeviceError, match="local benchmark timed out after 0.5 s"):
        run_local(mlp_bundle, python=slow, timeout_s=0.5, **FAST)
