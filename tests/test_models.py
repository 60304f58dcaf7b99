"""Model intake: the default model, HF directories, factories, hub ids, and every refusal."""

from __future__ import annotations

import json
import pickle
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from edgeopt.errors import InputFileError, UsageError
from edgeopt.models import Family, check_safetensors, load_model


def test_default_model_is_minilm_with_normalised_embeddings(minilm):
    assert minilm.name == "all-MiniLM-L6-v2"
    assert minilm.family is Family.ENCODER
    assert minilm.input_names == ("input_ids", "attention_mask", "token_type_ids")
    assert minilm.output_names == ("sentence_embedding", "last_hidden_state")
    assert sum(p.numel() for p in minilm.module.parameters()) == 22_713_216
    x = minilm.example_inputs(1, 128)
    assert [tuple(t.shape) for t in x] == [(1, 128)] * 3
    with torch.no_grad():
        emb, hidden = minilm.module(*x)
    assert emb.shape == (1, 384) and hidden.shape == (1, 128, 384)
    assert torch.linalg.norm(emb, dim=-1).item() == pytest.approx(1.0, abs=1e-5)  # the model's Normalize module
    assert len(minilm.source_sha256) == 64


def test_calibration_and_eval_samples_differ_and_vary_in_length(tiny_bert):
    cal = tiny_bert.sample_inputs(4, batch=1, seq_len=32, split="calibration")
    ev = tiny_bert.sample_inputs(4, batch=1, seq_len=32, split="eval")
    cal_ids = {tuple(s[0].flatten().tolist()) for s in cal}
    ev_ids = {tuple(s[0].flatten().tolist()) for s in ev}
    assert not cal_ids & ev_ids
    lengths = [int(s[1].sum()) for s in ev]
    assert len(set(lengths)) > 1 and all(0 < n <= 32 for n in lengths)
    with pytest.raises(ValueError, match="split"):
        tiny_bert.sample_inputs(1, split="train")


def test_missing_path(tmp_path):
    with pytest.raises(InputFileError, match="model not found") as e:
        load_model(str(tmp_path / "nope"))
    assert e.value.exit_code == 3


def test_empty_directory(tmp_path):
    with pytest.raises(InputFileError, match="empty"):
        load_model(str(tmp_path))


def test_directory_without_config(tmp_path):
    (tmp_path / "weights.safetensors").write_bytes(b"x")
    with pytest.raises(InputFileError, match="no config.json"):
        load_model(str(tmp_path))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_remote_code_is_refused_naming_the_files(tiny_bert_dir, tmp_path):
    d = _copy(tiny_bert_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "modeling_evil.py").write_text("raise SystemExit('ran')\n")
    with pytest.raises(InputFileError, match=r"trust_remote_code.*modeling_evil\.py"):
        load_model(str(d))


class _Canary:
    """Unpickling this writes a file: proof that a pickle payload ran."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path(self.path).write_text, ("pwned",))


def test_pickle_checkpoint_is_refused_and_its_payload_never_runs(tiny_bert_dir, tmp_path):
    d = _copy(tiny_bert_dir, tmp_path / "m")
    for f in d.glob("*.safetensors"):
        f.unlink()
    canary = tmp_path / "canary.txt"
    with open(d / "pytorch_model.bin", "wb") as f:
        pickle.dump({"payload": _Canary(str(canary))}, f)
    with pytest.raises(InputFileError, match=r"pickle.*--allow-pickle"):
        load_model(str(d))
    assert not canary.exists()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: (10**9).to_bytes(8, "little") + b[8:], "header length"),
        (lambda b: b[: len(b) // 2], "outside"),
        (lambda b: b[:5], "shorter than"),
        (lambda b: b[:8] + b"{not json" + b[17:], "corrupt safetensors"),
    ],
    ids=["huge-header-length", "truncated", "tiny", "bad-json"],
)
def test_corrupt_safetensors_is_rejected_before_loading(tiny_bert_dir, tmp_path, mutate, message):
    d = _copy(tiny_bert_dir, tmp_path / "m")
    weights = d / "model.safetensors"
    weights.write_bytes(mutate(weights.read_bytes()))
    before = weights.read_bytes()
    with pytest.raises(InputFileError, match=message):
        load_model(str(d))
    assert weights.read_bytes() == before


def test_offsets_past_the_end(tmp_path):
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 4096]}}).encode()
    f = tmp_path / "x.safetensors"
    f.write_bytes(len(header).to_bytes(8, "little") + header + b"\0" * 16)
    with pytest.raises(InputFileError, match=r"'w' offsets \[0, 4096\] outside the 16-byte data section"):
        check_safetensors(f)


def test_factory_file(tmp_path):
    f = tmp_path / "net.py"
    f.write_text(textwrap.dedent("""
        import torch
        def make_model():
            torch.manual_seed(0)
            net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(4))
            x = torch.randn(1, 3, 16, 16)
            net(x)
            return net, (x,)
    """))
    loaded = load_model(f"{f}:make_model")
    assert loaded.family is Family.OTHER
    assert loaded.output_names == ("output",)
    samples = loaded.sample_inputs(2, split="eval")
    assert samples[0][0].shape == (1, 3, 16, 16)
    assert not torch.equal(samples[0][0], samples[1][0])
    with torch.no_grad():
        (out,) = loaded.module(*samples[0])
    assert out.shape == (1, 4)


def test_factory_errors(tmp_path):
    f = tmp_path / "net.py"
    f.write_text("def build():\n    return 3\n")
    with pytest.raises(UsageError, match=r"no function 'make_model'; callables there: build"):
        load_model(f"{f}:make_model")
    with pytest.raises(UsageError, match="must return"):
        load_model(f"{f}:build")
    with pytest.raises(InputFileError, match="not found"):
        load_model(f"{tmp_path / 'missing.py'}:make_model")


def test_hub_id_without_network_says_how_to_pass_a_directory(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(InputFileError, match=r"cannot be reached.*--model DIR"):
        load_model("someorg/some-model-that-is-not-cached")
