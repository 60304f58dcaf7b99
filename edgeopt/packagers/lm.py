"""Decoder LMs with a KV cache: which module builds them per runtime, and what each can build.

Each runtime's LM export lives beside its encoder packager (``executorch_lm``, ``onnx_lm``, ``tflite_lm``)
and provides ``check_lm(loaded, scheme)`` (UnsupportedError before any work) and
``export_lm(loaded, scheme, work_dir, *, prompt_len, context_len) -> Artifact`` whose ``details["lm"]`` is
what the runtime's ``load_lm`` session needs (runtimes/common/README.md, "Decoder LMs").
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeopt.errors import UnsupportedError
from edgeopt.formats import Runtime

if TYPE_CHECKING:  # pragma: no cover
    from edgeopt.models import LoadedModel
    from edgeopt.packagers import Artifact
    from edgeopt.quantize import QuantScheme

LM_MODULES = {Runtime.EXECUTORCH: "executorch_lm", Runtime.ONNXRUNTIME: "onnx_lm", Runtime.LITERT: "tflite_lm"}


def lm_module(runtime: Runtime) -> Any:
    """The module that exports decoder LMs for ``runtime`` (UnsupportedError when there is none)."""
    name = LM_MODULES.get(runtime)
    if name is None:
        raise UnsupportedError(f"{runtime.value}: edgeopt has no decoder-LM (KV-cache) export for this runtime")
    try:
        return importlib.import_module(f"edgeopt.packagers.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"edgeopt.packagers.{name}":
            raise UnsupportedError(f"{runtime.value}: this edgeopt version has no decoder-LM export") from None
        raise


def lm_capabilities(runtime: Runtime):
    """The ``Capabilities`` of ``runtime``'s LM export (``LM_CAPABILITIES`` of its module), or None."""
    try:
        return getattr(lm_module(runtime), "LM_CAPABILITIES", None)
    except UnsupportedError:
        return None


def export_lm(runtime: Runtime, loaded: "LoadedModel", scheme: "QuantScheme", work_dir: Path, *, prompt_len: int,
              context_len: int) -> "Artifact":
    """Check, then export ``loaded`` with its KV cache for ``runtime``; ``details["lm"]`` gets the lengths."""
    module = lm_module(runtime)
    module.check_lm(loaded, scheme)
    artifact = module.export_lm(loaded, scheme, Path(work_dir), prompt_len=prompt_len, context_len=context_len)
    lm = artifact.details.setdefault("lm", {})
    lm.setdefault("kind", "causal_lm")
    lm.setdefault("prompt_len", prompt_len)
    lm.setdefault("context_len", context_len)
    return artifact


def max_positions(config: Any) -> int | None:
    """The model's position limit (``max_position_embeddings``, GPT-2's ``n_positions``), or None."""
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def check_lengths(fmt: str, config: Any, prompt_len: int, context_len: int) -> None:
    """UnsupportedError unless 1 <= prompt_len <= context_len <= the model's positions (``fmt`` starts it)."""
    if not 1 <= prompt_len <= context_len:
        raise UnsupportedError(f"{fmt}: prompt_len must be in 1..context_len ({context_len}), got {prompt_len} "
                               "(need 1 <= prompt_len <= context_len)")
    limit = max_positions(config)
    if limit and context_len > limit:
        raise UnsupportedError(f"{fmt}: context_len {context_len} exceeds the model's {limit} positions "
                               f"(max_position_embeddings); use context_len <= {limit}")


def lm_lengths(config: Any, seq_len: int, context_len: int | None) -> tuple[int, int]:
    """(prompt_len, context_len) to export at: the profile's seq_len and context_len, the context capped at
    the model's ``max_position_embeddings``; a context no longer than the prompt keeps a quarter for decoding."""
    ctx = context_len or seq_len
    max_pos = max_positions(config)
    if max_pos:
        ctx = min(ctx, max_pos)
    prompt = seq_len if seq_len < ctx else max(1, ctx * 3 // 4)
    return prompt, ctx


# --- host memory of a build ----------------------------------------------------------------------

GB = 1024 ** 3
# Peak host RSS of ``edgeopt package`` building a decoder LM (the whole process: the loaded fp32 model, the
# LM gate's reference, the converter and the artifact's own verification), as a multiple of the model's fp32
# weight bytes, rounded up from benchmarks/bench_llm_build.py's measurements (README "Real-size LM builds").
BUILD_MEMORY_FACTORS: dict[tuple[Runtime, str], float] = {
    # SmolLM2-135M shape, 2-core host (benchmarks/bench_llm_build.py): pte fp32 6.98x, pte int8 >= 5.7x (killed at
    # 600 s in the lowering), litert int8 6.73x, onnx int8 9.94x (onnxruntime's range collection for SmoothQuant
    # runs a session with every intermediate output). Unmeasured pairs take their format's measured value.
    (Runtime.EXECUTORCH, "fp32"): 7.0, (Runtime.EXECUTORCH, "int8"): 7.0, (Runtime.EXECUTORCH, "int4"): 7.0,
    (Runtime.ONNXRUNTIME, "fp32"): 10.0, (Runtime.ONNXRUNTIME, "int8"): 10.0, (Runtime.ONNXRUNTIME, "int4"): 10.0,
    (Runtime.LITERT, "fp32"): 7.0, (Runtime.LITERT, "int8"): 7.0, (Runtime.LITERT, "int4"): 7.0,
}
DEFAULT_BUILD_MEMORY_FACTOR = 4.0
BUILD_MEMORY_BASE = 700 * 1024 * 1024  # the interpreter with torch, transformers and one converter imported


def fp32_weight_bytes(module: Any) -> int:
    """Bytes of ``module``'s parameters and buffers at fp32, a tied (shared) tensor counted once."""
    seen, total = set(), 0
    for t in list(module.parameters()) + list(module.buffers()):
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * 4
    return total


def build_memory(runtime: Runtime, precision: str, fp32_bytes: int) -> int:
    """Estimated peak host memory (bytes) of packaging an LM of ``fp32_bytes`` for ``runtime`` at ``precision``."""
    factor = BUILD_MEMORY_FACTORS.get((runtime, precision), DEFAULT_BUILD_MEMORY_FACTOR)
    return int(BUILD_MEMORY_BASE + factor * fp32_bytes)


def host_available_memory() -> int:
    """Bytes the OS can give this process now without swapping (psutil ``virtual_memory().available``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def process_resident_memory() -> int:
    """This process's resident bytes now (what the build's peak already includes: the loaded model)."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def memory_shortfall(runtime: Runtime, precision: str, fp32_bytes: int, *, name: str = "the model",
                     alternatives: tuple = ()) -> str | None:
    """Why building this LM would run the host out of memory, or None when it fits.

    The build needs ``build_memory`` at peak; this process already holds the loaded fp32 model (1x the weights)
    and the imports, so what it still has to allocate, ``(factor - 1) x fp32_bytes``, is compared with what the
    OS reports available. ``alternatives``: other (runtime, precision) pairs to name when they would fit.
    """
    def more(r: Runtime, p: str) -> int:
        return max(0, build_memory(r, p, fp32_bytes) - BUILD_MEMORY_BASE - fp32_bytes)

    extra, available = more(runtime, precision), host_available_memory()
    if extra <= available:
        return None
    resident = process_resident_memory()
    need = build_memory(runtime, precision, fp32_bytes)
    fits = [f"{r.value}/{p}" for r, p in alternatives if more(r, p) <= available]
    smaller = (f"; {', '.join(fits)} would fit now" if fits else
               "; no format or precision of this model fits in the memory available now")
    return (f"{runtime.value} {precision}: building {name} ({fp32_bytes / GB:.2f} GB of fp32 weights) needs about "
            f"{need / GB:.1f} GB of host memory at peak: {extra / GB:.1f} GB beyond the loaded model (this process "
            f"holds {resident / GB:.1f} GB), and only {available / GB:.1f} GB is available; close other work to free "
            f"{(extra - available) / GB:.1f} GB, build on a machine with at least {-(-need // GB) + 1} GB of RAM, "
            f"or pick a smaller --precision / --format{smaller}")


# --- the last conversion of each kind, on disk ---------------------------------------------------

_FILE_CACHE: dict[str, tuple[str, Path, tuple[Path, ...]]] = {}  # kind -> (content key, file, companions)
_FILE_CACHE_DIR: list[Path] = []


def release_memory() -> None:
    """Collect garbage (the exporters' graphs hold reference cycles) and hand freed heap back to the OS.

    glibc keeps freed blocks of a converter's buffers in its arenas; RSS stays at the converter's peak while the
    runtime then allocates the model again beside them. ``malloc_trim(0)`` returns those pages (no-op where the
    C library is not glibc)."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cached_conversion(kind: str, key: str, path: Path) -> bool:
    """Copy the last conversion of ``kind`` to ``path`` (and its companion files, e.g. ONNX external data, beside
    it) when its content key is ``key``; whether it did.

    The fp32 conversion of a model is the start of every precision and every keep-float retry of it, and takes
    minutes for a real-size LM; kept as files (not bytes in memory: that would add the whole model to the build's
    peak) in a temporary folder removed at exit."""
    import shutil

    hit = _FILE_CACHE.get(kind)
    if hit is None or hit[0] != key or not all(f.is_file() for f in (hit[1], *hit[2])):
        return False
    shutil.copyfile(hit[1], path)
    for companion in hit[2]:
        shutil.copyfile(companion, path.parent / companion.name)
    return True


def remember_conversion(kind: str, key: str, path: Path, companions: tuple[Path, ...] = ()) -> None:
    """Keep a copy of ``path`` (and of ``companions``, files its contents refer to by name) as the last conversion
    of ``kind``, replacing the previous one."""
    import atexit
    import shutil
    import tempfile

    if not _FILE_CACHE_DIR:
        folder = Path(tempfile.mkdtemp(prefix="edgeopt-conversions-"))
        atexit.register(shutil.rmtree, folder, True)
        _FILE_CACHE_DIR.append(folder)
    target = _FILE_CACHE_DIR[0] / kind
    side = _FILE_CACHE_DIR[0] / f"{kind}.companions"
    _FILE_CACHE.pop(kind, None)
    shutil.rmtree(side, ignore_errors=True)
    try:
        shutil.copyfile(path, target)
        kept = []
        for companion in companions:
            side.mkdir(exist_ok=True)
            shutil.copyfile(companion, side / companion.name)
            kept.append(side / companion.name)
    except OSError:  # no room for the copy: the next attempt converts again
        target.unlink(missing_ok=True)
        shutil.rmtree(side, ignore_errors=True)
        return
    _FILE_CACHE[kind] = (key, target, tuple(kept))
