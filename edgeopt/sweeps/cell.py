"""One sweep cell in a fresh process: ``python -m edgeopt.sweeps.cell PAYLOAD_JSON``.

The process first checks whether the cell's bundle is already there and matches (model hash, resolved
profile, edgeopt version, the format and precision asked for, every file's sha256): then it builds nothing.
Otherwise it runs ``edgeopt package ... --force`` in-process (the same code and exit codes as the command)
and prints one JSON line: ``{"status", "exit_code", "bundle", "error"}``.

``run_attempt`` starts that process and waits for it; the local pool and the Ray tasks both call it, so a
cell is the same build wherever it runs. A killed process (a signal, the OOM killer) leaves no half bundle:
the bundle writer builds in a staging folder, which ``run_attempt`` removes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def run_attempt(payload: dict, log_path: str, env: dict | None = None, on_start=None) -> dict:
    """Run one attempt of a cell in a child process and describe how it ended.

    Args:
        payload: the cell (``Cell`` fields) and the sweep's package options, JSON-able.
        log_path: the child's stderr goes here (what ``edgeopt package`` would print).
        env: variables added to this process's environment for the child (thread counts).
        on_start: called with the ``Popen`` once the child runs (the local pool keeps it to stop it on Ctrl-C).

    Returns:
        ``{"status": ok|skipped|failed|killed|interrupted, "exit_code", "bundle", "error", "seconds", "host",
        "pid", "log"}``; ``killed`` means a signal ended the child (the cell may be retried).
    """
    start = time.monotonic()
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "edgeopt.sweeps.cell", json.dumps(payload)],
                                stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL,
                                env={**os.environ, **(env or {})}, preexec_fn=_die_with_parent)
        if on_start is not None:
            on_start(proc)
        try:
            stdout, _ = proc.communicate()
        except BaseException:  # Ctrl-C here or a Ray cancel: stop the child the way Ctrl-C stops `edgeopt package`
            stop(proc)
            raise
    result = {"exit_code": proc.returncode, "bundle": None, "error": None, "pid": proc.pid,
              "host": socket.gethostname(), "log": log_path}
    if proc.returncode < 0:
        _remove_staging(Path(payload["out"]), proc.pid)
        result.update(status="killed", error=f"killed by {_signal_name(-proc.returncode)}")
    else:
        line = stdout.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
        try:
            result.update(json.loads(line[0]))
        except ValueError:
            result.update(status="failed", error=_last_error(log_path) or "the cell process printed no result")
        if proc.returncode == 130:
            result["status"] = "interrupted"
        if result["status"] == "failed" and not result.get("error"):
            result["error"] = _last_error(log_path)
    result["seconds"] = round(time.monotonic() - start, 2)
    return result


def stop(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM (``edgeopt`` unwinds like Ctrl-C: its staging folder is removed), SIGKILL after ``grace_s``."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _die_with_parent() -> None:
    """Linux: the child gets SIGKILL when the process that started it dies (a killed Ray worker, a killed
    sweep), so no orphan goes on writing a bundle that the retry is writing too."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _remove_staging(out: Path, pid: int) -> None:
    for stale in out.glob(f".*.staging-{pid}"):
        shutil.rmtree(stale, ignore_errors=True)


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _last_error(log_path: str) -> str | None:
    try:
        lines = Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return None
    errors = [ln for ln in lines if ln.startswith(("error:", "internal error"))]
    return (errors or [ln for ln in lines if ln.strip()] or [None])[-1]


# --- in the child --------------------------------------------------------------------------------


def identity(model: str, allow_pickle: bool) -> tuple[str, str]:
    """(bundle name, sha256) of ``model`` as ``edgeopt package`` records them in the manifest.

    A model folder (and the built-in default) is hashed from its weight files without importing torch; a
    factory or hub id is loaded, as the build would.
    """
    from edgeopt import models

    if model == "default":
        path = models.default_model_dir()
        return models.DEFAULT_MODEL_NAME, models._sha256_files(models._weight_files(path, allow_pickle=allow_pickle))
    path = Path(model)
    if ".py:" not in model and path.is_dir():
        return path.resolve().name, models._sha256_files(models._weight_files(path, allow_pickle=allow_pickle))
    loaded = models.load_model(model, allow_pickle=allow_pickle)
    return loaded.name, loaded.source_sha256


def existing_match(payload: dict) -> tuple[Path | None, str]:
    """The cell's bundle when one is there and matches what this build would make, else (None, why not)."""
    from edgeopt import __version__
    from edgeopt.bundle import Bundle, bundle_dir, verify_files
    from edgeopt.errors import EdgeoptError
    from edgeopt.profiles import load_profile

    name, sha = identity(payload["model"], payload.get("allow_pickle", False))
    target = bundle_dir(Path(payload["out"]), name, payload["profile_name"])
    if not target.exists():
        return None, "no bundle yet"
    try:
        b = Bundle.open(target)
        m = b.manifest
        art = (m.get("artifacts") or [{}])[0]
        if (m.get("model") or {}).get("sha256") != sha:
            return None, "the model changed"
        if m.get("edgeopt_version") != __version__:
            return None, f"built by edgeopt {m.get('edgeopt_version')}, this is {__version__}"
        if _canonical(m.get("profile")) != _canonical(load_profile(payload["profile"]).to_dict()):
            return None, "the profile changed"
        if payload.get("fmt") and art.get("runtime") != payload["fmt"]:
            return None, f"built for {art.get('runtime')}, the cell asks for {payload['fmt']}"
        if payload.get("precision") and art.get("precision") != payload["precision"]:
            return None, f"built at {art.get('precision')}, the cell asks for {payload['precision']}"
        verify_files(b.path, m)
    except EdgeoptError as e:
        return None, f"the bundle there does not check out ({str(e).splitlines()[0]})"
    return target, "matches"


def _canonical(d) -> str:
    return json.dumps(d, sort_keys=True, default=str)


def package_args(payload: dict) -> list[str]:
    """The ``edgeopt package`` arguments of a cell (``--force``: a stale bundle is replaced)."""
    args = ["package", "--model", payload["model"], "--profile", payload["profile"], "--out", payload["out"],
            "--force", "--json", "--recover-seconds", str(payload.get("recover_seconds", 0.0))]
    for flag, key in (("--format", "fmt"), ("--precision", "precision"), ("--activations", "activations")):
        if payload.get(key):
            args += [flag, payload[key]]
    if payload.get("allow_pickle"):
        args.append("--allow-pickle")
    return args


def main(argv: list[str]) -> int:
    from edgeopt.errors import EdgeoptError

    payload = json.loads(argv[0])
    if os.environ.get("EDGEOPT_SWEEP_TEST_DELAY_S"):  # tests: a window in which to kill or interrupt this cell
        time.sleep(float(os.environ["EDGEOPT_SWEEP_TEST_DELAY_S"]))
    try:
        found, why = existing_match(payload)
    except EdgeoptError as e:
        found, why = None, str(e)  # the build reports it with its exit code
    except KeyboardInterrupt:
        return 130
    if found is not None:
        print(json.dumps({"status": "skipped", "exit_code": 0, "bundle": str(found), "error": None}), flush=True)
        return 0
    print(f"sweep: building ({why})", file=sys.stderr, flush=True)
    from edgeopt.cli import main as cli_main

    captured = io.StringIO()
    with contextlib.redirect_stdout(captured):
        code = cli_main(package_args(payload))
    result = {"status": "ok" if code == 0 else "failed", "exit_code": code, "bundle": None, "error": None}
    if code == 0:
        from edgeopt.bundle import bundle_dir

        m = json.loads(captured.getvalue())
        result["bundle"] = str(bundle_dir(Path(payload["out"]), m["model"]["name"], m["profile"]["name"]))
    else:
        sys.stderr.flush()
    print(json.dumps(result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
