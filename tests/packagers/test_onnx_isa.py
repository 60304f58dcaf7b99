"""The target device's ISA picks ONNX dynamic int8's kernels: int8 weights (U8S8) where the profile's device has x86
VNNI, uint8 weights (U8U8) everywhere else. Real exports run in real onnxruntime; the weights' stored type is read
back from the written file."""

from __future__ import annotations

import numpy as np
import pytest
from packager_cases import SEQ, cosines, packager_or_skip

from edgeopt.formats import Precision, Runtime
from edgeopt.quantize import default_scheme


@pytest.fixture(scope="module")
def packager():
    return packager_or_skip(Runtime.ONNXRUNTIME)


def _weight_types(path) -> set[str]:
    """Element types of the quantized weight initializers the int8 kernels read (QAttention / MatMulInteger /
    DynamicQuantizeMatMul weights), by name."""
    import onnx

    model = onnx.load(str(path))
    inits = {i.name: i for i in model.graph.initializer}
    kinds = set()
    for node in model.graph.node:
        if node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention", "MatMulIntegerToFloat"):
            weight = node.input[1]
            if weight in inits:
                kinds.add(onnx.TensorProto.DataType.Name(inits[weight].data_type))
    return kinds


@pytest.mark.parametrize(("isa", "stored", "kernels"), [
    ((), "UINT8", "U8U8"),
    (("avx2", "fma"), "UINT8", "U8U8"),
    (("neon", "dotprod"), "UINT8", "U8U8"),
    (("avx2", "avx512_vnni"), "INT8", "U8S8"),
    (("avx_vnni",), "INT8", "U8S8"),
])
def test_int8_weights_follow_the_devices_vnni(packager, tiny_bert, tmp_path, isa, stored, kernels):
    import torch

    samples = tiny_bert.sample_inputs(4, seq_len=SEQ, split="eval")
    calibration = tiny_bert.sample_inputs(4, seq_len=SEQ, split="calibration")
    art = packager.export(tiny_bert, default_scheme(Precision.INT8), tmp_path / "int8", shapes=(1, SEQ),
                          calibration=calibration, isa=isa)
    assert _weight_types(art.path) == {stored}
    assert kernels in art.details["quantization"]["weights"]
    outputs = packager.run(art, [tuple(t.numpy() for t in s) for s in samples])
    with torch.no_grad():
        reference = [[t.numpy() for t in tiny_bert.module(*s)] for s in samples]
    assert min(cosines(reference, outputs)) > 0.99


def test_the_profiles_isa_reaches_the_onnx_artifact(tiny_bert_dir, make_small_profile, tmp_path):
    """edgeopt package with a profile whose device has VNNI: the manifest says which kernels, and it verifies."""
    from edgeopt import api
    from edgeopt.profiles import Profile

    d = make_small_profile().to_dict()
    d["name"] = "vnni-desktop"
    d["device"]["isa"] = ["avx2", "fma", "avx512_vnni"]
    d["limits"]["precisions"] = ["int8"]
    d["runtimes"] = ["onnxruntime"]
    result = api.package(str(tiny_bert_dir), profile=Profile.from_dict(d, source="<vnni>"), out=tmp_path / "dist")
    art = result.manifest["artifacts"][0]
    assert art["details"]["quantization"]["weights"].startswith("int8 (U8S8")
    assert result.manifest["profile"]["device"]["isa"] == ["avx2", "fma", "avx512_vnni"]
    assert result.manifest["fidelity"]["mean_cosine"] > 0.99
    assert _weight_types(result.bundle_path / art["file"]) == {"INT8"}
    assert np.isfinite(result.manifest["fidelity"]["min_cosine"])
