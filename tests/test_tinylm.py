"""The tiny trained LM: it loads, it is deterministic, it is cached atomically, and it learned something.

The tests train a smaller shape than the default (``SMALL``) for a fixed number of steps, so the file runs
in about a minute on a busy two-core machine; the default model records its own numbers in
``edgeopt_tinylm.json``.
"""

from __future__ import annotations

import hashlib
import json
import math

import pytest

from edgeopt.errors import BundleError, UsageError
from edgeopt.lm import tinylm

SMALL = tinylm.TinyLMConfig(vocab_size=512, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
                            num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=256)
STEPS = 60
# Measured: held-out perplexity / unigram-baseline perplexity of SMALL after 60 steps was 0.653 (118.2 / 180.9);
# the bound leaves room for another machine's float sums and still fails an untrained or unigram-only model.
MAX_RATIO = 0.8


def _weights_sha(model_dir) -> str:
    from safetensors.torch import load_file

    tensors = load_file(str(model_dir / "model.safetensors"))
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("tinylm-cache")


@pytest.fixture(scope="module")
def built(cache):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("EDGEOPT_CACHE", str(cache))
        return tinylm.build_tiny_lm(train_steps=STEPS, config=SMALL)


def test_texts_are_disjoint_and_shipped():
    train, heldout = tinylm.training_text(), tinylm.heldout_text()
    assert 1_000_000 < len(train) < 2_000_000 and 150_000 < len(heldout) < 400_000
    assert train.count("\n\n\n") == 9 and heldout.count("\n\n\n") == 1  # ten plays, two plays
    assert "MACBETH" in heldout and "MACBETH" not in train
    assert "HAMLET" in train and "HAMLET" not in heldout


def test_loads_with_auto_classes_and_records_what_was_trained(built, cache):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert built.parent == cache / "tiny-lm" and built.name == tinylm.cache_key(
        SMALL, tinylm.TrainConfig(steps=STEPS))
    model = AutoModelForCausalLM.from_pretrained(built).eval()
    tok = AutoTokenizer.from_pretrained(built)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert model.config.num_key_value_heads == 1 and model.config.vocab_size == len(tok) == 512
    text = "O Romeo, Romeo! wherefore art thou Romeo?\n"
    ids = tok(text)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.decode(ids, skip_special_tokens=True) == text
    info = json.loads((built / tinylm.INFO_FILE).read_text())
    assert info["params"] == sum(p.numel() for p in model.parameters())
    assert info["train"]["steps_done"] == STEPS and info["train"]["stopped_early"] is False
    assert info["train"]["tokens_seen"] == STEPS * 8 * 128
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), 512) and torch.isfinite(logits).all()


def test_heldout_perplexity_is_far_below_the_unigram_baseline(built):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    info = json.loads((built / tinylm.INFO_FILE).read_text())["perplexity"]
    model = AutoModelForCausalLM.from_pretrained(built).eval()
    tok = AutoTokenizer.from_pretrained(built)
    # Re-score held-out text here, through the saved files, the way a user would.
    ids = [tok.bos_token_id, *tok(tinylm.heldout_text(), add_special_tokens=False)["input_ids"]]
    x = torch.tensor([ids[i * 128:(i + 1) * 128] for i in range(64)])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=x).logits[:, :-1], dim=-1)
    ppl = math.exp(-float(logp.gather(2, x[:, 1:, None]).mean()))
    assert ppl == pytest.approx(info["heldout"], rel=1e-3)  # the same 8192 tokens the build scored
    assert info["heldout"] < MAX_RATIO * info["unigram_heldout"], info
    assert info["train"] < info["unigram_heldout"]


def test_same_steps_same_weights_and_the_cache_hit_trains_nothing(built, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path / "other"))
    monkeypatch.setattr(tinylm, "_TOKENIZED", {})  # retrain the tokenizer too, not the memoised one
    again = tinylm.build_tiny_lm(train_steps=STEPS, config=SMALL)
    assert again != built and _weights_sha(again) == _weights_sha(built)
    assert (again / "tokenizer.json").read_bytes() == (built / "tokenizer.json").read_bytes()

    def no_training(*_a, **_k):
        raise AssertionError("a cache hit must not train")

    monkeypatch.setattr(tinylm, "_train", no_training)
    assert tinylm.build_tiny_lm(train_steps=STEPS, config=SMALL) == again


def test_out_dir_gets_a_copy_and_refuses_a_foreign_folder(built, cache, tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_CACHE", str(cache))
    monkeypatch.setattr(tinylm, "_train", lambda *_a, **_k: pytest.fail("cached: must not train"))
    out = tinylm.build_tiny_lm(tmp_path / "model", train_steps=STEPS, config=SMALL)
    assert out == tmp_path / "model" and _weights_sha(out) == _weights_sha(built)
    assert tinylm.build_tiny_lm(out, train_steps=STEPS, config=SMALL) == out  # an earlier copy is replaced
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(BundleError, match="not an earlier tiny-LM copy"):
        tinylm.build_tiny_lm(foreign, train_steps=STEPS, config=SMALL)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_an_interrupted_build_leaves_no_cache_entry(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEOPT_CACHE", str(tmp_path))
    real = tinylm._optimise
    steps = []

    def interrupted(model, ids, train, say):
        def say_and_stop(message):
            steps.append(message)
            raise KeyboardInterrupt  # Ctrl-C during the first optimiser steps

        return real(model, ids, train, say_and_stop)

    monkeypatch.setattr(tinylm, "_optimise", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tinylm.build_tiny_lm(train_steps=STEPS, config=SMALL)
    assert steps and "step 1/" in steps[0]
    root = tmp_path / "tiny-lm"
    assert list(root.iterdir()) == []  # neither the entry nor its temporary folder
    monkeypatch.setattr(tinylm, "_optimise", real)


def test_bad_budget_is_refused():
    with pytest.raises(UsageError, match="train_steps=0"):
        tinylm.build_tiny_lm(train_steps=0)
