"""How much each FFN channel, key/value head group and block contributes, measured on calibration inputs.

Activation importance (calibration given), one forward pass of the unpruned model with hooks, over the
tokens the attention mask keeps (padding never votes):

- FFN channel j: mean |a_j| × ‖W_out[:, j]‖₂, where a_j is the channel's activation entering the output
  projection — the expected size of what the channel writes into the residual stream.
- Key/value group g (Llama family): the mean L2 norm of each query head's exact contribution to the
  attention output (head output × its o_proj columns), summed over the query heads that read group g.
- Block i: mean angular distance arccos(cos(h_in, h_out)) / π between the hidden state entering and leaving
  the block (Gromov et al. 2024); the blocks that turn the hidden state least are dropped first.

Magnitude importance (no calibration): the same products with weights only — ‖W_in[j, :]‖ × ‖W_out[:, j]‖
for a channel, ‖W_v[g]‖ × Σ‖W_o[:, h]‖ for a group — and depth falls back to position: the deepest
blocks before the last, which layer-dropping studies find the most redundant.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edgeopt.prune import arch as archs

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from edgeopt.models import LoadedModel


@dataclass
class Scores:
    """Per block: channel scores, group scores (None where heads are not prunable), angular distance."""

    ffn: list[torch.Tensor]
    groups: list[torch.Tensor] | None
    block_angles: list[float] | None


def activation_scores(loaded: LoadedModel, arch: archs.Arch, calibration: list[tuple]) -> Scores:
    """Run ``calibration`` through the unpruned model once and score channels, groups and blocks."""
    import torch

    model = loaded.module.model
    layers = archs.blocks(arch, model)
    n = len(layers)
    layout = archs.head_layout(model.config) if arch.attn else None
    mask_at = loaded.input_names.index("attention_mask") if "attention_mask" in loaded.input_names else None
    state: dict[str, Any] = {"mask": None}
    ffn_sum: list[Any] = [0.0] * n
    head_sum: list[Any] = [0.0] * n
    angle_sum = [0.0] * n
    tokens = [0]
    hidden_in: dict[int, Any] = {}

    def kept(x):  # [batch, seq, ...] -> [tokens the mask keeps, ...]
        m = state["mask"]
        return x.reshape(-1, x.shape[-1]) if m is None else x[m]

    def on_ffn(i):
        def hook(_module, args):
            ffn_sum[i] = ffn_sum[i] + kept(args[0]).abs().double().sum(0)
        return hook

    def on_attn_out(i, o_proj):
        heads, _, head_dim = layout
        w = o_proj.weight.view(o_proj.weight.shape[0], heads, head_dim)

        def hook(_module, args):
            x = kept(args[0]).view(-1, heads, head_dim)
            contrib = torch.einsum("nhd,ohd->nho", x, w).norm(dim=-1)  # each head's write to the residual
            head_sum[i] = head_sum[i] + contrib.double().sum(0)
        return hook

    def on_block_in(i):
        def hook(_module, args, kwargs):
            hidden_in[i] = args[0] if args else kwargs["hidden_states"]
        return hook

    def on_block_out(i):
        def hook(_module, _args, out):
            h_out = out[0] if isinstance(out, tuple) else out
            cos = torch.nn.functional.cosine_similarity(kept(hidden_in.pop(i)).double(), kept(h_out).double(), dim=-1)
            angle_sum[i] += float((torch.arccos(cos.clamp(-1.0, 1.0)) / torch.pi).sum())
        return hook

    handles = []
    try:
        for i, block in enumerate(layers):
            handles.append(archs.get(block, arch.ffn_out).register_forward_pre_hook(on_ffn(i)))
            if arch.attn:
                o_proj = archs.get(block, arch.attn[3])
                handles.append(o_proj.register_forward_pre_hook(on_attn_out(i, o_proj)))
            handles.append(block.register_forward_pre_hook(on_block_in(i), with_kwargs=True))
            handles.append(block.register_forward_hook(on_block_out(i)))
        with torch.no_grad():
            for sample in calibration:
                m = sample[mask_at].bool() if mask_at is not None else None
                state["mask"] = m
                tokens[0] += int(m.sum()) if m is not None else sample[0].numel()
                loaded.module(*sample)
    finally:
        for h in handles:
            h.remove()
    count = max(tokens[0], 1)
    ffn = []
    for i, block in enumerate(layers):
        out_norm = archs.out_weight_columns(arch, archs.get(block, arch.ffn_out)).detach().double().norm(dim=0)
        ffn.append((ffn_sum[i] / count) * out_norm)
    groups = None
    if layout:
        heads, kv, _ = layout
        groups = [(head_sum[i] / count).view(kv, heads // kv).sum(1) for i in range(n)]
    return Scores(ffn=ffn, groups=groups, block_angles=[a / count for a in angle_sum])


def magnitude_scores(loaded: LoadedModel, arch: archs.Arch) -> Scores:
    """Data-free scores from weight norms (depth is left to position: ``block_angles`` is None)."""
    import torch

    model = loaded.module.model
    layout = archs.head_layout(model.config) if arch.attn else None
    ffn, groups = [], [] if layout else None
    with torch.no_grad():
        for block in archs.blocks(arch, model):
            score = archs.out_weight_columns(arch, archs.get(block, arch.ffn_out)).double().norm(dim=0)
            for path in arch.ffn_in:
                score = score * archs.in_weight_rows(arch, archs.get(block, path)).double().norm(dim=1)
            ffn.append(score)
            if layout:
                heads, kv, head_dim = layout
                v = archs.get(block, arch.attn[2]).weight.double()
                o = archs.get(block, arch.attn[3]).weight.double()
                v_norm = v.view(kv, head_dim, -1).norm(dim=(1, 2))
                o_norm = o.view(o.shape[0], heads, head_dim).norm(dim=(0, 2)).view(kv, heads // kv).sum(1)
                groups.append(v_norm * o_norm)
    return Scores(ffn=ffn, groups=groups, block_angles=None)


def top(scores: torch.Tensor, keep: int) -> torch.Tensor:
    """Indices of the ``keep`` highest scores, ascending (ties go to the lower index)."""
    import torch

    order = torch.argsort(scores, descending=True, stable=True)
    return order[:keep].sort().values


def blocks_to_drop(angles: list[float] | None, n_blocks: int, drop: int) -> list[int]:
    """Original indices of the ``drop`` blocks to remove, ascending.

    With measured angles: the smallest angular distances. Without: the deepest blocks before the last.
    """
    if drop == 0:
        return []
    if angles is None:
        return list(range(n_blocks - 1 - drop, n_blocks - 1))  # drop < n_blocks, validated by the caller
    order = sorted(range(n_blocks), key=lambda i: (angles[i], i))
    return sorted(order[:drop])
