#!/bin/sh
# Build edgeopt's light ExecuTorch runner (runtimes/executorch/light.cpp) against the installed executorch wheel's
# C++ libraries: the runner then runs .pte encoders without importing torch. Optional: needs g++ (C++17);
# without the library the runner uses the torch-importing pybindings. Usage: scripts/build_et_light.sh [OUT.so]
set -e
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-"$here/.venv/bin/python"}
[ -x "$py" ] || py=python3
exec "$py" "$here/runtimes/executorch/backend.py" --build-light "$@"
