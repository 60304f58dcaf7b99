"""ONNX packager: torch.onnx (dynamo exporter) → model.onnx for onnxruntime, plus model.ort.

Steps: export fp32 → transformer fusions (BERT-family encoders, fp32 and dynamic int8: ``_fuse``) → convert
(fp16) or quantize (int8/int4, see ``onnx_quant``) → coverage gate →
offline graph optimization at ORT_ENABLE_EXTENDED, kept only when it is portable and matches →
ORT format (model.ort + model.required_operators.config for reduced builds), checked against model.onnx.

Measured on all-MiniLM-L6-v2 (seq 128, 2 threads, x86 AVX2 without VNNI): fp16 keeps cosine 1.0000
at half the size but runs ~10% slower than fp32 on this CPU — its CPU kernels lack most fp16 ops, so
onnxruntime wraps them in fp32 casts at load; fp16 pays off where the CPU has fp16 arithmetic (arm64).
Normalizations and reductions stay fp32 in an fp16 graph (``FP16_KEEP_FP32``: a variance or a sum of squares
overflows fp16 on execution providers that compute in it, as the CUDA provider does). Where a profile runs
onnxruntime on a GPU, the device runner picks the CUDA / TensorRT providers (runtimes/onnxruntime/backend.py);
the host verifies on the CPU provider (``details["host_execution_provider"]``).

Fusions (``details["fusions"]``): for a BERT-family encoder the fp32 graph is replaced, before quantization, by
onnxruntime.transformers' fused one (Attention, SkipLayerNormalization, BiasGelu, EmbedLayerNormalization in fp32)
when it matches the unfused graph; dynamic int8 quantizes the fused Attention as QAttention. Measured on
all-MiniLM-L6-v2 (seq 128, 2 threads, shared 2-core AVX2 host, interleaved rounds, four runs): int8 0.93-0.985x
the unfused int8 artifact's latency, fp32 0.93-0.97x unfused fp32, cosine unchanged (0.9968); the quantized MatMuls,
which fusion leaves as they are, take 50-70% of the int8 run (benchmarks/bench_onnx_fusions.py).
"""

from __future__ import annotations

import collections
import contextlib
import io
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from edgeopt.errors import ExportError, MissingDependencyError, UnsupportedError, export_failure
from edgeopt.formats import Format, Precision, Runtime, Target
from edgeopt.lengths import LengthMode, Lengths, at_length, plan_lengths, run_fitted, torch_dynamic_shapes
from edgeopt.packagers import Artifact, Capabilities, TensorSpec, register
from edgeopt.packagers.onnx_quant import PACKED_SEPARATOR
from edgeopt.quantize import Activations, QuantScheme

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from edgeopt.models import LoadedModel

_NP_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool", 3: "int8", 2: "uint8"}
# Ops an fp16 graph keeps in fp32 (inputs cast up, outputs cast down), for every execution target: GPUs compute
# them in fp16 where a CPU provider upcasts. Each accumulates over a hidden or sequence axis: a variance, a sum of
# squares or a pooled sum passes fp16's 65504 or loses its low bits long before a single activation does.
FP16_KEEP_FP32 = ("LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization",
                  "ReduceMean", "ReduceSum", "ReduceL2", "Pow", "Sqrt")
_PORTABLE_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft"}
# Parity of a rewritten graph (offline-optimized, .ort) with the graph it came from. Fused int8 kernels
# may round an element to the neighbouring quantization step, hence cosine and not bitwise equality.
_PARITY_MIN_COSINE = 0.9999
_PARITY_MAX_ABS_ERR = 1e-3  # relative to the largest output magnitude (at least 1)


class OnnxPackager:
    runtime = Runtime.ONNXRUNTIME
    capabilities = Capabilities(
        precisions=frozenset({Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4}),
        activations=frozenset({Activations.FLOAT, Activations.DYNAMIC, Activations.STATIC}),
        notes={
            Precision.FP16: "fp16 runs through fp32 casts on CPUs without fp16 arithmetic (x86): a size win only",
            Precision.INT4: "int4 weights (MatMulNBits) with dynamic or float activations; no static int4",
        },
        # the device runner maps each to an execution provider (runtimes/onnxruntime/backend.py)
        targets=frozenset({Target.CPU, Target.CUDA, Target.TENSORRT}),
    )

    def check_available(self) -> None:
        for module, pkg in (("onnx", "onnx"), ("onnxscript", "onnxscript"), ("onnxruntime", "onnxruntime")):
            try:
                __import__(module)
            except ImportError:
                raise MissingDependencyError(module, "onnx", pkg) from None

    def toolchain_versions(self) -> dict[str, str]:
        import onnx
        import onnxruntime
        import onnxscript
        import torch

        return {"torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__,
                "onnxruntime": onnxruntime.__version__}

    def export(self, loaded: LoadedModel, scheme: QuantScheme, work_dir: Path, *, shapes: tuple[int, int],
               calibration: list[tuple], isa: tuple[str, ...] = ()) -> Artifact:
        """Write model.onnx (+ model.ort and its operator list) for ``scheme`` under ``work_dir``; ``isa``: the
        target device's CPU features (the profile's ``device.isa``), which pick dynamic int8's kernels.

        Raises:
            UnsupportedError: a scheme this format cannot build (the message says why).
            ExportError: the exporter or a quantizer failed, weights stayed float unasked (coverage gate),
                or the .ort file does not reproduce model.onnx.
        """
        from edgeopt.packagers import onnx_quant

        _check_scheme(scheme, calibration)
        start = time.perf_counter()
        work_dir.mkdir(parents=True, exist_ok=True)
        fp32_path, built, path = work_dir / "model.fp32.onnx", work_dir / "model.built.onnx", work_dir / "model.onnx"
        example = loaded.example_inputs(*shapes)
        lengths, fallback = _export_fp32(loaded, example, fp32_path, shapes[1])
        feeds = _feeds(fp32_path, loaded.input_names, calibration)
        parity_feeds = feeds[:2] or _feeds(fp32_path, loaded.input_names, [example])
        if lengths.variable:  # rewritten graphs must match at a short length too, not only at seq_len
            short = at_length(tuple(t.numpy() for t in example), loaded.input_names, lengths,
                              max(lengths.min, shapes[1] // 4))
            parity_feeds = parity_feeds + _feeds(fp32_path, loaded.input_names, [short])
        coverage, details = None, {}
        if fallback:
            details["lengths_fallback"] = fallback
        with onnx_quant.keep_root_logging():
            details["fusions"], module_names = _fuse(loaded, example, fp32_path, scheme, lengths, parity_feeds)
            if scheme.precision is Precision.FP32:
                fp32_path.rename(built)
            elif scheme.precision is Precision.FP16:
                _to_fp16(fp32_path, built)
                details["fp16"] = {"converter": "onnxruntime.transformers.float16", "keep_io_types": True,
                                   "kept_fp32_ops": list(FP16_KEEP_FP32)}
            else:
                coverage, details["quantization"] = onnx_quant.quantize(fp32_path, built, scheme, feeds,
                                                                         module_names=module_names, isa=isa)
            fp32_path.unlink(missing_ok=True)
            details["graph_optimization"] = _optimize_offline(built, path, parity_feeds)
            ort_files, details["ort_format"] = _to_ort_format(path, parity_feeds)
        details["ops"] = _op_counts(path)
        # what the host verified with; where the device runs it is the profile's execution targets (the runner)
        details["host_execution_provider"] = "CPUExecutionProvider"
        inputs, outputs = _io_specs(path)
        return Artifact(path=path, format=Format.ONNX, precision=scheme.precision, scheme=scheme, inputs=inputs,
                        outputs=outputs, coverage=coverage, extra_files=ort_files, details=details,
                        build_seconds=time.perf_counter() - start, lengths=lengths)

    def run(self, artifact: Artifact, samples: list[tuple[np.ndarray, ...]]) -> list[list[np.ndarray]]:
        """Outputs per sample; a dynamic-length artifact runs each sample at its own length (up to the max)."""
        session = _session(artifact.path)
        names = [i.name for i in session.get_inputs()]
        lengths = artifact.lengths
        if lengths is None or not lengths.variable:
            return [list(session.run(None, _feed(artifact.inputs, names, sample))) for sample in samples]
        ins, outs = tuple(s.name for s in artifact.inputs), tuple(s.name for s in artifact.outputs)
        return [run_fitted(lambda x, _n: session.run(None, _feed(artifact.inputs, names, x)), sample, ins, outs,
                           lengths) for sample in samples]


def _check_scheme(scheme: QuantScheme, calibration: list[tuple]) -> None:
    """Refuse what cannot be built before spending an export on it."""
    from edgeopt.packagers import onnx_quant

    if not scheme.is_quantized and scheme.activations is not Activations.FLOAT:
        raise UnsupportedError(f"onnx: {scheme.precision.value} with {scheme.activations.value} activations: "
                               f"int8 activations need int8 or int4 weights (use activations=float)")
    if scheme.is_quantized:
        onnx_quant.check_scheme(scheme)
    if scheme.activations is Activations.STATIC and not calibration:
        raise UnsupportedError("onnx: static int8 needs calibration inputs; none were given")


_last_export: dict[str, bytes] = {}  # one entry: content key → model bytes (see _export_fp32)
_CACHE_MAX_BYTES = 256 * 1024 * 1024  # larger exports are not held in memory


def _export_fp32(loaded: LoadedModel, example: tuple, path: Path, seq_len: int) -> tuple[Lengths, str | None]:
    """torch.onnx (dynamo) export to ``path``: a text encoder with a dynamic sequence axis (``seq``, up to
    ``seq_len``), anything else at the example's shapes. Returns the lengths and, when the dynamic export
    failed and the static one was written instead, why.

    The last export is kept in memory by content (module class, weights, io names, input shapes): the
    pipeline rebuilds the same model once per keep-float attempt and per precision, and an export of
    MiniLM takes ~10 s against ~1 s for what follows it.
    """
    lengths = plan_lengths(loaded, seq_len, LengthMode.DYNAMIC)
    key = _content_key(loaded, example) + lengths.mode.value
    if key in _last_export:
        path.write_bytes(_last_export[key][0])
        return _last_export[key][1]
    fallback = None
    try:
        _export_uncached(loaded, example, path, lengths)
    except ExportError as e:
        if not lengths.variable:
            raise
        fallback = f"dynamic sequence length failed, exported at seq_len {seq_len}: {str(e).splitlines()[0]}"
        lengths = plan_lengths(loaded, seq_len, LengthMode.STATIC)
        _export_uncached(loaded, example, path, lengths)
    _last_export.clear()
    if path.stat().st_size <= _CACHE_MAX_BYTES:
        _last_export[key] = (path.read_bytes(), (lengths, fallback))
    return lengths, fallback


def _content_key(loaded: LoadedModel, example: tuple) -> str:
    import hashlib

    import torch

    h = hashlib.sha256(f"{type(loaded.module).__module__}.{type(loaded.module).__qualname__}".encode())
    shapes = [(tuple(t.shape), str(t.dtype)) for t in example]
    h.update(repr((loaded.input_names, loaded.output_names, shapes)).encode())
    for name, tensor in list(loaded.module.named_parameters()) + list(loaded.module.named_buffers()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _export_uncached(loaded: LoadedModel, example: tuple, path: Path, lengths: Lengths) -> None:
    import torch

    sink = io.StringIO()
    dynamic = torch_dynamic_shapes(lengths, loaded.input_names)
    try:
        # The exporter prints progress lines on stdout; keep the CLI's output ours.
        with torch.no_grad(), contextlib.redirect_stdout(sink):
            torch.onnx.export(loaded.module, example, str(path), input_names=list(loaded.input_names),
                              output_names=list(loaded.output_names), dynamo=True, external_data=False,
                              verbose=False, dynamic_shapes=dynamic)
    except Exception as e:  # any exporter failure becomes an ExportError naming the format
        raise export_failure("onnx", "torch.onnx export", e) from e


# --- transformer fusions ----------------------------------------------------------------------------

# Encoders whose attention, residual LayerNorms and GELU onnxruntime's BERT fusions (onnxruntime.transformers
# .optimizer, model_type "bert") match. They match the TorchScript exporter's graph: on the dynamo exporter's
# graph only BiasGelu fuses (the Attention mask path ends in Where(mask, 0, -3.4e38), which the fusion does not
# know, and symbolic shape inference fails in Expand, which stops SkipLayerNormalization).
_FUSABLE_MODEL_TYPES = frozenset({"bert", "roberta", "xlm-roberta", "electra", "distilbert"})
_last_fused: dict[str, tuple] = {}  # one entry, as _last_export: content key → (model bytes, fusions, names)


def _fuse(loaded: LoadedModel, example: tuple, fp32_path: Path, scheme: QuantScheme, lengths: Lengths,
          feeds: list[dict]) -> tuple[dict, dict[str, str] | None]:
    """Replace the float graph at ``fp32_path`` by onnxruntime's fused one where it applies and matches.

    An attempt, never a failure of packaging: the fused graph is a TorchScript export (dynamo=False) of the
    same module, optimized by onnxruntime.transformers (Attention with the raw 2-D mask, so any padding is
    honoured; SkipLayerNormalization, BiasGelu; EmbedLayerNormalization in fp32 only, int8 keeps its
    measured int8 Gather tables). It is kept when its inputs and outputs are the dynamo graph's and it
    matches that graph on ``feeds`` (the _parity tolerance). Returns the manifest entry ({"applied", "ops":
    fused op type → count, ...} or {"applied": False, "reason"}) and, when applied, initializer → layer name
    for the quantizer's coverage (the TorchScript graph has no name scopes).
    """
    reason = _fusion_skip_reason(loaded, scheme)
    if reason is not None:
        return {"applied": False, "reason": reason}, None
    embed = not scheme.is_quantized
    key = _content_key(loaded, example) + lengths.mode.value + str(embed)
    if key not in _last_fused:
        _last_fused.clear()
        _last_fused[key] = _fused_graph(loaded, example, lengths, embed, fp32_path.with_suffix(".fused.onnx"))
    data, entry, names = _last_fused[key]
    if data is None:
        return entry, None
    fused = fp32_path.with_suffix(".fused.onnx")
    try:
        why = _adopt_io(data, fp32_path, fused)
        if why:
            return {"applied": False, "reason": why, "ops": entry["ops"]}, None
        parity = _parity(fp32_path, fused, feeds)
        if not parity.ok:
            return {"applied": False, "ops": entry["ops"],
                    "reason": f"the fused graph differs from the unfused one ({parity.describe()})"}, None
        fused.replace(fp32_path)
    finally:
        fused.unlink(missing_ok=True)
    return {**entry, "max_abs_err": parity.max_abs_err, "min_cosine": parity.min_cosine}, names


def _adopt_io(data: bytes, reference: Path, dst: Path) -> str | None:
    """Write the fused model to ``dst`` with the inputs and outputs declared as in ``reference`` (the
    TorchScript exporter leaves the batch axis and some output axes symbolic); why not, when they are
    not the same tensors (names, dtypes, ranks, fixed sizes)."""
    import onnx

    model, ref = onnx.ModelProto(), onnx.load(str(reference), load_external_data=False)
    model.ParseFromString(data)
    for mine, theirs in ((model.graph.input, ref.graph.input), (model.graph.output, ref.graph.output)):
        if [v.name for v in mine] != [v.name for v in theirs]:
            return (f"the fused graph's tensors {[v.name for v in mine]} are not the dynamo export's "
                    f"{[v.name for v in theirs]}")
        for a, b in zip(mine, theirs):
            ta, tb = a.type.tensor_type, b.type.tensor_type
            dims = [(x.dim_value if x.HasField("dim_value") else -1, y.dim_value if y.HasField("dim_value") else -1)
                    for x, y in zip(ta.shape.dim, tb.shape.dim)]
            if ta.elem_type != tb.elem_type or len(ta.shape.dim) != len(tb.shape.dim) or any(
                    x != y and -1 not in (x, y) for x, y in dims):
                return f"the fused graph's {a.name} is not typed as the dynamo export's"
            a.type.CopyFrom(b.type)
    onnx.save(model, str(dst))
    return None


def _fusion_skip_reason(loaded: LoadedModel, scheme: QuantScheme) -> str | None:
    from edgeopt.models import Family

    model_type = getattr(loaded.config, "model_type", None)
    if loaded.family is not Family.ENCODER or model_type not in _FUSABLE_MODEL_TYPES:
        return (f"not attempted: onnxruntime's transformer fusions are applied to the encoders "
                f"{', '.join(sorted(_FUSABLE_MODEL_TYPES))}; this model is "
                f"{f'{model_type} ({loaded.family.value})' if model_type else 'not a transformers model'}")
    if scheme.precision is Precision.FP16:
        return "not attempted for fp16: the CPU provider has fp32 kernels only for the fused ops"
    dynamic_int8 = scheme.precision is Precision.INT8 and scheme.activations is Activations.DYNAMIC
    if scheme.is_quantized and not dynamic_int8:
        return (f"not attempted for {scheme.describe()}: only dynamic int8 has quantized fused ops (QAttention); "
                "MatMulNBits and static QDQ would leave the packed attention weights float")
    if scheme.keep_float:
        return "not attempted with keep_float layers: the fused attention packs query, key and value in one weight"
    return None


def _fused_graph(loaded: LoadedModel, example: tuple, lengths: Lengths, embed: bool, path: Path) -> tuple:
    """(model bytes or None, manifest entry, initializer → layer name) of the fused TorchScript export."""
    import onnx
    import torch

    entry = {"applied": False, "exporter": "torch.onnx TorchScript (dynamo=False), opset 17",
             "optimizer": "onnxruntime.transformers.optimizer (model_type bert, opt_level 0, raw attention mask)"}
    axes = ({n: {lengths.axis: "seq"} for n in loaded.input_names if n in lengths.inputs}
            if lengths.mode is LengthMode.DYNAMIC else None)
    try:
        with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()), _quiet_warnings():
            torch.onnx.export(loaded.module, example, str(path), input_names=list(loaded.input_names),
                              output_names=list(loaded.output_names), dynamo=False, opset_version=17,
                              do_constant_folding=True, dynamic_axes=axes)
        unfused = onnx.load(str(path))
        names = _layer_names(unfused)
        model = _optimize_bert(path, loaded.config, embed)
    except Exception as e:  # the unfused dynamo graph stays: fusion is an optimization, not a requirement
        return None, {**entry, "reason": f"fusion failed: {_first_line(e)}"}, None
    finally:
        path.unlink(missing_ok=True)
    ops = dict(sorted(collections.Counter(n.op_type for n in model.graph.node if n.domain == "com.microsoft").items()))
    if not ops:
        return None, {**entry, "reason": "no fusion matched the graph", "ops": {}}, None
    names.update(_packed_qkv_names(model, unfused, names))
    return model.SerializeToString(), {**entry, "applied": True, "ops": ops}, names


def _optimize_bert(path: Path, config, embed: bool):
    import onnx
    from onnxruntime.transformers.fusion_options import AttentionMaskFormat, FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    options = FusionOptions("bert")
    options.enable_embed_layer_norm = embed
    # the 2-D 0/1 mask as the model reads it (a mask index would assume right padding)
    options.attention_mask_format = AttentionMaskFormat.AttentionMask
    heads = int(getattr(config, "num_attention_heads", None) or getattr(config, "n_heads", 0) or 0)
    hidden = int(getattr(config, "hidden_size", None) or getattr(config, "dim", 0) or 0)
    with contextlib.redirect_stdout(io.StringIO()), _quiet_warnings():
        optimized = optimize_model(str(path), model_type="bert", num_heads=heads, hidden_size=hidden, opt_level=0,
                                   optimization_options=options)
        optimized.save_model_to_file(str(path))  # declares the com.microsoft opset of the fused ops
    return onnx.load(str(path))


@contextlib.contextmanager
def _quiet_warnings():
    """The TorchScript exporter warns (deprecation, tracer) and the optimizer logs progress at warning level."""
    import logging
    import warnings

    logger = logging.getLogger("onnxruntime.transformers")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _layer_names(model) -> dict[str, str]:
    """Initializer → layer name of the TorchScript graph's MatMul/Gemm weights, from the node names
    (``/model/encoder/layer.0/intermediate/dense/MatMul`` → ``model.encoder.layer.0.intermediate.dense``)."""
    inits = {i.name for i in model.graph.initializer}
    names = {}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in inits:
            scope = node.name.strip("/").rsplit("/", 1)[0]
            if scope and scope != node.name.strip("/"):
                names[node.input[1]] = scope.replace("/", ".")
    return names


def _packed_qkv_names(fused, unfused, names: dict[str, str]) -> dict[str, str]:
    """The packed QKV weight of each fused Attention → its three layers (``<query> + <key> + <value>``, as
    coverage counts them), found by comparing its column blocks with the unfused graph's weights."""
    import numpy as np
    from onnx import numpy_helper

    by_shape: dict[tuple, list] = {}  # each candidate weight decoded once
    for init in unfused.graph.initializer:
        if init.name in names:
            by_shape.setdefault(tuple(init.dims), []).append((init.name, numpy_helper.to_array(init)))
    inits = {i.name: i for i in fused.graph.initializer}
    out = {}
    for node in fused.graph.node:
        if node.op_type != "Attention" or node.input[1] not in inits:
            continue
        packed = numpy_helper.to_array(inits[node.input[1]])
        parts = []
        for block in np.split(packed, 3, axis=1):
            match = next((names[n] for n, array in by_shape.get(block.shape, []) if np.array_equal(array, block)),
                         None)
            parts.append(match)
        if all(parts):
            out[node.input[1]] = PACKED_SEPARATOR.join(parts)
    return out


def _to_fp16(src: Path, dst: Path) -> None:
    import onnx
    from onnxruntime.transformers.float16 import (
        DEFAULT_OP_BLOCK_LIST,
        convert_float_to_float16,
    )

    try:
        model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True,
                                         op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP16_KEEP_FP32))
    except Exception as e:
        raise ExportError(f"onnx: fp16 conversion failed: {_first_line(e)}") from e
    _drop_duplicate_nodes(model)
    onnx.save(model, str(dst))


def _drop_duplicate_nodes(model) -> None:
    """Remove exact repeats of a node (same op, inputs, outputs, attributes).

    The fp16 converter inserts one Cast per (initializer, kept-fp32 consumer) under one name, so an
    initializer the exporter shares between LayerNorms (equal weights, e.g. a fresh model's ones) gets the
    same Cast several times, and onnxruntime refuses a graph with repeated node names.
    """
    seen, repeats = set(), []
    for node in model.graph.node:
        key = (node.op_type, node.domain, tuple(node.input), tuple(node.output),
               tuple(a.SerializeToString() for a in node.attribute))
        if key in seen:
            repeats.append(node)
        seen.add(key)
    for node in repeats:
        model.graph.node.remove(node)


def _optimize_offline(src: Path, dst: Path, feeds: list[dict]) -> dict:
    """Save the ORT_ENABLE_EXTENDED-optimized graph as the artifact when it is portable and matches.

    Not ORT_ENABLE_ALL: that level writes layouts for this CPU (NCHWc). A graph is not portable when the
    CPU provider inserted fp32 casts for kernels it lacks (fp16; other CPUs have those kernels), when it
    uses a provider-internal domain, or when constant folding grew the file (dequantized weights).
    """
    import onnx
    import onnxruntime as ort

    tmp = dst.with_suffix(".extended.onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(tmp)
    opts.log_severity_level = 3
    try:
        ort.InferenceSession(str(src), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # a graph onnxruntime cannot load is a broken artifact, whatever the cause
        raise ExportError(f"onnx: onnxruntime cannot load the built model: {_first_line(e)}") from e
    before, after = onnx.load(str(src)), onnx.load(str(tmp))
    reason = _not_portable(before, after, src.stat().st_size, tmp.stat().st_size)
    result = {"level": "extended", "applied": False}
    if reason is None:
        parity = _parity(src, tmp, feeds)
        result.update(max_abs_err=parity.max_abs_err, min_cosine=parity.min_cosine)
        if not parity.ok:
            reason = f"the optimized graph differs ({parity.describe()})"
    if reason is None:
        tmp.replace(dst)
        src.unlink()
        result["applied"] = True
    else:
        tmp.unlink(missing_ok=True)
        src.replace(dst)
        result.update(level="none", reason=reason)
    return result


def _not_portable(before, after, size_before: int, size_after: int) -> str | None:
    casts = [sum(n.op_type == "Cast" for n in m.graph.node) for m in (before, after)]
    if casts[1] > casts[0]:
        return f"the CPU provider inserted {casts[1] - casts[0]} fp32 casts for kernels it lacks (CPU-specific)"
    domains = {n.domain for n in after.graph.node} - _PORTABLE_DOMAINS
    if domains:
        return f"uses provider-internal op domains {sorted(domains)}"
    if size_after > size_before * 1.02:
        return f"constant folding grew the file from {size_before} to {size_after} bytes"
    return None


def _to_ort_format(model_path: Path, feeds: list[dict]) -> tuple[tuple[Path, ...], dict]:
    """model.ort and model.required_operators.config beside ``model_path``, checked against it."""
    from onnxruntime.tools.convert_onnx_models_to_ort import (
        OptimizationStyle,
        convert_onnx_models_to_ort,
    )

    out_dir = model_path.parent / "ort-format"
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the tool prints its progress
            convert_onnx_models_to_ort(model_path, output_dir=out_dir, optimization_styles=[OptimizationStyle.Fixed])
    except Exception as e:
        raise ExportError(f"onnx: ORT format conversion failed: {_first_line(e)}") from e
    ort_path = model_path.with_suffix(".ort")
    config_path = model_path.parent / f"{model_path.stem}.required_operators.config"
    (out_dir / ort_path.name).replace(ort_path)
    (out_dir / config_path.name).replace(config_path)
    # The tool's comment names the absolute build folder: keep the file name only, so bundles are reproducible.
    config_path.write_text(config_path.read_text().replace(str(model_path.parent) + "/", "").replace(
        str(out_dir) + "/", "").replace(str(out_dir), "").replace(str(model_path.parent), ""))
    for leftover in out_dir.iterdir():
        leftover.unlink()
    out_dir.rmdir()
    parity = _parity(model_path, ort_path, feeds)
    if not parity.ok:
        raise ExportError(f"onnx: model.ort does not reproduce model.onnx ({parity.describe()})")
    operators = [line for line in config_path.read_text().splitlines() if line and not line.startswith("#")]
    return (ort_path, config_path), {
        "file": ort_path.name, "required_operators": config_path.name, "operator_sets": operators,
        "optimization": "onnxruntime tool default: level all except NchwcTransformer, CPU execution provider",
        "max_abs_err": parity.max_abs_err, "min_cosine": parity.min_cosine}


@dataclass(frozen=True)
class _Parity:
    max_abs_err: float
    min_cosine: float
    magnitude: float  # largest reference output magnitude

    @property
    def ok(self) -> bool:
        limit = _PARITY_MAX_ABS_ERR * max(1.0, self.magnitude)
        return self.min_cosine >= _PARITY_MIN_COSINE and self.max_abs_err <= limit

    def describe(self) -> str:
        return f"max abs err {self.max_abs_err:.3g}, min cosine {self.min_cosine:.6f}"


def _parity(a: Path, b: Path, feeds: list[dict]) -> _Parity:
    """How closely every output of ``b`` matches ``a`` on ``feeds``."""
    import numpy as np

    sa, sb = _session(a), _session(b)
    err, cos, mag = 0.0, 1.0, 0.0
    for feed in feeds:
        for x, y in zip(sa.run(None, feed), sb.run(None, feed)):
            x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
            if not np.isfinite(y).all():
                return _Parity(float("inf"), -1.0, mag)
            err, mag = max(err, float(np.abs(x - y).max())), max(mag, float(np.abs(x).max()))
            denom = float(np.linalg.norm(x) * np.linalg.norm(y))
            cos = min(cos, float(x @ y / denom) if denom > 0 else float(np.array_equal(x, y)))
    return _Parity(err, cos, mag)


def _session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _feeds(model_path: Path, input_names: tuple[str, ...], samples: list[tuple]) -> list[dict]:
    """Samples (tensors in ``input_names`` order) as feeds of the graph's inputs; the exporter may drop unused ones."""
    import onnx

    graph_inputs = [i.name for i in onnx.load(str(model_path), load_external_data=False).graph.input]
    feeds = []
    for sample in samples:
        arrays = dict(zip(input_names, (t.numpy() if hasattr(t, "numpy") else t for t in sample)))
        feeds.append({name: arrays[name] for name in graph_inputs if name in arrays})
    return feeds


def _feed(specs: tuple[TensorSpec, ...], session_inputs: list[str], sample: tuple) -> dict:
    by_name = dict(zip((s.name for s in specs), sample))
    return {name: by_name[name] for name in session_inputs}


def _op_counts(path: Path) -> dict[str, int]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    return dict(sorted(collections.Counter(n.op_type for n in graph.node).items()))


def _io_specs(path: Path) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def spec(v) -> TensorSpec:
        t = v.type.tensor_type
        shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
        return TensorSpec(v.name, _NP_DTYPES.get(t.elem_type, str(t.elem_type)), shape)

    return tuple(spec(i) for i in graph.input), tuple(spec(o) for o in graph.output)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


register(OnnxPackager())
