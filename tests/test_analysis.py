"""analyse(): parameter kinds, FLOPs, activation peak and KV cache checked against hand counts."""

from __future__ import annotations

import json

import pytest
import torch

from edgeopt.analysis import ModelStats, analyse, classify_parameter, kv_cache_bytes
from edgeopt.errors import InputFileError, UsageError
from edgeopt.models import Family, LoadedModel
from edgeopt.wrappers import CausalLMWrapper, EncoderWrapper, TupleOutput

B, S = 2, 16  # shapes every test analyses at


def _loaded(name, module, example, family, config=None) -> LoadedModel:
    # No tokenizer: example_inputs() returns seeded random inputs shaped like `example`, i.e. (B, S).
    names = tuple(f"in{i}" for i in range(len(example)))
    return LoadedModel(name, "test", "0" * 64, module.eval(), names, ("out",), family, config, None, _example=example)


@pytest.fixture(scope="module")
def tiny_bert() -> LoadedModel:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=64, attn_implementation="eager")
    ids = torch.randint(0, 100, (B, S))
    example = (ids, torch.ones(B, S, dtype=torch.long), torch.zeros(B, S, dtype=torch.long))
    return _loaded("tiny-bert", EncoderWrapper(BertModel(cfg), normalize=False), example, Family.ENCODER, cfg)


@pytest.fixture(scope="module")
def bert_stats(tiny_bert) -> ModelStats:
    return analyse(tiny_bert, B, S)


@pytest.fixture(scope="module")
def llama_stats() -> ModelStats:
    return analyse(_tiny_llama(tied=False), B, S, context_len=64)


def _tiny_llama(tied: bool) -> LoadedModel:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      intermediate_size=64, max_position_embeddings=128, attn_implementation="eager",
                      tie_word_embeddings=tied)
    example = (torch.randint(0, 128, (B, S)), torch.ones(B, S, dtype=torch.long))
    return _loaded("tiny-llama", CausalLMWrapper(LlamaForCausalLM(cfg)), example, Family.DECODER, cfg)


def test_tiny_bert_params_by_kind_match_hand_count(bert_stats):
    s = bert_stats
    H, I, V, P, L = 32, 64, 100, 64, 2
    embeddings = V * H + P * H + 2 * H + 2 * H          # word + position + token type + embeddings LayerNorm
    attention = L * 4 * (H * H + H)                     # query, key, value, attention.output.dense (+biases)
    ffn = L * ((H * I + I) + (I * H + H))               # intermediate.dense, output.dense
    norms = L * 2 * (2 * H)                              # attention.output.LayerNorm, output.LayerNorm
    head = H * H + H                                     # pooler.dense
    assert s.params_by_kind == {"embeddings": embeddings, "attention": attention, "ffn": ffn, "norms": norms,
                                "head": head, "other": 0}
    assert s.params_total == embeddings + attention + ffn + norms + head == 23520
    assert s.quantizable_linear_params == L * (4 * H * H + 2 * H * I) + H * H
    assert s.embedding_params == V * H + P * H + 2 * H
    assert (s.linear_layers, s.embedding_layers, s.tied_head) == (13, 3, False)
    assert (s.num_layers, s.hidden_size, s.num_heads, s.intermediate_size, s.vocab_size) == (2, 32, 4, 64, 100)
    assert s.bytes_at["fp32"] == 4 * s.params_total and s.bytes_at["fp16"] == 2 * s.params_total
    assert s.kv_cache_bytes == 0 and s.context_len is None


def test_tiny_bert_flops_match_analytic_formula(bert_stats):
    s = bert_stats
    H, I, L, T = 32, 64, 2, B * S
    per_layer = (2 * T * H * H * 4        # q, k, v, output projections
                 + 2 * 2 * B * S * S * H  # QK^T and attention x V over all heads
                 + 2 * 2 * T * H * I)     # FFN up and down
    analytic = L * per_layer + 2 * B * H * H  # + pooler on the first token
    # The counter sees exactly the matmuls of the formula (softmax, GELU, norms are not counted), so the
    # tolerance is 1% only to absorb a future transformers adding a small matmul.
    assert s.flops == pytest.approx(analytic, rel=0.01)
    assert s.flops == 1_183_744


def test_tiny_bert_activation_peak_is_measured_and_bounded(bert_stats):
    s = bert_stats
    H, I, heads, T = 32, 64, 4, B * S
    largest = 4 * B * heads * S * S  # one fp32 attention-probability tensor must be live at some point
    # everything one layer creates, generously: 16 hidden-sized, 4 FFN-sized and 4 score-sized tensors
    bound = 4 * (16 * T * H + 4 * T * I + 4 * B * heads * S * S)
    assert largest <= s.activation_peak_bytes < bound
    assert s.aten_ops > 2 * s.linear_layers  # every Linear is at least one op, plus the rest


def test_linear_only_model_flops_and_peak_by_hand():
    model = TupleOutput(torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4)))
    loaded = _loaded("mlp", model, (torch.randn(B, S, 8),), Family.OTHER)
    s = analyse(loaded, B, S)
    T = B * S
    assert s.flops == 2 * 8 * 16 * T + 2 * 16 * 4 * T
    # Both outputs are alive when the second Linear returns: [T, 16] + [T, 4] fp32. Parameters, the
    # input and views of them are excluded.
    assert s.activation_peak_bytes == 4 * T * 16 + 4 * T * 4
    assert s.quantizable_linear_params == 8 * 16 + 16 * 4 and s.params_total == 8 * 16 + 16 + 16 * 4 + 4
    assert s.params_by_kind["other"] == s.params_total
    assert s.linear_shapes == ((16, 8), (4, 16))


def test_tiny_llama_kinds_and_kv_cache(llama_stats):
    s = llama_stats
    H, I, L, V, kv_heads, head_dim = 32, 64, 2, 128, 2, 8
    assert s.params_by_kind == {
        "embeddings": V * H,
        "attention": L * (H * H + 2 * H * kv_heads * head_dim + H * H),  # q, k, v (2 kv heads), o
        "ffn": L * 3 * H * I,                                            # gate, up, down
        "norms": L * 2 * H + H,                                          # 2 RMSNorms per layer + final
        "head": V * H,                                                   # lm_head, untied
        "other": 0,
    }
    assert s.kv_cache_bytes == 2 * L * kv_heads * head_dim * 64 * B * 4 == 32768
    assert s.context_len == 64 and s.family == "decoder" and not s.tied_head
    per_layer = 2 * B * S * (H * H * 2 + 2 * H * kv_heads * head_dim + 3 * H * I) + 2 * 2 * B * S * S * H
    assert s.flops == L * per_layer + 2 * B * S * H * V


def test_tied_head_is_counted_once(llama_stats):
    untied, tied = llama_stats, analyse(_tiny_llama(tied=True), B, S)
    assert tied.tied_head and not untied.tied_head
    assert untied.params_total - tied.params_total == 128 * 32
    assert tied.params_by_kind["head"] == 0 and tied.embedding_params == 128 * 32
    assert tied.context_len == S  # a decoder without context_len gets a cache of seq_len tokens
    assert tied.flops == untied.flops  # the tied head still does its matmul


def test_gpt2_conv1d_counts_as_linear():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=100, n_embd=32, n_layer=2, n_head=4, n_positions=64, attn_implementation="eager")
    loaded = _loaded("tiny-gpt2", CausalLMWrapper(GPT2LMHeadModel(cfg)),
                     (torch.randint(0, 100, (B, S)), torch.ones(B, S, dtype=torch.long)), Family.DECODER, cfg)
    s = analyse(loaded, B, S)
    H, L = 32, 2
    assert s.quantizable_linear_params == L * (H * 3 * H + H * H + H * 4 * H + 4 * H * H)  # c_attn, c_proj, c_fc, c_proj
    assert s.params_by_kind["attention"] == L * (H * 3 * H + 3 * H + H * H + H)
    assert s.params_by_kind["ffn"] == L * (H * 4 * H + 4 * H + 4 * H * H + H)
    assert s.params_by_kind["norms"] == (2 * L + 1) * 2 * H  # ln_1, ln_2 per layer, ln_f
    assert s.tied_head and s.intermediate_size == 4 * H


def test_classify_parameter_names():
    lin, emb, norm = torch.nn.Linear(2, 2), torch.nn.Embedding(2, 2), torch.nn.LayerNorm(2)
    assert classify_parameter("model.model.layers.0.self_attn.q_proj.weight", lin) == "attention"
    assert classify_parameter("model.encoder.layer.0.attention.output.dense.weight", lin) == "attention"
    assert classify_parameter("model.encoder.layer.0.output.dense.weight", lin) == "ffn"
    assert classify_parameter("model.encoder.layer.0.attention.output.LayerNorm.weight", norm) == "norms"
    assert classify_parameter("model.embeddings.LayerNorm.bias", norm) == "embeddings"
    assert classify_parameter("model.classifier.weight", lin) == "head"
    assert classify_parameter("model.wte.weight", emb) == "embeddings"
    assert classify_parameter("model.conv1.weight", torch.nn.Conv2d(1, 1, 1)) == "other"


def test_stats_json_round_trip(bert_stats):
    s = bert_stats
    back = ModelStats.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back == s
    with pytest.raises(InputFileError, match=r"missing keys \['flops'\]"):
        ModelStats.from_dict({k: v for k, v in s.to_dict().items() if k != "flops"})


def test_bad_shapes_are_usage_errors(tiny_bert):
    with pytest.raises(UsageError, match="seq_len must be a positive integer, got 0"):
        analyse(tiny_bert, B, 0)
    assert kv_cache_bytes(None, 1, 128) == 0
