"""What every transport shares: the benchmark options, the artifact checked before it leaves this machine,
the command line for ``bench.sh``, and the mapping of the device's exit status and output to a result or error."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import math
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeopt.benchmark.result import BenchResult, parse_result
from edgeopt.errors import DeviceError, InputFileError, UnsupportedError, UsageError

FORMAT_RUNTIMES = {"onnx": "onnxruntime", "pte": "executorch", "tflite": "litert"}
STDERR_TAIL_CHARS = 2000
MAX_NATIVE_BYTES = 4_000_000  # bench.sh --native bounds what it prints (tool log tail + per-run lines)
# Never copied to a device: earlier results, and byte code compiled for this machine's Python.
STAGE_IGNORE = ("__pycache__", "*.pyc", "results")


@dataclass(frozen=True)
class BenchOptions:
    """How to run the benchmark; the runner's flags (``runner.py --help``) plus where the interpreter or a
    native benchmark binary lives on the device."""

    runs: int = 100
    min_seconds: float = 5.0
    warmup: int = 10
    repeats: int = 3
    threads: int | None = None
    cores: tuple[int, ...] | None = None
    cooldown_s: float = 1.0
    runtime: str | None = None
    native: str | None = None
    python: str | None = None

    def __post_init__(self) -> None:
        checks = [("runs", self.runs, 1), ("warmup", self.warmup, 0), ("repeats", self.repeats, 1)]
        for name, value, low in checks:
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"bench {name} must be a whole number >= {low}, got {value!r}")
        for name, value in (("min_seconds", self.min_seconds), ("cooldown_s", self.cooldown_s)):
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise UsageError(f"bench {name} must be a finite number >= 0, got {value!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise UsageError(f"bench threads must be a whole number >= 1, got {self.threads!r}")
        if self.cores is not None and (not self.cores or any(not isinstance(c, int) or c < 0 for c in self.cores)):
            raise UsageError(f"bench cores must be CPU ids >= 0, e.g. 4,5,6,7; got {self.cores!r}")
        for name, value in (("native", self.native), ("python", self.python)):
            # Paths go to the device's shell quoted, but a newline would still end the command there.
            if value is not None and (not value or any(c in value for c in "\n\r\0")):
                raise UsageError(f"bench {name} must be a path on the device, got {value!r}")


@dataclass(frozen=True)
class Artifact:
    """The manifest entry that is benchmarked, after its sha256 was checked on this machine."""

    file: str
    runtime: str
    sha256: str


def verified_artifact(bundle_dir: Path, runtime: str | None) -> Artifact:
    """The artifact to benchmark (the first, or the first for ``runtime``), after every file of the bundle was
    checked here against the manifest's ``files`` (``edgeopt.bundle.verify_files``): nothing unverified is
    copied to a device or run, and a mismatch found there can only mean the copy changed on the way.

    Raises:
        InputFileError: unreadable or hostile manifest, an artifact path outside the bundle, a missing,
            unlisted or changed file, a symlink leaving the bundle, no bench.sh (exit 3, naming the file).
        UsageError: ``runtime`` names no artifact of the bundle.
    """
    from edgeopt.bundle import load_manifest_file, verify_files

    manifest_path = bundle_dir / "manifest.json"
    if not manifest_path.is_file():
        raise InputFileError(f"{bundle_dir}: not an edgeopt bundle (no manifest.json); pass the folder "
                             "`edgeopt package` wrote")
    manifest = load_manifest_file(manifest_path)
    try:
        entries = [Artifact(a["file"], a.get("runtime") or FORMAT_RUNTIMES.get(a.get("format"), ""), a["sha256"])
                   for a in manifest["artifacts"]]
    except (KeyError, TypeError, AttributeError) as e:
        raise InputFileError(f"{manifest_path}: not a readable bundle manifest ({type(e).__name__}: {e}); "
                             "rebuild the bundle with `edgeopt package`") from None
    if not entries:
        raise InputFileError(f"{manifest_path}: lists no artifacts; rebuild the bundle with `edgeopt package`")
    chosen = [e for e in entries if runtime is None or e.runtime == runtime]
    if not chosen:
        have = ", ".join(sorted({e.runtime for e in entries}))
        raise UsageError(f"bundle {bundle_dir} has no artifact for runtime '{runtime}'; it has: {have}")
    artifact = chosen[0]
    _check_artifact(bundle_dir, artifact)
    verify_files(bundle_dir, manifest)
    if not (bundle_dir / "bench.sh").is_file():
        raise InputFileError(f"{bundle_dir}: no bench.sh; rebuild the bundle with `edgeopt package`")
    return artifact


def _check_artifact(bundle_dir: Path, artifact: Artifact) -> None:
    name, path = artifact.file, bundle_dir / str(artifact.file)
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        outside = isinstance(name, str) and (name.startswith("/") or ".." in name.replace("\\", "/").split("/"))
        why = "points outside the bundle" if outside else "is not a plain file name in the bundle folder"
        raise InputFileError(f"{bundle_dir / 'manifest.json'}: the artifact path {name!r} {why} (an artifact is a "
                             "file at the top of the bundle); not benchmarked")
    if not path.is_file():
        raise InputFileError(f"{path}: the artifact named in the manifest is missing; not benchmarked")
    actual = sha256_file(path)
    if actual != artifact.sha256:
        raise InputFileError(f"{path}: sha256 mismatch: manifest {artifact.sha256}, file {actual}; not benchmarked "
                             "(the file changed after packaging: rebuild the bundle)")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bench_args(artifact: Artifact, options: BenchOptions) -> list[str]:
    """The arguments for ``sh bench.sh`` (the runner's flags, or the native mode's)."""
    args = ["--native", options.native, "--runtime", artifact.runtime] if options.native else []
    args += ["--artifact", artifact.file, "--runs", str(options.runs), "--min-seconds", repr(float(options.min_seconds)),
             "--warmup", str(options.warmup), "--repeats", str(options.repeats),
             "--cooldown-s", repr(float(options.cooldown_s))]
    if options.threads is not None:
        args += ["--threads", str(options.threads)]
    if options.cores is not None:
        args += ["--cores", ",".join(str(c) for c in options.cores)]
    return args


def stage_bundle(bundle_dir: Path, dest: Path) -> Path:
    """Copy the bundle to ``dest`` for a device: without ``results/`` and compiled byte code."""
    shutil.copytree(bundle_dir, dest, ignore=shutil.ignore_patterns(*STAGE_IGNORE))
    return dest


def result_of(prefix: str, code: int, stdout: bytes, stderr: bytes, artifact: Artifact, options: BenchOptions,
              *, remote: bool) -> BenchResult:
    """Map ``bench.sh``'s exit status to a typed error, or parse its stdout as untrusted input.

    ``remote``: the bundle was copied after it was verified here, so a file that fails its sha256 on the
    device (exit 3) means the copy changed on the way: a transport failure, not a bad bundle.
    ``prefix`` starts every message ("" here, "ssh://pi@board: " for a device).
    """
    tail = tail_text(stderr)
    if code == 0:
        try:
            result = _native_result(stdout, artifact) if options.native else parse_result(stdout)
        except DeviceError as e:
            raise DeviceError(f"{prefix}{e}") from None
        if result.artifact_sha256 != artifact.sha256:
            raise DeviceError(f"{prefix}the runner reported sha256 {result.artifact_sha256} for {artifact.file}, "
                              f"but the manifest has {artifact.sha256}; the result is for another file")
        return result
    # The runner's own one-line reason when it gave one; runtime logs and library warnings are noise here.
    reasons = [line.strip()[len("runner: error: "):] for line in tail.splitlines()
               if line.strip().startswith("runner: error: ")]
    said = f"{prefix}runner exited {code}" + (f": {reasons[-1]}" if reasons else f": {tail}" if tail else "")
    if code < 0 or code in (128 + 6, 128 + 9, 128 + 11):  # killed by a signal (a shell reports 128 + signal)
        number = -code if code < 0 else code - 128
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        raise DeviceError(f"{prefix}runner crashed ({name}) on {artifact.file}: the runtime died in native code or "
                          "was killed for memory; nothing was measured" + (f"; its output ends with: {tail}" if tail
                                                                          else ""))
    if code == 3 and remote:
        raise DeviceError(f"{said}; the bundle was verified here before the copy, so it changed on the way "
                          "(storage or transfer error on the device): rerun")
    if code == 3:
        raise InputFileError(f"{said}; not benchmarked")
    if code == 4:
        raise UnsupportedError(said)
    if code == 2:
        raise UsageError(said)
    raise DeviceError(said)


def tail_text(data: bytes) -> str:
    text = data.decode("utf-8", errors="replace").strip()
    return text if len(text) <= STDERR_TAIL_CHARS else "..." + text[-STDERR_TAIL_CHARS:]


def _native_result(stdout: bytes, artifact: Artifact) -> BenchResult:
    """Turn what bench.sh --native printed into the runner's JSON object (then validated as usual)."""
    if len(stdout) > MAX_NATIVE_BYTES:
        raise DeviceError(f"native benchmark output is larger than {MAX_NATIVE_BYTES} bytes ({len(stdout)}); "
                          "it is not what bench.sh --native prints")
    native = native_module()
    try:
        data: dict[str, Any] = native.result_from_envelope(stdout.decode("utf-8", errors="replace"), artifact.sha256)
    except native.NativeOutputError as e:
        raise DeviceError(f"native benchmark output not understood: {e}") from None
    return BenchResult.from_dict(data)


@functools.lru_cache(maxsize=1)
def native_module():
    """``runtimes/common/native.py`` (stdlib only; it also runs on devices that have Python)."""
    from edgeopt.resources import builtin_dir

    path = builtin_dir("runtimes") / "common" / "native.py"
    spec = importlib.util.spec_from_file_location("edgeopt_runtimes_native", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_cores(value: str | list[int] | tuple[int, ...] | None) -> tuple[int, ...] | None:
    """``--cores`` as CPU ids: "4,5,6,7" or a sequence of ints; None stays None.

    Raises:
        UsageError: anything but non-negative whole numbers.
    """
    if value is None:
        return None
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        cores = tuple(sorted({int(str(p).strip()) for p in parts if str(p).strip()}))
    except ValueError:
        raise UsageError(f"--cores must be CPU ids separated by commas, e.g. 4,5,6,7; got {value!r}") from None
    if not cores or cores[0] < 0:
        raise UsageError(f"--cores must list CPU ids >= 0, e.g. 4,5,6,7; got {value!r}")
    return cores
