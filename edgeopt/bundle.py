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
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_FILES = 10_000  # a bundle holds tens of files; a manifest listing more is not one edgeopt wrote
_SHA256_HEX = frozenset("0123456789abcdef")


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
        manifest = load_manifest_file(mf)
        if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
            raise InputFileError(f"{mf}: unsupported manifest (schema_version must be {SCHEMA_VERSION})")
        return cls(p, manifest)


def load_manifest_file(path: Path) -> object:
    """``manifest.json`` parsed with the bounded reader (size and nesting capped).

    Raises:
        InputFileError: unreadable, too large, too deep or not JSON (exit 3), naming the file.
    """
    from edgeopt import jsonio

    return jsonio.load_file(path, what="bundle manifest", max_bytes=MAX_MANIFEST_BYTES,
                            fix="rebuild the bundle with `edgeopt package`")


def bundle_dir(out: Path, model_name: str, profile_name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in f"{model_name}-{profile_name}")
    return out / safe


def check_out_dir(out: Path) -> None:
    """Check an output folder before any work: it is a folder (or can become one) and a file can be written
    there. Creates nothing that stays (a probe file is written and removed in the nearest existing folder).

    Raises:
        BundleError: a file is in the way, or the folder is not writable (exit 2).
        ResourceError: no space left there (exit 6).
    """
    import tempfile

    out = Path(out).absolute()
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() and existing == out:
        raise BundleError(f"{out}: exists and is not a folder; remove it or choose another --out")
    if not existing.is_dir():
        raise BundleError(f"--out {out}: {existing} is a file, not a folder; choose another --out")
    try:
        fd, probe = tempfile.mkstemp(prefix=".edgeopt-write-check-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        if e.errno in _FULL:
            raise _os_error(existing, e) from None
        raise BundleError(f"{existing}: output folder is not writable ({e.strerror or e}); pass --out to a folder "
                          "you can write") from None


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
    """sha256 of every packaged file under ``root`` by relative POSIX path: exactly the files ``verify_files``
    checks (not the manifest, results/ or byte code)."""
    return {name: sha256_file(path) for name, path in sorted(bundle_files(Path(root)).items())}


def _never_copied(parts: tuple[str, ...]) -> bool:
    """Paths no device ever gets (``stage_bundle`` leaves them out) and the runner never loads: the manifest,
    stored results, Python byte code caches."""
    return (parts == (MANIFEST,) or parts[0] == RESULTS_DIR or "__pycache__" in parts
            or parts[-1].endswith(".pyc"))


def listed_name_problem(name: object) -> str | None:
    """Why ``name`` (a key of the manifest's ``files``) is not a safe bundle path, or None when it is."""
    if not isinstance(name, str) or not name or len(name) > 1000:
        return "is not a file name"
    if name.startswith("/") or "\\" in name or (len(name) > 1 and name[1] == ":"):
        return "is an absolute path; the manifest names files inside the bundle only"
    parts = name.split("/")
    if ".." in parts:
        return "climbs out of the bundle with '..'; the manifest names files inside the bundle only"
    if any(p in ("", ".") for p in parts) or any(ord(c) < 32 for c in name):
        return "is not a plain relative path (empty or '.' parts, control characters)"
    if _never_copied(tuple(parts)):
        return "names a file a bundle never lists (the manifest, results/, byte code)"
    return None


def verify_files(root: Path, manifest: dict) -> None:
    """Check every file of the bundle at ``root`` against the manifest's ``files`` before any of it is copied
    or run: each listed name is a plain path inside the bundle whose sha256 matches, and every file present
    is listed. A symlink is followed only to a file inside the bundle.

    Skipped (never copied to a device, never loaded by the runner): ``manifest.json``, ``results/``,
    ``__pycache__/`` and ``*.pyc``.

    Raises:
        InputFileError: exit 3, naming the file: no ``files``, a bad name, a missing, unlisted or changed file,
            a symlink that leaves the bundle.
    """
    from edgeopt.errors import InputFileError

    root = Path(root)
    listed = manifest.get("files") if isinstance(manifest, dict) else None
    where = root / MANIFEST
    if not isinstance(listed, dict) or not listed:
        raise InputFileError(f"{where}: lists no 'files' (the sha256 of every bundle file), so nothing of it can be "
                             "verified; not benchmarked (rebuild the bundle with `edgeopt package`)")
    if len(listed) > MAX_FILES:
        raise InputFileError(f"{where}: 'files' lists {len(listed)} files, more than the {MAX_FILES} a bundle holds")
    for name, digest in listed.items():
        problem = listed_name_problem(name)
        if problem:
            raise InputFileError(f"{where}: files entry {name!r} {problem}; not benchmarked")
        if not isinstance(digest, str) or len(digest) != 64 or not set(digest) <= _SHA256_HEX:
            raise InputFileError(f"{where}: files[{name!r}] must be a sha256 (64 lowercase hex digits); "
                                 "not benchmarked")
    present = bundle_files(root)
    unlisted = sorted(set(present) - set(listed))
    if unlisted:
        raise InputFileError(f"{root / unlisted[0]}: not listed in the manifest's files, so it was not verified; "
                             f"not benchmarked (remove it, or rebuild the bundle){_more(unlisted)}")
    for name in sorted(listed):
        if name not in present:
            raise InputFileError(f"{root / name}: listed in the manifest but missing; not benchmarked "
                                 "(copy the whole bundle folder, or rebuild it)")
        actual = sha256_file(present[name])
        if actual != listed[name]:
            raise InputFileError(f"{root / name}: sha256 mismatch: manifest {listed[name]}, file {actual}; not "
                                 "benchmarked (the file changed after packaging: rebuild the bundle)")


def bundle_files(root: Path) -> dict[str, Path]:
    """Every file under ``root`` a device would get, by relative POSIX path (``_never_copied`` ones left out).

    Raises:
        InputFileError: a symlink that points outside the bundle, or to a folder, or a special file.
    """
    from edgeopt.errors import InputFileError

    real_root = os.path.realpath(root)
    found: dict[str, Path] = {}
    for folder, dirs, names in os.walk(root, followlinks=False):
        rel_folder = Path(folder).relative_to(root).parts
        for name in sorted(dirs + names):
            path = Path(folder) / name
            parts = (*rel_folder, name)
            if _never_copied(parts):
                if name in dirs:
                    dirs.remove(name)
                continue
            if path.is_symlink():
                target = os.path.realpath(path)
                if os.path.commonpath([real_root, target]) != real_root:
                    raise InputFileError(f"{path}: symlink to {target}, outside the bundle; not benchmarked "
                                         "(a bundle holds its own files: replace the link by the file)")
                if not os.path.isfile(target):
                    raise InputFileError(f"{path}: symlink to a folder, a missing file or a special file; not "
                                         "benchmarked (a bundle holds plain files)")
            if name in dirs:
                continue
            if not path.is_file():
                raise InputFileError(f"{path}: not a regular file (a device, FIFO or socket); not benchmarked")
            found["/".join(parts)] = path
    return found


def _more(names: list[str]) -> str:
    return f"; {len(names) - 1} more unlisted: {', '.join(names[1:6])}" if len(names) > 1 else ""


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
