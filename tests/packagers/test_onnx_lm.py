"""ONNX export of decoder LMs with explicit past key/values, run through the device backend's LM session.

Every artifact runs in onnxruntime through ``runtimes/onnxruntime/backend.py`` ``load_lm`` (the same code
the device runs) and is compared with the eager transformers model it came from.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from edgeopt.errors import UnsupportedError
from edgeopt.formats import Precision
from edgeopt.quantize import Activations, QuantScheme, default_scheme

pytest.importorskip("onnxruntime", reason="pip install 'edgeopt[onnx]'")
pytest.importorskip("onnxscript", reason="pip install 'edgeopt[onnx]'")

REPO = Path(__file__).resolve().parents[2]
PROMPT_LEN, CONTEXT_LEN = 16, 64
FP32_MAX_ABS_ERR = 1e-4  # fp32 graph vs eager fp32: only summation order differs (measured ~1e-7)
# Quantized artifacts vs the fp32 artifact on the tiny random Llama (vocab 128, hidden 32), over 4 prompts'
# prefill + 15 decode steps teacher-forced on fp32's greedy tokens: logits cosine and top-1 agreement.
# Measured: int8 min cosine 0.99986, agreement 0.969; int4 min cosine 0.9940, agreement 0.906. A random-init
# model has flat logits (top-2 gaps ~0.01), so a few top-1 flips are noise, not a broken kernel.
MIN_COSINE = {Precision.INT8: 0.999, Precision.INT4: 0.985}
MIN_GREEDY = {Precision.INT8: 0.9, Precision.INT4: 0.75}
# Artifact size / fp32 size on the tiny Llama (measured 0.45 and 0.30, int4 0.32 with an int8 table; graph
# overhead dominates at this size: on a 5M-parameter Llama they are 0.27 and 0.17). On SmolLM2-135M's shape
# (2/4-layer variants extrapolated to 30 layers) int4 was 102.0 of 542.0 MB = 0.188 when the tied table was
# stored twice (the Gather's copy and the head's); read from the head's blocks it is stored once.
MAX_SIZE_RATIO = {Precision.INT8: 0.5, Precision.INT4: 0.32}


def _backend():
    spec = importlib.util.spec_from_file_location("ort_backend", REPO / "runtimes" / "onnxruntime" / "backend.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _session(artifact):
    return _backend().load_lm(str(artifact.path), 1, artifact.details["lm"])


def _prompt(seed: int, n: int = 12, vocab: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, vocab, n).astype(np.int64)


def _cache(out):
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def _eager_greedy(model, prompt: np.ndarray, steps: int) -> list[int]:
    """Greedy tokens of the eager model with its own KV cache (not generate(): it stops at eos)."""
    import torch

    with torch.no_grad():
        out = model(torch.from_numpy(prompt)[None], use_cache=True)
        tokens = [int(out.logits[0, -1].argmax())]
        while len(tokens) < steps:
            out = model(torch.tensor([[tokens[-1]]]), cache=_cache(out), use_cache=True)
            tokens.append(int(out.logits[0, -1].argmax()))
    return tokens


def _greedy(session, prompt: np.ndarray, steps: int) -> tuple[list[int], list[np.ndarray]]:
    session.reset()
    logits = [session.prefill(prompt)[-1]]
    tokens = []
    for _ in range(steps):
        tokens.append(int(logits[-1].argmax()))
        if len(tokens) < steps:
            logits.append(session.decode(tokens[-1]))
    return tokens, logits


def _save(model, path: Path):
    from edgeopt.models import load_model

    model.eval().save_pretrained(path)
    return load_model(str(path))


def make_tiny_qwen2(path: Path, *, seed: int = 0):
    """A random-init 2-layer Qwen2 (vocab 128, hidden 32, GQA 4/2 heads, q/k/v biases), loaded."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         architectures=["Qwen2ForCausalLM"])
    return _save(Qwen2ForCausalLM(config), path)


def make_tiny_gpt2(path: Path, *, seed: int = 0):
    """A random-init 2-layer GPT-2 (vocab 128, hidden 32, 4 heads, tied lm_head), loaded."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=128, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                        architectures=["GPT2LMHeadModel"])
    return _save(GPT2LMHeadModel(config), path)


@pytest.fixture(scope="module")
def llama(tiny_llama_dir):
    from edgeopt.models import load_model

    return load_model(str(tiny_llama_dir))


@pytest.fixture(scope="module")
def llama_artifacts(llama, tmp_path_factory):
    from edgeopt.packagers.onnx_lm import export_lm

    work = tmp_path_factory.mktemp("onnx-lm")
    return {p: export_lm(llama, default_scheme(p), work / p.value, prompt_len=PROMPT_LEN, context_len=CONTEXT_LEN)
            for p in (Precision.FP32, Precision.FP16, Precision.INT8, Precision.INT4)}


# --- fp32: the graph computes what the eager model computes --------------------------------------------


def test_fp32_prefill_matches_eager(llama, llama_artifacts):
    import torch

    prompt = _prompt(1)
    logits = _session(llama_artifacts[Precision.FP32]).prefill(prompt)
    with torch.no_grad():
        expected = llama.module.model(torch.from_numpy(prompt)[None]).logits[0].numpy()
    assert logits.shape == (12, 128) and logits.dtype == np.float32
    assert np.abs(logits - expected).max() < FP32_MAX_ABS_ERR


def test_fp32_decode_matches_eager_with_cache(llama, llama_artifacts):
    import torch

    prompt, model = _prompt(2), llama.module.model
    session = _session(llama_artifacts[Precision.FP32])
    session.prefill(prompt)
    with torch.no_grad():
        cache = _cache(model(torch.from_numpy(prompt)[None], use_cache=True))
        steps = []
        for token in (5, 77, 3):
            step = model(torch.tensor([[token]]), use_cache=True, cache=cache)
            cache = _cache(step)
            steps.append(step.logits[0, -1].numpy())
    got = [session.decode(token) for token in (5, 77, 3)]
    assert session.position == len(prompt) + 3
    for g, e in zip(got, steps):
        assert g.shape == (128,)
        assert np.abs(g - e).max() < FP32_MAX_ABS_ERR


def test_fp32_greedy_16_tokens_equal_eager(llama, llama_artifacts):
    session = _session(llama_artifacts[Precision.FP32])
    for seed in (3, 4):
        prompt = _prompt(seed)
        assert _greedy(session, prompt, 16)[0] == _eager_greedy(llama.module.model, prompt, 16)


def test_fp16_matches_eager(llama, llama_artifacts):
    import onnx
    import torch

    artifact, prompt = llama_artifacts[Precision.FP16], _prompt(9)
    # Every weight matrix is stored fp16 (file sizes say little here: the tiny graph's metadata outweighs its
    # weights; on a 4M-parameter Llama fp16 is 0.54 of fp32).
    matrices = [i for i in onnx.load(str(artifact.path)).graph.initializer if len(i.dims) == 2]
    assert len(matrices) == 16 and {i.data_type for i in matrices} == {onnx.TensorProto.FLOAT16}
    assert artifact.inputs[2].dtype == "float32"  # keep_io_types: the cache stays fp32 at the interface
    with torch.no_grad():
        expected = llama.module.model(torch.from_numpy(prompt)[None]).logits[0].numpy()
    session = _session(artifact)
    # fp16 weights and activations: measured max abs err 1.1e-4 on logits of magnitude ~0.5.
    assert np.abs(session.prefill(prompt) - expected).max() < 2e-3
    assert _greedy(session, prompt, 16)[0] == _eager_greedy(llama.module.model, prompt, 16)


def test_reset_then_same_prompt_gives_same_logits(llama_artifacts):
    session = _session(llama_artifacts[Precision.FP32])
    first = session.prefill(_prompt(5))
    session.decode(7)
    session.reset()
    assert session.position == 0
    again = session.prefill(_prompt(5))
    assert np.abs(first - again).max() == 0.0


def test_prefill_in_two_chunks_equals_prefill_at_once(llama_artifacts):
    session = _session(llama_artifacts[Precision.FP32])
    prompt = _prompt(6)
    whole = session.prefill(prompt)
    session.reset()
    chunks = np.concatenate([session.prefill(prompt[:5]), session.prefill(prompt[5:])])
    assert session.position == len(prompt)
    assert np.abs(whole - chunks).max() < 1e-5


def test_session_refuses_past_context_len(llama_artifacts):
    session = _session(llama_artifacts[Precision.FP32])
    session.prefill(_prompt(7, n=CONTEXT_LEN - 1))
    session.decode(1)
    with pytest.raises(ValueError, match="context_len 64"):
        session.decode(1)


def test_lm_details_and_io_names(llama_artifacts):
    artifact = llama_artifacts[Precision.FP32]
    lm = artifact.details["lm"]
    assert {k: lm[k] for k in ("kind", "vocab_size", "num_layers", "num_kv_heads", "head_dim", "context_len",
                               "prompt_len", "cache")} == {
        "kind": "causal_lm", "vocab_size": 128, "num_layers": 2, "num_kv_heads": 2, "head_dim": 8,
        "context_len": CONTEXT_LEN, "prompt_len": PROMPT_LEN, "cache": "explicit"}
    names = [s.name for s in artifact.inputs]
    assert names == ["input_ids", "attention_mask", *lm["past_inputs"]]
    assert lm["past_inputs"][:2] == ["past_key_values.0.key", "past_key_values.0.value"]
    assert [s.name for s in artifact.outputs] == ["logits", *lm["present_outputs"]]
    past = artifact.inputs[2]
    assert past.dtype == "float32" and past.shape[0] == 1 and past.shape[1] == 2 and past.shape[3] == 8
    assert past.shape[2] == -1  # dynamic: one graph for prefill and decode
    assert artifact.coverage.total == 16 and not artifact.coverage.quantized  # 7 linears x 2 + embed + head


# --- int8 / int4 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", [Precision.INT8, Precision.INT4])
def test_quantized_coverage_size_and_fidelity(llama, llama_artifacts, precision):
    artifact, fp32 = llama_artifacts[precision], llama_artifacts[Precision.FP32]
    expected_layers = {n for n in fp32.coverage.kept_float}
    assert set(artifact.coverage.quantized) == expected_layers and not artifact.coverage.kept_float
    assert "model.lm_head" in expected_layers and "model.model.embed_tokens" in expected_layers
    ratio = artifact.path.stat().st_size / fp32.path.stat().st_size
    assert ratio < MAX_SIZE_RATIO[precision], ratio
    quantized, reference = _session(artifact), _session(fp32)
    agree, cosines = [], []
    for seed in range(10, 14):
        ref_tokens, ref_logits = _greedy(reference, _prompt(seed), 16)
        # Teacher-forced on fp32's own continuation, so one flip does not change every later step.
        quantized.reset()
        logits = [quantized.prefill(_prompt(seed))[-1]] + [quantized.decode(t) for t in ref_tokens[:-1]]
        agree += [int(a.argmax()) == t for a, t in zip(logits, ref_tokens)]
        cosines += [float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b))) for a, b in zip(logits, ref_logits)]
    assert min(cosines) >= MIN_COSINE[precision], min(cosines)
    assert np.mean(agree) >= MIN_GREEDY[precision], np.mean(agree)
    if precision is Precision.INT4:
        assert artifact.details["quantization"]["block_size"] == 32
        assert artifact.details["quantization"]["accuracy_level"] == 4
        assert artifact.details["ops"].get("MatMulNBits", 0) == 15  # 14 linears + lm_head
        import onnx

        # The token table int4 too: GatherBlockQuantized, 2 values a byte, a float32 scale per 32 of a row.
        assert artifact.details["ops"].get("GatherBlockQuantized", 0) == 1 and "Gather" not in artifact.details["ops"]
        assert artifact.details["quantization"]["embeddings"] == {
            "model.model.embed_tokens": "int4 GatherBlockQuantized, blocks of 32 along each row"}
        data, scales = _gather_tables(artifact.path)[0]
        assert data.data_type == onnx.TensorProto.INT4 and len(data.raw_data) == 128 * 32 // 2
        assert tuple(scales.dims) == (128, 1) and scales.data_type == onnx.TensorProto.FLOAT


def _gather_tables(path):
    """(data, scales) initializers of each GatherBlockQuantized node of the graph at ``path``."""
    import onnx

    graph = onnx.load(str(path)).graph
    inits = {i.name: i for i in graph.initializer}
    return [(inits[n.input[0]], inits[n.input[2]]) for n in graph.node if n.op_type == "GatherBlockQuantized"]


def test_int4_tied_head_and_position_table(tmp_path, monkeypatch):
    """GPT-2: tied lm_head and two tables (wte, wpe). wpe is int4 GatherBlockQuantized; wte is stored once, read
    from the head's int4 MatMulNBits blocks, and the logits are bit-identical to a build that keeps its own copy."""
    import onnx

    from edgeopt.packagers import onnx_lm
    from edgeopt.packagers.onnx_lm import export_lm

    loaded = make_tiny_gpt2(tmp_path / "gpt2")
    fp32 = export_lm(loaded, QuantScheme(Precision.FP32), tmp_path / "fp32", prompt_len=PROMPT_LEN,
                     context_len=CONTEXT_LEN)
    int4 = export_lm(loaded, default_scheme(Precision.INT4), tmp_path / "int4", prompt_len=PROMPT_LEN,
                     context_len=CONTEXT_LEN)
    assert set(int4.coverage.quantized) == set(fp32.coverage.kept_float) and not int4.coverage.kept_float
    assert int4.details["quantization"]["embeddings"] == {
        "model.transformer.wte": "int4: the tied lm_head's MatMulNBits blocks of 32 along each row (stored once; "
                                 "Gather + unpack, bit-identical to its own GatherBlockQuantized copy)",
        "model.transformer.wpe": "int4 GatherBlockQuantized, blocks of 32 along each row"}
    assert "stored once" in int4.details["tied_embeddings"]
    assert int4.details["ops"].get("GatherBlockQuantized", 0) == 1
    assert [len(data.raw_data) for data, _ in _gather_tables(int4.path)] == [64 * 32 // 2]  # wpe
    monkeypatch.setattr(onnx_lm, "_share_tied_int4_table", lambda path: None)
    copied = export_lm(loaded, default_scheme(Precision.INT4), tmp_path / "int4-copied", prompt_len=PROMPT_LEN,
                       context_len=CONTEXT_LEN)
    assert copied.details["ops"].get("GatherBlockQuantized", 0) == 2
    weights = lambda path: sum(len(i.raw_data) for i in onnx.load(str(path)).graph.initializer)
    saved = weights(copied.path) - weights(int4.path)
    # wte's int4 copy and its float scales, less the unpack's few constants (measured 2530 of 2560 bytes)
    assert 128 * 32 // 2 + 128 * 4 - 64 <= saved <= 128 * 32 // 2 + 128 * 4, saved
    prompt = _prompt(8)
    a, b = _session(int4).prefill(prompt), _session(fp32).prefill(prompt)
    assert np.array_equal(a, _session(copied).prefill(prompt))
    cos = float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert cos > MIN_COSINE[Precision.INT4], cos
    tokens, _ = _greedy(_session(int4), prompt, 8)
    assert tokens == _greedy(_session(copied), prompt, 8)[0]  # the decode path too


def test_keep_float_layer_is_named_with_its_reason(llama, tmp_path):
    from edgeopt.packagers.onnx_lm import export_lm

    scheme = default_scheme(Precision.INT8).with_keep_float(("model.lm_head",))
    artifact = export_lm(llama, scheme, tmp_path, prompt_len=PROMPT_LEN, context_len=CONTEXT_LEN)
    assert artifact.coverage.kept_float == {"model.lm_head": "kept float: keep_float (sensitive layer)"}
    assert len(artifact.coverage.quantized) == 15 and not artifact.coverage.unexpected()


# --- other families ------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2", "gpt2"])
def test_other_families_fp32_and_int8(family, tmp_path):
    import torch

    from edgeopt.packagers.onnx_lm import export_lm

    make = {"qwen2": make_tiny_qwen2, "gpt2": make_tiny_gpt2}[family]
    loaded = make(tmp_path / family)
    fp32 = export_lm(loaded, QuantScheme(Precision.FP32), tmp_path / "fp32", prompt_len=PROMPT_LEN,
                     context_len=CONTEXT_LEN)
    session, prompt = _session(fp32), _prompt(8)
    with torch.no_grad():
        expected = loaded.module.model(torch.from_numpy(prompt)[None]).logits[0].numpy()
    assert np.abs(session.prefill(prompt) - expected).max() < FP32_MAX_ABS_ERR
    assert _greedy(session, prompt, 16)[0] == _eager_greedy(loaded.module.model, prompt, 16)
    int8 = export_lm(loaded, default_scheme(Precision.INT8), tmp_path / "int8", prompt_len=PROMPT_LEN,
                     context_len=CONTEXT_LEN)
    assert set(int8.coverage.quantized) == set(fp32.coverage.kept_float) and not int8.coverage.kept_float
    if family == "gpt2":
        # Tied head: both the table and the head are named, each stored (and quantized) on its own.
        assert {"model.lm_head", "model.transformer.wte", "model.transformer.wpe"} <= set(int8.coverage.quantized)
        assert "tied to model.transformer.wte" in int8.details["tied_embeddings"]
        assert int8.coverage.total == 11  # 4 Conv1D x 2 layers + wte + wpe + lm_head
    else:
        assert "tied_embeddings" not in int8.details and int8.coverage.total == 16
    session.reset()
    a, b = _session(int8).prefill(prompt), session.prefill(prompt)
    cos = float((a * b).sum() / (np.linalg.norm(a) * np.linalg.norm(b)))
    assert cos > 0.999, cos


# --- refusals before any export work ---------------------------------------------------------------------


def test_refuses_static_activations_encoders_and_long_contexts(llama, tiny_bert):
    from edgeopt.packagers.onnx_lm import check_lm

    with pytest.raises(UnsupportedError, match="static int8 activations"):
        check_lm(llama, QuantScheme(Precision.INT8, Activations.STATIC))
    with pytest.raises(UnsupportedError, match="not a transformers causal LM"):
        check_lm(tiny_bert, QuantScheme(Precision.FP32))
    with pytest.raises(UnsupportedError, match="exceeds the model's 64 positions"):
        check_lm(llama, QuantScheme(Precision.FP32), prompt_len=16, context_len=128)
    with pytest.raises(UnsupportedError, match="prompt_len <= context_len"):
        check_lm(llama, QuantScheme(Precision.FP32), prompt_len=32, context_len=16)


def test_refuses_sliding_window_layers(tmp_path):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from edgeopt.packagers.onnx_lm import check_lm

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, use_sliding_window=True, sliding_window=8,
                         max_window_layers=0, architectures=["Qwen2ForCausalLM"])
    loaded = _save(Qwen2ForCausalLM(config), tmp_path / "sliding")
    with pytest.raises(UnsupportedError, match="sliding_attention layers"):
        check_lm(loaded, QuantScheme(Precision.FP32))


def test_over_the_protobuf_limit_int4_is_built_from_external_data_and_fp32_refused(llama, tmp_path, monkeypatch):
    """Qwen2.5-0.5B's fp32 graph is 2.4 GiB (its tied table twice): over protobuf's 2 GiB for one file. The limit
    is lowered here so the tiny Llama takes that path: the fp32 graph is exported with external data, int4 is
    quantized from it into one file that matches the normal build, and fp32 itself is refused up front."""
    from edgeopt.packagers import onnx_lm
    from edgeopt.packagers.onnx_lm import check_lm, export_lm

    normal = export_lm(llama, default_scheme(Precision.INT4), tmp_path / "normal", prompt_len=PROMPT_LEN,
                       context_len=CONTEXT_LEN)
    monkeypatch.setattr(onnx_lm, "_PROTOBUF_LIMIT_BYTES", 1 << 16)
    with pytest.raises(UnsupportedError, match=r"over protobuf's 2 GiB limit for one .onnx file; .*use int8 or int4"):
        check_lm(llama, QuantScheme(Precision.FP32))
    written = []
    real_export = onnx_lm._export_fp32

    def export_and_look(loaded, shape, path, **kwargs):
        real_export(loaded, shape, path, **kwargs)
        written.append((kwargs, [p.name for p in onnx_lm._companions(path)],
                        sum(p.stat().st_size for p in onnx_lm._companions(path))))

    monkeypatch.setattr(onnx_lm, "_export_fp32", export_and_look)
    int4 = export_lm(llama, default_scheme(Precision.INT4), tmp_path / "external", prompt_len=PROMPT_LEN,
                     context_len=CONTEXT_LEN)
    (kwargs, companions, data_bytes), = written
    assert kwargs == {"external": True} and companions == ["model.fp32.onnx.data"]
    assert data_bytes >= 0.9 * onnx_lm.fp32_graph_bytes(llama)[0]  # the weights are in the .data file
    assert sorted(p.name for p in (tmp_path / "external").iterdir()) == ["model.onnx"]  # no fp32 graph or its data
    prompt = _prompt(3)
    assert np.array_equal(_session(int4).prefill(prompt), _session(normal).prefill(prompt))
