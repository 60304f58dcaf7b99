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
