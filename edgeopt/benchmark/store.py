"""Results kept with the bundle: ``<bundle>/results/<UTC timestamp>-<device>.json``, one file per run.

A stored record is the ``--json`` output of ``edgeopt bench``::

    {"schema_version": 1,
     "device": {"address": "ssh://pi@board", "kind": "ssh", "description": {...the result's device block...}},
     "bundle": {"model": "...", "profile": "...", "artifact": "model.onnx", "runtime": "onnxruntime"},
     "result": {...the runner's JSON, result_schema.json...},
     "comparison": {...edgeopt.benchmark.compare...},
     "cost_inputs": {"precision": "int8", "stats": {...ModelStats...}, "profile": {...}}}

The report and profile calibration read them back with ``load_records`` (each ``result`` validated again:
a stored file is input like any other).
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edgeopt import jsonio
from edgeopt.benchmark.device import DeviceAddress
from edgeopt.benchmark.result import BenchResult
from edgeopt.errors import BundleError, DeviceError, InputFileError

RECORD_VERSION = 1
RESULTS_DIR = "results"


def make_record(result: BenchResult, address: DeviceAddress, manifest: dict[str, Any],
                comparison: dict[str, Any]) -> dict[str, Any]:
    """The stored (and ``--json``) form of one run."""
    return {
        "schema_version": RECORD_VERSION,
        "device": {"address": str(address), "kind": address.kind.value,
                   "description": result.raw.get("device")},
        "bundle": {"model": (manifest.get("model") or {}).get("name"),
                   "profile": (manifest.get("profile") or {}).get("name"),
                   "artifact": result.artifact_file, "runtime": result.runtime},
        "result": result.to_dict(),
        "comparison": comparison,
        "cost_inputs": _cost_inputs(result, manifest),
    }


def _cost_inputs(result: BenchResult, manifest: dict[str, Any]) -> dict[str, Any] | None:
    """What `edgeopt profiles calibrate` needs to predict this run: the artifact's precision, the model's
    statistics and the profile it was planned for (so a record calibrates without its bundle)."""
    entry = next((a for a in manifest.get("artifacts") or [] if isinstance(a, dict)
                  and a.get("file") == result.artifact_file), None)
    if entry is None or not isinstance(manifest.get("stats"), dict):
        return None
    return {"precision": entry.get("precision"), "stats": manifest["stats"], "profile": manifest.get("profile")}


def save_record(bundle_dir: Path, record: dict[str, Any], address: DeviceAddress) -> Path:
    """Write ``record`` to ``results/<timestamp>-<device>.json`` atomically; a clash gets a ``-2`` suffix.

    Raises:
        BundleError: the bundle folder is not writable (the message says how to skip storing).
    """
    folder = Path(bundle_dir) / RESULTS_DIR
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    try:
        folder.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".result-", suffix=".json", dir=folder)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=2)
            f.write("\n")
        for n in range(1, 1000):
            path = folder / f"{stamp}-{address.slug}{'' if n == 1 else f'-{n}'}.json"
            try:
                os.link(tmp, path)  # fails if the name is taken, unlike rename
                break
            except FileExistsError:
                continue
        os.unlink(tmp)
    except OSError as e:
        raise BundleError(f"{folder}: cannot store the result ({e.strerror or e}); make the bundle writable "
                          "or pass --no-save") from None
    return path


def load_records(bundle_dir: Path) -> list[dict[str, Any]]:
    """Every stored record of a bundle, oldest first, each ``result`` validated against the schema.

    Raises:
        InputFileError: a record that is not JSON or whose result does not validate (names the file).
    """
    records = []
    for path in sorted((Path(bundle_dir) / RESULTS_DIR).glob("*.json")):
        try:
            record = jsonio.load_file(path, where="", what="JSON")  # bounded: size, nesting
            BenchResult.from_dict(record["result"])
        except (OSError, ValueError, KeyError, TypeError, DeviceError) as e:
            raise InputFileError(f"{path}: not a stored edgeopt bench result ({e})") from None
        records.append(record)
    return records
