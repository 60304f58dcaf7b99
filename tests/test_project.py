"""Consistency checks of the project itself: light import, shipped data, registries, vocabularies."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from edgeopt.errors import UsageError
from edgeopt.formats import Format, Precision, Runtime
from edgeopt.registry import Registry

REPO = Path(__file__).resolve().parent.parent
HEAVY = ["torch", "transformers", "onnx", "onnxruntime", "executorch", "litert_torch", "ai_edge_litert", "numpy"]


def test_import_edgeopt_imports_no_converter():
    code = f"import sys, edgeopt, edgeopt.cli, edgeopt.packagers; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_profiles_list_does_not_import_torch():
    code = ("import sys; from edgeopt.cli import main; main(['profiles', 'list', '--json']); "
            "print('TORCH' if 'torch' in sys.modules else 'LIGHT', file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert proc.stderr.strip().endswith("LIGHT")


def test_every_packager_has_a_runner_folder():
    from edgeopt.packagers import available_runtimes
    from edgeopt.resources import builtin_dir

    runtimes = available_runtimes()
    assert Runtime.ONNXRUNTIME in runtimes
    for runtime in runtimes:
        assert (builtin_dir("runtimes") / runtime.value / "backend.py").is_file(), runtime


def test_registry_rejects_duplicates_and_suggests():
    reg: Registry[int] = Registry("runtime")
    reg.register("litert", 1)
    reg.register("onnxruntime", 2)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("litert", 3)
    with pytest.raises(UsageError, match=r"unknown runtime 'litrt'; available: litert, onnxruntime; did you mean 'litert'\?"):
        reg.get("litrt")


def test_format_and_runtime_names_parse_both_ways():
    assert Runtime.parse("onnx") is Runtime.ONNXRUNTIME
    assert Runtime.parse("PTE") is Runtime.EXECUTORCH
    assert Runtime.parse("litert") is Runtime.LITERT
    assert {r.format.runtime for r in Runtime} == set(Runtime)
    assert Precision.parse("int4").weight_bits == 4
    with pytest.raises(UsageError, match="did you mean 'int8'"):
        Precision.parse("int9")
    assert Format.TFLITE.suffix == ".tflite"


def test_wheel_ships_profiles_and_runtimes(tmp_path):
    """`pip install edgeopt` must work without the source tree: the data lives inside the wheel."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path),
                    str(REPO)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("edgeopt-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for profile in ("server-gpu", "desktop-cpu", "arm-mobile", "embedded-board"):
        assert f"edgeopt/data_profiles/{profile}.yaml" in names
    for f in ("common/runner.py", "common/result_schema.json", "common/bench.sh", "onnxruntime/backend.py"):
        assert f"edgeopt/data_runtimes/{f}" in names
    assert "edgeopt/corpus.txt" in names
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = ("from edgeopt.resources import builtin_dir; from edgeopt.profiles import load_profile; "
            "print(builtin_dir('runtimes')); print(load_profile('arm-mobile').limits.model_ram_mb)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path,
                         env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}).stdout.split()
    assert out[0].startswith(str(target)) and out[1] == "512"


def test_result_schema_is_valid_json_schema():
    from jsonschema import Draft202012Validator

    from edgeopt.resources import builtin_dir

    schema = json.loads((builtin_dir("runtimes") / "common" / "result_schema.json").read_text())
    Draft202012Validator.check_schema(schema)
