"""A tiny Llama trained on Shakespeare that edgeopt ships: an LM whose perplexity means something.

``build_tiny_lm()`` trains a byte-level BPE tokenizer and a ~4M-parameter ``LlamaForCausalLM`` on the
training split of ``edgeopt/lm/data/`` (ten plays; two other plays are the held-out split, never trained on)
and returns a transformers directory (safetensors + tokenizer) that ``AutoModelForCausalLM`` and
``AutoTokenizer`` load. Training is deterministic for a given number of steps (fixed seeds, one thread); the
default budget, ``DEFAULT_STEPS``, is stopped after ``SAFETY_SECONDS`` of training on a loaded machine.

The result is cached under ``$EDGEOPT_CACHE/tiny-lm/<key>/`` (else ``$XDG_CACHE_HOME/edgeopt/...``, else
``~/.cache/edgeopt/...``), where the key hashes the text, the configs and ``CODE_VERSION``: a second call
returns at once. An entry is written to a temporary folder and renamed into place, so an interrupted
training leaves no entry behind. ``edgeopt_tinylm.json`` in the folder records what was trained: parameters,
tokens seen, seconds, train and held-out perplexity, and the unigram baseline on the same held-out tokens.

Nothing here imports torch, transformers or tokenizers at module import.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from edgeopt.errors import BundleError, UsageError

CODE_VERSION = 1  # bump whenever a change here changes what gets trained
INFO_FILE = "edgeopt_tinylm.json"
DATA_DIR = Path(__file__).resolve().parent / "data"
TRAIN_FILE = "shakespeare_train.txt.gz"
HELDOUT_FILE = "shakespeare_heldout.txt.gz"
BOS, EOS, PAD = "<|bos|>", "<|eos|>", "<|pad|>"

DEFAULT_STEPS = 600  # ~600k tokens, 1.3 passes over the training split: 4-6 minutes on one idle core
SAFETY_SECONDS = 900.0  # the default budget stops here on a very slow machine (recorded as stopped_early)
_STALE_TEMP_SECONDS = 6 * 3600


@dataclass(frozen=True)
class TinyLMConfig:
    """The model and tokenizer shape: a small Llama with grouped-query attention (2 KV heads for 4)."""

    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 512
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser and data hyper-parameters.

    The budget (see ``build_tiny_lm``): ``steps``, and ``budget_seconds`` (wall clock; the schedule follows
    time). ``safety_seconds`` only stops a step budget early on a slow machine, recorded as ``stopped_early``.
    """

    steps: int | None = DEFAULT_STEPS
    budget_seconds: float | None = None
    safety_seconds: float | None = None
    batch_size: int = 8
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 1  # see _train: two OpenMP threads on a shared 2-core machine ran 4-15x slower
    eval_tokens: int = 8192  # held-out (and train) tokens scored for the recorded perplexities


def training_text() -> str:
    """The shipped training split: ten Shakespeare plays (public domain; see ``edgeopt/lm/data/README.md``)."""
    return _read_text(TRAIN_FILE)


def heldout_text() -> str:
    """The shipped held-out split: Macbeth and Twelfth Night, never trained on.

    Raises:
        FileNotFoundError: when the installation lacks the data files (a broken install).
    """
    return _read_text(HELDOUT_FILE)


def _read_text(name: str) -> str:
    with gzip.open(DATA_DIR / name, "rt", encoding="utf-8") as f:
        return f.read()


def cache_root() -> Path:
    """``$EDGEOPT_CACHE/tiny-lm``, else ``$XDG_CACHE_HOME/edgeopt/tiny-lm``, else ``~/.cache/edgeopt/tiny-lm``."""
    if os.environ.get("EDGEOPT_CACHE"):
        return Path(os.environ["EDGEOPT_CACHE"]).expanduser() / "tiny-lm"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "edgeopt" / "tiny-lm"


def cache_key(config: TinyLMConfig, train: TrainConfig) -> str:
    """The hash naming a cache entry: both texts, both configs and ``CODE_VERSION``."""
    h = hashlib.sha256()
    for name in (TRAIN_FILE, HELDOUT_FILE):
        h.update(hashlib.sha256((DATA_DIR / name).read_bytes()).digest())
    spec = {"code_version": CODE_VERSION, "model": asdict(config), "train": asdict(train)}
    h.update(json.dumps(spec, sort_keys=True).encode())
    return h.hexdigest()[:20]


def build_tiny_lm(
    out_dir: Path | None = None,
    *,
    train_seconds: float | None = None,
    train_steps: int | None = None,
    config: TinyLMConfig | None = None,
    force: bool = False,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Train (or fetch from the cache) the tiny LM and return its transformers directory.

    Args:
        out_dir: where to copy the model; ``None`` returns the cache entry itself (do not modify it).
            An existing ``out_dir`` must be empty or hold an earlier copy (it is replaced).
        train_seconds: a wall-clock budget; the learning-rate schedule then follows elapsed time, so the
            weights depend on the machine's speed. ``None`` with ``train_steps=None``: ``DEFAULT_STEPS`` steps,
            stopped early (and recorded so) after ``SAFETY_SECONDS`` on a slow machine.
        train_steps: a step budget: the same steps give the same weights (use this when determinism matters).
            With ``train_seconds`` too, training stops at whichever comes first.
        config: the model shape (default ``TinyLMConfig()``).
        force: retrain and replace the cache entry.
        say: progress callback, one line per stage.

    Returns:
        The model directory (``out_dir`` when given).

    Raises:
        BundleError: ``out_dir`` exists and holds something else, or the cache cannot be written.
        UsageError: a budget that is not positive.
    """
    say = say or (lambda _m: None)
    config = config or TinyLMConfig()
    default_budget = train_steps is None and train_seconds is None
    train = TrainConfig(
        steps=DEFAULT_STEPS if default_budget else train_steps,
        budget_seconds=train_seconds,
        safety_seconds=SAFETY_SECONDS if default_budget else None,
    )
    if train.steps is not None and train.steps < 1 or train_seconds is not None and train_seconds <= 0:
        raise UsageError(f"tiny LM budget must be positive, got train_steps={train_steps}, "
                         f"train_seconds={train_seconds} (pass e.g. train_steps={DEFAULT_STEPS})")
    entry = cache_root() / cache_key(config, train)
    if force or not (entry / INFO_FILE).is_file():
        _build_entry(entry, config, train, say)
    else:
        say(f"tiny LM: cached at {entry}")
    if out_dir is None:
        return entry
    return _copy_out(entry, Path(out_dir))


def _build_entry(entry: Path, config: TinyLMConfig, train: TrainConfig, say: Callable[[str], None]) -> None:
    """Train into a temporary sibling of ``entry`` and rename it into place; any failure leaves no entry."""
    root = entry.parent
    try:
        root.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(root)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=root))
    except OSError as e:
        raise BundleError(f"{root}: cannot write the tiny-LM cache ({e}); set EDGEOPT_CACHE to a writable folder") from e
    try:
        _train(tmp, config, train, say)
        _install(tmp, entry)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    say(f"tiny LM: saved to {entry}")


def _install(tmp: Path, entry: Path) -> None:
    """Rename ``tmp`` to ``entry``, replacing an older entry (``force``); a concurrent builder's entry wins."""
    old = None
    if entry.exists():
        old = entry.with_name(f".tmp-old-{entry.name}-{os.getpid()}")
        os.replace(entry, old)
    try:
        os.replace(tmp, entry)
    except OSError:
        if not (entry / INFO_FILE).is_file():  # not a concurrent build finishing first: a real failure
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def _remove_stale_temps(root: Path) -> None:
    """Temporary folders left by a killed build (SIGKILL skips ``finally``), once they are hours old."""
    now = time.time()
    for p in root.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > _STALE_TEMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)


def _copy_out(entry: Path, out_dir: Path) -> Path:
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / INFO_FILE).is_file())
    ):
        raise BundleError(f"{out_dir}: exists and is not an earlier tiny-LM copy; pass an empty or new folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        shutil.copytree(entry, tmp, dirs_exist_ok=True)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


# --- training -------------------------------------------------------------------------------------------------


def _train(tmp: Path, config: TinyLMConfig, train: TrainConfig, say: Callable[[str], None]) -> None:
    """Tokenizer, model, optimisation and evaluation, all written into ``tmp``."""
    import torch

    # One intra-op thread by default: on a shared 2-core machine two OpenMP threads spin against the other
    # processes and ran 4-15x slower than one (measured), and one thread gives the same sums everywhere.
    threads_before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(train.threads, threads_before)))
    try:
        start = time.perf_counter()
        say(f"tiny LM: training a {config.vocab_size}-token BPE tokenizer")
        tokenizer, train_ids, heldout_ids = _tokenized(config.vocab_size)
        model = _new_model(config, tokenizer, train.seed)
        params = sum(p.numel() for p in model.parameters())
        say(f"tiny LM: {params / 1e6:.2f}M parameters, {len(train_ids)} training tokens")
        fit = _optimise(model, train_ids, train, say)
        model.eval()
        with torch.no_grad():
            heldout_ppl = _perplexity(model, heldout_ids, train.seq_len, train.eval_tokens)
            train_ppl = _perplexity(model, train_ids, train.seq_len, train.eval_tokens)
        unigram_ppl = _unigram_perplexity(train_ids, heldout_ids, config.vocab_size, train.seq_len,
                                          train.eval_tokens)
        say(f"tiny LM: held-out perplexity {heldout_ppl:.1f} (unigram baseline {unigram_ppl:.1f})")
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        info = {
            "code_version": CODE_VERSION,
            "key": cache_key(config, train),
            "text": {"source": "edgeopt/lm/data (Shakespeare, public domain; README.md there)",
                     "train_tokens": len(train_ids), "heldout_tokens": len(heldout_ids)},
            "model": asdict(config),
            "params": params,
            "train": {**asdict(train), **fit, "seconds_total": round(time.perf_counter() - start, 2)},
            "perplexity": {"train": round(train_ppl, 3), "heldout": round(heldout_ppl, 3),
                           "unigram_heldout": round(unigram_ppl, 3)},
        }
        (tmp / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    finally:
        torch.set_num_threads(threads_before)


def _tokenized(vocab_size: int) -> tuple[Any, list[int], list[int]]:
    """The tokenizer and both splits' ids, memoised per process (tokenizing takes most of a small build)."""
    key = (vocab_size, cache_key(TinyLMConfig(vocab_size=vocab_size), TrainConfig()))
    if key not in _TOKENIZED:
        tokenizer = _train_tokenizer(training_text(), vocab_size)
        _TOKENIZED[key] = (tokenizer.backend_tokenizer.to_str(), _encode_documents(tokenizer, training_text()),
                           _encode_documents(tokenizer, heldout_text()))
    tokenizer_json, train_ids, heldout_ids = _TOKENIZED[key]
    return _wrap_tokenizer(tokenizer_json), list(train_ids), list(heldout_ids)


_TOKENIZED: dict[tuple, tuple[str, list[int], list[int]]] = {}


def _train_tokenizer(text: str, vocab_size: int) -> Any:
    """A byte-level BPE (GPT-2 style) trained on ``text``, wrapped for transformers; adds BOS like Llama."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[BOS, EOS, PAD],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.split("\n\n\n"), trainer=trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return _wrap_tokenizer(tok.to_str())


def _wrap_tokenizer(tokenizer_json: str) -> Any:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer_json), bos_token=BOS,
                                   eos_token=EOS, pad_token=PAD, model_max_length=512)


def _encode_documents(tokenizer: Any, text: str) -> list[int]:
    """One stream of ids: BOS play EOS for each play (plays are separated by two blank lines)."""
    ids: list[int] = []
    docs = tokenizer.backend_tokenizer.encode_batch(text.split("\n\n\n"), add_special_tokens=False)
    for doc in docs:
        ids += [tokenizer.bos_token_id, *doc.ids, tokenizer.eos_token_id]
    return ids


def _new_model(config: TinyLMConfig, tokenizer: Any, seed: int) -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        **asdict(config),
        head_dim=config.hidden_size // config.num_attention_heads,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.02,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def _optimise(model: Any, ids: list[int], train: TrainConfig, say: Callable[[str], None]) -> dict:
    """AdamW with warmup and cosine decay on random windows of the stream; returns what was done."""
    import torch

    data = torch.tensor(ids, dtype=torch.long)
    gen = torch.Generator().manual_seed(train.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": train.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=train.lr, betas=(0.9, 0.95), eps=1e-8)
    steps = train.steps
    cap = train.budget_seconds if train.budget_seconds is not None else train.safety_seconds
    model.train()
    start, step, loss_value, stopped_early = time.perf_counter(), 0, float("nan"), False
    while True:
        elapsed = time.perf_counter() - start
        if steps is not None and step >= steps:
            break
        if cap is not None and elapsed >= cap:
            stopped_early = train.budget_seconds is None
            break
        progress = step / steps if train.budget_seconds is None else elapsed / train.budget_seconds
        for group in opt.param_groups:
            group["lr"] = _lr(train, step, progress)
        offsets = torch.randint(0, len(data) - train.seq_len, (train.batch_size,), generator=gen)
        batch = torch.stack([data[o:o + train.seq_len] for o in offsets.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip)
        opt.step()
        step += 1
        loss_value = float(loss.detach())
        if step % 10 == 0 or step == 1:
            say(f"tiny LM: step {step}{'/' + str(steps) if steps else ''} loss {loss_value:.3f} "
                f"({time.perf_counter() - start:.0f} s)")
    return {"steps_done": step, "tokens_seen": step * train.batch_size * train.seq_len,
            "final_loss": round(loss_value, 4), "train_seconds": round(time.perf_counter() - start, 2),
            "stopped_early": stopped_early}


def _lr(train: TrainConfig, step: int, progress: float) -> float:
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return train.lr * (train.min_lr_ratio + (1 - train.min_lr_ratio) * cosine)


def _eval_windows(ids: list[int], seq_len: int, max_tokens: int) -> list[list[int]]:
    """Non-overlapping windows from the start of the stream, ``max_tokens`` tokens in all."""
    n = max(1, min(len(ids), max_tokens) // seq_len)
    return [ids[i * seq_len:(i + 1) * seq_len] for i in range(n)]


def _perplexity(model: Any, ids: list[int], seq_len: int, max_tokens: int) -> float:
    """exp(mean NLL) of every token after the first of each window."""
    import torch

    windows = _eval_windows(ids, seq_len, max_tokens)
    total, count = 0.0, 0
    for i in range(0, len(windows), 16):
        x = torch.tensor(windows[i:i + 16])
        logp = torch.log_softmax(model(input_ids=x).logits[:, :-1].float(), dim=-1)
        total -= float(logp.gather(2, x[:, 1:, None]).sum())
        count += x[:, 1:].numel()
    return math.exp(total / count)


def _unigram_perplexity(train_ids: list[int], ids: list[int], vocab: int, seq_len: int, max_tokens: int) -> float:
    """The baseline: training-split token frequencies (add-one) scored on the same tokens as ``_perplexity``."""
    counts = [1] * vocab
    for t in train_ids:
        counts[t] += 1
    total = sum(counts)
    nll, n = 0.0, 0
    for w in _eval_windows(ids, seq_len, max_tokens):
        for t in w[1:]:
            nll -= math.log(counts[t] / total)
            n += 1
    return math.exp(nll / n)
