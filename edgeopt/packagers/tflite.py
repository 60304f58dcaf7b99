"""LiteRT packager: litert-torch → model.tflite (fp32), then ai-edge-quantizer 0.10 for the other precisions.

What each precision builds. Numbers: all-MiniLM-L6-v2, seq 128, mean cosine of sentence_embedding vs
fp32 eager over 16 eval samples; latency is the best of 60 runs at 2 threads on a shared 2-core AVX2 host.

- fp32: the converter's output (89.9 MB, 43 ms, peak RSS 125 MB: the file is mapped, not copied).
- fp16: weights stored fp16 (ai-edge-quantizer FLOAT_CASTING: a DEQUANTIZE per weight). XNNPACK unpacks
  them to fp32 at load and computes fp32 (45.3 MB, cosine 1.0000, 43 ms; peak RSS 199 MB: small file,
  more RAM than fp32).
- int8, dynamic activations (the default): int8 per-channel symmetric weights on FULLY_CONNECTED /
  BATCH_MATMUL / CONV_2D / DEPTHWISE_CONV_2D, activations quantized per run by the kernels; embedding
  tables (EMBEDDING_LOOKUP) int8 per row (23.5 MB, cosine 0.9979, 37 ms, peak RSS 64 MB).
- int8, float activations: weight-only int8; XNNPACK takes the DEQUANTIZEs and computes fp32, the
  embedding tables are unpacked to fp32 at load (23.5 MB, cosine 0.9994, 42 ms, peak RSS 205 MB).
- int8, static activations: calibrated int8 activations around the weighted ops only (23.8 MB, cosine
  0.953; with the six FFN down-projections kept float 34.4 MB, 0.995). static_wi8_ai8 on every op, the
  full-integer graph, measured cosine 0.68.
- int4: int4 weights in blocks of ``group_size`` with dynamic int8 activations, embeddings int8 (18.6 MB,
  cosine 0.961, 64 ms: the blockwise kernels are slow on AVX2 without VNNI). Per channel: 18.2 MB, 0.915,
  32 ms. Weight-only int4 exists per channel only in ai-edge-quantizer 0.10's policy and leaves every
  FULLY_CONNECTED outside XNNPACK, dequantizing each run (0.917, 114 ms).

Module ↔ op mapping. litert-torch names tensors after the module path that produced them
(``…/torch.nn.modules.linear.Linear_query;1``), but a folded constant carries every location it came from
joined by ';' (the query weight also names the LayerNorm whose gamma the converter folded into it), so
names are hints, not keys. Weights are matched by content instead: each constant weight operand in the
fp32 model is compared with every Linear / Conv1D / Conv2d / Embedding weight of the module in TFLite
layout — bit-equal, or equal up to a per-row or per-column scale (the converter folds LayerNorm gamma
into the next linear's input columns and BatchNorm into a conv's output rows). The matched op's *scope*
(its output tensor names joined by ';' plus ';', what ai-edge-quantizer matches recipe regexes against)
then selects exactly that op in the recipe (``keep_float`` → NO_QUANTIZE) and finds it again in the
quantized model, where the stored dtype of its weight (through a DEQUANTIZE for weight-only) is read from
the flatbuffer for the coverage gate. Embedding rows looked up at fixed indices (BERT's position ids)
are folded by the converter into a constant addend; they are found by content and reported as such.

Lengths. A text encoder (``edgeopt.lengths``) is converted once per length bucket (``_plan_buckets``: 32 and
128 for seq_len 128, two of ``buckets_for`` because each signature repeats the weights' quantization
parameters) into one .tflite with a signature per bucket (``seq_32``, ``seq_128``), all reading the same
weight buffers; the quantizer, the coverage gate (every subgraph) and ``run`` (the smallest bucket that holds
the real length) see them all. Any other model keeps one ``serving_default`` signature at the example's shapes.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from edgeopt.errors import ExportError, MissingDependencyError, UnsupportedError, export_failure
from edgeopt.formats import Format, Precision, Runtime
from edgeopt.lengths import LengthMode, Lengths, at_length, plan_lengths, run_fitted
from edgeopt.packagers import Artifact, Capabilities, TensorSpec, register
from edgeopt.packagers.tflite_weights import (
    LINEAR_OPS,
    WeightMap,
    match_weights,
    stored_weight_types,
    weight_coverage,
)
from edgeopt.quantize import Activations, Granularity, QuantScheme

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

    from edgeopt.models import LoadedModel

SIGNATURE = "serving_default"
# Weighted TFLite ops → index of their weight operand.
_BLOCK_SIZES = (32, 64, 128, 256)  # ai-edge-quantizer's BLOCKWISE_N granularities


class TflitePackager:
    runtime = Runtime.LITERT
    capabilities = Capabilities(
        precisions=frozenset({Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4}),
        activations=frozenset({Activations.FLOAT, Activations.DYNAMIC, Activations.STATIC}),
        notes={},
    )

    def check_available(self) -> None:
        import importlib.util

        # find_spec, not import: importing litert-torch takes ~15 s (it pulls in torchao and the MLIR stack).
        for module, pkg in (("litert_torch", "litert-torch"), ("ai_edge_quantizer", "ai-edge-quantizer"),
                            ("ai_edge_litert", "ai-edge-litert")):
            if importlib.util.find_spec(module) is None:
                raise MissingDependencyError(module, "litert", pkg)

    def toolchain_versions(self) -> dict[str, str]:
        from importlib.metadata import version

        import torch

        out = {"torch": torch.__version__}
        for pkg in ("litert-torch", "ai-edge-quantizer", "ai-edge-litert"):
            out[pkg] = version(pkg)
        return out

    def export(self, loaded: LoadedModel, scheme: QuantScheme, work_dir: Path, *, shapes: tuple[int, int],
               calibration: list[tuple]) -> Artifact:
        """Convert, quantize per ``scheme``, check coverage and delegation; see the module docstring.

        Raises:
            UnsupportedError: a scheme ai-edge-quantizer / LiteRT cannot build (the reason says why).
            ExportError: the converter or quantizer failed, or weights stayed float that should not have.
        """
        _check_scheme(scheme, calibration)
        start = time.perf_counter()
        work_dir.mkdir(parents=True, exist_ok=True)
        fp32_path = work_dir / "model.fp32.tflite"
        lengths = _plan_buckets(loaded, shapes[1])
        _convert_named(loaded, _examples(loaded, shapes, lengths), fp32_path)
        weights = match_weights(fp32_path, loaded.module)
        path = work_dir / "model.tflite"
        if scheme.precision is Precision.FP32:
            fp32_path.replace(path)
        else:
            static = scheme.activations is Activations.STATIC
            feeds = _calibration_feeds(fp32_path, loaded.input_names, calibration, lengths) if static else {}
            _quantize(fp32_path, path, scheme, weights, feeds)
            fp32_path.unlink()
        stored = stored_weight_types(path, weights.ops)
        coverage = weight_coverage(scheme, weights, stored, stored_weight_types(path, weights.unmapped))
        details = {
            "weights": dict(Counter(stored.values())),
            "delegation": delegation(path),
            "not_in_graph": sorted(weights.absent),
        }
        if weights.unmapped:
            details["unmapped_weight_ops"] = sorted(w.module for w in weights.unmapped)
        if lengths.variable:
            details["signatures"] = [lengths.signatures[b] for b in lengths.buckets]
        # The largest signature's I/O (every bucket's, at most): shapes at seq_len.
        inputs, outputs = _io_specs(path, loaded.input_names, loaded.output_names, _signature_keys(lengths)[-1])
        return Artifact(path=path, format=Format.TFLITE, precision=scheme.precision, scheme=scheme, inputs=inputs,
                        outputs=outputs, coverage=coverage, details=details,
                        build_seconds=time.perf_counter() - start, lengths=lengths)

    def run(self, artifact: Artifact, samples: list[tuple[np.ndarray, ...]]) -> list[list[np.ndarray]]:
        import numpy as np
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(artifact.path), num_threads=min(4, os.cpu_count() or 1))
        lengths = artifact.lengths
        runners: dict[str, object] = {}

        def run_one(sample: tuple, length: int) -> list:
            key = lengths.signatures[length] if lengths is not None and lengths.variable else SIGNATURE
            if key not in runners:
                runners[key] = interpreter.get_signature_runner(key)
            feeds = {spec.name: np.asarray(x).astype(spec.dtype, copy=False) for spec, x in zip(artifact.inputs, sample)}
            out = runners[key](**feeds)
            return [np.array(out[spec.name]) for spec in artifact.outputs]

        if lengths is None or not lengths.variable:
            return [run_one(sample, 0) for sample in samples]
        ins, outs = tuple(s.name for s in artifact.inputs), tuple(s.name for s in artifact.outputs)
        return [run_fitted(run_one, sample, ins, outs, lengths) for sample in samples]


# --- scheme → recipe ---------------------------------------------------------------------------


def _check_scheme(scheme: QuantScheme, calibration: list[tuple]) -> None:
    """Refuse, before any work, what ai-edge-quantizer 0.10 and the LiteRT kernels cannot build."""
    p, act = scheme.precision, scheme.activations
    if not scheme.is_quantized:
        if act is not Activations.FLOAT:
            raise UnsupportedError(f"tflite: {p.value} takes float activations, got {act.value} "
                                   "(dynamic/static activations are int8 or int4 schemes)")
        return
    if not scheme.symmetric:
        raise UnsupportedError("tflite: LiteRT's integer kernels take symmetric weights only (zero point 0); "
                               "use symmetric=True")
    if scheme.granularity is Granularity.PER_GROUP:
        if p is Precision.INT8:
            raise UnsupportedError("tflite: int8 weights per group are not in ai-edge-quantizer 0.10's policy; "
                                   "use per_channel (int8) or int4 per group")
        if act is not Activations.DYNAMIC:
            raise UnsupportedError(f"tflite: int4 per-group weights need dynamic int8 activations in "
                                   f"ai-edge-quantizer 0.10 (got {act.value}); use dynamic, or per_channel")
        if scheme.group_size not in _BLOCK_SIZES:
            raise UnsupportedError(f"tflite: group_size {scheme.group_size} is not one of ai-edge-quantizer's "
                                   f"block sizes {', '.join(map(str, _BLOCK_SIZES))}")
    if p is Precision.INT4 and act is Activations.STATIC:
        raise UnsupportedError("tflite: static int4 is not built; use int4 with dynamic activations")
    if act is Activations.STATIC and not calibration:
        raise UnsupportedError("tflite: static int8 needs calibration samples, none were given")


def _granularity(scheme: QuantScheme):
    from ai_edge_quantizer import qtyping

    g = qtyping.QuantGranularity
    if scheme.granularity is Granularity.PER_GROUP:
        return getattr(g, f"BLOCKWISE_{scheme.group_size}")
    return g.TENSORWISE if scheme.granularity is Granularity.PER_TENSOR else g.CHANNELWISE


def _supported_ops(scheme: QuantScheme) -> dict[str, str]:
    """op → how ai-edge-quantizer 0.10 quantizes it for ``scheme`` (its default policy's op lists).

    Values: ``linear`` (the scheme's bits, granularity and activations) or ``table`` (int8 per row, for
    embedding lookups: int4 rows cost too much accuracy for their share of the bytes).
    """
    p, act = scheme.precision, scheme.activations
    if p is Precision.FP16:
        return dict.fromkeys(("FULLY_CONNECTED", "CONV_2D", "DEPTHWISE_CONV_2D", "EMBEDDING_LOOKUP"), "linear")
    if p is Precision.INT8:
        ops = dict.fromkeys(LINEAR_OPS, "linear")
    elif act is Activations.FLOAT:
        ops = dict.fromkeys(("FULLY_CONNECTED", "BATCH_MATMUL", "CONV_2D"), "linear")
    elif scheme.granularity is Granularity.PER_GROUP:
        ops = {"FULLY_CONNECTED": "linear"}
    else:
        ops = dict.fromkeys(("FULLY_CONNECTED", "CONV_2D"), "linear")
    if scheme.quantize_embeddings:
        ops["EMBEDDING_LOOKUP"] = "table"
    return ops


def _check_supported(scheme: QuantScheme, weights: WeightMap) -> None:
    """UnsupportedError, before quantizing, for weights the scheme cannot reach in this model."""
    if scheme.precision is Precision.FP32:
        return
    supported, keep = _supported_ops(scheme), set(scheme.keep_float)
    embeddings_float = scheme.is_quantized and not scheme.quantize_embeddings
    missed = sorted(f"{w.module} ({w.op})" for w in weights.ops if w.module not in keep and w.op not in supported
                    and not (w.kind == "embedding" and embeddings_float))
    if missed:
        raise UnsupportedError(f"tflite: {scheme.describe()} covers {', '.join(supported)} only in "
                               f"ai-edge-quantizer 0.10; these would stay float: {', '.join(missed[:6])} "
                               "(keep them float on purpose with keep_float, or choose another precision)")
    if scheme.granularity is Granularity.PER_GROUP and scheme.precision is Precision.INT4:
        ragged = sorted(f"{w.module} (in {w.shape[-1]})" for w in weights.ops
                        if w.module not in keep and w.op == "FULLY_CONNECTED" and w.shape[-1] % scheme.group_size)
        if ragged:
            raise UnsupportedError(f"tflite: int4 groups of {scheme.group_size} need each linear's input size to be "
                                   f"a multiple of {scheme.group_size}: {', '.join(ragged[:6])} (use per_channel "
                                   "int4, a smaller group, or keep_float for them)")


def _add_configs(quantizer, scheme: QuantScheme, ops: set[str]) -> None:
    """The scheme as ai-edge-quantizer configs (regex ``.*``) on the op kinds present in the model."""
    from ai_edge_quantizer import qtyping
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    names = qtyping.TFLOperationName
    for op, role in _supported_ops(scheme).items():
        if op not in ops:
            continue
        if scheme.precision is Precision.FP16:
            quantizer.add_weight_only_config(".*", names[op], 16, algorithm_key=AlgorithmName.FLOAT_CASTING)
        elif role == "table" and scheme.activations is Activations.FLOAT:
            quantizer.add_weight_only_config(".*", names[op], 8)
        elif role == "table":
            quantizer.add_dynamic_config(".*", names[op], 8)
        elif scheme.activations is Activations.DYNAMIC:
            quantizer.add_dynamic_config(".*", names[op], scheme.precision.weight_bits, _granularity(scheme))
        elif scheme.activations is Activations.STATIC:
            # Static on the weighted ops only: the same recipe on every op (full integer) measured cosine 0.68.
            quantizer.add_static_config(".*", names[op], 8, scheme.precision.weight_bits, _granularity(scheme))
        else:
            quantizer.add_weight_only_config(".*", names[op], scheme.precision.weight_bits, _granularity(scheme))


def _quantize(src: Path, dst: Path, scheme: QuantScheme, weights: WeightMap, calibration: dict[str, list]) -> None:
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    unknown = sorted(set(scheme.keep_float) - weights.modules() - set(weights.absent) - set(weights.folded))
    if unknown:
        raise UnsupportedError(f"tflite: keep_float names modules this model does not have: {', '.join(unknown)} "
                               f"(weighted modules: {', '.join(sorted(weights.modules())[:6])}, ...)")
    _check_supported(scheme, weights)
    dst.unlink(missing_ok=True)
    try:
        q = quantizer.Quantizer(str(src))
        _add_configs(q, scheme, {w.op for w in weights.ops})
        keep = set(scheme.keep_float)
        for w in weights.ops:
            if w.module in keep:  # added last: later configs win in ai-edge-quantizer
                q.update_quantization_recipe(f"^{re.escape(w.scope)}$", qtyping.TFLOperationName[w.op],
                                             algorithm_key=AlgorithmName.NO_QUANTIZE)
        # Its tqdm bars (one cannot be switched off through the API) would land in the CLI's output.
        with contextlib.redirect_stderr(io.StringIO()):
            result = None
            if q.need_calibration:
                result = q.calibrate(calibration, num_threads=os.cpu_count() or 1)
            quantized = q.quantize(result, enable_progress_bar=False, enable_progress_report=False)
        quantized.export_model(str(dst), overwrite=True)
    except (ValueError, RuntimeError, KeyError) as e:
        raise ExportError(f"tflite: ai-edge-quantizer failed for {scheme.describe()}: {_first_line(e)}") from e


def _calibration_feeds(path: Path, names: tuple[str, ...], calibration: list[tuple],
                       lengths: Lengths) -> dict[str, list[dict]]:
    """signature → calibration samples as its feeds, cast to the model's input types (int64 ids → int32); each
    bucket's signature gets every sample cut or padded to its length (its own activation ranges)."""
    import numpy as np

    out = {}
    for key, n in zip(_signature_keys(lengths), lengths.buckets or (None,)):
        specs = _signature_details(path, key)[0]
        samples = [at_length(s, names, lengths, n) for s in calibration] if n is not None else calibration
        out[key] = [{name: np.asarray(x).astype(specs[name]["dtype"]) for name, x in zip(names, sample)}
                    for sample in samples]
    return out


def _signature_keys(lengths: Lengths) -> list[str]:
    """The signatures the artifact has: one per bucket (shortest first), or the one ``serving_default``."""
    return [lengths.signatures[b] for b in lengths.buckets] if lengths.variable else [SIGNATURE]


def _plan_buckets(loaded: LoadedModel, seq_len: int) -> Lengths:
    """A text encoder's TFLite buckets: the largest of ``buckets_for(seq_len)`` up to a quarter of seq_len, and
    seq_len (32 and 128 for 128; 16 and 32 for 32). Static for anything else.

    Two, not every power of two: the signatures share the weight buffers, but each repeats its tensor table
    with the per-channel scales and zero points of every weight. all-MiniLM-L6-v2 int8, seq 128: 23,503,008
    bytes with one signature, 26,198,288 with 16/32/64/128 (+0.9 MB a signature, 0.6 MB of it quantization
    parameters), past the 24.5 MB target; 32/128 stays under it.
    """
    lengths = plan_lengths(loaded, seq_len, LengthMode.BUCKETS)
    if not lengths.variable:
        return lengths
    short = [b for b in lengths.buckets[:-1] if b <= max(seq_len // 4, lengths.buckets[0])]
    keep = (*short[-1:], seq_len)
    return replace(lengths, buckets=keep, signatures={b: lengths.signatures[b] for b in keep})


def _examples(loaded: LoadedModel, shapes: tuple[int, int], lengths: Lengths) -> dict[str, tuple]:
    """signature → the example inputs it is traced at: each bucket's length, or the profile's shapes."""
    if not lengths.variable:
        return {SIGNATURE: loaded.example_inputs(*shapes)}
    return {lengths.signatures[b]: loaded.example_inputs(shapes[0], b) for b in lengths.buckets}


# --- conversion --------------------------------------------------------------------------------


# The last conversion, by content: the pipeline rebuilds the same model with other keep_float sets, and a
# litert-torch conversion takes 20-40 s where hashing the weights takes well under one.
_LAST_CONVERSION: dict[str, bytes] = {}
_CACHE_MAX_BYTES = 512 * 1024 * 1024


def _convert_named(loaded: LoadedModel, examples: dict[str, tuple], path: Path) -> None:
    """The fp32 .tflite of ``loaded`` with one signature per entry of ``examples`` (name → example inputs,
    traced at their shapes), signature I/O named after the model's, written to ``path``."""
    key = _conversion_key(loaded, examples)
    if key in _LAST_CONVERSION:
        path.write_bytes(_LAST_CONVERSION[key])
        return
    _convert(loaded, examples, path)
    for name in examples:
        _name_signature(path, loaded.input_names, loaded.output_names, name)
    _LAST_CONVERSION.clear()
    if path.stat().st_size <= _CACHE_MAX_BYTES:
        _LAST_CONVERSION[key] = path.read_bytes()


def _conversion_key(loaded: LoadedModel, examples: dict[str, tuple]) -> str:
    """A hash of everything the conversion depends on: module class, weights, buffers, I/O names, examples."""
    import numpy as np
    import torch

    h = hashlib.sha256(type(loaded.module).__qualname__.encode())
    h.update(repr((loaded.input_names, loaded.output_names)).encode())
    tensors = sorted(loaded.module.state_dict().items()) + [
        (f"example.{sig}.{i}", t) for sig, example in examples.items() for i, t in enumerate(example)]
    for name, t in tensors:
        t = t.detach().cpu()
        arr = np.ascontiguousarray((t.view(torch.int16) if t.dtype == torch.bfloat16 else t).numpy())
        h.update(f"{name}:{arr.dtype}:{arr.shape}".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _convert(loaded: LoadedModel, examples: dict[str, tuple], path: Path) -> None:
    """One litert-torch conversion with a signature per example; the signatures share the weight buffers."""
    import torch
    from litert_torch._convert.interface import Converter

    try:
        with torch.no_grad(), _quiet_progress():
            converter = Converter()
            for name, example in examples.items():
                converter.add_signature(name, _without_broadcast_reshapes(loaded.module, tuple(example)),
                                        tuple(example))
            converter.convert().export(str(path))
    except Exception as e:  # any converter failure becomes an ExportError naming the format
        raise export_failure("tflite", "litert-torch conversion", e) from e


def _without_broadcast_reshapes(module: torch.nn.Module, example: tuple) -> torch.nn.Module:
    """``module``, or its exported graph with every expand-then-reshape written as a concatenation.

    Works around a LiteRT converter bug (litert-torch 0.10, its TFL passes, not the stablehlo lowering):
    ``unsqueeze → expand → reshape → transpose`` from a tensor whose leading dims are all 1 — transformers'
    ``repeat_kv`` of a Llama/Qwen2 with ONE key/value head, then ``key.transpose(-1, -2)`` in attention —
    becomes RESHAPE + BROADCAST_TO, the transpose lost: the keys are scrambled (a tiny Llama's logits off by
    ~3e-3; in isolation the op is off by more than its own magnitude). Not XNNPACK (the reference kernels
    agree), not fp16. With two key/value heads the same code converts exactly. ``cat`` of the copies is the
    same tensor an expand followed by a reshape materializes, and converts exactly (to 1e-7). Graphs
    without the pattern convert from the module itself, as before; finding out costs one torch.export
    (~3 s for MiniLM here, next to 20-40 s of conversion). Reproduce the bug without edgeopt:
    ``litert_torch.convert(m, (k,))`` of ``m(k) = repeat_kv(k, 4).transpose(-1, -2)``, k of shape (1, 1, 32, 8).
    """
    import torch

    aten = torch.ops.aten
    reshapes = (aten.view.default, aten._unsafe_view.default, aten.reshape.default)
    exported = torch.export.export(module, example)
    gm = exported.module()
    graph, rewritten = gm.graph, 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != aten.expand.default or not node.users:
            continue
        if not all(u.op == "call_function" and u.target in reshapes for u in node.users):
            continue
        src = node.args[0]
        before, after = tuple(src.meta["val"].shape), tuple(node.meta["val"].shape)
        if len(before) != len(after):
            continue
        x = src
        with graph.inserting_before(node):
            for dim, (a, b) in enumerate(zip(before, after)):
                if a == 1 and b != 1:
                    x = graph.call_function(aten.cat.default, ([x] * int(b), dim))
        node.replace_all_uses_with(x)
        graph.erase_node(node)
        rewritten += 1
    if not rewritten:
        return module
    graph.lint()
    gm.recompile()
    return gm


@contextlib.contextmanager
def _quiet_progress() -> Iterator[None]:
    """litert-torch prints a progress tree on stdout unless this variable says no; restore it afterwards."""
    key = "LITERT_TORCH_SHOW_PROGRESS"
    before = os.environ.get(key)
    os.environ[key] = "n"
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _name_signature(path: Path, input_names: tuple[str, ...], output_names: tuple[str, ...],
                    signature: str = SIGNATURE) -> None:
    """Rename the signature's ``args_N`` / ``output_N`` to the model's input and output names.

    litert-torch numbers them by position (checked against the eager module in the tests); named I/O
    lets the host, the device runner and an app bind tensors by name instead of by order.
    """
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model(str(path))
    sig = next((s for s in model.signatureDefs if s.signatureKey.decode() == signature), None)
    if sig is None:
        raise ExportError(f"tflite: the converted model has no '{signature}' signature")
    for entries, names, prefix in ((sig.inputs, input_names, "args_"), (sig.outputs, output_names, "output_")):
        positions = {e.name.decode(): e for e in entries}
        if sorted(positions) != sorted(f"{prefix}{i}" for i in range(len(names))):
            raise ExportError(f"tflite: signature {sorted(positions)} does not match {list(names)}")
        for i, name in enumerate(names):
            positions[f"{prefix}{i}"].name = name.encode()
    fbu.write_model(model, str(path))


# --- delegation and I/O --------------------------------------------------------------------------


def delegation(path: Path) -> dict:
    """How much of the graph the default XNNPACK delegate takes, and which ops it leaves to the TFLite kernels.

    The interpreter lists the original nodes plus one DELEGATE node per partition. The nodes a
    partition replaced are found by walking back from its outputs to its inputs.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    interpreter.allocate_tensors()
    ops = interpreter._get_ops_details()  # private, but the only view of the nodes a delegate replaced
    producer = {int(t): o["index"] for o in ops if o["op_name"] != "DELEGATE" for t in o["outputs"]}
    partitions = [o for o in ops if o["op_name"] == "DELEGATE"]
    taken: set[int] = set()
    for part in partitions:
        boundary = {int(t) for t in part["inputs"]}
        stack = [int(t) for t in part["outputs"]]
        while stack:
            t = stack.pop()
            node = producer.get(t)
            if t in boundary or node is None or node in taken:
                continue
            taken.add(node)
            stack.extend(int(x) for x in ops[node]["inputs"] if x >= 0)
    original = [o for o in ops if o["op_name"] != "DELEGATE"]
    rest = Counter(o["op_name"] for o in original if o["index"] not in taken)
    return {"delegate": "XNNPACK", "delegated_ops": len(taken), "total_ops": len(original),
            "share": round(len(taken) / max(1, len(original)), 4), "partitions": len(partitions),
            "non_delegated": dict(rest.most_common())}


def _signature_details(path: Path, signature: str = SIGNATURE) -> tuple[dict, dict]:
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path)).get_signature_runner(signature)
    return runner.get_input_details(), runner.get_output_details()


def _io_specs(path: Path, input_names, output_names,
              signature: str = SIGNATURE) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    import numpy as np

    ins, outs = _signature_details(path, signature)

    def specs(details: dict, names) -> tuple[TensorSpec, ...]:
        missing = [n for n in names if n not in details]
        if missing:
            raise ExportError(f"tflite: the model's signature lacks {missing} (it has {sorted(details)})")
        return tuple(TensorSpec(n, np.dtype(details[n]["dtype"]).name, tuple(int(d) for d in details[n]["shape"]))
                     for n in names)

    return specs(ins, input_names), specs(outs, output_names)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


register(TflitePackager())
