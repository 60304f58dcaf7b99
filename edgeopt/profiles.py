"""Device profiles: the YAML a user writes, validated once into frozen dataclasses.

A profile names a device class and gives the planner its numbers: memory and storage limits, the
precisions and runtimes the hardware runs well, roofline inputs, the shapes to plan for and the
fidelity an artifact must keep. Loading is strict and reports everything at once: all problems in a
file are collected and raised as one ``ProfileError`` whose lines name the file, the line, the key
path, the value found, what is allowed and the fix.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
import os
import re
import reprlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from edgeopt.errors import ProfileError
from edgeopt.formats import Format, Precision, Runtime, Target
from edgeopt.profile_yaml import parse_profile_yaml, read_profile_text
from edgeopt.registry import unknown_name_message
from edgeopt.resources import builtin_dir

SCHEMA_VERSION = 1


# ----------------------------------------------------------------------------------------------
# The typed profile
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceSpec:
    """The hardware: ``cores`` counts logical CPUs (what ``os.cpu_count()`` reports)."""

    arch: str
    cores: int
    ram_gb: float
    cpu: str = ""  # named hardware, e.g. "Snapdragon 8 Gen 2 (1x X3 + 2x A715 + 2x A710 + 3x A510)"
    # CPU features the int8 kernels depend on (ISA_FEATURES), e.g. (avx2, fma, avx512_vnni); () = not stated:
    # packagers then assume none (ONNX dynamic int8 stores uint8 weights, right on every CPU)
    isa: tuple[str, ...] = ()


# The CPU features a profile may name in device.isa, and what edgeopt does with them.
ISA_FEATURES = {
    "avx2": "x86 256-bit integer SIMD", "fma": "x86 fused multiply-add", "f16c": "x86 fp16 conversion",
    "avx512f": "x86 512-bit SIMD",
    "avx512_vnni": "x86 int8 dot product (vpdpbusd, int32 sums): ONNX dynamic int8 stores int8 weights (U8S8)",
    "avx_vnni": "x86 int8 dot product on 256-bit vectors: as avx512_vnni",
    "amx_int8": "x86 AMX int8 tiles", "neon": "Arm Advanced SIMD", "dotprod": "Arm SDOT/UDOT int8 dot product",
    "i8mm": "Arm int8 matrix multiply (SMMLA)", "fp16": "Arm fp16 arithmetic",
}


@dataclass(frozen=True)
class Limits:
    """What one model may use: run-time memory, artifact size, and the precisions worth running.

    ``model_storage_mb`` is the budget for a model shipped inside the app or image ("bundled");
    ``model_download_mb`` (optional, at least ``model_storage_mb``) the budget for one the app downloads after
    install. Unset, a device has one storage budget and nothing is planned as a download.
    """

    model_ram_mb: int
    model_storage_mb: int
    precisions: tuple[Precision, ...]
    model_download_mb: int | None = None

    @property
    def download_mb(self) -> int:
        """The largest artifact the device takes at all: ``model_download_mb``, else ``model_storage_mb``."""
        return self.model_download_mb or self.model_storage_mb


@dataclass(frozen=True)
class Compute:
    """Roofline inputs: sustained rates with ``threads`` threads. ``None`` lets the cost model derive one."""

    threads: int
    fp32_gflops: float
    int8_gops: float
    memory_bandwidth_gbps: float
    fp16_gflops: float | None = None
    int4_gops: float | None = None
    # How the runtimes' intra-op threads behave (the bundle's runner and app snippets apply it): ``spinning``
    # lets idle threads busy-wait for the next op (onnxruntime's session.intra_op.allow_spinning; the XNNPACK
    # runtimes have no switch), ``affinity`` is ``none`` (the OS schedules) or ``fastest`` (pin to the
    # ``threads`` cores with the highest maximum frequency: the big cores of a big.LITTLE SoC).
    spinning: bool = False
    affinity: str = "none"


AFFINITIES = ("none", "fastest")


@dataclass(frozen=True)
class Shapes:
    """Input shapes to plan for; ``context_len`` is the KV-cache length of decoder LMs."""

    batch: int = 1
    seq_len: int = 128
    context_len: int | None = None


@dataclass(frozen=True)
class FidelityTargets:
    """How close an artifact's outputs must stay to fp32; LM-only keys are ignored for encoders."""

    min_cosine: float = 0.99
    min_sqnr_db: float | None = None
    max_perplexity_ratio: float | None = None
    max_kl: float | None = None
    # Per-precision overrides of the keys above, e.g. {"int4": {"max_perplexity_ratio": 1.1}}: a profile may
    # accept more loss for a precision it only reaches for when nothing more precise fits.
    by_precision: dict = field(default_factory=dict, hash=False)

    def for_precision(self, precision: Any) -> "FidelityTargets":
        """The targets a candidate of ``precision`` (a Precision or its value) is judged by."""
        key = getattr(precision, "value", precision)
        override = self.by_precision.get(key) or {}
        return dataclasses.replace(self, **{k: v for k, v in override.items()}, by_precision={}) if override else self


@dataclass(frozen=True)
class Targets:
    """What the profile asks of an artifact: a latency budget (optional) and fidelity."""

    latency_ms: float | None = None
    fidelity: FidelityTargets = FidelityTargets()


@dataclass(frozen=True)
class RuntimeCalibration:
    """One runtime's cost-model numbers fitted to results measured on the device (``profiles calibrate``).

    Rates are what the runtime reached at each precision with ``compute.threads`` threads (``None``: not
    measured, the cost model derives it from ``compute``). RSS terms: the runner process with the runtime
    loaded and no model (``base_rss_mb``), resident bytes per stored weight byte per precision, and the
    activation arena as a multiple of eager PyTorch's live-tensor peak.
    """

    fp32_gflops: float | None = None
    fp16_gflops: float | None = None
    int8_gops: float | None = None
    int4_gops: float | None = None
    per_op_us: float | None = None
    base_rss_mb: float | None = None
    op_rss_kb: float | None = None
    weight_rss_factor: dict | None = field(default=None, hash=False)  # precision name -> factor
    activation_factor: float | None = None
    results: int | None = None

    def rate(self, precision: Precision) -> float | None:
        """The measured rate (ops/s / 1e9) at ``precision``, or None."""
        return {Precision.FP32: self.fp32_gflops, Precision.FP16: self.fp16_gflops,
                Precision.INT8: self.int8_gops, Precision.INT4: self.int4_gops}[Precision(precision)]


@dataclass(frozen=True)
class Calibration:
    """Per-runtime numbers measured on the device; ``source`` says what they were fitted from."""

    source: str = ""
    onnxruntime: RuntimeCalibration | None = None
    executorch: RuntimeCalibration | None = None
    litert: RuntimeCalibration | None = None

    def get(self, runtime: Runtime) -> RuntimeCalibration | None:
        return getattr(self, Runtime(runtime).value)


@dataclass(frozen=True)
class Execution:
    """Where each runtime executes on the device: its execution targets, in order of preference.

    A runtime the profile's ``execution`` section does not name runs on the host CPU. The profile's ``compute``
    numbers describe these targets, so a GPU profile names a GPU target for every runtime it lists, and the
    planner rejects a runtime whose packager has no backend for any of them.
    """

    onnxruntime: tuple[Target, ...] = (Target.CPU,)
    executorch: tuple[Target, ...] = (Target.CPU,)
    litert: tuple[Target, ...] = (Target.CPU,)

    def targets(self, runtime: Runtime) -> tuple[Target, ...]:
        """The targets ``runtime`` is asked to execute on, most preferred first."""
        return getattr(self, Runtime(runtime).value)

    @property
    def on_cpu_only(self) -> bool:
        return all(self.targets(r) == (Target.CPU,) for r in Runtime)


@dataclass(frozen=True)
class Profile:
    """A validated device profile. ``source`` is the file it came from or ``builtin:NAME``."""

    name: str
    description: str
    device: DeviceSpec
    limits: Limits
    compute: Compute
    runtimes: tuple[Runtime, ...]
    shapes: Shapes
    targets: Targets
    schema_version: int = SCHEMA_VERSION
    source: str = ""
    calibration: Calibration | None = None
    execution: Execution = Execution()

    def to_dict(self) -> dict:
        """A JSON-able dict in the YAML's layout (enums as strings, ``source`` left out, unset calibration
        entries left out; ``execution`` only for a profile with a non-CPU target, for its runtimes)."""
        raw = dataclasses.asdict(self)
        raw.pop("source")
        cal = raw.pop("calibration")
        raw.pop("execution")
        if not self.execution.on_cpu_only:
            raw["execution"] = {r.value: list(self.execution.targets(r)) for r in self.runtimes}
        if not raw["device"].get("isa"):  # unset: as before the key existed
            raw["device"].pop("isa", None)
        if raw["limits"].get("model_download_mb") is None:  # unset: one storage budget, as before the key existed
            raw["limits"].pop("model_download_mb", None)
        if not raw["targets"]["fidelity"].get("by_precision"):
            raw["targets"]["fidelity"].pop("by_precision", None)
        if cal is not None:
            raw["calibration"] = _drop_none(cal)
        return _plain({"schema_version": raw.pop("schema_version"), **raw})

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> "Profile":
        """Validate ``data`` (parsed YAML) and build the profile.

        Raises:
            ProfileError: listing every problem, one per line: file, key path, value, allowed, fix.
        """
        if not isinstance(data, dict):
            raise ProfileError(
                f"{source}: a profile must be a mapping with keys {', '.join(_SCHEMA.keys)}, got {_show(data)}"
            )
        checker = _Checker(source, data)
        values = checker.walk(data, _SCHEMA, ())
        checker.cross_check(values)
        checker.raise_if_any()
        return _build(values, source)


def _drop_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _drop_none(v) for k, v in obj.items() if v is not None}
    return obj


def _plain(obj: Any) -> Any:
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [_plain(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    return obj


def _fidelity_targets(values: dict) -> FidelityTargets:
    by = {p: {k: x for k, x in (o or {}).items()} for p, o in (values.get("by_precision") or {}).items() if o}
    return FidelityTargets(**{k: x for k, x in values.items() if k != "by_precision"}, by_precision=by)


def _build(v: dict, source: str) -> Profile:
    targets = v.get("targets", {})
    return Profile(
        name=v["name"],
        description=v.get("description", ""),
        device=DeviceSpec(**v["device"]),
        limits=Limits(**v["limits"]),
        compute=Compute(**v["compute"]),
        runtimes=v["runtimes"],
        shapes=Shapes(**v.get("shapes", {})),
        targets=Targets(
            latency_ms=targets.get("latency_ms"), fidelity=_fidelity_targets(targets.get("fidelity", {}))
        ),
        schema_version=v.get("schema_version", SCHEMA_VERSION),
        source=source,
        calibration=_build_calibration(v.get("calibration")),
        execution=Execution(**{r: tuple(t) for r, t in (v.get("execution") or {}).items()}),
    )


def _build_calibration(v: dict | None) -> Calibration | None:
    if v is None:
        return None
    runtimes = {r.value: RuntimeCalibration(**v[r.value]) for r in Runtime if v.get(r.value) is not None}
    return Calibration(source=v.get("source", ""), **runtimes)


# ----------------------------------------------------------------------------------------------
# Value parsers: each returns the typed value or raises _Bad("must be ..., got ... (fix)")
# ----------------------------------------------------------------------------------------------


class _Bad(Exception):
    """Problems with one value: (suffix of the key path, e.g. "[2]", message) pairs."""

    def __init__(self, message: str, at: str = ""):
        super().__init__(message)
        self.problems = [(at, message)]


_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = 60
_repr.maxlist = _repr.maxdict = 6


def _show(value: Any) -> str:
    """A short, bounded rendering of a YAML value for messages."""
    try:
        return _render(value)
    except ValueError:  # an int past Python's 4300-digit str() limit, nested in a list
        return f"a {type(value).__name__} too large to print"


def _render(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length()} bits"
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if value is None:
        return "null (an empty value)"
    if isinstance(value, dict):
        return f"a mapping {_repr.repr(dict(value))}"
    if isinstance(value, list):
        return f"a list {_repr.repr(value)}"
    return _repr.repr(value)


_SIZE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt])i?b?\s*$", re.IGNORECASE)
# a number, maybe followed by a unit word: "1e3", "40 GB/s", "120 GFLOPS" (not "0o4" or "1,5")
_LEADING_NUMBER = re.compile(r"^\s*([-+]?[0-9]+(?:\.[0-9]+)?(?:e[-+]?[0-9]+)?)\s*[a-z/%]*\s*$", re.IGNORECASE)
_POWER = {"k": 1, "m": 2, "g": 3, "t": 4}


def _number_text(number: float, integer: bool) -> str | None:
    if not math.isfinite(number):
        return None
    return str(max(1, round(number))) if integer else f"{number:g}"


def _suggest(value: Any, unit: str | None, integer: bool) -> str:
    """The fix for a value that is not a number, e.g. '6GB' for a ``*_mb`` key -> 'write 6144'."""
    if isinstance(value, bool):
        return "write a number; YAML reads true/false/yes/no/on/off as booleans"
    number = None
    if isinstance(value, str):
        size = _SIZE.match(value)
        lead = _LEADING_NUMBER.match(value)
        if size and unit in ("mb", "gb"):
            number = float(size[1]) * 1024.0 ** (_POWER[size[2].lower()] - _POWER[unit[0]])
        elif lead:
            number = float(lead[1])
    elif isinstance(value, float) and integer:
        number = value
    text = _number_text(abs(number), integer) if number is not None else None  # every number here is positive
    if text is None:
        return "write a single plain number"
    return f"write {text}" + (", without quotes or units" if isinstance(value, str) else "")


def _positive_int(unit: str | None = None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(f"must be a positive integer, got {_show(value)} ({_suggest(value, unit, True)})")
        if value.bit_length() > 53:  # past any real count; also keeps messages printable
            raise _Bad(f"must be a positive integer below 2**53, got {_show(value)} (write the real number)")
        if value < 1:
            raise _Bad(f"must be a positive integer, got {value} (write {-value if value else 'a number >= 1'})")
        return value

    return parse


def _as_float(value: Any, what: str, unit: str | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"must be {what}, got {_show(value)} ({_suggest(value, unit, False)})")
    try:
        number = float(value)
    except OverflowError:
        raise _Bad(f"must be {what}, got {_show(value)}, too large to be real (write the real number)") from None
    if not math.isfinite(number):
        raise _Bad(f"must be {what}, got {value} (write a finite number)")
    return number


def _positive_number(unit: str | None = None) -> Callable[[Any], float]:
    def parse(value: Any) -> float:
        number = _as_float(value, "a positive number", unit)
        if number <= 0:
            raise _Bad(f"must be a positive number, got {value:g} (write {-number:g})" if number else
                       "must be a positive number, got 0 (write a number > 0)")
        return number

    return parse


def _non_negative(value: Any) -> float:
    number = _as_float(value, "a number >= 0")
    if number < 0:
        raise _Bad(f"must be a number >= 0, got {value:g} (write {-number:g} or 0)")
    return number


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Bad(f"must be a whole number >= 0, got {_show(value)} (write e.g. 12)")
    return value


def _cosine(value: Any) -> float:
    number = _as_float(value, "a number in (0, 1]")
    if not 0 < number <= 1:
        fix = "write e.g. 0.99"
        if 1 < number <= 100:
            fix = f"write {number / 100:g}; a cosine similarity is at most 1"
        raise _Bad(f"must be a number in (0, 1], got {value:g} ({fix})")
    return number


def _ratio(value: Any) -> float:
    number = _as_float(value, "a number >= 1 (quantized perplexity / fp32 perplexity)")
    if number < 1:
        fix = f"write {1 + number:g} for a {number * 100:g}% increase" if number > 0 else "write e.g. 1.05"
        raise _Bad(f"must be a number >= 1 (quantized perplexity / fp32 perplexity), got {value:g} ({fix})")
    return number


def _isa(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _Bad(f"must be a list of CPU features from {', '.join(ISA_FEATURES)}, got {_show(value)} "
                   f"(write e.g. [avx2, fma], or leave the key out)")
    out: list[str] = []
    for item in value:
        name = str(item).strip().lower()
        if name not in ISA_FEATURES:
            raise _Bad(f"names an unknown CPU feature {_show(item)} ({_did_you_mean(str(item), ISA_FEATURES)}; "
                       f"known: {', '.join(ISA_FEATURES)})")
        if name not in out:
            out.append(name)
    return tuple(out)


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"must be true or false, got {_show(value)} (write true or false, without quotes)")
    return value


def _affinity(value: Any) -> str:
    text = _text(value).strip().lower()
    if text not in AFFINITIES:
        raise _Bad(f"must be one of {', '.join(AFFINITIES)}, got {_show(value)} "
                   f"({_did_you_mean(str(value), AFFINITIES)}: 'fastest' pins the threads to the fastest cores)")
    return text


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"must be a string, got {_show(value)} (put the text in quotes)")
    return value


_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


def _name(value: Any) -> str:
    text = _text(value)
    if not _NAME.match(text):
        slug = re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-._")[:64] or "my-device"
        raise _Bad(
            f"must be 1-64 characters of a-z, 0-9, '.', '_', '-' starting with a letter or digit "
            f"(it names output folders), got {_show(value)} (write {slug})"
        )
    return text


ARCHES = ("arm64", "armv7", "riscv64", "x86_64")
_ARCH_ALIASES = {"aarch64": "arm64", "amd64": "x86_64", "x64": "x86_64", "x86-64": "x86_64",
                 "armv7l": "armv7", "armhf": "armv7"}


def _arch(value: Any) -> str:
    text = _text(value).strip().lower()
    text = _ARCH_ALIASES.get(text, text)
    if text not in ARCHES:
        raise _Bad(f"must be one of {', '.join(ARCHES)}, got {_show(value)} ({_did_you_mean(str(value), ARCHES)})")
    return text


def _did_you_mean(word: str, choices: Any, fallback: str = "pick one of those") -> str:
    close = difflib.get_close_matches(word.strip().lower(), list(choices), n=1, cutoff=0.5)
    return f"did you mean {close[0]!r}?" if close else fallback


# Words a user may write for a target that are not one: the fix names the target meant.
_TARGET_HINTS = {
    "gpu": "name the GPU backend: 'cuda' for NVIDIA GPUs, 'tensorrt' for TensorRT engines on them",
    "nvidia": "write 'cuda' (or 'tensorrt')",
    "cudaexecutionprovider": "write the target 'cuda'; the runner picks onnxruntime's provider for it",
    "tensorrtexecutionprovider": "write the target 'tensorrt'; the runner picks onnxruntime's provider for it",
    "cpuexecutionprovider": "write the target 'cpu'",
    "trt": "write 'tensorrt'",
    "xnnpack": "write 'cpu': XNNPACK is how executorch and litert run on the CPU",
}


def _member(cls: type[enum.Enum], item: Any) -> Any:
    allowed = [m.value for m in cls]
    if isinstance(item, str):
        for member in cls:
            if member.value == item.strip().lower():
                return member
        if cls is Runtime and item.strip().lower() in {f.value for f in Format}:
            runtime = Format(item.strip().lower()).runtime.value
            raise _Bad(f"must be a runtime, got the format {item!r} (write its runtime {runtime!r})")
        if cls is Target and item.strip().lower() in _TARGET_HINTS:
            raise _Bad(f"must be one of {', '.join(allowed)}, got {item!r} ({_TARGET_HINTS[item.strip().lower()]})")
    fix = _did_you_mean(item, allowed) if isinstance(item, str) else "write one name"
    raise _Bad(f"must be one of {', '.join(allowed)}, got {_show(item)} ({fix})")


def _enum_list(cls: type[enum.Enum], kind: str) -> Callable[[Any], tuple]:
    allowed = ", ".join(m.value for m in cls)

    def parse(value: Any) -> tuple:
        if not isinstance(value, list) or not value:
            got = "an empty list" if value == [] else _show(value)
            raise _Bad(f"must be a non-empty list of {kind}s from {allowed}, got {got} (write e.g. [{allowed}])")
        members: list = []
        problems: list[tuple[str, str]] = []
        for i, item in enumerate(value):
            try:
                member = _member(cls, item)
                if member in members:
                    raise _Bad(f"repeats {member.value!r} (remove the duplicate)")
                members.append(member)
            except _Bad as e:
                problems.append((f"[{i}]", str(e)))
        if problems:
            bad = _Bad(problems[0][1], problems[0][0])
            bad.problems = problems
            raise bad
        return tuple(members)

    return parse


def _schema_version(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value != SCHEMA_VERSION:
        raise _Bad(
            f"must be {SCHEMA_VERSION}, got {_show(value)} (this edgeopt reads schema_version {SCHEMA_VERSION}: "
            f"write {SCHEMA_VERSION}, or upgrade edgeopt for a profile written for a newer one)"
        )
    return value


# ----------------------------------------------------------------------------------------------
# The schema as data, and the checker that walks it collecting every problem
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    parse: Callable[[Any], Any]
    required: bool = True
    nullable: bool = False  # an explicit null means "not set": the cost model derives it
    example: str = ""


@dataclass(frozen=True)
class _Section:
    keys: dict
    required: bool = True


_SCHEMA = _Section({
    "schema_version": _Key(_schema_version, required=False),
    "name": _Key(_name, example="my-board"),
    "description": _Key(_text, required=False),
    "device": _Section({
        "arch": _Key(_arch, example="arm64"),
        "cores": _Key(_positive_int(), example="8"),
        "ram_gb": _Key(_positive_number("gb"), example="8"),
        "cpu": _Key(_text, required=False),
        "isa": _Key(_isa, required=False),
    }),
    "limits": _Section({
        "model_ram_mb": _Key(_positive_int("mb"), example="512"),
        "model_storage_mb": _Key(_positive_int("mb"), example="200"),
        "model_download_mb": _Key(_positive_int("mb"), required=False, nullable=True),
        "precisions": _Key(_enum_list(Precision, "precision"), example="[fp32, int8]"),
    }),
    "compute": _Section({
        "threads": _Key(_positive_int(), example="4"),
        "fp32_gflops": _Key(_positive_number(), example="120"),
        "int8_gops": _Key(_positive_number(), example="480"),
        "memory_bandwidth_gbps": _Key(_positive_number(), example="40"),
        "fp16_gflops": _Key(_positive_number(), required=False, nullable=True),
        "int4_gops": _Key(_positive_number(), required=False, nullable=True),
        "spinning": _Key(_bool, required=False),
        "affinity": _Key(_affinity, required=False),
    }),
    "runtimes": _Key(_enum_list(Runtime, "runtime"), example="[executorch, litert, onnxruntime]"),
    "execution": _Section({r.value: _Key(_enum_list(Target, "execution target"), required=False)
                           for r in Runtime}, required=False),
    "shapes": _Section({
        "batch": _Key(_positive_int(), required=False),
        "seq_len": _Key(_positive_int(), required=False),
        "context_len": _Key(_positive_int(), required=False, nullable=True),
    }, required=False),
    "calibration": _Section({
        "source": _Key(_text, required=False),
        **{r.value: _Section({
            "fp32_gflops": _Key(_positive_number(), required=False, nullable=True),
            "fp16_gflops": _Key(_positive_number(), required=False, nullable=True),
            "int8_gops": _Key(_positive_number(), required=False, nullable=True),
            "int4_gops": _Key(_positive_number(), required=False, nullable=True),
            "per_op_us": _Key(_non_negative, required=False, nullable=True),
            "base_rss_mb": _Key(_non_negative, required=False, nullable=True),
            "op_rss_kb": _Key(_non_negative, required=False, nullable=True),
            "weight_rss_factor": _Section({p.value: _Key(_positive_number(), required=False) for p in Precision},
                                          required=False),
            "activation_factor": _Key(_non_negative, required=False, nullable=True),
            "results": _Key(_count, required=False, nullable=True),
        }, required=False) for r in Runtime},
    }, required=False),
    "targets": _Section({
        "latency_ms": _Key(_positive_number(), required=False, nullable=True),
        "fidelity": _Section({
            "min_cosine": _Key(_cosine, required=False),
            "min_sqnr_db": _Key(_positive_number(), required=False, nullable=True),
            "max_perplexity_ratio": _Key(_ratio, required=False, nullable=True),
            "max_kl": _Key(_positive_number(), required=False, nullable=True),
            "by_precision": _Section({p.value: _Section({
                "min_cosine": _Key(_cosine, required=False),
                "min_sqnr_db": _Key(_positive_number(), required=False, nullable=True),
                "max_perplexity_ratio": _Key(_ratio, required=False, nullable=True),
                "max_kl": _Key(_positive_number(), required=False, nullable=True),
            }, required=False) for p in Precision}, required=False),
        }, required=False),
    }, required=False),
})


def _sections_of(section: _Section, path: tuple = ()) -> dict[str, str]:
    """key -> the section path it belongs to, for 'it belongs under compute' hints."""
    homes: dict[str, str] = {}
    for key, spec in section.keys.items():
        homes.setdefault(key, ".".join(path) or "the top level")
        if isinstance(spec, _Section):
            homes.update({k: v for k, v in _sections_of(spec, path + (key,)).items() if k not in homes})
    return homes


_HOMES = _sections_of(_SCHEMA)


def _key_text(key: Any) -> str:
    return key if isinstance(key, str) else _show(key)


class _Checker:
    """Walks data against the schema; every problem is recorded, none raised until the end."""

    def __init__(self, source: str, root: dict):
        self.source = source
        self.root = root
        self.problems: list[str] = []

    def add(self, keys: tuple, message: str, at: str = "") -> None:
        line, node = None, self.root
        for key in keys:  # the line of the deepest key that exists in the file
            if not isinstance(node, dict) or key not in node:
                break
            line = getattr(node, "lines", {}).get(key, line)
            node = node[key]
        where = f"{self.source}:{line}" if line else self.source
        path = ".".join(_key_text(k) for k in keys) + at
        self.problems.append(f"{where}: {path} {message}")

    def walk(self, data: dict, section: _Section, path: tuple) -> dict:
        for key in data:
            if key not in section.keys:
                self.unknown(key, section, path)
        out: dict = {}
        for key, spec in section.keys.items():
            keys = path + (key,)
            if key not in data:
                if spec.required:
                    self.add(keys, self.missing_fix(key, spec, path))
            elif isinstance(spec, _Section):
                if isinstance(data[key], dict):
                    out[key] = self.walk(data[key], spec, keys)
                else:
                    self.add(keys, f"must be a mapping with keys {', '.join(spec.keys)}, got {_show(data[key])}")
            elif data[key] is None and spec.nullable:
                out[key] = None
            else:
                try:
                    out[key] = spec.parse(data[key])
                except _Bad as bad:
                    for at, message in bad.problems:
                        self.add(keys, message, at)
        return out

    def unknown(self, key: Any, section: _Section, path: tuple) -> None:
        name = _key_text(key)
        home = _HOMES.get(name)
        if home is not None:
            fix = f"it belongs under {home}: move it there"
        else:
            fix = _did_you_mean(name, section.keys, fallback="remove it")
        self.add(path + (key,), f"is not a known key; allowed here: {', '.join(section.keys)} ({fix})")

    @staticmethod
    def missing_fix(key: str, spec: Any, path: tuple) -> str:
        if isinstance(spec, _Section):
            return f"is missing (a required section with keys {', '.join(spec.keys)})"
        under = f" under {'.'.join(path)}" if path else ""
        return f"is missing (required: add `{key}: {spec.example}`{under})"

    def cross_check(self, v: dict) -> None:
        """Numbers that are each fine but impossible together."""
        device, limits = v.get("device", {}), v.get("limits", {})
        compute, shapes = v.get("compute", {}), v.get("shapes", {})
        ram_gb, ram_mb = device.get("ram_gb"), limits.get("model_ram_mb")
        if ram_gb and ram_mb and ram_mb > ram_gb * 1024:
            self.add(("limits", "model_ram_mb"), f"must be at most device.ram_gb * 1024 = {ram_gb * 1024:g}, "
                     f"got {ram_mb} (a model cannot use more memory than the device has: lower it, "
                     f"or fix device.ram_gb)")
        storage_mb, download_mb = limits.get("model_storage_mb"), limits.get("model_download_mb")
        if storage_mb and download_mb and download_mb < storage_mb:
            self.add(("limits", "model_download_mb"), f"must be at least limits.model_storage_mb = {storage_mb}, got "
                     f"{download_mb} (a model the app downloads after install may be larger than one it bundles, "
                     f"not smaller: write {storage_mb} or more, or leave the key out for one storage budget)")
        cores, threads = device.get("cores"), compute.get("threads")
        if cores and threads and threads > cores:
            self.add(("compute", "threads"), f"must be at most device.cores = {cores}, got {threads} "
                     f"(write {cores} or fewer, or fix device.cores)")
        seq_len, context_len = shapes.get("seq_len", Shapes.seq_len), shapes.get("context_len")
        if seq_len and context_len and context_len < seq_len:
            self.add(("shapes", "context_len"), f"must be at least shapes.seq_len = {seq_len}, got {context_len} "
                     f"(the KV cache holds the whole prompt: write {seq_len} or more)")

        runtimes = v.get("runtimes")
        for name in (v.get("execution") or {}):
            if runtimes is not None and Runtime(name) not in runtimes:
                self.add(("execution", name), f"names a runtime the profile does not list in runtimes "
                         f"({', '.join(r.value for r in runtimes)}) (add {name} to runtimes, or remove this entry)")

    def raise_if_any(self) -> None:
        if len(self.problems) == 1:
            raise ProfileError(self.problems[0])
        if self.problems:
            raise ProfileError(
                f"{self.source}: {len(self.problems)} problems in this profile:\n  " + "\n  ".join(self.problems)
            )


# ----------------------------------------------------------------------------------------------
# Loading by name or path
# ----------------------------------------------------------------------------------------------


def builtin_profile_names() -> list[str]:
    """Names of the built-in profiles (the YAML files shipped with edgeopt), sorted."""
    return sorted(p.stem for p in builtin_dir("profiles").glob("*.yaml"))


def load_builtin_profiles() -> list[Profile]:
    """Every built-in profile, sorted by name."""
    return [load_profile(name) for name in builtin_profile_names()]


def detect_profile(name: str = "this-machine") -> dict:
    """A validated profile dict for the machine this runs on (see ``edgeopt.detect``)."""
    from edgeopt.detect import detect_profile as _detect

    return _detect(name)


def _looks_like_path(text: str) -> bool:
    separators = {"/", os.sep, os.altsep} - {None}
    return any(s in text for s in separators) or text.endswith((".yaml", ".yml")) or os.path.exists(text)


def load_profile(name_or_path: str | os.PathLike) -> Profile:
    """Load a built-in profile by name, or a profile YAML file by path.

    A bare name is a built-in first (write ``./arm-mobile`` for a local file of that name).

    Raises:
        ProfileError: unknown name (with did-you-mean), missing or unreadable file, invalid YAML or
            an invalid profile (every problem listed).
    """
    if isinstance(name_or_path, os.PathLike):
        shown = os.fspath(name_or_path)
        return _load_file(Path(shown), str(shown))
    if not isinstance(name_or_path, str):
        raise ProfileError(f"a profile is a built-in name or a .yaml path, got {_show(name_or_path)}")
    names = builtin_profile_names()
    if name_or_path in names:
        return _load_file(builtin_dir("profiles") / f"{name_or_path}.yaml", f"builtin:{name_or_path}")
    if _looks_like_path(name_or_path):
        return _load_file(Path(name_or_path), name_or_path)
    hint = " (or give the path of a profile .yaml file)"
    raise ProfileError(unknown_name_message("profile", name_or_path, names) + hint)


def _load_file(path: Path, shown: str) -> Profile:
    data = parse_profile_yaml(read_profile_text(path, shown), shown)
    return Profile.from_dict(data, source=shown)


def dump_profile_yaml(data: dict, header: str = "# edgeopt device profile") -> str:
    """YAML text of a profile dict, led by ``header`` (comment lines) saying how it was made."""
    lines = [line if line.startswith("#") else f"# {line}" for line in header.splitlines()]
    body = yaml.safe_dump(_plain(data), sort_keys=False, default_flow_style=None, allow_unicode=True, width=100)
    return "\n".join(lines) + "\n" + body
