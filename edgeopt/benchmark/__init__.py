"""Host side of benchmarking: run a bundle's device runner locally, over SSH or adb, and parse its JSON
result as untrusted input; compare it with the plan and store it with the bundle.

Imports only the standard library (``jsonschema`` is loaded when a result is validated).

(Named ``benchmark``, not ``bench``: ``edgeopt.bench`` is the public function, and a subpackage of that name
would replace it on the package as soon as it was imported.)
"""

from __future__ import annotations

from edgeopt.benchmark.compare import compare, format_comparison
from edgeopt.benchmark.device import DeviceAddress, DeviceKind, parse_device, run_on
from edgeopt.benchmark.job import BenchOptions
from edgeopt.benchmark.local import run_local
from edgeopt.benchmark.result import (
           BenchResult,
           format_table,
           load_schema,
           parse_result,
)
from edgeopt.benchmark.store import load_records, make_record, save_record

__all__ = ["BenchOptions", "BenchResult", "DeviceAddress", "DeviceKind", "compare", "format_comparison",
           "format_table", "load_records", "load_schema", "make_record", "parse_device", "parse_result", "run_local",
           "run_on", "save_record"]
