"""Small random-init models (fixed seeds) for benchmarks, saved as Hugging Face directories.

- ``make_tiny_decoder``: a 5.3 M-parameter Llama (1.2 GFLOP at seq 128). Big enough that compute is a visible
  share of its latency, small enough that per-op overhead is too, so a cost model has to get both terms right.
- ``make_small_encoder``: a 3.5 M-parameter BERT (hidden 256, 4 layers, 1.7 GFLOP at seq 128) with a WordPiece vocabulary over
  edgeopt's shipped corpus: the third model of benchmarks/bench_cost_model.py, predicted out of sample.

    python benchmarks/bench_models.py OUT_DIR
"""

from __future__ import annotations

import re
import sys
from pathlib import Path


def make_tiny_decoder(path: Path, *, seed: int = 0) -> Path:
    """The Llama decoder at ``path`` (no tokenizer: inputs come from vocab_size)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    path = Path(path)
    if (path / "config.json").is_file():
        return path
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=2048, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=False, architectures=["LlamaForCausalLM"])
    LlamaForCausalLM(config).eval().save_pretrained(path)
    return path


def make_small_encoder(path: Path, *, seed: int = 0) -> Path:
    """The BERT encoder at ``path``, with a tokenizer over the corpus words."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    from edgeopt.resources import builtin_dir  # noqa: F401 - edgeopt installed

    path = Path(path)
    if (path / "config.json").is_file():
        return path
    import edgeopt

    text = (Path(edgeopt.__file__).parent / "corpus.txt").read_text(encoding="utf-8").lower()
    words = sorted(set(re.findall(r"[a-z]+|[^\sa-z]", text)))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    path.mkdir(parents=True, exist_ok=True)
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True).save_pretrained(path)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024, max_position_embeddings=512, architectures=["BertModel"])
    BertModel(config).eval().save_pretrained(path)
    return path


if __name__ == "__main__":
    out = Path(sys.argv[1])
    print(make_tiny_decoder(out / "llama-5m"), make_small_encoder(out / "bert-small"))
