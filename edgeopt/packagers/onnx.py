"""ONNX packager: torch.onnx (dynamo exporter) → model.onnx, quantized with onnxruntime.quantization.

int8 is dynamic quantization: per-channel symmetric int8 weights (MatMulInteger), uint8 activations
quantized per run, and the embedding tables (Gather) stored int8 with a DequantizeLinear. Per-tensor
weights — onnxruntime's default — lose ~4 points of cosine on MiniLM, hence per-channel.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path
from typing import TYPE_CHECKING

from edgeopt.errors import ExportError, MissingDependencyError, UnsupportedError
from edgeopt.formats import Format, Precision, Runtime
from edgeopt.packagers import Artifact, Capabilities, Coverage, TensorSpec, register
from edgeopt.quantize import Activations, QuantScheme

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from edgeopt.models import LoadedModel

_NP_DTYPES = {1: "float32", 10: "float16", 7: "int64", 6: "int32", 9: "bool", 3: "int8", 2: "uint8"}


class OnnxPackager:
    runtime = Runtime.ONNXRUNTIME
    capabilities = Capabilities(
        precisions=frozenset({Precision.FP32, Precision.INT8}),
        notes={
            Precision.FP16: "fp16 ONNX export is not built yet (step 2)",
            Precision.INT4: "int4 MatMulNBits export is not built yet (step 2)",
        },
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

    def export(self, loaded: "LoadedModel", scheme: QuantScheme, work_dir: Path, *, shapes: tuple[int, int],
               calibration: list[tuple]) -> Artifact:
        if scheme.precision not in self.capabilities.precisions:
            raise UnsupportedError(f"onnx: {self.capabilities.notes.get(scheme.precision, scheme.precision.value)}")
        if scheme.activations is Activations.STATIC:
            raise UnsupportedError("onnx: static int8 (QDQ with calibration) is not built yet (step 2); use dynamic")
        start = time.perf_counter()
        work_dir.mkdir(parents=True, exist_ok=True)
        fp32_path = work_dir / "model.fp32.onnx"
        example = loaded.example_inputs(*shapes)
        _export_fp32(loaded, example, fp32_path)
        coverage = None
        path = fp32_path
        if scheme.precision is Precision.INT8:
            path = work_dir / "model.onnx"
            coverage = _quantize_dynamic_int8(fp32_path, path, scheme)
            fp32_path.unlink()
        else:
            path = fp32_path.rename(work_dir / "model.onnx")
        inputs, outputs = _io_specs(path)
        return Artifact(
            path=path,
            format=Format.ONNX,
            precision=scheme.precision,
            scheme=scheme,
            inputs=inputs,
            outputs=outputs,
            coverage=coverage,
            build_seconds=time.perf_counter() - start,
        )

    def run(self, artifact: Artifact, samples: list[tuple["np.ndarray", ...]]) -> list[list["np.ndarray"]]:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(artifact.path), opts, providers=["CPUExecutionProvider"])
        names = [i.name for i in artifact.inputs]
        return [list(session.run(None, dict(zip(names, sample)))) for sample in samples]


def _export_fp32(loaded: "LoadedModel", example: tuple, path: Path) -> None:
    import contextlib
    import io

    import torch

    sink = io.StringIO()
    try:
        # The exporter prints progress lines on stdout; keep the CLI's output ours.
        with torch.no_grad(), contextlib.redirect_stdout(sink):
            torch.onnx.export(
                loaded.module,
                example,
                str(path),
                input_names=list(loaded.input_names),
                output_names=list(loaded.output_names),
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as e:  # noqa: BLE001 - any converter failure becomes an ExportError naming the format
        raise ExportError(f"onnx: torch.onnx export failed: {_first_line(e)}") from e


def _weight_nodes(model) -> dict[str, tuple[str, str, str]]:
    """initializer name → (node name, module name, op type) for every MatMul/Gemm weight and Gather table."""
    inits = {i.name for i in model.graph.initializer}
    found = {}
    for node in model.graph.node:
        if node.op_type in ("MatMul", "Gemm") and len(node.input) > 1 and node.input[1] in inits:
            found[node.input[1]] = (node.name, _module_name(node) or node.input[1], node.op_type)
        elif node.op_type == "Gather" and node.input and node.input[0] in inits:
            name = node.input[0]
            found[name] = (node.name, name[: -len(".weight")] if name.endswith(".weight") else name, "Gather")
    return found


def _module_name(node) -> str | None:
    """The nn.Module a node came from, from the dynamo exporter's name-scope metadata."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return scopes[-2] if len(scopes) >= 2 else None
    return None


def _quantize_dynamic_int8(src: Path, dst: Path, scheme: QuantScheme) -> Coverage:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    model = onnx.load(str(src))
    weights = _weight_nodes(model)
    keep = set(scheme.keep_float)
    exclude = [node for node, module, _ in weights.values() if module in keep]
    op_types = ["MatMul", "Gemm"] + (["Gather"] if scheme.quantize_embeddings else [])
    try:
        quantize_dynamic(
            str(src),
            str(dst),
            per_channel=scheme.granularity.value == "per_channel",
            reduce_range=False,  # measured: reduce_range=True drops MiniLM's mean cosine from 0.983 to 0.916
            weight_type=QuantType.QInt8,
            op_types_to_quantize=op_types,
            nodes_to_exclude=exclude,
            extra_options={"MatMulConstBOnly": True},
        )
    except Exception as e:  # noqa: BLE001
        raise ExportError(f"onnx: int8 quantization failed: {_first_line(e)}") from e
    q_inits = {i.name for i in onnx.load(str(dst), load_external_data=False).graph.initializer}
    quantized, kept = [], {}
    for init, (_, module, op) in sorted(weights.items(), key=lambda kv: kv[1][1]):
        if init + "_quantized" in q_inits:
            quantized.append(module)
        elif module in keep:
            kept[module] = "kept float: sensitive layer"
        elif op == "Gather" and not scheme.quantize_embeddings:
            kept[module] = "kept float: embeddings not quantized by this scheme"
        else:
            kept[module] = "not quantized by onnxruntime.quantization"
    coverage = Coverage(tuple(quantized), kept)
    if coverage.unexpected():
        names = ", ".join(sorted(coverage.unexpected()))
        raise ExportError(f"onnx: int8 artifact would leave weights float that the plan asked to quantize: {names}")
    return coverage


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
