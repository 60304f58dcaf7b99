"""The sweep spec: a YAML file of models × profiles (× formats × precisions), parsed once into ``SweepSpec``.

Every problem in the file is collected and raised at once as a ``SpecError`` (exit 2), naming the file, the
key and the fix, before any model is loaded. Relative paths (models, profile files, ``out``) are relative
to the spec file's folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from edgeopt.errors import UsageError

SPEC_SCHEMA_VERSION = 1
MAX_SPEC_BYTES = 1024 * 1024
_TOP_KEYS = {"schema_version", "out", "models", "profiles", "formats", "precisions", "activations",
             "recover_seconds", "allow_pickle", "bench", "report"}
_BENCH_KEYS = {"devices", "runs", "min_seconds", "warmup", "repeats", "timeout_s", "python", "identity"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class SpecError(UsageError):
    """A sweep spec that does not validate (exit 2); the message lists every problem."""


@dataclass(frozen=True)
class BenchSpec:
    """What to benchmark each bundle on: every device in ``devices``, one job per device at a time."""

    devices: tuple[str, ...]
    runs: int = 30
    min_seconds: float = 1.0
    warmup: int = 3
    repeats: int = 1
    timeout_s: float | None = None
    python: str | None = None
    identity: str | None = None


@dataclass(frozen=True)
class Cell:
    """One build: a model on a profile, with an optional format and precision override."""

    model: str  # what ``edgeopt package --model`` takes (paths made absolute)
    profile: str  # a built-in name or an absolute profile YAML path
    profile_name: str
    fmt: str | None = None  # a Runtime value
    precision: str | None = None  # a Precision value
    out: str = ""  # the folder the bundle goes into: <sweep out>[/<format>-<precision>]

    @property
    def key(self) -> str:
        """A stable, readable name of the cell (also its log file name)."""
        label = Path(self.model.split(".py:")[0]).name if self.model not in ("", "default") else "default"
        if ".py:" in self.model:
            label += "-" + self.model.split(".py:")[1]
        parts = [label, self.profile_name, self.fmt or "auto", self.precision or "auto"]
        return "".join(c if c.isalnum() or c in "-_." else "-" for c in "_".join(parts))


@dataclass(frozen=True)
class SweepSpec:
    source: str
    out: Path
    cells: tuple[Cell, ...]
    activations: str | None = None
    recover_seconds: float = 0.0
    allow_pickle: bool = False
    bench: BenchSpec | None = None
    report: Path | None = None
    models: tuple[str, ...] = field(default=())


def load_spec(path: str | os.PathLike, *, out: str | os.PathLike | None = None) -> SweepSpec:
    """Read and validate a sweep spec file.

    Args:
        path: the YAML file.
        out: replaces the spec's ``out`` (relative to the current folder, like any command-line path).

    Raises:
        SpecError: the file is missing, not YAML, or has problems (every one listed, each with its key).
    """
    import yaml

    p = Path(path)
    try:
        size = p.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(f"{p}: {size} bytes; a sweep spec is a small YAML file (at most {MAX_SPEC_BYTES} bytes)")
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SpecError(f"{p}: no such sweep spec file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{p}: cannot read the sweep spec ({getattr(e, 'strerror', None) or e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{p}: not valid YAML{where}: {getattr(e, 'problem', None) or e}") from None
    return parse_spec(data, source=str(p), base=p.parent, out=out)


def parse_spec(data: object, *, source: str, base: Path, out=None) -> SweepSpec:
    """``load_spec`` on already-parsed YAML (``base``: the folder relative paths start from)."""
    errs: list[str] = []
    if not isinstance(data, dict):
        raise SpecError(f"{source}: a sweep spec is a mapping with models: and profiles: lists, got "
                        f"{type(data).__name__}")
    for k in sorted(set(data) - _TOP_KEYS, key=str):
        errs.append(f"unknown key {k!r} (allowed: {', '.join(sorted(_TOP_KEYS))})")
    if data.get("schema_version", SPEC_SCHEMA_VERSION) != SPEC_SCHEMA_VERSION:
        errs.append(f"schema_version must be {SPEC_SCHEMA_VERSION}, got {data.get('schema_version')!r}")
    base = base.absolute()
    models = [_model(m, f"models[{i}]", base, errs) for i, m in enumerate(_list(data, "models", errs, required=True))]
    profiles = [_profile(v, f"profiles[{i}]", base, errs)
                for i, v in enumerate(_list(data, "profiles", errs, required=True))]
    formats = [_enum_value(v, f"formats[{i}]", "runtime", errs) for i, v in enumerate(_list(data, "formats", errs))]
    precisions = [_enum_value(v, f"precisions[{i}]", "precision", errs)
                  for i, v in enumerate(_list(data, "precisions", errs))]
    for key, values in (("models", models), ("profiles", [p and p[0] for p in profiles]), ("formats", formats),
                        ("precisions", precisions)):
        seen = [v for v in values if v is not None]
        dup = sorted({v for v in seen if seen.count(v) > 1})
        if dup:
            errs.append(f"{key}: {', '.join(map(str, dup))} listed twice (each cell would be built twice)")
    activations = data.get("activations")
    if activations is not None and activations not in ("dynamic", "static"):
        errs.append(f"activations must be 'dynamic' or 'static', got {activations!r}")
    recover = data.get("recover_seconds", 0.0)
    if isinstance(recover, bool) or not isinstance(recover, (int, float)) or recover < 0:
        errs.append(f"recover_seconds must be a number of seconds >= 0, got {recover!r} (0: no distillation)")
    allow_pickle = data.get("allow_pickle", False)
    if not isinstance(allow_pickle, bool):
        errs.append(f"allow_pickle must be true or false, got {allow_pickle!r}")
    out_dir = Path(out).absolute() if out is not None else _path(data.get("out", "dist/sweep"), "out", base, errs)
    bench = _bench(data.get("bench"), errs)
    report = data.get("report", "report.html")
    if report is not None and not isinstance(report, str):
        errs.append(f"report must be a file name (relative to out) or null, got {report!r}")
    _names_collide(models, errs)
    if errs:
        raise SpecError(f"{source}: {len(errs)} problem{'s' if len(errs) > 1 else ''} in the sweep spec (nothing "
                        "was built):\n  " + "\n  ".join(errs))
    cells = []
    split = bool(formats or precisions)
    for m in models:
        for prof, prof_name in profiles:
            for f in formats or [None]:
                for pr in precisions or [None]:
                    sub = out_dir / f"{f or 'auto'}-{pr or 'auto'}" if split else out_dir
                    cells.append(Cell(model=m, profile=prof, profile_name=prof_name, fmt=f, precision=pr,
                                      out=str(sub)))
    return SweepSpec(source=source, out=out_dir, cells=tuple(cells), activations=activations,
                     recover_seconds=float(recover), allow_pickle=allow_pickle, bench=bench,
                     report=(out_dir / report) if isinstance(report, str) else None, models=tuple(models))


def _list(data: dict, key: str, errs: list[str], *, required: bool = False) -> list:
    value = data.get(key)
    if value is None:
        if required:
            errs.append(f"{key}: missing; give a list, e.g. {key}: [{'models/tiny-bert' if key == 'models' else 'desktop-cpu'}]")
        return []
    if isinstance(value, (str, dict)):
        value = [value]  # one item written without the list brackets
    if not isinstance(value, list) or (required and not value):
        errs.append(f"{key} must be a non-empty list, got {value!r}")
        return []
    return value


def _path(value: object, where: str, base: Path, errs: list[str]) -> Path | None:
    if not isinstance(value, str) or not value.strip():
        errs.append(f"{where} must be a path, got {value!r}")
        return None
    p = Path(value).expanduser()
    return p if p.is_absolute() else base / p


def _model(value: object, where: str, base: Path, errs: list[str]) -> str | None:
    if isinstance(value, dict):
        if set(value) != {"model"}:
            errs.append(f"{where}: a model entry is a string or {{model: ...}}, got keys {sorted(value)}")
            return None
        value = value["model"]
    if not isinstance(value, str) or not value.strip():
        errs.append(f"{where} must be a model directory, a hub id, file.py:factory or 'default', got {value!r}")
        return None
    if value == "default":
        return value
    if ".py:" in value:
        file, func = value.rsplit(":", 1)
        path = _path(file, where, base, errs)
        if path is not None and not path.is_file():
            errs.append(f"{where}: {path} does not exist (the factory file of {value!r})")
        return f"{path}:{func}"
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    if path.exists():
        if not (path / "config.json").is_file():
            errs.append(f"{where}: {path} has no config.json; give a Hugging Face model directory")
        return str(path)
    if _HUB_ID.match(value) and not value.startswith((".", "/")):
        if _offline() and not _cached(value):
            errs.append(f"{where}: model {value!r}: no folder {path} (paths are relative to the spec's folder), and "
                        "as a hub id it is not in the local Hugging Face cache (HF_HUB_OFFLINE is set); fix the path "
                        f"or download it first (huggingface-cli download {value})")
            return None
        return value
    errs.append(f"{where}: model {value!r} not found: no folder {path} (paths are relative to the spec's folder) and "
                "not a hub id (org/name)")
    return None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _cached(repo_id: str) -> bool:
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(repo_id, local_files_only=True)
        return True
    except Exception:  # noqa: BLE001 - not cached, or not a valid id
        return False


def _profile(value: object, where: str, base: Path, errs: list[str]) -> tuple[str, str] | tuple[None, None]:
    from edgeopt.profiles import builtin_profile_names, load_profile

    if not isinstance(value, str) or not value.strip():
        errs.append(f"{where} must be a built-in profile name or a profile .yaml path, got {value!r}")
        return None, None
    ref = value
    if value not in builtin_profile_names() and ("/" in value or value.endswith((".yaml", ".yml"))):
        p = Path(value).expanduser()
        ref = str(p if p.is_absolute() else base / p)
    try:
        prof = load_profile(ref)
    except UsageError as e:
        errs.append(f"{where}: {str(e).splitlines()[0]}")
        return None, None
    return ref, prof.name


def _enum_value(value: object, where: str, kind: str, errs: list[str]) -> str | None:
    from edgeopt.formats import Precision, Runtime

    try:
        return (Runtime if kind == "runtime" else Precision).parse(str(value)).value
    except UsageError as e:
        errs.append(f"{where}: {e}")
        return None


def _bench(value: object, errs: list[str]) -> BenchSpec | None:
    from edgeopt.benchmark import parse_device

    if value is None:
        return None
    if not isinstance(value, dict):
        errs.append(f"bench must be a mapping with devices: [...], got {value!r}")
        return None
    for k in sorted(set(value) - _BENCH_KEYS, key=str):
        errs.append(f"bench: unknown key {k!r} (allowed: {', '.join(sorted(_BENCH_KEYS))})")
    devices = value.get("devices")
    if isinstance(devices, str):
        devices = [devices]
    if not isinstance(devices, list) or not devices:
        errs.append("bench.devices must be a non-empty list of local, ssh://user@host[:port] or adb[:serial]")
        devices = []
    slugs: dict[str, str] = {}
    for i, d in enumerate(devices):
        try:
            addr = parse_device(str(d))
        except UsageError as e:
            errs.append(f"bench.devices[{i}]: {e}")
            continue
        if addr.slug in slugs:
            errs.append(f"bench.devices[{i}]: {d!r} is the same device as {slugs[addr.slug]!r} (a device runs one "
                        "benchmark at a time; list it once)")
        slugs[addr.slug] = str(d)
    numbers = {}
    for k, lo, kind in (("runs", 1, int), ("warmup", 0, int), ("repeats", 1, int), ("min_seconds", 0, float),
                        ("timeout_s", 1, float)):
        if k not in value or value[k] is None:
            continue
        v = value[k]
        ok = not isinstance(v, bool) and isinstance(v, (int, float) if kind is float else int) and v >= lo
        if not ok:
            errs.append(f"bench.{k} must be {'an integer' if kind is int else 'a number'} >= {lo}, got {v!r}")
        else:
            numbers[k] = kind(v)
    for k in ("python", "identity"):
        if value.get(k) is not None and not isinstance(value[k], str):
            errs.append(f"bench.{k} must be a path, got {value[k]!r}")
    return BenchSpec(devices=tuple(str(d) for d in devices), python=value.get("python"),
                     identity=value.get("identity"), **numbers)


def _names_collide(models: list[str | None], errs: list[str]) -> None:
    """Two model folders with the same name would write the same bundle folder (``<name>-<profile>``)."""
    names: dict[str, str] = {}
    for m in models:
        if m is None or m == "default" or ".py:" in m or not Path(m).is_absolute():
            continue
        name = Path(m).resolve().name
        if name in names and names[name] != m:
            errs.append(f"models: {names[name]} and {m} are both named {name!r}, so their bundles would be the same "
                        "folder; rename one of the folders")
        names.setdefault(name, m)
