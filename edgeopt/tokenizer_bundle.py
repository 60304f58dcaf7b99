"""The tokenizer travels with the model: ``tokenizer/`` in the bundle of every model that has one.

``write_tokenizer`` saves the model's tokenizer (``save_pretrained`` into the staging folder, then rewritten so
the files are byte-reproducible and carry no path of this machine), ``vocab.txt`` for WordPiece tokenizers (what
TFLite Support's ``BertTokenizer`` reads), and ``golden.json``: the held-out texts whose inputs are in
``inputs.npz``, their token ids unpadded and at the padding the artifact takes, the tokenizer settings that
change ids, and the host's outputs for each text (the fp32 model's and the artifact's), so an app can check its
on-device tokenizer and then "text in -> embedding out" against the host. Decoder LMs get the same files, with
the held-out prompts (ids without special tokens, as the quality gate feeds them).

``readme_section`` and ``python_snippet`` write the bundle README's "Tokenizer" part; for decoder LMs,
``generate_section`` and ``generate_snippet`` add "Generate text": the command and the Python that run the bundle's
``runner/common/generate.py`` (prompt in, streamed text out). The tests run both snippets.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

TOKENIZER_DIR = "tokenizer"
GOLDEN = "golden.json"
MAX_INLINE_VALUES = 4096  # outputs with more values per text are pointed to in inputs.npz, not copied
# Keys of tokenizer_config.json that hold a path of the machine that packaged (or nothing an app needs).
_PATH_KEYS = ("name_or_path", "vocab_file", "tokenizer_file", "merges_file", "is_local", "local_files_only")
# Encoding fields of the `tokenizers` package, by the artifact input they fill.
ENCODING_FIELD = {"input_ids": "ids", "attention_mask": "attention_mask", "token_type_ids": "type_ids"}


def write_tokenizer(staging: Path, loaded, data, built: list, samples: int) -> dict | None:
    """Write ``staging/tokenizer/`` for ``loaded``'s tokenizer; the manifest's ``tokenizer`` record, or None.

    Args:
        staging: the bundle's staging folder.
        loaded: the LoadedModel (``tokenizer`` None: nothing is written).
        data: the pipeline's samples (``eval_np``, ``reference``, ``shapes``; ``lm`` for decoder LMs).
        built: the bundled artifacts (the first one's host outputs go into golden.json).
        samples: how many eval samples inputs.npz keeps (their texts are the golden ones).
    """
    tok = loaded.tokenizer
    if tok is None:
        return None
    folder = staging / TOKENIZER_DIR
    folder.mkdir()
    lm = data.lm is not None
    max_length = None if lm else int(data.shapes[1])
    backend = _save(tok, folder, staging / ".tokenizer-work", max_length)
    settings = _settings(tok, backend, max_length, add_special_tokens=not lm)
    golden = {"schema_version": 1, "settings": settings}
    golden.update(_lm_golden(tok, data, built) if lm else _encoder_golden(tok, loaded, data, built, samples, settings))
    (folder / GOLDEN).write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    files = sorted(p.name for p in folder.iterdir() if p.is_file())
    return {
        "dir": TOKENIZER_DIR,
        "files": [f"{TOKENIZER_DIR}/{f}" for f in files],
        "class": type(tok).__name__,
        "model": settings["model"],
        "golden": f"{TOKENIZER_DIR}/{GOLDEN}",
        "texts": len(golden["texts"]),
        "settings": settings,
    }


# ------------------------------------------------------------------------------------------ files


def _save(tok, folder: Path, work: Path, max_length: int | None):
    """save_pretrained into ``work`` (inside the staging folder), then the files it wrote, made reproducible.

    tokenizer.json comes from the backend tokenizer with truncation set to the artifact's length (None: off) and
    padding off (the app pads to what its artifact takes, golden.json says how): the transformers object keeps
    whatever truncation/padding its last call set, so its own file would depend on the calls before.
    Returns the ``tokenizers.Tokenizer`` written."""
    from tokenizers import Tokenizer

    work.mkdir()
    try:
        written = [Path(p) for p in tok.save_pretrained(str(work))]
        for path in sorted(written):
            if path.is_file() and path.parent == work and path.name not in ("tokenizer.json", "tokenizer_config.json"):
                shutil.copyfile(path, folder / path.name)
        config_path = work / "tokenizer_config.json"
        if config_path.is_file():
            config = json.loads(config_path.read_text(encoding="utf-8"))
            config = {k: v for k, v in config.items() if k not in _PATH_KEYS}
            (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2, sort_keys=True,
                                                                     ensure_ascii=False) + "\n", encoding="utf-8")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.no_padding()
    if max_length:
        backend.enable_truncation(max_length, strategy="longest_first", direction=tok.truncation_side)
    else:
        backend.no_truncation()
    backend.save(str(folder / "tokenizer.json"), pretty=True)
    special = {k: v for k, v in sorted(tok.special_tokens_map.items()) if isinstance(v, str)}
    if special and not (folder / "special_tokens_map.json").exists():
        (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n", encoding="utf-8")
    model = json.loads(backend.to_str()).get("model") or {}
    if model.get("type") == "WordPiece" and not (folder / "vocab.txt").exists():
        vocab = sorted(model.get("vocab", {}).items(), key=lambda kv: kv[1])
        (folder / "vocab.txt").write_text("".join(f"{w}\n" for w, _ in vocab), encoding="utf-8")
    return backend


def _settings(tok, backend, max_length: int | None, *, add_special_tokens: bool) -> dict:
    """What changes the ids: model type, lower-casing, special tokens added, truncation and padding."""
    spec = json.loads(backend.to_str())
    added = tok("", add_special_tokens=add_special_tokens)["input_ids"]
    special = {}
    for name in ("bos_token", "eos_token", "unk_token", "sep_token", "cls_token", "pad_token", "mask_token"):
        token = getattr(tok, name, None)
        if isinstance(token, str):
            special[name] = {"token": token, "id": tok.convert_tokens_to_ids(token)}
    return {
        "class": type(tok).__name__,
        "model": (spec.get("model") or {}).get("type"),
        "lowercase": _lowercases(spec.get("normalizer")),
        "add_special_tokens": add_special_tokens,
        "special_tokens_added": tok.convert_ids_to_tokens(added),
        "special_tokens": special,
        "max_length": max_length,
        "truncation": {"strategy": "longest_first", "side": tok.truncation_side} if max_length else None,
        "padding": ({"length": max_length, "side": tok.padding_side, "pad_token": tok.pad_token,
                     "pad_id": tok.pad_token_id, "pad_type_id": int(getattr(tok, "pad_token_type_id", 0) or 0)}
                    if max_length else None),
        "vocab_size": backend.get_vocab_size(with_added_tokens=True),
    }


def _lowercases(normalizer) -> bool:
    if not isinstance(normalizer, dict):
        return False
    if normalizer.get("type") == "Lowercase" or normalizer.get("lowercase") is True:
        return True
    return any(_lowercases(n) for n in normalizer.get("normalizers") or [])


# ------------------------------------------------------------------------------------------ golden ids


def _floats(values) -> list[float]:
    """float32 values as the shortest decimals that read back to the same float32 (reproducible JSON)."""
    import numpy as np

    return [float(str(v)) for v in np.asarray(values, dtype=np.float32).ravel()]


def _encoder_golden(tok, loaded, data, built: list, samples: int, settings: dict) -> dict:
    from edgeopt.models import sample_texts

    batch, seq_len = data.shapes
    k = min(samples, len(data.eval_np))
    texts = sample_texts(k * batch, "eval")
    first = built[0]
    host = getattr(first.expected, "trimmed", None)
    host_key = "trimmed" if host is not None else "expected"
    host = host if host is not None else first.expected
    names = list(loaded.output_names)
    # one vector per text (a sentence embedding, logits): per-token outputs are only pointed to in inputs.npz
    inline = [j for j in range(len(names))
              if data.reference[0][j][0].ndim == 1 and data.reference[0][j][0].size <= MAX_INLINE_VALUES]
    entries = []
    for r, text in enumerate(texts):
        s, b = divmod(r, batch)
        full = tok(text, add_special_tokens=True)["input_ids"]
        enc = tok(text, padding="max_length", truncation=True, max_length=seq_len)
        n = int(sum(enc["attention_mask"]))
        entries.append({
            "text": text, "sample": s, "row": b,
            "ids": list(enc["input_ids"][:n]), "length": n, "truncated": len(full) > n,
            "padded": {name: list(enc[name]) for name in loaded.input_names if name in enc},
            "outputs": {
                "fp32": {names[j]: _floats(data.reference[s][j][b]) for j in inline},
                "artifact": {names[j]: _floats(host[s][j][b]) for j in inline},
            },
        })
    return {
        "artifact": first.artifact.path.name,
        "inputs_npz": {
            "index": "inputs.npz arrays are [sample, row, ...]: text i is [sample, row]",
            "inputs": {name: f"input.{name}" for name in loaded.input_names},
            "fp32": {name: f"reference.{name}" for name in names},
            "artifact": {name: f"{host_key}.{name}" for name in names},
        },
        "texts": entries,
    }


def _lm_golden(tok, data, built: list) -> dict:
    lm = data.lm
    first = built[0]
    entries = []
    for i, prompt in enumerate(lm.prompts):
        prompt = [int(t) for t in prompt]
        text = tok.decode(prompt, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        ids = list(tok(text, add_special_tokens=False)["input_ids"])
        fp32, art = [int(t) for t in lm.reference_tokens[i]], [int(t) for t in first.expected.tokens[i]]
        entries.append({
            "text": text, "prompt": i, "ids": ids, "length": len(ids), "matches_prompt": ids == prompt,
            **({} if ids == prompt else {"prompt_ids": prompt}),
            "outputs": {"fp32_tokens": fp32, "artifact_tokens": art,
                        "artifact_text": tok.decode(art, skip_special_tokens=False, clean_up_tokenization_spaces=False)},
        })
    return {
        "artifact": first.artifact.path.name,
        "inputs_npz": {"index": "inputs.npz arrays are [prompt, ...]", "inputs": {"input_ids": "lm.prompts"},
                       "fp32": {"tokens": "reference.tokens"}, "artifact": {"tokens": "expected.tokens"}},
        "texts": entries,
    }


# ------------------------------------------------------------------------------------------ README


def readme_section(manifest: dict, threads: int = 4) -> list[str]:
    """The bundle README's "Tokenizer" section (empty when the bundle has no tokenizer)."""
    rec = manifest.get("tokenizer")
    if not rec:
        return []
    st = rec["settings"]
    art = manifest["artifacts"][0]
    files = ", ".join(f"`{f}`" for f in rec["files"])
    lines = ["## Tokenizer", "",
             f"`{rec['dir']}/` holds the model's own tokenizer ({st['class']}, {st['model']}, "
             f"{st['vocab_size']} tokens): {files}. `tokenizer.json` is the Hugging Face `tokenizers` file; the rest "
             "are what `transformers.AutoTokenizer.from_pretrained(\"tokenizer\")` and the libraries below read.",
             "", "Settings that change the ids (the app must do the same):", "",
             f"- lower-casing: {'yes (the normalizer lower-cases; do it yourself where a library does not)' if st['lowercase'] else 'no'}",
             f"- special tokens added around the text: {' '.join(st['special_tokens_added']) or 'none'}"
             + ("" if st["add_special_tokens"] else " (prompts are fed without special tokens)")]
    if st.get("max_length"):
        pad = st["padding"]
        lines += [f"- at most {st['max_length']} tokens, special tokens included (longer text is truncated on the "
                  f"{st['truncation']['side']}; tokenizer.json truncates)",
                  f"- padding: not in tokenizer.json; an artifact with fixed shapes takes {pad['length']} tokens, "
                  f"padded on the {pad['side']} with `{pad['pad_token']}` (id {pad['pad_id']}), attention_mask 0 "
                  "there" + (f", token_type_ids {pad['pad_type_id']}" if any(s["name"] == "token_type_ids"
                                                                          for s in art["inputs"]) else "")]
    lines += ["", f"`{rec['golden']}` holds {rec['texts']} held-out texts (the ones whose inputs are in `inputs.npz`) "
              "with their ids (`ids`: no padding; `padded`: every input at the artifact's padded length), the "
              "settings above and the host's outputs for each (`outputs.fp32`: the PyTorch model; `outputs.artifact`:"
              " this artifact in its runtime on the host). Tokenize each text on the device and compare the ids "
              "exactly; then run the artifact and compare its output with `outputs.artifact` (cosine >= 0.9999).",
              "", "### On the device", "", *_device_options(rec, st), "",
              "### Python: text in, output out", "",
              "Run from this folder (`pip install tokenizers numpy` and the runtime): it tokenizes the golden texts "
              "with `tokenizer/tokenizer.json`, checks the ids, "
              + ("then decodes the host's greedy continuation back to the stored text." if art.get("lm")
                 else "feeds the first text to the artifact and compares its output with the host's."),
              "", "```python", python_snippet(art, rec, threads).rstrip("\n"), "```", ""]
    if art.get("lm"):
        lines += generate_section(manifest)
    return lines


# ------------------------------------------------------------------------------------------ generate text

GENERATE_PY = "runner/common/generate.py"


def generate_section(manifest: dict) -> list[str]:
    """The bundle README's "Generate text" section of a decoder LM with a tokenizer: the command and the Python
    that run ``runner/common/generate.py`` (the prompt -> tokens loop the runner's golden-ids check shares)."""
    from edgeopt.appnotes import VERSION_KEY
    from edgeopt.formats import Runtime

    rec, art = manifest.get("tokenizer"), manifest["artifacts"][0]
    if not rec or not art.get("lm"):
        return []
    st, lm = rec["settings"], art["lm"]
    runtime = art["runtime"]
    eos = (st.get("special_tokens") or {}).get("eos_token")
    eos_text = f"`{eos['token']}` (id {eos['id']})" if eos else "none (it stops at the token count)"
    return [
        "## Generate text", "",
        f"`{GENERATE_PY}` is this bundle's prompt -> tokens loop (Python 3.9+, numpy, `tokenizers` and "
        f"`{VERSION_KEY[Runtime.parse(runtime)]}`): it tokenizes the prompt with `{rec['dir']}/tokenizer.json` as the "
        "host fed its held-out prompts ("
        + ("special tokens added" if st["add_special_tokens"] else "plain text ids: no bos or other special token added")
        + f"), prefills it, then decodes one token at a time with `runner/{runtime}/backend.py`'s `load_lm` session, "
        f"streaming the text; it stops at the eos token {eos_text}, at the token count or when the "
        f"{lm['context_len']}-token KV cache is full. Greedy by default (the host's choice); `--temperature`, "
        "`--top-k`, `--top-p` and `--seed` sample. A prompt longer than the context is refused (`--truncate` keeps its "
        "end); an empty prompt or a bundle without tokenizer exits 2 with one line. It also tokenizes "
        f"`{rec['golden']}`'s texts and says whether the ids equal the host's (the runner's JSON result reports the "
        "same check as `tokenizer`).", "",
        "From this folder:", "",
        "```sh",
        f"python3 {GENERATE_PY} --bundle . --runtime {runtime} --prompt \"To be, or not to be\" --max-new-tokens 32",
        f"python3 {GENERATE_PY} --bundle . --runtime {runtime} --golden-prompt 0   # the host's continuation",
        "```", "",
        "The text goes to stdout as it is generated; the tokenizer check, prompt and new tokens, time to first token "
        "and decode tokens/s go to stderr (`--json`: one JSON object with the text, ids and timings instead). "
        f"`--golden-prompt 0` continues held-out text 0 of `{rec['golden']}` and prints "
        + "the host's greedy continuation (`outputs.artifact_text` there) and says whether the tokens equal the "
        "host's.", "",
        "### Python: prompt in, text out", "",
        "The same loop in an app's Python (run from this folder); it streams the continuation of held-out text 0 and "
        "compares its tokens with the host's:", "",
        "```python", generate_snippet(art, rec).rstrip("\n"), "```", "",
    ]


def generate_snippet(art: dict, rec: dict) -> str:
    """Python that loads this bundle with ``runner/common/generate.py``, streams the greedy continuation of
    golden text 0 and prints ``tokens equal to the host's greedy continuation: K/K``."""
    return f'''import json
import sys

sys.path.insert(0, "runner/common")
import generate  # noqa: E402  (runner/common/generate.py, shipped in this bundle)

lm = generate.open_bundle(".", runtime="{art['runtime']}")  # checks the artifact's sha256, loads its LM session
print(generate.describe_check(lm.golden))  # the bundled tokenizer against {rec['golden']}

entry = json.load(open("{rec['golden']}", encoding="utf-8"))["texts"][0]
host = generate.host_tokens(entry, lm.tokenizer.eos_ids)  # the host's greedy tokens, up to eos
out = generate.generate(lm.session, lm.tokenizer, entry["text"], max_new_tokens=len(entry["outputs"]["artifact_tokens"]),
                        on_token=lambda t: print(t.text, end="", flush=True))  # greedy; temperature=0.8, seed=1 samples
print()
same = sum(a == b for a, b in zip(out.ids, host))
print(f"tokens equal to the host's greedy continuation: {{same}}/{{len(host)}} "
      f"({{out.new_tokens}} tokens, stop: {{out.stop_reason}}, {{out.decode_tokens_per_s or 0:.1f}} tokens/s)")
'''


def _device_options(rec: dict, st: dict) -> list[str]:
    path = f"{rec['dir']}/tokenizer.json"
    wordpiece = st["model"] == "WordPiece"
    et = (f"- **ExecuTorch's tokenizer library** ([pytorch/tokenizers](https://github.com/pytorch/tokenizers), C++; "
          "Python `pip install pytorch-tokenizers`), what ExecuTorch's LLM runners use: "
          f"`tokenizers::HFTokenizer tok; tok.load(\"{path}\"); auto ids = tok.encode(text, /*bos=*/0, /*eos=*/0);` "
          "(Python: `pytorch_tokenizers.CppHFTokenizer()`, `.load(path)`, `.encode(text, 0, 0)`).")
    if wordpiece:
        et += (" It reads BPE tokenizers; pytorch-tokenizers 1.5.0 refuses this WordPiece file "
               "(`Unsupported Normalizer type: BertNormalizer`): use one of the two below for this model.")
    else:
        et += " Check its ids against golden.json: it implements the common BPE normalizers and pre-tokenizers, not all."
    ort = ("- **ONNX Runtime Extensions** (`pip install onnxruntime-extensions`; Android "
           "`com.microsoft.onnxruntime:onnxruntime-extensions-android`, iOS pod `onnxruntime-extensions-c`): "
           "`pre, _ = onnxruntime_extensions.gen_processing_models(AutoTokenizer.from_pretrained(\"tokenizer\"), "
           "pre_kwargs={})` turns this tokenizer into an ONNX pre-processing graph (string in, ids out) to run before "
           "the model or merge into it; a session registers its ops with `SessionOptions.register_custom_ops_library("
           "onnxruntime_extensions.get_library_path())`. Its `onnxruntime_extensions.pp_api.Tokenizer(\"tokenizer\")` "
           "reads tokenizer.json + tokenizer_config.json directly.")
    if wordpiece:
        litert = ("- **LiteRT / TFLite Support text** (WordPiece): C++ "
                  f"`tflite::support::text::tokenizer::BertTokenizer tok(\"{rec['dir']}/vocab.txt\")`, "
                  "`tok.Tokenize(text).subwords` then `tok.LookupId(subword, &id)`; iOS `TFLBertTokenizer(vocabPath:)`. "
                  "It splits words and word pieces only: "
                  + ("lower-case the text first, " if st["lowercase"] else "")
                  + f"add {' and '.join(st['special_tokens_added']) or 'no special tokens'} and pad yourself.")
    else:
        litert = ("- **LiteRT / TFLite Support text** tokenizes WordPiece (`BertTokenizer`, vocab.txt) and SentencePiece "
                  f"only; for this {st['model']} tokenizer use the ExecuTorch tokenizer library above (it is a standalone "
                  "C++ library, not tied to the ExecuTorch runtime).")
    return [et, ort, litert]


_SNIPPET_HEAD = '''import json

import numpy as np
from tokenizers import Tokenizer

golden = json.load(open("tokenizer/golden.json", encoding="utf-8"))
tok = Tokenizer.from_file("tokenizer/tokenizer.json")
add_special = golden["settings"]["add_special_tokens"]
for entry in golden["texts"]:
    ids = tok.encode(entry["text"], add_special_tokens=add_special).ids
    assert ids == entry["ids"], f"tokenizer differs from the host's on {entry['text'][:40]!r}"
print(f"ids equal to golden.json: {len(golden['texts'])}/{len(golden['texts'])} texts")
'''


def python_snippet(art: dict, rec: dict, threads: int = 4) -> str:
    """Python that checks tokenizer.json against golden.json, then runs ``art`` from text and compares with the host.

    Prints ``ids equal to golden.json: K/K texts`` and, for encoders, ``text -> <output>: cosine vs host ... max abs
    diff ...`` per output in golden.json; an LM bundle decodes the host's greedy tokens back to its stored text."""
    from edgeopt.appnotes import _NP, _hoist_imports, _lengths, python_run
    from edgeopt.formats import Runtime

    if art.get("lm"):
        tail = ('first = golden["texts"][0]\n'
                'text = tok.decode(first["outputs"]["artifact_tokens"], skip_special_tokens=False)\n'
                'assert text == first["outputs"]["artifact_text"], text\n'
                'print(f"prompt {first[\'text\'][:40]!r} -> the artifact continues {text[:40]!r}")\n')
        return _hoist_imports(_SNIPPET_HEAD + tail)
    runtime = Runtime.parse(art["runtime"])
    lengths = _lengths(art)
    dynamic = bool(lengths) and lengths["mode"] == "dynamic" and runtime is not Runtime.LITERT
    fields = {s["name"]: ENCODING_FIELD.get(s["name"]) for s in art["inputs"]}
    casts = {s["name"]: _NP.get(str(s["dtype"]), "np.int64") for s in art["inputs"]}
    text = _SNIPPET_HEAD + (
        '\npad = golden["settings"]["padding"]\n'
        'rows = [e for e in golden["texts"] if e["sample"] == 0]  # one input: batch rows of the first sample\n'
        'encodings = [tok.encode(e["text"]) for e in rows]\n'
        + (f'length = max(max(len(e.ids) for e in encodings), {lengths["min"]})  # dynamic length: no padding\n'
           if dynamic else 'length = pad["length"]  # fixed shape: pad every input to it\n')
        + 'fill = {"ids": pad["pad_id"], "attention_mask": 0, "type_ids": pad["pad_type_id"]}\n\n\n'
        'def padded(field):\n'
        '    return [getattr(e, field) + [fill[field]] * (length - len(e.ids)) for e in encodings]\n\n\n'
        'feeds = {\n'
        + "".join(f'    "{name}": np.array(padded("{field}"), {casts[name]}),\n' for name, field in fields.items() if field)
        + '}\n'
        + ('' if dynamic else
           'for name, value in feeds.items():  # the same padded inputs the host fed (inputs.npz)\n'
           '    assert value.tolist() == [e["padded"][name] for e in rows], f"{name} differs from the host\'s"\n')
        + python_run(runtime, art, threads)
        + '\nfor name in rows[0]["outputs"]["artifact"]:\n'
        '    got = np.asarray(outputs[name], np.float64).reshape(len(rows), -1)\n'
        '    for which in ("artifact", "fp32"):\n'
        '        want = np.array([e["outputs"][which][name] for e in rows], np.float64)\n'
        '        cos = float(np.min(np.sum(got * want, 1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))))\n'
        '        print(f"text -> {name}: cosine vs host {which} {cos:.6f}, max abs diff {np.max(np.abs(got - want)):.3g}")\n')
    unmapped = [n for n, f in fields.items() if not f]
    if unmapped:
        text += f"# inputs {unmapped} do not come from the tokenizer: feed them as inputs.npz does\n"
    return _hoist_imports(text)
