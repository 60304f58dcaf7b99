"""ExecuTorch KV-cache LM export: every artifact runs in ExecuTorch's runtime through the device session code
(runtimes/executorch/backend.py ``load_lm``) and is compared with the eager transformers model it came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("executorch.runtime", reason="pip install 'edgeopt[executorch]'")
pytest.importorskip("torchao", reason="pip install 'edgeopt[executorch]'")

import torch

from edgeopt.errors import UnsupportedError
from edgeopt.formats import Format, Precision
from edgeopt.quantize import Activations, QuantScheme, default_scheme
from runtimes.executorch.backend import load_lm

PROMPT_LEN = 8  # the method's longest chunk: the 12-token prompt below is prefilled in two chunks
CONTEXT_LEN = 32
NEW_TOKENS = 16
VOCAB = 256


def _save(model_cls, config, path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model_cls(config).eval().save_pretrained(path)
    return path


def make_llama(path: Path) -> Path:
    """Random-init 2-layer Llama, GQA 4/2 heads; wide enough that weights outweigh the program overhead."""
    from transformers import LlamaConfig, LlamaForCausalLM

    return _save(LlamaForCausalLM, LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, architectures=["LlamaForCausalLM"]), path)


def make_qwen2(path: Path) -> Path:
    """Random-init 2-layer Qwen2 (q/k/v biases, tied lm_head)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    return _save(Qwen2ForCausalLM, Qwen2Config(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
        architectures=["Qwen2ForCausalLM"]), path)


def make_gpt2(path: Path) -> Path:
    """Random-init 2-layer GPT-2 (learned positions, Conv1D projections, tied lm_head)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    return _save(GPT2LMHeadModel, GPT2Config(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=64,
                                             architectures=["GPT2LMHeadModel"]), path)


_BUILT: dict = {}


def build(tmp_path_factory, family: str, precision: Precision):
    """(loaded, artifact), exported once per session."""
    from edgeopt.models import load_model
    from edgeopt.packagers.executorch_lm import export_lm

    key = (family, precision)
    if key not in _BUILT:
        if family not in _BUILT:
            maker = {"llama": make_llama, "qwen2": make_qwen2, "gpt2": make_gpt2}[family]
            _BUILT[family] = load_model(str(maker(tmp_path_factory.mktemp("models") / family)))
        loaded = _BUILT[family]
        work = tmp_path_factory.mktemp(f"{family}-{precision.value}")
        _BUILT[key] = export_lm(loaded, default_scheme(precision), work, prompt_len=PROMPT_LEN,
                                context_len=CONTEXT_LEN)
    return _BUILT[family], _BUILT[key]


def prompt() -> np.ndarray:
    return torch.randint(0, VOCAB, (12,), generator=torch.Generator().manual_seed(1)).numpy()


def session(artifact):
    return load_lm(str(artifact.path), 1, artifact.details["lm"])


def greedy(sess, ids: np.ndarray, n: int = NEW_TOKENS) -> tuple[list[int], np.ndarray]:
    """Greedy tokens after ``ids`` and every logits row (prompt then decode steps)."""
    rows = [sess.prefill(ids)]
    tokens = []
    for _ in range(n):
        tokens.append(int(rows[-1][-1].argmax()))
        rows.append(sess.decode(tokens[-1])[None])
    return tokens, np.concatenate(rows)


def eager_greedy(model, ids: np.ndarray, n: int = NEW_TOKENS) -> list[int]:
    x = torch.from_numpy(ids)[None]
    with torch.no_grad():
        out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                             min_new_tokens=n)
    return out[0, len(ids):].tolist()


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# --- fp32: the artifact computes what transformers computes ---------------------------------------


@pytest.mark.parametrize("family", ["llama", "qwen2", "gpt2"])
def test_fp32_prefill_decode_and_greedy_match_eager(tmp_path_factory, family):
    loaded, art = build(tmp_path_factory, family, Precision.FP32)
    model = loaded.module.model
    assert art.format is Format.PTE
    lm = art.details["lm"]
    assert (lm["kind"], lm["cache"], lm["context_len"], lm["prompt_len"]) == ("causal_lm", "in_program", 32, 8)
    assert lm["num_layers"] == 2 and lm["num_kv_heads"] in (2, 4) and lm["vocab_size"] == VOCAB
    assert [s.name for s in art.inputs] == ["input_ids", "cache_position"]
    assert art.outputs[0].shape == (1, PROMPT_LEN, VOCAB)

    ids = prompt()
    sess = session(art)
    logits = sess.prefill(ids)  # 12 tokens through an 8-token method: two chunks
    assert sess.position == 12 and logits.shape == (12, VOCAB) and logits.dtype == np.float32
    with torch.no_grad():
        out = model(torch.from_numpy(ids)[None], use_cache=True)
        ref = out.logits[0].numpy()
        scale = float(np.abs(ref).max())
        assert np.abs(logits - ref).max() < 1e-4 * max(scale, 1.0)

        # One decode step against transformers' own cache.
        nxt = int(ref[-1].argmax())
        step = sess.decode(nxt)
        ref_step = model(torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True).logits[0, -1]
    assert sess.position == 13 and step.shape == (VOCAB,)
    assert np.abs(step - ref_step.numpy()).max() < 1e-4 * max(scale, 1.0)

    sess.reset()
    assert sess.position == 0
    tokens, _ = greedy(sess, ids)
    assert tokens == eager_greedy(model, ids)


def test_reset_empties_the_cache(tmp_path_factory):
    _, art = build(tmp_path_factory, "llama", Precision.FP32)
    ids = prompt()
    fresh = session(art)
    fresh_prefill = fresh.prefill(ids[:5])
    fresh.reset()
    fresh.position = 10  # decode at position 10 over an empty cache: positions 0..9 hold zeros
    fresh_step = fresh.decode(7)

    sess = session(art)
    sess.prefill(ids)
    sess.decode(3)
    sess.reset()
    assert sess.position == 0
    np.testing.assert_array_equal(sess.prefill(ids[:5]), fresh_prefill)
    sess.reset()
    sess.position = 10  # a cache still holding the 12-token prompt would change these logits
    np.testing.assert_array_equal(sess.decode(7), fresh_step)


def test_context_overflow_is_refused_by_the_session(tmp_path_factory):
    _, art = build(tmp_path_factory, "llama", Precision.FP32)
    sess = session(art)
    sess.prefill(np.zeros(CONTEXT_LEN, dtype=np.int64))
    with pytest.raises(ValueError, match="context_len 32"):
        sess.decode(1)


# --- int8 / int4 ---------------------------------------------------------------------------------

# Measured on this seed (random-init weights, logits std 0.16, 12+16 tokens): int8 cosine 0.99993, 16/16 greedy
# tokens; int4 (groups of 32, head and table int4) cosine 0.98684 and 1/16 greedy tokens: with near-flat random logits
# greedy paths part early, so int4 is held to its cosine on the same tokens (and, in
# test_int4_matches_its_eager_model_at_every_chunk_length, to its own eager model). Floors leave room for
# kernel differences across CPUs.
QUANT_FLOORS = {Precision.INT8: (0.999, 14), Precision.INT4: (0.98, 0)}


@pytest.mark.parametrize("precision", [Precision.INT8, Precision.INT4])
def test_quantized_llama_coverage_size_and_fidelity(tmp_path_factory, precision):
    loaded, art = build(tmp_path_factory, "llama", precision)
    _, ref_art = build(tmp_path_factory, "llama", Precision.FP32)
    model = loaded.module.model

    layers = {f"model.{n}" for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Embedding))}
    assert set(art.coverage.quantized) == layers and not art.coverage.kept_float  # every layer, none silent
    assert art.coverage.total == 2 + 7 * 2

    # Weight bytes: fp32 4 per weight; int8 1 (+ a 4-byte scale per row); int4 0.5 (+ scales per 32 weights).
    weights = sum(m.weight.numel() for n, m in model.named_modules() if f"model.{n}" in layers)
    # int8: every table and Linear 1 byte per weight. int4: the Linears 0.5 byte + a bf16 scale per 32 weights
    # (XNNPACK QB4W), the token table 0.5 byte + an fp32 scale per 32 (embedding_4bit).
    embed = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Embedding))
    table = {"int8": "int8 rows, one scale per row", "int4": "int4 rows, groups of 32"}[precision.value]
    assert art.details["embeddings"] == {"model.model.embed_tokens": table}
    per_weight, per_row = (1.0, 1.0) if precision is Precision.INT8 else (0.5 + 2 / 32, 0.5 + 4 / 32)
    saved = ref_art.path.stat().st_size - art.path.stat().st_size
    expected = embed * (4 - per_row) + (weights - embed) * (4 - per_weight)
    assert saved > 0.9 * expected, (saved, expected)

    from runtimes.common.lmeval import teacher_forced_logits

    ids = prompt()
    tokens, _ = greedy(session(art), ids)
    ref_tokens, ref_logits = greedy(session(ref_art), ids)
    # Logits on the same tokens (the fp32 greedy path, prefill then decode): greedy rows after a divergence
    # would compare different contexts.
    path = np.concatenate([ids, ref_tokens])
    logits = teacher_forced_logits(session(art), path, split=len(ids))
    min_cos, min_agree = QUANT_FLOORS[precision]
    cos, agree = cosine(logits, ref_logits[:len(path)]), sum(a == b for a, b in zip(tokens, ref_tokens))
    print(f"{precision.value}: size {art.path.stat().st_size} vs {ref_art.path.stat().st_size}, cosine {cos:.5f}, "
          f"greedy {agree}/{NEW_TOKENS}")
    assert cos > min_cos
    assert agree >= min_agree


def test_tied_head_is_quantized_and_reported(tmp_path_factory):
    _, art = build(tmp_path_factory, "qwen2", Precision.INT8)
    assert art.details["tied"] == {"model.lm_head": "model.model.embed_tokens"}
    assert {"model.lm_head", "model.model.embed_tokens"} <= set(art.coverage.quantized)
    assert not art.coverage.kept_float
    _, ref_art = build(tmp_path_factory, "qwen2", Precision.FP32)
    ids = prompt()
    assert cosine(greedy(session(art), ids)[1], greedy(session(ref_art), ids)[1]) > 0.99


def test_keep_float_and_unquantized_embeddings_are_recorded(tmp_path_factory):
    """Coverage of a real torchao quantization of the eager model (the step before lowering; no export here)."""
    import copy

    from edgeopt.packagers.executorch_lm import (
        KEPT_LM_EMBEDDINGS,
        _lm_coverage,
        _quantize,
    )

    loaded, _ = build(tmp_path_factory, "llama", Precision.FP32)
    model = copy.deepcopy(loaded.module.model)
    scheme = QuantScheme(Precision.INT8, Activations.DYNAMIC, keep_float=("model.model.layers.0.mlp.down_proj",))
    coverage = _lm_coverage(model, scheme, _quantize(model, scheme))
    assert coverage.kept_float == {"model.model.layers.0.mlp.down_proj": "kept float: sensitive layer",
                                   "model.model.embed_tokens": KEPT_LM_EMBEDDINGS,
                                   "model.lm_head": KEPT_LM_EMBEDDINGS}
    assert len(coverage.quantized) == 13 and not coverage.unexpected()


# --- refusals, before any export work ------------------------------------------------------------


def test_check_lm_refusals(tmp_path_factory, tiny_bert):
    from edgeopt.packagers.executorch_lm import check_lm

    loaded, _ = build(tmp_path_factory, "llama", Precision.FP32)
    check_lm(loaded, default_scheme(Precision.INT4))  # int4 (8da4w) builds: see test_int4_matches_its_eager_model
    with pytest.raises(UnsupportedError, match="fp16"):
        check_lm(loaded, QuantScheme(Precision.FP16))
    with pytest.raises(UnsupportedError, match="activations=dynamic"):
        check_lm(loaded, QuantScheme(Precision.INT8, Activations.STATIC))
    with pytest.raises(UnsupportedError, match="context_len 128 exceeds the model's 64 positions"):
        check_lm(loaded, default_scheme(Precision.INT8), prompt_len=8, context_len=128)
    with pytest.raises(UnsupportedError, match="prompt_len must be in 1..context_len"):
        check_lm(loaded, default_scheme(Precision.INT8), prompt_len=64, context_len=32)
    with pytest.raises(UnsupportedError, match="family decoder"):
        check_lm(tiny_bert, default_scheme(Precision.INT8))


def test_int4_matches_its_eager_model_at_every_chunk_length(tmp_path_factory):
    """The lowered 8da4w program computes what its own torchao int4 model computes, for every prefill chunk
    length 1..prompt_len and for decode. (ExecuTorch 1.0 / torchao 0.14 lost this with a dynamic chunk length:
    logits cosine 0.57; the int4 LM export was refused until the pins of this release, where it holds.)"""
    import copy

    from edgeopt.packagers.executorch_lm import _quantize

    loaded, art = build(tmp_path_factory, "llama", Precision.INT4)
    eager = copy.deepcopy(loaded.module.model).eval()
    with torch.no_grad():
        _quantize(eager, art.scheme)
        ids = prompt()
        ref = eager(torch.from_numpy(ids)[None]).logits[0].numpy()
    sess = session(art)
    worst = 1.0
    for chunk in range(1, PROMPT_LEN + 1):
        sess.reset()
        rows = [sess.prefill(ids[i:i + chunk]) for i in range(0, len(ids), chunk)]
        got = np.concatenate(rows)
        worst = min(worst, min(cosine(got[i], ref[i]) for i in range(len(ids))))
    print(f"int4 pte vs eager torchao int4: worst per-position cosine {worst:.6f}")
    assert worst > 0.9999
