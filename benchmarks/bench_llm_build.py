"""Real-size decoder LMs through ``edgeopt package``: build time, peak host RAM and artifact size per format x precision.

    python benchmarks/bench_llm_build.py [--shapes smollm2-135m,qwen2.5-0.5b] [--formats pte,onnx,tflite]
                                         [--precisions fp32,int8,int4] [--work DIR] [--timeout 900]
                                         [--out results.json]

The models are ``edgeopt.lm.shapes``: the exact config shapes of SmolLM2-135M, Qwen2.5-0.5B, TinyLlama-1.1B and
Qwen2.5-1.5B with seeded random weights (``build_shape``, cached under ~/.cache/edgeopt/shapes/). They have no
tokenizer, so the LM quality gate scores seeded random token ids (``edgeopt.lm.quality._token_stream``).

Each shape x format x precision runs ``edgeopt package --model DIR --profile PROFILE --format F --precision P
--out WORK --force`` in a fresh subprocess (its manifest read from the bundle), one at a time. The subprocess tree's memory (the CLI and every
child) is sampled every 0.2 s: PSS (proportional set size: a page shared by two processes counts half in each,
so the tree's sum is what it takes from the machine) and RSS (summed, which counts the torch libraries a child
maps again). The peak PSS is reported in MB and as a ratio of the model's fp32 weight bytes (target <= 4.0), with
the progress line printed last before it (the stage that reached it); the peak RSS beside it. Artifact bytes and
the verification numbers come from the bundle's manifest.

The profile is NOT a built-in: ``--format``/``--precision`` only restrict the planner, which still rejects a
candidate over the profile's storage / RAM limits (arm-mobile's 32 MB storage budget rejects every one of these
models). So the script writes ``bench-llm-build.yaml`` into the work folder: arm-mobile's compute numbers and LM
fidelity targets (max_perplexity_ratio 1.05, max_kl 0.05; int4 1.5 and 1.0: random weights) with storage and RAM limits of 1 TB, so the build
itself is what gets measured. It does not depend on the built-in arm-mobile's numbers.

Verification result per row: ``passed`` (bundle written, LM gate met), ``refused: <reason>`` (exit 4/5/6 before
or instead of building: the reason is the CLI's first error line), ``failed: <reason>`` (anything else,
including a timeout).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
MB = 1024 * 1024
EDGEOPT = [sys.executable, "-m", "edgeopt.cli"]

PROFILE_YAML = """\
# Written by benchmarks/bench_llm_build.py: arm-mobile-like compute, limits large enough that the planner's
# fit check never rejects a real-size LM, so the build itself is measured.
schema_version: 1
name: bench-llm-build
description: bench_llm_build.py - arm64 phone compute, effectively unlimited storage and RAM
device:
  arch: arm64
  cores: 8
  ram_gb: 1024
limits:
  model_ram_mb: 1048576
  model_storage_mb: 1048576
  precisions: [fp32, fp16, int8, int4]
compute:
  threads: 4
  fp32_gflops: 120
  fp16_gflops: 240
  int8_gops: 480
  int4_gops: null
  memory_bandwidth_gbps: 40
runtimes: [executorch, litert, onnxruntime]
shapes:
  batch: 1
  seq_len: 128
  context_len: 512
targets:
  fidelity:
    min_cosine: 0.99
    max_perplexity_ratio: 1.05
    max_kl: 0.05
    # Random weights give flat logits: int4 rounding moves them by KL ~0.36 per token on SmolLM2's shape (measured),
    # which says nothing about a trained model (the trained tiny LM: int4 perplexity x1.0012-1.012). The gate still
    # runs and is reported; at int4 it does not send the build through keep-float retries.
    by_precision:
      int4: {max_perplexity_ratio: 1.5, max_kl: 1.0}
"""


def _tree_rss(proc) -> int:
    import psutil

    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def _tree_pss(proc) -> int:
    """The tree's proportional set size (shared pages split between the processes that map them), from
    /proc/PID/smaps_rollup; a child that maps the same torch libraries is not counted twice, as RSS sums do."""
    import psutil

    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    for p in procs:
        try:
            for line in Path(f"/proc/{p.pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
                    break
        except (OSError, ValueError):
            pass
    return total


def run_one(model_dir: Path, fmt: str, precision: str, profile: Path, out: Path, timeout: float) -> dict:
    """One ``edgeopt package`` in a fresh process: wall seconds, peak tree RSS and PSS (with the progress line
    printed last before each peak: the stage that reached it), exit code, stdout/stderr."""
    import psutil

    cmd = EDGEOPT + ["package", "--model", str(model_dir), "--profile", str(profile), "--format", fmt,
                     "--precision", precision, "--out", str(out), "--force"]  # not --json: it silences progress
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    proc = psutil.Process(popen.pid)
    peak = {"rss": 0, "pss": 0, "rss_stage": "", "pss_stage": ""}
    err_lines: list[str] = []
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            stage = next((ln.strip()[:160] for ln in reversed(err_lines) if ln.strip()), "start")
            for key, value in (("rss", _tree_rss(proc)), ("pss", _tree_pss(proc))):
                if value > peak[key]:
                    peak[key], peak[f"{key}_stage"] = value, stage
            done.wait(0.2)

    def read_stderr() -> None:
        for line in popen.stderr:
            err_lines.append(line)

    sampler = threading.Thread(target=sample, daemon=True)
    reader = threading.Thread(target=read_stderr, daemon=True)
    sampler.start()
    reader.start()
    timed_out = False
    try:
        stdout = popen.stdout.read() if timeout is None else _read_with_timeout(popen, timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        for child in proc.children(recursive=True):
            child.kill()
        popen.kill()
        stdout = popen.stdout.read()
    popen.wait()
    reader.join(10)
    done.set()
    sampler.join()
    return {"seconds": time.perf_counter() - t0, "peak_rss": peak["rss"], "peak_pss": peak["pss"],
            "peak_stage": peak["pss_stage"], "rc": popen.returncode, "timed_out": timed_out, "stdout": stdout,
            "stderr": "".join(err_lines), "manifest": out / f"{model_dir.name}-{profile.stem}" / "manifest.json"}


def _read_with_timeout(popen, timeout: float) -> str:
    """stdout until the process ends; TimeoutExpired after ``timeout`` seconds."""
    chunks: list[str] = []
    reader = threading.Thread(target=lambda: chunks.append(popen.stdout.read()), daemon=True)
    reader.start()
    reader.join(timeout)
    if reader.is_alive():
        raise subprocess.TimeoutExpired(popen.args, timeout)
    return "".join(chunks)


def _first_error(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.strip().splitlines() if ln.strip()]
    for ln in lines:
        if ln.lower().startswith(("error", "edgeopt:")) or "Error" in ln[:40]:
            return ln[:300]
    return (lines[-1] if lines else "?")[:300]


def _fp32_bytes(model_dir: Path) -> int:
    return sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))


def row_for(shape: str, fmt: str, precision: str, res: dict, fp32_bytes: int) -> dict:
    row = {"shape": shape, "format": fmt, "precision": precision, "build_s": round(res["seconds"], 1),
           "peak_rss_mb": round(res["peak_rss"] / MB), "peak_rss_ratio": round(res["peak_rss"] / fp32_bytes, 2),
           "peak_pss_mb": round(res["peak_pss"] / MB), "peak_ratio": round(res["peak_pss"] / fp32_bytes, 2),
           "peak_stage": res["peak_stage"],
           "fp32_mb": round(fp32_bytes / MB), "rc": res["rc"], "artifact_mb": None, "size_ratio": None,
           "verification": None, "fidelity": None}
    if res["timed_out"]:
        progress = [ln for ln in res["stderr"].splitlines() if ln.strip()]
        row["verification"] = (f"failed: timed out after {res['seconds']:.0f} s"
                               + (f" (last: {progress[-1].strip()[:200]})" if progress else ""))
        row["stderr_tail"] = res["stderr"][-3000:]
        return row
    if res["rc"] == 0:
        try:
            manifest = json.loads(res["manifest"].read_text(encoding="utf-8"))
        except (OSError, ValueError):
            row["verification"] = f"failed: no manifest at {res['manifest']}"
            return row
        art = manifest["artifacts"][0]
        row["artifact_mb"] = round(art["bytes"] / MB, 1)
        row["size_ratio"] = round(art["bytes"] / fp32_bytes, 3)
        row["build_seconds_in_packager"] = art.get("build_seconds")
        fid = art["fidelity"]
        row["fidelity"] = {k: fid.get(k) for k in ("perplexity", "reference_perplexity", "kl", "mean_cosine",
                                                   "top1_agreement", "greedy_agreement")}
        attempts = sum(len(r.get("attempts") or []) for r in manifest["plan"].get("rows", manifest["plan"].get("candidates", [])))
        row["attempts"] = attempts
        ratio = (fid.get("perplexity") or 0) / (fid.get("reference_perplexity") or 1)
        row["verification"] = f"passed (ppl x{ratio:.4f}, KL {fid.get('kl') or 0:.4f})"
        return row
    kind = "refused" if res["rc"] in (4, 5, 6) else "failed"
    row["verification"] = f"{kind} (exit {res['rc']}): {_first_error(res['stderr'])}"
    row["stderr_tail"] = res["stderr"][-3000:]
    return row


def print_table(rows: list[dict]) -> None:
    head = ("shape", "format", "prec", "build s", "peak PSS MB", "peak/fp32", "peak RSS MB", "artifact MB",
            "size/fp32", "verification")
    print(" | ".join(head))
    print("|".join("---" for _ in head))
    for r in rows:
        print(" | ".join(str(x) for x in (
            r["shape"], r["format"], r["precision"], r["build_s"], r["peak_pss_mb"], r["peak_ratio"], r["peak_rss_mb"],
            r["artifact_mb"] if r["artifact_mb"] is not None else "-",
            r["size_ratio"] if r["size_ratio"] is not None else "-", r["verification"])), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="smollm2-135m,qwen2.5-0.5b")
    ap.add_argument("--formats", default="pte,onnx,tflite")
    ap.add_argument("--precisions", default="fp32,int8,int4")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bench_llm_build"))
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per build before it is killed")
    ap.add_argument("--out", type=Path, help="write the rows as JSON here")
    args = ap.parse_args(argv)

    from edgeopt.lm.shapes import build_shape

    args.work.mkdir(parents=True, exist_ok=True)
    profile = args.work / "bench-llm-build.yaml"
    profile.write_text(PROFILE_YAML, encoding="utf-8")
    rows = []
    for shape in [s for s in args.shapes.split(",") if s]:
        model_dir = build_shape(shape)
        fp32 = _fp32_bytes(model_dir)
        for fmt in [f for f in args.formats.split(",") if f]:
            for precision in [p for p in args.precisions.split(",") if p]:
                print(f"# {shape} {fmt} {precision} ...", file=sys.stderr, flush=True)
                res = run_one(model_dir, fmt, precision, profile, args.work / "dist", args.timeout)
                row = row_for(shape, fmt, precision, res, fp32)
                rows.append(row)
                print(f"# {json.dumps({k: v for k, v in row.items() if k != 'stderr_tail'})}", file=sys.stderr,
                      flush=True)
                if args.out:
                    args.out.write_text(json.dumps(rows, indent=1), encoding="utf-8")
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
