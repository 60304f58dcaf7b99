"""ExecuTorch packager: torch.export → quantize → XNNPACK delegate → ``model.pte`` (+ ``model.pte.ops.yaml``).

The flow is ExecuTorch's own XNNPACK recipe: ``torch.export.export`` at the profile's shapes,
``to_edge_transform_and_lower`` with ``XnnpackPartitioner`` (and the no-op ``expand_copy`` removal the
XNNPACK examples run first), then ``to_executorch`` with quant fusion and constant propagation, which turns
torchao's dequantize + embedding into ``quantized_decomposed::embedding_byte``.

What each precision builds:

- fp32: as exported.
- fp16: the module in half precision behind fp32 inputs/outputs (cast inside the graph), so the artifact
  is a drop-in for the fp32 one. XNNPACK runs the fp16 linears, matmuls and softmax; GELU has no XNNPACK
  fp16 kernel and stays on the portable kernels, as do LayerNorm and the attention-mask arithmetic.
- int8, dynamic activations: PT2E with ``XNNPACKQuantizer`` (per-channel symmetric int8 weights on every
  Linear and convolution) — XNNPACK's QD8-F32-QC8W GEMM, activations quantized per run. torchao's
  ``Int8DynamicActivationIntxWeightConfig(int8)`` gives the same cosine and size on MiniLM and the same
  speed, but lowers ~1.8x slower and leaves convolutions float.
- int8, static activations: PT2E as above, with histogram observers over the calibration inputs, on
  Linear and convolution only (fixed scales on residual adds wreck transformers). A layer whose output
  SQNR under one fixed int8 scale is below 25 dB on the calibration inputs (BERT's FFN down-projections)
  runs with dynamic activations instead, listed in ``details["dynamic_activation_layers"]``: MiniLM 0.945
  → 0.992 cosine at the same 23 MB.
- int4: ``Int8DynamicActivationIntxWeightConfig(int4, PerGroup(group_size))`` — XNNPACK's QD8-F32-QB4W GEMM.
  A Linear whose ``in_features`` is not a multiple of the group size stays float, recorded with its reason.
- embeddings (``quantize_embeddings``): torchao ``IntxWeightOnlyConfig(int8, PerAxis(0))`` — one scale per
  row, run by ``quantized_decomposed::embedding_byte`` from ExecuTorch's quantized kernel library.

Coverage is read from the quantized module (torchao tensor subclasses, or the PT2E graph's weight
dequantize nodes), never assumed: a weight left float that the scheme did not ask to keep float is an
ExportError. Measured numbers are in runtimes/executorch/README.md.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import math
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from edgeopt.errors import ExportError, MissingDependencyError, UnsupportedError, export_failure
from edgeopt.formats import Format, Precision, Runtime
from edgeopt.lengths import LengthMode, plan_lengths, run_fitted, seq_shapes, torch_dynamic_shapes
from edgeopt.packagers import Artifact, Capabilities, Coverage, TensorSpec, register
from edgeopt.quantize import Activations, Granularity, QuantScheme

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from edgeopt.models import LoadedModel

KEPT_SENSITIVE = "kept float: sensitive layer"
KEPT_EMBEDDINGS = "kept float: embeddings not quantized by this scheme"
STATIC_MIN_OUTPUT_SQNR_DB = 25.0  # below this a layer's output is too outlier-heavy for one fixed int8 scale
# ExecuTorch ScalarType codes (runtime/core/portable_type/scalar_type.h) → numpy dtype names.
_SCALAR_TYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32",
                 7: "float64", 11: "bool"}
_NOT_OPS = ("getitem", "alloc", "executorch_call_delegate")


class ExecuTorchPackager:
    runtime = Runtime.EXECUTORCH
    capabilities = Capabilities(
        precisions=frozenset({Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4}),
        activations=frozenset({Activations.FLOAT, Activations.DYNAMIC, Activations.STATIC}),
        notes={
            Precision.INT8: "int8 needs dynamic or static int8 activations: XNNPACK has no weight-only int8 GEMM",
            Precision.INT4: "int4 needs dynamic int8 activations (XNNPACK QD8-F32-QB4W); "
                            "no static or weight-only int4 kernel",
        },
    )

    def check_available(self) -> None:
        for module, pkg in (("executorch.exir", "executorch"), ("executorch.runtime", "executorch"),
                            ("torchao", "torchao")):
            try:
                __import__(module)
            except ImportError:
                raise MissingDependencyError(module.split(".")[0], "executorch", pkg) from None

    def toolchain_versions(self) -> dict[str, str]:
        from importlib.metadata import version

        import torch

        return {"torch": torch.__version__, "executorch": version("executorch"), "torchao": version("torchao")}

    def export(self, loaded: LoadedModel, scheme: QuantScheme, work_dir: Path, *, shapes: tuple[int, int],
               calibration: list[tuple]) -> Artifact:
        """Build ``work_dir/model.pte`` and its op list for ``scheme`` at ``shapes`` = (batch, seq_len).

        Raises:
            UnsupportedError: a scheme XNNPACK cannot run (the message says why and what to use instead).
            ExportError: torch.export, quantization or lowering failed, or coverage found silent float layers.
        """
        check_scheme(scheme)
        start = time.perf_counter()
        work_dir.mkdir(parents=True, exist_ok=True)
        example = loaded.example_inputs(*shapes)
        path = work_dir / "model.pte"
        lengths = plan_lengths(loaded, shapes[1], LengthMode.DYNAMIC)
        fallback = None
        try:
            coverage, quant_details, delegation = _build(loaded, scheme, example, calibration, lengths, path)
        except ExportError as e:
            if not lengths.variable:
                raise
            fallback = f"dynamic sequence length failed, exported at seq_len {shapes[1]}: {str(e).splitlines()[0]}"
            lengths = plan_lengths(loaded, shapes[1], LengthMode.STATIC)
            coverage, quant_details, delegation = _build(loaded, scheme, example, calibration, lengths, path)
        if fallback:
            quant_details["lengths_fallback"] = fallback
        ops_yaml = _write_ops_yaml(path, delegation["non_delegated"])
        inputs, outputs = _io_specs(path, loaded)
        if lengths.variable:  # the metadata holds the upper bound (what memory planning allocates for)
            inputs = seq_shapes(inputs, lengths, lengths.inputs)
            outputs = seq_shapes(outputs, lengths, lengths.outputs)
        details = {"backend": "XnnpackBackend", "delegation": delegation, "selective_build": ops_yaml.name,
                   **quant_details}
        return Artifact(path=path, format=Format.PTE, precision=scheme.precision, scheme=scheme, inputs=inputs,
                        outputs=outputs, coverage=coverage, extra_files=(ops_yaml,), details=details,
                        build_seconds=time.perf_counter() - start, lengths=lengths)

    def run(self, artifact: Artifact, samples: list[tuple[np.ndarray, ...]]) -> list[list[np.ndarray]]:
        import numpy as np
        import torch

        method = load_method(str(artifact.path))
        dtypes = [spec.dtype for spec in artifact.inputs]

        def run_one(sample, _length):
            feeds = [torch.from_numpy(np.ascontiguousarray(a, dtype=d)) for a, d in zip(sample, dtypes)]
            return [out.numpy() for out in method.execute(feeds)]

        if artifact.lengths is None or not artifact.lengths.variable:
            return [run_one(sample, None) for sample in samples]
        ins, outs = tuple(s.name for s in artifact.inputs), tuple(s.name for s in artifact.outputs)
        return [run_fitted(run_one, sample, ins, outs, artifact.lengths) for sample in samples]


def _build(loaded: LoadedModel, scheme: QuantScheme, example: tuple, calibration: list[tuple], lengths, path: Path):
    """prepare_module then _lower at ``lengths``; returns (coverage, quantization details, delegation report)."""
    dynamic = torch_dynamic_shapes(lengths, loaded.input_names)
    module, coverage, quant_details = prepare_module(loaded, scheme, example, calibration, dynamic)
    # The fp16 wrapper takes *args: torch.export wants the per-input specs as that one argument's.
    lower_dynamic = (dynamic,) if dynamic and scheme.precision is Precision.FP16 else dynamic
    return coverage, quant_details, _lower(module, example, path, lower_dynamic)


def load_method(path: str):
    """The ``forward`` method of a .pte in ExecuTorch's runtime, with the quantized kernels registered."""
    import executorch.kernels.quantized  # noqa: F401 - registers quantized_decomposed::* (embedding_byte)
    from executorch.runtime import Runtime as EtRuntime

    return EtRuntime.get().load_program(path).load_method("forward")


# --- schemes -------------------------------------------------------------------------------------


def check_scheme(scheme: QuantScheme) -> None:
    """Raise UnsupportedError for a scheme XNNPACK has no kernels for, naming what to use instead."""
    if not scheme.is_quantized:
        return
    if not scheme.symmetric:
        raise UnsupportedError("pte: XNNPACK's int8/int4 GEMMs take symmetric weights (zero point 0); "
                               "use symmetric=True")
    if scheme.precision is Precision.INT8 and scheme.activations is Activations.FLOAT:
        raise UnsupportedError(f"pte: {ExecuTorchPackager.capabilities.notes[Precision.INT8]}; "
                               "use activations=dynamic (same int8 weights, int8 GEMM)")
    if scheme.precision is Precision.INT4 and scheme.activations is not Activations.DYNAMIC:
        raise UnsupportedError(f"pte: {ExecuTorchPackager.capabilities.notes[Precision.INT4]}; "
                               "use activations=dynamic")
    if scheme.precision is Precision.INT8 and scheme.granularity is Granularity.PER_GROUP:
        raise UnsupportedError("pte: XNNPACK has no blockwise int8 GEMM; use per_channel int8 weights "
                               "(or int4 for groups)")
    if scheme.precision is Precision.INT4 and scheme.granularity is Granularity.PER_TENSOR:
        raise UnsupportedError("pte: per_tensor int4 has no XNNPACK kernel; use per_group (group_size 32) "
                               "or per_channel int4 weights")
    if scheme.activations is Activations.DYNAMIC and scheme.granularity is Granularity.PER_TENSOR:
        raise UnsupportedError("pte: dynamic int8 runs XNNPACK's per-channel weight GEMM; use "
                               "per_channel (more accurate at the same size)")
    if scheme.granularity is Granularity.PER_GROUP and not scheme.group_size:
        raise UnsupportedError("pte: per_group needs a group_size (e.g. 32)")


def prepare_module(loaded: LoadedModel, scheme: QuantScheme, example: tuple, calibration: list[tuple],
                   dynamic_shapes: tuple | None = None):
    """The transformed eager module the artifact is lowered from, its coverage and quantization details.

    ``dynamic_shapes`` (torch.export's, for a free sequence axis) reaches the PT2E trace, so the int8 graph
    keeps that axis symbolic. ``loaded.module`` is never modified (the pipeline builds several schemes from it). The returned module
    computes what the .pte computes (up to kernel rounding): the tight reference for ``run``.

    Returns:
        (module, Coverage or None, details dict for the manifest)
    Raises:
        UnsupportedError: the scheme has no XNNPACK kernels. ExportError: tracing, quantization or coverage failed.
    """
    import torch

    check_scheme(scheme)
    module = copy.deepcopy(loaded.module)
    if scheme.precision is Precision.FP16:
        return _half_io(module), None, {"compute_dtype": "float16"}
    if not scheme.is_quantized:
        return module, None, {}
    _conv1d_to_linear(module)
    in_graph = _modules_in_graph(module, example)
    with torch.no_grad():
        if scheme.quantize_embeddings:
            _quantize_embeddings(module, scheme)
        embeddings = _torchao_quantized(module)
        if scheme.precision is Precision.INT8:
            graph, weights, outliers = _pt2e_int8(module, scheme, example, calibration, dynamic_shapes)
            coverage = _coverage(module, scheme, in_graph, embeddings | weights, "PT2E XNNPACKQuantizer")
            details = {"quantizer": f"PT2E XNNPACKQuantizer ({scheme.activations.value} activations)"}
            if scheme.activations is Activations.STATIC:
                details["calibration_samples"] = len(calibration)
                details["dynamic_activation_layers"] = outliers  # name → output SQNR (dB) at a fixed scale
            return graph, coverage, details
        _quantize_int4_linears(module, scheme)
        coverage = _coverage(module, scheme, in_graph, _torchao_quantized(module), "torchao")
        from torchao.utils import unwrap_tensor_subclass

        # torch.export lifts plain tensors; QuantFusionPass only matches embeddings on lifted parameters.
        unwrap_tensor_subclass(module)
    return module, coverage, {"quantizer": "torchao Int8DynamicActivationIntxWeightConfig (int4 weights)"}


def _half_io(inner):
    """``inner`` in half precision behind fp32 inputs and outputs (a drop-in for the fp32 artifact).

    LayerNorms keep fp32 statistics: ExecuTorch's portable layer_norm accumulates in the tensor's dtype,
    and a residual stream with outliers (MiniLM) overflows fp16 in the sum of squares — NaN everywhere.
    """
    import torch

    class FloatLayerNorm(torch.nn.Module):
        def __init__(self, norm):
            super().__init__()
            self.norm = norm.float()

        def forward(self, x):
            return self.norm(x.float()).to(x.dtype)

    class HalfIO(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner.half()
            for name, child in list(self.inner.named_modules()):
                if isinstance(child, torch.nn.LayerNorm):
                    parent, _, attr = name.rpartition(".")
                    setattr(self.inner.get_submodule(parent) if parent else self.inner, attr, FloatLayerNorm(child))

        def forward(self, *args):
            args = tuple(a.half() if a.is_floating_point() else a for a in args)
            return tuple(o.float() if o.is_floating_point() else o for o in self.inner(*args))

    return HalfIO(inner).eval()


def _conv1d_to_linear(module) -> None:
    """transformers' Conv1D (GPT-2) is a Linear with a transposed weight; make it one so it quantizes."""
    import torch

    for name, child in list(module.named_modules()):
        if type(child).__name__ != "Conv1D":
            continue
        linear = torch.nn.Linear(child.weight.shape[0], child.weight.shape[1], bias=child.bias is not None)
        linear.weight.data = child.weight.data.t().contiguous()
        if child.bias is not None:
            linear.bias.data = child.bias.data
        parent_name, _, attr = name.rpartition(".")
        setattr(module.get_submodule(parent_name) if parent_name else module, attr, linear)


def _modules_in_graph(module, example: tuple) -> set[str]:
    """Names of the modules whose ops reach an output (a BERT pooler the wrapper ignores does not)."""
    import torch

    try:
        with torch.no_grad():
            ep = torch.export.export(module, example, strict=False)
    except Exception as e:  # any tracer failure becomes an ExportError naming the format
        raise export_failure("pte", "torch.export", e) from e
    # Export keeps dead branches (the pooler); to_edge drops them, so coverage must not list them either.
    ep.graph.eliminate_dead_code()
    names = set()
    for node in ep.graph.nodes:
        for path, _ in node.meta.get("nn_module_stack", {}).values():
            names.add(_normalize_path(path))
    return names


def _normalize_path(path: str) -> str:
    return path.removeprefix("L['self'].")


def _quantize_embeddings(module, scheme: QuantScheme) -> None:
    import torch
    from torchao.quantization import IntxWeightOnlyConfig, quantize_
    from torchao.quantization.granularity import PerAxis

    keep = set(scheme.keep_float)

    def wanted(m, fqn: str) -> bool:
        return isinstance(m, torch.nn.Embedding) and fqn not in keep

    for name, m in module.named_modules():
        if wanted(m, name):
            # padding_idx only shapes gradients; ExecuTorch's embedding_byte fusion matches embedding(w, ids).
            m.padding_idx = None
    quantize_(module, IntxWeightOnlyConfig(weight_dtype=torch.int8, granularity=PerAxis(0)), filter_fn=wanted)


def _quantize_int4_linears(module, scheme: QuantScheme) -> None:
    import torch
    from torchao.quantization import Int8DynamicActivationIntxWeightConfig, quantize_
    from torchao.quantization.granularity import PerAxis, PerGroup

    keep = set(scheme.keep_float)
    group = scheme.group_size if scheme.granularity is Granularity.PER_GROUP else None

    def wanted(m, fqn: str) -> bool:
        return isinstance(m, torch.nn.Linear) and fqn not in keep and (group is None or m.in_features % group == 0)

    config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4,
                                                   weight_granularity=PerGroup(group) if group else PerAxis(0))
    quantize_(module, config, filter_fn=wanted)


def _pt2e_int8(module, scheme: QuantScheme, example: tuple, calibration: list[tuple], dynamic_shapes=None):
    """int8 linears and convolutions by PT2E with XNNPACKQuantizer (per-channel symmetric weights).

    Dynamic activations need no calibration. Static ones are observed (histograms) on ``calibration``;
    a layer whose output cannot live with one fixed scale (``_outlier_layers``) gets dynamic activations.
    Returns the converted graph module, the names of the modules whose weights it quantized, and the
    static layers moved to dynamic activations with their output SQNR.
    """
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter
    from torchao.utils import unwrap_tensor_subclass

    static = scheme.activations is Activations.STATIC
    per_channel = scheme.granularity is not Granularity.PER_TENSOR
    dynamic_config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=True)
    config = get_symmetric_quantization_config(is_per_channel=per_channel, is_dynamic=False) if static else dynamic_config
    outliers = _outlier_layers(module, calibration or [example], set(scheme.keep_float)) if static else {}
    unwrap_tensor_subclass(module)
    quantizer = _xnnpack_quantizer()
    # Weight ops only. set_global would, for static activations, also give residual adds and muls fixed
    # scales, and BERT's residual stream does not survive that (MiniLM: 0.34 cosine, 0.34 with the six FFN
    # down-projections kept float; linear-only: 0.945, and 0.993 with them kept float).
    for op in _weight_ops():
        quantizer.set_operator_type(op, config)
    for name in outliers:
        quantizer.set_module_name(name, dynamic_config)
    keep_filters = [get_module_name_filter(name) for name in scheme.keep_float]
    quantizer.set_filter_function(lambda n: not any(f(n) for f in keep_filters))
    try:
        graph = torch.export.export(module, example, strict=False, dynamic_shapes=dynamic_shapes).module()
        prepared = prepare_pt2e(graph, quantizer)
        for sample in (calibration or [example]) if static else [example]:
            prepared(*sample)
        converted = convert_pt2e(prepared)
    except Exception as e:
        raise ExportError(f"pte: PT2E int8 quantization failed: {_first_line(e)}") from e
    return converted, _pt2e_quantized_weights(converted), outliers


def _outlier_layers(module, calibration: list[tuple], keep: set[str]) -> dict[str, float]:
    """Linear/conv layers whose output SQNR under one int8 scale (min..max over ``calibration``) is too low.

    In BERT these are the six FFN down-projections that write into the residual stream (MiniLM: 13-21 dB,
    every other layer >= 27 dB); a fixed scale there costs most of the model's accuracy.
    """
    import torch

    outputs: dict[str, list] = {}
    hooks = [m.register_forward_hook(lambda _m, _i, out, name=name: outputs.setdefault(name, []).append(out))
             for name, m in module.named_modules()
             if isinstance(m, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)) and name not in keep]
    try:
        for sample in calibration:
            module(*sample)
    finally:
        for hook in hooks:
            hook.remove()
    found = {}
    for name, outs in outputs.items():
        y = torch.cat([o.detach().double().flatten() for o in outs])
        lo, hi = min(float(y.min()), 0.0), max(float(y.max()), 0.0)
        scale = max(hi - lo, 1e-12) / 255.0
        zero = round(-lo / scale) - 128
        q = (torch.clamp(torch.round(y / scale) + zero, -128, 127) - zero) * scale
        sqnr = 10.0 * math.log10(max(float((y * y).sum()), 1e-30) / max(float(((y - q) ** 2).sum()), 1e-30))
        if sqnr < STATIC_MIN_OUTPUT_SQNR_DB:
            found[name] = round(sqnr, 1)
    return found


def _weight_ops():
    import torch

    return (torch.ops.aten.linear.default, torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default)


def _xnnpack_quantizer():
    """XNNPACKQuantizer that also quantizes conv+ReLU dynamically, and turns only float scalars into tensors."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    class Quantizer(XNNPACKQuantizer):
        # Upstream annotates conv+ReLU for static activations only, and its dynamic conv annotator skips a
        # conv that feeds a ReLU: every conv of a CNN would stay float under dynamic int8.
        SUPPORTED_PATTERNS: ClassVar = [dataclasses.replace(p, is_dynamic=True) if p.name == "conv_relu" else p
                                        for p in XNNPACKQuantizer.SUPPORTED_PATTERNS]

        def transform_for_annotation(self, model):
            return _float_scalars_to_attrs(model)

    return Quantizer()


def _float_scalars_to_attrs(model):
    """Scalar operands of float add/mul become tensor attributes, so the quantizer can annotate them.

    Upstream converts the scalars of every add/mul to float tensors; transformers 5 builds attention-mask
    indices with integer adds, which then turn float and fail as indices (IndexError) in calibration.
    """
    import torch
    from torchao.quantization.pt2e.utils import get_new_attr_name_with_prefix

    targets = (torch.ops.aten.add.Tensor, torch.ops.aten.mul.Tensor)
    for node in list(model.graph.nodes):
        val = node.meta.get("val")
        if node.op != "call_function" or node.target not in targets:
            continue
        if not (isinstance(val, torch.Tensor) and val.is_floating_point()):
            continue
        args = []
        for arg in node.args:
            if not isinstance(arg, (int, float)):
                args.append(arg)
                continue
            name = get_new_attr_name_with_prefix("_tensor_constant_")(model)
            model.register_buffer(name, torch.tensor(float(arg)))
            with model.graph.inserting_before(node):
                attr = model.graph.create_node("get_attr", name, (), {})
            attr.meta["val"] = val.fake_mode.from_tensor(getattr(model, name), static_shapes=True)
            args.append(attr)
        node.args = tuple(args)
    model.recompile()
    return model


def _pt2e_quantized_weights(graph) -> set[str]:
    """Modules whose weight reaches their linear/conv through a dequantize node in the converted PT2E graph."""
    import torch

    dequant = {torch.ops.quantized_decomposed.dequantize_per_channel.default,
               torch.ops.quantized_decomposed.dequantize_per_tensor.default}
    names = set()
    for node in graph.graph.nodes:
        if node.op != "call_function" or node.target not in _weight_ops():
            continue
        weight = node.args[1]
        stack = list(node.meta.get("nn_module_stack", {}).values())
        if isinstance(weight, torch.fx.Node) and weight.target in dequant and stack:
            names.add(_normalize_path(stack[-1][0]))
    return names


def _coverage(module, scheme: QuantScheme, in_graph: set[str], quantized: set[str], tool: str) -> Coverage:
    """Quantized vs kept-float for every Linear, convolution and Embedding that reaches an output.

    Raises ExportError when a weight stayed float that nobody asked to keep float.
    """
    import torch

    keep = set(scheme.keep_float)
    group = scheme.group_size if scheme.granularity is Granularity.PER_GROUP else None
    kinds = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Embedding)
    done, kept = [], {}
    for name, m in module.named_modules():
        if not isinstance(m, kinds) or name not in in_graph:
            continue
        if name in quantized:
            done.append(name)
        elif name in keep:
            kept[name] = KEPT_SENSITIVE
        elif isinstance(m, torch.nn.Embedding) and not scheme.quantize_embeddings:
            kept[name] = KEPT_EMBEDDINGS
        elif isinstance(m, torch.nn.Linear) and group and m.in_features % group:
            kept[name] = f"kept float: in_features {m.in_features} not divisible by group size {group}"
        elif not isinstance(m, (torch.nn.Linear, torch.nn.Embedding)) and scheme.precision is Precision.INT4:
            kept[name] = "XNNPACK has no int4 convolution; use int8 for convolutional models"
        else:
            kept[name] = f"not quantized by {tool}"
    coverage = Coverage(tuple(done), kept)
    if coverage.unexpected():
        names = ", ".join(f"{k} ({v})" for k, v in sorted(coverage.unexpected().items()))
        raise ExportError(f"pte: {scheme.precision.value} artifact would leave weights float that the "
                          f"scheme asked to quantize: {names}")
    return coverage


def _torchao_quantized(module) -> set[str]:
    """Modules whose weight torchao replaced by a quantized tensor subclass (read before unwrapping)."""
    from torchao.quantization import IntxUnpackedToInt8Tensor

    return {name for name, m in module.named_modules()
            if isinstance(getattr(m, "weight", None), IntxUnpackedToInt8Tensor)}


# --- lowering ------------------------------------------------------------------------------------


def _lower(module, example: tuple, path: Path, dynamic_shapes: tuple | None = None) -> dict[str, Any]:
    """Export (the sequence axis free up to its bound with ``dynamic_shapes``), lower to XNNPACK, write ``path``;
    returns the delegation report. Memory planning allocates for the bound."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import (
        XnnpackPartitioner,
    )
    from executorch.backends.xnnpack.utils.configs import get_transform_passes
    from executorch.exir import ExecutorchBackendConfig, to_edge_transform_and_lower

    try:
        with torch.no_grad():
            ep = torch.export.export(module, example, strict=False, dynamic_shapes=dynamic_shapes)
    except Exception as e:
        raise export_failure("pte", "torch.export", e) from e
    try:
        edge = to_edge_transform_and_lower(ep, transform_passes=get_transform_passes(),
                                           partitioner=[XnnpackPartitioner()])
        delegated_ops = _delegated_op_count(edge.exported_program())
        program = edge.to_executorch(ExecutorchBackendConfig(do_quant_fusion_and_const_prop=True))
    except Exception as e:
        raise export_failure("pte", "lowering to XNNPACK", e) from e
    path.write_bytes(program.buffer)
    return _delegation_report(program, delegated_ops)


def _delegated_op_count(edge_program) -> int:
    """Edge ops inside the XNNPACK subgraphs (each delegate call runs one lowered subgraph)."""
    count = 0
    for node in edge_program.graph.nodes:
        if node.op != "get_attr":
            continue
        lowered = getattr(edge_program.graph_module, node.target, None)
        original = getattr(lowered, "original_module", None)
        if original is None:
            continue
        count += sum(1 for n in original.graph.nodes if n.op == "call_function" and not _is_bookkeeping(n))
    return count


def _is_bookkeeping(node) -> bool:
    name = getattr(node.target, "__name__", str(node.target))
    return any(part in name for part in _NOT_OPS)


def _delegation_report(program, delegated_ops: int) -> dict[str, Any]:
    """What the runtime executes: delegate calls, and every op left on portable/quantized kernels."""
    plan = program.executorch_program.execution_plan[0]
    kernels: Counter[str] = Counter()
    delegate_calls = 0
    for chain in plan.chains:
        for instruction in chain.instructions:
            args = instruction.instr_args
            if type(args).__name__ == "DelegateCall":
                delegate_calls += 1
            elif type(args).__name__ == "KernelCall":
                op = plan.operators[args.op_index]
                kernels[f"{op.name}.{op.overload}" if op.overload else op.name] += 1
    non_delegated = sum(kernels.values())
    total = delegated_ops + non_delegated
    return {
        "delegate_calls": delegate_calls,
        "delegated_ops": delegated_ops,
        "non_delegated_ops": non_delegated,
        "total_ops": total,
        "share": round(delegated_ops / total, 4) if total else 0.0,
        "non_delegated": dict(sorted(kernels.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def _write_ops_yaml(pte: Path, counts: dict[str, int]) -> Path:
    """``model.pte.ops.yaml``: ExecuTorch's selected_operators.yaml for a selective runtime build.

    Written by ExecuTorch's own ``gen_oplist`` from the .pte (operators plus the dtype/dim-order kernel keys
    in ``et_kernel_metadata``); each operator's ``debug_info`` adds how many times the program calls it.
    """
    import yaml
    from executorch.codegen.tools.gen_oplist import gen_oplist

    out = pte.with_name(pte.name + ".ops.yaml")
    with contextlib.redirect_stdout(io.StringIO()):  # gen_oplist prints every operator it reads
        gen_oplist(output_path=out, model_file_path=str(pte))
    data = yaml.safe_load(out.read_text(encoding="utf-8"))
    for name, info in data.get("operators", {}).items():
        info["debug_info"] = [pte.name, f"calls: {counts.get(name, 0)}"]
    data["debug_info"] = [pte.name, "delegate calls need the XnnpackBackend library linked; they are not operators"]
    out.write_text(yaml.safe_dump(data, default_flow_style=False, sort_keys=True), encoding="utf-8")
    return out


def _io_specs(path: Path, loaded: LoadedModel) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    """Input and output specs read back from the .pte's method metadata (what the device runtime sees)."""
    from executorch.runtime import Runtime as EtRuntime

    meta = EtRuntime.get().load_program(str(path)).metadata("forward")

    def spec(info, name: str) -> TensorSpec:
        return TensorSpec(name, _SCALAR_TYPES.get(int(info.dtype()), str(info.dtype())), tuple(info.sizes()))

    inputs = tuple(spec(meta.input_tensor_meta(i), loaded.input_names[i]) for i in range(meta.num_inputs()))
    outputs = tuple(spec(meta.output_tensor_meta(i), loaded.output_names[i]) for i in range(meta.num_outputs()))
    return inputs, outputs


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"


register(ExecuTorchPackager())
