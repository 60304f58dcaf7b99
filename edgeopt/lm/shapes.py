"""The decoder LLMs people put on phones and boards, as exact config shapes with random weights.

No model hub is reachable here, so the real checkpoints cannot be loaded; their ``config.json`` values can. Each
``Shape`` below copies the published config of one model (layer count, widths, heads, vocabulary, tied
embeddings, RoPE base), and ``build_shape`` writes a transformers folder with those shapes and weights drawn
from the model class's own initialiser with a fixed seed. Sizes, memory, build time and speed then match the
real model exactly; quality does not (the weights are random), which is why quality targets are measured on
the trained tiny LM (``edgeopt.lm.tinylm``) instead.

The folder is cached under ``$EDGEOPT_CACHE/shapes/<name>-seed<seed>/`` (else ``$XDG_CACHE_HOME/edgeopt/...``,
else ``~/.cache/edgeopt/...``) and written to a temporary folder renamed into place, so an interrupted build
leaves nothing half-written. Nothing here imports torch at module import.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgeopt.errors import UsageError

CODE_VERSION = 1  # bump when a change here changes the weights written


@dataclass(frozen=True)
class Shape:
    """One model's published config: ``config_class`` / ``model_class`` from transformers, and its values."""

    name: str
    source: str  # where the numbers come from
    config_class: str
    model_class: str
    config: dict[str, Any] = field(default_factory=dict)
    params: int = 0  # parameters, tied weights counted once (checked by build_shape)


SHAPES: dict[str, Shape] = {s.name: s for s in (
    Shape("smollm2-135m", "HuggingFaceTB/SmolLM2-135M config.json", "LlamaConfig", "LlamaForCausalLM", dict(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, head_dim=64, max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
        hidden_act="silu", tie_word_embeddings=True, bos_token_id=0, eos_token_id=0, initializer_range=0.041666666,
    ), params=134_515_008),
    Shape("qwen2.5-0.5b", "Qwen/Qwen2.5-0.5B config.json", "Qwen2Config", "Qwen2ForCausalLM", dict(
        vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
        hidden_act="silu", tie_word_embeddings=True, use_sliding_window=False, sliding_window=None,
        max_window_layers=24, bos_token_id=151643, eos_token_id=151643, initializer_range=0.02,
    ), params=494_032_768),
    Shape("tinyllama-1.1b", "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T config.json", "LlamaConfig",
          "LlamaForCausalLM", dict(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
        num_key_value_heads=4, max_position_embeddings=2048, rope_theta=10000.0, rms_norm_eps=1e-5,
        hidden_act="silu", tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, initializer_range=0.02,
    ), params=1_100_048_384),
    Shape("qwen2.5-1.5b", "Qwen/Qwen2.5-1.5B config.json", "Qwen2Config", "Qwen2ForCausalLM", dict(
        vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
        num_key_value_heads=2, max_position_embeddings=131072, rope_theta=1000000.0, rms_norm_eps=1e-6,
        hidden_act="silu", tie_word_embeddings=True, use_sliding_window=False, sliding_window=None,
        max_window_layers=28, bos_token_id=151643, eos_token_id=151643, initializer_range=0.02,
    ), params=1_543_714_304),
)}


def shape(name: str) -> Shape:
    """The ``Shape`` called ``name``. Raises UsageError naming the known ones."""
    if name not in SHAPES:
        raise UsageError(f"unknown LLM shape {name!r}; known: {', '.join(SHAPES)}")
    return SHAPES[name]


def cache_root() -> Path:
    """``$EDGEOPT_CACHE/shapes``, else ``$XDG_CACHE_HOME/edgeopt/shapes``, else ``~/.cache/edgeopt/shapes``."""
    if os.environ.get("EDGEOPT_CACHE"):
        return Path(os.environ["EDGEOPT_CACHE"]).expanduser() / "shapes"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "edgeopt" / "shapes"


def make_config(name: str, **overrides: Any) -> Any:
    """The transformers config of shape ``name`` (``overrides`` replace values, e.g. ``num_hidden_layers``)."""
    import transformers

    s = shape(name)
    return getattr(transformers, s.config_class)(**{**s.config, **overrides}, architectures=[s.model_class])


def build_shape(name: str, *, seed: int = 0, out_dir: Path | None = None) -> Path:
    """A transformers folder (config.json + model.safetensors) of shape ``name`` with seeded random weights.

    Args:
        name: a key of ``SHAPES``.
        seed: ``torch.manual_seed`` before the model class initialises its weights.
        out_dir: where to write it; default the cache (a second call returns the cached folder at once).
    Returns:
        The folder.
    Raises:
        UsageError: unknown ``name``.
    """
    s = shape(name)
    target = Path(out_dir) if out_dir is not None else cache_root() / f"{name}-seed{seed}-v{CODE_VERSION}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    import torch
    import transformers

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        torch.manual_seed(seed)
        model = getattr(transformers, s.model_class)(make_config(name)).eval()
        n = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
        if s.params and n != s.params:
            raise AssertionError(f"{name}: {n} parameters, the published shape has {s.params}")
        model.save_pretrained(tmp)
        del model
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
