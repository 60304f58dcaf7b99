"""The closed vocabularies: precisions, runtimes and their artifact formats.

Strings from the CLI and YAML are parsed into these once (``parse``); nothing below compares strings.
"""

from __future__ import annotations

import enum

from edgeopt.errors import UsageError
from edgeopt.registry import unknown_name_message


class Precision(str, enum.Enum):
    """Numeric precision of a model's weights (and, for int8/int4, the scheme family)."""

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    INT4 = "int4"

    @property
    def weight_bits(self) -> int:
        return {"fp32": 32, "fp16": 16, "int8": 8, "int4": 4}[self.value]

    @classmethod
    def parse(cls, value: str) -> "Precision":
        return _parse(cls, "precision", value)


class Runtime(str, enum.Enum):
    """What loads an artifact on the device."""

    EXECUTORCH = "executorch"
    LITERT = "litert"
    ONNXRUNTIME = "onnxruntime"

    @property
    def format(self) -> "Format":
        return {
            Runtime.EXECUTORCH: Format.PTE,
            Runtime.LITERT: Format.TFLITE,
            Runtime.ONNXRUNTIME: Format.ONNX,
        }[self]

    @classmethod
    def parse(cls, value: str) -> "Runtime":
        """Accept a runtime name or a format name (``--format onnx`` == ``--format onnxruntime``)."""
        v = str(value).strip().lower()
        for fmt in Format:
            if v == fmt.value:
                return fmt.runtime
        return _parse(cls, "runtime", v, extra=[f.value for f in Format])


class Format(str, enum.Enum):
    """What a packager writes."""

    PTE = "pte"
    TFLITE = "tflite"
    ONNX = "onnx"

    @property
    def runtime(self) -> Runtime:
        return {Format.PTE: Runtime.EXECUTORCH, Format.TFLITE: Runtime.LITERT, Format.ONNX: Runtime.ONNXRUNTIME}[self]

    @property
    def suffix(self) -> str:
        return "." + self.value


def _parse(cls, kind: str, value: str, extra: list[str] | None = None):
    v = str(value).strip().lower()
    for member in cls:
        if member.value == v:
            return member
    names = [m.value for m in cls] + (extra or [])
    raise UsageError(unknown_name_message(kind, str(value), names))


class Target(str, enum.Enum):
    """Where a runtime executes a model on the device: the host CPU or an accelerator backend.

    A profile names the targets of each runtime (``execution``); a packager declares the targets its runtime has a
    backend for (``Capabilities.targets``); the planner rejects a runtime with none of the profile's targets.
    NPU delegates (QNN, NNAPI, Core ML) are later members.
    """

    CPU = "cpu"
    CUDA = "cuda"          # NVIDIA GPUs through CUDA kernels (onnxruntime: CUDAExecutionProvider)
    TENSORRT = "tensorrt"  # NVIDIA GPUs through TensorRT engines (onnxruntime: TensorrtExecutionProvider)

    @property
    def is_accelerator(self) -> bool:
        return self is not Target.CPU

    @classmethod
    def parse(cls, value: str) -> "Target":
        return _parse(cls, "execution target", value)
