"""Where a benchmark runs: ``--device local | ssh://user@host[:port] | adb[:serial]``, parsed once into a
``DeviceAddress``; nothing below compares device strings again."""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from edgeopt.errors import UsageError

# Host names, IPv4 and (bracketed) IPv6 only: the value ends up on an ssh command line, and a leading '-'
# would be read as an option by ssh (CVE-2017-1000117 style), so it is refused here.
_HOST = re.compile(r"^(?:[A-Za-z0-9](?:[A-Za-z0-9._-]{0,252})|\[[0-9A-Fa-f:.]{2,45}\])$")
_USER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
_SERIAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
_FORMS = "local, ssh://user@host[:port] or adb[:serial]"


class DeviceKind(enum.Enum):
    LOCAL = "local"
    SSH = "ssh"
    ADB = "adb"


@dataclass(frozen=True)
class DeviceAddress:
    """A parsed ``--device`` value. ``host`` keeps IPv6 brackets off; ``port``/``serial`` are None when unset."""

    kind: DeviceKind
    user: str | None = None
    host: str | None = None
    port: int | None = None
    serial: str | None = None

    def __str__(self) -> str:
        if self.kind is DeviceKind.SSH:
            host = f"[{self.host}]" if ":" in (self.host or "") else self.host
            user = f"{self.user}@" if self.user else ""
            port = f":{self.port}" if self.port is not None else ""
            return f"ssh://{user}{host}{port}"
        if self.kind is DeviceKind.ADB:
            return f"adb:{self.serial}" if self.serial else "adb"
        return "local"

    @property
    def slug(self) -> str:
        """A file-name-safe form of the address, for ``results/<timestamp>-<slug>.json``."""
        text = str(self).replace("ssh://", "ssh-").replace("@", "-").replace(":", "-")
        return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")[:80] or "device"


def parse_device(text: str) -> DeviceAddress:
    """Parse a ``--device`` value.

    Raises:
        UsageError: for any other form, naming the allowed ones.
    """
    value = (text or "").strip()
    if value == "local":
        return DeviceAddress(DeviceKind.LOCAL)
    if value == "adb" or value.startswith("adb:"):
        serial = value[4:] or None
        if serial is not None and not _SERIAL.match(serial):
            raise UsageError(f"--device {text!r}: adb serial must be letters, digits and . _ : - "
                             "(as `adb devices` prints it)")
        return DeviceAddress(DeviceKind.ADB, serial=serial)
    if value.startswith("ssh://"):
        return _parse_ssh(text, value[len("ssh://"):])
    raise UsageError(f"--device {text!r} is not a device address; use {_FORMS}")


def _parse_ssh(text: str, rest: str) -> DeviceAddress:
    if not rest or "/" in rest:
        raise UsageError(f"--device {text!r}: write ssh://user@host[:port] (no path)")
    user, at, hostport = rest.rpartition("@")
    if at and not _USER.match(user):
        raise UsageError(f"--device {text!r}: user {user!r} must be letters, digits and . _ - (not starting with -)")
    host, port = _split_port(text, hostport)
    if not _HOST.match(host):
        raise UsageError(f"--device {text!r}: host {host!r} must be a host name or an IP address")
    return DeviceAddress(DeviceKind.SSH, user=user or None, host=host.strip("[]"), port=port)


def _split_port(text: str, hostport: str) -> tuple[str, int | None]:
    if hostport.startswith("["):  # [IPv6]:port
        end = hostport.find("]")
        host, tail = hostport[:end + 1], hostport[end + 1:]
        if end < 0 or (tail and not tail.startswith(":")):
            raise UsageError(f"--device {text!r}: write an IPv6 host as ssh://user@[::1]:22")
        port_text = tail[1:] if tail else None
    else:
        host, colon, port_text = hostport.partition(":")
        port_text = port_text if colon else None
    if port_text is None:
        return host, None
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise UsageError(f"--device {text!r}: port must be a number from 1 to 65535, got {port_text!r}")
    return host, int(port_text)


def run_on(address: DeviceAddress, bundle_dir, options, *, ssh=None, policy=None, timeout_s: float | None = None):
    """Benchmark ``bundle_dir`` on ``address`` with ``options`` (a ``BenchOptions``); the ``BenchResult``.

    Args:
        ssh: ``SshOptions`` for ssh addresses (default: from the ``EDGEOPT_SSH_*`` environment).
        policy: ``PollPolicy`` for remote devices; ``timeout_s`` overrides its whole-job timeout.
        timeout_s: wall-clock limit of the whole run (local default 600 s, remote 1800 s).
    """
    from pathlib import Path

    if address.kind is DeviceKind.LOCAL:
        from edgeopt.benchmark.local import run_local_options

        return run_local_options(Path(bundle_dir), options, timeout_s=timeout_s or 600)
    from dataclasses import replace

    from edgeopt.benchmark.remote import PollPolicy

    policy = policy or PollPolicy()
    if timeout_s is not None:
        policy = replace(policy, timeout_s=timeout_s)
    if address.kind is DeviceKind.SSH:
        from edgeopt.benchmark.ssh import SshOptions, run_ssh

        return run_ssh(Path(bundle_dir), address, options, ssh=ssh or SshOptions.from_env(), policy=policy)
    from edgeopt.benchmark.adb import run_adb

    return run_adb(Path(bundle_dir), address, options, policy=policy)
