"""The decoder-LM quality gate: an artifact against the fp32 model on held-out text.

Held-out text is cut into windows of ``prompt_len + decode_tokens`` tokens. The fp32 transformers model
scores each window in one forward (no cache). The artifact scores it through its runtime's KV-cache session
(``runtimes/<runtime>/backend.py: load_lm``): the first ``prompt_len`` tokens by prefill, the rest one
token at a time by decode, so both paths of the export are measured. From the two sets of logits:

- perplexity of each (exp of the mean NLL over every predicted token) and their ratio;
- mean per-token KL(fp32 || artifact) in nats;
- cosine and top-1 agreement of the logits (reported; the gate uses perplexity and KL);
- greedy decoding from held-out prompts: the fraction of tokens equal to the fp32 model's, and the mean
  length of the identical prefix.

The same functions (``runtimes/common/lmeval.py``) run in the device runner, so the numbers compare.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

    from edgeopt.models import LoadedModel
    from edgeopt.verify import Fidelity

EVAL_WINDOWS = 8  # held-out windows scored teacher-forced
DECODE_TOKENS = 32  # tokens of each window scored by decode (after the prompt's prefill)
PROMPTS = 4  # held-out prompts for greedy decoding
NEW_TOKENS = 32  # greedy tokens per prompt


@dataclass
class LMData:
    """Held-out token windows and prompts with the fp32 model's logits and greedy tokens (computed once)."""

    prompt_len: int
    context_len: int
    windows: list  # int64 [prompt_len + decode] each
    reference_logits: list  # float32 [len(window), vocab] each
    prompts: list  # int64 [prompt_len] each
    reference_tokens: list  # int64 [new_tokens] each
    new_tokens: int
    reference_nll: list = field(default_factory=list)  # mean NLL per window (fp32)

    @property
    def reference_perplexity(self) -> float:
        return math.exp(sum(self.reference_nll) / len(self.reference_nll))


def eval_text() -> str:
    """Held-out English text: the tiny LM's held-out split when present, else the shipped corpus."""
    try:
        from edgeopt.lm.tinylm import heldout_text

        return heldout_text()
    except (ImportError, FileNotFoundError, AttributeError):
        return (Path(__file__).resolve().parent.parent / "corpus.txt").read_text(encoding="utf-8")


def _token_stream(loaded: "LoadedModel", need: int) -> "np.ndarray":
    """At least ``need`` held-out token ids: the text tokenized (repeated if short), or seeded random ids."""
    import numpy as np

    vocab = int(getattr(loaded.config, "vocab_size", 0) or 0)
    if loaded.tokenizer is None:
        return np.random.default_rng(1).integers(0, max(vocab, 2), size=need, dtype=np.int64)
    ids = np.asarray(loaded.tokenizer(eval_text(), add_special_tokens=False)["input_ids"], dtype=np.int64)
    if vocab:
        ids = ids[ids < vocab]
    if len(ids) == 0:
        return np.random.default_rng(1).integers(0, max(vocab, 2), size=need, dtype=np.int64)
    reps = -(-need // len(ids))
    return np.tile(ids, reps)[:max(need, len(ids))]


def prepare(loaded: "LoadedModel", *, prompt_len: int, context_len: int, windows: int = EVAL_WINDOWS,
            decode_tokens: int = DECODE_TOKENS, prompts: int = PROMPTS, new_tokens: int = NEW_TOKENS) -> LMData:
    """Cut held-out windows and prompts for ``loaded`` and compute the fp32 model's logits and greedy tokens.

    Windows are ``prompt_len + decode_tokens`` long, capped at ``context_len`` (the artifact's cache);
    greedy continuations are capped so prompt + tokens fits the cache too.
    """
    import torch

    from edgeopt.data_runtimes.common import lmeval

    prompt_len = max(1, min(prompt_len, context_len - 1))
    decode_tokens = max(1, min(decode_tokens, context_len - prompt_len))
    new_tokens = max(1, min(new_tokens, context_len - prompt_len + 1))
    width = prompt_len + decode_tokens
    stream = _token_stream(loaded, width * (windows + prompts))
    chunks = [stream[i * width:(i + 1) * width] for i in range(windows + prompts)]
    model = loaded.module.model
    win, ref, nll = chunks[:windows], [], []
    with torch.no_grad():
        for w in win:
            logits = model(input_ids=torch.from_numpy(w)[None]).logits[0].float().numpy()
            ref.append(logits)
            nll.append(window_nll(logits, w))
        prompt_ids = [c[:prompt_len] for c in chunks[windows:]]
        tokens = [_eager_greedy(model, p, new_tokens) for p in prompt_ids]
    return LMData(prompt_len, context_len, win, ref, prompt_ids, tokens, new_tokens, nll)


_ROWS = 32  # logits rows per float64 block: lmeval's log-softmax of a whole [160, 152k] window is 1 GB of temporaries


def window_nll(logits: "np.ndarray", ids: "np.ndarray") -> float:
    """``lmeval.mean_nll(logits, ids)`` (the device runner's arithmetic), computed in blocks of rows."""
    import numpy as np

    from edgeopt.data_runtimes.common import lmeval

    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    n, total = len(ids) - 1, 0.0
    if n < 1:
        return lmeval.mean_nll(logits, ids)
    for a in range(0, n, _ROWS):
        b = min(n, a + _ROWS)
        total += lmeval.mean_nll(logits[a:b + 1], ids[a:b + 1]) * (b - a)  # rows a..b-1 predict ids a+1..b
    return total / n


def window_kl(reference: "np.ndarray", logits: "np.ndarray") -> float:
    """``lmeval.mean_kl(reference, logits)``, computed in blocks of rows."""
    from edgeopt.data_runtimes.common import lmeval

    n, total = len(reference), 0.0
    for a in range(0, n, _ROWS):
        b = min(n, a + _ROWS)
        total += lmeval.mean_kl(reference[a:b], logits[a:b]) * (b - a)
    return total / n


def _eager_greedy(model: Any, prompt: "np.ndarray", n: int) -> "np.ndarray":
    """The fp32 model's greedy continuation: one prefill, then one token per step through transformers' own
    KV cache (the full-sequence recompute this replaced cost ``n`` forwards of the whole prompt: minutes on a
    135M-parameter model)."""
    import inspect

    import numpy as np
    import torch

    params = inspect.signature(model.forward).parameters
    cache_arg = "cache" if "cache" in params else "past_key_values"
    last = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    seq = torch.from_numpy(np.asarray(prompt, dtype=np.int64))[None]
    out = []
    result = model(input_ids=seq, use_cache=True, **last)
    for step in range(n):
        nxt = int(result.logits[0, -1].argmax())
        out.append(nxt)
        if step == n - 1:
            break
        cache = getattr(result, "cache", None)
        cache = cache if cache is not None else result.past_key_values
        result = model(input_ids=torch.tensor([[nxt]]), use_cache=True, **{cache_arg: cache})
    return np.asarray(out, dtype=np.int64)


@dataclass
class LMOutputs:
    """What the artifact produced on the host: kept in inputs.npz for the device runner's comparison."""

    nll: list  # mean NLL per window
    tokens: list  # greedy tokens per prompt


def measure(session: Any, data: LMData) -> tuple["Fidelity", LMOutputs]:
    """Score ``session`` (a backend LM session) on ``data``; the Fidelity carries perplexity, KL and greedy."""
    import numpy as np

    from edgeopt.data_runtimes.common import lmeval
    from edgeopt.verify import Fidelity, OutputFidelity, cosine

    nll, kls, cosines, top1, finite = [], [], [], [], True
    sig = noise = 0.0
    max_err = 0.0
    for w, ref in zip(data.windows, data.reference_logits):
        logits = lmeval.teacher_forced_logits(session, w, split=data.prompt_len)
        if not np.isfinite(logits).all():
            finite = False
            break
        nll.append(window_nll(logits, w))
        kls.append(window_kl(ref, logits))
        cosines.extend(cosine(r, c) for r, c in zip(ref, logits))
        top1.append(float((ref.argmax(-1) == logits.argmax(-1)).mean()))
        diff = ref - logits  # float32, accumulated in float64: no float64 copy of [window, vocab] logits
        sig += float(np.einsum("ij,ij->", ref, ref, dtype=np.float64))
        noise += float(np.einsum("ij,ij->", diff, diff, dtype=np.float64))
        max_err = max(max_err, float(np.abs(diff).max()))
        del diff, logits
    if not finite:
        nan = float("nan")
        out = OutputFidelity("logits", nan, nan, nan, float("inf"), None, False)
        return (Fidelity(nan, nan, nan, float("inf"), len(data.windows), "fp32", None, False, (out,),
                         perplexity=nan, reference_perplexity=data.reference_perplexity, kl=nan),
                LMOutputs([], []))
    tokens = [lmeval.greedy(session, p, data.new_tokens) for p in data.prompts]
    agree = [lmeval.token_agreement(t, r) for t, r in zip(tokens, data.reference_tokens)]
    sqnr = 200.0 if noise == 0 else min(200.0, 10.0 * math.log10(max(sig, 1e-30) / noise))
    mean_cos, min_cos, t1 = float(np.mean(cosines)), float(np.min(cosines)), float(np.mean(top1))
    out = OutputFidelity("logits", mean_cos, min_cos, sqnr, max_err, t1, True)
    fidelity = Fidelity(mean_cos, min_cos, sqnr, max_err, len(data.windows), "fp32", t1, True, (out,),
                        perplexity=math.exp(float(np.mean(nll))), reference_perplexity=data.reference_perplexity,
                        kl=float(np.mean(kls)), greedy_agreement=float(np.mean([a for a, _ in agree])),
                        greedy_prefix=float(np.mean([p for _, p in agree])))
    return fidelity, LMOutputs(nll, tokens)


def misses(fidelity: "Fidelity", tol: Any) -> str | None:
    """Why ``fidelity`` fails the profile's LM tolerance (``targets.fidelity``), or None.

    max_perplexity_ratio and max_kl gate; a profile that sets neither falls back to min_cosine on the logits.
    """
    if not fidelity.finite:
        return "outputs contain NaN or Inf"
    reasons = []
    ratio = fidelity.perplexity_ratio
    if tol.max_perplexity_ratio is not None and ratio is not None and ratio > tol.max_perplexity_ratio:
        reasons.append(f"perplexity x{ratio:.4f} of fp32 > max_perplexity_ratio {tol.max_perplexity_ratio}")
    if tol.max_kl is not None and fidelity.kl is not None and fidelity.kl > tol.max_kl:
        reasons.append(f"KL {fidelity.kl:.4f} > max_kl {tol.max_kl}")
    if tol.max_perplexity_ratio is None and tol.max_kl is None and fidelity.mean_cosine < tol.min_cosine:
        reasons.append(f"logits mean cosine {fidelity.mean_cosine:.4f} < {tol.min_cosine}")
    return "; ".join(reasons) or None


def open_session(runtime: str, path: Path, lm: dict, threads: int = 1) -> Any:
    """The runtime backend's LM session for the artifact at ``path`` (the device runner's own code)."""
    import importlib

    backend = importlib.import_module(f"edgeopt.data_runtimes.{runtime}.backend")
    if not hasattr(backend, "load_lm"):
        from edgeopt.errors import UnsupportedError

        raise UnsupportedError(f"{runtime}: this edgeopt's runner cannot run decoder LMs (no load_lm in its backend)")
    return backend.load_lm(str(path), threads, lm)
