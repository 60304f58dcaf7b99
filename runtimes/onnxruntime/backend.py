"""ONNX Runtime adapter for the edgeopt device runner (``runner/onnxruntime/backend.py`` in a bundle).

The backend API every runtime folder implements (see runtimes/common/README.md):
``name``, ``pip_package``, ``version() -> str``, ``load(path, threads) -> model`` where the model has
``input_names``, ``output_names`` and ``run(feeds) -> list of numpy arrays`` in ``output_names`` order.
onnxruntime is imported inside the functions, so a missing install surfaces as an ImportError from
``version()`` that the runner turns into exit 4 with the pip command.
"""

from __future__ import annotations

name = "onnxruntime"
pip_package = "onnxruntime"


def version():
    """The installed onnxruntime version (raises ImportError when it is not installed)."""
    import onnxruntime

    return onnxruntime.__version__


class OrtModel:
    """One InferenceSession on the CPU execution provider."""

    def __init__(self, session):
        self._session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]

    def run(self, feeds):
        """Run once; ``feeds`` maps input name to array. Returns outputs in ``output_names`` order."""
        return self._session.run(self.output_names, feeds)


def load(path, threads):
    """An ``OrtModel`` for the .onnx file at ``path`` using ``threads`` intra-op threads."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # One model run at a time: inter-op parallelism would only add threads that compete with intra-op ones.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the runner's stderr is for its own one-line messages
    session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
    return OrtModel(session)


class OrtLMSession:
    """A causal LM with explicit past key/values (``lm["cache"] == "explicit"``), per the LM contract.

    The cache lives between calls as the numpy arrays the graph returned (``present.*`` fed back as
    ``past_key_values.*``): onnxruntime reads numpy inputs in place on the CPU, so a step copies only what
    the graph's own Concat copies.
    """

    def __init__(self, session, lm):
        import numpy as np

        self._np = np
        self._session = session
        self._lm = lm
        self.context_len = int(lm["context_len"])
        self._ids = lm.get("input_ids", "input_ids")
        self._mask = lm.get("attention_mask")
        self._past = list(lm["past_inputs"])
        self._outputs = [lm.get("logits", "logits")] + list(lm["present_outputs"])
        self._empty = np.zeros((1, int(lm["num_kv_heads"]), 0, int(lm["head_dim"])),
                               np.dtype(lm.get("cache_dtype", "float32")))
        self.reset()

    def reset(self):
        """Empty the cache; position 0."""
        self._cache = [self._empty] * len(self._past)
        self.position = 0

    def prefill(self, ids):
        """Logits float32 [n, vocab] for ``ids`` (int64 [n]) appended after the cache; position += n."""
        ids = self._np.asarray(ids, dtype=self._np.int64).reshape(-1)
        if ids.size < 1:
            raise ValueError("prefill needs at least one token")
        return self._step(ids)

    def decode(self, token):
        """Logits float32 [vocab] for ``token`` at the next position; position += 1."""
        return self._step(self._np.array([int(token)], dtype=self._np.int64))[0]

    def _step(self, ids):
        n = int(ids.size)
        if self.position + n > self.context_len:
            raise ValueError(f"position {self.position} + {n} tokens exceeds context_len {self.context_len}")
        feeds = {self._ids: ids[None, :]}
        if self._mask:
            feeds[self._mask] = self._np.ones((1, self.position + n), self._np.int64)
        feeds.update(zip(self._past, self._cache))
        out = self._session.run(self._outputs, feeds)
        self._cache = out[1:]
        self.position += n
        return self._np.asarray(out[0][0], dtype=self._np.float32)


def load_lm(path, threads, lm):
    """An ``OrtLMSession`` for the explicit-past LM graph at ``path``; ``lm`` is the manifest's ``lm`` entry."""
    if lm.get("cache") != "explicit":
        raise ValueError(f"onnxruntime runs LMs with an explicit cache only, got cache={lm.get('cache')!r}")
    return OrtLMSession(load(path, threads)._session, lm)
