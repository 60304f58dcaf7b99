"""Quantization for the ONNX packager: a ``QuantScheme`` mapped onto ``onnxruntime.quantization``.

What each scheme builds, measured on all-MiniLM-L6-v2 (seq 128, 16 held-out inputs, mean cosine of
sentence_embedding against eager fp32, x86 AVX2 without VNNI; embeddings int8; fp32 is 90.7 MB):

- int8, dynamic activations: SmoothQuant (alpha 0.7, from the calibration inputs), then
  ``quantize_dynamic`` with per-channel uint8 weights (U8U8 MatMulInteger): 0.9967 with symmetric
  weights, 0.9979 asymmetric, 22.7 MB. Without smoothing: 0.9901 (int8 weights) / 0.9927 (uint8).
  With int8 weights (U8S8) smoothing reaches only 0.9948: on x86 without VNNI the U8S8 kernel
  (vpmaddubsw) saturates int16 sums, which uint8 weights avoid on every CPU. Per-tensor weights 0.958,
  symmetric activations 0.989, reduce_range 0.916. Keeping the FFN down-projections weight-only int8
  (float activations) instead: 0.9953, with the FFN up-projections too 0.9979, both slower than smoothing.
- int8, static activations: SmoothQuant, then ``quantize_static`` (QDQ, per-channel, MinMax; Percentile
  and Entropy measured no better). MatMuls of two activations stay float, and a layer whose output
  quantizes badly at a fixed scale (output SQNR on the calibration inputs < 25 dB: in MiniLM the six FFN
  down-projections feeding the residual stream, 13-21 dB; every other layer >= 27 dB) gets dynamic
  activations instead: 0.9929, 22.8 MB. onnxruntime's default configuration (every op, outputs too)
  gives 0.36; MatMul and Gather only 0.93; the six layers float instead of dynamic 0.995 but 33.9 MB.
- int8 weights, float activations: MatMulNBits(bits=8), accuracy_level 0: 0.9990, 23.9 MB, slow on x86.
- int4: MatMulNBits(bits=4, block = group_size), accuracy_level 4 (int8 compute) for dynamic
  activations, 0 for float ones: 0.965, 18.6 MB. Gemm layers are rewritten to MatMul first: the
  quantizer skips Gemm silently (after onnxruntime's pre-processing 12 of MiniLM's 36 layers are Gemm).
  MatMulNBits has no Conv form: a model with Conv layers is refused for it.

A graph the ONNX packager fused (onnxruntime.transformers: Attention with one packed [hidden, 3 x hidden] QKV
weight) quantizes the same way: the Attention's input is smoothed with its packed weight and ``quantize_dynamic``
makes it QAttention (uint8 per-channel weights); coverage counts a packed weight as its three layers
(``PACKED_SEPARATOR`` in the layer name). MiniLM fused: 0.9968 on the pipeline's held-out inputs (unfused 0.9967).

Embedding tables are stored int8 by a ``quantize_dynamic`` Gather pass (per-tensor scale; costs MiniLM
<0.001 cosine). Decoder LMs in int4 (``int4_tables``) store their 2-D tables int4 instead: onnxruntime's
GatherBlockQuantized (com.microsoft), blocks of ``group_size`` along each row with float32 scales, from the
same MatMulNBitsQuantizer pass (op_types_to_quantize MatMul + Gather, quant_axes Gather: 1); a table that
is not 2-D stays int8 and ``details["embeddings"]`` says so. The coverage gate then checks every
MatMul/Gemm/Conv weight and Gather table of the float graph: a weight left float that the scheme did not ask to keep float is an ExportError, never a warning.
"""

from __future__ import annotations

import ast
import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from edgeopt.errors import ExportError, UnsupportedError
from edgeopt.formats import Precision
from edgeopt.packagers import Coverage
from edgeopt.quantize import Activations, Granularity, QuantScheme

# Measured on MiniLM (dynamic, asymmetric uint8 weights): 0.5 → 0.9920, 0.6 → 0.9972, 0.7 → 0.9979,
# 0.75 → 0.9975, 0.8 → 0.9967.
SMOOTH_ALPHA = 0.7
STATIC_MIN_OUTPUT_SQNR_DB = 25.0  # below this a layer's output is too outlier-heavy for a fixed scale
_INT_TYPES = {2, 3, 21, 22}  # onnx uint8, int8, uint4, int4
PACKED_SEPARATOR = " + "  # a WeightRef.module naming several layers: a fused Attention's packed query, key, value


@dataclass(frozen=True)
class WeightRef:
    """A weight of the float graph: its initializer, the node using it and the nn.Module it came from."""

    init: str
    node: str
    module: str
    op: str


def weight_inventory(model) -> dict[str, WeightRef]:
    """initializer name → WeightRef for every MatMul/Gemm/Conv constant weight, fused Attention's packed QKV
    weight and Gather table."""
    inits = {i.name: i for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm", "Conv", "Attention") and len(node.input) > 1 and node.input[1] in inits:
            if len(inits[node.input[1]].dims) == 2 or node.op_type == "Conv":
                name = node.input[1]
                found[name] = WeightRef(name, node.name, module_name(node) or name, node.op_type)
        elif node.op_type == "Gather" and node.input and node.input[0] in inits:
            name = node.input[0]
            found[name] = WeightRef(name, node.name, name.removesuffix(".weight"), "Gather")
    return found


def module_name(node) -> str | None:
    """The nn.Module a node came from, from the dynamo exporter's name-scope metadata."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return scopes[-2] if len(scopes) >= 2 else None
    return None


def check_scheme(scheme: QuantScheme) -> None:
    """Raise UnsupportedError for a quantized scheme this packager cannot build, with the reason."""
    if scheme.precision is Precision.INT4 and scheme.activations is Activations.STATIC:
        raise UnsupportedError("onnx: int4 with static activations has no onnxruntime kernel; use dynamic "
                               "(MatMulNBits accuracy_level 4) or float activations")
    if _uses_nbits(scheme) and scheme.granularity is not Granularity.PER_GROUP:
        raise UnsupportedError(f"onnx: {scheme.precision.value} weight-only MatMulNBits needs per-group weights, "
                               f"got {scheme.granularity.value} (set granularity=per_group, group_size=32)")
    if _uses_nbits(scheme):
        g = scheme.group_size
        if g is None or g < 16 or g > 256 or g & (g - 1):
            raise UnsupportedError(f"onnx: MatMulNBits group_size must be a power of two in 16..256, got {g}")


def quantize(src: Path, dst: Path, scheme: QuantScheme, feeds: list[dict], *,
             int4_tables: bool = False, module_names: dict[str, str] | None = None,
             isa: tuple[str, ...] = ()) -> tuple[Coverage, dict]:
    """Quantize the float model at ``src`` into ``dst`` as ``scheme`` says.

    Args:
        feeds: calibration inputs (input name → numpy array) for smoothing and static scales.
        int4_tables: in int4 schemes that quantize embeddings, store the 2-D Gather tables int4 in blocks of
            ``group_size`` along each row (GatherBlockQuantized) instead of int8 (the decoder-LM export asks
            for it; the encoder path keeps its measured int8 tables).
        module_names: initializer → layer name, where the caller knows better than the exporter's name scopes
            (a tied table is named after the lm_head); used in coverage and details.
        isa: the target device's CPU features (profile ``device.isa``): dynamic int8 stores int8 weights (U8S8
            kernels) where the device has x86 VNNI (see ``signed_weights``), uint8 (U8U8) otherwise.
    Returns:
        the coverage of the written model and a JSON-able dict of what was done, for the manifest.
    Raises:
        UnsupportedError: a scheme this format cannot build. ExportError: the quantizer failed, or the
        coverage gate found weights left float that the scheme asked to quantize.
    """
    import onnx

    check_scheme(scheme)
    model = onnx.load(str(src))
    # The exporter records initializer shapes as value_info too; once a quantizer rewrites a weight
    # (per-channel Gemm with transB) the stale entry fails its shape inference.
    inits = {i.name for i in model.graph.initializer}
    stale = [v for v in model.graph.value_info if v.name in inits]
    for v in stale:
        model.graph.value_info.remove(v)
    folded = _fold_constant_transposes(model)
    inventory = weight_inventory(model)
    if module_names:
        from dataclasses import replace

        inventory = {k: replace(r, module=module_names.get(k, r.module)) for k, r in inventory.items()}
    exclude = _keep_float_nodes(inventory, scheme) + _batched_constant_matmuls(model)
    try:
        if _uses_nbits(scheme):
            details = _nbits(model, dst, scheme, inventory, exclude, int4_tables)
        elif scheme.activations is Activations.STATIC:
            details = _int8_static(model, dst, scheme, inventory, exclude, feeds)
        else:
            details = _int8_dynamic(model, dst, scheme, exclude, feeds, signed=signed_weights(isa))
    except (UnsupportedError, ExportError):
        raise
    except Exception as e:
        first = (str(e).strip().splitlines() or [""])[0]
        raise ExportError(f"onnx: {scheme.describe()} quantization failed: {type(e).__name__}: {first}") from e
    if folded:
        details["transposed_weights_materialized"] = folded
    coverage = check_coverage(inventory, onnx.load(str(dst), load_external_data=False), scheme)
    return coverage, details


def _fold_constant_transposes(model) -> list[str]:
    """Replace ``MatMul(X, Transpose(W))`` with ``MatMul(X, W')`` (W' = W.T stored) for a 2-D initializer W.

    The exporter folds a tied lm_head's transpose of the embedding table into a constant for small tables, but
    leaves a Transpose node for large ones (SmolLM2's 49152 x 576): then the head's MatMul has no constant
    weight, no quantizer touches it, and the float table stays in the graph next to its quantized Gather copy.
    Materialized here (``W.T``, a second copy, as small tables already are), the head is quantized like any
    linear. Returns the initializers whose transpose was materialized.
    """
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.graph.output}
    folded = []
    for node in list(model.graph.node):
        if node.op_type != "Transpose" or node.input[0] not in inits or len(inits[node.input[0]].dims) != 2:
            continue
        perm = next((list(helper.get_attribute_value(a)) for a in node.attribute if a.name == "perm"), [1, 0])
        users = consumers.get(node.output[0], [])
        if perm != [1, 0] or not users or node.output[0] in outputs or any(
                u.op_type != "MatMul" or list(u.input).index(node.output[0]) != 1 for u in users):
            continue
        name = node.input[0] + ".T"  # not "<W>_...": check_coverage reads that prefix as W's quantized form
        model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(inits[node.input[0]]).T.copy(),
                                                               name))
        for u in users:
            u.input[1] = name
        model.graph.node.remove(node)
        folded.append(node.input[0])
    return folded


def check_coverage(inventory: dict[str, WeightRef], quantized_model, scheme: QuantScheme) -> Coverage:
    """Which weights ``quantized_model`` stores quantized; ExportError if one stayed float unasked.

    A weight counts as quantized when its float initializer no longer feeds any node and an integer
    initializer derived from its name (``W_quantized``, ``W_Q4``, ...) exists.
    """
    graph = quantized_model.graph
    used = {name for node in graph.node for name in node.input}
    float_used = {i.name for i in graph.initializer if i.data_type not in _INT_TYPES and i.name in used}
    int_names = [i.name for i in graph.initializer if i.data_type in _INT_TYPES]
    keep = set(scheme.keep_float)
    quantized, kept = [], {}
    for ref in sorted(inventory.values(), key=lambda r: r.module):
        modules = ref.module.split(PACKED_SEPARATOR)  # a packed weight counts as the layers it holds
        if ref.init not in float_used and any(n.startswith(ref.init + "_") for n in int_names):
            quantized.extend(modules)
        elif ref.module in keep:
            kept[ref.module] = "kept float: keep_float (sensitive layer)"
        elif ref.op == "Gather" and not scheme.quantize_embeddings:
            kept[ref.module] = "kept float: embeddings not quantized by this scheme"
        else:
            kept.update({m: f"not quantized by onnxruntime.quantization ({ref.op} node {ref.node})" for m in modules})
    coverage = Coverage(tuple(sorted(quantized)), kept)
    if coverage.unexpected():
        names = ", ".join(sorted(coverage.unexpected()))
        raise ExportError(f"onnx: {scheme.precision.value} artifact would leave {len(coverage.unexpected())} of "
                          f"{coverage.total} weights float that the scheme asked to quantize: {names}")
    return coverage


def _batched_constant_matmuls(model) -> list[str]:
    """MatMul nodes whose constant B is not a [in, out] weight but a batched (rank > 2) constant that the
    exporter folded (DeBERTa's relative-position projections): MatMulInteger takes no per-channel zero point
    for it, so they stay float; the Linear weights that fed them are folded away with them."""
    ranks = {i.name: len(i.dims) for i in model.graph.initializer}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and ranks.get(n.input[1], 2) > 2]


# --- int8 dynamic / static ---------------------------------------------------------------------


# x86 features whose int8 dot product (vpdpbusd) multiplies uint8 activations by int8 weights into int32 sums:
# no int16 intermediate to saturate, unlike AVX2's vpmaddubsw. MiniLM, dynamic int8 on an AMD EPYC (Zen 4,
# AVX-512 VNNI), 2 threads, the same fused graph: int8 weights 15.8 ms p50 and mean cosine 0.9976, uint8 weights
# 23.4 ms and 0.9968 (interleaved rounds, one process).
VNNI_FEATURES = frozenset({"avx512_vnni", "avx_vnni"})


def signed_weights(isa: tuple[str, ...] | list[str]) -> bool:
    """True when dynamic int8 should store int8 weights (U8S8) for a device with these CPU features."""
    return bool(VNNI_FEATURES & set(isa or ()))


def _int8_dynamic(model, dst: Path, scheme: QuantScheme, exclude: list[str], feeds: list[dict], *,
                  signed: bool = False) -> dict:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    stats = _collect_ranges(model, feeds, exclude) if feeds else None
    smoothed = _smooth(model, stats) if stats else 0
    tmp = _save_tmp(model, dst, "smoothed")
    quantize_dynamic(
        str(tmp), str(dst),
        per_channel=scheme.granularity is Granularity.PER_CHANNEL,
        reduce_range=False,  # measured: reduce_range drops MiniLM from 0.983 to 0.916
        # U8S8 only where VNNI sums u8 x s8 in int32; elsewhere uint8 weights (U8U8): see the module docstring
        weight_type=QuantType.QInt8 if signed else QuantType.QUInt8,
        # Attention: a fused graph's attention becomes QAttention (its packed QKV weight quantized like a MatMul's)
        op_types_to_quantize=["MatMul", "Gemm", "Conv", "Attention"]
        + (["Gather"] if scheme.quantize_embeddings else []),
        nodes_to_exclude=exclude,
        # DefaultTensorType: shape inference cannot type the outputs of fused com.microsoft ops
        extra_options={"MatMulConstBOnly": True, "WeightSymmetric": scheme.symmetric,
                       "DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    tmp.unlink()
    weights = ("int8 (U8S8 kernels: the device has VNNI, int32 sums)" if signed else
               "uint8 (U8U8 kernels: without VNNI, U8S8 would saturate int16 sums)")
    return {"method": "onnxruntime.quantization.quantize_dynamic", "weights": weights,
            "smoothquant_alpha": SMOOTH_ALPHA if smoothed else None, "smoothed_inputs": smoothed}


def _int8_static(model, dst: Path, scheme: QuantScheme, inventory: dict[str, WeightRef], exclude: list[str],
                 feeds: list[dict]) -> dict:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if not feeds:
        raise UnsupportedError("onnx: static int8 needs calibration inputs; none were given")
    stats = _collect_ranges(model, feeds, exclude)
    smoothed = _smooth(model, stats)
    dynamic = {n: round(db, 1) for n, db in stats.output_sqnr_db.items() if db < STATIC_MIN_OUTPUT_SQNR_DB}
    inits = {i.name for i in model.graph.initializer}
    two_activations = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] not in inits]
    tmp = _save_tmp(model, dst, "smoothed")
    static_out = dst.with_suffix(".static.onnx")
    quantize_static(
        str(tmp), str(static_out), _reader(feeds), quant_format=QuantFormat.QDQ,
        op_types_to_quantize=["MatMul", "Gemm", "Conv"], per_channel=scheme.granularity is Granularity.PER_CHANNEL,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
        nodes_to_exclude=exclude + two_activations + list(dynamic),
        extra_options={"WeightSymmetric": scheme.symmetric},
    )
    tmp.unlink()
    gathers = [r.node for r in inventory.values() if r.op == "Gather"] if scheme.quantize_embeddings else []
    if dynamic or gathers:
        _dynamic_pass(static_out, dst, list(dynamic) + gathers, scheme)
        static_out.unlink()
    else:
        static_out.rename(dst)
    modules = {r.node: r.module for r in inventory.values()}
    return {"method": "onnxruntime.quantization.quantize_static (QDQ, MinMax)", "calibration_samples": len(feeds),
            "smoothquant_alpha": SMOOTH_ALPHA if smoothed else None, "smoothed_inputs": smoothed,
            "dynamic_activation_layers": {modules.get(n, n): f"output SQNR {db} dB < {STATIC_MIN_OUTPUT_SQNR_DB} dB"
                                          for n, db in dynamic.items()}}


def _dynamic_pass(src: Path, dst: Path, nodes: list[str], scheme: QuantScheme) -> None:
    """Dynamic int8 for the named nodes only (outlier layers and embedding Gathers)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), per_channel=scheme.granularity is Granularity.PER_CHANNEL,
                     weight_type=QuantType.QUInt8, op_types_to_quantize=["MatMul", "Gemm", "Gather"],
                     nodes_to_quantize=nodes,
                     extra_options={"MatMulConstBOnly": True, "WeightSymmetric": scheme.symmetric})


def _reader(feeds: list[dict]):
    """A CalibrationDataReader over the calibration feeds (defined here: onnxruntime is imported lazily)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    return Reader()


# --- SmoothQuant ---------------------------------------------------------------------------------


@dataclass
class _Ranges:
    """Calibration statistics of the const-weight MatMuls: input channel absmax, output SQNR at uint8."""

    consumers: dict  # input tensor → MatMul nodes (const 2-D weight) that read it
    input_absmax: dict  # input tensor → per-channel absmax over the calibration inputs
    output_sqnr_db: dict  # node name → SQNR of its output quantized per-tensor uint8 at the calibrated range


def _collect_ranges(model, feeds: list[dict], exclude: list[str]) -> _Ranges:
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import helper

    inits = {i.name: i for i in model.graph.initializer}
    consumers: dict = {}
    for node in model.graph.node:
        # a fused Attention (com.microsoft) reads its input through one packed [hidden, 3 x hidden] QKV weight
        if (node.op_type in ("MatMul", "Attention") and node.input[1] in inits
                and len(inits[node.input[1]].dims) == 2 and node.name not in exclude):
            consumers.setdefault(node.input[0], []).append(node)
    outputs = {n.output[0]: n.name for nodes in consumers.values() for n in nodes if n.op_type == "MatMul"}
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in list(consumers) + list(outputs):
        if name not in known:
            probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = list(consumers) + list(outputs)
    absmax = {x: 0.0 for x in consumers}
    collected: dict = {o: [] for o in outputs}
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed)):
            if name in absmax:
                absmax[name] = np.maximum(absmax[name], np.abs(value).reshape(-1, value.shape[-1]).max(axis=0))
            if name in collected:
                collected[name].append(value.ravel())
    sqnr = {outputs[o]: _uint8_sqnr_db(np.concatenate(v)) for o, v in collected.items()}
    return _Ranges(consumers, absmax, sqnr)


def _uint8_sqnr_db(x) -> float:
    import numpy as np

    lo, hi = min(float(x.min()), 0.0), max(float(x.max()), 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zero = np.round(-lo / scale)
    deq = (np.clip(np.round(x / scale) + zero, 0, 255) - zero) * scale
    noise = float(((x - deq) ** 2).sum())
    return 10.0 * float(np.log10(float((x ** 2).sum()) / noise)) if noise > 0 else float("inf")


def _smooth(model, ranges: _Ranges) -> int:
    """SmoothQuant: move activation outliers into the weights, exactly in float.

    For an input X read by MatMuls with weights W: X' = X / s and W' = diag(s) W with
    s_j = max|X_j|^a / max|W_j|^(1-a), so per-tensor activation scales stop being set by a few channels.
    The division is a Mul inserted before the MatMuls (X also feeds the residual path, so it cannot be
    folded into the LayerNorm). Returns how many inputs were smoothed.
    """
    import numpy as np
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    nodes = list(model.graph.node)
    count = 0
    for x, consumers in ranges.consumers.items():
        weights = [numpy_helper.to_array(inits[n.input[1]]).astype(np.float32) for n in consumers]
        w_max = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        a_max = np.asarray(ranges.input_absmax[x], dtype=np.float64)
        s = np.maximum(a_max, 1e-5) ** SMOOTH_ALPHA / np.maximum(w_max, 1e-5) ** (1.0 - SMOOTH_ALPHA)
        s = np.where((a_max > 0) & (w_max > 0), s, 1.0).astype(np.float32)
        for node, w in zip(consumers, weights):
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(w * s[:, None], node.input[1]))
            node.input[0] = f"{x}__smoothed"
        # Distinct names: the quantizers derive their own tensor names from ours (X_scale, X_quantized).
        model.graph.initializer.append(numpy_helper.from_array(1.0 / s, f"{x}__smooth_inv"))
        first = min(nodes.index(n) for n in consumers)
        mul = helper.make_node("Mul", [x, f"{x}__smooth_inv"], [f"{x}__smoothed"], name=f"{x}__smooth")
        model.graph.node.insert(first + count, mul)
        count += 1
    return count


# --- MatMulNBits (int4, int8 weight-only) ----------------------------------------------------------


def _nbits(model, dst: Path, scheme: QuantScheme, inventory: dict[str, WeightRef], exclude: list[str],
           int4_tables: bool = False) -> dict:
    import onnx

    bits = 4 if scheme.precision is Precision.INT4 else 8
    level = 4 if scheme.activations is Activations.DYNAMIC else 0
    convs = sorted(r.module for r in inventory.values() if r.op == "Conv" and r.node not in exclude)
    if convs:
        raise UnsupportedError(f"onnx: {scheme.describe()} is MatMulNBits, which has no Conv form; these layers "
                               f"would stay float: {', '.join(convs)} (use int8 with dynamic or static activations)")
    rewritten = _gemm_to_matmul(model, inventory, exclude)
    with keep_root_logging():
        from onnxruntime.quantization.matmul_nbits_quantizer import (
            DefaultWeightOnlyQuantConfig,
            MatMulNBitsQuantizer,
        )
    gathers = ([r.node for r in inventory.values() if r.op == "Gather" and r.node not in exclude]
               if scheme.quantize_embeddings else [])
    ranks = {i.name: len(i.dims) for i in model.graph.initializer}
    int4_gathers = [r.node for r in inventory.values() if r.op == "Gather" and r.node in gathers and bits == 4
                    and int4_tables and ranks.get(r.init) == 2] if gathers else []
    gathers = [g for g in gathers if g not in int4_gathers]  # int8 by the dynamic pass below
    # GatherBlockQuantized (com.microsoft): the table int4, quantize_axis 1 = blocks along each row;
    # the quantizer takes every Gather with a constant table, so the int8 ones are excluded here.
    config = DefaultWeightOnlyQuantConfig(block_size=scheme.group_size, is_symmetric=scheme.symmetric,
                                          accuracy_level=level, bits=bits,
                                          op_types_to_quantize=("MatMul", "Gather") if int4_gathers else ("MatMul",),
                                          quant_axes=(("MatMul", 0), ("Gather", 1)))
    gather_nodes = [n.name for n in model.graph.node if n.op_type == "Gather"]
    quantizer = MatMulNBitsQuantizer(model, algo_config=config, nodes_to_exclude=exclude + [
        n for n in gather_nodes if n not in int4_gathers])
    quantizer.process()
    if gathers:
        tmp = _save_tmp(quantizer.model.model, dst, "nbits")
        _dynamic_pass(tmp, dst, gathers, scheme)
        tmp.unlink()
    else:
        onnx.save(quantizer.model.model, str(dst))
    details = {"method": "onnxruntime MatMulNBitsQuantizer", "bits": bits, "block_size": scheme.group_size,
               "accuracy_level": level, "gemm_rewritten_to_matmul": rewritten}
    if scheme.quantize_embeddings:
        modules = {r.node: r.module for r in inventory.values()}
        details["embeddings"] = {
            **{modules[n]: f"int4 GatherBlockQuantized, blocks of {scheme.group_size} along each row"
               for n in int4_gathers},
            **{modules[n]: "int8 Gather + DequantizeLinear (per-tensor scale)" + (
                "" if bits != 4 or not int4_tables else ": not a 2-D table, GatherBlockQuantized takes 2-D here")
               for n in gathers}}
    return details


def _gemm_to_matmul(model, inventory: dict[str, WeightRef], exclude: list[str]) -> int:
    """Rewrite plain Gemm(A, B[, C]) layers as MatMul(A, B') [+ Add C]; MatMulNBits only takes MatMul."""
    from onnx import helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    gemms = {r.node for r in inventory.values() if r.op == "Gemm" and r.node not in exclude}
    rewritten = 0
    for node in list(model.graph.node):
        if node.name not in gemms:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            continue  # left as is: the coverage gate reports it
        weight = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            inits[node.input[1]].CopyFrom(numpy_helper.from_array(weight.T.copy(), node.input[1]))
        out = node.output[0]
        has_bias = len(node.input) > 2 and bool(node.input[2])
        matmul = helper.make_node("MatMul", [node.input[0], node.input[1]], [out + "__mm" if has_bias else out],
                                  name=node.name)
        matmul.metadata_props.extend(node.metadata_props)
        position = list(model.graph.node).index(node)
        model.graph.node.remove(node)
        model.graph.node.insert(position, matmul)
        if has_bias:
            model.graph.node.insert(position + 1, helper.make_node("Add", [out + "__mm", node.input[2]], [out],
                                                                   name=node.name + "__bias"))
        rewritten += 1
    return rewritten


# --- small pieces ----------------------------------------------------------------------------------


def _uses_nbits(scheme: QuantScheme) -> bool:
    return scheme.precision is Precision.INT4 or (scheme.precision is Precision.INT8
                                                  and scheme.activations is Activations.FLOAT)


def _keep_float_nodes(inventory: dict[str, WeightRef], scheme: QuantScheme) -> list[str]:
    known = {r.module for r in inventory.values()}
    unknown = sorted(set(scheme.keep_float) - known)
    if unknown:
        sample = ", ".join(sorted(known)[:3])
        raise ExportError(f"onnx: keep_float names layers that are not in the exported graph: {', '.join(unknown)} "
                          f"(layer names look like: {sample})")
    return [r.node for r in inventory.values() if r.module in scheme.keep_float]


def _save_tmp(model, dst: Path, tag: str) -> Path:
    import onnx

    path = dst.with_suffix(f".{tag}.onnx")
    onnx.save(model, str(path))
    return path


# onnxruntime loggers that their modules set to INFO/DEBUG at import, with progress lines a CLI must not show.
_CHATTY_LOGGERS = ("ort_format_model.utils", "onnxruntime.quantization.matmul_nbits_quantizer")


class _WarningsAndUp(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING


@contextmanager
def keep_root_logging():
    """Keep onnxruntime's tools from configuring logging for the process (edgeopt never configures it).

    ``matmul_nbits_quantizer`` and ``tools.ort_format_model`` call ``logging.basicConfig`` at import, and
    the quantizers' module-level ``logging.warning`` calls do it on first use. While a handler is present
    ``basicConfig`` does nothing, so an unconfigured root gets a NullHandler for the duration; handlers
    added meanwhile and the root level are undone. The loggers onnxruntime sets to DEBUG pass warnings only.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    quiet = _WarningsAndUp()
    chatty = [logging.getLogger(name) for name in _CHATTY_LOGGERS]
    for logger in chatty:
        logger.addFilter(quiet)
    if not handlers:
        root.addHandler(logging.NullHandler())
    try:
        yield
    finally:
        for logger in chatty:
            logger.removeFilter(quiet)
        for handler in list(root.handlers):
            if handler not in handlers:
                root.removeHandler(handler)
        root.setLevel(level)
