"""ONNX export of decoder LMs (Llama, Qwen2, GPT-2 families) with explicit past key/values.

One graph serves prefill and decode, in the layout ONNX Runtime GenAI and Optimum use::

    input_ids [1, T] int64, attention_mask [1, past + T] int64 (all ones: no padding),
    past_key_values.{i}.key / .value [1, kv_heads, past, head_dim] float32
    → logits [1, T, vocab] float32, present.{i}.key / .value [1, kv_heads, past + T, head_dim]

T and past are dynamic, so prefill starts from a past of length 0 and decode feeds T = 1; positions
come from the past length inside the graph (transformers' ``cache_position``). The wrapper builds a
``DynamicCache`` from the explicit tensors and returns the grown cache's tensors: nothing is mutated
in place, which is what lets torch.onnx (dynamo) trace it (the in-place static cache of
``transformers.integrations.executorch`` does not export to ONNX).

Quantization reuses ``onnx_quant`` (the encoder path): int8 = dynamic int8 activations with per-channel
uint8 weights (MatMulInteger) after SmoothQuant calibrated on prefill inputs; int4 = MatMulNBits blocks of
``group_size`` with accuracy_level 4 (int8 activations in the kernel) for dynamic activations. Embedding
tables, when the scheme says so: int8 (Gather + dequant) in int8 schemes, int4 GatherBlockQuantized
(com.microsoft, blocks of ``group_size`` along each row) in int4 ones. The lm_head is a linear layer like
the others (MatMulNBits in int4).
"""

from __future__ import annotations

import contextlib
import io
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgeopt.errors import ExportError, UnsupportedError
from edgeopt.formats import Format, Precision
from edgeopt.packagers import Artifact, Capabilities, Coverage
from edgeopt.packagers.lm import check_lengths, release_memory
from edgeopt.quantize import Activations, QuantScheme

if TYPE_CHECKING:  # pragma: no cover
    from edgeopt.models import LoadedModel

LM_CAPABILITIES = Capabilities(
    precisions=frozenset({Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4}),
    activations=frozenset({Activations.FLOAT, Activations.DYNAMIC}),
    notes={
        Precision.FP16: "fp16 weights with fp32 inputs, outputs and cache; on CPUs without fp16 arithmetic (x86) "
                        "onnxruntime runs it through fp32 casts: a size win only",
        Precision.INT4: "MatMulNBits int4 weights (block = group_size) with int8 activations in the kernel "
                        "(accuracy_level 4); no static activations for KV-cache LMs",
    },
)
INPUT_IDS, ATTENTION_MASK, LOGITS = "input_ids", "attention_mask", "logits"
_CALIBRATION_SAMPLES = 4
_TIE_FRACTION = 1e-5  # _share_tied_int4_table: values allowed one step apart (rounding ties), of the table
_PROTOBUF_LIMIT_BYTES = 2**31 - 2**26  # the fp32 graph is written and re-read whole (64 MiB for the graph)
# Example sizes the graph is traced at: distinct and >= 2, so torch.export keeps both dimensions symbolic.
_TRACE_T, _TRACE_PAST = 3, 5


def past_names(num_layers: int) -> list[str]:
    """Graph input names of the past cache, key then value per layer."""
    return [f"past_key_values.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def present_names(num_layers: int) -> list[str]:
    """Graph output names of the grown cache, in the order of ``past_names``."""
    return [f"present.{i}.{kv}" for i in range(num_layers) for kv in ("key", "value")]


def check_lm(loaded: LoadedModel, scheme: QuantScheme, *, prompt_len: int | None = None,
             context_len: int | None = None) -> None:
    """Refuse, before any export work, what this exporter cannot build.

    Raises:
        UnsupportedError: not a causal LM, a cache layout the explicit-past graph would compute wrongly
            (sliding-window or hybrid layers), static int8 activations, an impossible context length.
    """
    from edgeopt.models import Family
    from edgeopt.packagers import onnx_quant

    if loaded.family is not Family.DECODER or not hasattr(getattr(loaded.module, "model", None), "lm_head"):
        raise UnsupportedError(f"onnx LM export: {loaded.name} is not a transformers causal LM (family "
                               f"{loaded.family.value}); export it with the plain ONNX packager instead")
    config = loaded.config.get_text_config(decoder=True) if hasattr(loaded.config, "get_text_config") else loaded.config
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedError(f"onnx LM export: {loaded.name} is an encoder-decoder model; only decoder-only "
                               f"causal LMs get a KV-cache graph")
    kinds = sorted(set(getattr(config, "layer_types", None) or ()) - {"full_attention"})
    if kinds:
        raise UnsupportedError(f"onnx LM export: {loaded.name} has {', '.join(kinds)} layers; the explicit-past "
                               f"graph keeps a full cache per layer and would attend past the window "
                               f"(export with use_sliding_window=False only if the model was trained that way)")
    graph_bytes, tied = fp32_graph_bytes(loaded)
    if graph_bytes >= _PROTOBUF_LIMIT_BYTES:
        size = f"{loaded.name}'s fp32 graph is {graph_bytes / 2**30:.2f} GiB{' with its tied lm_head stored twice' if tied else ''}"
        if not scheme.is_quantized:
            raise UnsupportedError(f"onnx LM export: {size}, over protobuf's 2 GiB limit for one .onnx file; "
                                   f"edgeopt ships an ONNX LM as one file, so {scheme.precision.value} is not built "
                                   f"here: use int8 or int4 (quantized from an fp32 graph with external data), or "
                                   f"the executorch or litert format")
        if graph_bytes / 4 >= _PROTOBUF_LIMIT_BYTES:
            raise UnsupportedError(f"onnx LM export: {size}; even {scheme.precision.value} would be over protobuf's "
                                   f"2 GiB limit for one .onnx file: use the executorch or litert format")
    if scheme.activations is Activations.STATIC:
        raise UnsupportedError("onnx LM export: static int8 activations need fixed scales for every prompt and "
                               "cache length; use dynamic activations (int8 or int4)")
    if not scheme.is_quantized and scheme.activations is not Activations.FLOAT:
        raise UnsupportedError(f"onnx LM export: {scheme.precision.value} with {scheme.activations.value} "
                               f"activations: int8 activations need int8 or int4 weights (use activations=float)")
    if scheme.is_quantized:
        onnx_quant.check_scheme(scheme)
    if prompt_len is not None and context_len is not None:
        check_lengths("onnx LM export", config, prompt_len, context_len)


def fp32_graph_bytes(loaded: LoadedModel) -> tuple[int, bool]:
    """Bytes of the fp32 graph's weights (a tied lm_head counts twice: the exporter stores its transposed copy)
    and whether the head is tied."""
    layers = _weight_layers(loaded.module)
    head = _tied_lm_head(layers)
    fp32_bytes = 4 * sum(p.numel() for p in loaded.module.parameters())
    return fp32_bytes + (4 * layers[head].weight.numel() if head else 0), head is not None


def export_lm(loaded: LoadedModel, scheme: QuantScheme, work_dir: Path, *, prompt_len: int,
              context_len: int) -> Artifact:
    """Write model.onnx: the causal LM with explicit past key/values, built as ``scheme`` says.

    Args:
        loaded: a decoder LoadedModel (``loaded.module.model`` is the transformers causal LM).
        prompt_len, context_len: recorded in ``details["lm"]``; the graph itself takes any T and past.
    Returns:
        the Artifact, with ``coverage`` naming every linear and embedding layer and ``details["lm"]``
        as runtimes/common/README.md "Decoder LMs" describes (cache "explicit").
    Raises:
        UnsupportedError: see ``check_lm``. ExportError: the exporter or a quantizer failed, a layer stayed
            float unasked, or onnxruntime cannot load the result.
    """
    import onnx

    from edgeopt.packagers import onnx as onnx_packager
    from edgeopt.packagers import onnx_quant

    check_lm(loaded, scheme, prompt_len=prompt_len, context_len=context_len)
    start = time.perf_counter()
    work_dir.mkdir(parents=True, exist_ok=True)
    fp32_path, built, path = work_dir / "model.fp32.onnx", work_dir / "model.built.onnx", work_dir / "model.onnx"
    shape = cache_shape(loaded.module.model)
    # The fp32 graph that int8/int4 start from keeps its weights in model.fp32.onnx.data beside it: the exporter
    # then writes tensors to the file one by one instead of serializing one protobuf of the whole model in memory
    # (SmolLM2-135M int4: peak PSS 2806 -> 2342 MB, the same artifact), and over protobuf's 2 GiB (Qwen2.5-0.5B's
    # tied table twice: 2.4 GiB) it is the only way. fp32/fp16 artifacts are one file (check_lm refuses them there).
    external = scheme.is_quantized or fp32_graph_bytes(loaded)[0] >= _PROTOBUF_LIMIT_BYTES
    _export_fp32(loaded, shape, fp32_path, external=external)
    calibration = _calibration_feeds(loaded, shape, prompt_len)
    parity_feeds = _parity_feeds(fp32_path, calibration[0], shape)
    fp32_graph, quantized_graph = onnx.load(str(fp32_path)), None
    details: dict[str, Any] = {}
    with onnx_quant.keep_root_logging():
        if scheme.precision is Precision.FP32:
            fp32_path.rename(built)
        elif scheme.precision is Precision.FP16:
            onnx_packager._to_fp16(fp32_path, built)
            details["fp16"] = {"converter": "onnxruntime.transformers.float16", "keep_io_types": True,
                               "kept_fp32_ops": list(onnx_packager.FP16_KEEP_FP32)}
        else:
            names = {init: ref.module for init, ref in
                     _layer_inventory(fp32_graph, _weight_layers(loaded.module)).items()}
            # Each graph is a full copy of the weights: not held through onnxruntime's quantizer (SmolLM2-135M
            # int8 peaked at 9.7x its fp32 weights with it), read again for the coverage.
            del fp32_graph
            release_memory()
            _, details["quantization"] = onnx_quant.quantize(fp32_path, built, scheme, calibration,
                                                             int4_tables=True, module_names=names)
            fp32_graph, quantized_graph = onnx.load(str(fp32_path)), onnx.load(str(built))
        for f in (fp32_path, *_companions(fp32_path)):
            f.unlink(missing_ok=True)
        coverage = module_coverage(loaded.module, fp32_graph, quantized_graph, scheme)
        del fp32_graph, quantized_graph  # nor through the offline optimization's sessions
        release_memory()
        pair = _tied_pair(loaded.module)
        shared = None
        if pair and scheme.precision is Precision.INT4 and pair[1] in details["quantization"].get("embeddings", {}):
            shared = _share_tied_int4_table(built)
            if shared:
                details["quantization"]["embeddings"][pair[1]] = shared
        details["graph_optimization"] = onnx_packager._optimize_offline(built, path, parity_feeds)
    details["ops"] = onnx_packager._op_counts(path)
    details["host_execution_provider"] = "CPUExecutionProvider"
    inputs, outputs = onnx_packager._io_specs(path)
    details["lm"] = lm_details(shape, prompt_len, context_len)
    if ATTENTION_MASK not in {spec.name for spec in inputs}:  # the exporter drops an input the model ignores
        details["lm"]["attention_mask"] = None
    tied = tied_note(loaded.module, shared=bool(shared))
    if tied:
        details["tied_embeddings"] = tied
    return Artifact(path=path, format=Format.ONNX, precision=scheme.precision, scheme=scheme, inputs=inputs,
                    outputs=outputs, coverage=coverage, details=details,
                    build_seconds=time.perf_counter() - start)


def lm_details(shape: dict[str, int], prompt_len: int, context_len: int) -> dict[str, Any]:
    """The ``lm`` manifest entry: the contract's keys plus the graph names the backend feeds."""
    layers = shape["num_layers"]
    return {"kind": "causal_lm", "vocab_size": shape["vocab_size"], "num_layers": layers,
            "num_kv_heads": shape["num_kv_heads"], "head_dim": shape["head_dim"], "context_len": context_len,
            "prompt_len": prompt_len, "cache": "explicit", "cache_dtype": "float32",
            "input_ids": INPUT_IDS, "attention_mask": ATTENTION_MASK, "logits": LOGITS,
            "past_inputs": past_names(layers), "present_outputs": present_names(layers)}


def cache_shape(model) -> dict[str, int]:
    """Layers, KV heads, head size and vocabulary, read from one real forward (true after pruning too)."""
    import torch

    with torch.no_grad():
        out = model(input_ids=torch.zeros(1, 1, dtype=torch.long), use_cache=True)
    keys = [layer.keys for layer in _returned_cache(out).layers]
    return {"num_layers": len(keys), "num_kv_heads": int(keys[0].shape[1]), "head_dim": int(keys[0].shape[3]),
            "vocab_size": int(out.logits.shape[-1])}


def _wrapper(model, num_layers: int):
    """The causal LM as ``(input_ids, attention_mask, *past) -> (logits, *present)``."""
    import inspect

    import torch
    from transformers.cache_utils import DynamicCache

    # transformers 5.x renamed past_key_values to cache (the old name still works, with a warning).
    cache_arg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"

    class WithPast(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model  # same attribute as CausalLMWrapper: layer names match the scheme's keep_float

        def forward(self, input_ids, attention_mask, *past):
            cache = DynamicCache(ddp_cache_data=[(past[2 * i], past[2 * i + 1]) for i in range(num_layers)])
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=True,
                             **{cache_arg: cache})
            present = []
            for layer in _returned_cache(out).layers:
                present += [layer.keys, layer.values]
            return (out.logits, *present)

    return WithPast().eval()


def _returned_cache(out):
    """The cache a transformers forward returned (``cache`` in transformers 5.x, ``past_key_values`` before)."""
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values




def _companions(path: Path) -> tuple[Path, ...]:
    """The external-data files written beside the graph at ``path`` (``model.fp32.onnx.data``)."""
    return tuple(sorted(f for f in path.parent.glob(path.name + ".*") if f.is_file()))


def _export_fp32(loaded: LoadedModel, shape: dict[str, int], path: Path, *, external: bool = False) -> None:
    """torch.onnx (dynamo) export of the explicit-past graph; the last one is kept (on disk) by content.
    ``external``: the weights go to ``<path>.data`` (over protobuf's 2 GiB for one file)."""
    import torch

    from edgeopt.packagers import onnx as onnx_packager

    layers = shape["num_layers"]
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, shape["vocab_size"], (1, _TRACE_T), generator=gen)
    mask = torch.ones(1, _TRACE_PAST + _TRACE_T, dtype=torch.long)
    past = [torch.zeros(1, shape["num_kv_heads"], _TRACE_PAST, shape["head_dim"]) for _ in range(2 * layers)]
    example = (ids, mask, *past)
    key = "lm:" + onnx_packager._content_key(loaded, example) + (":external-data" if external else "")
    from edgeopt.packagers.lm import cached_conversion, remember_conversion

    if cached_conversion("onnx-lm", key, path):
        return
    dynamic = ({1: "seq"}, {1: "total"}, tuple({2: "past"} for _ in past))
    try:
        # The exporter prints progress lines on stdout; keep the CLI's output ours.
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            # Every past tensor shares the one "past" axis; the exporter warns that it merged the names.
            warnings.filterwarnings("ignore", message=".*will not be used, since it shares the same shape")
            torch.onnx.export(_wrapper(loaded.module.model, layers), example, str(path),
                              input_names=[INPUT_IDS, ATTENTION_MASK, *past_names(layers)],
                              output_names=[LOGITS, *present_names(layers)], dynamic_shapes=dynamic,
                              dynamo=True, external_data=external, verbose=False)
    except Exception as e:  # any exporter failure becomes an ExportError naming the format
        raise ExportError(f"onnx: torch.onnx export of the KV-cache LM failed: {onnx_packager._first_line(e)}") from e
    remember_conversion("onnx-lm", key, path, _companions(path))


def empty_past(shape: dict[str, int]) -> dict:
    """Feeds of a past of length 0 (the start of a prefill)."""
    import numpy as np

    zero = np.zeros((1, shape["num_kv_heads"], 0, shape["head_dim"]), np.float32)
    return {name: zero for name in past_names(shape["num_layers"])}


def _calibration_feeds(loaded: LoadedModel, shape: dict[str, int], prompt_len: int) -> list[dict]:
    """Prefill feeds from the model's calibration split (tokens under its attention mask only)."""
    import numpy as np

    feeds = []
    for sample in loaded.sample_inputs(_CALIBRATION_SAMPLES, seq_len=prompt_len, split="calibration"):
        named = dict(zip(loaded.input_names, sample))
        ids = named[INPUT_IDS][0].numpy()
        if ATTENTION_MASK in named:
            ids = ids[named[ATTENTION_MASK][0].numpy().astype(bool)]
        ids = ids[ids < shape["vocab_size"]].astype(np.int64)[None, :]
        if ids.shape[1]:
            feeds.append({INPUT_IDS: ids, ATTENTION_MASK: np.ones_like(ids), **empty_past(shape)})
    if not feeds:
        raise ExportError(f"onnx LM export: the calibration samples of {loaded.name} hold no tokens")
    return feeds


def _parity_feeds(fp32_path: Path, prefill: dict, shape: dict[str, int]) -> list[dict]:
    """A prefill feed and a decode feed whose past is the fp32 graph's own cache after that prefill."""
    import numpy as np

    from edgeopt.packagers import onnx as onnx_packager

    session = onnx_packager._session(fp32_path)
    out = session.run(None, prefill)
    past = dict(zip(past_names(shape["num_layers"]), out[1:]))
    n = prefill[INPUT_IDS].shape[1]
    token = np.array([[int(out[0][0, -1].argmax())]], np.int64)
    return [prefill, {INPUT_IDS: token, ATTENTION_MASK: np.ones((1, n + 1), np.int64), **past}]


def module_coverage(wrapper, fp32_graph, quantized_graph, scheme: QuantScheme) -> Coverage:
    """Every linear (nn.Linear, GPT-2 Conv1D) and nn.Embedding of the model, quantized or float with why.

    Args:
        wrapper: ``loaded.module``; layer names are its module names (as ``scheme.keep_float`` uses).
        fp32_graph, quantized_graph: the float graph and the quantized one built from it (onnx.ModelProto;
            ``quantized_graph`` None for fp32/fp16).
    Raises:
        ExportError: a layer has no weight in the graph, so nothing can say how it is stored; or a weight
            stayed float that the scheme asked to quantize (onnx_quant's gate, applied per layer).
    """
    from edgeopt.packagers import onnx_quant

    import dataclasses

    layers = _weight_layers(wrapper)
    inventory = _layer_inventory(fp32_graph, layers)
    missing = sorted(set(layers) - {ref.module for ref in inventory.values()})
    # A tied lm_head the exporter computes from the embedding's own table (one tensor in the graph, no
    # transposed copy; SmolLM2's shape): it is stored exactly as that table is.
    head, table = _tied_lm_head(layers), None
    if head in missing:
        table = next((n for n, m in layers.items() if isinstance(m, torch_embedding())
                      and m.weight.data_ptr() == layers[head].weight.data_ptr()), None)
        if table is not None and table not in missing:
            missing.remove(head)
        else:
            table = None
    if missing:
        raise ExportError(f"onnx LM export: {len(missing)} layer(s) of the model have no weight in the exported "
                          f"graph, so coverage cannot say how they are stored: {', '.join(missing)}")
    if quantized_graph is None:
        why = f"kept float: {scheme.precision.value} artifact (no quantization asked)"
        return Coverage((), {name: why for name in sorted(layers)})
    coverage = onnx_quant.check_coverage(inventory, quantized_graph, scheme)
    if table is None:
        return coverage
    if table in coverage.quantized:
        return dataclasses.replace(coverage, quantized=tuple(sorted((*coverage.quantized, head))))
    why = coverage.kept_float.get(table, "kept float")
    return dataclasses.replace(coverage, kept_float={**coverage.kept_float,
                                                     head: f"{why} (tied: the graph's {table} table)"})


def torch_embedding():
    import torch

    return torch.nn.Embedding


def _weight_layers(wrapper) -> dict:
    """name → module for every linear (nn.Linear, transformers Conv1D) and nn.Embedding."""
    import torch
    from transformers.pytorch_utils import Conv1D

    return {name: m for name, m in wrapper.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Embedding, Conv1D))}


def _layer_inventory(fp32_graph, layers: dict):
    """onnx_quant's weight inventory of the graph, each weight named by the model layer it holds.

    By the exporter's name scope where it names a layer of the right kind, else by content: a Gather
    table is the embedding with that exact weight, a MatMul/Gemm weight the linear with that weight or its
    transpose. A tied lm_head needs the content rule: the exporter names the shared table after the head,
    and exports the head as a transposed copy of it.
    """
    import dataclasses

    import numpy as np
    import torch
    from onnx import numpy_helper

    from edgeopt.packagers import onnx_quant

    inits = {i.name: i for i in fp32_graph.graph.initializer}
    inventory = {}
    for init, ref in onnx_quant.weight_inventory(fp32_graph).items():
        want_embedding = ref.op == "Gather"
        named = [n for n in (ref.module, ref.module.removesuffix(".weight")) if n in layers
                 and isinstance(layers[n], torch.nn.Embedding) == want_embedding]
        if not named:
            array = numpy_helper.to_array(inits[init])
            named = [n for n, m in layers.items() if isinstance(m, torch.nn.Embedding) == want_embedding
                     and any(w.shape == array.shape and np.array_equal(w, array)
                             for w in (m.weight.detach().numpy(), m.weight.detach().numpy().T))]
        inventory[init] = dataclasses.replace(ref, module=named[0] if named else ref.module)
    return inventory


def _tied_lm_head(layers: dict) -> str | None:
    """The lm_head's name when it shares its weight tensor with an embedding table."""
    import torch

    tables = {m.weight.data_ptr() for m in layers.values() if isinstance(m, torch.nn.Embedding)}
    heads = [n for n, m in layers.items() if n.endswith("lm_head") and not isinstance(m, torch.nn.Embedding)]
    return next((n for n in heads if layers[n].weight.data_ptr() in tables), None)


def _tied_pair(wrapper) -> tuple[str, str] | None:
    """(lm_head, the embedding table it shares its weight with), or None."""
    import torch

    layers = _weight_layers(wrapper)
    head = _tied_lm_head(layers)
    if head is None:
        return None
    return head, next(n for n, m in layers.items() if isinstance(m, torch.nn.Embedding)
                      and m.weight.data_ptr() == layers[head].weight.data_ptr())


def tied_note(wrapper, *, shared: bool = False) -> str | None:
    """What the artifact does with an lm_head that shares the input embedding's weight (None: not tied);
    ``shared``: the int4 table is read from the head's blocks (``_share_tied_int4_table``)."""
    pair = _tied_pair(wrapper)
    if pair is None:
        return None
    head, table = pair
    if shared:
        return (f"{head} is tied to {table}; stored once: the lookup reads the head's int4 MatMulNBits blocks "
                f"(Gather + unpack; details.quantization.embeddings says how they compare with the table's own)")
    return (f"{head} is tied to {table}; the graph stores the table twice, as the Gather table and as the "
            f"head's transposed MatMul weight, each quantized on its own in int8/int4 artifacts")


def _share_tied_int4_table(path: Path) -> str | None:
    """Store a tied int4 table once: the lookup reads the lm_head's MatMulNBits blocks instead of its own copy.

    onnxruntime's quantizer gives the token lookup (GatherBlockQuantized, int4 [V, H]) and the tied head
    (MatMulNBits, uint8 [V, H/block, block/2] with an implied zero point 8) a copy each, from the same fp32
    table and blocks: the same numbers twice (SmolLM2-135M: 2 x 15.9 MB, the int4 artifact 0.188 of fp32).
    When the two are the same (checked here: equal scales, values equal but for rounding ties one step apart),
    the GatherBlockQuantized node becomes
    Gather rows of the head's blocks -> low/high nibble -> (q - 8) x scale, in standard ONNX ops on the
    prompt's rows only, and its copy is dropped. Returns the manifest's description, or None if nothing
    was shared (no such pair, or they differ).
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    attr = lambda node, name: next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), None)
    lookups = [n for n in graph.node if n.op_type == "GatherBlockQuantized" and n.input[0] in inits
               and len(n.input) == 3 and attr(n, "bits") in (None, 4) and attr(n, "quantize_axis") in (None, 1)
               and attr(n, "gather_axis") in (None, 0)]  # the spec's defaults: 4, 1, 0
    heads = [n for n in graph.node if n.op_type == "MatMulNBits" and attr(n, "bits") == 4
             and len([x for x in n.input if x]) == 3 and n.input[1] in inits and n.input[2] in inits]

    def differing(lookup, head) -> int | None:
        """How many int4 values of the two copies differ (by one step at most), None if they are not one table."""
        table = numpy_helper.to_array(inits[lookup.input[0]])
        if table.ndim != 2 or (attr(head, "N"), attr(head, "K")) != table.shape \
                or attr(head, "block_size") != attr(lookup, "block_size"):
            return None
        scales, head_scales = (numpy_helper.to_array(inits[x]) for x in (lookup.input[2], head.input[2]))
        blocks = numpy_helper.to_array(inits[head.input[1]])
        if blocks.dtype != np.uint8 or head_scales.shape != scales.shape or not np.array_equal(head_scales, scales):
            return None
        values = np.stack([(blocks & 15).astype(np.int8) - 8, (blocks >> 4).astype(np.int8) - 8], -1)
        diff = np.abs(values.reshape(table.shape).astype(np.int16) - table.astype(np.int16))
        n = int(np.count_nonzero(diff))
        # The two quantizers round exact ties differently: SmolLM2's 49152 x 576 table has 15 of 28.3M values one
        # step apart (equal scales). Anything more is not the same table.
        return n if int(diff.max(initial=0)) <= 1 and n <= _TIE_FRACTION * table.size else None

    pair = next(((lk, hd, n) for lk in lookups for hd in heads if (n := differing(lk, hd)) is not None), None)
    if pair is None:
        return None
    lookup, head, ties = pair
    block = attr(lookup, "block_size")
    hidden = attr(head, "K")
    ids, out = lookup.input[1], lookup.output[0]
    p = f"{lookup.name or 'embedding'}_shared"
    consts = {f"{p}_low_mask": np.array(15, np.uint8), f"{p}_four": np.array(4, np.uint8),
              f"{p}_zero_point": np.array(8.0, np.float32), f"{p}_last": np.array([-1], np.int64),
              f"{p}_block_shape": np.array([hidden // block, block], np.int64),
              f"{p}_hidden": np.array([hidden], np.int64)}
    graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in consts.items())
    nodes = [
        helper.make_node("Gather", [head.input[1], ids], [f"{p}_rows"], axis=0, name=f"{p}_rows"),
        helper.make_node("BitwiseAnd", [f"{p}_rows", f"{p}_low_mask"], [f"{p}_low"], name=f"{p}_low"),
        helper.make_node("BitShift", [f"{p}_rows", f"{p}_four"], [f"{p}_high"], direction="RIGHT",
                         name=f"{p}_high"),
        helper.make_node("Unsqueeze", [f"{p}_low", f"{p}_last"], [f"{p}_low1"], name=f"{p}_low1"),
        helper.make_node("Unsqueeze", [f"{p}_high", f"{p}_last"], [f"{p}_high1"], name=f"{p}_high1"),
        helper.make_node("Concat", [f"{p}_low1", f"{p}_high1"], [f"{p}_pairs"], axis=-1, name=f"{p}_pairs"),
        helper.make_node("Shape", [ids], [f"{p}_ids_shape"], name=f"{p}_ids_shape"),
        helper.make_node("Concat", [f"{p}_ids_shape", f"{p}_block_shape"], [f"{p}_blocked_shape"], axis=0,
                         name=f"{p}_blocked_shape"),
        helper.make_node("Reshape", [f"{p}_pairs", f"{p}_blocked_shape"], [f"{p}_q"], name=f"{p}_q"),
        helper.make_node("Cast", [f"{p}_q"], [f"{p}_qf"], to=onnx.TensorProto.FLOAT, name=f"{p}_qf"),
        helper.make_node("Sub", [f"{p}_qf", f"{p}_zero_point"], [f"{p}_centered"], name=f"{p}_centered"),
        helper.make_node("Gather", [head.input[2], ids], [f"{p}_scales"], axis=0, name=f"{p}_scales"),
        helper.make_node("Unsqueeze", [f"{p}_scales", f"{p}_last"], [f"{p}_scales1"], name=f"{p}_scales1"),
        helper.make_node("Mul", [f"{p}_centered", f"{p}_scales1"], [f"{p}_rows_f"], name=f"{p}_rows_f"),
        helper.make_node("Concat", [f"{p}_ids_shape", f"{p}_hidden"], [f"{p}_out_shape"], axis=0,
                         name=f"{p}_out_shape"),
        helper.make_node("Reshape", [f"{p}_rows_f", f"{p}_out_shape"], [out], name=f"{p}_out"),
    ]
    at = list(graph.node).index(lookup)
    graph.node.remove(lookup)
    for offset, node in enumerate(nodes):
        graph.node.insert(at + offset, node)
    used = {x for n in graph.node for x in n.input}
    for name in (lookup.input[0], lookup.input[2]):
        if name not in used:
            graph.initializer.remove(inits[name])
    onnx.save(model, str(path))
    same = "bit-identical to" if not ties else f"{ties} rounding tie(s) one step apart from"
    return (f"int4: the tied lm_head's MatMulNBits blocks of {block} along each row (stored once; "
            f"Gather + unpack, {same} its own GatherBlockQuantized copy)")
