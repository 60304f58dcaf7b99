"""edgeopt bench over adb, through tests/bench/fake_adb (no phone can be attached here).

The stand-in reproduces what the adb transport must survive: `adb shell` that always exits 0, CRLF line
ends, device states (offline, unauthorized, no permissions), several devices and `-s`, a device that goes
offline mid-run (and one that comes back). The runner, onnxruntime and the bundle are real; the "device"
is a folder here (FAKE_ADB_ROOT) and its Python is this interpreter, or a stand-in where the device must
print something broken.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
import stat
import sys
import time
from pathlib import Path

import pytest

from edgeopt.benchmark import BenchOptions, parse_device, parse_result
from edgeopt.benchmark.adb import list_devices, run_adb, select_device
from edgeopt.benchmark.remote import PollPolicy
from edgeopt.cli import main
from edgeopt.errors import DeviceError, UnsupportedError

FAKE_ADB = Path(__file__).resolve().parent / "fake_adb"
_RUNNER_TESTS = Path(__file__).resolve().parents[1] / "runtimes" / "test_runner.py"
FAST = {"runs": 5, "min_seconds": 0.05, "repeats": 2, "warmup": 1, "threads": 1, "cooldown_s": 0.0}
FAST_FLAGS = ["--runs", "5", "--min-seconds", "0.05", "--repeats", "2", "--warmup", "1", "--threads", "1"]
QUICK = PollPolicy(timeout_s=120, reconnect_s=30, interval_s=0.05, max_interval_s=0.2)


def _runner_tests():
    """tests/runtimes/test_runner.py as pytest imported it (its one torch export is shared), else by path."""
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) and Path(module.__file__).resolve() == _RUNNER_TESTS:
            return module
    spec = importlib.util.spec_from_file_location("edgeopt_tests_runner_bundles", _RUNNER_TESTS)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # found again by the loop above: one torch export per session
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return _runner_tests().tiny_bundle(tmp_path_factory)


@pytest.fixture
def device(tmp_path, monkeypatch) -> Path:
    """The fake device's root, with the stand-in `adb` first on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    adb = bin_dir / "adb"
    adb.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_ADB}" "$@"\n')
    adb.chmod(adb.stat().st_mode | stat.S_IXUSR)
    root = tmp_path / "device"
    (root / "data" / "local" / "tmp").mkdir(parents=True)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.delenv("EDGEOPT_ADB", raising=False)
    monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
    monkeypatch.setenv("FAKE_ADB_LOG", str(tmp_path / "adb.log"))
    for name in ("FAKE_ADB_DEVICES", "FAKE_ADB_OFFLINE_AFTER", "FAKE_ADB_OFFLINE_FOR", "FAKE_ADB_CRLF"):
        monkeypatch.delenv(name, raising=False)
    return root


def calls(device: Path) -> list[list[str]]:
    return [json.loads(line) for line in (device.parent / "adb.log").read_text().splitlines()]


def jobs(device: Path) -> list[Path]:
    return sorted((device / "data" / "local" / "tmp").glob("edgeopt-*"))


def device_python(tmp_path: Path, body: str) -> str:
    """A stand-in for the device's python3, for a device that prints something broken."""
    path = tmp_path / "device-python3"
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_adb_end_to_end_through_crlf_and_swallowed_status(bundle, device, monkeypatch):
    monkeypatch.setenv("FAKE_ADB_CRLF", "1")
    result = run_adb(bundle, parse_device("adb"), BenchOptions(python=sys.executable, **FAST), policy=QUICK)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert result.verified and result.artifact_sha256 == manifest["artifacts"][0]["sha256"]
    assert result.parity["samples"] == 4 and result.parity["min_cosine"] > 0.9999
    assert result.raw["timed_runs"] >= 10 and 0 < result.latency_ms["p50"] <= result.latency_ms["p99"]
    log = calls(device)
    assert log[0] == ["devices"]
    assert all(c[:2] == ["-s", "emulator-5554"] for c in log[1:])
    push = next(c for c in log[1:] if c[2] == "push")
    assert push[4].startswith("/data/local/tmp/edgeopt-") and push[4].endswith("/")
    assert any(c[2] == "pull" and c[3].endswith("/out") for c in log[1:])
    assert jobs(device) == []  # cleaned up


def test_runner_exit_status_comes_from_the_sentinel_not_from_adb(bundle, device, tmp_path):
    # adb shell exits 0 here whatever happens; the runner's exit 4 must still be seen.
    code = ("import runpy, sys; sys.modules['onnxruntime'] = None; sys.argv = sys.argv[1:]; "
            "runpy.run_path(sys.argv[0], run_name='__main__')")
    no_ort = device_python(tmp_path, f"exec '{sys.executable}' -c \"{code}\" \"$@\"")
    with pytest.raises(UnsupportedError, match=r"adb:emulator-5554: runner exited 4: .*pip install onnxruntime"):
        run_adb(bundle, parse_device("adb"), BenchOptions(python=no_ort, **FAST), policy=QUICK)
    crash = device_python(tmp_path, "echo 'Illegal instruction' >&2; exit 132")
    with pytest.raises(DeviceError, match=r"adb:emulator-5554: runner exited 132: Illegal instruction"):
        run_adb(bundle, parse_device("adb"), BenchOptions(python=crash, **FAST), policy=QUICK)
    assert jobs(device) == []


@pytest.mark.parametrize("listing, serial, message", [
    ("R58M123ABC:unauthorized", None, ("adb: device R58M123ABC is unauthorized: unlock it and accept the "
                                       "'Allow USB debugging?' prompt")),
    ("emulator-5554:offline", None, "adb: device emulator-5554 is offline: reconnect the cable, or run `adb reconnect`"),
    ("0123ABCD:no permissions (missing udev rules? user is in the plugdev group)", None,
     "adb: device 0123ABCD cannot be opened (no permissions): add a udev rule"),
    ("", None, "adb: no device attached (adb devices lists none)"),
    ("emulator-5554:device,R58M123ABC:device", None,
     ("adb: more than one device attached (emulator-5554 (device), R58M123ABC (device)); pick one with --device "
      "adb:SERIAL")),
    ("emulator-5554:device", "R58M123ABC", ("adb: no device 'R58M123ABC' is attached (adb devices lists: "
                                            "emulator-5554 (device))")),
])
def test_device_states_are_clear_exit_7_errors(bundle, device, monkeypatch, capsys, listing, serial, message):
    monkeypatch.setenv("FAKE_ADB_DEVICES", listing)
    where = f"adb:{serial}" if serial else "adb"
    code = main(["bench", str(bundle), "--device", where, "--no-save", *FAST_FLAGS])
    said = capsys.readouterr().err
    assert code == 7 and message in said, said
    assert all(c == ["devices"] for c in calls(device))  # nothing was pushed or run


def test_serial_selects_one_of_several_devices(bundle, device, monkeypatch, capsys):
    monkeypatch.setenv("FAKE_ADB_DEVICES", "emulator-5554:offline,R58M123ABC:device,ZX1G22:unauthorized")
    assert [(d.serial, d.state) for d in list_devices("adb")] == [
        ("emulator-5554", "offline"), ("R58M123ABC", "device"), ("ZX1G22", "unauthorized")]
    assert select_device(list_devices("adb"), "R58M123ABC") == "R58M123ABC"
    code = main(["bench", str(bundle), "--device", "adb:R58M123ABC", "--python", sys.executable, "--json",
                 "--no-save", *FAST_FLAGS])
    out = capsys.readouterr().out
    assert code == 0
    record = json.loads(out)
    assert record["device"] == {"address": "adb:R58M123ABC", "kind": "adb", "description": record["result"]["device"]}
    assert parse_result(json.dumps(record["result"])).parity["min_cosine"] > 0.9999
    device_calls = [c for c in calls(device) if c != ["devices"]]
    assert device_calls and all(c[:2] == ["-s", "R58M123ABC"] for c in device_calls)


def test_offline_mid_run_is_exit_7_and_the_job_survives(bundle, device, monkeypatch):
    # Commands: mkdir, push, launch; from the first status poll on, the device is offline for good.
    monkeypatch.setenv("FAKE_ADB_OFFLINE_AFTER", "3")
    policy = PollPolicy(timeout_s=60, reconnect_s=0.5, interval_s=0.05, max_interval_s=0.1)
    with pytest.raises(DeviceError, match=r"adb:emulator-5554: lost the connection during the run and could not "
                                          r"reconnect for 0.5 s \(adb:emulator-5554: the device is offline.*"
                                          r"error: device offline\).*may still be running on the device in "
                                          r"/data/local/tmp/edgeopt-"):
        run_adb(bundle, parse_device("adb"), BenchOptions(python=sys.executable, **FAST), policy=policy)
    [job] = jobs(device)
    deadline = time.monotonic() + 60
    while not (job / "rc").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert (job / "rc").read_text().strip() == "0"  # the run went on without the host
    assert parse_result((job / "out").read_bytes()).verified


def test_offline_mid_run_then_back_gets_the_result(bundle, device, monkeypatch, caplog):
    monkeypatch.setenv("FAKE_ADB_OFFLINE_AFTER", "3")
    monkeypatch.setenv("FAKE_ADB_OFFLINE_FOR", "3")  # three failed polls, then the cable is back
    caplog.set_level(logging.WARNING, logger="edgeopt.benchmark.remote")
    result = run_adb(bundle, parse_device("adb"), BenchOptions(python=sys.executable, **FAST), policy=QUICK)
    assert result.verified and result.parity["min_cosine"] > 0.9999
    retries = [r.getMessage() for r in caplog.records if "poll failed, retrying" in r.getMessage()]
    assert len(retries) == 3 and all("error: device offline" in m for m in retries)
    assert jobs(device) == []


def _result_like() -> dict:
    """A result of the runner's shape (what a broken device is made to print)."""
    return {
        "schema_version": 1, "runtime": {"name": "onnxruntime", "version": "1.31.1"},
        "device": {"machine": "aarch64", "cpu": None, "cores": 8, "ram_mb": 7700, "os": "Linux", "python": "3.9.18"},
        "config": {"threads": 1, "warmup": 1, "runs": 5, "min_seconds": 0.05, "repeats": 2, "cores": None},
        "artifact": {"file": "model.onnx", "sha256": "ab" * 32, "verified": True},
        "load_ms": 1.0, "first_inference_ms": 1.0,
        "latency_ms": {"mean": 1.0, "std": 0.1, "min": 0.9, "p50": 1.0, "p90": 1.1, "p99": 1.2, "max": 1.3},
        "repeats_p90_ms": [1.1, 1.1], "timed_runs": 10, "peak_rss_mb": 50.0,
        "thermal_c": {"before": None, "after": None}, "cpu_freq_mhz": {"before": None, "after": None},
        "valid": True, "invalid_reason": None,
        "parity": {"reference": "fp32", "max_abs_err": 0.0, "min_cosine": 1.0, "mean_cosine": 1.0,
                   "host_max_abs_err": 0.0, "samples": 4},
        "timestamp": "2026-01-02T03:04:05+00:00",
    }


def _wrong_types() -> str:
    data = copy.deepcopy(_result_like())
    data["latency_ms"]["p50"] = "fast"
    return json.dumps(data)


@pytest.mark.parametrize("name, printed, message", [
    ("truncated", json.dumps(_result_like())[:300], "bench result is truncated JSON"),
    ("oversized", json.dumps(_result_like()) + " " * 1_200_000,
     "the result on the device is larger than 1000000 bytes"),
    ("wrong types", _wrong_types(),
     "bench result does not match the runner schema at latency_ms.p50: 'fast' is not of type 'number'"),
])
def test_untrusted_results_from_the_device_are_exit_7(bundle, device, tmp_path, capsys, name, printed, message):
    (tmp_path / "printed.json").write_text(printed)
    python = device_python(tmp_path, f"cat '{tmp_path / 'printed.json'}'")
    code = main(["bench", str(bundle), "--device", "adb", "--python", python, *FAST_FLAGS])
    out, err = capsys.readouterr()
    assert code == 7 and f"error: adb:emulator-5554: {message}" in err, err
    assert out == "" and not (bundle / "results").exists()  # no number printed, nothing stored
    assert jobs(device) == []


def test_adb_missing_is_exit_7(bundle, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))  # no adb anywhere
    monkeypatch.delenv("EDGEOPT_ADB", raising=False)
    code = main(["bench", str(bundle), "--device", "adb", *FAST_FLAGS])
    assert code == 7 and "adb is not installed here" in capsys.readouterr().err
