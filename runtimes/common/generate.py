#!/usr/bin/env python3
"""Text in, text out for a decoder-LM bundle: the prompt -> tokens loop an app runs, shipped in every bundle.

Tokenizes the prompt with the bundle's own ``tokenizer/tokenizer.json`` exactly as the host fed its held-out
prompts (the special-token settings in ``tokenizer/golden.json``), prefills it, then decodes one token at a time
(greedy by default; temperature / top-k / top-p sampling with a seed), streams the text as tokens come, and stops
at the tokenizer's eos token, at ``max_new_tokens`` or at the end of the KV cache (``context_len``).

Python 3.9+, numpy and the ``tokenizers`` package (``pip install tokenizers``) plus the artifact's runtime; no
torch, no edgeopt. It is copied into every bundle as ``runner/common/generate.py`` beside ``runner.py`` (whose
manifest, sha256 and backend loading it reuses) and ``lmeval.py`` (whose greedy loop it reproduces token for
token). The session is the LM contract in ``runtimes/common/README.md`` (reset / prefill / decode / position).

    python3 runner/common/generate.py --bundle DIR (--prompt "text" | --prompt-file F | --golden-prompt K)
        [--max-new-tokens N] [--runtime R] [--threads N] [--temperature T] [--top-k K] [--top-p P] [--seed S]
        [--truncate] [--no-eos] [--add-bos] [--json]

prints the generated text on stdout as it comes (``--json``: one JSON object instead) and prompt / new tokens,
time to first token and tokens/s on stderr. Exit codes: 0 generated · 2 bad input (no tokenizer in the bundle,
empty prompt, a prompt longer than the context, not a decoder-LM bundle, bad flags) · 3 bundle file missing,
unreadable or failing its sha256 · 4 runtime or ``tokenizers`` not installed, or the runtime cannot run the
artifact.

From Python (run from the bundle folder)::

    import sys
    sys.path.insert(0, "runner/common")
    import generate

    lm = generate.open_bundle(".")                     # the first artifact; runtime="onnxruntime" picks another
    out = generate.generate(lm.session, lm.tokenizer, "To be, or not", max_new_tokens=32,
                            on_token=lambda t: print(t.text, end="", flush=True))
    out.text, out.ids, out.stop_reason, out.decode_tokens_per_s
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, List, Optional, Sequence

try:  # numpy is required, but its absence must be a one-line exit-4 message, not a traceback
    import numpy as np
except ImportError:  # pragma: no cover - exercised on devices without numpy
    np = None

EXIT_OK, EXIT_USAGE, EXIT_BAD_FILE, EXIT_UNSUPPORTED = 0, 2, 3, 4
HERE = os.path.dirname(os.path.abspath(__file__))
TOKENIZER_DIR = "tokenizer"
TOKENIZER_FILE = "tokenizer.json"
GOLDEN_FILE = "golden.json"
CONFIG_FILE = "tokenizer_config.json"
MAX_MISMATCHES = 16  # golden-ids mismatches listed one by one in a check's result (the count is always exact)


class GenerateError(ValueError):
    """Bad input for generation (no tokenizer, empty prompt, a prompt too long for the context): exit 2."""


class MissingPackage(ImportError):
    """numpy or the ``tokenizers`` package is not installed: exit 4."""


# ------------------------------------------------------------------------------------------ tokenizer


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise MissingPackage("the tokenizers package is not installed; install it with: "
                             "python3 -m pip install tokenizers") from None
    return tokenizers


def _read_json(path):
    return _runner().read_json(path)  # bounded in size and nesting: ValueError, never a RecursionError


class BundleTokenizer:
    """The bundle's ``tokenizer.json`` with the settings the host used: whether special tokens are added when
    encoding (``golden.json`` ``settings.add_special_tokens``: False for decoder LMs, whose held-out prompts were
    fed as plain text ids) and the eos / bos ids."""

    def __init__(self, tokenizer, add_special_tokens=False, eos_ids=(), bos_id=None, source=None):
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer
        self.add_special_tokens = bool(add_special_tokens)
        self.eos_ids = tuple(int(i) for i in eos_ids)
        self.bos_id = None if bos_id is None else int(bos_id)
        self.source = source

    @classmethod
    def from_bundle(cls, bundle):
        """Read ``<bundle>/tokenizer/``; no tokenizer.json there is a ``GenerateError``."""
        folder = os.path.join(bundle, TOKENIZER_DIR)
        path = os.path.join(folder, TOKENIZER_FILE)
        if not os.path.isfile(path):
            raise GenerateError("%s has no %s/%s: this bundle carries no tokenizer, so it cannot turn text into "
                                "ids (package a model directory that has its tokenizer)"
                                % (bundle, TOKENIZER_DIR, TOKENIZER_FILE))
        tokenizers = _tokenizers()
        try:
            tok = tokenizers.Tokenizer.from_file(path)
        except Exception as e:  # the tokenizers package raises its own Exception type for a malformed file
            raise GenerateError("cannot read %s: %s" % (path, " ".join(str(e).split())[:300])) from None
        settings, config = {}, {}
        try:
            if os.path.isfile(os.path.join(folder, GOLDEN_FILE)):
                settings = _read_json(os.path.join(folder, GOLDEN_FILE)).get("settings") or {}
            if os.path.isfile(os.path.join(folder, CONFIG_FILE)):
                config = _read_json(os.path.join(folder, CONFIG_FILE))
        except (OSError, ValueError, AttributeError) as e:
            raise GenerateError("cannot read %s: %s" % (folder, e)) from None
        special = settings.get("special_tokens") or {}

        def token_id(name):
            entry = special.get(name)
            if isinstance(entry, dict) and isinstance(entry.get("id"), int):
                return entry["id"]
            token = config.get(name)
            token = token.get("content") if isinstance(token, dict) else token
            return tok.token_to_id(token) if isinstance(token, str) else None

        eos = token_id("eos_token")
        # golden.json records how the host encoded; without it, what tokenizer_config.json says for decoder LMs
        add_special = settings.get("add_special_tokens", False)
        return cls(tok, add_special_tokens=add_special, eos_ids=() if eos is None else (eos,),
                   bos_id=token_id("bos_token"), source=path)

    def encode(self, text):
        """Token ids of ``text`` (list of int), special tokens as the host added them."""
        return list(self.tokenizer.encode(text, add_special_tokens=self.add_special_tokens).ids)

    def decode(self, ids):
        """Text of ``ids``, special tokens kept (as the host decoded its greedy tokens into golden.json)."""
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=False)


def _as_bundle_tokenizer(tokenizer):
    if isinstance(tokenizer, BundleTokenizer):
        return tokenizer
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode") and hasattr(tokenizer, "token_to_id"):
        return BundleTokenizer(tokenizer)  # a bare tokenizers.Tokenizer: no special tokens added, no eos
    raise TypeError("tokenizer must be a BundleTokenizer (BundleTokenizer.from_bundle) or a tokenizers.Tokenizer")


class _Detokenizer:
    """Incremental decoding: the text each new token adds, held back while it ends in an incomplete UTF-8
    sequence (byte-level BPE splits characters across tokens). Decodes a short window, not the whole output."""

    def __init__(self, tokenizer):
        self._tok = tokenizer
        self.ids = []
        self._prefix = 0  # the window starts here: its text is already emitted, and gives the next piece context
        self._read = 0  # ids up to here are emitted

    def push(self, token):
        self.ids.append(int(token))
        done = self._tok.decode(self.ids[self._prefix:self._read])
        now = self._tok.decode(self.ids[self._prefix:])
        if len(now) > len(done) and not now.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self.ids)
            return now[len(done):]
        return ""

    def flush(self):
        """The text still held back (an incomplete character at the end decodes as U+FFFD)."""
        done = self._tok.decode(self.ids[self._prefix:self._read])
        now = self._tok.decode(self.ids[self._prefix:])
        self._prefix = self._read = len(self.ids)
        return now[len(done):]


# ------------------------------------------------------------------------------------------ generation


@dataclass(frozen=True)
class Token:
    """One generated token as it comes: its id, the text it adds (may be "" while a character is incomplete;
    the text then comes with a later token) and its index among the new tokens."""

    id: int
    text: str
    index: int


@dataclass
class Generation:
    """What ``generate`` returns. ``stop_reason``: "eos" (the eos token, not included in ids or text),
    "max_new_tokens" or "context_full" (the KV cache has no room for another token)."""

    text: str
    ids: List[int]
    prompt_ids: List[int]
    stop_reason: str
    prompt_truncated: int = 0  # prompt tokens dropped from the front (truncate=True)
    ttft_s: float = 0.0  # the prompt's prefill up to the first token
    decode_s: List[float] = field(default_factory=list)  # one per decode step

    @property
    def new_tokens(self):
        return len(self.ids)

    @property
    def decode_tokens_per_s(self):
        total = sum(self.decode_s)
        return len(self.decode_s) / total if total > 0 else None

    @property
    def prefill_tokens_per_s(self):
        return len(self.prompt_ids) / self.ttft_s if self.ttft_s > 0 else None

    def to_dict(self):
        rate = self.decode_tokens_per_s
        prefill = self.prefill_tokens_per_s
        return {"text": self.text, "ids": list(self.ids), "prompt_tokens": len(self.prompt_ids),
                "new_tokens": len(self.ids), "stop_reason": self.stop_reason,
                "prompt_truncated": self.prompt_truncated, "ttft_ms": round(self.ttft_s * 1000.0, 4),
                "prefill_tokens_per_s": None if prefill is None else round(prefill, 3),
                "decode_tokens_per_s": None if rate is None else round(rate, 3)}


def prompt_ids(tokenizer, prompt, context_len=None, max_new_tokens=1, truncate=False, add_bos=False):
    """(ids to prefill, tokens dropped) for ``prompt``: text (encoded as the host did) or a list of ids.

    ``context_len``: the KV cache's length; a prompt longer than it is a ``GenerateError``, or with
    ``truncate`` cut from the front to leave room for ``max_new_tokens``. ``add_bos`` puts the tokenizer's bos id
    first (the host did not: leave it False to get the host's tokens).
    """
    if isinstance(prompt, str):
        if not prompt:
            raise GenerateError("the prompt is empty: give at least one character of text")
        ids = tokenizer.encode(prompt)
    else:
        ids = [int(i) for i in prompt]
    bos = []
    if add_bos:
        if tokenizer.bos_id is None:
            raise GenerateError("add_bos: this tokenizer has no bos token")
        if not ids or ids[0] != tokenizer.bos_id:
            bos = [tokenizer.bos_id]
    if not ids and not bos:
        raise GenerateError("the prompt has no tokens: give at least one token of text")
    dropped, n, new = 0, len(bos) + len(ids), max(1, int(max_new_tokens))
    if context_len is not None:
        keep = max(1, context_len + 1 - new - len(bos))  # prompt tokens that leave room for `new` new tokens
        if n > context_len and not truncate:
            raise GenerateError("the prompt is %d tokens; this model's context (KV cache) holds %d, prompt and "
                                "generated tokens together: shorten the prompt, or truncate it to its last %d tokens "
                                "(truncate=True, --truncate)" % (n, context_len, keep))
        if truncate and n + new - 1 > context_len:
            dropped = max(0, len(ids) - keep)
            ids = ids[dropped:]
    return bos + ids, dropped


def next_token(logits, temperature=0.0, top_k=0, top_p=1.0, rng=None):
    """The next token from a logits row: argmax when ``temperature`` <= 0 (``lmeval.greedy``'s choice), else a draw
    from softmax(logits / temperature) restricted to the ``top_k`` most likely (0: all) and to the smallest set
    whose probability reaches ``top_p``."""
    logits = np.asarray(logits).reshape(-1)
    if not temperature or temperature <= 0:
        return int(np.argmax(logits))
    x = logits.astype(np.float64) / float(temperature)
    if top_k and 0 < top_k < x.size:
        cut = np.partition(x, -top_k)[-top_k]
        x = np.where(x >= cut, x, -np.inf)
    x = x - np.max(x)
    p = np.exp(x)
    p /= p.sum()
    if top_p is not None and 0 < top_p < 1:
        order = np.argsort(-p, kind="stable")
        keep = order[:int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    rng = rng if rng is not None else np.random.default_rng()
    return int(rng.choice(p.size, p=p))


def _context_len(session, context_len):
    if context_len is not None:
        return int(context_len)
    value = getattr(session, "context_len", None)
    return int(value) if value is not None else None


def _run(session, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed, eos_ids, context_len,
         truncate, add_bos):
    """The loop, as a generator of Token; its return value (StopIteration.value) is the Generation."""
    if np is None:
        raise MissingPackage("numpy is not installed on this device; install it with: python3 -m pip install numpy")
    tok = _as_bundle_tokenizer(tokenizer)
    if int(max_new_tokens) < 1:
        raise GenerateError("max_new_tokens must be at least 1, got %r" % (max_new_tokens,))
    if temperature is not None and (not math.isfinite(float(temperature)) or float(temperature) < 0):
        raise GenerateError("temperature must be a finite number >= 0, got %r" % (temperature,))
    if top_k is not None and int(top_k) < 0:
        raise GenerateError("top_k must be >= 0 (0: no limit), got %r" % (top_k,))
    if top_p is not None and not 0 < float(top_p) <= 1:
        raise GenerateError("top_p must be in (0, 1], got %r" % (top_p,))
    ctx = _context_len(session, context_len)
    ids, dropped = prompt_ids(tok, prompt, ctx, max_new_tokens, truncate, add_bos)
    room = int(max_new_tokens) if ctx is None else min(int(max_new_tokens), ctx - len(ids) + 1)
    stops = frozenset(tok.eos_ids if eos_ids is None else (int(i) for i in eos_ids))
    rng = np.random.default_rng(seed)
    detok = _Detokenizer(tok)
    decode_s = []
    session.reset()
    t0 = time.perf_counter()
    logits = np.asarray(session.prefill(np.asarray(ids, dtype=np.int64)))
    token = next_token(logits.reshape(len(ids), -1)[-1], temperature, top_k or 0, top_p, rng)
    ttft = time.perf_counter() - t0
    stop = "max_new_tokens" if room >= int(max_new_tokens) else "context_full"
    while True:
        if token in stops:
            stop = "eos"
            break
        index = len(detok.ids)
        piece = detok.push(token)
        if index + 1 >= room:  # the last token: whatever text is still held back comes with it
            piece += detok.flush()
        yield Token(token, piece, index)
        if index + 1 >= room:
            break
        t0 = time.perf_counter()
        logits = session.decode(token)
        token = next_token(logits, temperature, top_k or 0, top_p, rng)
        decode_s.append(time.perf_counter() - t0)
    tail = detok.flush()
    if tail:
        yield Token(detok.ids[-1], tail, len(detok.ids) - 1)
    return Generation(text=tok.decode(detok.ids), ids=list(detok.ids), prompt_ids=list(ids), stop_reason=stop,
                      prompt_truncated=dropped, ttft_s=ttft, decode_s=decode_s)


def generate(session, tokenizer, prompt, max_new_tokens=64, temperature=0.0, top_k=0, top_p=1.0, seed=None,
             eos_ids=None, context_len=None, truncate=False, add_bos=False,
             on_token: Optional[Callable[[Token], None]] = None) -> Generation:
    """Generate a continuation of ``prompt`` on an LM ``session``; returns a ``Generation``.

    Args:
        session: a backend's LM session (``runner/<runtime>/backend.py`` ``load_lm``; ``open_bundle`` makes one).
        tokenizer: a ``BundleTokenizer`` (``BundleTokenizer.from_bundle(dir)``) or a bare ``tokenizers.Tokenizer``.
        prompt: text, encoded as the host encoded its prompts, or a list of token ids.
        max_new_tokens: at most this many new tokens (fewer at eos or when the KV cache is full).
        temperature: 0 (default) is greedy, the host's and ``lmeval.greedy``'s choice; > 0 samples.
        top_k, top_p: sampling only: keep the k most likely tokens (0: all) / the nucleus of probability p.
        seed: the sampler's seed (same seed, same tokens).
        eos_ids: token ids that end generation (default: the tokenizer's eos; ``()``: never stop early).
        context_len: the KV cache's length (default: ``session.context_len``).
        truncate: a prompt that does not fit with ``max_new_tokens`` is cut from the front instead of refused.
        add_bos: put the bos token first (the host did not for this bundle's golden prompts).
        on_token: called with each ``Token`` as it is generated (stream the text to the screen).

    Raises:
        GenerateError: empty prompt, a prompt longer than the context, bad sampling settings.
    """
    it = _run(session, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed, eos_ids, context_len,
              truncate, add_bos)
    while True:
        try:
            token = next(it)
        except StopIteration as done:
            return done.value
        if on_token is not None:
            on_token(token)


def stream(session, tokenizer, prompt, max_new_tokens=64, temperature=0.0, top_k=0, top_p=1.0, seed=None,
           eos_ids=None, context_len=None, truncate=False, add_bos=False) -> Iterator[Token]:
    """``generate`` as an iterator of ``Token`` (the same arguments but ``on_token``): ``for t in stream(...)``.
    Its return value (``StopIteration.value``, or ``result = yield from stream(...)``) is the ``Generation``."""
    return (yield from _run(session, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed, eos_ids,
                            context_len, truncate, add_bos))


# ------------------------------------------------------------------------------------------ golden ids


def check_golden(bundle, manifest=None):
    """Tokenize ``tokenizer/golden.json``'s texts with the bundle's ``tokenizer.json`` and compare with the stored
    ids: the runner result's ``tokenizer`` object, or None when the bundle has no golden.json.

    ``ok`` is null when the check could not run (``reason`` says why: the tokenizers package missing, a file
    unreadable); ``files_verified`` compares the tokenizer files with the manifest's sha256 (null without them).
    """
    rel = TOKENIZER_DIR + "/" + GOLDEN_FILE
    record = (manifest or {}).get("tokenizer") if isinstance(manifest, dict) else None
    if isinstance(record, dict) and isinstance(record.get("golden"), str):
        rel = record["golden"]
    path = os.path.join(bundle, *rel.split("/"))
    if ".." in rel.split("/") or not os.path.isfile(path):
        return None
    out = {"file": rel, "checked": False, "ok": None, "texts": 0, "ids_equal": 0, "mismatches": [],
           "files_verified": _tokenizer_files_verified(bundle, manifest), "tokenizers_version": None, "reason": None}
    try:
        golden = _read_json(path)
        entries = golden["texts"]
        add_special = bool(golden["settings"]["add_special_tokens"])
        if not isinstance(entries, list):
            raise ValueError("'texts' is not a list")
    except (OSError, ValueError, KeyError, TypeError) as e:
        out["reason"] = ("cannot read %s: %s" % (rel, e))[:300]
        return out
    out["texts"] = len(entries)
    tok_path = os.path.join(os.path.dirname(path), TOKENIZER_FILE)
    try:
        tokenizers = _tokenizers()
        out["tokenizers_version"] = str(getattr(tokenizers, "__version__", ""))[:64] or None
        tok = tokenizers.Tokenizer.from_file(tok_path)
    except MissingPackage as e:
        out["reason"] = str(e)[:300]
        return out
    except Exception as e:  # a missing or malformed tokenizer.json
        out["reason"] = ("cannot read %s/%s: %s" % (TOKENIZER_DIR, TOKENIZER_FILE, " ".join(str(e).split())))[:300]
        return out
    equal, count = 0, 0
    for i, entry in enumerate(entries):
        want = [int(t) for t in entry.get("ids") or []] if isinstance(entry, dict) else []
        got = list(tok.encode(str(entry.get("text", "")) if isinstance(entry, dict) else "",
                              add_special_tokens=add_special).ids)
        if got == want:
            equal += 1
            continue
        count += 1
        if len(out["mismatches"]) < MAX_MISMATCHES:
            first = next((j for j, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want)))
            out["mismatches"].append({"text": i, "position": first, "expected_tokens": len(want),
                                      "got_tokens": len(got)})
    out.update(checked=True, ok=count == 0, ids_equal=equal)
    if count:
        out["reason"] = ("%d of %d golden texts tokenize differently from the host (first at text %d, token %d): "
                         "the on-device tokenizer does not give the ids the model was verified with"
                         % (count, len(entries), out["mismatches"][0]["text"], out["mismatches"][0]["position"]))[:300]
    return out


def _tokenizer_files_verified(bundle, manifest):
    """True when every tokenizer/ file the manifest hashes matches; False naming none; None without hashes."""
    import hashlib

    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        return None
    names = [n for n in files if isinstance(n, str) and n.startswith(TOKENIZER_DIR + "/") and ".." not in n.split("/")]
    if not names:
        return None
    for name in names:
        digest = hashlib.sha256()
        try:
            with open(os.path.join(bundle, *name.split("/")), "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
        except OSError:
            return False
        if digest.hexdigest() != files[name]:
            return False
    return True


def describe_check(check):
    """One line for a person: the golden-ids check's outcome."""
    if check is None:
        return "tokenizer: no golden.json in this bundle, ids not checked"
    files = {True: "", False: "; tokenizer files DIFFER from the manifest's sha256", None: ""}[check["files_verified"]]
    if not check["checked"]:
        return "tokenizer: golden ids NOT checked (%s)%s" % (check["reason"], files)
    if check["ok"]:
        return "tokenizer: ids equal to golden.json on %d/%d texts%s" % (check["ids_equal"], check["texts"], files)
    return "tokenizer: MISMATCH: %s%s" % (check["reason"], files)


# ------------------------------------------------------------------------------------------ bundles


def _runner():
    """``runner.py`` beside this file (manifest, sha256 and backend loading)."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    import runner

    return runner


@dataclass
class BundleLM:
    """A loaded decoder-LM bundle: the session, the tokenizer, the manifest's artifact entry."""

    session: object
    tokenizer: BundleTokenizer
    artifact: dict
    runtime: str
    runtime_version: str
    threads: int
    load_s: float
    golden: Optional[dict]  # check_golden's result


def open_bundle(bundle, runtime=None, artifact=None, threads=None):
    """Load a decoder-LM bundle's artifact (sha256 checked) in its runtime, and its tokenizer.

    Raises ``GenerateError`` (no tokenizer, not a decoder LM, no such runtime in the bundle) and the runner's
    ``RunnerExit`` (a bundle file missing or failing its sha256: code 3; the runtime not installed or unable to
    load the artifact: code 4); ``MissingPackage`` without the tokenizers package.
    """
    runner = _runner()
    bundle = os.path.abspath(bundle)
    manifest = runner.load_manifest(bundle)
    tokenizer = BundleTokenizer.from_bundle(bundle)
    try:
        art = runner.pick_artifact(manifest, artifact, runtime)
    except runner.RunnerExit as e:
        raise GenerateError(str(e)) from None
    if not isinstance(art.get("lm"), dict):
        raise GenerateError("%s is not a decoder LM (its manifest entry has no 'lm'): generate.py needs a causal LM "
                            "bundle" % art["file"])
    runner._lm_lengths(art)
    _, mismatch = runner.verify_file(bundle, art["file"], art["sha256"])
    if mismatch:
        raise runner.RunnerExit(EXIT_BAD_FILE, "%s: %s; not loaded" % (art["file"], mismatch))
    runner.verify_bundle(bundle, manifest)  # every other file too, before the backend is loaded
    name = runner.artifact_runtime(art)
    backend, version = runner.load_backend(name)
    if not hasattr(backend, "load_lm"):
        raise runner.RunnerExit(EXIT_UNSUPPORTED, "runner/%s/backend.py has no load_lm" % name)
    threads = threads or runner.default_threads(manifest, None)
    t0 = time.perf_counter()
    path = os.path.join(bundle, art["file"])
    session = runner._call_runtime("load", art["file"], name, lambda: backend.load_lm(path, threads, art["lm"]))
    if getattr(session, "context_len", None) is None:
        session.context_len = int(art["lm"]["context_len"])
    return BundleLM(session=session, tokenizer=tokenizer, artifact=art, runtime=name, runtime_version=version,
                    threads=threads, load_s=time.perf_counter() - t0, golden=check_golden(bundle, manifest))


# ------------------------------------------------------------------------------------------ command line


def parse_args(argv):
    p = argparse.ArgumentParser(prog="generate.py", description="Generate text with an edgeopt decoder-LM bundle.")
    p.add_argument("--bundle", required=True, help="bundle folder (holds manifest.json and tokenizer/)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt", help="the text to continue")
    source.add_argument("--prompt-file", help="read the text to continue from this UTF-8 file (as is)")
    source.add_argument("--golden-prompt", type=int, metavar="K",
                        help="continue golden.json's held-out text K and compare the tokens with the host's greedy "
                             "ones (--max-new-tokens defaults to as many as the host generated)")
    p.add_argument("--max-new-tokens", type=int, help="at most this many new tokens (default 64)")
    p.add_argument("--runtime", help="runtime of the artifact to run (default: the first artifact's)")
    p.add_argument("--artifact", help="artifact file name from the manifest (wins over --runtime)")
    p.add_argument("--threads", type=int, help="runtime threads (default: the profile's, capped to cores)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 (default): greedy; > 0: sample")
    p.add_argument("--top-k", type=int, default=0, help="sampling: keep the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0, help="sampling: nucleus probability (1: all)")
    p.add_argument("--seed", type=int, help="sampling seed (same seed, same text)")
    p.add_argument("--truncate", action="store_true",
                   help="cut a prompt too long for the context from the front instead of refusing it")
    p.add_argument("--no-eos", action="store_true", help="do not stop at the eos token")
    p.add_argument("--add-bos", action="store_true", help="put the bos token first (the host did not)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of streaming the text")
    args = p.parse_args(argv)
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        p.error("--max-new-tokens must be at least 1, got %d" % args.max_new_tokens)
    if args.threads is not None and args.threads < 1:
        p.error("--threads must be at least 1, got %d" % args.threads)
    return args


def log(message):
    print("generate: " + message, file=sys.stderr, flush=True)


def main(argv=None):
    """Entry point; returns the process exit code."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sys.stdout.flush()
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", errors="replace")
    saved = os.dup(1)
    os.dup2(2, 1)  # native runtime code that prints goes to stderr; the text goes to `out` (the real stdout)
    code = EXIT_OK
    try:
        code = _main(args, out)
    except KeyboardInterrupt:
        log("interrupted")
        code = 130
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        out.flush()
        out.close()
    return code


def _prompt(args):
    """(prompt text, the golden entry for --golden-prompt or None); bad input is a GenerateError."""
    if args.prompt_file is not None:
        try:
            with open(args.prompt_file, "rb") as f:
                return f.read().decode("utf-8"), None
        except (OSError, UnicodeDecodeError) as e:
            raise GenerateError("--prompt-file: cannot read %s: %s" % (args.prompt_file, e)) from None
    if args.golden_prompt is None:
        return args.prompt, None
    path = os.path.join(args.bundle, TOKENIZER_DIR, GOLDEN_FILE)
    try:
        texts = _read_json(path)["texts"]
        entry = texts[args.golden_prompt] if args.golden_prompt >= 0 else None
    except (OSError, ValueError, KeyError, TypeError):
        raise GenerateError("--golden-prompt: %s is missing or unreadable: this bundle has no golden texts" % path) \
            from None
    except IndexError:
        entry = None
    if entry is None:
        raise GenerateError("--golden-prompt: %s has texts 0..%d, not %d" % (path, len(texts) - 1, args.golden_prompt))
    return entry["text"], entry


def host_tokens(entry, eos_ids):
    """The host's greedy tokens for a golden entry (this artifact in its runtime on the host), cut at eos."""
    host = [int(t) for t in entry["outputs"]["artifact_tokens"]]
    stop = next((i for i, t in enumerate(host) if t in eos_ids), len(host))
    return host[:stop]


def _main(args, out):
    if np is None:
        log("error: numpy is not installed on this device; install it with: python3 -m pip install numpy")
        return EXIT_UNSUPPORTED
    runner = _runner()
    try:
        text, golden = _prompt(args)
        if not text:
            raise GenerateError("the prompt is empty: give at least one character of text")
        lm = open_bundle(args.bundle, args.runtime, args.artifact, args.threads)
    except GenerateError as e:
        log("error: " + str(e))
        return EXIT_USAGE
    except MissingPackage as e:
        log("error: " + str(e))
        return EXIT_UNSUPPORTED
    except runner.RunnerExit as e:
        log("error: " + str(e))
        return e.code
    log("%s %s, %s, %d threads, loaded in %.0f ms" % (lm.runtime, lm.runtime_version, lm.artifact["file"],
                                                     lm.threads, lm.load_s * 1000.0))
    log(describe_check(lm.golden))
    eos_ids = () if args.no_eos else None
    want = host_tokens(golden, lm.tokenizer.eos_ids if eos_ids is None else ()) if golden else None
    max_new = args.max_new_tokens or (len(golden["outputs"]["artifact_tokens"]) if golden else 64)

    def on_token(t):
        out.write(t.text)
        out.flush()

    try:
        result = generate(lm.session, lm.tokenizer, text, max_new, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p, seed=args.seed, eos_ids=eos_ids,
                          truncate=args.truncate, add_bos=args.add_bos, on_token=None if args.json else on_token)
    except GenerateError as e:
        log("error: " + str(e))
        return EXIT_USAGE
    except Exception as e:  # the runtime's own exception types differ per runtime and version
        log("error: %s could not run %s: %s: %s" % (lm.runtime, lm.artifact["file"], type(e).__name__,
                                                    " ".join(str(e).split())[:500]))
        return EXIT_UNSUPPORTED
    if result.prompt_truncated:
        log("the prompt was truncated: its first %d tokens dropped to fit the context" % result.prompt_truncated)
    info = result.to_dict()
    if want is not None:
        want = want[:max_new]
        same = next((i for i, (a, b) in enumerate(zip(want, result.ids)) if a != b), min(len(want), len(result.ids)))
        info["host_tokens_equal"] = result.ids == want
        log("greedy tokens equal to the host's: %d/%d%s" % (same, len(want), "" if info["host_tokens_equal"] else
                                                            " (the continuation differs from the host's)"))
    if args.json:
        info.update(runtime=lm.runtime, artifact=lm.artifact["file"], tokenizer=lm.golden)
        out.write(json.dumps(info, ensure_ascii=False) + "\n")
    else:
        out.write("\n")
    rate = info["decode_tokens_per_s"]
    log("%d prompt tokens, %d new tokens (stop: %s), time to first token %.1f ms, decode %s tokens/s"
        % (info["prompt_tokens"], info["new_tokens"], info["stop_reason"], info["ttft_ms"],
           "-" if rate is None else "%.1f" % rate))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
