"""LiteRT weights: which module each weighted op of a .tflite came from, and how it is really stored.

See the module docstring of ``edgeopt.packagers.tflite`` for why weights are matched by content. Every
signature's subgraph is read (a text encoder has one per length bucket, its weights shared buffers): a
module is as quantized as its least quantized use in any of them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from edgeopt.errors import ExportError
from edgeopt.formats import Precision
from edgeopt.packagers import Coverage
from edgeopt.quantize import QuantScheme

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

# The operand index of the weight for each weighted op.
WEIGHT_OPERAND = {"FULLY_CONNECTED": 1, "BATCH_MATMUL": 1, "CONV_2D": 1, "DEPTHWISE_CONV_2D": 1,
                  "EMBEDDING_LOOKUP": 1, "GATHER": 0}
LINEAR_OPS = ("FULLY_CONNECTED", "BATCH_MATMUL", "CONV_2D", "DEPTHWISE_CONV_2D")
EMBEDDING_OPS = ("EMBEDDING_LOOKUP", "GATHER")  # GATHER tables have no weight quantization in ai-edge-quantizer
QUANTIZED_TYPES = ("INT8", "INT4")


# --- weights: module ↔ op mapping --------------------------------------------------------------


@dataclass(frozen=True)
class WeightOp:
    """One weighted op of the fp32 model and the module its weight came from."""

    module: str
    kind: str  # "linear" | "embedding"
    op: str  # TFLite op name
    scope: str  # ai-edge-quantizer's op scope: output tensor names joined by ';', plus ';'
    shape: tuple[int, ...]  # of the weight, as stored
    subgraph: int = 0  # index of the signature's subgraph the op is in


@dataclass
class WeightMap:
    ops: list[WeightOp] = field(default_factory=list)
    folded: dict[str, tuple[int, ...]] = field(default_factory=dict)  # embedding → shape of the constant of its rows
    absent: list[str] = field(default_factory=list)  # modules with no weight in the graph (dead code)
    unmapped: list[WeightOp] = field(default_factory=list)  # constant weights that match no module (module = a label)

    def modules(self) -> set[str]:
        return {w.module for w in self.ops}


def match_weights(path: Path, module) -> WeightMap:
    """Map every weighted op of every subgraph of the fp32 .tflite at ``path`` to the module it came from."""
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model(str(path))
    layouts = _module_layouts(module)
    by_hash: dict[tuple, list[str]] = {}
    for name, (_, variants) in layouts.items():
        for arr in variants:
            by_hash.setdefault(_fingerprint(arr), []).append(name)
    result, matched = WeightMap(), set()
    for gi, graph in enumerate(model.subgraphs):
        for op_name, op, data in _weighted_ops(model, graph, fbu):
            scope = "".join(graph.tensors[i].name.decode() + ";" for i in op.outputs if i >= 0)
            candidates = by_hash.get(_fingerprint(data)) or _scaled_matches(data, layouts)
            name = _prefer_kind(candidates, layouts, op_name)
            if name is None:
                label = f"{op_name} on {graph.tensors[op.inputs[WEIGHT_OPERAND[op_name]]].name.decode()[-80:]}"
                result.unmapped.append(WeightOp(label, "unmapped", op_name, scope, tuple(data.shape), gi))
                continue
            matched.add(name)
            result.ops.append(WeightOp(name, layouts[name][0], op_name, scope, tuple(data.shape), gi))
    for name, (kind, variants) in layouts.items():
        if name in matched:
            continue
        folded = None
        if kind == "embedding":  # the last subgraph: the largest bucket, or the only one
            folded = _folded_rows(variants[0], model, model.subgraphs[-1])
        if folded:
            result.folded[name] = folded
        else:
            result.absent.append(name)
    return result


def _module_layouts(module) -> dict[str, tuple[str, list]]:
    """module name → (kind, its weight in every TFLite layout it may take), for linears, convs and embeddings."""
    import numpy as np
    import torch

    out = {}
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.Embedding):
            out[name] = ("embedding", [m.weight.detach().numpy()])
        elif isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D":
            w = m.weight.detach().numpy()
            w = w.T if type(m).__name__ == "Conv1D" else w  # transformers' Conv1D stores [in, out]
            out[name] = ("linear", [w, w.T])  # FULLY_CONNECTED [out, in]; BATCH_MATMUL rhs [in, out]
        elif isinstance(m, torch.nn.Conv2d):
            w = m.weight.detach().numpy()
            out[name] = ("linear", [np.transpose(w, (0, 2, 3, 1)), np.transpose(w, (1, 2, 3, 0))])  # OHWI; depthwise 1HWO
    return {k: (kind, [np.ascontiguousarray(v, dtype=np.float32) for v in vs]) for k, (kind, vs) in out.items()}


def _weighted_ops(model, graph, fbu) -> Iterator[tuple[str, object, np.ndarray]]:
    """(op name, op, fp32 weight) for each weighted op whose weight is a constant."""
    import numpy as np

    for op in graph.operators:
        op_name = fbu.opcode_to_name(model, op.opcodeIndex)
        index = WEIGHT_OPERAND.get(op_name)
        if index is None or index >= len(op.inputs) or op.inputs[index] < 0:
            continue
        tensor = graph.tensors[op.inputs[index]]
        data = model.buffers[tensor.buffer].data
        if data is None or len(data) == 0 or tensor.type != 0:  # 0 = FLOAT32
            continue
        yield op_name, op, np.frombuffer(bytes(data), np.float32).reshape(tensor.shape)


def _fingerprint(arr) -> tuple:
    return tuple(arr.shape), hashlib.sha1(arr.tobytes()).hexdigest()


def _scaled_matches(data, layouts) -> list[str]:
    """Modules whose weight equals ``data`` up to a per-row or per-column scale (folded norms)."""

    a = data.reshape(data.shape[0], -1)
    hits = []
    for name, (_, variants) in layouts.items():
        for v in variants:
            if v.shape == data.shape and any(_same_direction(a, v.reshape(a.shape), axis) for axis in (0, 1)):
                hits.append(name)
                break
    return hits


def _same_direction(a, b, axis: int) -> bool:
    import numpy as np

    na, nb = np.linalg.norm(a, axis=axis), np.linalg.norm(b, axis=axis)
    live = (na > 0) & (nb > 0)
    if not np.array_equal(na > 0, nb > 0) or not live.any():
        return False
    cos = np.abs(np.sum(a * b, axis=axis))[live] / (na[live] * nb[live])
    return bool(np.all(cos > 0.9999))


def _prefer_kind(candidates: list[str], layouts, op_name: str) -> str | None:
    """Tied weights match several modules: the embedding for a lookup op, the linear for the others."""
    if not candidates:
        return None
    want = "embedding" if op_name in EMBEDDING_OPS else "linear"
    same = [c for c in candidates if layouts[c][0] == want]
    return (same or candidates)[0]


def _folded_rows(table, model, graph) -> tuple[int, ...] | None:
    """The shape of a float constant holding consecutive rows of ``table`` (lookups at fixed indices)."""
    import numpy as np

    dim = table.shape[1]
    for tensor in graph.tensors:
        data = model.buffers[tensor.buffer].data
        if tensor.type != 0 or data is None or len(data) == 0 or not tensor.shape or tensor.shape[-1] != dim:
            continue
        rows = np.frombuffer(bytes(data), np.float32).reshape(-1, dim)
        starts = np.flatnonzero(np.all(table == rows[0], axis=1))
        if any(np.array_equal(table[s:s + len(rows)], rows) for s in starts):
            return tuple(tensor.shape)
    return None


# --- what the artifact really stores -----------------------------------------------------------


def stored_weight_types(path: Path, ops: list[WeightOp]) -> dict[str, str]:
    """module → the TFLite type its weight is stored as in ``path`` (INT8, INT4, FLOAT16, FLOAT32).

    A weight-only op reads its weight through a DEQUANTIZE; the type is that of the DEQUANTIZE's input.
    Raises ExportError when a mapped op is missing from the model (the quantizer renamed its outputs).
    """
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    model = fbu.read_model(str(path))
    index = []
    for graph in model.subgraphs:
        producer, by_scope = {}, {}
        for op in graph.operators:
            name = fbu.opcode_to_name(model, op.opcodeIndex)
            for t in op.outputs:
                producer[t] = (name, op)
            by_scope["".join(graph.tensors[i].name.decode() + ";" for i in op.outputs if i >= 0)] = (name, op)
        index.append((graph, producer, by_scope))
    stored: dict[str, str] = {}
    for w in ops:
        graph, producer, by_scope = index[w.subgraph] if w.subgraph < len(index) else (None, {}, {})
        if w.scope not in by_scope:
            raise ExportError(f"tflite: op {w.op} of {w.module} is not in the quantized model (subgraph "
                              f"{w.subgraph}, scope {w.scope[:80]})")
        _, op = by_scope[w.scope]
        t = op.inputs[WEIGHT_OPERAND[w.op]]
        while t in producer and producer[t][0] == "DEQUANTIZE":
            t = producer[t][1].inputs[0]
        kind = fbu.type_to_name(graph.tensors[t].type)
        # A module used by several ops is as float as its least quantized use.
        stored[w.module] = kind if w.module not in stored else max(stored[w.module], kind, key=_type_rank)
    return stored


def _type_rank(kind: str) -> int:
    return {"INT4": 0, "INT8": 1, "FLOAT16": 2}.get(kind, 3)


def weight_coverage(scheme: QuantScheme, weights: WeightMap, stored: dict[str, str],
              unmapped: dict[str, str]) -> Coverage | None:
    """Quantized vs float per module; raises ExportError when a weight stayed float that was not asked to.

    ``unmapped`` (constant weights that match no module, by label) must not stay float either.
    """
    if scheme.precision is Precision.FP32:
        return None
    keep = set(scheme.keep_float)
    kinds = {w.module: w.kind for w in weights.ops}
    wanted = ("FLOAT16",) if scheme.precision is Precision.FP16 else QUANTIZED_TYPES
    quantized, kept, wrong = [], {}, {}
    for module, kind in sorted(stored.items()):
        if module in keep:
            if kind != "FLOAT32":
                wrong[module] = f"asked to stay float, stored {kind}"
            kept[module] = "kept float: sensitive layer"
        elif kind in wanted:
            quantized.append(module)
        elif kinds[module] == "embedding" and not scheme.quantize_embeddings and scheme.is_quantized:
            kept[module] = "kept float: embeddings not quantized by this scheme"
        else:
            kept[module] = f"not quantized by ai-edge-quantizer (stored {kind})"
    for module, shape in sorted(weights.folded.items()):
        kept[module] = (f"kept float: folded by the converter into a {list(shape)} constant of the rows it reads "
                        "(fixed indices); no table lookup remains")
    coverage = Coverage(tuple(quantized), kept)
    wrong.update(coverage.unexpected())
    wrong.update({label: f"stored {kind}" for label, kind in unmapped.items() if kind == "FLOAT32"})
    if wrong:
        names = "; ".join(f"{k}: {v}" for k, v in sorted(wrong.items()))
        raise ExportError(f"tflite: {scheme.precision.value} artifact does not store weights as planned: {names}")
    if scheme.precision is Precision.FP16:
        return None  # the gate above is the point; "N of M quantized" would misdescribe fp16
    return coverage
