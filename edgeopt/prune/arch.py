"""Where the prunable parts of each supported transformers family live, and the surgery that removes them.

One ``Arch`` per family names, relative to the base model (``model.base_model``): the list of blocks,
the FFN's input and output projections inside a block, the attention projections, and the config keys
that describe them. Surgery builds new, smaller ``nn.Linear`` / ``Conv1D`` modules from the kept rows
and columns, so the result is a plain transformers model whose config says exactly what it holds.

Heads are pruned only where the config can describe fewer heads at the same head size: Llama and Qwen2
carry ``head_dim``; BERT and GPT-2 derive the head size as ``hidden_size / num_attention_heads``, so a
BertModel or GPT2 model with fewer heads cannot be written as a config and read back. Those families
are width-pruned in their FFN only (two thirds of a block's weights).

Checked in transformers 5.24's source: the 4.x escape hatch is gone — no ``PreTrainedModel.prune_heads``,
no ``config.pruned_heads``, no ``find_pruneable_heads_and_indices`` (none of the three appears anywhere in
the package). ``BertSelfAttention`` builds query/key/value as ``Linear(hidden, heads × int(hidden / heads))``
and ``BertSelfOutput.dense`` as ``Linear(hidden, hidden)``; ``GPT2Attention`` builds ``c_attn`` as
``Conv1D(3 × n_embd, n_embd)`` and ``c_proj`` as ``Conv1D(n_embd, n_embd)``; neither config has a
``head_dim``. A model with fewer heads runs in memory (the forward infers the head count from the
projection width) and exports, but from_pretrained rebuilds the full width and fails on the size mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeopt.errors import UnsupportedError

if TYPE_CHECKING:  # pragma: no cover
    import torch


@dataclass(frozen=True)
class Arch:
    """The prunable structure of one family (paths are dotted attribute paths)."""

    label: str
    blocks: str  # from the base model: the ModuleList of transformer blocks
    ffn_in: tuple[str, ...]  # from a block: projections whose output channels are the FFN channels
    ffn_out: str  # from a block: the projection that reads the FFN channels
    attn: tuple[str, str, str, str] | None  # q, k, v, o from a block; None: heads cannot be pruned
    layers_key: str  # config key of the block count
    ffn_key: str  # config key of the FFN width
    conv1d: bool = False  # GPT-2's Conv1D stores weight as [in, out]
    heads_reason: str = ""  # why heads are not prunable in this family


_BERT = Arch(
    label="BERT (BertModel and its task heads)",
    blocks="encoder.layer",
    ffn_in=("intermediate.dense",),
    ffn_out="output.dense",
    attn=None,
    layers_key="num_hidden_layers",
    ffn_key="intermediate_size",
    heads_reason="BertConfig derives the head size as hidden_size / num_attention_heads and transformers 5 "
    "removed config.pruned_heads, so fewer heads cannot be described by a config that from_pretrained reads",
)
_LLAMA = Arch(
    label="Llama / Qwen2 (…ForCausalLM, …Model)",
    blocks="layers",
    ffn_in=("mlp.gate_proj", "mlp.up_proj"),
    ffn_out="mlp.down_proj",
    attn=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"),
    layers_key="num_hidden_layers",
    ffn_key="intermediate_size",
)
_GPT2 = Arch(
    label="GPT-2 (GPT2LMHeadModel, GPT2Model)",
    blocks="h",
    ffn_in=("mlp.c_fc",),
    ffn_out="mlp.c_proj",
    attn=None,
    layers_key="n_layer",
    ffn_key="n_inner",
    conv1d=True,
    heads_reason="GPT2Config derives the head size as n_embd / n_head (and fuses q, k, v in c_attn) and "
    "transformers 5 removed config.pruned_heads, so fewer heads cannot be described by a config that "
    "from_pretrained reads",
)
ARCHS: dict[str, Arch] = {"bert": _BERT, "llama": _LLAMA, "qwen2": _LLAMA, "gpt2": _GPT2}


def arch_for(config: Any, where: str) -> Arch:
    """The ``Arch`` of a transformers config (UnsupportedError naming the supported families otherwise)."""
    model_type = getattr(config, "model_type", None) if config is not None else None
    if model_type not in ARCHS:
        what = f"model type {model_type!r}" if model_type else "a model without a transformers config"
        supported = ", ".join(sorted(ARCHS))
        raise UnsupportedError(
            f"{where}: structured pruning does not support {what}; supported model types: {supported} "
            "(package it unpruned, or convert it to one of those families)"
        )
    return ARCHS[model_type]


def get(root: Any, path: str) -> Any:
    for part in path.split("."):
        root = getattr(root, part)
    return root


def _set(root: Any, path: str, value: Any) -> None:
    head, _, last = path.rpartition(".")
    setattr(get(root, head) if head else root, last, value)


def blocks(arch: Arch, model: Any) -> Any:
    """The ModuleList of transformer blocks of a transformers model."""
    return get(model.base_model, arch.blocks)


def head_layout(config: Any) -> tuple[int, int, int]:
    """(query heads, key/value heads, head size) of a Llama-family config."""
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return heads, kv, head_dim


def out_weight_columns(arch: Arch, module: Any) -> torch.Tensor:
    """The ffn_out / o_proj weight as [out, in], whatever the layer type stores."""
    return module.weight.t() if arch.conv1d else module.weight


def in_weight_rows(arch: Arch, module: Any) -> torch.Tensor:
    """An input projection's weight as [out, in]."""
    return module.weight.t() if arch.conv1d else module.weight


# --- surgery ----------------------------------------------------------------------------------


def _keep_out(arch: Arch, layer: Any, idx: torch.Tensor) -> Any:
    """A copy of ``layer`` with only the output channels ``idx``."""
    import torch

    with torch.no_grad():
        if arch.conv1d:
            from transformers.pytorch_utils import Conv1D

            new = Conv1D(len(idx), layer.weight.shape[0]).to(layer.weight.dtype)
            new.weight.copy_(layer.weight[:, idx])
            new.bias.copy_(layer.bias[idx])
            return new
        new = torch.nn.Linear(layer.in_features, len(idx), bias=layer.bias is not None, dtype=layer.weight.dtype)
        new.weight.copy_(layer.weight[idx])
        if layer.bias is not None:
            new.bias.copy_(layer.bias[idx])
        return new


def _keep_in(arch: Arch, layer: Any, idx: torch.Tensor) -> Any:
    """A copy of ``layer`` reading only the input channels ``idx``."""
    import torch

    with torch.no_grad():
        if arch.conv1d:
            from transformers.pytorch_utils import Conv1D

            new = Conv1D(layer.weight.shape[1], len(idx)).to(layer.weight.dtype)
            new.weight.copy_(layer.weight[idx, :])
            new.bias.copy_(layer.bias)
            return new
        new = torch.nn.Linear(len(idx), layer.out_features, bias=layer.bias is not None, dtype=layer.weight.dtype)
        new.weight.copy_(layer.weight[:, idx])
        if layer.bias is not None:
            new.bias.copy_(layer.bias)
        return new


def keep_ffn_channels(arch: Arch, block: Any, idx: torch.Tensor) -> None:
    """Keep FFN channels ``idx`` (sorted) of one block, in place."""
    for path in arch.ffn_in:
        _set(block, path, _keep_out(arch, get(block, path), idx))
    _set(block, arch.ffn_out, _keep_in(arch, get(block, arch.ffn_out), idx))


def keep_kv_groups(arch: Arch, block: Any, groups: torch.Tensor, layout: tuple[int, int, int]) -> None:
    """Keep the key/value heads ``groups`` (sorted) of one Llama-family block and the query heads that read them.

    transformers' ``repeat_kv`` serves query heads ``g*r .. g*r+r-1`` from key/value head ``g``
    (``r = heads / kv_heads``), so whole groups are removed and ``heads / kv_heads`` stays ``r``.
    """
    import torch

    heads, kv, head_dim = layout
    r = heads // kv
    q_heads = (groups[:, None] * r + torch.arange(r)[None, :]).reshape(-1)
    q_idx = (q_heads[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)
    kv_idx = (groups[:, None] * head_dim + torch.arange(head_dim)[None, :]).reshape(-1)
    q, k, v, o = arch.attn
    _set(block, q, _keep_out(arch, get(block, q), q_idx))
    _set(block, k, _keep_out(arch, get(block, k), kv_idx))
    _set(block, v, _keep_out(arch, get(block, v), kv_idx))
    _set(block, o, _keep_in(arch, get(block, o), q_idx))


def keep_blocks(arch: Arch, model: Any, kept: list[int]) -> None:
    """Keep only the blocks ``kept`` (original indices, ascending) and renumber their ``layer_idx``."""
    import torch

    old = blocks(arch, model)
    new = torch.nn.ModuleList([old[i] for i in kept])
    for new_idx, block in enumerate(new):
        for m in block.modules():
            if hasattr(m, "layer_idx") and isinstance(m.layer_idx, int):
                m.layer_idx = new_idx  # the KV cache is indexed by it
    _set(model.base_model, arch.blocks, new)


def update_config(arch: Arch, config: Any, *, kept_blocks: list[int], ffn: int, heads: tuple[int, int, int] | None) -> None:
    """Write the pruned shape into ``config`` (in place) so that from_pretrained rebuilds the same model."""
    setattr(config, arch.layers_key, len(kept_blocks))
    setattr(config, arch.ffn_key, int(ffn))
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list):  # Qwen2: per-block attention kinds follow their block
        config.layer_types = [layer_types[i] for i in kept_blocks]
    if heads is not None:
        config.num_attention_heads, config.num_key_value_heads, config.head_dim = (int(h) for h in heads)
