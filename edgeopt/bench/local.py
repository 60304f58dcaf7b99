"""Benchmark a bundle on this machine as a device would: on a copy, through ``sh bench.sh``, in a fresh process."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from edgeopt.bench.result import BenchResult, parse_result
from edgeopt.errors import DeviceError, InputFileError, UnsupportedError, UsageError

_FORMAT_RUNTIMES = {"onnx": "onnxruntime", "pte": "executorch", "tflite": "litert"}
_STDERR_TAIL_CHARS = 2000


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
) -> BenchResult:
    """Run the bundle's ``bench.sh`` on a copy of the bundle in a fresh process and parse its result.

    Args:
        bundle_dir: a bundle folder written by ``edgeopt.bundle`` (``manifest.json``, artifact, ``runner/``).
        runs, min_seconds, warmup, repeats, threads, cooldown_s: passed to the runner (see its ``--help``).
        runtime: which artifact to run, by runtime name; default the manifest's first artifact.
        python: interpreter for the runner (``PYTHON`` for bench.sh); default this interpreter.
        timeout_s: wall-clock limit for the whole run.

    Raises:
        InputFileError: the manifest is unreadable or the artifact fails its sha256 (not benchmarked),
            or the runner exits 3.
        UsageError: ``runtime`` names no artifact of the bundle.
        UnsupportedError: the runner exits 4 (runtime not installed, or it cannot run the artifact).
        DeviceError: any other failure of the run, a timeout, or output that is not a valid result.
    """
    bundle_dir = Path(bundle_dir)
    artifact = _verified_artifact(bundle_dir, runtime)
    args = ["--artifact", artifact["file"], "--runs", str(runs), "--min-seconds", repr(float(min_seconds)),
            "--warmup", str(warmup), "--repeats", str(repeats), "--cooldown-s", repr(float(cooldown_s))]
    if threads is not None:
        args += ["--threads", str(threads)]
    with tempfile.TemporaryDirectory(prefix="edgeopt-bench-") as tmp:
        # The runner gets a copy: nothing it writes (or a crash) touches the user's bundle.
        work = Path(tmp) / "bundle"
        shutil.copytree(bundle_dir, work, ignore=shutil.ignore_patterns("__pycache__"))
        proc = _run_bench(work, args, python or sys.executable, timeout_s)
    result = _result_of(proc)
    if result.artifact_sha256 != artifact["sha256"]:
        raise DeviceError(f"the runner reported sha256 {result.artifact_sha256} for {artifact['file']}, "
                          f"but the manifest has {artifact['sha256']}; the result is for another file")
    return result


def _verified_artifact(bundle_dir: Path, runtime: str | None) -> dict[str, Any]:
    """The manifest entry to benchmark, after checking the file's sha256 against the manifest here."""
    manifest_path = bundle_dir / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        artifacts = manifest["artifacts"]
        entries = [(a["file"], a.get("runtime") or _FORMAT_RUNTIMES.get(a.get("format"), ""), a["sha256"])
                   for a in artifacts]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise InputFileError(f"{manifest_path}: not a readable bundle manifest ({type(e).__name__}: {e}); "
                             "rebuild the bundle with `edgeopt package`") from None
    if not entries:
        raise InputFileError(f"{manifest_path}: lists no artifacts; rebuild the bundle with `edgeopt package`")
    chosen = [e for e in entries if runtime is None or e[1] == runtime]
    if not chosen:
        have = ", ".join(sorted({e[1] for e in entries}))
        raise UsageError(f"bundle {bundle_dir} has no artifact for runtime '{runtime}'; it has: {have}")
    file_name, _, expected = chosen[0]
    path = bundle_dir / file_name
    if Path(file_name).name != file_name or not path.is_file():
        raise InputFileError(f"{path}: artifact named in the manifest is missing; not benchmarked")
    actual = _sha256(path)
    if actual != expected:
        raise InputFileError(f"{path}: sha256 mismatch: manifest {expected}, file {actual}; not benchmarked "
                             "(the file changed after packaging: rebuild the bundle)")
    if not (bundle_dir / "bench.sh").is_file():
        raise InputFileError(f"{bundle_dir}: no bench.sh; rebuild the bundle with `edgeopt package`")
    return {"file": file_name, "sha256": expected}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _run_bench(work: Path, args: list[str], python: str, timeout_s: float) -> subprocess.CompletedProcess:
    # No PYTHONPATH: the runner must work with what a device has, not with this source tree on the path.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHON"] = python
    cmd = ["sh", str(work / "bench.sh"), *args]
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


def _result_of(proc: subprocess.CompletedProcess) -> BenchResult:
    """Map the runner's exit code to a typed error, or parse its stdout."""
    tail = _tail(proc.stderr)
    if proc.returncode == 0:
        return parse_result(proc.stdout)
    where = f"runner exited {proc.returncode}: {tail}" if tail else f"runner exited {proc.returncode}"
    if proc.returncode == 3:
        raise InputFileError(f"{where}; not benchmarked")
    if proc.returncode == 4:
        raise UnsupportedError(where)
    raise DeviceError(where)


def _tail(stderr: bytes) -> str:
    text = stderr.decode("utf-8", errors="replace").strip()
    return text if len(text) <= _STDERR_TAIL_CHARS else "..." + text[-_STDERR_TAIL_CHARS:]
