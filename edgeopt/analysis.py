"""Analyse a loaded model: parameters by kind, bytes per precision, FLOPs, activation peak, KV cache.

``analyse(loaded, batch, seq_len)`` runs one eager forward at the profile's shapes and returns a
``ModelStats``: everything the planner needs, so the planner never touches the model itself.
"""

from __future__ import annotations

import dataclasses
import re
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgeopt.errors import InputFileError, UsageError

if TYPE_CHECKING:  # torch stays out of `import edgeopt`
    import torch

    from edgeopt.models import LoadedModel

KINDS = ("embeddings", "attention", "ffn", "norms", "head", "other")

# Matched against each lower-cased segment of a parameter's module path.
_HEAD = re.compile(r"lm_head|classifier|pooler|score|cls|qa_outputs")
_NORM = re.compile(r".*norm.*|ln(_\w+|\d+)?")  # layernorm, input_layernorm, rms_norm, ln_1, ln_f
_ATTN = re.compile(r"attention|attn|self_attn|self_attention|selfattention|encdecattention|cross_attn|"
                   r"q_proj|k_proj|v_proj|o_proj|query|key|value|c_attn|qkv|q|k|v|wq|wk|wv|wo")
_FFN = re.compile(r"mlp|ffn|feed_forward|intermediate|densereludense|fc1|fc2|c_fc|gate_proj|up_proj|down_proj|"
                  r"w1|w2|w3")


@dataclass(frozen=True)
class ModelStats:
    """What the planner knows about a model: sizes, work and memory at one set of shapes.

    ``linear_shapes`` / ``embedding_shapes`` hold (rows, cols) of every distinct quantizable Linear
    weight (rows = output channels) and nn.Embedding weight (rows = vocabulary), so the cost model can
    count per-channel and per-group scales exactly. ``aten_ops`` is the number of non-view aten ops one
    eager forward dispatches: the cost model's per-op overhead multiplies it.
    """

    model_name: str
    family: str
    params_total: int
    params_by_kind: dict[str, int]
    quantizable_linear_params: int
    embedding_params: int
    linear_layers: int
    embedding_layers: int
    tied_head: bool
    bytes_at: dict[str, int]
    flops: int
    activation_peak_bytes: int
    kv_cache_bytes: int
    batch: int
    seq_len: int
    context_len: int | None
    num_layers: int | None
    hidden_size: int | None
    num_heads: int | None
    intermediate_size: int | None
    vocab_size: int | None
    linear_shapes: tuple[tuple[int, int], ...] = ()
    embedding_shapes: tuple[tuple[int, int], ...] = ()
    aten_ops: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["linear_shapes"] = [list(s) for s in self.linear_shapes]
        d["embedding_shapes"] = [list(s) for s in self.embedding_shapes]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelStats":
        """Rebuild from ``to_dict`` output. Raises InputFileError naming missing or unknown keys."""
        names = {f.name for f in dataclasses.fields(cls)}
        required = {f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
        missing, unknown = sorted(required - set(d)), sorted(set(d) - names)
        if missing or unknown:
            raise InputFileError(
                f"model stats: missing keys {missing}, unknown keys {unknown}; "
                f"expected the keys of ModelStats.to_dict() (re-run the analysis to regenerate)")
        kw = dict(d)
        for key in ("linear_shapes", "embedding_shapes"):
            kw[key] = tuple(tuple(int(x) for x in s) for s in kw.get(key, ()))
        kw["params_by_kind"] = {str(k): int(v) for k, v in kw["params_by_kind"].items()}
        kw["bytes_at"] = {str(k): int(v) for k, v in kw["bytes_at"].items()}
        return cls(**kw)


def _is_linear(mod: "torch.nn.Module") -> bool:
    import torch

    # transformers' GPT-2 Conv1D is a Linear with a transposed (in, out) weight; matched by name so
    # this module does not import transformers.
    return isinstance(mod, torch.nn.Linear) or (type(mod).__name__ == "Conv1D" and hasattr(mod, "nf"))


def _is_norm(mod: "torch.nn.Module") -> bool:
    # LayerNorm, RMSNorm, LlamaRMSNorm, GroupNorm, BatchNorm2d...: every norm class says so in its name.
    return "norm" in type(mod).__name__.lower()


def classify_parameter(name: str, module: "torch.nn.Module") -> str:
    """The kind of one parameter: one of ``KINDS``.

    Args:
        name: the parameter's full dotted name from the root (``model.encoder.layer.0.attention.self.query.weight``).
        module: the module that owns the parameter (``root.get_submodule(name.rsplit('.', 1)[0])``).

    Rules, first match wins: anything under an ``*embed*`` path or owned by an nn.Embedding is
    ``embeddings`` (so BERT's embeddings LayerNorm counts there); head names (lm_head, classifier,
    pooler, score, cls) are ``head``; norm modules are ``norms``; attention names (attention, attn,
    self_attn, q/k/v/o_proj, query/key/value, c_attn) are ``attention``; FFN names (mlp, ffn,
    intermediate, fc1/fc2, c_fc, gate/up/down_proj) and a layer's ``output.dense`` are ``ffn``.
    """
    import torch

    parts = [p.lower() for p in name.split(".")[:-1]]  # module path without the parameter's own name
    if isinstance(module, torch.nn.Embedding) or any("embed" in p for p in parts):
        return "embeddings"
    if any(_HEAD.fullmatch(p) for p in parts):
        return "head"
    if _is_norm(module) or (parts and _NORM.fullmatch(parts[-1])):
        return "norms"
    if any(_ATTN.fullmatch(p) for p in parts):
        return "attention"
    if any(_FFN.fullmatch(p) for p in parts):
        return "ffn"
    # BERT-style `layer.N.output.dense`: the FFN's down projection (attention.output was caught above).
    if len(parts) >= 2 and parts[-2:] == ["output", "dense"] and any(p.isdigit() for p in parts):
        return "ffn"
    return "other"


def _weight_shape(mod: "torch.nn.Module") -> tuple[int, int]:
    """(output channels, input features) of a Linear or Conv1D weight."""
    w = mod.weight
    if type(mod).__name__ == "Conv1D":
        return int(w.shape[1]), int(w.shape[0])
    return int(w.shape[0]), int(w.shape[1])


@dataclass
class _ParamCount:
    total: int = 0
    by_kind: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    linear_shapes: list[tuple[int, int]] = field(default_factory=list)
    embedding_shapes: list[tuple[int, int]] = field(default_factory=list)
    tied_head: bool = False


def _count_parameters(root: "torch.nn.Module") -> _ParamCount:
    """Count each distinct parameter once (a tied weight is stored once), under its first name."""
    import torch

    first: dict[int, tuple[str, torch.nn.Module, torch.nn.Parameter]] = {}
    owners: dict[int, list[torch.nn.Module]] = {}
    for mod_name, mod in root.named_modules(remove_duplicate=False):
        for p_name, p in mod.named_parameters(recurse=False):
            first.setdefault(id(p), (f"{mod_name}.{p_name}" if mod_name else p_name, mod, p))
            owners.setdefault(id(p), []).append(mod)
    out = _ParamCount()
    for key, (full, mod, p) in first.items():
        out.total += p.numel()
        out.by_kind[classify_parameter(full, mod)] += p.numel()
        embedding = next((o for o in owners[key] if isinstance(o, torch.nn.Embedding) and o.weight is p), None)
        linear = next((o for o in owners[key] if _is_linear(o) and o.weight is p and p.dim() == 2), None)
        if embedding is not None:
            out.embedding_shapes.append((int(p.shape[0]), int(p.shape[1])))
            # a Linear sharing the embedding weight is a tied LM head: stored once, as the embedding
            out.tied_head |= linear is not None
        elif linear is not None:
            out.linear_shapes.append(_weight_shape(linear))
    return out


def _config_int(config: object | None, *names: str) -> int | None:
    for n in names:
        v = getattr(config, n, None) if config is not None else None
        if isinstance(v, int) and not isinstance(v, bool):
            return v
    return None


def _architecture(config: object | None) -> dict[str, int | None]:
    """Layer count and widths from a transformers config, under the names different families use."""
    hidden = _config_int(config, "hidden_size", "n_embd", "d_model", "dim")
    inter = _config_int(config, "intermediate_size", "n_inner", "ffn_dim", "encoder_ffn_dim")
    if inter is None and hidden is not None and hasattr(config, "n_inner"):
        inter = 4 * hidden  # GPT-2 leaves n_inner None to mean 4 * n_embd
    return {
        "num_layers": _config_int(config, "num_hidden_layers", "n_layer", "num_layers"),
        "hidden_size": hidden,
        "num_heads": _config_int(config, "num_attention_heads", "n_head", "num_heads"),
        "intermediate_size": inter,
        "vocab_size": _config_int(config, "vocab_size"),
    }


def kv_cache_bytes(config: object | None, batch: int, context_len: int, bytes_per_value: int = 4) -> int:
    """K and V for every layer at ``context_len`` tokens: 2 * layers * kv_heads * head_dim * ctx * batch * bytes.

    Returns 0 when the config does not say how many layers and heads there are.
    """
    arch = _architecture(config)
    layers, heads, hidden = arch["num_layers"], arch["num_heads"], arch["hidden_size"]
    if not (layers and heads and hidden):
        return 0
    kv_heads = _config_int(config, "num_key_value_heads", "n_kv_heads") or heads
    head_dim = _config_int(config, "head_dim") or hidden // heads
    return 2 * layers * kv_heads * head_dim * context_len * batch * bytes_per_value


class _LiveBytes:
    """Tracks the bytes of tensors created during a forward that are still alive, and their peak.

    A TorchDispatchMode sees every op's outputs; each new storage is counted when first seen and
    uncounted when the last Python tensor viewing it is garbage collected (weakref finalizers).
    Storages of parameters, buffers and inputs are excluded: they are not activations.
    """

    def __init__(self, excluded_ptrs: set[int]):
        self.excluded = excluded_ptrs
        self.refs: dict[int, int] = {}  # storage data_ptr -> live tensors viewing it
        self.sizes: dict[int, int] = {}
        self.tracked: set[int] = set()  # id() of tensors with a finalizer
        self.current = self.peak = self.ops = 0

    def mode(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        tracker = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                tracker.observe(func, out)
                return out

        return _Mode()

    def observe(self, func, out) -> None:
        import torch
        from torch.utils._pytree import tree_leaves

        if not getattr(func, "is_view", False):  # higher-order ops have no is_view
            self.ops += 1
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and id(t) not in self.tracked:
                self._track(t)

    def _track(self, t: "torch.Tensor") -> None:
        storage = t.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0 or ptr in self.excluded:
            return
        if ptr not in self.refs:
            self.refs[ptr], self.sizes[ptr] = 0, nbytes
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        self.refs[ptr] += 1
        self.tracked.add(id(t))
        weakref.finalize(t, self._release, ptr, id(t))

    def _release(self, ptr: int, tid: int) -> None:
        self.tracked.discard(tid)
        self.refs[ptr] -= 1
        if self.refs[ptr] == 0:
            self.current -= self.sizes.pop(ptr)
            del self.refs[ptr]


def _measure_forward(module: "torch.nn.Module", inputs: tuple) -> tuple[int, int, int]:
    """One eager forward: (FLOPs, activation peak bytes, non-view aten ops)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    excluded = {t.untyped_storage().data_ptr() for t in (*module.parameters(), *module.buffers(), *inputs)}
    live = _LiveBytes(excluded)
    flop_mode = FlopCounterMode(display=False)
    # FlopCounterMode's module tracker hooks every tensor that requires grad and asserts it has a grad_fn:
    # a parameter used directly as an activation (DeBERTa's relative embeddings) has none under no_grad.
    frozen = [p for p in module.parameters() if p.requires_grad]
    try:
        for p in frozen:
            p.requires_grad_(False)
        with torch.no_grad(), flop_mode, live.mode():
            out = module(*inputs)
        del out
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return int(flop_mode.get_total_flops()), int(live.peak), live.ops


def analyse(loaded: "LoadedModel", batch: int, seq_len: int, context_len: int | None = None) -> ModelStats:
    """Analyse ``loaded`` at (batch, seq_len); decoders also get a KV cache of ``context_len`` tokens.

    Args:
        loaded: the model as ``edgeopt.models`` loaded it (module in eval mode).
        batch, seq_len: the profile's shapes; one eager forward runs at them.
        context_len: decoders' KV-cache length; defaults to seq_len. Ignored for encoders.

    Returns:
        ModelStats. Raises UsageError for non-positive shapes.
    """
    from edgeopt.formats import Precision
    from edgeopt.planner.cost import weight_bytes

    for key, value in (("batch", batch), ("seq_len", seq_len), ("context_len", context_len)):
        if value is not None and (not isinstance(value, int) or value <= 0):
            raise UsageError(f"analyse: {key} must be a positive integer, got {value!r} (check the profile's shapes)")
    family = getattr(loaded.family, "value", str(loaded.family))
    is_decoder = family == "decoder"
    ctx = (context_len or seq_len) if is_decoder else None
    counts = _count_parameters(loaded.module)
    flops, act_peak, ops = _measure_forward(loaded.module, loaded.example_inputs(batch, seq_len))
    lin, emb = tuple(counts.linear_shapes), tuple(counts.embedding_shapes)
    stats = ModelStats(
        model_name=loaded.name, family=family, params_total=counts.total, params_by_kind=counts.by_kind,
        quantizable_linear_params=sum(r * c for r, c in lin), embedding_params=sum(r * c for r, c in emb),
        linear_layers=len(lin), embedding_layers=len(emb), tied_head=counts.tied_head,
        bytes_at={},
        flops=flops, activation_peak_bytes=act_peak,
        kv_cache_bytes=kv_cache_bytes(loaded.config, batch, ctx) if is_decoder else 0,
        batch=batch, seq_len=seq_len, context_len=ctx, **_architecture(loaded.config),
        linear_shapes=lin, embedding_shapes=emb, aten_ops=ops,
    )
    # bytes_at follows the cost model's storage rule, so the two can never disagree
    return dataclasses.replace(stats, bytes_at={p.value: weight_bytes(stats, p) for p in Precision})


