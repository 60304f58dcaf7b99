"""Task heads and poolings as users bring them: each loads with outputs named after what they are, computes what
transformers / sentence-transformers compute, and packages with parity in its runtime."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_bert

TEXTS = ["The quick brown fox jumps over the lazy dog.", "A short one.", "Edge devices have little memory to spare."]


def _save_head(tiny_dir: Path, out: Path, cls_name: str, **kw) -> Path:
    import shutil

    import torch
    import transformers

    shutil.copytree(tiny_dir, out)
    config = transformers.AutoConfig.from_pretrained(tiny_dir)
    config.architectures = [cls_name]
    for k, v in kw.items():
        setattr(config, k, v)
    torch.manual_seed(1)
    getattr(transformers, cls_name)(config).eval().save_pretrained(out)
    return out


@pytest.mark.parametrize("cls_name,output,per_token", [
    ("BertForSequenceClassification", "class_logits", False),
    ("BertForTokenClassification", "token_class_logits", True),
    ("BertForMaskedLM", "mlm_logits", True),
])
def test_text_heads_are_named_and_equal_transformers(tiny_bert_dir, tmp_path, cls_name, output, per_token):
    import torch
    import transformers

    from edgeopt.families import Task
    from edgeopt.models import load_model

    d = _save_head(tiny_bert_dir, tmp_path / "m", cls_name, num_labels=3)
    loaded = load_model(str(d))
    assert loaded.output_names == (output,)
    assert loaded.task is {"class_logits": Task.SEQUENCE_CLASSIFICATION, "token_class_logits": Task.TOKEN_CLASSIFICATION,
                           "mlm_logits": Task.MASKED_LM}[output]
    sample = loaded.sample_inputs(1, seq_len=16)[0]
    ours = loaded.module(*sample)[0]
    ref = getattr(transformers, cls_name).from_pretrained(d, attn_implementation="eager").eval()
    with torch.no_grad():
        theirs = ref(**dict(zip(loaded.input_names, sample))).logits
    assert ours.shape == theirs.shape
    assert ours.shape[-1] == (loaded.config.vocab_size if output == "mlm_logits" else 3)
    assert (ours.dim() == 3) is per_token
    assert float((ours - theirs).abs().max()) < 1e-5


def _st_dir(tiny_dir: Path, out: Path, modes: dict, normalize: bool) -> Path:
    import shutil

    shutil.copytree(tiny_dir, out)
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
        (out / "2_Normalize").mkdir()
    (out / "modules.json").write_text(json.dumps(modules))
    (out / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
               "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
               "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False, "include_prompt": True}
    pooling.update(modes)
    (out / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return out


@pytest.mark.parametrize("modes,normalize", [
    ({"pooling_mode_cls_token": True}, False),
    ({"pooling_mode_max_tokens": True}, True),
    ({"pooling_mode_mean_tokens": True}, True),
    ({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True, "pooling_mode_max_tokens": True}, False),
    ({"pooling_mode_mean_sqrt_len_tokens": True}, False),
    ({"pooling_mode_lasttoken": True}, False),
])
def test_sentence_transformers_pooling_matches_sentence_transformers(tiny_bert_dir, tmp_path, modes, normalize):
    """The embedding edgeopt packages is the one SentenceTransformer(dir).encode gives, read from the model's own
    modules.json and 1_Pooling/config.json."""
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import torch

    from edgeopt.models import load_model

    d = _st_dir(tiny_bert_dir, tmp_path / "st", modes, normalize)
    loaded = load_model(str(d))
    assert loaded.output_names == ("sentence_embedding", "last_hidden_state")
    enc = loaded.tokenizer(TEXTS, padding="max_length", max_length=24, truncation=True, return_tensors="pt")
    with torch.no_grad():
        ours = loaded.module(*(enc[n] for n in loaded.input_names))[0].numpy()
    st = sentence_transformers.SentenceTransformer(str(d), device="cpu")
    theirs = st.encode(TEXTS, convert_to_numpy=True)
    assert ours.shape == theirs.shape == (3, 32 * len(modes))
    assert np.abs(ours - theirs).max() < 1e-4
    if normalize:
        assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_minilm_pooling_is_read_from_its_own_config(minilm):
    assert minilm.module.pooling == ("mean",) and minilm.module.normalize is True


def test_unsupported_sentence_transformers_module_is_refused_before_export(tiny_bert_dir, tmp_path):
    from edgeopt.errors import UnsupportedError
    from edgeopt.models import load_model

    d = _st_dir(tiny_bert_dir, tmp_path / "st", {"pooling_mode_mean_tokens": True}, False)
    modules = json.loads((d / "modules.json").read_text())
    modules.append({"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"})
    (d / "modules.json").write_text(json.dumps(modules))
    with pytest.raises(UnsupportedError, match=r"Dense are not reproduced.*remove modules.json") as e:
        load_model(str(d))
    assert e.value.exit_code == 4


def test_encoder_decoder_text_model_is_refused_with_the_fix(tmp_path):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    from edgeopt.errors import UnsupportedError
    from edgeopt.models import load_model

    torch.manual_seed(0)
    cfg = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4)
    T5ForConditionalGeneration(cfg).save_pretrained(tmp_path / "t5")
    with pytest.raises(UnsupportedError, match="encoder-decoder model.*T5EncoderModel"):
        load_model(str(tmp_path / "t5"))


def test_unsupported_head_names_the_base_model(tiny_bert_dir, tmp_path):
    from edgeopt.errors import UnsupportedError
    from edgeopt.models import load_model

    d = _save_head(tiny_bert_dir, tmp_path / "qa", "BertForQuestionAnswering")
    with pytest.raises(UnsupportedError, match=r"BertForQuestionAnswering is not packaged.*BertModel"):
        load_model(str(d))


@pytest.mark.parametrize("cls_name,output", [("BertForSequenceClassification", "class_logits"),
                                             ("BertForTokenClassification", "token_class_logits")])
def test_head_bundle_outputs_are_named_and_verified(tiny_bert_dir, tmp_path, make_small_profile, cls_name, output):
    pytest.importorskip("onnxruntime")
    import edgeopt

    d = _save_head(tiny_bert_dir, tmp_path / "m", cls_name, num_labels=3)
    result = edgeopt.package(str(d), profile=make_small_profile(), fmt="onnx", precision="int8", out=tmp_path / "dist")
    art = result.manifest["artifacts"][0]
    assert [o["name"] for o in art["outputs"]] == [output]
    assert result.manifest["model"]["outputs"] == [output]
    assert art["fidelity"]["mean_cosine"] > 0.99
    assert art["fidelity"]["top1_agreement"] is not None and art["fidelity"]["top1_agreement"] >= 0.9
    npz = np.load(result.bundle_path / "inputs.npz")
    assert npz[f"reference.{output}"].shape[-1] == 3
