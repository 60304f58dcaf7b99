"""Bundle writing: atomic swap, lock, recovery after a kill, and a real kill mid-package."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeopt.bundle import BundleWriter
from edgeopt.errors import BundleError

EDGEOPT = [sys.executable, "-m", "edgeopt.cli"]


def _write(target: Path, content: str, *, force: bool = True) -> None:
    with BundleWriter(target, force=force) as w:
        (w.staging / "manifest.json").write_text(content)
        w.commit()


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_commit_replaces_and_leaves_nothing_behind(tmp_path):
    target = tmp_path / "b"
    _write(target, "one")
    _write(target, "two")
    assert (target / "manifest.json").read_text() == "two"
    assert _leftovers(tmp_path) == []


def test_failure_inside_keeps_the_previous_bundle(tmp_path):
    target = tmp_path / "b"
    _write(target, "one")
    with pytest.raises(RuntimeError):
        with BundleWriter(target, force=True) as w:
            (w.staging / "manifest.json").write_text("half")
            raise RuntimeError("crash mid-write")
    assert (target / "manifest.json").read_text() == "one"
    assert _leftovers(tmp_path) == []


def test_existing_bundle_needs_force(tmp_path):
    target = tmp_path / "b"
    _write(target, "one")
    with pytest.raises(BundleError, match="--force"):
        _write(target, "two", force=False)
    assert (target / "manifest.json").read_text() == "one"


def test_second_writer_fails_fast_on_the_lock(tmp_path):
    target = tmp_path / "b"
    with BundleWriter(target) as w:
        start = time.perf_counter()
        with pytest.raises(BundleError, match="another edgeopt is writing"):
            with BundleWriter(target):
                pass
        assert time.perf_counter() - start < 1.0
        w.commit()
    assert target.is_dir()


def test_next_run_restores_an_interrupted_swap_and_removes_staging(tmp_path):
    target = tmp_path / "b"
    _write(target, "one")
    # What a SIGKILL between the two renames of commit() leaves: the old bundle moved aside, a staging dir.
    os.rename(target, tmp_path / ".b.previous")
    (tmp_path / ".b.staging-99999").mkdir()
    with pytest.raises(BundleError, match="already there"):
        with BundleWriter(target, force=False):
            pass
    assert (target / "manifest.json").read_text() == "one"
    assert _leftovers(tmp_path) == []


def test_out_inside_the_input_is_refused(tmp_path):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    with pytest.raises(BundleError, match="overlaps the input"):
        with BundleWriter(model_dir / "dist" / "b", protected=(model_dir,)):
            pass
    assert list(model_dir.iterdir()) == []


def test_unwritable_out(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BundleError):
        with BundleWriter(blocker / "sub" / "b"):
            pass


def _tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def test_sigkill_mid_package_leaves_the_previous_bundle_intact(tiny_bert_dir, tmp_path):
    """Kill -9 `edgeopt package` as it reports each stage; the earlier bundle must stay byte-identical."""
    out = tmp_path / "dist"
    args = [*EDGEOPT, "package", "--profile", "desktop-cpu", "--model", str(tiny_bert_dir), "--out", str(out), "--force"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    bundle = out / "tiny-bert-desktop-cpu"
    before = _tree_hash(bundle)

    for stage in ("analyse:", "export:", "verify:", "bundle:"):
        proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if stage in line:
                proc.send_signal(signal.SIGKILL)
                break
        proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL, "".join(seen)
        assert _tree_hash(bundle) == before, f"bundle changed after a kill at {stage}"

    # The next run removes what the killed ones left, and succeeds.
    again = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert _leftovers(out) == []


def test_sigterm_exits_130_and_cleans_up(tiny_bert_dir, tmp_path):
    out = tmp_path / "dist"
    args = [*EDGEOPT, "package", "--profile", "desktop-cpu", "--model", str(tiny_bert_dir), "--out", str(out)]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    for line in proc.stderr:
        if "export:" in line:
            proc.send_signal(signal.SIGTERM)
            break
    proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert not (out / "tiny-bert-desktop-cpu").exists()
    assert _leftovers(out) == []
