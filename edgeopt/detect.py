"""``edgeopt profiles detect``: a profile for the machine this runs on (psutil, CPU flags, a bandwidth probe)."""

from __future__ import annotations

import math
import os
import platform
import shutil
from pathlib import Path
from typing import Any

from edgeopt.errors import ProfileError
from edgeopt.profiles import _ARCH_ALIASES, SCHEMA_VERSION, Profile, _Bad, _name

# Sustained fp32 FLOPs per cycle per physical core, about half the vector peak, because inference
# GEMMs on transformer shapes reach roughly half of peak in ONNX Runtime (MLAS) and XNNPACK:
#   AVX-512: 2 FMA units x 16 lanes x 2 = 64 peak -> 32 (optimistic on parts with one 512-bit FMA unit)
#   AVX2+FMA: 2 FMA units x 8 lanes x 2 = 32 peak -> 16
#   NEON (arm64; Cortex-A7x has 2 x 128-bit FMA pipes): 2 x 4 lanes x 2 = 16 peak -> 8
#   SSE only: 8; anything else: 4 (a guess, written so)
_INT8_DOT_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm"}
_FP16_MATH_FLAGS = {"asimdhp", "avx512_fp16"}
_REPORTED_FLAGS = sorted(
    {"avx2", "fma", "avx512f", "amx_tile", "asimd", "sve"} | _INT8_DOT_FLAGS | _FP16_MATH_FLAGS
)


def _flops_per_cycle(arch: str, flags: set[str]) -> int:
    if arch == "x86_64":
        if "avx512f" in flags:
            return 32
        return 16 if {"avx2", "fma"} <= flags else 8
    return 8 if arch == "arm64" else 4


def _cpu_info() -> tuple[str, set[str], float | None]:
    """CPU name, feature flags and /proc/cpuinfo's MHz (Linux; elsewhere name from platform only)."""

    name, flags, mhz = "", set(), None
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = (part.strip() for part in line.partition(":"))
        if key in ("model name", "Model", "Hardware") and not name:
            name = value
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "cpu MHz" and mhz is None:
            try:
                mhz = float(value)
            except ValueError:
                pass
    if not flags and platform.system() == "Darwin" and platform.machine() == "arm64":
        flags = {"asimd", "asimddp", "asimdhp"}  # every Apple M-series core has dot product and fp16 math
    return name or platform.processor() or platform.machine(), flags, mhz


def _cpu_ghz(proc_mhz: float | None) -> float:
    """Max (turbo) clock where known, else the current one; 2.0 GHz when nothing reports it."""
    import psutil

    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError, AttributeError):
        freq = None
    for mhz in (freq and freq.max, freq and freq.current, proc_mhz):
        if mhz and mhz > 0:
            return mhz / 1000
    return 2.0


# /proc/cpuinfo flag -> device.isa feature (x86 flags keep their names; Arm's "Features" are renamed)
_ISA_FLAGS = {"avx2": "avx2", "fma": "fma", "f16c": "f16c", "avx512f": "avx512f", "avx512_vnni": "avx512_vnni",
              "avx_vnni": "avx_vnni", "amx_int8": "amx_int8", "asimd": "neon", "asimddp": "dotprod",
              "i8mm": "i8mm", "asimdhp": "fp16"}


def isa_features(flags: set[str]) -> list[str]:
    """The profile's ``device.isa`` for these CPU flags, in ``ISA_FEATURES`` order."""
    from edgeopt.profiles import ISA_FEATURES

    have = {_ISA_FLAGS[f] for f in flags if f in _ISA_FLAGS}
    return [name for name in ISA_FEATURES if name in have]


def _core_types() -> int:
    """How many distinct maximum frequencies the CPUs have (cpufreq); 1 where it cannot tell."""
    freqs = set()
    for path in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpufreq/cpuinfo_max_freq"):
        try:
            freqs.add(int(path.read_text().strip()))
        except (OSError, ValueError):
            continue
    return max(1, len(freqs))


def _measure_copy_gbps(seconds: float = 0.3) -> float:
    """Best-of copy bandwidth of a 64 MiB array (past most L3 caches), counting read + write.

    One thread: it understates a multi-channel peak, roughly what one inference thread streaming
    weights sees, so the cost model stays on the safe side.
    """
    import time

    import numpy as np

    src = np.ones(64 * 2**20 // 8)
    dst = np.empty_like(src)
    best, deadline = math.inf, time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return 2 * src.nbytes / best / 1e9


def detect_profile(name: str = "this-machine") -> dict:
    """A profile dict for the machine this runs on, from psutil, CPU flags and a short copy benchmark.

    ``device.cores`` is the logical CPU count (``psutil.cpu_count(logical=True)``); ``compute.threads``
    and the FLOP estimate use physical cores, because SMT siblings share the vector units.
    Takes about 0.3 s (the bandwidth measurement).

    Raises:
        ProfileError: ``name`` is not a valid profile name, or the machine is an arch edgeopt has no rules for.
    """

    import psutil

    try:
        _name(name)  # fail before the measurement, with the same message a profile file would get
    except _Bad as bad:
        raise ProfileError(f"<detected>: name {bad}") from None
    arch = _ARCH_ALIASES.get(platform.machine().lower(), platform.machine().lower())
    logical = psutil.cpu_count(logical=True) or os.cpu_count() or 1
    physical = min(psutil.cpu_count(logical=False) or logical, logical)
    cpu, flags, proc_mhz = _cpu_info()
    ghz = _cpu_ghz(proc_mhz)
    fp32 = round(physical * ghz * _flops_per_cycle(arch, flags), 1)
    dot = bool(flags & _INT8_DOT_FLAGS)
    ram = psutil.virtual_memory().total
    try:
        free_mb = shutil.disk_usage(os.getcwd()).free / 2**20
    except OSError:
        free_mb = 4096.0
    precisions = ["fp32"] + (["fp16"] if flags & _FP16_MATH_FLAGS else []) + ["int8"]
    if "avx2" in flags or arch == "arm64":  # weight-only int4 kernels (MLAS MatMulNBits, XNNPACK qc4w)
        precisions.append("int4")
    compute: dict[str, Any] = {
        "threads": physical,
        "fp32_gflops": fp32,
        "int8_gops": round(fp32 * (4 if dot else 2), 1),  # dot-product/VNNI: 4 int8 MACs per fp32 lane
        "memory_bandwidth_gbps": round(_measure_copy_gbps(), 1),
    }
    if flags & _FP16_MATH_FLAGS:
        compute["fp16_gflops"] = round(fp32 * 2, 1)  # fp16 lanes are twice as many per vector
    isa = isa_features(flags)
    compute["spinning"] = False  # a spinning idle thread takes the core the rest of the machine needs
    compute["affinity"] = "fastest" if _core_types() > 1 else "none"  # big.LITTLE / P+E cores: the big ones
    data = {
        "schema_version": SCHEMA_VERSION,
        "name": name,
        "description": f"this machine: {cpu}, {logical} logical / {physical} physical cores at {ghz:.2f} GHz; "
        f"flags: {' '.join(f for f in _REPORTED_FLAGS if f in flags) or 'none found'}",
        "device": {"arch": arch, "cores": logical, "ram_gb": round(max(ram / 2**30, 0.01), 2), "cpu": cpu,
                   **({"isa": isa} if isa else {})},
        "limits": {
            "model_ram_mb": max(1, int(ram / 2**20 * 0.25)),  # a quarter of RAM: the rest is the OS and the app
            "model_storage_mb": max(1, min(16384, int(free_mb * 0.25))),
            "precisions": precisions,
        },
        "compute": compute,
        "runtimes": ["executorch", "litert", "onnxruntime"] if arch.startswith("arm")
        else ["onnxruntime", "executorch", "litert"],
        "shapes": {"batch": 1, "seq_len": 128},
        "targets": {"fidelity": {"min_cosine": 0.99}},
    }
    Profile.from_dict(data, source="<detected>")
    return data


DETECT_HEADER = """\
# edgeopt device profile written by `edgeopt profiles detect`.
# device and limits come from psutil (limits: a quarter of RAM, a quarter of free disk up to 16 GiB);
# fp32_gflops = physical cores x max clock x sustained FLOPs/cycle for the CPU's vector flags (about half of
# peak); int8_gops = 4x that with a dot-product/VNNI flag, else 2x; memory_bandwidth_gbps is a one-thread
# numpy copy. These are estimates: edit them if you know better numbers for this machine."""
