"""The adb transport: push the bundle to ``/data/local/tmp/edgeopt-<id>``, run it detached, poll, pull.

What adb does that this module allows for:

* ``adb shell`` exits 0 on older devices whatever the command did, so no exit status is taken from it:
  commands print markers, and the job's status comes from the ``rc`` file it writes (see ``remote.py``).
* ``adb shell`` on older devices runs in a pty, turning ``\\n`` into ``\\r\\n``; results are pulled as files.
* The adb client's own failures (no device, offline, unauthorized) are exit 1 with ``error: ...``.
* ``adb devices`` lists each serial with a state: ``device`` is usable; ``offline``, ``unauthorized``,
  ``no permissions``, ``recovery``, ``sideload``, ``bootloader`` are not.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgeopt.benchmark.device import DeviceAddress, DeviceKind
from edgeopt.benchmark.job import BenchOptions, tail_text
from edgeopt.benchmark.remote import ConnectionLost, PollPolicy, run_remote
from edgeopt.benchmark.result import BenchResult
from edgeopt.errors import DeviceError, UsageError

BASE_DIR = "/data/local/tmp"  # the one folder `adb shell` may write and execute from on every Android
_NOT_READY = {
    "offline": "is offline: reconnect the cable, or run `adb reconnect`, then retry",
    "unauthorized": ("is unauthorized: unlock it and accept the 'Allow USB debugging?' prompt "
                     "(revoke and re-accept in Developer options if none shows), then retry"),
    "authorizing": "is still authorizing this computer: accept the prompt on the device, then retry",
    "connecting": "is still connecting: wait a moment and retry",
    "no permissions": ("cannot be opened (no permissions): add a udev rule for it or run the adb server "
                       "with enough rights, see https://developer.android.com/studio/run/device"),
    "recovery": "is in recovery mode: reboot it into Android",
    "sideload": "is in sideload mode: reboot it into Android",
    "bootloader": "is in the bootloader: reboot it into Android",
    "host": "is a host connection, not a device",
}
# adb client messages that mean the device cannot be reached right now (polling may retry them).
_UNREACHABLE = ("device offline", "no devices", "not found", "device unauthorized", "closed",
                "cannot connect", "connection reset", "protocol fault", "device still authorizing")


@dataclass(frozen=True)
class AdbDevice:
    serial: str
    state: str


def adb_binary() -> str:
    """``$EDGEOPT_ADB``, else ``adb`` on PATH; DeviceError naming platform-tools when neither exists."""
    explicit = os.environ.get("EDGEOPT_ADB")
    found = explicit if explicit and os.access(explicit, os.X_OK) else shutil.which("adb")
    if not found:
        raise DeviceError("adb is not installed here (not on PATH" + (f", EDGEOPT_ADB={explicit} is not executable"
                          if explicit else "") + "); install Android platform-tools and put adb on PATH")
    return found


def list_devices(adb: str, timeout_s: float = 30) -> list[AdbDevice]:
    """Parse ``adb devices``: one ``AdbDevice`` per listed serial, in order."""
    try:
        proc = subprocess.run([adb, "devices"], stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s,
                              check=False)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"`adb devices` gave no answer within {timeout_s:g} s; try `adb kill-server`") from None
    except OSError as e:
        raise DeviceError(f"cannot run {adb}: {e}") from None
    if proc.returncode != 0:
        raise DeviceError(f"`adb devices` failed (exit {proc.returncode}): {tail_text(proc.stderr + proc.stdout)}")
    devices = []
    for line in proc.stdout.decode("utf-8", errors="replace").splitlines():
        line = line.strip()
        if not line or line.startswith(("*", "List of devices")):
            continue
        serial, _, state = line.partition("\t") if "\t" in line else line.partition(" ")
        state = state.strip()
        devices.append(AdbDevice(serial.strip(), "no permissions" if state.startswith("no permissions") else state))
    return devices


def select_device(devices: list[AdbDevice], serial: str | None) -> str:
    """The serial to use; a DeviceError says what is wrong with the attached devices and what to do."""
    listing = ", ".join(f"{d.serial} ({d.state})" for d in devices) or "none"
    if serial is not None:
        found = [d for d in devices if d.serial == serial]
        if not found:
            raise DeviceError(f"adb: no device {serial!r} is attached (adb devices lists: {listing})")
        device = found[0]
    elif not devices:
        raise DeviceError("adb: no device attached (adb devices lists none): connect one with USB debugging on "
                          "(Settings > Developer options), or start an emulator")
    elif len(devices) > 1:
        raise DeviceError(f"adb: more than one device attached ({listing}); pick one with --device adb:SERIAL")
    else:
        device = devices[0]
    if device.state != "device":
        reason = _NOT_READY.get(device.state, f"is in state {device.state!r}, not 'device'")
        raise DeviceError(f"adb: device {device.serial} {reason}")
    return device.serial


class AdbShell:
    """``RemoteShell`` over one adb serial."""

    def __init__(self, adb: str, serial: str):
        self.adb = adb
        self.serial = serial
        self.name = f"adb:{serial}"

    def _adb(self, args: list[str], timeout_s: float) -> bytes:
        cmd = [self.adb, "-s", self.serial, *args]
        try:
            proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s, check=False)
        except subprocess.TimeoutExpired:
            raise ConnectionLost(f"{self.name}: adb {args[0]} gave no answer within {timeout_s:g} s") from None
        except OSError as e:
            raise DeviceError(f"{self.name}: cannot run {self.adb}: {e}") from None
        said = tail_text(proc.stderr) or tail_text(proc.stdout)
        if proc.returncode != 0:
            text = said.lower()
            if any(needle in text for needle in _UNREACHABLE):
                raise ConnectionLost(f"{self.name}: {_reason(said)}")
            raise DeviceError(f"{self.name}: adb {args[0]} failed (exit {proc.returncode}): {said or '(no message)'}")
        return proc.stdout

    def run(self, script: str, timeout_s: float) -> bytes:
        # One argument: adb hands it to the device's sh -c as it is.
        return self._adb(["shell", script], timeout_s)

    def upload(self, local_dir: Path, remote_dir: str, timeout_s: float) -> None:
        self._adb(["push", str(local_dir), remote_dir + "/"], timeout_s)

    def fetch(self, remote_path: str, max_bytes: int, timeout_s: float) -> bytes:
        with tempfile.TemporaryDirectory(prefix="edgeopt-pull-") as tmp:
            local = Path(tmp) / "pulled"
            self._adb(["pull", remote_path, str(local)], timeout_s)
            if not local.is_file():
                raise DeviceError(f"{self.name}: adb pull of {remote_path} wrote nothing")
            with local.open("rb") as f:
                return f.read(int(max_bytes) + 1)


def _reason(said: str) -> str:
    text = said.lower()
    for state in ("offline", "unauthorized"):
        if state in text:
            return f"the device {_NOT_READY[state]} (adb: {said})"
    return f"adb cannot reach the device: {said}"


def run_adb(bundle_dir: Path, address: DeviceAddress, options: BenchOptions, *,
            policy: PollPolicy | None = None, keep: bool = False) -> BenchResult:
    """Benchmark a bundle on an Android device through adb.

    Raises:
        DeviceError: adb missing; no, several, offline or unauthorized devices; the device went away
            during the run and did not come back within ``policy.reconnect_s``; output not a result.
        (and the bundle errors of ``verified_artifact``; UnsupportedError when the device lacks the runtime)
    """
    if address.kind is not DeviceKind.ADB:
        raise UsageError(f"not an adb address: {address}")
    adb = adb_binary()
    serial = select_device(list_devices(adb), address.serial)
    return run_remote(AdbShell(adb, serial), Path(bundle_dir), options, base_dir=BASE_DIR,
                      policy=policy or PollPolicy(), keep=keep)
