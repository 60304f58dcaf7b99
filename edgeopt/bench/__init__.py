"""Host side of benchmarking: run a bundle's device runner and parse its JSON result as untrusted input.

Imports only the standard library (``jsonschema`` is loaded when a result is validated).
"""

from __future__ import annotations

from edgeopt.bench.local import run_local
from edgeopt.bench.result import BenchResult, format_table, load_schema, parse_result

__all__ = ["BenchResult", "format_table", "load_schema", "parse_result", "run_local"]
