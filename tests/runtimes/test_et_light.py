"""The light ExecuTorch runner (runtimes/executorch/light.cpp via ctypes): built against the executorch wheel's C++
libraries, it runs a real XNNPACK-lowered .pte without torch in the process, bit-identical to the pybindings."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
BACKEND = ROOT / "runtimes" / "executorch" / "backend.py"

pytest.importorskip("executorch", reason="pip install executorch")
if shutil.which("g++") is None:
    pytest.skip("the light runner needs g++ (apt-get install g++)", allow_module_level=True)

# Runs in a fresh interpreter: loads the backend by path, runs the .pte, reports outputs, threads, peak RSS and
# whether torch was imported.
PROBE = r"""
import importlib.util, json, re, sys
import numpy as np
spec = importlib.util.spec_from_file_location("backend", sys.argv[1])
backend = importlib.util.module_from_spec(spec); spec.loader.exec_module(backend)
version = backend.version()
model = backend.load(sys.argv[2], 2)
x = np.load(sys.argv[3])
out = model.run({"x": x})
np.save(sys.argv[4], out[0])
hwm = int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024
print(json.dumps({"runner": model.runner, "threads": model.threads, "torch": "torch" in sys.modules,
                  "peak_rss_mb": hwm, "version": version, "outputs": len(out)}))
"""


@pytest.fixture(scope="module")
def light(tmp_path_factory):
    """(light library, .pte, input .npy) for a small XNNPACK-lowered MLP."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    root = tmp_path_factory.mktemp("etlight")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 32)).eval()
    x = torch.randn(4, 64)
    program = to_edge_transform_and_lower(torch.export.export(model, (x,)),
                                          partitioner=[XnnpackPartitioner()]).to_executorch()
    pte = root / "mlp.pte"
    pte.write_bytes(program.buffer)
    np.save(root / "x.npy", x.numpy())
    lib = subprocess.run([sys.executable, str(BACKEND), "--build-light", str(root / "libedgeopt_et_light.so")],
                         capture_output=True, text=True, timeout=300)
    assert lib.returncode == 0, lib.stderr
    return Path(lib.stdout.strip()), pte, root / "x.npy"


def probe(tmp_path, lib, pte, x, runner):
    env = dict(os.environ, EDGEOPT_ET_LIGHT_LIB=str(lib), EDGEOPT_ET_RUNNER=runner)
    out = tmp_path / ("%s.npy" % runner)
    proc = subprocess.run([sys.executable, "-c", PROBE, str(BACKEND), str(pte), str(x), str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1]), np.load(out)


def test_light_runner_matches_pybindings_without_torch(light, tmp_path):
    lib, pte, x = light
    lite, lite_out = probe(tmp_path, lib, pte, x, "auto")
    full, full_out = probe(tmp_path, lib, pte, x, "pybindings")
    assert (lite["runner"], full["runner"]) == ("light", "pybindings")
    assert lite["torch"] is False and full["torch"] is True
    assert lite["threads"] == full["threads"] == 2
    assert lite["version"] == full["version"]
    assert lite_out.shape == (4, 32)
    np.testing.assert_array_equal(lite_out, full_out)  # the same kernels: bit-identical
    # torch alone is ~300 MB; the light process holds python + numpy + the ExecuTorch libraries
    assert lite["peak_rss_mb"] < 80, lite
    assert full["peak_rss_mb"] - lite["peak_rss_mb"] > 200, (lite, full)


def test_missing_library_falls_back_to_pybindings(light, tmp_path):
    _, pte, x = light
    result, out = probe(tmp_path, tmp_path / "absent.so", pte, x, "auto")
    assert result["runner"] == "pybindings" and result["torch"] is True
    assert out.shape == (4, 32)
