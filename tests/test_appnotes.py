"""App-integration notes: every bundle README's Python snippet runs against the real artifact, the README names
the runtime version and the exact I/O, and examples/android + examples/ios pin the versions appnotes gives."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgeopt.appnotes import MAVEN, VERSION_KEY, app_notes, runtime_version
from edgeopt.formats import Runtime

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = {"android": REPO / "examples" / "android", "ios": REPO / "examples" / "ios"}
FORMATS = {"onnx": Runtime.ONNXRUNTIME, "tflite": Runtime.LITERT, "pte": Runtime.EXECUTORCH}
MODULES = {Runtime.ONNXRUNTIME: ("onnxruntime", "onnxruntime"), Runtime.LITERT: ("ai_edge_litert", "ai-edge-litert"),
           Runtime.EXECUTORCH: ("executorch", "executorch")}
# the file in each examples folder that drives each runtime
EXAMPLE_FILES = {Runtime.ONNXRUNTIME: ("OnnxRuntimeEmbedder.kt", "OnnxRuntimeEmbedder.swift"),
                 Runtime.EXECUTORCH: ("ExecuTorchEmbedder.kt", "ExecuTorchEmbedder.swift"),
                 Runtime.LITERT: ("LiteRtEmbedder.kt", "LiteRtEmbedder.swift")}


def _need(runtime: Runtime) -> None:
    module, pip = MODULES[runtime]
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{pip} is not installed (pip install {pip})")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_bert_dir, make_small_profile):
    """The tiny BERT packaged once per format (fp32, a few seconds each): {format: (path, manifest)}."""
    from edgeopt import api

    out = tmp_path_factory.mktemp("appnotes")
    built = {}
    for fmt, runtime in FORMATS.items():
        if importlib.util.find_spec(MODULES[runtime][0]) is not None:  # else the tests using it skip
            result = api.package(str(tiny_bert_dir), profile=make_small_profile(), out=out / fmt, fmt=fmt, precision="fp32",
                                 recover_seconds=0)
            built[fmt] = (Path(result.bundle_path), result.manifest)
    return built


def _bundle(bundles, fmt):
    _need(FORMATS[fmt])
    return bundles[fmt]


def _python_snippet(readme: str) -> str:
    match = re.search(r"### Python \(desktop check\).*?```python\n(.*?)```", readme, re.DOTALL)
    assert match, "README has no Python snippet"
    return match.group(1)


def _run_snippet(bundle: Path) -> str:
    code = _python_snippet((bundle / "README.md").read_text(encoding="utf-8"))
    proc = subprocess.run([sys.executable, "-c", code], check=False, cwd=bundle, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_readme_python_snippet_reproduces_the_host_outputs(bundles, fmt):
    bundle, _manifest = _bundle(bundles, fmt)
    out = _run_snippet(bundle)
    match = re.search(r"max abs diff vs host: (\S+)", out)
    assert match, out
    assert float(match.group(1)) < 1e-4


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_readme_names_version_io_and_app_code(bundles, fmt):
    bundle, manifest = _bundle(bundles, fmt)
    runtime = FORMATS[fmt]
    readme = (bundle / "README.md").read_text(encoding="utf-8")
    art = manifest["artifacts"][0]
    version = manifest["toolchain"][VERSION_KEY[runtime]]
    assert f"**{runtime.value} {version}**" in readme
    assert f'implementation("{MAVEN[runtime]}:{version}")' in readme
    for spec in art["inputs"] + art["outputs"]:
        assert f"| `{spec['name']}` | {spec['dtype']} | {spec['shape']} |" in readme
    android = readme.split("### Android (Kotlin)")[1].split("### iOS")[0]
    ios = readme.split("### iOS (Swift)")[1].split("### Python")[0]
    array = {"int64": "LongArray", "int32": "IntArray"}
    scalar = {"int64": "Int64", "int32": "Int32"}
    dynamic = (art.get("lengths") or {}).get("mode") == "dynamic"  # the sequence axis is n, the real length
    for spec in art["inputs"]:
        assert spec["name"] in android and spec["name"] in ios
        count = "n" if dynamic else spec["shape"][0] * spec["shape"][1]
        assert f"{array[spec['dtype']]}({count})" in android
        assert f"[{scalar[spec['dtype']]}](repeating: 0, count: {count})" in ios
    if dynamic:
        assert "val n = tokenCount  // real tokens, 2..32" in android and "let n = tokenCount" in ios
        assert "longArrayOf(1, n)" in android
    else:  # the fixed shape, batch 1 x seq_len 32
        assert "longArrayOf(1, 32)" in android or runtime is Runtime.LITERT
    if runtime is Runtime.LITERT:
        assert "Interpreter(" in android and "CompiledModel.create(" in android and "runSignature(" in android
    assert "sh bench.sh" in readme and "--device adb" in readme and "ssh://user@host" in readme


def test_lm_readme_snippet_runs_the_kv_cache_loop(tiny_llama_dir, tmp_path, make_small_profile):
    """A decoder LM bundle (ONNX, explicit past key/values): the README's loop regenerates the host's tokens."""
    from edgeopt import api

    _need(Runtime.ONNXRUNTIME)
    profile = make_small_profile(shapes={"batch": 1, "seq_len": 16, "context_len": 48},
                                 fidelity={"min_cosine": 0.99, "max_perplexity_ratio": 1.05, "max_kl": 0.05})
    result = api.package(str(tiny_llama_dir), profile=profile, out=tmp_path,
                         fmt="onnx", precision="fp32", recover_seconds=0)
    bundle = Path(result.bundle_path)
    lm = result.manifest["artifacts"][0]["lm"]
    readme = (bundle / "README.md").read_text(encoding="utf-8")
    for name in lm["past_inputs"] + lm["present_outputs"]:
        assert name in readme
    assert "fun step(tokens: LongArray)" in readme and "func step(_ ids: [Int64])" in readme
    match = re.search(r"greedy tokens equal to the host's: (\d+)/(\d+)", _run_snippet(bundle))
    assert match and int(match.group(2)) > 0 and match.group(1) == match.group(2)


def test_unknown_dtype_is_a_comment_not_a_crash():
    art = {"runtime": "onnxruntime", "file": "model.onnx", "inputs": [{"name": "x", "dtype": "complex64", "shape": [2]}],
           "outputs": [{"name": "y", "dtype": "float32", "shape": [2]}]}
    notes = app_notes(art, {})
    assert notes.version is None and notes.maven == ["com.microsoft.onnxruntime:onnxruntime-android:VERSION"]
    for text in (notes.kotlin, notes.swift, notes.python):
        assert "complex64" in text
    assert "dtype complex64 has no mapping" in notes.kotlin
    assert runtime_version(Runtime.EXECUTORCH, {"executorch": "1.6.0.dev20260101+cpu"}) == "1.6.0"


def _example_text(folder: str) -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(EXAMPLES[folder].iterdir()) if p.is_file())


def test_examples_pin_the_versions_and_names_appnotes_gives(bundles):
    """examples/android and examples/ios use the installed runtimes' versions and the bundles' exact I/O names."""
    from edgeopt.profiles import load_profile

    android, ios = _example_text("android"), _example_text("ios")
    seq_len = load_profile("arm-mobile").to_dict()["shapes"]["seq_len"]
    expected_versions = {}
    for fmt, runtime in FORMATS.items():
        if fmt not in bundles:
            continue
        _path, manifest = bundles[fmt]
        art = manifest["artifacts"][0]
        notes = app_notes(art, manifest["toolchain"])
        expected_versions[runtime] = notes.version
        assert notes.version == runtime_version(runtime, manifest["toolchain"]) and notes.version
        # every Maven coordinate of this runtime in the examples carries this version
        found = set(re.findall(re.escape(MAVEN[runtime]) + r":([0-9][\w.\-]*)", android + ios))
        assert found == {notes.version}, (runtime, found)
        assert f'implementation("{notes.maven[0]}")' in (EXAMPLES["android"] / "build.gradle.kts").read_text()
        kt = (EXAMPLES["android"] / EXAMPLE_FILES[runtime][0]).read_text(encoding="utf-8")
        swift = (EXAMPLES["ios"] / EXAMPLE_FILES[runtime][1]).read_text(encoding="utf-8")
        for spec in art["inputs"]:
            assert f'"{spec["name"]}"' in kt or f"// {spec['name']}" in kt, (runtime, spec["name"])
            assert f'"{spec["name"]}"' in swift or f"// {spec['name']}" in swift, (runtime, spec["name"])
            assert {"int64": "LongArray", "int32": "IntArray"}[spec["dtype"]] in kt
            assert {"int64": "[Int64]", "int32": "[Int32]"}[spec["dtype"]] in swift
        assert "sentence_embedding" in kt and "sentence_embedding" in swift
        assert f"SEQ_LEN = {seq_len}" in kt or f"const val SEQ_LEN = {seq_len}" in android
    # iOS package lines: the same strings appnotes prints
    if Runtime.ONNXRUNTIME in expected_versions:
        v = expected_versions[Runtime.ONNXRUNTIME]
        assert set(re.findall(r"pod 'onnxruntime-objc', '([^']+)'", ios)) == {v}
        assert set(re.findall(r'onnxruntime-swift-package-manager", exact: "([^"]+)"', ios)) == {v}
    if Runtime.EXECUTORCH in expected_versions:
        assert set(re.findall(r"swiftpm-([0-9][\w.]*[0-9])", ios + android)) == {expected_versions[Runtime.EXECUTORCH]}
        assert '.package(url: "https://github.com/pytorch/executorch.git", branch: "swiftpm-' \
               f'{expected_versions[Runtime.EXECUTORCH]}")' in ios
    if Runtime.LITERT in expected_versions:
        assert set(re.findall(r"ai-edge-litert ([0-9][\w.]*[0-9])", ios + android)) <= {expected_versions[Runtime.LITERT]}
    # the READMEs name the same versions as the code next to them
    for folder in ("android", "ios"):
        readme = (EXAMPLES[folder] / "README.md").read_text(encoding="utf-8")
        for runtime, version in expected_versions.items():
            assert version in readme, (folder, runtime, version)


def test_onnx_snippets_ask_for_the_profiles_execution_providers():
    """A server-gpu bundle's snippet creates its session on the GPU providers the profile names, the CPU last; a CPU
    profile's on the CPU provider alone (encoder and LM snippets alike)."""
    from edgeopt.appnotes import ort_providers

    art = {"runtime": "onnxruntime", "file": "model.onnx", "inputs": [
        {"name": "input_ids", "dtype": "int64", "shape": [1, 8]}], "outputs": [
        {"name": "embedding", "dtype": "float32", "shape": [1, 8]}]}
    gpu = '["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]'
    assert f"providers={gpu}" in app_notes(art, {}, targets=["tensorrt", "cuda"]).python
    assert 'providers=["CPUExecutionProvider"])' in app_notes(art, {}).python
    assert 'providers=["CPUExecutionProvider"])' in app_notes(art, {}, targets=["cpu"]).python
    assert ort_providers(["cuda"]) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    lm = dict(art, lm={"past_inputs": ["past.0.key"], "present_outputs": ["present.0.key"], "num_kv_heads": 2,
                       "head_dim": 8, "prompt_len": 8, "context_len": 32, "cache": "explicit"})
    assert 'providers=["CUDAExecutionProvider", "CPUExecutionProvider"]' in app_notes(lm, {}, targets=["cuda"]).python


_ART = {"runtime": "onnxruntime", "file": "model.onnx", "precision": "int8",
        "inputs": [{"name": "input_ids", "dtype": "int64", "shape": [1, 8]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": [1, 4]}]}


@pytest.mark.parametrize("spinning", [False, True])
def test_onnxruntime_snippets_carry_the_profiles_spinning(spinning):
    value = "1" if spinning else "0"
    notes = app_notes(_ART, {"onnxruntime": "1.31.1"}, threads=4, spinning=spinning)
    assert f'addConfigEntry("session.intra_op.allow_spinning", "{value}")' in notes.kotlin
    assert f'addConfigEntry(withKey: "session.intra_op.allow_spinning", value: "{value}")' in notes.swift
    assert f'options.add_session_config_entry("session.intra_op.allow_spinning", "{value}")' in notes.python
    unset = app_notes(_ART, {"onnxruntime": "1.31.1"}, threads=4)  # no profile value: the runtime's default
    assert "allow_spinning" not in unset.kotlin + unset.swift + unset.python
    for runtime in ("executorch", "litert"):  # the XNNPACK runtimes have no switch: nothing is claimed
        other = app_notes({**_ART, "runtime": runtime, "file": "model.x"}, {}, threads=4, spinning=spinning)
        assert "spinning" not in other.kotlin + other.swift + other.python


def test_affinity_fastest_pins_in_python_and_says_so_on_the_phone(tmp_path):
    notes = app_notes(_ART, {"onnxruntime": "1.31.1"}, threads=2, affinity="fastest")
    assert "compute.affinity: fastest" in notes.kotlin and "compute.affinity: fastest" in notes.swift
    assert "os.sched_setaffinity(0, sorted(cpus, key=lambda c: -khz[c])[:2])" in notes.python
    assert "sched_setaffinity" not in app_notes(_ART, {}, threads=2).python
    # the pinning lines run as written (here without cpufreq they leave the scheduler alone, without an error)
    prelude = notes.python.split("samples = np.load")[0].replace("import numpy as np\n", "").replace(
        "import onnxruntime as ort\n", "")
    proc = subprocess.run([sys.executable, "-c", prelude + "\nprint(sorted(os.sched_getaffinity(0)))"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
