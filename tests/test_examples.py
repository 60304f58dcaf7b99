"""Every example runs (on a tiny model, so the suite stays fast)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_python_api_example(tiny_bert_dir, tmp_path):
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "python_api.py"), str(tiny_bert_dir), "--out",
                           str(tmp_path), "--profile", "desktop-cpu"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "profile desktop-cpu" in out
    assert "mean cosine" in out and "host latency p50" in out
    assert (tmp_path / "tiny-bert-desktop-cpu" / "manifest.json").is_file()
    cos = float(out.split("parity min cosine ")[1].split()[0])
    assert cos > 0.99
