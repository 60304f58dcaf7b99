"""ExecuTorch export of decoder LMs with an in-program static KV cache (XNNPACK).

One method, ``forward(input_ids [1, T], cache_position [T]) -> logits [1, T, vocab]``, with ``T`` dynamic in
``1..prompt_len``: the same method prefills a prompt chunk and decodes one token. The KV cache is transformers'
``StaticCache`` of ``context_len`` positions, held as mutable buffers inside the program (``cache: in_program``);
``cache_position[0]`` says where the chunk starts, so the caller owns the position and stale entries past it are
masked out. This is transformers' own ExecuTorch recipe (``TorchExportableModuleWithStaticCache``, the signature
ExecuTorch's LLM runner calls) with one fix for non-strict export: the cache layers are re-pointed at the module's
buffers inside ``forward``, otherwise ``torch.export(strict=False)`` lifts the cache as constants and drops every
cache write (the program then forgets the prompt; ``to_edge`` fails first, in ``run_decompositions``).

Precisions (weights; activations stay fp32 between the quantized GEMMs):

- fp32: as exported.
- int8: torchao ``Int8DynamicActivationIntxWeightConfig(int8, PerAxis(0))`` on every Linear: per-channel symmetric
  int8 weights with dynamic int8 activations (XNNPACK QD8-F32-QC8W). PT2E (the encoder path) is not used: its
  graph-module prepare does not keep the cache's buffer mutations.
- int4 (8da4w, what ExecuTorch's own LLM export calls it): the same config with int4 weights in groups of
  ``scheme.group_size`` (XNNPACK QD8-F32-QB4W). The lowered program computes what its eager torchao model
  computes at every chunk length 1..prompt_len and in decode (per-position logits cosine > 0.9999,
  tests/packagers/test_executorch_lm.py). An earlier release refused it for a "dynamic-length miscompile": that
  was measured on greedy paths, which part early on random weights; on the same tokens the two agree.
- ``quantize_embeddings``: the token (and position) embeddings as int8 rows (``embedding_byte``) in int8 schemes and
  as int4 rows in groups of ``group_size`` (``embedding_4bit``, ExecuTorch's ``--embedding-quantize 4,32``) in
  int4 schemes (int8 rows when the width does not split into whole groups), and the lm_head with the linear
  scheme. SmolLM2-135M's shape, 2 of 30 layers: int4 tables take the .pte from 48.5 to 37.7 MB. Without it both stay float, recorded in the coverage with the reason.
- fp16: refused (``check_lm``): see ``_FP16_REASON``.

A tied lm_head (GPT-2, small Qwen2) shares its weight with the token embedding in the checkpoint; quantized, the
artifact stores it twice (int8 rows for the lookup, int8/int4 for the head GEMM), which ``details["tied"]`` says.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeopt.errors import ExportError, UnsupportedError
from edgeopt.formats import Format, Precision
from edgeopt.packagers import Artifact, Capabilities, Coverage, TensorSpec
from edgeopt.packagers.executorch import (
    KEPT_SENSITIVE,
    _conv1d_to_linear,
    _delegated_op_count,
    _delegation_report,
    _first_line,
    _torchao_quantized,
    _write_ops_yaml,
    check_scheme,
)
from edgeopt.packagers.lm import check_lengths
from edgeopt.quantize import Activations, Granularity, QuantScheme

if TYPE_CHECKING:  # pragma: no cover
    from edgeopt.models import LoadedModel

METHOD = "forward"
KEPT_LM_EMBEDDINGS = "kept float: embeddings and lm_head not quantized by this scheme (quantize_embeddings=False)"
_FP16_REASON = ("pte: fp16 decoder LMs are not built: an fp16 static KV cache needs the model in half precision, "
                "and the fp32 Llama logits check is what verifies the artifact; use int8 or int4 (smaller and "
                "faster on XNNPACK than fp16) or fp32")
# What the planner may ask of this export (edgeopt.packagers.lm.lm_capabilities).
LM_CAPABILITIES = Capabilities(
    precisions=frozenset({Precision.FP32, Precision.INT8, Precision.INT4}),
    activations=frozenset({Activations.FLOAT, Activations.DYNAMIC}),
    notes={Precision.FP16: _FP16_REASON},
)
_SCALAR_TYPES = {1: "int8", 3: "int32", 4: "int64", 5: "float16", 6: "float32"}


def check_lm(loaded: LoadedModel, scheme: QuantScheme, *, prompt_len: int | None = None,
             context_len: int | None = None) -> None:
    """Raise UnsupportedError for an LM artifact this packager cannot build, before any export work.

    Args:
        loaded: the model (must be a decoder whose transformers model is ``loaded.module.model``).
        scheme: the quantization scheme.
        prompt_len, context_len: the prefill length and KV-cache length, when already known.
    Raises:
        UnsupportedError: what cannot be built, why, and what to use instead.
    """
    from edgeopt.models import Family

    if loaded.family is not Family.DECODER or loaded.config is None:
        raise UnsupportedError(f"pte: {loaded.name} is a {loaded.family.value} model; the KV-cache LM export "
                               "takes a transformers causal LM (family decoder)")
    check_scheme(scheme)
    if scheme.precision is Precision.FP16:
        raise UnsupportedError(_FP16_REASON)
    if scheme.is_quantized and scheme.activations is not Activations.DYNAMIC:
        raise UnsupportedError(f"pte: {scheme.precision.value} decoder LMs run with dynamic int8 activations only "
                               "(static scales would need calibration through the KV cache); "
                               "use activations=dynamic")
    config = loaded.config.get_text_config() if hasattr(loaded.config, "get_text_config") else loaded.config
    if not getattr(config, "use_cache", True):
        raise UnsupportedError(f"pte: {loaded.name} has use_cache=False in its config; the KV-cache export needs "
                               "a model that supports a cache (set use_cache=True)")
    window = getattr(config, "sliding_window", None)
    if window and getattr(config, "use_sliding_window", True) and context_len and context_len > window:
        raise UnsupportedError(f"pte: {loaded.name} uses sliding-window attention ({window} tokens); the static "
                               f"cache is full attention, so context_len {context_len} > {window} would compute "
                               f"something else; use context_len <= {window}")
    if prompt_len is not None and context_len is not None:
        check_lengths("pte", config, prompt_len, context_len)


def export_lm(loaded: LoadedModel, scheme: QuantScheme, work_dir: Path, *, prompt_len: int,
              context_len: int) -> Artifact:
    """Write ``work_dir/model.pte``: the LM with an in-program KV cache of ``context_len`` positions.

    Args:
        loaded: a decoder LM (``loaded.module.model`` is the transformers model).
        scheme: fp32, or int8/int4 weights with dynamic int8 activations (see the module docstring).
        work_dir: where the .pte and its op list go.
        prompt_len: the longest chunk one call prefills (the session chunks longer prompts).
        context_len: KV-cache positions; prompt + generated tokens never exceed it.
    Returns:
        The Artifact, with ``details["lm"]`` (runtimes/common/README.md "Decoder LMs") and the coverage of every
        Linear and Embedding of the transformers model.
    Raises:
        UnsupportedError: see ``check_lm``. ExportError: torch.export, quantization or lowering failed.
    """
    import copy

    import torch

    check_lm(loaded, scheme, prompt_len=prompt_len, context_len=context_len)
    start = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    # Quantization replaces weights in place, so it works on a copy; fp32 exports the loaded model itself (the
    # copy would hold one more fp32 set of weights through the lowering, the build's peak).
    original = loaded.module.model
    model = copy.deepcopy(original).eval() if scheme.is_quantized else original
    generation_config = original.generation_config
    tied = _tied_pairs(model)
    with torch.no_grad():
        quantized = _quantize(model, scheme)
    coverage = _lm_coverage(model, scheme, quantized)
    if scheme.is_quantized:
        from torchao.utils import unwrap_tensor_subclass

        unwrap_tensor_subclass(model)  # plain tensors: QuantFusionPass only fuses embeddings on lifted params
    path = work_dir / "model.pte"
    try:
        wrapper = cache_wrapper(model, context_len)
        delegation = _lower(wrapper, prompt_len, path)
    finally:
        original.generation_config = generation_config  # cache_wrapper sets a static-cache one
    del wrapper
    ops_yaml = _write_ops_yaml(path, delegation["non_delegated"])
    inputs, outputs = _io_specs(path)
    config = model.config.get_text_config()
    details: dict[str, Any] = {
        "backend": "XnnpackBackend",
        "delegation": delegation,
        "selective_build": ops_yaml.name,
        "quantizer": "torchao Int8DynamicActivationIntxWeightConfig" if scheme.is_quantized else None,
        "tied": {f"model.{a}": f"model.{b}" for a, b in tied},
        "embeddings": _embedding_record(loaded.module.model, scheme),
        "lm": lm_details(config, prompt_len=prompt_len, context_len=context_len),
    }
    return Artifact(path=path, format=Format.PTE, precision=scheme.precision, scheme=scheme, inputs=inputs,
                    outputs=outputs, coverage=coverage, extra_files=(ops_yaml,), details=details,
                    build_seconds=time.perf_counter() - start)


def lm_details(config, *, prompt_len: int, context_len: int) -> dict[str, Any]:
    """The ``lm`` manifest entry for an artifact of this packager."""
    from transformers.configuration_utils import get_head_shapes

    num_kv_heads, head_dim = get_head_shapes(config)
    return {
        "kind": "causal_lm",
        "vocab_size": int(config.vocab_size),
        "num_layers": int(config.num_hidden_layers),
        "num_kv_heads": int(num_kv_heads),
        "head_dim": int(head_dim),
        "context_len": int(context_len),
        "prompt_len": int(prompt_len),
        "cache": "in_program",
        "cache_dtype": "float32",
        "method": METHOD,
        "inputs": ["input_ids", "cache_position"],  # int64 [1, T] and int64 [T] (positions of the chunk)
        "cache_position_input": True,
        "dynamic_prefill": prompt_len > 1,  # T may be 1..prompt_len; otherwise exactly prompt_len (pad)
        "logits": "all_positions",  # float32 [1, T, vocab]
        "custom_ops": False,
    }


def cache_wrapper(model, context_len: int):
    """``model`` behind ``forward(input_ids, cache_position) -> logits`` with a static cache of ``context_len``."""
    from transformers import GenerationConfig
    from transformers.integrations.executorch import (
        TorchExportableModuleWithStaticCache,
    )

    class StaticCacheLM(TorchExportableModuleWithStaticCache):
        def forward(self, input_ids, cache_position):
            # Under non-strict export the module's buffers are swapped for traced ones; the cache object still
            # holds the originals, whose writes would be lifted as constants and lost. Point it at the buffers.
            for i, layer in enumerate(self.static_cache.layers):
                layer.keys = getattr(self, f"key_cache_{i}")
                layer.values = getattr(self, f"value_cache_{i}")
                layer.cumulative_length = getattr(self, f"cumulative_length_{i}")
            return super().forward(input_ids=input_ids, cache_position=cache_position)

    model.generation_config = GenerationConfig(use_cache=True, cache_implementation="static")
    try:
        return StaticCacheLM(model, batch_size=1, max_cache_len=context_len).eval()
    except Exception as e:  # an architecture transformers' static cache does not cover
        raise UnsupportedError(f"pte: {type(model).__name__} has no static KV cache in transformers "
                               f"({_first_line(e)}); only models that support StaticCache can be exported") from e


# --- quantization --------------------------------------------------------------------------------


def _quantize(model, scheme: QuantScheme) -> set[str]:
    """Quantize ``model`` in place with torchao; returns the names (transformers namespace) now quantized."""
    if not scheme.is_quantized:
        return set()
    import torch
    from torchao.quantization import (
        Int8DynamicActivationIntxWeightConfig,
        IntxWeightOnlyConfig,
        quantize_,
    )
    from torchao.quantization.granularity import PerAxis, PerGroup

    keep = {name.removeprefix("model.") for name in scheme.keep_float}
    head = {name for name, _ in _heads(model)}
    group = scheme.group_size if scheme.granularity is Granularity.PER_GROUP else None
    bits = torch.int4 if scheme.precision is Precision.INT4 else torch.int8

    def linear(m, fqn: str) -> bool:
        if not isinstance(m, torch.nn.Linear) or fqn in keep or (fqn in head and not scheme.quantize_embeddings):
            return False
        return group is None or m.in_features % group == 0

    def embedding(m, fqn: str) -> bool:
        return isinstance(m, torch.nn.Embedding) and fqn not in keep and scheme.quantize_embeddings

    def embedding4(m, fqn: str) -> bool:  # int4 rows in groups (embedding_4bit), as ExecuTorch's "-E 4,32"
        return embedding(m, fqn) and embedding_bits(m, scheme) == 4

    def embedding8(m, fqn: str) -> bool:
        return embedding(m, fqn) and embedding_bits(m, scheme) == 8

    _conv1d_to_linear(model)  # GPT-2's Conv1D is a Linear with a transposed weight
    if scheme.quantize_embeddings:
        _untie(model)  # quantize_ replaces each module's weight: a shared Parameter would be quantized twice
    try:
        for name, m in model.named_modules():
            if embedding(m, name):
                m.padding_idx = None  # only shapes gradients; the embedding_byte fusion matches embedding(w, ids)
        for bits_e, filter_e in ((torch.int4, embedding4), (torch.int8, embedding8)):
            table_granularity = PerGroup(group) if bits_e == torch.int4 else PerAxis(0)
            quantize_(model, IntxWeightOnlyConfig(weight_dtype=bits_e, granularity=table_granularity),
                      filter_fn=filter_e)
        config = Int8DynamicActivationIntxWeightConfig(weight_dtype=bits,
                                                       weight_granularity=PerGroup(group) if group else PerAxis(0))
        quantize_(model, config, filter_fn=linear)
    except Exception as e:
        raise ExportError(f"pte: torchao {scheme.precision.value} quantization failed: {_first_line(e)}") from e
    return _torchao_quantized(model)


def embedding_bits(m, scheme: QuantScheme) -> int:
    """Bits of a quantized embedding table: 4 (groups of ``group_size`` along a row) in int4 schemes when the row
    splits into whole groups, else 8 (one scale per row)."""
    group = scheme.group_size if scheme.granularity is Granularity.PER_GROUP else None
    if scheme.precision is Precision.INT4 and group and m.embedding_dim % group == 0:
        return 4
    return 8


def _embedding_record(model, scheme: QuantScheme) -> dict[str, str]:
    """How each embedding table is stored: ``{"model.model.embed_tokens": "int4 rows, groups of 32"}``."""
    import torch

    keep = {name.removeprefix("model.") for name in scheme.keep_float}
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, torch.nn.Embedding):
            continue
        if not scheme.is_quantized or not scheme.quantize_embeddings or name in keep:
            out[f"model.{name}"] = "float32"
        elif embedding_bits(m, scheme) == 4:
            out[f"model.{name}"] = f"int4 rows, groups of {scheme.group_size}"
        else:
            out[f"model.{name}"] = "int8 rows, one scale per row"
    return out


def _heads(model):
    """The output projection(s) of a causal LM (``lm_head``)."""
    out = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return [(name, m) for name, m in model.named_modules() if out is not None and m is out]


def _tied_pairs(model) -> list[tuple[str, str]]:
    """(lm_head, embedding) module names that share one weight Parameter."""
    import torch

    by_weight: dict[int, str] = {}
    pairs = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Embedding):
            by_weight[id(m.weight)] = name
    for name, m in _heads(model):
        if id(m.weight) in by_weight:
            pairs.append((name, by_weight[id(m.weight)]))
    return pairs


def _untie(model) -> None:
    import torch

    for name, m in _heads(model):
        if any(name == head for head, _ in _tied_pairs(model)):
            m.weight = torch.nn.Parameter(m.weight.detach().clone(), requires_grad=False)


def _lm_coverage(model, scheme: QuantScheme, quantized: set[str]) -> Coverage:
    """Every Linear and Embedding of the transformers model, quantized or kept float with the reason.

    Names are in the wrapped model's namespace (``model.`` + the transformers name), as ``keep_float`` is.
    Raises ExportError when a weight stayed float that the scheme asked to quantize.
    """
    import torch

    keep = {name.removeprefix("model.") for name in scheme.keep_float}
    head = {name for name, _ in _heads(model)}
    group = scheme.group_size if scheme.granularity is Granularity.PER_GROUP else None
    done, kept = [], {}
    for name, m in model.named_modules():
        if not isinstance(m, (torch.nn.Linear, torch.nn.Embedding)):
            continue
        full = f"model.{name}"
        if not scheme.is_quantized:
            kept[full] = f"kept float: {scheme.precision.value} artifact"
        elif name in quantized:
            done.append(full)
        elif name in keep:
            kept[full] = KEPT_SENSITIVE
        elif (isinstance(m, torch.nn.Embedding) or name in head) and not scheme.quantize_embeddings:
            kept[full] = KEPT_LM_EMBEDDINGS
        elif isinstance(m, torch.nn.Linear) and group and m.in_features % group:
            kept[full] = f"kept float: in_features {m.in_features} not divisible by group size {group}"
        else:
            kept[full] = "not quantized by torchao"
    coverage = Coverage(tuple(done), kept)
    if coverage.unexpected():
        names = ", ".join(f"{k} ({v})" for k, v in sorted(coverage.unexpected().items()))
        raise ExportError(f"pte: {scheme.precision.value} LM artifact would leave weights float that the scheme "
                          f"asked to quantize: {names}")
    return coverage


# --- lowering ------------------------------------------------------------------------------------


def _lower(wrapper, prompt_len: int, path: Path) -> dict[str, Any]:
    """torch.export with a dynamic chunk length, lower to XNNPACK, write ``path``; the delegation report."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackPartitioner,
    )
    from executorch.backends.xnnpack.utils.configs import get_transform_passes
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    ids = torch.zeros((1, prompt_len), dtype=torch.long)
    positions = torch.arange(prompt_len, dtype=torch.long)
    dynamic = None
    if prompt_len > 1:
        seq = torch.export.Dim("seq", min=1, max=prompt_len)
        dynamic = {"input_ids": {1: seq}, "cache_position": {0: seq}}
    # Everything under no_grad: with grad enabled, to_edge's run_decompositions builds a joint graph and fails.
    with torch.no_grad():
        try:
            ep = torch.export.export(wrapper, (), {"input_ids": ids, "cache_position": positions},
                                     dynamic_shapes=dynamic, strict=False)
        except Exception as e:
            raise ExportError(f"pte: torch.export of the KV-cache LM failed: {_first_line(e)}") from e
        try:
            edge = to_edge_transform_and_lower(ep, transform_passes=get_transform_passes(),
                                               partitioner=[XnnpackPartitioner()])
            delegated_ops = _delegated_op_count(edge.exported_program())
            mutated = edge.exported_program().graph_signature.buffers_to_mutate
            program = edge.to_executorch(ExecutorchBackendConfig(do_quant_fusion_and_const_prop=True))
        except Exception as e:
            raise ExportError(f"pte: lowering the KV-cache LM to XNNPACK failed: {_first_line(e)}") from e
    if not any("key_cache" in name for name in mutated.values()):
        raise ExportError("pte: the exported LM does not write its KV cache (no mutated cache buffers)")
    path.write_bytes(program.buffer)
    return _delegation_report(program, delegated_ops)


def _io_specs(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Method inputs and outputs read back from the .pte (dynamic dims at their upper bound)."""
    from executorch.runtime import Runtime as EtRuntime

    meta = EtRuntime.get().load_program(str(path)).metadata(METHOD)

    def spec(info, name: str) -> TensorSpec:
        return TensorSpec(name, _SCALAR_TYPES.get(int(info.dtype()), str(info.dtype())), tuple(info.sizes()))

    names = ("input_ids", "cache_position")
    inputs = tuple(spec(meta.input_tensor_meta(i), names[i]) for i in range(meta.num_inputs()))
    outputs = tuple(spec(meta.output_tensor_meta(i), "logits") for i in range(meta.num_outputs()))
    return inputs, outputs


