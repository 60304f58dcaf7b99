"""Threads x spinning sweep of every runtime's bundle runner on one host (issue 18 part 2).

    python benchmarks/bench_threads.py BUNDLE [BUNDLE ...] [--runs 30] [--rounds 2]

Runs each bundle's artifact with runtimes/common/runner.py (this checkout's) at threads 1..cores and, where the
backend has the setting (onnxruntime), spinning on and off, in interleaved rounds, and prints p50 / mean latency and
peak RSS per cell (the median over rounds). Not part of the test run.

Measured Dec 2026 on the 2-core x86-64 build host, shared with two other jobs (so 2-thread cells are contended),
MiniLM int8 arm-mobile bundles, held-out samples at their real lengths, --runs 20 --rounds 2 (p50 ms / peak RSS MB):
executorch (light runner) 1 thread 3.76 / 83.0, 2 threads 5.64 / 83.0; onnxruntime 1 thread spin on 8.68 / 114.1,
off 7.65 / 111.3, 2 threads spin on 19.33 (mean 33.3) / 112.1, off 8.42 / 109.0; litert 1 thread 7.91 / 104.1,
2 threads 6.40 / 104.1. Spinning threads on a CPU that other work shares cost onnxruntime 2.3x at 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNNER = ROOT / "runtimes" / "common" / "runner.py"


def run_once(bundle, threads, spin, runs):
    cmd = [sys.executable, str(RUNNER), "--bundle", str(bundle), "--threads", str(threads), "--warmup", "5",
           "--runs", str(runs), "--min-seconds", "1", "--repeats", "1", "--max-spread", "10"]
    if spin is not None:
        cmd += ["--spin", spin]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit("runner failed on %s: %s" % (bundle, proc.stderr[-800:]))
    return json.loads(proc.stdout)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("bundles", nargs="+", type=Path)
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--max-threads", type=int, default=len(os.sched_getaffinity(0)))
    args = p.parse_args(argv)
    cells = []
    for bundle in args.bundles:
        runtime = json.loads((bundle / "manifest.json").read_text())["artifacts"][0]["runtime"]
        spins = ("on", "off") if runtime == "onnxruntime" else (None,)
        cells += [(bundle, runtime, t, s) for t in range(1, args.max_threads + 1) for s in spins]
    results = {c: [] for c in cells}
    for _ in range(args.rounds):  # interleaved: every cell once per round
        for cell in cells:
            results[cell].append(run_once(cell[0], cell[2], cell[3], args.runs))
    print("| runtime | runner | threads | spinning | p50 ms | mean ms | peak RSS MB |")
    print("|---|---|---|---|---|---|---|")
    for (bundle, runtime, threads, spin), rs in results.items():
        extra = rs[0].get("extra") or {}
        print("| %s | %s | %d | %s | %.2f | %.2f | %.1f |" % (
            runtime, extra.get("runner", "-"), rs[0]["config"]["threads"],
            {True: "on", False: "off"}.get(extra.get("spinning"), "n/a"),
            statistics.median(r["latency_ms"]["p50"] for r in rs), statistics.median(r["latency_ms"]["mean"] for r in rs),
            statistics.median(r["peak_rss_mb"] for r in rs)))


if __name__ == "__main__":
    main()
