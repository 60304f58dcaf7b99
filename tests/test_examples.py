"""Every example runs (on a tiny model, so the suite stays fast)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PI5 = REPO / "examples" / "raspberry-pi-5"


def _edgeopt() -> str:
    """The edgeopt command of the Python running the tests (the venv's script, else `python -m edgeopt.cli`)."""
    script = Path(sys.executable).parent / "edgeopt"
    return str(script) if script.is_file() else f"{sys.executable} -m edgeopt.cli"


def _env(**extra: str) -> dict:
    # One OpenMP thread: on a shared 2-core machine torch's default threads made the tiny LM's fp32 reference
    # pass ~6x slower (busy-waiting against other processes); results do not depend on it.
    return {**os.environ, "EDGEOPT": _edgeopt(), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", **extra}


def _run(args: list[str], env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def test_python_api_example(tiny_bert_dir, tmp_path):
    proc = _run([sys.executable, str(REPO / "examples" / "python_api.py"), str(tiny_bert_dir), "--out",
                 str(tmp_path), "--profile", "desktop-cpu"], timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "profile desktop-cpu" in out
    assert "mean cosine" in out and "host latency p50" in out
    assert (tmp_path / "tiny-bert-desktop-cpu" / "manifest.json").is_file()
    cos = float(out.split("parity min cosine ")[1].split()[0])
    assert cos > 0.99


# ------------------------------------------------------------------------------- Raspberry Pi 5


def test_raspberry_pi_5_script_detects_edits_validates_and_plans(tiny_bert_dir, tmp_path):
    from edgeopt.profiles import load_profile

    out = tmp_path / "pi5"
    proc = _run(["sh", str(PI5 / "make_profile.sh"), str(out), str(tiny_bert_dir)],
                env=_env(PI5_MODEL_RAM_MB="768"))
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    detected = yaml.safe_load((out / "pi5.detected.yaml").read_text())
    p = load_profile(out / "pi5.yaml")
    assert f"{out / 'pi5.yaml'}: ok (profile 'rpi5')" in proc.stdout

    # the edits
    assert p.name == "rpi5" and p.description.startswith("Raspberry Pi 5 (Broadcom BCM2712")
    assert p.device.cpu == "Broadcom BCM2712 (4x Cortex-A76 @ 2.4 GHz)"
    assert p.limits.model_ram_mb == 768  # from the environment
    assert detected["limits"]["model_ram_mb"] != 768  # (detect's quarter of RAM is something else)
    assert p.limits.model_storage_mb == 512
    assert p.compute.threads == min(4, detected["device"]["cores"])
    assert p.compute.fp32_gflops == pytest.approx(round(detected["compute"]["fp32_gflops"] * 0.75, 1))
    assert p.compute.int8_gops == pytest.approx(round(detected["compute"]["int8_gops"] * 0.75, 1))
    assert [r.value for r in p.runtimes] == ["litert", "onnxruntime", "executorch"]
    assert p.targets.latency_ms == 100 and p.shapes.context_len == 256
    assert p.targets.fidelity.max_perplexity_ratio == 1.05 and p.targets.fidelity.max_kl == 0.05
    # the measurements, kept
    assert (p.device.arch, p.device.cores, p.device.ram_gb) == (
        detected["device"]["arch"], detected["device"]["cores"], detected["device"]["ram_gb"])
    assert p.compute.memory_bandwidth_gbps == detected["compute"]["memory_bandwidth_gbps"] > 0
    assert [x.value for x in p.limits.precisions] == detected["limits"]["precisions"]
    assert "model_ram_mb 768 (headroom for the OS)" in (out / "pi5.yaml").read_text()

    # the plan on it, for the tiny BERT: a table and a chosen first candidate among the profile's runtimes
    assert "plan for tiny-bert on rpi5" in proc.stdout
    first = re.search(r"next: `(.*)` builds (\w+)/(\w+) first", proc.stdout)
    assert first, proc.stdout[-2000:]
    # the hint is the command that builds it: the profile as a file, the same model
    assert first[1] == f"edgeopt package --profile {out / 'pi5.yaml'} --model {tiny_bert_dir}"
    _command, runtime, precision = first.groups()
    assert runtime in ("litert", "onnxruntime", "executorch") and precision in detected["limits"]["precisions"]


def test_shipped_rpi5_profile_is_what_the_script_makes_on_a_pi5(tmp_path):
    """rpi5.yaml validates, has the documented numbers, and matches edit_profile.py's output for the profile
    `profiles detect` computes on a Pi 5 (4 cores at 2.4 GHz with asimddp + asimdhp: detect's own formula)."""
    from edgeopt.detect import _flops_per_cycle
    from edgeopt.profiles import load_profile

    shipped = load_profile(PI5 / "rpi5.yaml")
    assert shipped.name == "rpi5" and (shipped.device.arch, shipped.device.cores) == ("arm64", 4)
    assert (shipped.limits.model_ram_mb, shipped.limits.model_storage_mb, shipped.compute.threads) == (1024, 512, 4)
    assert [x.value for x in shipped.limits.precisions] == ["fp32", "fp16", "int8", "int4"]
    assert shipped.compute.memory_bandwidth_gbps == 10  # 60% of the 17 GB/s datasheet peak (not measured)
    assert shipped.targets.latency_ms == 100

    flags = {"fp", "asimd", "asimdhp", "asimddp"}  # /proc/cpuinfo Features of a Cortex-A76 (no i8mm)
    fp32 = round(4 * 2.4 * _flops_per_cycle("arm64", flags), 1)
    assert fp32 == 76.8
    detected = {"schema_version": 1, "name": "rpi5", "description": "a Pi 5",
                "device": {"arch": "arm64", "cores": 4, "ram_gb": 7.9, "cpu": "Raspberry Pi 5 Model B Rev 1.0"},
                "limits": {"model_ram_mb": 2022, "model_storage_mb": 7000,
                           "precisions": ["fp32", "fp16", "int8", "int4"]},
                "compute": {"threads": 4, "fp32_gflops": fp32, "int8_gops": round(fp32 * 4, 1),
                            "memory_bandwidth_gbps": 10, "fp16_gflops": round(fp32 * 2, 1)},
                "runtimes": ["executorch", "litert", "onnxruntime"], "shapes": {"batch": 1, "seq_len": 128},
                "targets": {"fidelity": {"min_cosine": 0.99}}}
    (tmp_path / "detected.yaml").write_text(yaml.safe_dump(detected))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PI5_")}  # the documented defaults
    proc = _run([sys.executable, str(PI5 / "edit_profile.py"), str(tmp_path / "detected.yaml"),
                 str(tmp_path / "pi5.yaml")], env=env)
    assert proc.returncode == 0, proc.stderr
    assert "not a Raspberry Pi 5" not in proc.stderr
    made = load_profile(tmp_path / "pi5.yaml").to_dict()
    expected = shipped.to_dict()
    for d in (made, expected):
        d.pop("description")
    assert made == expected
    assert (expected["compute"]["fp32_gflops"], expected["compute"]["fp16_gflops"],
            expected["compute"]["int8_gops"]) == (57.6, 115.2, 230.4)  # detect's numbers x 0.75 thermal derate


def test_raspberry_pi_5_edit_rejects_a_bad_derate(tmp_path):
    proc = _run([sys.executable, str(PI5 / "edit_profile.py"), str(PI5 / "rpi5.yaml"), str(tmp_path / "x.yaml")],
                env={**os.environ, "PI5_THERMAL_DERATE": "75%"})
    assert proc.returncode == 1 and "PI5_THERMAL_DERATE must be a float number, got '75%'" in proc.stderr
    assert not (tmp_path / "x.yaml").exists()


# ------------------------------------------------------------------------------------ tiny LM

STEPS = 20  # ~15 s of training: a poor model (held-out perplexity ~490 at 20 steps), but a trained one


def test_tiny_lm_example_trains_packages_benches_and_reports(tmp_path):
    out = tmp_path / "lm"
    env = _env(STEPS=str(STEPS), FORMAT="onnx", EDGEOPT_CACHE=str(tmp_path / "cache"),
               BENCH_ARGS="--runs 5 --min-seconds 0.2 --repeats 2 --warmup 1")
    proc = _run(["sh", str(REPO / "examples" / "tiny_lm.sh"), str(out)], env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]

    info = json.loads((out / "tiny-lm" / "edgeopt_tinylm.json").read_text())
    assert info["train"]["steps_done"] == STEPS and info["params"] == 4_196_608
    assert info["perplexity"]["heldout"] < 1024  # an untrained model is near uniform over the 2048-token vocabulary

    bundle = out / "dist" / "tiny-lm-arm-mobile"
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["model"]["family"] == "decoder" and m["model"]["outputs"] == ["logits"]
    art = m["artifacts"][0]
    assert (art["runtime"], art["precision"]) == ("onnxruntime", "fp32")
    fid = m["fidelity"]
    # fp32 ONNX vs fp32 eager on held-out text: the same model, so perplexity and greedy decoding agree
    assert fid["perplexity_ratio"] == pytest.approx(1.0, abs=1e-3)
    assert fid["reference_perplexity"] == pytest.approx(fid["perplexity"], rel=1e-3)
    assert fid["kl"] < 1e-4 and fid["greedy_agreement"] >= 0.95

    results = sorted((bundle / "results").glob("*-local.json"))
    assert len(results) == 1
    result = json.loads(results[0].read_text())["result"]
    assert result["generation"]["decode_tokens_per_s"] > 0 and result["generation"]["prefill_tokens_per_s"] > 0
    assert result["lm_quality"]["greedy_agreement"] >= 0.95

    html = (out / "report.html").read_text()
    assert 'id="pareto-plot"' in html and 'id="latency-plot"' in html
    assert len(re.findall(r'src="data:image/png;base64,[A-Za-z0-9+/=]{1000,}"', html)) == 2
    assert f"bundle: {bundle}" in proc.stdout


def test_demo_lm_rejects_zero_steps():
    proc = _run([*_edgeopt().split(), "demo-lm", "--steps", "0"])
    assert proc.returncode == 2 and "'--steps': 0 is not in the range x>=1" in proc.stderr
