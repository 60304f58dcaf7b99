"""The LiteRT packager on real models, converted by litert-torch and run in ai-edge-litert (no mocks).

Models: the tiny BERT from conftest (every precision), a tiny Llama (LlamaForCausalLM), a small conv net
with a BatchNorm the converter folds, and all-MiniLM-L6-v2 for the int8 target. Each model is converted
once: the packager keeps its last fp32 conversion by content, so the precisions after the first only
quantize (a conversion takes 20-40 s here).

Parity levels: fp32 artifacts against the eager model, tight (max abs error; measured 1e-6). Quantized
artifacts against the fp32 eager model by mean cosine of the first output, thresholds below. There is no
eager model of the quantized artifacts to compare tightly with: ai-edge-quantizer rewrites the flatbuffer,
and the dynamic kernels quantize activations at run time.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from packager_cases import SEQ, build, cosines, packager_or_skip

from edgeopt.errors import ExportError, UnsupportedError
from edgeopt.formats import Format, Precision, Runtime
from edgeopt.quantize import Activations, Granularity, QuantScheme, default_scheme

REPO = Path(__file__).resolve().parents[2]

# Mean cosine of the first output vs fp32 eager, per build. Measured values in comments (this machine,
# 8 eval samples at seq 32); thresholds leave room for kernel differences across CPUs.
TINY_BERT_SCHEMES = {
    "fp32": (QuantScheme(Precision.FP32), 0.99999),  # measured 1.000000
    "fp16": (QuantScheme(Precision.FP16), 0.9999),  # measured 1.000000
    "int8-dynamic": (default_scheme(Precision.INT8), 0.999),  # measured 0.99999
    "int8-static": (QuantScheme(Precision.INT8, Activations.STATIC, quantize_embeddings=True), 0.999),  # 0.99999
    "int8-weight-only": (QuantScheme(Precision.INT8, Activations.FLOAT, quantize_embeddings=True), 0.999),  # 0.99999
    "int4-g32": (default_scheme(Precision.INT4), 0.995),  # measured 0.99999
}
TINY_LLAMA_MIN_COSINE = {"int8-dynamic": 0.999, "int4-g32": 0.98}  # logits; measured 0.99991 and 0.99127
MINILM_INT8_MIN_COSINE = 0.995  # the target; measured 0.99788 (min over samples 0.99638)
MINILM_INT8_MAX_BYTES = 24_500_000  # 0.27 x fp32 (90.7 MB); measured 23.50 MB


@pytest.fixture(scope="module")
def packager():
    return packager_or_skip(Runtime.LITERT)


@pytest.fixture(scope="module")
def tiny_bert_builds(packager, tiny_bert, tmp_path_factory):
    work = tmp_path_factory.mktemp("tflite-bert")
    return {name: build(packager, tiny_bert, scheme, work / name) for name, (scheme, _) in TINY_BERT_SCHEMES.items()}


# --- registration and import weight ------------------------------------------------------------


def test_registered_for_litert_and_light_to_import():
    from edgeopt.packagers import get_packager
    from edgeopt.packagers.tflite import TflitePackager

    assert isinstance(get_packager(Runtime.LITERT), TflitePackager)
    assert Runtime.LITERT.format is Format.TFLITE
    code = ("import sys, edgeopt.packagers.tflite; "
            "print(sorted(m for m in ('torch', 'litert_torch', 'ai_edge_quantizer', 'ai_edge_litert') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


# --- tiny BERT: every precision ----------------------------------------------------------------


def test_io_is_named_typed_and_in_manifest_order(tiny_bert_builds, tiny_bert):
    artifact, outputs, reference = tiny_bert_builds["fp32"]
    assert [(s.name, s.dtype, s.shape) for s in artifact.inputs] == [
        (name, "int32", (1, SEQ)) for name in tiny_bert.input_names]  # litert-torch turns int64 ids into int32
    assert [(s.name, s.shape) for s in artifact.outputs] == [("sentence_embedding", (1, 32)),
                                                             ("last_hidden_state", (1, SEQ, 32))]
    # Same order as the eager tuple, and tight: measured 9.5e-7.
    for ref, out in zip(reference, outputs):
        assert [o.shape for o in out] == [r.shape for r in ref]
        assert max(float(np.abs(r - o).max()) for r, o in zip(ref, out)) < 1e-4


@pytest.mark.parametrize("name", list(TINY_BERT_SCHEMES))
def test_tiny_bert_fidelity(tiny_bert_builds, name):
    _, outputs, reference = tiny_bert_builds[name]
    assert np.mean(cosines(reference, outputs)) >= TINY_BERT_SCHEMES[name][1]
    assert all(np.isfinite(o).all() for out in outputs for o in out)
    if name != "fp32":  # it really changed the weights: fp32 is within 1e-6, these are not
        assert max(float(np.abs(r[1] - o[1]).max()) for r, o in zip(reference, outputs)) > 1e-4


@pytest.mark.parametrize("name, stored", [
    ("fp32", {"FLOAT32": 14}),
    ("fp16", {"FLOAT16": 14}),
    ("int8-dynamic", {"INT8": 14}),
    ("int8-static", {"INT8": 14}),
    ("int8-weight-only", {"INT8": 14}),
    ("int4-g32", {"INT4": 12, "INT8": 2}),  # linears int4, embedding tables int8 per row
])
def test_tiny_bert_stored_weights_and_coverage(tiny_bert_builds, name, stored):
    artifact, _, _ = tiny_bert_builds[name]
    assert artifact.details["weights"] == stored
    # BertModel's pooler feeds no output of the wrapper: the converter drops it.
    assert artifact.details["not_in_graph"] == ["model.pooler.dense"]
    if name in ("fp32", "fp16"):
        assert artifact.coverage is None
        return
    cov = artifact.coverage
    linears = [q for q in cov.quantized if q.startswith("model.encoder.layer.")]
    assert len(linears) == 12  # 2 layers x (query, key, value, attention out, intermediate, output)
    assert {"model.embeddings.word_embeddings", "model.embeddings.token_type_embeddings"} <= set(cov.quantized)
    # Position ids are fixed at export: the rows they read become a float constant, no table remains.
    assert list(cov.kept_float) == ["model.embeddings.position_embeddings"]
    assert cov.kept_float["model.embeddings.position_embeddings"].startswith("kept float: folded by the converter")
    assert cov.unexpected() == {}


def test_sizes_shrink_with_precision(tiny_bert_builds):
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    size = {name: build[0].path.stat().st_size for name, build in tiny_bert_builds.items()}
    assert size["int4-g32"] < size["int8-dynamic"] < size["fp16"] < size["fp32"]
    # The ratios on the weight bytes (buffers), not the file: since the tiny BERT carries one signature per
    # length bucket (16 and 32), its two subgraphs' op and tensor tables (~145 KB) outweigh its ~135 KB of
    # weights, and whole-file ratios (int8 0.74 x fp32) no longer say what precision does to the weights.
    weights = {name: sum(len(b.data) for b in fbu.read_model(str(build[0].path)).buffers if b.data is not None)
               for name, build in tiny_bert_builds.items()}
    assert weights["fp16"] < 0.75 * weights["fp32"] and weights["int8-dynamic"] < 0.6 * weights["fp32"]


def test_delegation_counts_what_xnnpack_leaves(tiny_bert_builds):
    d = tiny_bert_builds["int8-dynamic"][0].details["delegation"]
    # The embedding lookups and the attention-mask plumbing stay on the TFLite kernels (measured 123 of 133).
    assert d["non_delegated"]["EMBEDDING_LOOKUP"] == 2
    assert d["delegated_ops"] + sum(d["non_delegated"].values()) == d["total_ops"]
    assert d["partitions"] == 1 and 0.9 < d["share"] < 1.0
    assert "FULLY_CONNECTED" not in d["non_delegated"]


def test_weight_only_int4_leaves_its_linears_outside_xnnpack(packager, tiny_bert, tmp_path):
    scheme = QuantScheme(Precision.INT4, Activations.FLOAT, Granularity.PER_CHANNEL, quantize_embeddings=True)
    artifact = packager.export(tiny_bert, scheme, tmp_path, shapes=(1, SEQ), calibration=[])
    d = artifact.details["delegation"]
    # Why int4 defaults to dynamic activations: here every FULLY_CONNECTED dequantizes its weight each run.
    assert d["non_delegated"]["FULLY_CONNECTED"] == 12 and d["non_delegated"]["DEQUANTIZE"] == 14
    assert artifact.details["weights"] == {"INT4": 12, "INT8": 2}


def test_keep_float_layers_stay_float(packager, tiny_bert, tmp_path):
    keep = ("model.encoder.layer.0.output.dense", "model.encoder.layer.1.output.dense")
    scheme = QuantScheme(Precision.INT8, Activations.STATIC, quantize_embeddings=True, keep_float=keep)
    artifact = packager.export(tiny_bert, scheme, tmp_path, shapes=(1, SEQ),
                               calibration=tiny_bert.sample_inputs(4, seq_len=SEQ, split="calibration"))
    assert artifact.details["weights"] == {"INT8": 12, "FLOAT32": 2}
    assert {k: v for k, v in artifact.coverage.kept_float.items() if k in keep} == {
        k: "kept float: sensitive layer" for k in keep}
    assert len(artifact.coverage.quantized) == 12


def test_coverage_gate_refuses_float_weights(packager, tiny_bert, tiny_bert_builds):
    from edgeopt.packagers import tflite_weights

    path = tiny_bert_builds["fp32"][0].path
    weights = tflite_weights.match_weights(path, tiny_bert.module)
    stored = tflite_weights.stored_weight_types(path, weights.ops)  # the real fp32 artifact: every weight FLOAT32
    with pytest.raises(ExportError, match=r"int8 artifact does not store weights as planned: .*attention\.self\.query"):
        tflite_weights.weight_coverage(default_scheme(Precision.INT8), weights, stored, {})
    int8 = tiny_bert_builds["int8-dynamic"][0].path
    keep = default_scheme(Precision.INT8).with_keep_float(("model.encoder.layer.0.output.dense",))
    with pytest.raises(ExportError, match=r"layer\.0\.output\.dense: asked to stay float, stored INT8"):
        tflite_weights.weight_coverage(keep, weights, tflite_weights.stored_weight_types(int8, weights.ops), {})


@pytest.mark.parametrize("scheme, match", [
    (QuantScheme(Precision.INT8, Activations.DYNAMIC, symmetric=False), "symmetric weights only"),
    (QuantScheme(Precision.INT8, Activations.DYNAMIC, Granularity.PER_GROUP, group_size=32), "int8 weights per group"),
    (QuantScheme(Precision.INT4, Activations.DYNAMIC, Granularity.PER_GROUP, group_size=48), "group_size 48 .* 32, 64, 128, 256"),
    (QuantScheme(Precision.INT4, Activations.FLOAT, Granularity.PER_GROUP, group_size=32), "need dynamic int8 activations"),
    (QuantScheme(Precision.INT4, Activations.STATIC), "static int4 is not built"),
    (QuantScheme(Precision.FP16, Activations.DYNAMIC), "fp16 takes float activations"),
])
def test_schemes_it_cannot_build_are_refused_with_the_reason(packager, tiny_bert, tmp_path, scheme, match):
    with pytest.raises(UnsupportedError, match=match):
        packager.export(tiny_bert, scheme, tmp_path, shapes=(1, SEQ), calibration=[])
    assert not any(tmp_path.iterdir())  # refused before converting anything


def test_static_without_calibration_is_refused(packager, tiny_bert, tmp_path):
    with pytest.raises(UnsupportedError, match="needs calibration samples"):
        packager.export(tiny_bert, QuantScheme(Precision.INT8, Activations.STATIC), tmp_path, shapes=(1, SEQ),
                        calibration=[])


# --- the device backend ------------------------------------------------------------------------


def _backend():
    spec = importlib.util.spec_from_file_location("litert_backend", REPO / "runtimes" / "litert" / "backend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_device_backend_runs_the_artifact_by_manifest_names(tiny_bert_builds, tiny_bert):
    backend = _backend()
    assert backend.name == "litert" and backend.pip_package == "ai-edge-litert"
    assert re.fullmatch(r"ai-edge-litert \d+\.\d+\.\d+.*", backend.version())
    artifact, outputs, _ = tiny_bert_builds["int8-dynamic"]
    model = backend.load(str(artifact.path), 2)
    assert sorted(model.input_names) == sorted(tiny_bert.input_names)
    assert sorted(model.output_names) == sorted(tiny_bert.output_names)
    sample = tiny_bert.sample_inputs(1, seq_len=SEQ, split="eval")[0]
    feeds = {name: t.numpy() for name, t in zip(tiny_bert.input_names, sample)}  # int64, as in inputs.npz
    got = dict(zip(model.output_names, model.run(feeds)))
    for spec, expected in zip(artifact.outputs, outputs[0]):
        np.testing.assert_array_equal(got[spec.name], expected)


# --- tiny Llama and a conv net -----------------------------------------------------------------


def make_tiny_llama(path: Path) -> Path:
    """LlamaForCausalLM with 2 layers and a word-level tokenizer over the corpus's most frequent words."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    text = (REPO / "edgeopt" / "corpus.txt").read_text(encoding="utf-8").lower()
    specials = ["<pad>", "<unk>", "<s>", "</s>"]
    words = [w for w, _ in Counter(re.findall(r"[a-z]+|[^\sa-z]", text)).most_common(128 - len(specials))]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(specials + words)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         architectures=["LlamaForCausalLM"], pad_token_id=0, bos_token_id=2, eos_token_id=3)
    LlamaForCausalLM(config).eval().save_pretrained(path)
    return path


def test_tiny_llama_int8_and_int4(packager, tmp_path):
    from edgeopt.models import load_model

    loaded = load_model(str(make_tiny_llama(tmp_path / "tiny-llama")))
    for name, scheme, stored in (("int8-dynamic", default_scheme(Precision.INT8), {"INT8": 16}),
                                 ("int4-g32", default_scheme(Precision.INT4), {"INT4": 15, "INT8": 1})):
        artifact, outputs, reference = build(packager, loaded, scheme, tmp_path / name)
        assert [(s.name, s.shape) for s in artifact.outputs] == [("logits", (1, SEQ, 128))]
        assert np.mean(cosines(reference, outputs)) >= TINY_LLAMA_MIN_COSINE[name]
        assert artifact.details["weights"] == stored
        # 2 layers x 7 projections + lm_head, and the token embedding table.
        assert len(artifact.coverage.quantized) == 16 and artifact.coverage.kept_float == {}
        assert {"model.model.embed_tokens", "model.lm_head"} <= set(artifact.coverage.quantized)


CONV_NET = '''
import torch

def make_model():
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=8), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 10)).eval()
    with torch.no_grad():  # a BatchNorm that is not the identity, so folding it changes the conv's weight
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].weight.uniform_(0.5, 1.5)
    return net, (torch.randn(1, 3, 16, 16),)
'''


def test_conv_net(packager, tmp_path):
    from edgeopt.models import load_model

    (tmp_path / "convnet.py").write_text(CONV_NET, encoding="utf-8")
    loaded = load_model(f"{tmp_path / 'convnet.py'}:make_model")
    artifact, outputs, reference = build(packager, loaded, QuantScheme(Precision.FP32), tmp_path / "fp32")
    assert [(s.name, s.dtype, s.shape) for s in artifact.inputs] == [("input", "float32", (1, 3, 16, 16))]
    assert max(float(np.abs(r[0] - o[0]).max()) for r, o in zip(reference, outputs)) < 1e-5  # measured 6e-8
    # Not a text encoder: static shapes, the one serving_default signature (no length buckets).
    from ai_edge_litert.interpreter import Interpreter

    assert artifact.lengths.mode.value == "static" and "signatures" not in artifact.details
    assert list(Interpreter(model_path=str(artifact.path)).get_signature_list()) == ["serving_default"]
    assert artifact.details["delegation"]["share"] == 1.0

    artifact, outputs, reference = build(packager, loaded, default_scheme(Precision.INT8), tmp_path / "int8")
    assert np.mean(cosines(reference, outputs)) >= 0.999  # measured 0.999998
    # The BatchNorm-folded conv is matched up to its per-channel scale.
    assert sorted(artifact.coverage.quantized) == ["inner.0", "inner.3", "inner.7"]
    # XNNPACK has no dynamic-range depthwise conv: that one op runs on the TFLite kernel.
    assert artifact.details["delegation"]["non_delegated"] == {"DEPTHWISE_CONV_2D": 1}

    with pytest.raises(UnsupportedError, match=r"stay float: inner\.0 \(CONV_2D\), inner\.3 \(DEPTHWISE_CONV_2D\)"):
        packager.export(loaded, default_scheme(Precision.INT4), tmp_path / "int4", shapes=(1, SEQ), calibration=[])


# --- MiniLM: the int8 target -------------------------------------------------------------------


def test_minilm_int8_meets_the_target(packager, minilm, tmp_path):
    artifact, outputs, reference = build(packager, minilm, default_scheme(Precision.INT8), tmp_path, n_eval=16, seq=128)
    assert artifact.path.stat().st_size <= MINILM_INT8_MAX_BYTES
    assert np.mean(cosines(reference, outputs)) >= MINILM_INT8_MIN_COSINE
    cov = artifact.coverage
    assert "model.embeddings.word_embeddings" in cov.quantized  # the 47 MB table is int8 too
    assert len(cov.quantized) == 38 and cov.unexpected() == {}  # 36 linears + word and token-type tables
    assert artifact.details["weights"] == {"INT8": 38}
    assert artifact.details["delegation"]["share"] > 0.95  # measured 360 of 370 ops
