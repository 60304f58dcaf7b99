"""onnxruntime's transformer fusions in the ONNX packager, on real models run in onnxruntime (no mocks).

The fused graph (TorchScript export + onnxruntime.transformers.optimizer, model_type bert) replaces the dynamo
export before quantization when its inputs and outputs are the same tensors and it matches the unfused graph;
anything else keeps the unfused graph with the reason in ``details["fusions"]``. The fused Attention reads the
raw 2-D mask, so padding anywhere (right, left, holes) is honoured: checked on padded inputs at full length,
where the mask really has zeros (``packager.run`` trims a dynamic-length sample to its real tokens).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from packager_cases import SEQ, build, cosines, packager_or_skip

from edgeopt.formats import Precision, Runtime
from edgeopt.quantize import Activations, QuantScheme, default_scheme

# Two layers: per layer one Attention, two SkipLayerNormalization (after attention and after the FFN),
# one BiasGelu; EmbedLayerNormalization in fp32 only (int8 keeps its int8 Gather tables).
TINY_FP32_FUSIONS = {"Attention": 2, "BiasGelu": 2, "EmbedLayerNormalization": 1, "SkipLayerNormalization": 4}
TINY_INT8_FUSIONS = {"Attention": 2, "BiasGelu": 2, "SkipLayerNormalization": 4}
MINILM_INT8_FUSIONS = {"Attention": 6, "BiasGelu": 6, "SkipLayerNormalization": 12}
MINILM_PADDED_MIN_COSINE = 0.995  # the target; measured mean 0.9973 (min 0.9952: the left-padded one)


@pytest.fixture(scope="module")
def packager():
    return packager_or_skip(Runtime.ONNXRUNTIME)


@pytest.fixture(scope="module")
def tiny_builds(packager, tiny_bert, tmp_path_factory):
    work = tmp_path_factory.mktemp("onnx-fusions")
    return {name: build(packager, tiny_bert, scheme, work / name)
            for name, scheme in (("fp32", QuantScheme(Precision.FP32)), ("int8", default_scheme(Precision.INT8)))}


def padded_samples(loaded, n: int, seq: int) -> list[tuple]:
    """Held-out samples at full length (the mask has zeros), one of them left-padded with a hole."""
    samples = [tuple(t.numpy() for t in s) for s in loaded.sample_inputs(n, seq_len=seq, split="eval")]
    ids, mask, *rest = samples[0]
    real = int(mask.sum())
    assert real < seq - 2  # really padded
    shifted = [np.roll(t, seq - real, axis=1) for t in (ids, mask, *rest)]  # left padding
    shifted[1][0, seq - 2] = 0  # and a masked token among the real ones
    return samples + [tuple(shifted)]


def run_full_length(artifact, samples):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(artifact.path), opts, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    specs = [s.name for s in artifact.inputs]
    return [session.run(None, {n: s[specs.index(n)] for n in names}) for s in samples]


def eager(loaded, samples):
    import torch

    with torch.no_grad():
        return [[t.numpy() for t in loaded.module(*(torch.from_numpy(x) for x in s))] for s in samples]


def test_fp32_fuses_every_pattern_and_stays_tight(tiny_builds, tiny_bert):
    artifact, outputs, reference = tiny_builds["fp32"]
    fusions = artifact.details["fusions"]
    assert fusions["applied"] is True and fusions["ops"] == TINY_FP32_FUSIONS
    assert fusions["max_abs_err"] < 1e-5 and fusions["min_cosine"] > 0.99999  # vs the dynamo graph; measured 7e-7
    assert TINY_FP32_FUSIONS.items() <= artifact.details["ops"].items()  # still there after the offline optimization
    for ref, out in zip(reference, outputs):  # at each sample's own length; measured 7e-7
        assert max(float(np.abs(r - o).max()) for r, o in zip(ref, out)) < 1e-4
    assert [(s.name, s.shape) for s in artifact.inputs] == [(n, (1, -1)) for n in tiny_bert.input_names]
    assert artifact.lengths.variable and artifact.lengths.max == SEQ


@pytest.mark.parametrize("name, tolerance", [("fp32", 1e-4), ("int8", None)])
def test_fused_attention_honours_any_padding(tiny_builds, tiny_bert, name, tolerance):
    samples = padded_samples(tiny_bert, 4, SEQ)
    outputs, reference = run_full_length(tiny_builds[name][0], samples), eager(tiny_bert, samples)
    if tolerance is not None:
        for ref, out in zip(reference, outputs):  # measured 1.8e-7, the left-padded one included
            assert float(np.abs(ref[0] - out[0]).max()) < tolerance
    assert min(cosines(reference, outputs)) >= 0.999  # int8 measured 0.999985


def test_int8_quantizes_the_fused_ops(tiny_builds):
    artifact, outputs, reference = tiny_builds["int8"]
    assert artifact.details["fusions"]["ops"] == TINY_INT8_FUSIONS
    ops = artifact.details["ops"]
    assert ops.get("QAttention") == 2 and "Attention" not in ops and "EmbedLayerNormalization" not in ops
    assert np.mean(cosines(reference, outputs)) >= 0.9995  # measured 0.99999
    cov = artifact.coverage
    # The packed QKV weight counts as its three layers: 2 x (query, key, value, attention out, FFN in, FFN out).
    assert len([q for q in cov.quantized if q.startswith("model.encoder.layer.")]) == 12
    assert "model.encoder.layer.1.attention.self.value" in cov.quantized
    assert cov.total == 15 and cov.unexpected() == {}
    assert artifact.details["quantization"]["smoothed_inputs"] == 8  # the fused Attention's input is smoothed too


@pytest.mark.parametrize("scheme, reason", [
    (QuantScheme(Precision.INT8, Activations.STATIC, quantize_embeddings=True), "only dynamic int8"),
    (default_scheme(Precision.INT4), "only dynamic int8"),
    (default_scheme(Precision.INT8).with_keep_float(("model.encoder.layer.0.output.dense",)), "keep_float"),
    (QuantScheme(Precision.FP16), "fp16"),
])
def test_schemes_without_fused_kernels_keep_the_unfused_graph(packager, tiny_bert, tmp_path, scheme, reason):
    artifact = packager.export(tiny_bert, scheme, tmp_path, shapes=(1, SEQ),
                               calibration=tiny_bert.sample_inputs(4, seq_len=SEQ, split="calibration"))
    fusions = artifact.details["fusions"]
    assert fusions["applied"] is False and reason in fusions["reason"]
    # (onnxruntime's own load-time fusions still give the offline-optimized graph SkipLayerNorm and BiasGelu)
    assert not {"Attention", "QAttention", "EmbedLayerNormalization"} & set(artifact.details["ops"])


def test_a_model_the_fusions_do_not_know_is_packaged_unfused(packager, tmp_path):
    from edgeopt.models import load_model

    (tmp_path / "mlp.py").write_text(
        "import torch\n\ndef make_model():\n    torch.manual_seed(0)\n"
        "    net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.GELU(), torch.nn.Linear(16, 4)).eval()\n"
        "    return net, (torch.randn(1, 8),)\n", encoding="utf-8")
    loaded = load_model(f"{tmp_path / 'mlp.py'}:make_model")
    artifact = packager.export(loaded, QuantScheme(Precision.FP32), tmp_path / "out", shapes=(1, SEQ), calibration=[])
    assert artifact.details["fusions"] == {
        "applied": False, "reason": "not attempted: onnxruntime's transformer fusions are applied to the encoders "
                                    "bert, distilbert, electra, roberta, xlm-roberta; "
                                    "this model is not a transformers model"}


def test_the_fused_artifact_is_byte_deterministic(packager, tiny_bert, tiny_builds, tmp_path):
    from edgeopt.packagers import onnx as onnx_packager

    first = tiny_builds["int8"][0].path.read_bytes()
    onnx_packager._last_export.clear()  # export and fuse again, not from the in-memory copies
    onnx_packager._last_fused.clear()
    again = packager.export(tiny_bert, default_scheme(Precision.INT8), tmp_path, shapes=(1, SEQ),
                            calibration=tiny_bert.sample_inputs(4, seq_len=SEQ, split="calibration"))
    assert again.details["fusions"]["applied"] is True
    assert hashlib.sha256(again.path.read_bytes()).hexdigest() == hashlib.sha256(first).hexdigest()


def test_minilm_int8_fuses_and_keeps_the_target_on_padded_inputs(packager, minilm, tmp_path: Path):
    artifact = packager.export(minilm, default_scheme(Precision.INT8), tmp_path, shapes=(1, 128),
                               calibration=minilm.sample_inputs(16, seq_len=128, split="calibration"))
    assert artifact.details["fusions"]["applied"] is True
    assert artifact.details["fusions"]["ops"] == MINILM_INT8_FUSIONS
    assert artifact.details["ops"]["QAttention"] == 6
    samples = padded_samples(minilm, 16, 128)
    values = cosines(eager(minilm, samples), run_full_length(artifact, samples))  # sentence_embedding
    assert np.mean(values) >= MINILM_PADDED_MIN_COSINE and min(values) >= 0.99
    cov = artifact.coverage
    assert len(cov.quantized) == 39 and cov.unexpected() == {}  # 36 linears (18 of them in 6 packed QKV) + 3 tables
