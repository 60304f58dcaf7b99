"""Run ``bench.sh`` on a remote device as a detached job and poll it, over any ``RemoteShell`` (ssh, adb).

The protocol, in POSIX sh that busybox and Android's toybox run too:

1. ``mkdir <base>/edgeopt-<id>`` (the job folder) and copy the staged bundle into ``<job>/bundle``.
2. Start ``sh bench.sh ...`` under ``nohup`` (and ``setsid`` where present), stdout to ``<job>/out``, stderr
   to ``<job>/err``; when it ends its exit status is written to ``<job>/rc`` (via a rename, so a reader never
   sees half a number). The starting connection returns at once.
3. Poll with short, separate connections: ``rc`` present → done; the job's pid alive → running.
   A poll that cannot connect is retried for ``reconnect_s``: a dropped connection, a Wi-Fi hiccup or an
   sshd restart does not lose the run. The exit status is never taken from the transport itself, because
   ``adb shell`` on older devices always exits 0.
4. Fetch ``out`` (bounded) and the tail of ``err``, then remove the job folder.
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from edgeopt.benchmark.job import (
    MAX_NATIVE_BYTES,
    Artifact,
    BenchOptions,
    bench_args,
    result_of,
    stage_bundle,
    verified_artifact,
)
from edgeopt.benchmark.result import MAX_RESULT_BYTES, BenchResult
from edgeopt.errors import DeviceError

log = logging.getLogger(__name__)

_RC = re.compile(r"^rc (\d{1,3})$")
_JOB_DIR = re.compile(r"^/[A-Za-z0-9._/+-]{1,400}$")
STARTING_GRACE_S = 20.0  # how long a job may show no pid file before it counts as never started
ERR_TAIL_BYTES = 2000


class ConnectionLost(DeviceError):
    """The transport could not reach the device (refused, timed out, offline); polling may retry it."""


class RemoteShell(Protocol):
    """What a transport offers. Every method raises ``ConnectionLost`` when the device cannot be reached
    and ``DeviceError`` for other transport failures."""

    name: str  # the device address, starting every message

    def run(self, script: str, timeout_s: float) -> bytes:
        """Run a POSIX sh script on the device; its stdout."""

    def upload(self, local_dir: Path, remote_dir: str, timeout_s: float) -> None:
        """Copy ``local_dir`` into the existing ``remote_dir`` (as ``remote_dir/<name of local_dir>``)."""

    def fetch(self, remote_path: str, max_bytes: int, timeout_s: float) -> bytes:
        """At most ``max_bytes + 1`` bytes of a device file (one more than allowed, to detect oversize)."""


@dataclass(frozen=True)
class PollPolicy:
    """How long to wait: for the whole job, for a lost connection to come back, between polls."""

    timeout_s: float = 1800.0
    reconnect_s: float = 60.0
    interval_s: float = 0.25
    max_interval_s: float = 2.0
    command_timeout_s: float = 120.0


def run_remote(shell: RemoteShell, bundle_dir: Path, options: BenchOptions, *, base_dir: str,
               policy: PollPolicy | None = None, keep: bool = False) -> BenchResult:
    """Benchmark ``bundle_dir`` on the device behind ``shell``; see the module docstring for the protocol.

    Args:
        base_dir: a writable folder on the device for the job folder (``/data/local/tmp`` on Android);
            may start with ``$TMPDIR``-style shell variables, expanded on the device.
        keep: leave the job folder on the device (for debugging).

    Raises:
        InputFileError, UsageError: the bundle, before anything is copied.
        DeviceError: the transport failed, the job died or timed out, or its output is not a valid result.
        UnsupportedError: the runtime is not installed on the device (runner exit 4).
    """
    policy = policy or PollPolicy()
    artifact = verified_artifact(Path(bundle_dir), options.runtime)
    job = _make_job_dir(shell, base_dir, policy)
    launched = finished = False
    try:
        with tempfile.TemporaryDirectory(prefix="edgeopt-stage-") as tmp:
            # A large bundle over slow Wi-Fi takes a while: the copy gets the whole job's time limit.
            shell.upload(stage_bundle(Path(bundle_dir), Path(tmp) / "bundle"), job, policy.timeout_s)
        launched = True  # from here on the job may be running, even if _launch itself loses the connection
        _launch(shell, job, bench_args(artifact, options), options.python, policy)
        code = _wait(shell, job, policy)
        finished = True
        return _collect(shell, job, code, artifact, options, policy)
    except ConnectionLost as e:
        if launched and not finished:
            # Unreachable now; the job itself goes on and its folder stays for a later look.
            keep = True
            raise ConnectionLost(f"{e}; the job may still be running on the device in {job} "
                                 "(its result will be in out, its exit status in rc)") from None
        raise
    except BaseException:
        if launched and not finished:
            _stop(shell, job, policy)
        raise
    finally:
        if not keep:
            _remove(shell, job, policy)


def _make_job_dir(shell: RemoteShell, base_dir: str, policy: PollPolicy) -> str:
    name = "edgeopt-" + secrets.token_hex(6)
    script = (f'base={_quote_base(base_dir)}; mkdir -p "$base" && cd "$base" && mkdir {name} '
              f'&& echo "dir $(pwd)/{name}"')
    out = _text(shell.run(script, policy.command_timeout_s))
    line = _marker(out, "dir ")
    if line is None or not _JOB_DIR.match(line):
        raise DeviceError(f"{shell.name}: cannot create a job folder under {base_dir} on the device "
                          f"(the device answered {out.strip()[:200]!r}); pass a writable folder")
    return line


def _quote_base(base_dir: str) -> str:
    # "$TMPDIR"-style defaults are expanded on the device; anything else is quoted literally.
    if base_dir.startswith("${") and re.match(r"^\$\{[A-Z_]+:-/[A-Za-z0-9._/-]*\}[A-Za-z0-9._/-]*$", base_dir):
        return f'"{base_dir}"'
    return shlex.quote(base_dir)


def _launch(shell: RemoteShell, job: str, args: list[str], python: str | None, policy: PollPolicy) -> None:
    inner = ('echo $$ > ../pid; sh ./bench.sh "$@" > ../out 2> ../err; echo $? > ../rc.tmp; mv ../rc.tmp ../rc')
    env = f"PYTHON={shlex.quote(python)}; export PYTHON; " if python else ""
    script = (f"cd {shlex.quote(job + '/bundle')} || exit 0; {env}"
              "S=; command -v setsid >/dev/null 2>&1 && S=setsid; "
              "N=; command -v nohup >/dev/null 2>&1 && N=nohup; "
              f"$N $S sh -c {shlex.quote(inner)} edgeopt-job {' '.join(shlex.quote(a) for a in args)} "
              "</dev/null >/dev/null 2>&1 & echo started")
    out = _text(shell.run(script, policy.command_timeout_s))
    if _marker(out, "started") is None:
        raise DeviceError(f"{shell.name}: could not start bench.sh in {job}/bundle (the device answered "
                          f"{out.strip()[:200]!r})")
    log.info("%s: started the benchmark in %s", shell.name, job)


def _poll_script(job: str) -> str:
    d = shlex.quote(job)
    rc = f'echo "rc $(cat {d}/rc)"'
    return (f"if [ -f {d}/rc ]; then {rc}; "
            f"elif [ -f {d}/pid ] && kill -0 \"$(cat {d}/pid)\" 2>/dev/null; then echo running; "
            f"elif [ -f {d}/rc ]; then {rc}; "
            f"elif [ -f {d}/pid ]; then echo gone; else echo starting; fi")


def _wait(shell: RemoteShell, job: str, policy: PollPolicy) -> int:
    """Poll until the job wrote its exit status; returns it."""
    start = last_ok = time.monotonic()
    interval = policy.interval_s
    while True:
        now = time.monotonic()
        if now - start > policy.timeout_s:
            raise DeviceError(f"{shell.name}: the benchmark did not finish within {policy.timeout_s:g} s; it was "
                              "stopped (raise the timeout, or lower --runs/--min-seconds)")
        try:
            state = _text(shell.run(_poll_script(job), policy.command_timeout_s)).strip().splitlines()
            last_ok = time.monotonic()
        except ConnectionLost as e:
            if time.monotonic() - last_ok > policy.reconnect_s:
                raise ConnectionLost(f"{shell.name}: lost the connection during the run and could not reconnect "
                                     f"for {policy.reconnect_s:g} s ({e})") from None
            log.warning("%s: poll failed, retrying: %s", shell.name, e)
            time.sleep(interval)
            continue
        word = state[-1].strip() if state else ""
        match = _RC.match(word)
        if match:
            return int(match.group(1))
        if word == "gone" or (word == "starting" and now - start > STARTING_GRACE_S):
            err = _err_tail(shell, job, policy)
            raise DeviceError(f"{shell.name}: the benchmark process on the device ended without an exit status "
                              "(killed, out of memory, or the device rebooted)" + (f"; its stderr: {err}" if err else ""))
        if word not in ("running", "starting"):
            raise DeviceError(f"{shell.name}: unexpected answer to a status poll: {' '.join(state)[:200]!r}")
        time.sleep(interval)
        interval = min(policy.max_interval_s, interval * 1.5)


def _collect(shell: RemoteShell, job: str, code: int, artifact: Artifact, options: BenchOptions,
             policy: PollPolicy) -> BenchResult:
    limit = MAX_NATIVE_BYTES if options.native else MAX_RESULT_BYTES
    out = shell.fetch(f"{job}/out", limit, policy.command_timeout_s) if code == 0 else b""
    if len(out) > limit:
        raise DeviceError(f"{shell.name}: the result on the device is larger than {limit} bytes; "
                          "it is not a runner result")
    err = _err_tail(shell, job, policy).encode()
    return result_of(f"{shell.name}: ", code, out, err, artifact, options, remote=True)


def _err_tail(shell: RemoteShell, job: str, policy: PollPolicy) -> str:
    try:
        data = shell.run(f"tail -c {ERR_TAIL_BYTES} {shlex.quote(job)}/err 2>/dev/null; true", policy.command_timeout_s)
    except DeviceError:
        return ""
    return data.decode("utf-8", errors="replace").strip()


def _stop(shell: RemoteShell, job: str, policy: PollPolicy) -> None:
    """Best effort: end a job this host gave up on (timeout, Ctrl-C), so it does not keep the device busy."""
    d = shlex.quote(job)
    script = (f'[ -f {d}/pid ] && p="$(cat {d}/pid)" && '
              '{ kill -TERM -- "-$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; }; true')
    try:
        shell.run(script, min(policy.command_timeout_s, 30))
    except DeviceError:
        pass


def _remove(shell: RemoteShell, job: str, policy: PollPolicy) -> None:
    try:
        shell.run(f"rm -rf {shlex.quote(job)}; true", min(policy.command_timeout_s, 60))
    except DeviceError as e:
        log.warning("%s: could not remove %s from the device: %s", shell.name, job, e)


def _text(data: bytes) -> str:
    # adb shell on older devices runs in a pty and turns "\n" into "\r\n".
    return data.decode("utf-8", errors="replace").replace("\r\n", "\n").replace("\r", "")


def _marker(out: str, prefix: str) -> str | None:
    for line in reversed(out.splitlines()):
        if line.startswith(prefix):
            return line[len(prefix):].strip() if prefix.endswith(" ") else line.strip()
    return None
