"""Text in, text out in every LM bundle: runner/common/generate.py on real bundles of the trained tiny LM.

The CLI and the README's snippet print the host's greedy continuation from golden.json; generate() greedy is
lmeval.greedy token for token; tokens stream in order while the session advances; eos, the context's end, bad
input (exit 2, one line) and the runner's golden-ids check (ok, and a mismatch when tokenizer.json is altered).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgeopt.resources import builtin_dir

# format -> (precision, the runtime's Python module); tflite is the slowest to build (about 2 minutes more)
FORMATS = {"pte": ("int4", "executorch"), "onnx": ("int8", "onnxruntime"), "tflite": ("int8", "ai_edge_litert")}
COMMON = builtin_dir("runtimes") / "common"
FAST = ("--warmup", "0", "--runs", "1", "--min-seconds", "0", "--repeats", "1", "--new-tokens", "4")


def _load(name: str):
    """A module of runtimes/common by path (what the bundle's runner/common holds)."""
    if str(COMMON) not in sys.path:
        sys.path.insert(0, str(COMMON))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def lm_bundles(tmp_path_factory):
    """The trained tiny LM (edgeopt's cache; trained once, about 4 minutes) packaged for arm-mobile in each format
    whose runtime is installed: {fmt: bundle path}."""
    from edgeopt import api
    from edgeopt.lm.tinylm import build_tiny_lm

    model = build_tiny_lm()
    out = tmp_path_factory.mktemp("generate")
    bundles = {}
    for fmt, (precision, module) in FORMATS.items():
        if importlib.util.find_spec(module) is None:
            continue
        result = api.package(str(model), profile="arm-mobile", out=out / fmt, fmt=fmt, precision=precision,
                             recover_seconds=0)
        bundles[fmt] = Path(result.bundle_path)
    if not bundles:
        pytest.skip("no LM runtime installed (pip install executorch / onnxruntime / ai-edge-litert)")
    return bundles


def _bundle(lm_bundles, fmt: str) -> Path:
    if fmt not in lm_bundles:
        pytest.skip(f"{FORMATS[fmt][1]} is not installed")
    return lm_bundles[fmt]


def _golden(bundle: Path) -> dict:
    return json.loads((bundle / "tokenizer" / "golden.json").read_text(encoding="utf-8"))


def _cli(bundle: Path, *flags: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "runner/common/generate.py", "--bundle", ".", *flags],
                          cwd=cwd or bundle, capture_output=True, text=True, timeout=600, check=False)


def _messages(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("generate: ")]


def _host_text(bundle: Path, k: int = 0) -> str:
    """The host's greedy continuation of golden text k (its artifact in its runtime on the host), to eos."""
    from tokenizers import Tokenizer

    golden = _golden(bundle)
    entry, eos = golden["texts"][k], golden["settings"]["special_tokens"]["eos_token"]["id"]
    tokens = entry["outputs"]["artifact_tokens"]
    if eos not in tokens:
        return entry["outputs"]["artifact_text"]
    tok = Tokenizer.from_file(str(bundle / "tokenizer" / "tokenizer.json"))
    return tok.decode(tokens[:tokens.index(eos)], skip_special_tokens=False)


@pytest.fixture(scope="module")
def session(lm_bundles):
    """generate.open_bundle on the ExecuTorch int4 bundle (else the first one): the loaded LM."""
    generate = _load("generate")
    fmt = "pte" if "pte" in lm_bundles else next(iter(lm_bundles))
    return generate.open_bundle(str(lm_bundles[fmt]))


# ------------------------------------------------------------------------------------------ the bundle


def test_every_lm_bundle_ships_generate_py_hashed(lm_bundles):
    for bundle in lm_bundles.values():
        manifest = json.loads((bundle / "manifest.json").read_text())
        shipped = bundle / "runner" / "common" / "generate.py"
        assert shipped.read_bytes() == (COMMON / "generate.py").read_bytes()
        assert "runner/common/generate.py" in manifest["files"]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_cli_prints_the_host_greedy_continuation(lm_bundles, fmt):
    """--golden-prompt 0 and --prompt with the same text print the host's greedy text, and tokens/s."""
    bundle = _bundle(lm_bundles, fmt)
    golden = _golden(bundle)
    want = _host_text(bundle)
    proc = _cli(bundle, "--golden-prompt", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == want + "\n"
    messages = "\n".join(_messages(proc.stderr))
    n = len(golden["texts"][0]["outputs"]["artifact_tokens"])
    assert f"greedy tokens equal to the host's: {n}/{n}" in messages, messages
    assert f"tokenizer: ids equal to golden.json on {len(golden['texts'])}/{len(golden['texts'])} texts" in messages
    assert re.search(r"128 prompt tokens, \d+ new tokens \(stop: max_new_tokens\).*decode [\d.]+ tokens/s", messages)
    proc = _cli(bundle, "--prompt", golden["texts"][0]["text"], "--max-new-tokens", str(n))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout == want + "\n"


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_readme_generate_snippet_prints_the_host_continuation(lm_bundles, fmt):
    bundle = _bundle(lm_bundles, fmt)
    readme = (bundle / "README.md").read_text(encoding="utf-8")
    golden = _golden(bundle)
    runtime = json.loads((bundle / "manifest.json").read_text())["artifacts"][0]["runtime"]
    assert "## Generate text" in readme
    assert f"python3 runner/common/generate.py --bundle . --runtime {runtime} --golden-prompt 0" in readme
    code = re.search(r"### Python: prompt in, text out.*?```python\n(.*?)```", readme, re.DOTALL).group(1)
    assert f'generate.open_bundle(".", runtime="{runtime}")' in code
    proc = subprocess.run([sys.executable, "-c", code], cwd=bundle, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    n = len(golden["texts"][0]["outputs"]["artifact_tokens"])
    assert f"tokenizer: ids equal to golden.json on {len(golden['texts'])}/{len(golden['texts'])} texts\n" in proc.stdout
    assert "\n" + _host_text(bundle) + "\ntokens equal to the host's greedy continuation: " in proc.stdout, proc.stdout
    assert f"tokens equal to the host's greedy continuation: {n}/{n} ({n} tokens, stop: max_new_tokens" in proc.stdout


# ------------------------------------------------------------------------------------------ the loop


def test_greedy_ids_equal_lmeval_greedy(session):
    generate, lmeval = _load("generate"), _load("lmeval")
    golden = _golden(Path(session.tokenizer.source).parent.parent)
    for entry in golden["texts"][:2]:
        ids = session.tokenizer.encode(entry["text"])
        assert ids == entry["ids"]
        want = lmeval.greedy(session.session, ids, 40).tolist()
        out = generate.generate(session.session, session.tokenizer, entry["text"], 40, eos_ids=())
        assert out.ids == want and out.prompt_ids == ids and out.stop_reason == "max_new_tokens"
        assert out.text == session.tokenizer.decode(want)
        assert generate.generate(session.session, session.tokenizer, ids, 40, eos_ids=()).ids == want  # ids in


def test_tokens_stream_in_order_as_they_are_generated(session):
    generate = _load("generate")
    text = "ROMEO.\nWhat light"
    seen = []

    def on_token(t):  # each token arrives while the session is still generating: the cache is where it was
        seen.append((t.index, t.id, t.text, session.session.position))

    out = generate.generate(session.session, session.tokenizer, text, 24, eos_ids=(), on_token=on_token)
    n = len(out.prompt_ids)
    assert [s[0] for s in seen] == list(range(24)) and [s[1] for s in seen] == out.ids
    assert [s[3] for s in seen] == [n + i for i in range(24)]  # token i comes before decode step i + 1 runs
    assert "".join(s[2] for s in seen) == out.text
    streamed = list(generate.stream(session.session, session.tokenizer, text, 24, eos_ids=()))
    assert [t.id for t in streamed] == out.ids and "".join(t.text for t in streamed) == out.text


def test_eos_stops_generation(session):
    generate = _load("generate")
    text = "ROMEO.\nWhat light"
    free = generate.generate(session.session, session.tokenizer, text, 24, eos_ids=()).ids
    stop = free[6]
    k = free.index(stop)
    out = generate.generate(session.session, session.tokenizer, text, 24, eos_ids=(stop,))
    assert out.stop_reason == "eos" and out.ids == free[:k] and out.text == session.tokenizer.decode(free[:k])
    assert session.tokenizer.eos_ids == (1,)  # <|eos|>, from golden.json's settings: the default stop


def test_sampling_is_seeded_and_differs_from_greedy(session):
    generate = _load("generate")
    text = "ROMEO.\nWhat light"
    a = generate.generate(session.session, session.tokenizer, text, 24, temperature=1.0, top_k=50, seed=3, eos_ids=())
    b = generate.generate(session.session, session.tokenizer, text, 24, temperature=1.0, top_k=50, seed=3, eos_ids=())
    greedy = generate.generate(session.session, session.tokenizer, text, 24, eos_ids=())
    assert a.ids == b.ids and a.ids != greedy.ids


def test_context_limits(session):
    generate = _load("generate")
    ctx = session.artifact["lm"]["context_len"]
    long_ids = (session.tokenizer.encode("ROMEO.\nWhat light through yonder window breaks? ") * 200)[:ctx + 20]
    with pytest.raises(generate.GenerateError, match=rf"the prompt is {ctx + 20} tokens; .* holds {ctx}"):
        generate.generate(session.session, session.tokenizer, long_ids, 8)
    out = generate.generate(session.session, session.tokenizer, long_ids, 8, truncate=True, eos_ids=())
    assert out.prompt_truncated == 20 + 7 and len(out.prompt_ids) == ctx - 7 and len(out.ids) == 8
    out = generate.generate(session.session, session.tokenizer, long_ids[:ctx - 2], 8, eos_ids=())
    assert (out.stop_reason, len(out.ids)) == ("context_full", 3)  # prompt + new tokens - 1 fill the cache
    with pytest.raises(generate.GenerateError, match="the prompt is empty"):
        generate.generate(session.session, session.tokenizer, "", 8)


# ------------------------------------------------------------------------------------------ bad input: exit 2


def test_cli_refuses_a_prompt_longer_than_the_context(lm_bundles, tmp_path):
    bundle = lm_bundles["onnx"] if "onnx" in lm_bundles else next(iter(lm_bundles))
    long_text = tmp_path / "long.txt"
    long_text.write_text("ROMEO.\nWhat light through yonder window breaks?\n" * 100, encoding="utf-8")
    proc = _cli(bundle, "--prompt-file", str(long_text))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "Traceback" not in proc.stderr
    (line,) = [m for m in _messages(proc.stderr) if "error" in m]
    assert re.match(r"generate: error: the prompt is \d+ tokens; this model's context \(KV cache\) holds 512", line)
    proc = _cli(bundle, "--prompt-file", str(long_text), "--truncate", "--max-new-tokens", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert any("the prompt was truncated" in m for m in _messages(proc.stderr))


def test_cli_bad_input_is_one_line_and_exit_2(lm_bundles, tmp_path):
    bundle = lm_bundles["onnx"] if "onnx" in lm_bundles else next(iter(lm_bundles))
    for flags, message in ((("--prompt", ""), "the prompt is empty"),
                           (("--golden-prompt", "99"), "has texts 0..3, not 99")):
        proc = _cli(bundle, *flags)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert [m for m in _messages(proc.stderr) if message in m], proc.stderr
    no_tok = tmp_path / "no-tokenizer"
    shutil.copytree(bundle, no_tok)
    shutil.rmtree(no_tok / "tokenizer")
    proc = _cli(no_tok, "--prompt", "ROMEO.")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stdout == ""
    (line,) = _messages(proc.stderr)
    assert "has no tokenizer/tokenizer.json: this bundle carries no tokenizer" in line, line
    proc = subprocess.run([sys.executable, "runner/common/generate.py", "--bundle", "."], cwd=bundle,
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "one of the arguments --prompt --prompt-file --golden-prompt" in proc.stderr


# ------------------------------------------------------------------------------------------ golden ids


def _runner(bundle: Path) -> dict:
    proc = subprocess.run([sys.executable, "runner/common/runner.py", "--bundle", ".", *FAST], cwd=bundle,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from edgeopt.benchmark.result import parse_result

    return parse_result(proc.stdout), proc.stderr


def _alter(tokenizer_json: Path, a: int, b: int) -> None:
    """Swap the ids of two vocabulary entries: the same text then tokenizes to other ids."""
    spec = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    by_id = {v: k for k, v in vocab.items()}
    vocab[by_id[a]], vocab[by_id[b]] = b, a
    tokenizer_json.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")


def test_runner_reports_the_golden_ids_check(lm_bundles, tmp_path):
    from edgeopt.benchmark.result import format_table

    bundle = lm_bundles["onnx"] if "onnx" in lm_bundles else next(iter(lm_bundles))
    golden = _golden(bundle)
    result, stderr = _runner(bundle)
    tok = result.raw["tokenizer"]
    assert tok == {"file": "tokenizer/golden.json", "checked": True, "ok": True, "texts": 4, "ids_equal": 4,
                   "mismatches": [], "files_verified": True, "tokenizers_version": tok["tokenizers_version"],
                   "reason": None}
    assert "ids equal to golden.json on 4/4 texts" in format_table(result)

    bad = tmp_path / "altered"
    shutil.copytree(bundle, bad)
    ids = golden["texts"][0]["ids"]
    _alter(bad / "tokenizer" / "tokenizer.json", ids[0], next(i for i in ids if i != ids[0]))
    # A changed tokenizer.json fails the bundle's own check first (issue 20: nothing unverified runs) ...
    proc = subprocess.run([sys.executable, "runner/common/runner.py", "--bundle", ".", *FAST], cwd=bad,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 3 and "tokenizer/tokenizer.json: sha256 mismatch: manifest" in proc.stderr
    # ... so re-sign it, as a device whose tokenizers library tokenizes differently would look: the ids differ.
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["files"]["tokenizer/tokenizer.json"] = hashlib.sha256(
        (bad / "tokenizer" / "tokenizer.json").read_bytes()).hexdigest()
    (bad / "manifest.json").write_text(json.dumps(manifest))
    result, stderr = _runner(bad)
    tok = result.raw["tokenizer"]
    assert tok["checked"] is True and tok["ok"] is False and tok["ids_equal"] < 4 and tok["files_verified"] is True
    assert tok["mismatches"][0]["text"] == 0 and tok["mismatches"][0]["position"] == 0
    assert "tokenize differently from the host" in tok["reason"]
    assert result.valid  # the timing itself is still valid; the mismatch is reported beside it
    assert "runner: warning: tokenizer: MISMATCH" in stderr
    assert "MISMATCH" in format_table(result)
    proc = _cli(bad, "--golden-prompt", "0")
    assert any("tokenizer: MISMATCH" in m for m in _messages(proc.stderr)), proc.stderr[-2000:]


def test_golden_check_without_the_tokenizers_package(lm_bundles, monkeypatch):
    generate = _load("generate")
    bundle = next(iter(lm_bundles.values()))

    def missing():
        raise generate.MissingPackage("the tokenizers package is not installed; install it with: "
                                      "python3 -m pip install tokenizers")

    monkeypatch.setattr(generate, "_tokenizers", missing)
    check = generate.check_golden(str(bundle), json.loads((bundle / "manifest.json").read_text()))
    assert (check["checked"], check["ok"], check["texts"]) == (False, None, 4)
    assert "pip install tokenizers" in check["reason"]
    assert generate.describe_check(check).startswith("tokenizer: golden ids NOT checked")
