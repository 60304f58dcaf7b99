"""Benchmark a bundle on this machine as a device would: on a copy, through ``sh bench.sh``, in a fresh process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from edgeopt.benchmark.job import (
    BenchOptions,
    bench_args,
    result_of,
    stage_bundle,
    verified_artifact,
)
from edgeopt.benchmark.result import BenchResult
from edgeopt.errors import DeviceError


def run_local(
    bundle_dir: Path,
    *,
    runs: int = 100,
    min_seconds: float = 5.0,
    warmup: int = 10,
    repeats: int = 3,
    threads: int | None = None,
    runtime: str | None = None,
    python: str | None = None,
    timeout_s: float = 600,
    cooldown_s: float = 1.0,
    cores: tuple[int, ...] | None = None,
    native: str | None = None,
) -> BenchResult:
    """Run the bundle's ``bench.sh`` on a copy of the bundle in a fresh process and parse its result.

    Args:
        bundle_dir: a bundle folder written by ``edgeopt.bundle`` (``manifest.json``, artifact, ``runner/``).
        runs, min_seconds, warmup, repeats, threads, cooldown_s, cores: passed to the runner (its ``--help``).
        runtime: which artifact to run, by runtime name; default the manifest's first artifact.
        python: interpreter for the runner (``PYTHON`` for bench.sh); default this interpreter.
        timeout_s: wall-clock limit for the whole run.
        native: path of a native benchmark binary (``bench.sh --native``) instead of the Python runner.

    Raises:
        InputFileError: the manifest is unreadable, or a file of the bundle is changed, missing, unlisted or
            outside it (checked here, before the copy; nothing benchmarked), or the runner exits 3.
        UsageError: ``runtime`` names no artifact of the bundle, or the runner exits 2.
        UnsupportedError: the runner exits 4 (runtime not installed, or it cannot run the artifact).
        DeviceError: any other failure of the run, a timeout, or output that is not a valid result.
    """
    options = BenchOptions(runs=runs, min_seconds=min_seconds, warmup=warmup, repeats=repeats, threads=threads,
                           cores=tuple(cores) if cores is not None else None, cooldown_s=cooldown_s,
                           runtime=runtime, native=native, python=python or sys.executable)
    return run_local_options(Path(bundle_dir), options, timeout_s=timeout_s)


def run_local_options(bundle_dir: Path, options: BenchOptions, *, timeout_s: float = 600) -> BenchResult:
    """``run_local`` with a ``BenchOptions`` (``options.python`` None: this interpreter)."""
    artifact = verified_artifact(Path(bundle_dir), options.runtime)
    with tempfile.TemporaryDirectory(prefix="edgeopt-bench-") as tmp:
        # The runner gets a copy: nothing it writes (or a crash) touches the user's bundle.
        work = stage_bundle(Path(bundle_dir), Path(tmp) / "bundle")
        proc = _run_bench(work, bench_args(artifact, options), options.python or sys.executable, timeout_s)
    return result_of("", proc.returncode, proc.stdout, proc.stderr, artifact, options, remote=False)


def _run_bench(work: Path, args: list[str], python: str, timeout_s: float) -> subprocess.CompletedProcess:
    # No PYTHONPATH: the runner must work with what a device has, not with this source tree on the path.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHON"] = python
    # No core files: a runtime that crashes on a hostile artifact must not leave hundreds of MB behind.
    cmd = ["sh", "-c", 'ulimit -c 0 2>/dev/null; exec sh "$0" "$@"', str(work / "bench.sh"), *args]
    try:
        # Its own session, so a timeout can kill everything bench.sh started, not only the shell.
        proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)
    except OSError as e:
        raise DeviceError(f"cannot start `sh bench.sh`: {e}") from None
    with proc:
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            proc.communicate()
            raise DeviceError(f"local benchmark timed out after {timeout_s:g} s; raise timeout_s or lower runs/"
                              "min_seconds") from None
        except BaseException:  # Ctrl-C: leave no runner behind
            _kill_group(proc)
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (OSError, AttributeError):  # already gone, or no process groups (Windows)
        proc.kill()
