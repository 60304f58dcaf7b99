"""LiteRT export of decoder LMs: one .tflite with a prefill and a decode signature and an explicit KV cache.

``litert_torch.convert`` cannot take transformers' static-cache wrapper (the cache is mutated in place),
so this follows litert-torch's own LLM route (``litert_torch.generative.export_hf``, what ``export_hf``
runs for text generation) without its model loading, tokenizer and .litertlm bundling:

- the transformers model runs with litert's ``lrt_transposed_attention`` (registered in transformers'
  AttentionInterface when litert's attention module is imported) and a ``LiteRTLMCache`` whose layers are
  signature tensors: ``kv_cache_k_<i>`` ``[1, kv_heads, context, head_dim]`` and ``kv_cache_v_<i>``
  ``[1, kv_heads, head_dim, context]``, inputs and outputs of both signatures (cache "explicit"); the
  update is a ``DYNAMIC_UPDATE_SLICE`` at ``input_pos[0]``;
- ``prefill_<prompt_len>`` takes ``tokens [1, P]`` (int32), ``input_pos [P]`` and an additive float mask
  ``[1, 1, P, context]``; unlike litert's own prefill (no logits, or the last position's) it returns the
  logits of every position, which edgeopt needs for perplexity and parity;
- ``decode`` takes one token and returns ``logits [1, 1, vocab]``.

The session that drives them (padding, chunking, masks) is ``runtimes/litert/backend.py: load_lm``.

Quantization is ai-edge-quantizer on FULLY_CONNECTED (every linear, lm_head included) and
EMBEDDING_LOOKUP (the token table), with the same scheme mapping as ``edgeopt.packagers.tflite``:
int8 = int8 weights per channel + dynamic int8 activations, tables int8 per row; int4 = int4 weights per
group (or channel) + dynamic int8 activations, lm_head included, and the token table int4 in the same
groups along each row when the scheme quantizes embeddings; fp16 = weights stored fp16, computed fp32. The KV cache stays float32: litert-torch 0.10's
cache is float32/float16/bfloat16 only, so there is no int8 cache to offer.
Coverage matches each weighted op of every signature to its module by content (the weights are shared
buffers between the signatures) and reads the stored type back from the quantized file.

Architectures: the path works for transformers models that route attention through the
AttentionInterface and update a ``Cache`` object with ``cache_position``; tested on Llama, Qwen2 and
GPT-2. litert's cache reads ``num_key_value_heads`` and ``head_dim`` from the config, which GPT2Config
lacks: they are set for the conversion (``n_head``, ``n_embd // n_head``) and removed afterwards.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeopt.errors import ExportError, UnsupportedError
from edgeopt.formats import Format, Precision
from edgeopt.packagers import Artifact, Capabilities, Coverage, TensorSpec
from edgeopt.packagers.lm import check_lengths
from edgeopt.quantize import Activations, Granularity, QuantScheme

if TYPE_CHECKING:  # pragma: no cover
    from edgeopt.models import LoadedModel

DECODE_SIGNATURE = "decode"
TENSORS = {"tokens": "tokens", "input_pos": "input_pos", "mask": "mask", "logits": "logits"}
CACHE_PREFIX = "kv_cache_"
_QUANT_OPS = ("FULLY_CONNECTED", "EMBEDDING_LOOKUP")
# What the planner may ask of this export (edgeopt.packagers.lm.lm_capabilities).
LM_CAPABILITIES = Capabilities(
    precisions=frozenset({Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4}),
    activations=frozenset({Activations.FLOAT, Activations.DYNAMIC}),
    notes={Precision.FP16: "fp16 weights computed in fp32 by XNNPACK on CPUs: a size win only",
           Precision.INT4: "int4 weights per group with dynamic int8 activations; a linear whose input size is "
                           "not a multiple of the group is refused (keep it float or use per-channel)"},
)


def check_lm(loaded: LoadedModel, scheme: QuantScheme) -> None:
    """Refuse, before any export work, a model or scheme this path cannot build.

    Raises:
        UnsupportedError: not a decoder LM, an architecture litert's generative path does not map, a
            RoPE variant it does not build, or a scheme it cannot quantize (the message says the fix).
    """
    from edgeopt.models import Family

    if loaded.family is not Family.DECODER or not hasattr(loaded.module, "model"):
        raise UnsupportedError(f"tflite lm: {loaded.name} is a {loaded.family.value} model; the LM export takes "
                               "transformers causal LMs (AutoModelForCausalLM)")
    config = loaded.config
    if any("sliding" in str(t) for t in (getattr(config, "layer_types", None) or ())):
        raise UnsupportedError("tflite lm: sliding-window attention layers are not built here (the session "
                               "masks a full-context cache); export with --format pte or onnx")
    from edgeopt.families import ARCHS, arch_of

    model_type = getattr(config, "model_type", None)
    if not arch_of(model_type).litert_lm:
        mapped = sorted(a.model_type for a in ARCHS.values() if a.litert_lm)
        raise UnsupportedError(f"tflite lm: model type {model_type!r} is not mapped by litert's generative path "
                               f"here (supported: {', '.join(mapped)}); export it with --format pte or onnx")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    rope_type = str(rope.get("rope_type", "default")) if isinstance(rope, dict) else "default"
    if "dynamic" in rope_type or "longrope" in rope_type:
        raise UnsupportedError(f"tflite lm: RoPE type {rope_type!r} is not built by litert-torch (position-"
                               "dependent scaling); export with --format pte or onnx")
    _check_scheme(loaded, scheme)


def _hf_names(scheme: QuantScheme) -> QuantScheme:
    """``keep_float`` names the wrapped model's modules (``model.`` + the transformers name, as sensitivity
    ranks them and the other LM exports take them); this module works in the transformers model's names."""
    from dataclasses import replace

    return replace(scheme, keep_float=tuple(n.removeprefix("model.") for n in scheme.keep_float))


def _wrapped_names(coverage: Coverage | None) -> Coverage | None:
    """Coverage in the wrapped model's names, like every other packager's."""
    if coverage is None:
        return None
    return Coverage(tuple(f"model.{n}" for n in coverage.quantized),
                    {f"model.{n}": why for n, why in coverage.kept_float.items()})


def _check_scheme(loaded: LoadedModel, scheme: QuantScheme) -> None:
    from edgeopt.packagers.tflite import _check_scheme as check_tflite_scheme

    scheme = _hf_names(scheme)
    if scheme.activations is Activations.STATIC:
        raise UnsupportedError("tflite lm: static int8 activations are not built for LMs (the KV cache and "
                               "per-position ranges would need calibration per signature); use dynamic")
    check_tflite_scheme(scheme, [])
    if scheme.precision is Precision.INT4 and scheme.activations is not Activations.DYNAMIC:
        raise UnsupportedError("tflite lm: int4 weights need dynamic int8 activations here (weight-only int4 "
                               "leaves every FULLY_CONNECTED outside XNNPACK); use activations=dynamic")
    if scheme.granularity is Granularity.PER_GROUP and scheme.precision is Precision.INT4:
        keep = set(scheme.keep_float)
        ragged = [f"{n} (in {f})" for n, f in _linear_in_features(loaded.module.model)
                  if n not in keep and f % scheme.group_size]
        if ragged:
            raise UnsupportedError(f"tflite lm: int4 groups of {scheme.group_size} need each linear's input size "
                                   f"to be a multiple of {scheme.group_size}: {', '.join(ragged[:6])} (use a "
                                   "smaller group, per_channel, or keep_float for them)")


def _keep_tied_together(model, scheme: QuantScheme) -> tuple[QuantScheme, dict[str, str]]:
    """A tied table and head are one tensor: when ``keep_float`` names one, the other stays float too.

    Quantizing only one makes ai-edge-quantizer copy the shared buffer, per signature: on SmolLM2's shape
    (2 layers) the lm_head kept float beside an int4 table wrote 260.7 MB (two float and two int4 copies of
    the 49152 x 576 table) where one shared float table is 113 MB. Returns the scheme and {added: named}.
    """
    from dataclasses import replace

    keep = set(scheme.keep_float)
    partners = {}
    for head, table in _tied(model).items():
        if head in keep and table not in keep:
            partners[table] = head
        elif table in keep and head not in keep:
            partners[head] = table
    if not partners:
        return scheme, {}
    return replace(scheme, keep_float=(*scheme.keep_float, *sorted(partners))), partners


def _linear_in_features(model) -> list[tuple[str, int]]:
    import torch

    return [(n, m.in_features) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]


def export_lm(loaded: LoadedModel, scheme: QuantScheme, work_dir: Path, *, prompt_len: int,
              context_len: int) -> Artifact:
    """Write ``model.tflite`` with ``prefill_<prompt_len>`` and ``decode`` signatures for ``loaded``.

    Args:
        loaded: a decoder LM (``loaded.module.model`` is the transformers model), fp32.
        scheme: fp32, fp16 (weights stored fp16), int8 (dynamic: int8 weights per channel, int8 activations
            computed per run) or int4 (int4 weights per group or channel, dynamic int8 activations);
            ``quantize_embeddings`` stores the token table int8 per row.
        work_dir: where the file is written.
        prompt_len: the static prefill length (the session pads to it and chunks longer prompts).
        context_len: the KV-cache length.

    Returns:
        The artifact: ``details["lm"]`` is the manifest's ``lm`` object; inputs/outputs are the decode
        signature's; ``coverage`` names every Linear and Embedding (quantized schemes).

    Raises:
        UnsupportedError: see ``check_lm``; lengths out of range.
        ExportError: the converter or quantizer failed, or a weight is not stored as the scheme says.
    """
    check_lm(loaded, scheme)
    wrapped_scheme, scheme = scheme, _hf_names(scheme)
    scheme, partners = _keep_tied_together(loaded.module.model, scheme)
    config = loaded.config
    check_lengths("tflite lm", config, prompt_len, context_len)
    start = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    fp32_path = work_dir / "model.fp32.tflite"
    _convert_cached(loaded, fp32_path, prompt_len, context_len)
    weights = _match_weights(fp32_path, loaded.module.model)
    path = work_dir / "model.tflite"
    if scheme.precision is Precision.FP32:
        fp32_path.replace(path)
    else:
        _quantize(fp32_path, path, scheme, weights, _module_name(loaded.module.model,
                                                                loaded.module.model.get_output_embeddings()))
        fp32_path.unlink()
    stored = _stored_types(path, weights)
    coverage = _coverage(scheme, weights, stored)
    for module, partner in partners.items():
        coverage.kept_float[module] = f"kept float: shares its weight with model.{partner} (kept float)"
    coverage = _wrapped_names(coverage)
    prefill_sig = f"prefill_{prompt_len}"
    inputs, outputs = _signature_io(path, DECODE_SIGNATURE)
    cache_names = sorted((n for n in inputs if n.startswith(CACHE_PREFIX)), key=_natural)
    lm = {
        "kind": "causal_lm",
        "vocab_size": int(config.vocab_size),
        "num_layers": int(config.num_hidden_layers),
        "num_kv_heads": int(getattr(config, "num_key_value_heads", None) or config.num_attention_heads),
        "head_dim": int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads),
        "context_len": int(context_len),
        "prompt_len": int(prompt_len),
        "cache": "explicit",
        "cache_dtype": inputs[cache_names[0]].dtype,
        "signatures": {"prefill": prefill_sig, "decode": DECODE_SIGNATURE},
        "tensors": dict(TENSORS),
        "cache_tensors": cache_names,
    }
    details: dict[str, Any] = {"lm": lm, "weights": dict(Counter(stored.values()))}
    tied = _tied(loaded.module.model)
    if tied:
        details["tied_weights"] = tied
    order = [TENSORS["tokens"], TENSORS["input_pos"], TENSORS["mask"], *cache_names]
    return Artifact(path=path, format=Format.TFLITE, precision=scheme.precision, scheme=wrapped_scheme,
                    inputs=tuple(inputs[n] for n in order),
                    outputs=tuple(outputs[n] for n in [TENSORS["logits"], *cache_names]),
                    coverage=coverage, details=details, build_seconds=time.perf_counter() - start)


# --- conversion --------------------------------------------------------------------------------


# The last conversion, by content: int8 and int4 candidates of one model start from the same fp32 file,
# and a conversion takes tens of seconds (minutes for a real-size LM) where hashing the weights takes well under
# one. Kept as a file (edgeopt.packagers.lm.cached_conversion), not bytes in memory.


def _convert_cached(loaded: LoadedModel, path: Path, prompt_len: int, context_len: int) -> None:
    import torch

    from edgeopt.packagers.tflite import _conversion_key

    from edgeopt.packagers.lm import cached_conversion, remember_conversion

    key = "lm:" + _conversion_key(loaded, {"lm": (torch.tensor([prompt_len, context_len]),)})
    if cached_conversion("tflite-lm", key, path):
        return
    _convert(loaded.module.model, path, prompt_len, context_len)
    remember_conversion("tflite-lm", key, path)


def _convert(model, path: Path, prompt_len: int, context_len: int) -> None:
    """Convert ``model`` (transformers, fp32) with litert's generative modules; restores its attention."""
    import torch

    from edgeopt.packagers.tflite import _first_line, _quiet_progress

    before = model.config._attn_implementation
    shim = _config_shim(model.config)
    try:
        with torch.no_grad(), _quiet_progress(), contextlib.redirect_stderr(io.StringIO()):
            from litert_torch._convert import interface as converter_lib
            from litert_torch.generative.export_hf.core import exportable_module as em

            prefill_cls = _prefill_with_logits_cls(em)
            export_config = em.ExportableModuleConfig(
                model=model.config.model_type, prefill_lengths=[prompt_len], cache_length=context_len,
                quantization_recipe=None, bundle_litert_lm=False, prefill_logits=True)
            model.set_attn_implementation("lrt_transposed_attention")
            converter = converter_lib.Converter()
            for module in (prefill_cls(model, export_config), em.LiteRTExportableModuleForDecoderOnlyLMGenerate(
                    model, export_config)):
                for name, (inputs, _) in module.get_sample_inputs(model.config).items():
                    converter.add_signature(name, module.eval(), sample_kwargs=inputs)
            converter.convert(strict_export=False).export(str(path))
    except Exception as e:  # any converter failure becomes an ExportError naming the format
        op = re.search(r"aten\.[\w.]+", str(e))
        where = f" (op {op.group(0)})" if op else ""
        raise ExportError(f"tflite lm: litert-torch conversion failed{where}: {_first_line(e)}") from e
    finally:
        model.set_attn_implementation(before)
        for key, (had, old) in shim.items():
            if had:
                setattr(model.config, key, old)
            else:
                delattr(model.config, key)


def _config_shim(config) -> dict[str, tuple[bool, Any]]:
    """Set the config fields litert's cache reads and the model's config lacks (GPT-2); returns what was there."""
    changed = {}
    for key, value in (("num_key_value_heads", lambda: config.num_attention_heads),
                       ("head_dim", lambda: config.hidden_size // config.num_attention_heads)):
        if getattr(config, key, None) is None:
            changed[key] = (key in vars(config), getattr(config, key, None))
            setattr(config, key, value())
    return changed


def _prefill_with_logits_cls(em):
    """litert's prefill module, returning the logits of every position (litert's keeps the last, or none)."""
    import torch

    class PrefillWithLogits(em.LiteRTExportableModuleForDecoderOnlyLMPrefill):
        def forward(self, tokens, input_pos, kv_cache, mask, **kwargs):
            inputs = self.adapt_inputs(tokens, None, input_pos, kv_cache, mask, use_bool_mask=False)
            inputs |= self.attention_kwargs()
            inputs["prefill_logits"] = True
            output = self.model(**inputs)
            return {"kv_cache": output.past_key_values, "logits": output.logits.to(torch.float32)}

    return PrefillWithLogits


# --- quantization --------------------------------------------------------------------------------


def _quantize(src: Path, dst: Path, scheme: QuantScheme, weights: list[_WeightUse], head: str | None) -> None:
    """ai-edge-quantizer per ``scheme``; in int4 schemes that quantize embeddings the token table is int4 too,
    in the scheme's groups (``head``, the output layer's module name, is int4 like every linear)."""
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    from edgeopt.packagers.tflite import _add_configs, _first_line, _granularity

    keep = set(scheme.keep_float)
    unknown = sorted(keep - {w.module for w in weights})
    if unknown:
        raise UnsupportedError(f"tflite lm: keep_float names modules this model does not have: {', '.join(unknown)}")
    dst.unlink(missing_ok=True)
    try:
        q = quantizer.Quantizer(str(src))
        _add_configs(q, scheme, set(_QUANT_OPS))
        if scheme.precision is Precision.INT4 and scheme.quantize_embeddings:
            # The token table int4 in the scheme's groups along each row (ai-edge-quantizer 0.10's
            # dynamic_wi4_afp32_blockwise covers EMBEDDING_LOOKUP; LiteRT's kernel runs it), replacing the
            # int8-per-row table config (same regex and op). The lm_head stays int4 like every linear: it was
            # int8 for +0.004 logits cosine on a random-init Llama; on the trained 4M-parameter tiny LM
            # (vocab 2048, 762 held-out tokens, perplexity vs fp32) table int8 + head int8 gave x1.0004, table
            # int8 + head int4 x1.0057, both int4 x1.0063 (table per row x1.0020), and the artifact went from
            # 0.193 to 0.160 of fp32; with a 49152-token vocabulary the head alone is ~1/5 of the weights.
            q.add_dynamic_config(".*", qtyping.TFLOperationName.EMBEDDING_LOOKUP, 4, _granularity(scheme))
        for w in weights:
            if w.module in keep:  # added last: later configs win in ai-edge-quantizer
                q.update_quantization_recipe(f"^{re.escape(w.scope)}$", qtyping.TFLOperationName[w.op],
                                             algorithm_key=AlgorithmName.NO_QUANTIZE)
        with contextlib.redirect_stderr(io.StringIO()), _duplicates_named_in_bytes():
            quantized = q.quantize(None, enable_progress_bar=False, enable_progress_report=False)
        quantized.export_model(str(dst), overwrite=True)
    except (ValueError, RuntimeError, KeyError) as e:
        raise ExportError(f"tflite lm: ai-edge-quantizer failed for {scheme.describe()}: {_first_line(e)}") from e


# --- coverage: which module each weighted op came from, and how it is stored ---------------------


@dataclass(frozen=True)
class _WeightUse:
    """One use of a module's weight: an op in one signature's subgraph."""

    module: str
    kind: str  # "linear" | "embedding"
    op: str  # TFLite op name
    subgraph: int
    scope: str  # ai-edge-quantizer's op scope: output tensor names joined by ';', plus ';'
    buffer: int


def _match_weights(path: Path, model) -> list[_WeightUse]:
    """Every constant-weight op of every subgraph, mapped to its module by content; ExportError for strays."""
    import numpy as np
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    from edgeopt.packagers.tflite_weights import (
        WEIGHT_OPERAND,
        _fingerprint,
        _module_layouts,
        _prefer_kind,
        _scaled_matches,
    )

    fb = fbu.read_model(str(path))
    layouts = _module_layouts(model)
    by_hash: dict[tuple, list[str]] = {}
    for name, (_, variants) in layouts.items():
        for arr in variants:
            by_hash.setdefault(_fingerprint(arr), []).append(name)
    uses, strays = [], []
    for gi, graph in enumerate(fb.subgraphs):
        for op in graph.operators:
            op_name = fbu.opcode_to_name(fb, op.opcodeIndex)
            index = WEIGHT_OPERAND.get(op_name)
            if index is None or index >= len(op.inputs) or op.inputs[index] < 0:
                continue
            tensor = graph.tensors[op.inputs[index]]
            data = fb.buffers[tensor.buffer].data
            if data is None or len(data) == 0 or tensor.type != 0:  # activations, or not FLOAT32
                continue
            arr = np.frombuffer(bytes(data), np.float32).reshape(tensor.shape)
            name = _prefer_kind(by_hash.get(_fingerprint(arr)) or _scaled_matches(arr, layouts), layouts, op_name)
            if name is None:
                strays.append(f"{op_name} {list(tensor.shape)} in {graph.name.decode()}")
                continue
            scope = "".join(graph.tensors[i].name.decode() + ";" for i in op.outputs if i >= 0)
            uses.append(_WeightUse(name, layouts[name][0], op_name, gi, scope, int(tensor.buffer)))
    missing = sorted(set(layouts) - {u.module for u in uses})
    if strays or missing:
        raise ExportError(f"tflite lm: weights do not map to modules one to one (unmatched ops: {strays[:4]}; "
                          f"modules without an op: {missing[:6]})")
    return uses


def _stored_types(path: Path, uses: list[_WeightUse]) -> dict[str, str]:
    """module → the least quantized TFLite type its weight is stored as, over all its uses."""
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    from edgeopt.packagers.tflite_weights import WEIGHT_OPERAND, _type_rank

    fb = fbu.read_model(str(path))
    index = []
    for graph in fb.subgraphs:
        producer, by_scope = {}, {}
        for op in graph.operators:
            name = fbu.opcode_to_name(fb, op.opcodeIndex)
            for t in op.outputs:
                producer[t] = (name, op)
            by_scope["".join(graph.tensors[i].name.decode() + ";" for i in op.outputs if i >= 0)] = op
        index.append((graph, producer, by_scope))
    stored: dict[str, str] = {}
    for u in uses:
        graph, producer, by_scope = index[u.subgraph]
        if u.scope not in by_scope:
            raise ExportError(f"tflite lm: op {u.op} of {u.module} is not in the quantized model "
                              f"(scope {u.scope[:80]})")
        t = by_scope[u.scope].inputs[WEIGHT_OPERAND[u.op]]
        while t in producer and producer[t][0] == "DEQUANTIZE":
            t = producer[t][1].inputs[0]
        kind = fbu.type_to_name(graph.tensors[t].type)
        stored[u.module] = kind if u.module not in stored else max(stored[u.module], kind, key=_type_rank)
    return stored


@contextlib.contextmanager
def _duplicates_named_in_bytes():
    """Work around ai-edge-quantizer 0.10: a tensor it duplicates gets a ``str`` name, and its blockwise (int4)
    quantization then appends ``b"_scales"`` to it (TypeError). That happens when a tied table's two ops get
    different configs, e.g. the lm_head kept float (a sensitive layer) while the token table is int4 in
    groups: the quantizer copies the shared buffer for one of them. Names are set back to bytes after each
    duplication (the transformation table is built inside quantize(), so patching the module is enough)."""
    from ai_edge_quantizer.transformations import duplicate_tensor as dt

    original = dt.duplicate_tensor

    def duplicate(transformation_input):
        info = original(transformation_input)
        for tensor in transformation_input.subgraph.tensors:
            if isinstance(tensor.name, str):
                tensor.name = tensor.name.encode()
        return info

    dt.duplicate_tensor = duplicate
    try:
        yield
    finally:
        dt.duplicate_tensor = original


def _coverage(scheme: QuantScheme, uses: list[_WeightUse], stored: dict[str, str]) -> Coverage | None:
    """Quantized vs kept float per Linear / Embedding; ExportError for a weight stored against the scheme."""
    if scheme.precision is Precision.FP32:
        return None
    kinds = {u.module: u.kind for u in uses}
    keep = set(scheme.keep_float)
    wanted = ("FLOAT16",) if scheme.precision is Precision.FP16 else ("INT8", "INT4")
    quantized, kept, wrong = [], {}, {}
    for module, kind in sorted(stored.items()):
        if module in keep:
            kept[module] = "kept float: sensitive layer"
            if kind != "FLOAT32":
                wrong[module] = f"asked to stay float, stored {kind}"
        elif kind in wanted:
            quantized.append(module)
        elif kinds[module] == "embedding" and scheme.is_quantized and not scheme.quantize_embeddings:
            kept[module] = "kept float: embeddings not quantized by this scheme"
        else:
            wrong[module] = f"stored {kind}"
    if wrong:
        names = "; ".join(f"{k}: {v}" for k, v in sorted(wrong.items()))
        raise ExportError(f"tflite lm: {scheme.precision.value} artifact does not store weights as planned: {names}")
    if scheme.precision is Precision.FP16:
        return None  # the gate above is the point; "N of M quantized" would misdescribe fp16
    return Coverage(tuple(quantized), kept)


def _module_name(model, module) -> str | None:
    return next((n for n, m in model.named_modules() if m is module), None) if module is not None else None


def _tied(model) -> dict[str, str]:
    """{output layer: input embedding} when they share one weight.

    The converter stores one tensor for both, and ai-edge-quantizer keeps one when both ops get the same
    quantization (int4 in the scheme's groups, or int8 per row and channel; measured on SmolLM2's shape:
    one 14.2 MB int4 buffer for the 49152 x 576 table); it gives each op its own copy when they differ.
    """
    emb, out = model.get_input_embeddings(), model.get_output_embeddings()
    if emb is None or out is None or out.weight is not emb.weight:
        return {}
    names = {id(m): n for n, m in model.named_modules()}
    return {names[id(out)]: names[id(emb)]}


# --- I/O -----------------------------------------------------------------------------------------


def _signature_io(path: Path, signature: str) -> tuple[dict[str, TensorSpec], dict[str, TensorSpec]]:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner(signature)

    def specs(details: dict) -> dict[str, TensorSpec]:
        return {n: TensorSpec(n, np.dtype(d["dtype"]).name, tuple(int(x) for x in d["shape"]))
                for n, d in details.items()}

    return specs(runner.get_input_details()), specs(runner.get_output_details())


def _natural(text: str) -> list:
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]
