"""edgeopt bench over real SSH: an OpenSSH server started here on loopback, keys made here, the system client.

Needs /usr/sbin/sshd (scripts/install-test-deps.sh installs openssh-server); without it these tests skip
and say so. The server runs as the current user with its own config, host key and authorized_keys in a
temp folder; nothing of the machine's ssh set-up is read or changed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgeopt.benchmark import BenchOptions, parse_device, parse_result
from edgeopt.benchmark.remote import PollPolicy
from edgeopt.benchmark.ssh import SshOptions, run_ssh
from edgeopt.cli import main
from edgeopt.errors import DeviceError

SSHD = Path("/usr/sbin/sshd")
FAST = ["--runs", "5", "--min-seconds", "0.05", "--repeats", "2", "--warmup", "1", "--threads", "1"]
_BUILT: dict[str, Path] = {}

pytestmark = pytest.mark.skipif(not SSHD.exists() or shutil.which("ssh-keygen") is None,
                                reason="needs OpenSSH's sshd and ssh-keygen: run scripts/install-test-deps.sh "
                                       "(apt-get install openssh-server openssh-client)")


def packaged_bundle(tmp_path_factory, model_dir: Path) -> Path:
    """``model_dir`` packaged by edgeopt for desktop-cpu as ONNX fp32, once per session (estimates, targets)."""
    if "bert" not in _BUILT:
        from edgeopt import api

        out = tmp_path_factory.mktemp("packaged")
        result = api.package(str(model_dir), profile="desktop-cpu", out=out, fmt="onnx", precision="fp32")
        _BUILT["bert"] = Path(result.bundle_path)
    return _BUILT["bert"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sshd:
    """sshd -D on 127.0.0.1:port, in its own process group so a test can cut every connection at once."""

    def __init__(self, folder: Path, *, sftp: bool = True):
        self.folder = folder
        self.port = free_port()
        for name in ("host_key", "id_user", "id_stranger"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(folder / name)],
                           check=True, timeout=60)
        shutil.copyfile(folder / "id_user.pub", folder / "authorized_keys")
        self.config = folder / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {folder / 'host_key'}",
            f"PidFile {folder / 'sshd.pid'}", f"AuthorizedKeysFile {folder / 'authorized_keys'}",
            "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "UsePAM no", "PermitRootLogin prohibit-password", "StrictModes no",
            "Subsystem sftp internal-sftp" if sftp else "", "LogLevel ERROR", ""]))
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege separation folder, missing in containers
        check = subprocess.run([str(SSHD), "-t", "-f", str(self.config)], capture_output=True, text=True, timeout=30, check=False)
        if check.returncode != 0:
            pytest.skip(f"this sshd refuses the test config: {check.stderr.strip()}")
        log = (self.folder / "sshd.log").open("ab")
        self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.config)], stdout=log, stderr=log,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
        pytest.fail(f"sshd did not start: {(self.folder / 'sshd.log').read_text()[-2000:]}")

    def stop(self) -> None:
        """Kill the listener and every connection it serves (the device's own sessions survive: setsid)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = Sshd(tmp_path_factory.mktemp("sshd"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def ssh_env(sshd, monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEOPT_SSH_IDENTITY", str(sshd.folder / "id_user"))
    monkeypatch.setenv("EDGEOPT_SSH_KNOWN_HOSTS", str(tmp_path / "known_hosts"))
    monkeypatch.setenv("EDGEOPT_SSH_CONFIG", os.devnull)  # none of this machine's ~/.ssh/config
    return sshd


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_bert_dir) -> Path:
    return packaged_bundle(tmp_path_factory, tiny_bert_dir)


def address(sshd) -> str:
    return f"ssh://{_user()}@127.0.0.1:{sshd.port}"


def _user() -> str:
    import getpass

    return getpass.getuser()


def bench_json(capsys, *args: str) -> tuple[int, dict | None, str]:
    code = main(["bench", *args, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err + out


def test_local_and_ssh_give_the_same_json(bundle, ssh_env, capsys, tmp_path):
    work = Path(shutil.copytree(bundle, tmp_path / "bundle"))
    code, local, said = bench_json(capsys, str(work), "--device", "local", *FAST)
    assert code == 0, said
    code, remote, said = bench_json(capsys, str(work), "--device", address(ssh_env), "--python", sys.executable,
                                    *FAST)
    assert code == 0, said
    assert local.keys() == remote.keys() == {"schema_version", "device", "bundle", "result", "comparison", "cost_inputs", "saved_to"}
    assert remote["device"]["address"] == address(ssh_env) and remote["device"]["kind"] == "ssh"
    a, b = parse_result(json.dumps(local["result"])), parse_result(json.dumps(remote["result"]))
    assert a.raw.keys() == b.raw.keys() and a.artifact_sha256 == b.artifact_sha256 and a.verified and b.verified
    for r in (a, b):  # the same artifact, the same outputs, wherever it ran
        assert r.parity["samples"] == 8 and r.parity["min_cosine"] > 0.9999 and r.parity["host_max_abs_err"] < 1e-5
        assert r.raw["timed_runs"] >= 10 and r.latency_ms["p50"] > 0
    manifest = json.loads((work / "manifest.json").read_text())
    for record in (local, remote):
        lat = record["comparison"]["latency_ms"]
        assert lat["estimated"] == pytest.approx(manifest["estimates"]["latency_ms"], rel=1e-3)
        assert lat["ratio"] == pytest.approx(lat["measured"] / lat["estimated"], rel=1e-2)
        assert lat["target"] == manifest["profile"]["targets"]["latency_ms"]
        assert lat["meets_target"] == (record["result"]["latency_ms"]["p90"] <= lat["target"])
        assert record["comparison"]["peak_ram_mb"]["estimated"] == pytest.approx(
            manifest["estimates"]["peak_ram_bytes"] / 2**20, rel=1e-3)
    stored = sorted(p.name for p in (work / "results").iterdir())
    assert [n.split("-", 1)[1] for n in stored] == sorted(["local.json", f"ssh-{_user()}-127.0.0.1-{ssh_env.port}.json"])
    assert json.loads(Path(remote["saved_to"]).read_text())["result"] == remote["result"]
    print(f"\nlocal p50 {a.latency_ms['p50']} ms p90 {a.latency_ms['p90']} ms | "
          f"ssh p50 {b.latency_ms['p50']} ms p90 {b.latency_ms['p90']} ms")
    # edgeopt report: one page with both devices' runs, in the bench table and the latency plot
    from edgeopt import api

    page = tmp_path / "report.html"
    text = api.report([work], html=page)
    assert "bench local" in text and f"bench {address(ssh_env)}" in text
    html = page.read_text(encoding="utf-8")
    bench_table = html.split('class="bench"', 1)[1].split("</table>", 1)[0]
    assert bench_table.count("<tr>") - 1 == 2 and "local" in bench_table and address(ssh_env) in bench_table
    assert 'id="latency-plot"' in html


def test_connection_refused_is_exit_7(bundle, ssh_env, capsys):
    port = free_port()  # nothing listens there
    code, _, said = bench_json(capsys, str(bundle), "--device", f"ssh://{_user()}@127.0.0.1:{port}", "--no-save", *FAST)
    assert code == 7
    assert f"ssh://{_user()}@127.0.0.1:{port}: connection refused: is sshd running there" in said
    assert "latency" not in said


def test_authentication_failure_is_exit_7(bundle, ssh_env, capsys, monkeypatch):
    monkeypatch.setenv("EDGEOPT_SSH_IDENTITY", str(ssh_env.folder / "id_stranger"))
    code, _, said = bench_json(capsys, str(bundle), "--device", address(ssh_env), "--no-save", *FAST)
    assert code == 7 and "authentication failed" in said and "Permission denied (publickey)" in said


def test_truncated_result_from_the_device_is_exit_7(bundle, ssh_env, capsys, tmp_path):
    fake = tmp_path / "python3"  # the device's "python": prints half a result and exits 0
    fake.write_text('#!/bin/sh\nprintf \'{"schema_version": 1, "runtime": {"name": "onnxr\'\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    code, _, said = bench_json(capsys, str(bundle), "--device", address(ssh_env), "--python", str(fake), "--no-save",
                               *FAST)
    assert code == 7 and "bench result is truncated JSON" in said


def test_a_device_without_sftp_gets_the_old_scp_protocol(bundle, ssh_env, tmp_path, capsys, monkeypatch):
    # OpenSSH 9's scp uses SFTP; dropbear and minimal sshd builds have no sftp server.
    (tmp_path / "plain").mkdir()
    plain = Sshd(tmp_path / "plain", sftp=False)
    plain.start()
    try:
        monkeypatch.setenv("EDGEOPT_SSH_IDENTITY", str(plain.folder / "id_user"))
        code, record, said = bench_json(capsys, str(bundle), "--device", f"ssh://{_user()}@127.0.0.1:{plain.port}",
                                        "--python", sys.executable, "--no-save", *FAST)
    finally:
        plain.stop()
    assert code == 0, said
    assert parse_result(json.dumps(record["result"])).parity["min_cosine"] > 0.9999


def test_a_dropped_connection_does_not_lose_the_run(bundle, ssh_env, tmp_path, caplog):
    remote = tmp_path / "device-tmp"
    options = BenchOptions(runs=5, min_seconds=1.0, repeats=2, warmup=1, threads=1, cooldown_s=0.0,
                           python=sys.executable)
    policy = PollPolicy(timeout_s=120, reconnect_s=60, interval_s=0.1, max_interval_s=0.3)
    ssh = SshOptions.from_env()
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = run_ssh(bundle, parse_device(address(ssh_env)), options, ssh=ssh, policy=policy,
                                        base_dir=str(remote))
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = e

    caplog.set_level(logging.WARNING, logger="edgeopt.benchmark.remote")
    worker = threading.Thread(target=run)
    worker.start()
    deadline = time.monotonic() + 60
    while not list(remote.glob("edgeopt-*/err")) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(remote.glob("edgeopt-*/err")), outcome
    ssh_env.stop()  # every connection cut, mid-run, and the port closed
    try:
        time.sleep(2.0)
        assert not list(remote.glob("edgeopt-*/rc"))  # still running on the device
    finally:
        ssh_env.start()  # the device's sshd comes back on the same port, same host key
    worker.join(timeout=120)
    assert "error" not in outcome, outcome.get("error")
    result = outcome["result"]
    assert result.verified and result.parity["min_cosine"] > 0.9999 and result.raw["timed_runs"] >= 10
    assert any("poll failed, retrying" in r.getMessage() and "connection refused" in r.getMessage()
               for r in caplog.records)
    assert not list(remote.iterdir())  # the job folder was removed after the result came back


def test_lost_for_good_says_where_the_job_is(bundle, ssh_env, tmp_path):
    remote = tmp_path / "device-tmp"
    options = BenchOptions(runs=5, min_seconds=1.5, repeats=1, warmup=1, threads=1, python=sys.executable)
    policy = PollPolicy(timeout_s=60, reconnect_s=0.5, interval_s=0.1, max_interval_s=0.2)
    stopper = threading.Thread(target=lambda: (_wait_for(remote, "edgeopt-*/err"), ssh_env.stop()))
    stopper.start()
    try:
        with pytest.raises(DeviceError, match=r"lost the connection during the run and could not reconnect for "
                                              r"0.5 s .*connection refused.*the job may still be running on the "
                                              r"device in .*edgeopt-[0-9a-f]{12}"):
            run_ssh(bundle, parse_device(address(ssh_env)), options, ssh=SshOptions.from_env(), policy=policy,
                    base_dir=str(remote))
    finally:
        stopper.join(timeout=60)
        ssh_env.start()
    job = next(remote.glob("edgeopt-*"))
    _wait_for(remote, "edgeopt-*/rc")
    assert (job / "rc").read_text().strip() == "0"  # the run finished on the device regardless
    assert parse_result((job / "out").read_bytes()).verified


def _wait_for(folder: Path, pattern: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not list(folder.glob(pattern)) and time.monotonic() < deadline:
        time.sleep(0.02)
