"""Wall time of a 2-model x 4-profile sweep (tiny BERTs, onnx): sequential (--jobs 1) vs the local pool vs a
loopback Ray cluster (head + one worker node, 1 CPU each), and the per-cell overhead Ray adds.

    .venv/bin/python benchmarks/bench_sweep.py [--keep DIR]

Each run builds into a fresh folder (nothing skipped). Ray's overhead per cell is (Ray wall - local pool wall)
x workers / cells, both at 2 cells at once, plus the cluster start, shown apart.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

PROFILES = ["desktop-cpu", "embedded-board", "arm-mobile", "server-gpu"]


def _sweep(spec: Path, out: Path, *extra: str) -> tuple[float, dict]:
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "edgeopt.cli", "sweep", str(spec), "--out", str(out), "--json",
                           "--no-bench", *extra], capture_output=True, text=True, check=False,
                          env={**__import__("os").environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    wall = time.monotonic() - t
    if proc.returncode != 0:
        raise SystemExit(f"sweep {extra} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return wall, json.loads(proc.stdout[proc.stdout.index("{\n"):])


def main() -> None:
    import yaml
    from conftest import make_tiny_bert
    from test_sweep import _ray_node, _stop_nodes, _wait_nodes, _free_port

    root = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    make_tiny_bert(root / "tiny-bert")
    make_tiny_bert(root / "tiny-bert-1layer", seed=1, layers=1)
    spec = root / "sweep.yaml"
    spec.write_text(yaml.safe_dump({"models": ["tiny-bert", "tiny-bert-1layer"], "profiles": PROFILES,
                                    "formats": ["onnx"], "recover_seconds": 0, "report": None}))
    rows = []
    wall, res = _sweep(spec, root / "seq", "--jobs", "1")
    rows.append(("sequential (--jobs 1)", wall, res))
    wall, res = _sweep(spec, root / "pool", "--jobs", "2")
    rows.append(("local pool (2 workers)", wall, res))
    temp = Path(tempfile.mkdtemp(prefix="eo-ray-", dir="/tmp"))
    port = _free_port()
    t = time.monotonic()
    nodes = [_ray_node(["--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", str(temp)],
                       temp / "head.log")]
    try:
        _wait_nodes(f"127.0.0.1:{port}", 1, temp, nodes)
        nodes.append(_ray_node(["--address", f"127.0.0.1:{port}"], temp / "worker.log"))
        _wait_nodes(f"127.0.0.1:{port}", 2, temp, nodes)
        start_s = time.monotonic() - t
        wall, res = _sweep(spec, root / "ray", "--ray", f"127.0.0.1:{port}")
        rows.append(("Ray, 2 nodes x 1 CPU", wall, res))
    finally:
        _stop_nodes(nodes)
    cells = len(rows[0][2]["cells"])
    print(f"{'runner':<26} {'wall s':>8} {'sum of cell s':>14} {'cells ok':>9}")
    for name, wall, res in rows:
        ok = sum(c["status"] == "ok" for c in res["cells"])
        print(f"{name:<26} {wall:>8.1f} {sum(c['seconds'] for c in res['cells']):>14.1f} {ok:>5}/{cells}")
    pool, ray = rows[1][1], rows[2][1]
    print(f"Ray cluster start (2 nodes): {start_s:.1f} s; Ray overhead per cell vs the local pool: "
          f"{(ray - pool) * 2 / cells:+.2f} s (connect + task dispatch, same 2 cells at once)")


if __name__ == "__main__":
    main()
