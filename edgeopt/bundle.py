"""The bundle: ``dist/<model>-<profile>/``, written atomically.

Everything is written into a staging directory beside the target, then swapped into place: a crash or
a kill at any point leaves the previous bundle intact and no half-written one. Leftovers of a killed
run (staging or backup directories) are removed, or the backup restored, on the next run. A lock file
makes a second packager writing the same bundle fail fast instead of interleaving.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from edgeopt.errors import BundleError, ResourceError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Bundle:
    """A written bundle: its directory and its manifest."""

    path: Path
    manifest: dict

    @classmethod
    def open(cls, path: str | os.PathLike) -> "Bundle":
        from edgeopt.errors import InputFileError

        p = Path(path)
        mf = p / MANIFEST
        if not mf.is_file():
            raise InputFileError(f"{p}: not an edgeopt bundle (no {MANIFEST}); pass the folder `edgeopt package` wrote")
        try:
            manifest = json.loads(mf.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise InputFileError(f"{mf}: unreadable manifest ({e})") from None
        if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
            raise InputFileError(f"{mf}: unsupported manifest (schema_version must be {SCHEMA_VERSION})")
        return cls(p, manifest)


def bundle_dir(out: Path, model_name: str, profile_name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{model_name}-{profile_name}")
    return out / safe


class BundleWriter:
    """``with BundleWriter(target, force=...) as w: ... write into w.staging ...; w.commit()``."""

    def __init__(self, target: Path, *, force: bool = False, protected: tuple[Path, ...] = ()):
        self.target = Path(target).absolute()
        self.force = force
        self.protected = tuple(Path(p).resolve() for p in protected)
        self.staging = self.target.parent / f".{self.target.name}.staging-{os.getpid()}"
        self._backup = self.target.parent / f".{self.target.name}.previous"
        self._lock_path = self.target.parent / f".{self.target.name}.lock"
        self._lock_fd: int | None = None
        self._committed = False

    def __enter__(self) -> "BundleWriter":
        self._check_target()
        self._lock()
        self._recover()
        if self.target.exists() and not self.force:
            self._unlock()
            raise BundleError(f"{self.target}: a bundle is already there; pass --force to replace it")
        try:
            self.staging.mkdir()
        except OSError as e:
            self._unlock()
            raise _os_error(self.staging, e) from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._committed:
            shutil.rmtree(self.staging, ignore_errors=True)
        self._unlock()
        if isinstance(exc, OSError) and exc.errno in _FULL:
            # A converter or numpy writing into the staging folder ran out of disk: one clear line, exit 6.
            where = Path(exc.filename) if exc.filename else self.target
            raise _os_error(where, exc) from None

    def commit(self) -> None:
        """Swap the staging directory into place (the previous bundle is kept until the swap is done)."""
        _fsync_tree(self.staging)
        if self.target.exists():
            os.rename(self.target, self._backup)
        os.rename(self.staging, self.target)
        self._committed = True
        shutil.rmtree(self._backup, ignore_errors=True)
        _fsync_dir(self.target.parent)

    def _check_target(self) -> None:
        resolved = self.target.resolve()
        for p in self.protected:
            if resolved == p or p in resolved.parents or resolved in p.parents:
                raise BundleError(f"--out {self.target} overlaps the input {p}; choose another output folder")
        parent = self.target.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise _os_error(parent, e) from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise BundleError(f"{parent}: output folder is not writable; pass --out to a folder you can write")
        if self.target.exists() and not self.target.is_dir():
            raise BundleError(f"{self.target}: exists and is not a folder; remove it or choose another --out")

    def _lock(self) -> None:
        import fcntl

        fd = os.open(self._lock_path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise BundleError(f"{self.target}: another edgeopt is writing this bundle now (lock {self._lock_path})") from None
        self._lock_fd = fd

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
            try:
                self._lock_path.unlink()
            except OSError:
                pass

    def _recover(self) -> None:
        """Remove what a killed run left: staging folders; restore a backup whose swap was interrupted."""
        for stale in self.target.parent.glob(f".{self.target.name}.staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if self._backup.exists():
            if self.target.exists():
                shutil.rmtree(self._backup, ignore_errors=True)
            else:
                os.rename(self._backup, self.target)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


RESULTS_DIR = "results"  # bench results stored after packaging; not part of what the manifest hashes


def file_hashes(root: Path) -> dict[str, str]:
    """sha256 of every packaged file under ``root`` (not the manifest, not results/), by relative POSIX path."""
    hashes = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and p.name != MANIFEST and "__pycache__" not in rel.parts and rel.parts[0] != RESULTS_DIR:
            hashes[rel.as_posix()] = sha256_file(p)
    return hashes


def write_json(path: Path, data: dict) -> None:
    try:
        path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    except OSError as e:
        raise _os_error(path, e) from None


def _fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # disk full, quota exceeded, file-size limit (ulimit -f)


def _os_error(path: Path, e: OSError) -> Exception:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return ResourceError(f"{path}: no space left on the device; free some space or pass --out elsewhere")
    if e.errno == errno.EFBIG:
        return ResourceError(f"{path}: file too large for this file system or for the file-size limit (ulimit -f); "
                             "raise the limit or pass --out elsewhere")
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return BundleError(f"{path}: not writable ({e.strerror}); pass --out to a folder you can write")
    return BundleError(f"{path}: {e.strerror or e}")
