"""The SSH transport: the system OpenSSH client (``ssh``/``scp``), never a password prompt.

Every connection uses ``BatchMode=yes`` (fail instead of asking), ``ConnectTimeout``,
``StrictHostKeyChecking=accept-new`` (trust a new host once, refuse a changed key) and keep-alives, so a
dead link is noticed in seconds. Identity, known_hosts and config files come from ``SshOptions`` or the
environment (``EDGEOPT_SSH_IDENTITY``, ``EDGEOPT_SSH_KNOWN_HOSTS``, ``EDGEOPT_SSH_CONFIG``).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgeopt.benchmark.device import DeviceAddress, DeviceKind
from edgeopt.benchmark.job import BenchOptions, tail_text
from edgeopt.benchmark.remote import ConnectionLost, PollPolicy, run_remote
from edgeopt.benchmark.result import BenchResult
from edgeopt.errors import DeviceError, UsageError

SSH_FAILED = 255  # OpenSSH's own exit status; any other is the remote command's
DEFAULT_BASE_DIR = "${TMPDIR:-/tmp}"

# What OpenSSH prints, mapped to what to do about it.
_EXPLAIN = (
    ("connection refused", "connection refused: is sshd running there, and is the port right?"),
    ("permission denied", ("authentication failed (no password prompts in batch mode): add your public key to "
                           "the device's ~/.ssh/authorized_keys, or pass the key with EDGEOPT_SSH_IDENTITY")),
    ("host key verification failed", ("the device's host key differs from known_hosts: if the device was "
                                       "reinstalled, remove its old key with ssh-keygen -R HOST")),
    ("could not resolve hostname", "the host name does not resolve: check the spelling or use its IP address"),
    ("timed out", "the connection timed out: is the device on and on this network?"),
    ("no route to host", "no route to the host: is the device on and on this network?"),
    ("network is unreachable", "the network is unreachable from this machine"),
    ("connection closed", "the connection was closed by the device"),
    ("connection reset", "the connection was reset"),
    ("broken pipe", "the connection broke"),
)


@dataclass(frozen=True)
class SshOptions:
    """Files and timeouts for the OpenSSH client; None keeps ssh's own defaults (``~/.ssh/...``)."""

    identity_file: str | None = None
    known_hosts_file: str | None = None
    config_file: str | None = None
    connect_timeout_s: int = 10

    @classmethod
    def from_env(cls, identity_file: str | None = None) -> SshOptions:
        """Options from ``EDGEOPT_SSH_*`` variables; an explicit ``identity_file`` wins."""
        return cls(identity_file=identity_file or os.environ.get("EDGEOPT_SSH_IDENTITY") or None,
                   known_hosts_file=os.environ.get("EDGEOPT_SSH_KNOWN_HOSTS") or None,
                   config_file=os.environ.get("EDGEOPT_SSH_CONFIG") or None)


class SshShell:
    """``RemoteShell`` over OpenSSH: one short connection per call."""

    def __init__(self, address: DeviceAddress, options: SshOptions | None = None):
        options = options or SshOptions()
        if address.kind is not DeviceKind.SSH:
            raise UsageError(f"not an ssh address: {address}")
        for tool in ("ssh", "scp"):
            if shutil.which(tool) is None:
                raise DeviceError(f"{address}: the OpenSSH client ({tool}) is not installed here; install it "
                                  "(apt-get install openssh-client, or your OS's package)")
        if options.identity_file and not Path(options.identity_file).is_file():
            raise UsageError(f"ssh identity file {options.identity_file} does not exist")
        self.address = address
        self.options = options
        self.name = str(address)
        self._legacy_scp = False

    def _common(self) -> list[str]:
        o = self.options
        args = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={int(o.connect_timeout_s)}",
                "-o", "StrictHostKeyChecking=accept-new", "-o", "ServerAliveInterval=5",
                "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR"]
        if o.config_file:
            args = ["-F", o.config_file, *args]
        if o.identity_file:
            args += ["-i", o.identity_file, "-o", "IdentitiesOnly=yes"]
        if o.known_hosts_file:
            args += ["-o", f"UserKnownHostsFile={o.known_hosts_file}"]
        return args

    def _login(self) -> str:
        return f"{self.address.user}@{self.address.host}" if self.address.user else self.address.host

    def run(self, script: str, timeout_s: float) -> bytes:
        port = ["-p", str(self.address.port)] if self.address.port else []
        # ssh hands the remote user's login shell one string; `sh -c` makes the script POSIX sh everywhere.
        cmd = ["ssh", *port, *self._common(), "--", self._login(), "sh -c " + shlex.quote(script)]
        proc = self._call(cmd, timeout_s)
        if proc.returncode != 0:
            raise DeviceError(f"{self.name}: a command on the device failed (exit {proc.returncode}): "
                              f"{tail_text(proc.stderr) or '(no message)'}")
        return proc.stdout

    def upload(self, local_dir: Path, remote_dir: str, timeout_s: float) -> None:
        host = self.address.host
        dest = f"[{host}]" if ":" in host else host
        dest = f"{self.address.user}@{dest}" if self.address.user else dest
        port = ["-P", str(self.address.port)] if self.address.port else []
        legacy = ["-O"] if self._legacy_scp else []
        cmd = ["scp", *legacy, "-r", "-q", *port, *self._common(), "--", str(local_dir), f"{dest}:{remote_dir}/"]
        try:
            proc = self._call(cmd, timeout_s)
            said = tail_text(proc.stderr)
        except ConnectionLost as e:
            proc, said = None, str(e)
        # OpenSSH 9's scp speaks SFTP; a device without an sftp server (dropbear, a minimal sshd) closes the
        # channel at once ("scp: Connection closed"), and the old scp protocol is what it speaks.
        lowered = said.lower()
        sftp_refused = "subsystem" in lowered or "scp: connection closed" in lowered
        if (proc is None or proc.returncode != 0) and not self._legacy_scp and sftp_refused:
            self._legacy_scp = True
            return self.upload(local_dir, remote_dir, timeout_s)
        if proc is None:
            raise ConnectionLost(said)
        if proc.returncode != 0:
            raise DeviceError(f"{self.name}: copying the bundle to {remote_dir} failed: "
                              f"{tail_text(proc.stderr) or '(no message)'} (is the device's disk full?)")

    def fetch(self, remote_path: str, max_bytes: int, timeout_s: float) -> bytes:
        return self.run(f"head -c {int(max_bytes) + 1} {shlex.quote(remote_path)}", timeout_s)

    def _call(self, cmd: list[str], timeout_s: float) -> subprocess.CompletedProcess:
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise ConnectionLost(f"{self.name}: no answer within {timeout_s:g} s") from None
        except OSError as e:
            raise DeviceError(f"{self.name}: cannot run {cmd[0]}: {e}") from None
        if proc.returncode == SSH_FAILED:
            raise ConnectionLost(f"{self.name}: {self._explain(proc.stderr)}")
        return proc

    def _explain(self, stderr: bytes) -> str:
        said = tail_text(stderr) or "ssh failed without a message"
        lowered = said.lower()
        for needle, meaning in _EXPLAIN:
            if needle in lowered:
                return f"{meaning} (ssh: {said})"
        return f"ssh failed: {said}"


def run_ssh(bundle_dir: Path, address: DeviceAddress, options: BenchOptions, *,
            ssh: SshOptions | None = None, policy: PollPolicy | None = None,
            base_dir: str = DEFAULT_BASE_DIR, keep: bool = False) -> BenchResult:
    """Benchmark a bundle on an SSH device: copy, start detached, poll, fetch, clean up.

    Args:
        address: an ``ssh://`` address from ``parse_device``.
        base_dir: where the job folder goes on the device (default ``$TMPDIR`` or ``/tmp``).

    Raises:
        DeviceError: cannot connect, authenticate or copy; the job died or timed out; output not a result.
        (and the bundle errors of ``verified_artifact``; UnsupportedError when the device lacks the runtime)
    """
    return run_remote(SshShell(address, ssh), Path(bundle_dir), options, base_dir=base_dir,
                      policy=policy or PollPolicy(), keep=keep)
