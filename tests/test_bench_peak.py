"""benchmarks/bench_peak.py's analytic FLOP counter against torch's FlopCounterMode on tiny BERTs (no download)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_peak.py"


@pytest.fixture(scope="module")
def bench_peak():
    spec = importlib.util.spec_from_file_location("bench_peak", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peak"] = module  # dataclasses resolve the module's annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["bench_peak"]
        raise
    return module


def _tiny_bert(layers, hidden, heads, intermediate, attn):
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate, max_position_embeddings=64, attn_implementation=attn)
    return BertModel(config).eval()


@pytest.mark.parametrize("layers,hidden,heads,intermediate,seq,batch,attn", [
    (2, 32, 4, 64, 16, 1, "sdpa"),
    (3, 48, 6, 96, 24, 2, "eager"),  # explicit matmuls for scores and context instead of the fused kernel
    (1, 64, 2, 256, 40, 1, "sdpa"),
])
def test_analytic_gemm_flops_match_flop_counter(bench_peak, layers, hidden, heads, intermediate, seq, batch, attn):
    import torch

    model = _tiny_bert(layers, hidden, heads, intermediate, attn)
    ids = torch.randint(0, 100, (batch, seq), generator=torch.Generator().manual_seed(1))
    counted = bench_peak.counted_flops(model, (ids, torch.ones_like(ids)))
    analytic = bench_peak.bert_flops(model.config, seq_len=seq, batch=batch, pooler=True)
    assert counted > 0
    assert abs(analytic.gemm_flops - counted) / counted < 0.01, (analytic.gemm_macs, counted)


def test_minilm_shape_count_by_hand(bench_peak):
    from transformers import BertConfig

    config = BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536)
    flops = bench_peak.bert_flops(config, seq_len=128, batch=1)
    # per layer: 4*S*H^2 (QKV + out) + 2*S^2*H (scores + context) + 2*S*H*I (FFN) MACs
    per_layer = 4 * 128 * 384**2 + 2 * 128**2 * 384 + 2 * 128 * 384 * 1536
    assert flops.gemm_flops == 2 * 6 * per_layer == 2_868_903_936
    assert "pooler" not in flops.gemm_macs
    assert 0 < flops.total_flops - flops.gemm_flops < 0.02 * flops.total_flops
