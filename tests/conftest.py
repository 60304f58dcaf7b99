"""Shared fixtures: real small models built from transformers configs with fixed seeds (no download),
and the real all-MiniLM-L6-v2 for integration tests."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent


def _corpus_vocab() -> list[str]:
    text = (REPO / "edgeopt" / "corpus.txt").read_text(encoding="utf-8").lower()
    words = sorted(set(re.findall(r"[a-z]+|[^\sa-z]", text)))
    return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]


def make_tiny_bert(path: Path, *, seed: int = 0, layers: int = 2, hidden: int = 32, heads: int = 4,
                   intermediate: int = 64) -> Path:
    """A random-init BERT with a WordPiece tokenizer over the corpus words, saved as a HF directory."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = _corpus_vocab()
    tok = BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tok.save_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=intermediate, max_position_embeddings=128, architectures=["BertModel"])
    BertModel(config).eval().save_pretrained(path)
    return path


def make_tiny_llama(path: Path, *, seed: int = 0) -> Path:
    """A random-init 2-layer Llama (vocab 128, hidden 32, GQA 4/2 heads), saved as a HF directory."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, max_position_embeddings=64, architectures=["LlamaForCausalLM"])
    LlamaForCausalLM(config).eval().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("models") / "tiny-bert")


@pytest.fixture(scope="session")
def tiny_bert(tiny_bert_dir):
    from edgeopt.models import load_model

    return load_model(str(tiny_bert_dir))


@pytest.fixture(scope="session")
def minilm():
    from edgeopt.models import load_model

    return load_model(None)


def _small_profile(*, shapes: dict | None = None, fidelity: dict | None = None):
    from edgeopt.profiles import Profile, load_profile

    base = load_profile("desktop-cpu").to_dict()
    base["name"] = "test-desktop"
    base["shapes"] = shapes or {"batch": 1, "seq_len": 32}
    base["targets"] = {"latency_ms": None, "fidelity": fidelity or {"min_cosine": 0.99}}
    return Profile.from_dict(base, source="<test>")


@pytest.fixture(scope="session")
def make_small_profile():
    """``make_small_profile(shapes=..., fidelity=...)``: a desktop-class profile at short shapes, no latency
    target, so tiny-model tests run in seconds (session-scoped: module fixtures can use it)."""
    return _small_profile


@pytest.fixture
def small_profile():
    """A desktop-class profile at short shapes, so tiny-model tests run in seconds."""
    return _small_profile()
