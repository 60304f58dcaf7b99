"""LiteRT adapter for the edgeopt device runner (``runner/litert/backend.py`` in a bundle).

The backend API every runtime folder implements (see runtimes/common/README.md): ``name``,
``pip_package``, ``version() -> str``, ``load(path, threads) -> model`` where the model has
``input_names``, ``output_names`` and ``run(feeds) -> list of numpy arrays`` in ``output_names`` order.

The interpreter comes from ``ai_edge_litert`` and, on boards that only have the older wheel, from
``tflite_runtime`` (2.14 and older crash under numpy 2: pin ``numpy<2`` there). Either is imported inside
the functions, so a missing install surfaces as an ImportError that the runner turns into exit 4.
Runs on Python 3.9+ with numpy: no torch, no edgeopt.
"""

from __future__ import annotations

name = "litert"
pip_package = "ai-edge-litert"
SIGNATURE = "serving_default"  # what litert-torch names the one signature it writes


def _interpreter_module():
    """``ai_edge_litert.interpreter`` or, failing that, ``tflite_runtime.interpreter``."""
    try:
        from ai_edge_litert import interpreter
    except ImportError:
        try:
            from tflite_runtime import interpreter
        except ImportError:
            raise ImportError("neither ai_edge_litert nor tflite_runtime is installed") from None
    return interpreter


def version():
    """``ai-edge-litert X`` or ``tflite-runtime X``, whichever provides the interpreter."""
    module = _interpreter_module()
    package = "ai-edge-litert" if module.__name__.startswith("ai_edge_litert") else "tflite-runtime"
    try:
        from importlib.metadata import version as dist_version

        return f"{package} {dist_version(package)}"
    except Exception:  # noqa: BLE001 - metadata missing on some board images; the name alone still helps
        return package


class LiteRTModel:
    """One interpreter, driven through its signature (named I/O) when it has one, by position otherwise.

    edgeopt names the signature's inputs and outputs after the model's (``input_ids``,
    ``sentence_embedding``), so the runner matches them by name; a .tflite without a signature is fed
    in manifest order and its outputs are returned in the interpreter's order.

    A text encoder with length buckets has one signature per bucket (``seq_16``, ``seq_32``, ...: the same
    I/O names at a fixed sequence length each): ``run`` calls the smallest one whose length holds the feeds'
    (the runner pads the feeds to that bucket already; shorter feeds are zero-padded here, the outputs then
    keep the bucket's length).
    """

    def __init__(self, interpreter):
        self._interpreter = interpreter
        signatures = interpreter.get_signature_list()
        self._runner = None
        self._buckets = []  # (length, signature runner, its input details), shortest first
        if SIGNATURE not in signatures and len(signatures) > 1:
            for key in signatures:
                runner = interpreter.get_signature_runner(key)
                details = runner.get_input_details()
                lengths = {int(d["shape"][1]) for d in details.values() if len(d["shape"]) >= 2}
                if len(lengths) != 1:
                    raise ValueError(f"signature {key!r}: its inputs have no one sequence length ({sorted(lengths)})")
                self._buckets.append((lengths.pop(), runner, details))
            self._buckets.sort(key=lambda b: b[0])
            key = next(iter(signatures))
            self._runner, self._inputs = self._buckets[-1][1], self._buckets[-1][2]
            self.input_names = sorted(signatures[key]["inputs"], key=_natural)
            self.output_names = sorted(signatures[key]["outputs"], key=_natural)
        elif SIGNATURE in signatures or len(signatures) == 1:
            key = SIGNATURE if SIGNATURE in signatures else next(iter(signatures))
            self._runner = interpreter.get_signature_runner(key)
            self._inputs = self._runner.get_input_details()
            self.input_names = sorted(signatures[key]["inputs"], key=_natural)
            self.output_names = sorted(signatures[key]["outputs"], key=_natural)
        else:
            interpreter.allocate_tensors()
            self._inputs = interpreter.get_input_details()
            self._outputs = interpreter.get_output_details()
            self.input_names = [d["name"] for d in self._inputs]
            self.output_names = [d["name"] for d in self._outputs]

    def run(self, feeds):
        """Run once. ``feeds`` maps input name to array (or is in manifest order); returns output arrays."""
        import numpy as np

        if self._buckets:
            return self._run_bucket(self._by_name(feeds))
        if self._runner is not None:
            named = self._by_name(feeds)
            args = {k: np.asarray(v, dtype=self._inputs[k]["dtype"]) for k, v in named.items()}
            out = self._runner(**args)
            return [out[k] for k in self.output_names]
        for detail, value in zip(self._inputs, self._by_position(feeds)):
            self._interpreter.set_tensor(detail["index"], np.asarray(value, dtype=detail["dtype"]))
        self._interpreter.invoke()
        return [self._interpreter.get_tensor(d["index"]) for d in self._outputs]

    @property
    def bucket_lengths(self):
        """The sequence length of each bucket signature, shortest first (empty: one signature)."""
        return [b[0] for b in self._buckets]

    def _run_bucket(self, named):
        """Run the smallest bucket signature whose length holds the feeds' sequence length."""
        import numpy as np

        n = max(int(np.shape(v)[1]) for v in named.values() if np.ndim(v) >= 2)
        fitting = [b for b in self._buckets if b[0] >= n]
        if not fitting:
            raise ValueError(f"{n} tokens exceed the largest bucket {self._buckets[-1][0]} "
                             f"(buckets {self.bucket_lengths}); truncate the input")
        length, runner, details = fitting[0]
        args = {}
        for k, v in named.items():
            v = np.asarray(v, dtype=details[k]["dtype"])
            if v.ndim >= 2 and v.shape[1] < length:  # zero padding: attention mask 0
                pad = [(0, 0)] * v.ndim
                pad[1] = (0, length - v.shape[1])
                v = np.pad(v, pad)
            args[k] = v
        out = runner(**args)
        return [out[k] for k in self.output_names]

    def _by_name(self, feeds):
        if all(k in self._inputs for k in feeds):
            return dict(feeds)
        return dict(zip(self.input_names, self._by_position(feeds)))

    def _by_position(self, feeds):
        if len(feeds) != len(self.input_names):
            raise ValueError(f"the model takes {len(self.input_names)} inputs ({', '.join(self.input_names)}), "
                             f"got {len(feeds)}")
        return list(feeds.values())


def _natural(text):
    """``args_2`` before ``args_10``: converters number unnamed I/O by position."""
    import re

    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def load(path, threads):
    """A ``LiteRTModel`` for the .tflite at ``path`` on ``threads`` CPU threads (XNNPACK, the default delegate)."""
    module = _interpreter_module()
    model = LiteRTModel(module.Interpreter(model_path=path, num_threads=threads))
    model.threads = int(threads)  # the interpreter has no getter; XNNPACK takes num_threads as given
    return model


# --- decoder LMs (runtimes/common/README.md "Decoder LMs") ----------------------------------------

# What an attention-mask entry adds to a masked logit: the most negative finite float32, not -inf, so a
# row whose every entry were masked would still give finite numbers instead of NaN.
_MASKED = -3.4028234663852886e38


class LiteRTLMSession:
    """A causal LM with an explicit KV cache, driven through its prefill and decode signatures.

    The cache is a set of signature inputs that the same-named outputs replace after every call; the
    session keeps it in numpy arrays between calls. The attention mask is an input too: row ``i`` lets
    the token at position ``p_i`` see cache slots ``0..p_i`` only, so whatever a slot beyond the real
    tokens holds (padding written by a padded prefill, or an earlier, longer sequence) is never read
    before a real token overwrites it.

    Prefill has one static length (``lm["prompt_len"]``): shorter prompts are padded (the padding's
    logits are dropped and its cache slots masked as above), longer ones run in chunks. A chunk whose
    padded length would pass the end of the cache runs through decode one token at a time instead,
    because a cache write past the end would be clamped back over real entries (dynamic_update_slice).
    """

    def __init__(self, interpreter, lm):
        import numpy as np

        signatures = lm["signatures"]
        self._prefill_runner = interpreter.get_signature_runner(signatures["prefill"])
        self._decode_runner = interpreter.get_signature_runner(signatures["decode"])
        self.prompt_len = int(lm["prompt_len"])
        self.context_len = int(lm["context_len"])
        names = lm["tensors"]
        self._tokens, self._pos, self._mask, self._logits = (names["tokens"], names["input_pos"], names["mask"],
                                                             names["logits"])
        details = self._decode_runner.get_input_details()
        self._dtypes = {k: details[k]["dtype"] for k in (self._tokens, self._pos, self._mask)}
        self._cache_names = list(lm["cache_tensors"])
        self._cache = {k: np.zeros(details[k]["shape"], details[k]["dtype"]) for k in self._cache_names}
        self._slots = np.arange(self.context_len)
        self.position = 0

    def reset(self):
        """Empty the cache (all slots zero) and go back to position 0."""
        for value in self._cache.values():
            value.fill(0)
        self.position = 0

    def prefill(self, ids):
        """Logits ``[n, vocab]`` (float32) for the ``n`` token ids, which are appended to the cache."""
        import numpy as np

        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        self._check_room(len(ids))
        out, i = [], 0
        while i < len(ids):
            if self.position + self.prompt_len <= self.context_len:
                chunk = ids[i:i + self.prompt_len]
                out.append(self._run_prefill(chunk))
                i += len(chunk)
            else:  # too close to the end of the cache for a padded chunk
                out.append(self.decode(int(ids[i]))[None, :])
                i += 1
        return np.concatenate(out, axis=0)

    def decode(self, token):
        """Logits ``[vocab]`` (float32) for the position after ``token``, which is appended to the cache."""
        import numpy as np

        self._check_room(1)
        logits = self._run(self._decode_runner, np.array([[int(token)]]), 1)
        self.position += 1
        return np.asarray(logits, dtype=np.float32).reshape(-1)

    def _run_prefill(self, chunk):
        import numpy as np

        n = len(chunk)
        padded = np.zeros((1, self.prompt_len), dtype=np.int64)
        padded[0, :n] = chunk
        logits = self._run(self._prefill_runner, padded, self.prompt_len)
        self.position += n
        return np.asarray(logits, dtype=np.float32).reshape(self.prompt_len, -1)[:n]

    def _run(self, runner, tokens, length):
        import numpy as np

        positions = self.position + np.arange(length)
        mask = np.where(self._slots[None, :] <= positions[:, None], 0.0, _MASKED)
        feeds = {self._tokens: tokens.astype(self._dtypes[self._tokens]),
                 self._pos: positions.astype(self._dtypes[self._pos]),
                 self._mask: mask.reshape(1, 1, length, self.context_len).astype(self._dtypes[self._mask])}
        feeds.update(self._cache)
        out = runner(**feeds)
        for k in self._cache_names:
            self._cache[k] = out[k]
        return out[self._logits]

    def _check_room(self, n):
        if n < 1:
            raise ValueError("prefill needs at least one token")
        if self.position + n > self.context_len:
            raise ValueError(f"{self.position} cached + {n} new tokens exceed the context length {self.context_len}; "
                             "reset() first")


def load_lm(path, threads, lm):
    """A ``LiteRTLMSession`` for the LM .tflite at ``path``; ``lm`` is the manifest artifact's ``"lm"`` object."""
    if lm.get("cache") != "explicit":
        raise ValueError(f"litert LMs carry their cache as signature inputs (cache 'explicit'), got {lm.get('cache')!r}")
    module = _interpreter_module()
    return LiteRTLMSession(module.Interpreter(model_path=path, num_threads=threads), lm)
