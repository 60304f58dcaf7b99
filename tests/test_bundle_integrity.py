"""Issue 20: a bundle runs only what was verified, every JSON input is bounded, exit codes mean what the README says.

A real bundle written by `edgeopt package` (a tiny MLP, ONNX fp32), copied to tmp_path before each tamper. Each
tampered file would create a marker file if it ran; every refusal asserts the exit code, the message naming the
file, and that the marker does not exist. The host (`edgeopt bench`) refuses before the copy; the bundle's own
runner (runner/common/runner.py, as on a device) refuses again before it loads anything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

EDGEOPT = [sys.executable, "-m", "edgeopt.cli"]
FAST = ["--runs", "2", "--min-seconds", "0", "--repeats", "1", "--warmup", "0", "--threads", "1", "--no-save"]
RUNNER_FAST = ["--runs", "2", "--min-seconds", "0", "--repeats", "1", "--warmup", "0", "--cooldown-s", "0",
               "--threads", "1"]
DEEP = "[" * 200_000 + "]" * 200_000

MLP = '''
import torch


class TinyMLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.GELU(), torch.nn.Linear(64, 8))

    def forward(self, x):
        return self.net(x)


def make_model():
    torch.manual_seed(0)
    return TinyMLP().eval(), (torch.randn(1, 16),)
'''


def run(*args: str, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGEOPT, *args], check=False, capture_output=True, text=True, timeout=timeout,
                          env=env)


def run_runner(bundle: Path, *flags: str) -> subprocess.CompletedProcess:
    """The bundle's own runner copy, as a device runs it: no edgeopt on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, str(bundle / "runner" / "common" / "runner.py"), "--bundle", str(bundle),
                           *RUNNER_FAST, *flags], check=False, capture_output=True, text=True, env=env, timeout=120,
                          cwd=bundle.parent)


def assert_refused(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-3000:]
    for fragment in fragments:
        assert fragment in proc.stderr, proc.stderr[-3000:]


def manifest_of(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def write_manifest(bundle: Path, manifest: dict) -> None:
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))


@pytest.fixture(scope="module")
def packaged(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("integrity")
    (root / "mlp.py").write_text(MLP)
    proc = run("package", "--profile", "desktop-cpu", "--model", f"{root / 'mlp.py'}:make_model", "--out",
               str(root / "dist"), "--format", "onnx", "--precision", "fp32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root / "dist" / "mlp-desktop-cpu"


@pytest.fixture
def bundle(packaged, tmp_path) -> Path:
    return Path(shutil.copytree(packaged, tmp_path / "bundle", symlinks=True))


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "RAN"


def _python_marker(marker: Path) -> str:
    return f"\nopen({str(marker)!r}, 'w').write('tampered code ran')\n"


# ------------------------------------------------------------------------------------- tampering


def tamper_bench_sh(bundle: Path, marker: Path) -> str:
    text = (bundle / "bench.sh").read_text()
    head, rest = text.split("\n", 1)
    (bundle / "bench.sh").write_text(f"{head}\ntouch '{marker}'\n{rest}")
    return "bench.sh: sha256 mismatch: manifest"


def tamper_backend(bundle: Path, marker: Path) -> str:
    with (bundle / "runner" / "onnxruntime" / "backend.py").open("a") as f:
        f.write(_python_marker(marker))
    return "runner/onnxruntime/backend.py: sha256 mismatch: manifest"


def tamper_lmeval(bundle: Path, marker: Path) -> str:
    with (bundle / "runner" / "common" / "lmeval.py").open("a") as f:
        f.write(_python_marker(marker))
    return "runner/common/lmeval.py: sha256 mismatch: manifest"


def add_unlisted(bundle: Path, marker: Path) -> str:
    # Python would import this on start-up if it sat on the path: it is never listed, so never verified.
    (bundle / "runner" / "common" / "sitecustomize.py").write_text(_python_marker(marker))
    return "runner/common/sitecustomize.py: not listed in the manifest's files"


def symlink_outside(bundle: Path, marker: Path) -> str:
    evil = bundle.parent / "evil_backend.py"
    evil.write_text((bundle / "runner" / "onnxruntime" / "backend.py").read_text() + _python_marker(marker))
    target = bundle / "runner" / "onnxruntime" / "backend.py"
    target.unlink()
    target.symlink_to(evil)
    return "outside the bundle"


def dotdot_name(bundle: Path, marker: Path) -> str:
    manifest = manifest_of(bundle)
    manifest["files"]["../evil.py"] = "0" * 64
    write_manifest(bundle, manifest)
    return "files entry '../evil.py' climbs out of the bundle"


def absolute_name(bundle: Path, marker: Path) -> str:
    manifest = manifest_of(bundle)
    manifest["files"]["/etc/hostname"] = "0" * 64
    write_manifest(bundle, manifest)
    return "files entry '/etc/hostname' is an absolute path"


def listed_but_missing(bundle: Path, marker: Path) -> str:
    (bundle / "report.md").unlink()
    return "report.md: listed in the manifest but missing"


def no_files_list(bundle: Path, marker: Path) -> str:
    manifest = manifest_of(bundle)
    del manifest["files"]
    write_manifest(bundle, manifest)
    return "lists no 'files'"


TAMPERS = [tamper_bench_sh, tamper_backend, tamper_lmeval, add_unlisted, symlink_outside, dotdot_name, absolute_name,
           listed_but_missing, no_files_list]


def test_the_untampered_bundle_benchmarks(bundle):
    proc = run("bench", str(bundle), *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "valid" in proc.stdout
    assert not list(bundle.rglob("__pycache__"))  # the runner writes no byte code into a bundle


@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda t: t.__name__)
def test_host_refuses_a_tampered_bundle_before_anything_runs(bundle, marker, tamper):
    message = tamper(bundle, marker)
    proc = run("bench", str(bundle), *FAST)
    assert_refused(proc, 3, message)
    assert "runner exited" not in proc.stderr  # refused here, before the copy: nothing of the bundle ran
    assert not marker.exists()


@pytest.mark.parametrize("tamper", [t for t in TAMPERS if t is not tamper_bench_sh], ids=lambda t: t.__name__)
def test_device_runner_refuses_a_tampered_bundle_before_loading_it(bundle, marker, tamper):
    """The on-device check (runner/common/runner.py runs standalone there): bench.sh itself is what starts the
    runner, so a changed bench.sh is the host's to refuse; the runner still names it (next test)."""
    message = tamper(bundle, marker)
    proc = run_runner(bundle)
    assert_refused(proc, 3, "runner: error: ", message)
    assert proc.stdout == ""  # no result for a bundle that fails its check (only an artifact mismatch has one)
    assert not marker.exists()


def test_device_runner_names_a_changed_bench_sh(bundle, marker):
    tamper_bench_sh(bundle, marker)
    proc = run_runner(bundle)
    assert_refused(proc, 3, "bench.sh: sha256 mismatch: manifest", "; not run")


def test_device_runner_ignores_byte_code_it_never_loads(bundle, marker):
    """A stale or planted __pycache__ is not listed, and not a risk: the runner compiles the verified sources."""
    cache = bundle / "runner" / "onnxruntime" / "__pycache__"
    cache.mkdir()
    (cache / "backend.cpython-311.pyc").write_bytes(b"not byte code")
    proc = run_runner(bundle)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout)["artifact"]["verified"] is True


def test_a_bundle_changed_on_the_device_after_the_host_check_is_refused_there(bundle, marker):
    """What a device sees when the copy changed on the way: the host check passed, the runner's did not.
    (Simulated by a bench.sh that alters the backend before starting the runner: the host verified the
    original bytes, so this bench.sh is re-signed in the manifest to pass the host check.)"""
    import hashlib

    text = (bundle / "bench.sh").read_text()
    head, rest = text.split("\n", 1)
    line = f"printf '\\nopen(%s, \"w\")\\n' \"'{marker}'\" >> runner/onnxruntime/backend.py\n"
    (bundle / "bench.sh").write_text(f"{head}\n{line}{rest}")
    manifest = manifest_of(bundle)
    manifest["files"]["bench.sh"] = hashlib.sha256((bundle / "bench.sh").read_bytes()).hexdigest()
    write_manifest(bundle, manifest)
    proc = run("bench", str(bundle), *FAST)
    assert_refused(proc, 3, "runner exited 3: runner/onnxruntime/backend.py: sha256 mismatch: manifest")
    assert not marker.exists()


@pytest.mark.parametrize("name, why", [("../model.onnx", "points outside the bundle"),
                                       ("/etc/hostname", "points outside the bundle"),
                                       ("runner/model.onnx", "is not a plain file name")])
def test_an_artifact_path_outside_the_bundle_says_why(bundle, name, why):
    manifest = manifest_of(bundle)
    manifest["artifacts"][0]["file"] = name
    write_manifest(bundle, manifest)
    proc = run("bench", str(bundle), *FAST)
    assert_refused(proc, 3, f"the artifact path {name!r} {why}")
    assert "missing" not in proc.stderr


# ------------------------------------------------------------------------------------- deep JSON


def test_a_deeply_nested_manifest_is_exit_3_on_host_and_device(bundle):
    (bundle / "manifest.json").write_text(DEEP)
    proc = run("bench", str(bundle), *FAST)
    assert_refused(proc, 3, "manifest.json: bundle manifest nests 200000 levels deep, more than the 64 allowed",
                   "rebuild the bundle")
    proc = run("report", str(bundle))
    assert_refused(proc, 3, "nests 200000 levels deep")
    proc = run_runner(bundle)
    assert_refused(proc, 3, "manifest.json: nests 200000 levels deep, more than the 64 allowed")


def test_an_oversized_manifest_is_refused_before_it_is_read(bundle):
    with (bundle / "manifest.json").open("w") as f:
        f.write('{"pad": "')
        f.write("x" * (17 * 1024 * 1024))
        f.write('"}')
    proc = run("bench", str(bundle), *FAST)
    assert_refused(proc, 3, "bundle manifest is larger than 16777216 bytes")


def test_a_deeply_nested_stored_result_is_exit_3(bundle):
    (bundle / "results").mkdir()
    (bundle / "results" / "20260101T000000Z-local.json").write_text(DEEP)
    proc = run("report", str(bundle))
    assert_refused(proc, 3, "20260101T000000Z-local.json: not a stored edgeopt bench result (JSON nests 200000 "
                            "levels deep, more than the 64 allowed")
    proc = run("profiles", "calibrate", str(bundle / "results" / "20260101T000000Z-local.json"), "--out",
               str(bundle.parent / "calibrated.yaml"))
    assert_refused(proc, 3, "not a stored edgeopt bench result (JSON nests 200000 levels deep")
    assert not (bundle.parent / "calibrated.yaml").exists()


def test_a_deeply_nested_bench_result_from_a_device_is_a_device_error(bundle, tmp_path):
    python = tmp_path / "python3"
    python.write_text(f"#!/bin/sh\nexec '{sys.executable}' -c 'print(\"[\" * 200000)'\n")
    python.chmod(0o755)
    proc = run("bench", str(bundle), *FAST, "--python", str(python))
    assert_refused(proc, 7, "bench result nests deeper than 32 levels")


@pytest.fixture
def model_dir(tiny_bert_dir, tmp_path) -> Path:
    return Path(shutil.copytree(tiny_bert_dir, tmp_path / "model"))


def test_a_deeply_nested_config_json_is_exit_3(model_dir):
    (model_dir / "config.json").write_text(DEEP)
    proc = run("inspect", "--model", str(model_dir))
    assert_refused(proc, 3, "config.json: model JSON file nests 200000 levels deep")


def test_a_deeply_nested_safetensors_header_is_exit_3(model_dir):
    header = DEEP.encode()
    path = next(model_dir.glob("*.safetensors"))
    path.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    proc = run("inspect", "--model", str(model_dir))
    assert_refused(proc, 3, f"{path.name}: corrupt safetensors file (header nests 200000 levels deep")


def test_a_deeply_nested_modules_json_is_exit_3(model_dir):
    (model_dir / "modules.json").write_text(DEEP)
    proc = run("inspect", "--model", str(model_dir))
    assert_refused(proc, 3, "modules.json: sentence-transformers modules.json nests 200000 levels deep")


def test_a_deeply_nested_profile_is_exit_2(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("schema_version: 1\nname: deep\ndevice: " + DEEP + "\n")
    proc = run("profiles", "validate", str(path))
    assert_refused(proc, 2, "deep.yaml", "too deep")


def test_the_json_reader_measures_depth_outside_strings():
    from edgeopt import jsonio

    assert jsonio.nesting_depth('{"a": "[[[[{{{{\\"[[", "b": [[1], {"c": []}]}') == 4  # { [ { [
    assert jsonio.loads('{"s": "' + "[" * 1000 + '"}', where="x") == {"s": "[" * 1000}
    with pytest.raises(jsonio.JsonInputError, match=r"^x: JSON nests 65 levels deep, more than the 64 allowed"):
        jsonio.loads("[" * 65 + "]" * 65, where="x")
    with pytest.raises(jsonio.JsonInputError, match=r"^x: JSON is not valid JSON \(Expecting value at line 1 "):
        jsonio.loads("[1,", where="x")
    with pytest.raises(jsonio.JsonInputError, match=r"^x: JSON is not UTF-8 text \(byte 0\)"):
        jsonio.loads(b"\xff", where="x")
    assert jsonio.JsonInputError("").exit_code == 3


# ------------------------------------------------------------------------------------- exit codes


def test_a_native_tool_missing_on_the_device_is_exit_7(bundle):
    proc = run("bench", str(bundle), *FAST, "--native", "/no/such/onnxruntime_perf_test")
    assert_refused(proc, 7, "runner exited 7: bench.sh: /no/such/onnxruntime_perf_test is not an executable file "
                            "on this device")


_BUG = ("import edgeopt.profiles as p, sys; p.load_builtin_profiles = lambda: 1 / 0; "
        "from edgeopt.cli import main; sys.exit(main(['profiles', 'list']))")


@pytest.mark.parametrize("value, traceback", [("0", False), ("", False), ("false", False), ("no", False),
                                              ("1", True), ("true", True), ("yes", True)])
def test_edgeopt_debug_zero_turns_tracebacks_off(value, traceback):
    env = {**os.environ, "EDGEOPT_DEBUG": value}
    proc = subprocess.run([sys.executable, "-c", _BUG], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert ("Traceback" in proc.stderr) is traceback, proc.stderr
    if not traceback:
        assert "internal error (a bug in edgeopt): ZeroDivisionError" in proc.stderr


@pytest.mark.parametrize("case", ["file", "file-parent", "unwritable"])
def test_package_checks_the_output_folder_before_any_work(tmp_path, case):
    (tmp_path / "afile").write_text("x")
    out, message = {
        "file": (tmp_path / "afile", "afile' is a file"),  # click's own check of --out
        "file-parent": (tmp_path / "afile" / "dist", "afile is a file, not a folder"),
        "unwritable": (Path("/proc/edgeopt-dist"), "output folder is not writable"),
    }[case]
    # A model that does not exist: a later check would say so (exit 3); the output folder is checked first.
    start = time.monotonic()
    proc = run("package", "--profile", "desktop-cpu", "--model", str(tmp_path / "no-such-model"), "--out", str(out))
    assert_refused(proc, 2, message)
    assert time.monotonic() - start < 30
    assert (tmp_path / "afile").read_text() == "x"
