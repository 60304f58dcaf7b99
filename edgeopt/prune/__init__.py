"""Structured pruning: a smaller real transformers model (fewer FFN channels, heads, blocks), not masks.

    result = prune(loaded, PruneSpec(width_ratio=0.75, drop_blocks=1), calibration, recover_seconds=30)
    result.loaded          # a LoadedModel of the pruned model: same inputs, outputs and wrapper
    result.report.to_dict()  # what was pruned, the importance method, params and fidelity, for the manifest
    result.save("pruned/")   # a Hugging Face directory that load_model() reads back to identical outputs

``width_ratio`` is the fraction KEPT, in (0, 1]: of the FFN channels of every block, and of the key/value
head groups of every block where the config can describe fewer heads (Llama, Qwen2; see ``arch``).
Every block keeps the same count (which channels differs per block), so the config states the shape:
``round_half_up(width_ratio × n)``, at least 1. ``drop_blocks`` removes that many whole blocks.

Importance (``importance``): activation-based on calibration inputs, weight magnitude without them; blocks
by the angular distance between their input and output hidden states. Recovery (``recover``): optional
distillation from the unpruned model, bounded in seconds; fidelity is measured before and after it on
held-out inputs (mean cosine of the first output, as ``verify`` does for artifacts).

Why hand-written surgery, not torch-pruning (measured with torch-pruning 1.6.1, torch 2.13, transformers 5.24;
``python benchmarks/bench_prune.py --torch-pruning`` repeats it):

- FFN channels of MiniLM (BERT): torch-pruning's DependencyGraph finds the coupled layers, and with the same
  kept channels its model equals ours to the bit (max abs difference 0, 19,169,664 parameters both) at a
  small cost (graph 0.13 s + surgery 0.05 s). But it leaves config.json at intermediate_size 1536, so
  save_pretrained -> from_pretrained fails on a size mismatch until the config is rewritten by hand: the
  per-family knowledge this module holds anyway.
- GPT-2: building the graph and pruning mlp.c_fc fails (TypeError inside torch-pruning): transformers'
  Conv1D, weight stored [in, out], is no layer it knows; it would need a custom pruner, i.e. the surgery.
- Llama heads with GQA: MetaPruner(num_heads=..., prune_num_heads=True) on a 2-block, 32-wide Llama did
  not return within 3 minutes (stuck in DependencyGraph.get_all_groups).
- Depth (dropping blocks) and config updates are outside torch-pruning's scope.

So the dependency would do the easiest third of the work and none of the config; the surgery here is
~100 lines driven by per-family data (``arch.py``), each output checked by exact parameter counts and
save_pretrained -> load_model round trips to identical outputs (tests/test_prune.py).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeopt.errors import UnsupportedError, UsageError

if TYPE_CHECKING:  # pragma: no cover
    from edgeopt.models import LoadedModel
    from edgeopt.verify import Fidelity

DEFAULT_EVAL_SAMPLES = 16
_ST_FILES = ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json")


class Importance(str, enum.Enum):
    """How FFN channels and heads were ranked."""

    ACTIVATION = "activation"  # measured on calibration inputs
    MAGNITUDE = "magnitude"  # weight norms, no data


class DepthMethod(str, enum.Enum):
    """How the dropped blocks were chosen."""

    ANGULAR_DISTANCE = "angular_distance"  # smallest change of the hidden state on calibration inputs
    POSITION = "position"  # no calibration: the deepest blocks before the last


@dataclass(frozen=True)
class PruneSpec:
    """How much to prune.

    Attributes:
        width_ratio: fraction of FFN channels (and of key/value head groups, where the family allows)
            KEPT in every block, in (0, 1]; 1.0 prunes no width.
        drop_blocks: whole transformer blocks removed, 0 .. blocks − 1.
        head_ratio: fraction of key/value head groups kept; None = ``width_ratio`` where the family's
            config can describe fewer heads, else 1.0. A value < 1 on BERT or GPT-2 is an error.
    """

    width_ratio: float = 1.0
    drop_blocks: int = 0
    head_ratio: float | None = None

    def __post_init__(self) -> None:
        for name in ("width_ratio", "head_ratio"):
            value = getattr(self, name)
            if value is None and name == "head_ratio":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < float(value) <= 1.0:
                raise UsageError(
                    f"prune: {name} must be a number in (0, 1] — the fraction of channels/heads KEPT — "
                    f"got {value!r} (write 0.75 to keep three quarters, 1.0 to prune no width)"
                )
        if isinstance(self.drop_blocks, bool) or not isinstance(self.drop_blocks, int) or self.drop_blocks < 0:
            raise UsageError(f"prune: drop_blocks must be a whole number >= 0, got {self.drop_blocks!r}")

    @property
    def is_identity(self) -> bool:
        return self.width_ratio == 1.0 and self.drop_blocks == 0 and self.head_ratio in (None, 1.0)

    def describe(self) -> str:
        """``keep 75% width, drop 1 block``"""
        parts = [f"keep {self.width_ratio:.0%} width"]
        if self.head_ratio is not None:
            parts.append(f"{self.head_ratio:.0%} heads")
        parts.append(f"drop {self.drop_blocks} block{'s' if self.drop_blocks != 1 else ''}")
        return ", ".join(parts)

    def to_dict(self) -> dict:
        return {"width_ratio": self.width_ratio, "drop_blocks": self.drop_blocks, "head_ratio": self.head_ratio}

    @classmethod
    def from_dict(cls, d: dict) -> PruneSpec:
        return cls(width_ratio=d["width_ratio"], drop_blocks=d["drop_blocks"], head_ratio=d.get("head_ratio"))


@dataclass(frozen=True)
class PrunedShape:
    """The shape a spec gives a model: what its config will say (the planner can cost it without pruning)."""

    blocks: int
    intermediate_size: int
    heads: int
    kv_heads: int
    head_dim: int
    heads_pruned: bool


def _keep(ratio: float, n: int) -> int:
    return max(1, min(n, math.floor(ratio * n + 0.5)))


def plan_shape(config: Any, spec: PruneSpec, *, where: str = "model") -> PrunedShape:
    """The pruned shape of a transformers ``config`` under ``spec``, without touching weights.

    Raises:
        UnsupportedError: a model type that cannot be pruned, or heads asked of BERT / GPT-2.
        UsageError: ``drop_blocks`` would remove every block.
    """
    from edgeopt.prune import arch as archs

    arch = archs.arch_for(config, where)
    blocks = int(getattr(config, arch.layers_key))
    if spec.drop_blocks >= blocks:
        raise UsageError(
            f"prune {where}: drop_blocks={spec.drop_blocks} would remove all {blocks} blocks "
            f"(use at most {blocks - 1})"
        )
    ffn = int(getattr(config, arch.ffn_key) or 4 * config.hidden_size)  # GPT-2's n_inner None means 4 × n_embd
    if arch.attn is None:
        if spec.head_ratio is not None and spec.head_ratio < 1.0:
            raise UnsupportedError(
                f"prune {where}: cannot prune attention heads of {arch.label}: {arch.heads_reason}; "
                "leave head_ratio unset (width_ratio then prunes FFN channels only)"
            )
        heads = int(config.num_attention_heads)
        return PrunedShape(blocks - spec.drop_blocks, _keep(spec.width_ratio, ffn), heads, heads,
                           int(config.hidden_size) // heads, False)
    heads, kv, head_dim = archs.head_layout(config)
    head_ratio = spec.width_ratio if spec.head_ratio is None else spec.head_ratio
    kept_kv = _keep(head_ratio, kv)
    return PrunedShape(blocks - spec.drop_blocks, _keep(spec.width_ratio, ffn), kept_kv * (heads // kv), kept_kv,
                       head_dim, kept_kv < kv)


@dataclass(frozen=True)
class LayerReport:
    """One kept block: its original index, the query and key/value heads it kept, its FFN width."""

    block: int
    heads: tuple[int, ...]
    kv_heads: tuple[int, ...]
    ffn_channels: int

    def to_dict(self) -> dict:
        return {"block": self.block, "heads": list(self.heads), "kv_heads": list(self.kv_heads),
                "ffn_channels": self.ffn_channels}

    @classmethod
    def from_dict(cls, d: dict) -> LayerReport:
        return cls(d["block"], tuple(d["heads"]), tuple(d["kv_heads"]), d["ffn_channels"])


@dataclass(frozen=True)
class PruneReport:
    """What was pruned and what it cost, as data (round-trips through JSON for the manifest).

    ``fidelity_before`` compares the pruned model with the unpruned one on held-out inputs right after
    surgery; ``fidelity_after`` the same after recovery (None without recovery).
    """

    model_type: str
    spec: PruneSpec
    importance: Importance
    depth_method: DepthMethod | None
    params_before: int
    params_after: int
    blocks_before: int
    dropped_blocks: tuple[int, ...]
    block_angles: tuple[float, ...] | None
    layers: tuple[LayerReport, ...]
    notes: tuple[str, ...]
    calibration_samples: int
    fidelity_before: Fidelity
    fidelity_after: Fidelity | None = None
    recovery_seconds: float = 0.0
    recovery_steps: int = 0
    prune_seconds: float = 0.0

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before

    @property
    def fidelity(self) -> Fidelity:
        """The fidelity of the model this report describes (after recovery when there was one)."""
        return self.fidelity_after or self.fidelity_before

    def summary(self) -> str:
        """``keep 75% width, drop 1 block: 22.7M -> 17.1M params (0.75), cosine 0.9512 -> 0.9803 after 30 s recovery``"""
        s = (f"{self.spec.describe()}: {self.params_before / 1e6:.1f}M -> {self.params_after / 1e6:.1f}M params "
             f"({self.params_ratio:.2f}), cosine {self.fidelity_before.mean_cosine:.4f}")
        if self.fidelity_after is not None:
            s += f" -> {self.fidelity_after.mean_cosine:.4f} after {self.recovery_seconds:.0f} s recovery"
        return s

    def to_dict(self) -> dict:
        return {
            "model_type": self.model_type,
            "spec": self.spec.to_dict(),
            "importance": self.importance.value,
            "depth_method": self.depth_method.value if self.depth_method else None,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "params_ratio": self.params_ratio,
            "blocks_before": self.blocks_before,
            "dropped_blocks": list(self.dropped_blocks),
            "block_angles": list(self.block_angles) if self.block_angles is not None else None,
            "layers": [layer.to_dict() for layer in self.layers],
            "notes": list(self.notes),
            "calibration_samples": self.calibration_samples,
            "fidelity_before": self.fidelity_before.to_dict(),
            "fidelity_after": self.fidelity_after.to_dict() if self.fidelity_after else None,
            "recovery_seconds": self.recovery_seconds,
            "recovery_steps": self.recovery_steps,
            "prune_seconds": self.prune_seconds,
            "summary": self.summary(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> PruneReport:
        from edgeopt.verify import Fidelity

        return cls(
            model_type=d["model_type"],
            spec=PruneSpec.from_dict(d["spec"]),
            importance=Importance(d["importance"]),
            depth_method=DepthMethod(d["depth_method"]) if d.get("depth_method") else None,
            params_before=d["params_before"],
            params_after=d["params_after"],
            blocks_before=d["blocks_before"],
            dropped_blocks=tuple(d["dropped_blocks"]),
            block_angles=tuple(d["block_angles"]) if d.get("block_angles") is not None else None,
            layers=tuple(LayerReport.from_dict(x) for x in d["layers"]),
            notes=tuple(d.get("notes", ())),
            calibration_samples=d["calibration_samples"],
            fidelity_before=Fidelity.from_dict(d["fidelity_before"]),
            fidelity_after=Fidelity.from_dict(d["fidelity_after"]) if d.get("fidelity_after") else None,
            recovery_seconds=d.get("recovery_seconds", 0.0),
            recovery_steps=d.get("recovery_steps", 0),
            prune_seconds=d.get("prune_seconds", 0.0),
        )


@dataclass
class PruneResult:
    """The pruned model as a ``LoadedModel`` (same input/output names and wrapper) and its report.

    ``kept_channels`` maps each kept block (original index) to the FFN channels it kept (original indices).
    """

    loaded: LoadedModel
    report: PruneReport
    kept_channels: dict[int, tuple[int, ...]] = field(default_factory=dict, repr=False)
    source_dir: Path | None = None

    def to_dict(self) -> dict:
        return self.report.to_dict()

    def save(self, path: str | Path) -> Path:
        """Write the pruned model as a Hugging Face directory that ``load_model`` reads back.

        Writes config.json + safetensors, the tokenizer, the sentence-transformers files of the source
        (pooling, normalization) when it had them, and ``edgeopt_prune.json`` (the report).

        Raises:
            UsageError: ``path`` exists and is not an empty directory.
        """
        import json

        out = Path(path)
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise UsageError(f"{out}: exists and is not empty; pass a new or empty directory to save the pruned model")
        out.mkdir(parents=True, exist_ok=True)
        self.loaded.module.model.save_pretrained(out)
        if self.loaded.tokenizer is not None:
            self.loaded.tokenizer.save_pretrained(out)
        if self.source_dir is not None:
            for name in _ST_FILES:
                if (self.source_dir / name).is_file():
                    shutil.copy2(self.source_dir / name, out / name)
            for folder in sorted(self.source_dir.glob("[0-9]_*")):  # 1_Pooling/, 2_Normalize/
                if folder.is_dir():
                    shutil.copytree(folder, out / folder.name)
        (out / "edgeopt_prune.json").write_text(json.dumps(self.report.to_dict(), indent=2), encoding="utf-8")
        return out


def prune(loaded: LoadedModel, spec: PruneSpec, calibration: list[tuple] | None = None, *,
          recover_seconds: float = 0.0, eval_inputs: list[tuple] | None = None) -> PruneResult:
    """Prune ``loaded`` to ``spec`` and measure what it cost; ``loaded`` itself is not modified.

    Args:
        loaded: a Hugging Face model of a supported family (``arch.ARCHS``: bert, llama, qwen2, gpt2).
        spec: how much width to keep and how many blocks to drop.
        calibration: input tuples (``loaded.sample_inputs(n, split="calibration")``) to rank channels,
            heads and blocks by measured activations; None or empty ranks by weight magnitude.
        recover_seconds: > 0 distils the pruned model from the original on ``calibration`` for at most
            this many seconds (needs calibration).
        eval_inputs: held-out inputs for fidelity; default 16 ``sample_inputs(split="eval")`` at the
            calibration sequence length (without calibration: 128, or the model's longest if shorter).

    Returns:
        PruneResult with the pruned ``LoadedModel``, the ``PruneReport`` and ``save()``.

    Raises:
        UsageError: a bad spec, dropping every block, recovery without calibration.
        UnsupportedError: a model family that cannot be pruned, or heads asked of BERT / GPT-2.
    """
    import torch

    from edgeopt.prune import arch as archs
    from edgeopt.prune import importance, recover

    where = loaded.name
    model = getattr(loaded.module, "model", None)
    if model is None or loaded.config is None or not hasattr(model, "base_model"):
        raise UnsupportedError(
            f"prune {where}: only Hugging Face transformers models can be pruned (this one came from "
            f"{loaded.source}); package it unpruned"
        )
    arch = archs.arch_for(model.config, f"prune {where}")
    shape = plan_shape(model.config, spec, where=where)
    if not isinstance(recover_seconds, (int, float)) or recover_seconds < 0:
        raise UsageError(f"prune {where}: recover_seconds must be >= 0, got {recover_seconds!r}")
    calibration = list(calibration or [])
    if recover_seconds > 0 and not calibration:
        raise UsageError(
            f"prune {where}: recovery distils on calibration inputs and none were given; pass "
            "calibration=loaded.sample_inputs(32, split='calibration') or recover_seconds=0"
        )
    from edgeopt.models import Family

    decoder = loaded.family is Family.DECODER
    if eval_inputs is None:
        longest = int(getattr(model.config, "max_position_embeddings", 0) or 128)
        seq = int(calibration[0][0].shape[-1]) if calibration else min(128, longest)
        eval_inputs = loaded.sample_inputs(DEFAULT_EVAL_SAMPLES, seq_len=seq, split="eval")

    t0 = time.monotonic()
    scores = (importance.activation_scores(loaded, arch, calibration) if calibration
              else importance.magnitude_scores(loaded, arch))
    n_blocks = len(archs.blocks(arch, model))
    dropped = importance.blocks_to_drop(scores.block_angles, n_blocks, spec.drop_blocks)
    kept_blocks = [i for i in range(n_blocks) if i not in dropped]

    module = copy.deepcopy(loaded.module)
    student = module.model
    blocks = archs.blocks(arch, student)
    layout = archs.head_layout(student.config) if arch.attn else None
    layers, kept_channels = [], {}
    for i in kept_blocks:
        channels = importance.top(scores.ffn[i], shape.intermediate_size)
        archs.keep_ffn_channels(arch, blocks[i], channels)
        kept_channels[i] = tuple(int(c) for c in channels)
        if layout:
            heads, kv, _ = layout
            r = heads // kv
            groups = importance.top(scores.groups[i], shape.kv_heads) if shape.heads_pruned else torch.arange(kv)
            if shape.heads_pruned:
                archs.keep_kv_groups(arch, blocks[i], groups, layout)
            kv_kept = tuple(int(g) for g in groups)
            q_kept = tuple(g * r + j for g in kv_kept for j in range(r))
        else:
            q_kept = kv_kept = tuple(range(shape.heads))
        layers.append(LayerReport(i, q_kept, kv_kept, shape.intermediate_size))
    archs.keep_blocks(arch, student, kept_blocks)
    archs.update_config(arch, student.config, kept_blocks=kept_blocks, ffn=shape.intermediate_size,
                        heads=(shape.heads, shape.kv_heads, shape.head_dim) if shape.heads_pruned else None)
    pruned = dataclasses.replace(loaded, module=module.eval(), config=student.config)
    prune_s = time.monotonic() - t0

    reference = recover.reference_outputs(loaded, eval_inputs)
    before = recover.fidelity(reference, pruned, eval_inputs, decoder=decoder)
    after, rec = None, None
    if recover_seconds > 0:
        rec = recover.distill(loaded, pruned, calibration, float(recover_seconds), decoder=decoder)
        after = recover.fidelity(reference, pruned, eval_inputs, decoder=decoder)

    notes = []
    if arch.attn is None and spec.width_ratio < 1.0:
        notes.append(f"attention heads kept: {arch.heads_reason}")
    report = PruneReport(
        model_type=student.config.model_type,
        spec=spec,
        importance=Importance.ACTIVATION if calibration else Importance.MAGNITUDE,
        depth_method=(None if not dropped else
                      DepthMethod.ANGULAR_DISTANCE if scores.block_angles is not None else DepthMethod.POSITION),
        params_before=_params(model),
        params_after=_params(student),
        blocks_before=n_blocks,
        dropped_blocks=tuple(dropped),
        block_angles=tuple(scores.block_angles) if scores.block_angles is not None else None,
        layers=tuple(layers),
        notes=tuple(notes),
        calibration_samples=len(calibration),
        fidelity_before=before,
        fidelity_after=after,
        recovery_seconds=rec.seconds if rec else 0.0,
        recovery_steps=rec.steps if rec else 0,
        prune_seconds=prune_s,
    )
    return PruneResult(loaded=pruned, report=report, kept_channels=kept_channels, source_dir=_source_dir(loaded))


def _params(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() counts a tied weight once


def _source_dir(loaded: LoadedModel) -> Path | None:
    """The directory the model was loaded from, for the sentence-transformers files beside its weights."""
    path = Path(loaded.source)
    if path.is_dir():
        return path
    from edgeopt.models import DEFAULT_MODEL_NAME, default_model_dir

    if loaded.name == DEFAULT_MODEL_NAME and loaded.source.startswith("builtin:"):
        return default_model_dir()
    return None


__all__ = ["DepthMethod", "Importance", "LayerReport", "PruneReport", "PruneResult", "PruneSpec", "PrunedShape",
           "plan_shape", "prune"]
