"""Decoder-LM evaluation on a backend's LM session: teacher-forced logits, perplexity, KL, greedy decoding.

Shared by the host (edgeopt measures an artifact's quality through it) and the device runner (which
copies this file into every bundle as ``runner/common/lmeval.py``), so both compute the same numbers the
same way. Python 3.9+, numpy only. A session follows the contract in ``runtimes/common/README.md``:
``reset()``, ``prefill(ids) -> [n, vocab]``, ``decode(token) -> [vocab]``, ``position``.
"""

from __future__ import annotations

import time

import numpy as np


def teacher_forced_logits(session, ids, split=None):
    """Logits [len(ids), vocab] for every position of ``ids``: the first ``split`` tokens by prefill, the
    rest one at a time by decode, so both paths of the artifact are measured. ``split`` defaults to half."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    n = len(ids)
    if n < 2:
        raise ValueError("need at least 2 tokens, got %d" % n)
    split = max(1, min(n - 1, n // 2 if split is None else int(split)))
    session.reset()
    out = [np.asarray(session.prefill(ids[:split]), dtype=np.float32).reshape(split, -1)]
    for token in ids[split:]:
        out.append(np.asarray(session.decode(int(token)), dtype=np.float32).reshape(1, -1))
    return np.concatenate(out, axis=0)


def log_softmax(logits):
    """Row-wise log-softmax in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def mean_nll(logits, ids):
    """Mean negative log-likelihood (nats) of ids[1:] under logits[:-1]."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    logp = log_softmax(logits[:-1])
    return float(-logp[np.arange(len(ids) - 1), ids[1:]].mean())


def mean_kl(reference_logits, logits):
    """Mean per-position KL(reference || candidate) in nats."""
    p_log = log_softmax(reference_logits)
    q_log = log_softmax(logits)
    return float((np.exp(p_log) * (p_log - q_log)).sum(axis=-1).mean())


def greedy(session, prompt, new_tokens, timer=None):
    """Greedy continuation of ``prompt``: ``new_tokens`` token ids (int64).

    With ``timer`` (a dict), also records ``prefill_s`` (the prompt, i.e. time to the first token's logits)
    and ``decode_s`` (a list, one per decode call).
    """
    prompt = np.asarray(prompt, dtype=np.int64).reshape(-1)
    session.reset()
    t0 = time.perf_counter()
    logits = np.asarray(session.prefill(prompt))
    token = int(np.argmax(logits.reshape(len(prompt), -1)[-1]))
    if timer is not None:
        timer["prefill_s"] = time.perf_counter() - t0
        timer["decode_s"] = []
    out = [token]
    while len(out) < new_tokens:
        t0 = time.perf_counter()
        logits = session.decode(token)
        token = int(np.argmax(np.asarray(logits).reshape(-1)))
        if timer is not None:
            timer["decode_s"].append(time.perf_counter() - t0)
        out.append(token)
    return np.asarray(out, dtype=np.int64)


def token_agreement(a, b):
    """(fraction of positions where two token sequences agree, length of their common prefix)."""
    a = np.asarray(a).reshape(-1)
    b = np.asarray(b).reshape(-1)
    n = min(len(a), len(b))
    if n == 0:
        return 1.0, 0
    same = a[:n] == b[:n]
    prefix = int(n if same.all() else np.argmin(same))
    return float(same.mean()), prefix
