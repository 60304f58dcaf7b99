"""The CLI end to end in subprocesses: exit codes, one-line errors, package → bench parity."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeopt.verify import cosine

EDGEOPT = [sys.executable, "-m", "edgeopt.cli"]


def run(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*EDGEOPT, *args], capture_output=True, text=True, timeout=timeout)


def assert_clean_error(proc: subprocess.CompletedProcess, code: int, *fragments: str) -> None:
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in proc.stderr, proc.stderr


@pytest.mark.parametrize("command", [[], ["profiles"], ["profiles", "list"], ["profiles", "show"], ["profiles", "validate"],
                                     ["profiles", "detect"], ["inspect"], ["plan"], ["package"], ["bench"]])
def test_help_of_every_command(command):
    proc = run(*command, "--help")
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout


def test_profiles_list_and_show():
    proc = run("profiles", "list", "--json")
    assert proc.returncode == 0
    names = [p["name"] for p in json.loads(proc.stdout)]
    assert names == sorted(["server-gpu", "desktop-cpu", "arm-mobile", "embedded-board"])
    show = run("profiles", "show", "arm-mobile")
    assert "model_ram_mb: 512" in show.stdout


def test_unknown_profile_suggests_the_name():
    assert_clean_error(run("plan", "--profile", "arm-mobil"), 2, "unknown profile 'arm-mobil'", "did you mean 'arm-mobile'?")


def test_bad_profile_file(tmp_path):
    f = tmp_path / "board.yaml"
    f.write_text("schema_version: 1\nname: board\nlimits: {model_ram_mb: 6GB}\n")
    assert_clean_error(run("profiles", "validate", str(f)), 2, "board.yaml", "limits.model_ram_mb", "6144")
    assert_clean_error(run("plan", "--profile", str(f)), 2, "limits.model_ram_mb")


def test_missing_model(tmp_path):
    assert_clean_error(run("plan", "--profile", "arm-mobile", "--model", str(tmp_path / "nope")), 3, "model not found")


def test_unknown_format_suggests():
    assert_clean_error(run("plan", "--profile", "arm-mobile", "--format", "tfite"), 2, "did you mean 'tflite'?")


def test_unwritable_out(tiny_bert_dir, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run("package", "--profile", "desktop-cpu", "--model", str(tiny_bert_dir), "--out", str(blocker / "dist"))
    assert_clean_error(proc, 2, str(blocker))


def test_impossible_profile_exits_5_with_every_reason(tiny_bert_dir, tmp_path):
    from edgeopt.profiles import load_profile

    import yaml

    d = load_profile("embedded-board").to_dict()
    d["name"] = "tiny-board"
    d["limits"]["model_ram_mb"] = 1
    d["limits"]["model_storage_mb"] = 1
    f = tmp_path / "tiny-board.yaml"
    f.write_text(yaml.safe_dump(d))
    proc = run("plan", "--profile", str(f), "--model", str(tiny_bert_dir))
    assert_clean_error(proc, 5, "no candidate fits")
    assert proc.stdout.count("exceeds model_ram_mb") >= 3
    pkg = run("package", "--profile", str(f), "--model", str(tiny_bert_dir), "--out", str(tmp_path / "dist"))
    assert_clean_error(pkg, 5, "no candidate fits")
    assert not (tmp_path / "dist" / "tiny-bert-tiny-board").exists()


def test_inspect_json(tiny_bert_dir):
    proc = run("inspect", "--model", str(tiny_bert_dir), "--profile", "desktop-cpu", "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    stats = report["stats"]
    assert stats["seq_len"] == 128 and stats["flops"] > 0
    assert sum(stats["params_by_kind"].values()) == stats["params_total"]
    assert {r["profile"] for r in report["fit"]} == {"server-gpu", "desktop-cpu", "arm-mobile", "embedded-board"}


@pytest.fixture(scope="module")
def packaged(tiny_bert_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    # Pinned to onnx/int8 so this suite checks the bundle mechanics whatever the planner prefers.
    proc = run("package", "--profile", "arm-mobile", "--model", str(tiny_bert_dir), "--out", str(out),
               "--format", "onnx", "--precision", "int8")
    assert proc.returncode == 0, proc.stderr
    assert "chosen" in proc.stdout
    return out / "tiny-bert-arm-mobile"


def test_package_writes_a_verified_bundle(packaged):
    from edgeopt.bundle import file_hashes

    manifest = json.loads((packaged / "manifest.json").read_text())
    art = manifest["artifacts"][0]
    assert art["runtime"] == "onnxruntime" and art["precision"] == "int8"
    assert manifest["fidelity"]["mean_cosine"] >= manifest["profile"]["targets"]["fidelity"]["min_cosine"]
    assert manifest["files"] == file_hashes(packaged)
    assert manifest["files"][art["file"]] == art["sha256"]
    q = art["quantization"]
    assert q["quantized_count"] + q["float_count"] == q["total"]
    linears = [n for n in q["quantized"] if n.startswith("model.encoder.layer.")]
    assert len(linears) == 12  # 2 layers x (q, k, v, attention out, FFN in, FFN out)
    assert "model.embeddings.word_embeddings" in q["quantized"]
    assert {"bench.sh", "README.md", "report.md", "inputs.npz", "runner/common/runner.py",
            "runner/onnxruntime/backend.py"} <= set(manifest["files"])
    readme = (packaged / "README.md").read_text()
    assert "onnxruntime" in readme and "input_ids" in readme and "[1, -1]" in readme
    assert "is dynamic, 2..128 tokens" in readme and manifest["artifacts"][0]["lengths"]["max"] == 128
    rows = manifest["plan"]["rows"]
    assert sum(r["status"] == "chosen" for r in rows) == 1
    assert all(r["reasons"] for r in rows if r["status"] == "rejected")


def test_package_refuses_to_overwrite_without_force(packaged, tiny_bert_dir):
    before = (packaged / "manifest.json").read_bytes()
    proc = run("package", "--profile", "arm-mobile", "--model", str(tiny_bert_dir), "--out", str(packaged.parent),
               "--format", "onnx", "--precision", "int8")
    assert_clean_error(proc, 2, "--force")
    assert (packaged / "manifest.json").read_bytes() == before


def test_bench_json_parity_matches_the_host(packaged):
    proc = run("bench", str(packaged), "--device", "local", "--runs", "5", "--min-seconds", "0.05", "--repeats", "2",
               "--warmup", "1", "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    result = record["result"]
    assert record["comparison"]["latency_ms"]["estimated"] > 0
    assert result["artifact"]["verified"] is True
    assert result["runtime"]["name"] == "onnxruntime"
    lat = result["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    # The device runner computed the same artifact outputs as the host did when packaging...
    assert result["parity"]["host_max_abs_err"] < 1e-4
    # ...so its cosine against the fp32 reference equals the one recomputed here from inputs.npz.
    data = np.load(packaged / "inputs.npz")
    names = [k.split(".", 1)[1] for k in data.files if k.startswith("reference.")]
    cosines = [cosine(r, e) for n in names for r, e in zip(data[f"reference.{n}"], data[f"expected.{n}"])]
    assert result["parity"]["min_cosine"] == pytest.approx(min(cosines), abs=1e-4)


def test_bench_refuses_a_tampered_artifact(packaged, tmp_path):
    import shutil

    copy = tmp_path / "b"
    shutil.copytree(packaged, copy)
    art = copy / "model.onnx"
    data = bytearray(art.read_bytes())
    data[len(data) // 2] ^= 0xFF
    art.write_bytes(bytes(data))
    assert_clean_error(run("bench", str(copy), "--runs", "1", "--min-seconds", "0"), 3, "sha256")


def test_bench_on_a_folder_that_is_not_a_bundle(tmp_path):
    assert_clean_error(run("bench", str(tmp_path)), 3, "not an edgeopt bundle")
