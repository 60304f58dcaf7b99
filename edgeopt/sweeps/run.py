"""The sweep: every cell built (in parallel, a crashed one retried once), every bundle benchmarked on every
device (devices in parallel, one job per device at a time), one report over all of them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgeopt.sweeps.spec import Cell, SweepSpec

STATE_DIR = ".sweep"  # logs and the results table, inside the sweep's out folder
RETRIED_STATUSES = ("killed",)  # a crash (a signal, a dead Ray worker), not a property of the model
_ENV_PREFIXES = ("EDGEOPT_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")


@dataclass
class CellResult:
    """How one cell ended: ``status`` ok (built), skipped (its bundle already matched), failed (with the exit
    code ``edgeopt package`` gave), killed (crashed twice) or interrupted."""

    key: str
    model: str
    profile: str
    fmt: str | None
    precision: str | None
    status: str = "pending"
    exit_code: int | None = None
    attempts: int = 0
    retried: bool = False
    bundle: str | None = None
    error: str | None = None
    seconds: float = 0.0
    host: str | None = None
    node: str | None = None  # the Ray node that built it (None on the local pool)
    artifact: dict | None = None  # runtime, precision, file, bytes, sha256 of the first artifact
    fidelity: dict | None = None  # mean_cosine, min_cosine, sqnr_db (or perplexity_ratio, kl for an LM)
    first_error: str | None = None  # what the crashed first attempt said
    bench: dict = field(default_factory=dict)  # device -> BenchJob as a dict


@dataclass
class SweepResult:
    """``cells`` in spec order; ``exit_code``: 0 when every cell and benchmark succeeded, else the first failed
    cell's exit code (then the first failed benchmark's)."""

    spec: str
    out: str
    runner: str
    cells: list[CellResult]
    wall_s: float
    report: str | None = None
    report_text: str | None = None

    @property
    def exit_code(self) -> int:
        for c in self.cells:
            if c.status not in ("ok", "skipped"):
                return c.exit_code if c.exit_code else 1
        for c in self.cells:
            for job in c.bench.values():
                if job["status"] not in ("ok", "stored"):
                    return job["exit_code"] or 7
        return 0

    def to_dict(self) -> dict:
        return {"schema_version": 1, "spec": self.spec, "out": self.out, "runner": self.runner,
                "wall_s": self.wall_s, "report": self.report, "exit_code": self.exit_code,
                "cells": [asdict(c) for c in self.cells]}


def run_sweep(spec: SweepSpec, *, ray_address: str | None = None, jobs: int | None = None, bench: bool = True,
              progress=None) -> SweepResult:
    from edgeopt.bundle import check_out_dir

    say = progress or (lambda _m: None)
    check_out_dir(spec.out)
    start = time.monotonic()
    state = spec.out / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    pool = _make_pool(ray_address, jobs, len(spec.cells))
    say(f"sweep: {len(spec.cells)} cells on the {pool.describe()}")
    results = [CellResult(c.key, c.model, c.profile_name, c.fmt, c.precision) for c in spec.cells]
    result = SweepResult(str(spec.source), str(spec.out), pool.name, results, 0.0)
    try:
        try:
            _build_all(spec, pool, results, state, say)
        finally:
            pool.close()
        if bench and spec.bench is not None:
            _bench_all(spec, results, say)
        ok = [c.bundle for c in results if c.status in ("ok", "skipped") and c.bundle]
        if ok and spec.report is not None:
            from edgeopt import api

            result.report_text = api.report(ok, html=spec.report)
            result.report = str(spec.report)
    finally:
        result.wall_s = round(time.monotonic() - start, 2)
        _save(state / "sweep.json", result)
    return result


def _make_pool(ray_address: str | None, jobs: int | None, cells: int):
    from edgeopt.pipeline import spare_cpus
    from edgeopt.sweeps.pool import LocalPool, RayPool

    if ray_address:
        return RayPool(ray_address)
    from edgeopt.packagers.lm import host_available_memory

    workers = jobs or min(spare_cpus(), cells)
    return LocalPool(workers, int(host_available_memory() * 0.9))


def _payload(spec: SweepSpec, cell: Cell) -> dict:
    return {"model": cell.model, "profile": cell.profile, "profile_name": cell.profile_name, "fmt": cell.fmt,
            "precision": cell.precision, "out": cell.out, "activations": spec.activations,
            "recover_seconds": spec.recover_seconds, "allow_pickle": spec.allow_pickle}


def _env(threads: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES)}
    # Cells share the machine: each gets its share of the cores, not torch's one thread per core.
    env.update({"EDGEOPT_HOST_THREADS": str(threads), "OMP_NUM_THREADS": str(threads),
                "TOKENIZERS_PARALLELISM": "false"})
    return env


def _build_all(spec: SweepSpec, pool, results: list[CellResult], state: Path, say) -> None:
    from edgeopt.sweeps.pool import estimate_peak_bytes

    env = _env(pool.threads_per_cell())
    pending: dict = {}

    def submit(i: int) -> None:
        cell, r = spec.cells[i], results[i]
        r.attempts += 1
        log = str(state / "logs" / f"{cell.key}.{r.attempts}.log")
        pending[pool.submit(_payload(spec, cell), log, env, estimate_peak_bytes(cell.model, cell.fmt, cell.precision))] = i

    for i in range(len(spec.cells)):
        submit(i)
    try:
        while pending:
            for handle, res in pool.wait(list(pending)):
                i = pending.pop(handle)
                r = results[i]
                if res.get("status") in RETRIED_STATUSES and r.attempts < 2:
                    r.retried, r.first_error = True, res.get("error")
                    say(f"sweep: {r.key}: {res.get('error')}; retrying once")
                    submit(i)
                    continue
                _record(r, res)
                say(f"sweep: {r.key}: {r.status}{f' (exit {r.exit_code}: {r.error})' if r.error else ''}")
    except KeyboardInterrupt:
        say("sweep: interrupted; stopping the running cells (finished bundles stay)")
        pool.stop_all(list(pending))
        for i in pending.values():
            if results[i].status == "pending":
                results[i].status, results[i].exit_code = "interrupted", 130
        raise


def _record(r: CellResult, res: dict) -> None:
    r.status = res.get("status", "failed")
    r.exit_code = res.get("exit_code")
    r.bundle, r.error = res.get("bundle"), res.get("error")
    r.seconds, r.host, r.node = res.get("seconds", 0.0), res.get("host"), res.get("node")
    if r.bundle and r.status in ("ok", "skipped"):
        from edgeopt.bundle import Bundle

        m = Bundle.open(r.bundle).manifest
        art = m["artifacts"][0]
        r.artifact = {k: art.get(k) for k in ("file", "runtime", "precision", "bytes", "sha256")}
        fid = m.get("fidelity") or {}
        r.fidelity = {k: fid[k] for k in ("mean_cosine", "min_cosine", "sqnr_db", "perplexity_ratio", "kl")
                      if fid.get(k) is not None}


# --- benchmarks --------------------------------------------------------------------------------------


def _bench_all(spec: SweepSpec, results: list[CellResult], say) -> None:
    """One thread per device; each benchmarks the bundles one after another, so a device is never shared."""
    built = [r for r in results if r.status in ("ok", "skipped") and r.bundle]
    procs: set = set()
    lock = threading.Lock()
    stopping = threading.Event()

    def device_worker(device: str) -> None:
        for r in built:
            if stopping.is_set():
                return
            r.bench[device] = _bench_one(spec, r, device, procs, lock)
            job = r.bench[device]
            say(f"bench: {r.key} on {device}: {job['status']}"
                + (f", p50 {job['p50_ms']:.3f} ms" if job.get("p50_ms") is not None else f" ({job.get('error')})"))

    threads = [threading.Thread(target=device_worker, args=(d,), daemon=True) for d in spec.bench.devices]
    for t in threads:
        t.start()
    try:
        for t in threads:
            while t.is_alive():
                t.join(0.5)
    except KeyboardInterrupt:
        stopping.set()
        from edgeopt.sweeps.cell import stop

        with lock:
            running = list(procs)
        for p in running:
            stop(p)
        raise


def _stored(bundle: str, device: str) -> dict | None:
    from edgeopt.benchmark import parse_device

    slug = parse_device(device).slug
    found = sorted(Path(bundle, "results").glob(f"*-{slug}.json")) + sorted(Path(bundle, "results").glob(f"*-{slug}-*.json"))
    for f in reversed(found):
        try:
            rec = json.loads(f.read_text(encoding="utf-8"))
            return {"status": "stored", "exit_code": 0, "p50_ms": rec["result"]["latency_ms"]["p50"],
                    "valid": rec["result"].get("valid"), "stored": str(f), "error": None, "start": None, "end": None}
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def _bench_one(spec: SweepSpec, r: CellResult, device: str, procs: set, lock) -> dict:
    b = spec.bench
    if r.status == "skipped":  # the bundle did not change: a result stored by an earlier sweep still holds
        stored = _stored(r.bundle, device)
        if stored:
            return stored
    args = [sys.executable, "-m", "edgeopt.cli", "bench", r.bundle, "--device", device, "--json", "--runs", str(b.runs),
            "--min-seconds", str(b.min_seconds), "--warmup", str(b.warmup), "--repeats", str(b.repeats)]
    for flag, value in (("--timeout", b.timeout_s), ("--python", b.python), ("--identity", b.identity)):
        if value is not None:
            args += [flag, str(value)]
    start = time.time()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    with lock:
        procs.add(proc)
    out, err = proc.communicate()
    with lock:
        procs.discard(proc)
    job = {"status": "ok" if proc.returncode == 0 else "failed", "exit_code": proc.returncode, "p50_ms": None,
           "valid": None, "stored": None, "error": None, "start": start, "end": time.time()}
    if proc.returncode == 0:
        try:
            rec = json.loads(out)
            job.update(p50_ms=rec["result"]["latency_ms"]["p50"], valid=rec["result"].get("valid"),
                       stored=rec.get("saved_to"))
        except (ValueError, KeyError, TypeError):
            job.update(status="failed", exit_code=7, error="bench printed no result record")
    else:
        lines = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
        job["error"] = next((ln for ln in reversed(lines) if ln.startswith(("error:", "internal error"))),
                            lines[-1] if lines else f"exit {proc.returncode}")
    return job


def _save(path: Path, result: SweepResult) -> None:
    from edgeopt.api import _write_text_atomic

    _write_text_atomic(path, json.dumps(result.to_dict(), indent=2) + "\n", what="the sweep results",
                       flag="out")
