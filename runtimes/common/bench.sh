#!/bin/sh
# Benchmark this edgeopt bundle on this device; prints one JSON result on stdout (logs on stderr).
#
# usage: sh bench.sh [--runtime NAME | --artifact FILE] [--threads N] [--cores 4,5,6,7]
#                    [--warmup 10] [--runs 100] [--min-seconds 5] [--repeats 3] [--out result.json]
#        PYTHON=/path/to/python3 sh bench.sh ...     (default: python3, else python)
#        python3 runner/common/runner.py --help      (every flag and threshold)
# Needs Python 3.9+, numpy and the artifact's runtime (e.g. pip install onnxruntime).
# Exit codes: 0 measured (read "valid") · 2 bad flags · 3 artifact missing or failing its sha256
#             · 4 Python, numpy or the runtime not installed, or the runtime cannot run the artifact.
# A relative --out path is relative to this bundle folder.
cd "$(dirname "$0")" || exit 3
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if command -v python3 >/dev/null 2>&1; then
        PY=python3
    elif command -v python >/dev/null 2>&1; then
        PY=python
    else
        echo "bench.sh: no python3 on this device; install Python 3.9+ or set PYTHON=/path/to/python3" >&2
        exit 4
    fi
fi
exec "$PY" runner/common/runner.py --bundle . "$@"
