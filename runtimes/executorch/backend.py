"""ExecuTorch adapter for the edgeopt device runner (``runner/executorch/backend.py`` in a bundle).

The backend API every runtime folder implements (see runtimes/common/README.md): ``name``,
``pip_package``, ``version() -> str``, ``load(path, threads) -> model`` where the model has ``input_names``,
``output_names`` and ``run(feeds) -> list of numpy arrays``.

ExecuTorch's Python runtime (``executorch.runtime``) takes and returns torch tensors, and the executorch
wheel depends on torch, so this backend imports torch (only to wrap numpy arrays, zero-copy). A .pte stores
no tensor names: inputs are fed in manifest order and outputs come back in export order under positional
names, which the runner matches by position. Everything is imported inside the functions, so a missing
install surfaces as an ImportError from ``version()`` that the runner turns into exit 4.
"""

from __future__ import annotations

name = "executorch"
pip_package = "executorch"


def version():
    """The installed executorch version (raises ImportError when it is not installed)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    import executorch.runtime  # noqa: F401 - the runtime itself, not just the metadata, must import

    try:
        return dist_version("executorch")
    except PackageNotFoundError:  # a source build without wheel metadata
        return "unknown"


class EtModel:
    """The ``forward`` method of one program, on the XNNPACK threadpool."""

    def __init__(self, program, method, threads):
        self._program = program  # the method borrows the program's memory: keep it alive
        self._method = method
        meta = method.metadata
        self.input_names = [f"input_{i}" for i in range(meta.num_inputs())]
        self.output_names = [f"output_{i}" for i in range(meta.num_outputs())]
        self.threads = threads

    def run(self, feeds):
        """Run once; ``feeds`` holds the inputs in manifest order. Returns outputs in export order."""
        import numpy as np
        import torch

        tensors = [torch.from_numpy(np.ascontiguousarray(value)) for value in feeds.values()]
        return [out.numpy() for out in self._method.execute(tensors)]


def load(path, threads):
    """An ``EtModel`` for the .pte at ``path``, with the XNNPACK threadpool sized to ``threads``."""
    import executorch.kernels.quantized  # noqa: F401 - registers quantized_decomposed::* (int8 embeddings)
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    # The threadpool is process-wide (XNNPACK and the optimized kernels share it); resizing it is
    # "unsafe" only while a method runs, and nothing runs yet.
    portable_lib._unsafe_reset_threadpool(int(threads))
    program = Runtime.get().load_program(path)
    method = program.load_method("forward")
    return EtModel(program, method, portable_lib._threadpool_get_thread_count())


class EtLmSession:
    """A decoder LM with its KV cache inside the program (``lm["cache"] == "in_program"``).

    The method is ``forward(input_ids [1, T], cache_position [T]) -> logits [1, T, vocab]``; with
    ``lm["dynamic_prefill"]`` T may be 1..prompt_len, else it is exactly prompt_len and chunks are padded (the
    padded positions are written to the cache but lie past ``position``: masked now, overwritten later).
    """

    def __init__(self, data, lm, threads):
        if lm.get("cache") != "in_program":
            raise ValueError(f"executorch backend runs LMs with cache 'in_program', got {lm.get('cache')!r}")
        self._data = data  # the .pte bytes: reset() reloads the program from memory, not from disk
        self._lm = dict(lm)
        self._name = lm.get("method", "forward")
        self.context_len = int(lm["context_len"])
        self.prompt_len = int(lm["prompt_len"])
        self.dynamic = bool(lm.get("dynamic_prefill", True))
        self.threads = threads
        self._program = None
        self._method = None
        self.position = 0
        self.reset()

    def reset(self):
        """Empty the cache (position 0) by loading the program afresh: new, zeroed cache buffers.

        A Program caches its methods (``load_method`` returns the same one, cache included), so only a new
        Program gives new mutable buffers. It re-initialises the XNNPACK delegate too (weight repacking): 26 ms for a
        15 MB fp32 4M-parameter Llama, a fifth of its 64-token prefill (1 thread). Stale entries past ``position`` are masked anyway;
        this makes a new conversation independent of the previous one, not just of its logits.
        """
        from executorch.runtime import Runtime

        self._method = None  # drop the old method and program before allocating new ones
        self._program = None
        self._program = Runtime.get().load_program(self._data)
        self._method = self._program.load_method(self._name)
        self.position = 0

    def _run(self, ids):
        import numpy as np
        import torch

        n = len(ids)
        feed = np.zeros(n if self.dynamic else self.prompt_len, dtype=np.int64)
        feed[:n] = ids
        if self.position + len(feed) > self.context_len:
            raise ValueError(f"{self.position} cached + {len(feed)} tokens exceeds context_len {self.context_len}")
        positions = torch.arange(self.position, self.position + len(feed), dtype=torch.int64)
        logits = self._method.execute([torch.from_numpy(feed).reshape(1, -1), positions])[0]
        self.position += n
        return logits.numpy()[0, :n].astype(np.float32, copy=False)

    def prefill(self, ids):
        """Run ``ids`` (int64 [n]) through the cache; float32 logits [n, vocab]; ``position += n``."""
        import numpy as np

        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if len(ids) == 0:
            raise ValueError("prefill needs at least one token")
        if self.position + len(ids) > self.context_len:
            raise ValueError(f"{self.position} cached + {len(ids)} tokens exceeds context_len {self.context_len}")
        chunks = [self._run(ids[i:i + self.prompt_len]) for i in range(0, len(ids), self.prompt_len)]
        return np.concatenate(chunks, axis=0)

    def decode(self, token):
        """One token at ``position``: float32 logits [vocab] for the next position; ``position += 1``."""
        import numpy as np

        if self.dynamic:
            return self._run(np.array([int(token)], dtype=np.int64))[0]
        return self.prefill(np.array([int(token)], dtype=np.int64))[0]


def load_lm(path, threads, lm):
    """An ``EtLmSession`` for the LM .pte at ``path`` (``lm``: the manifest artifact's ``lm`` object)."""
    import executorch.kernels.quantized
    from executorch.extension.pybindings import portable_lib

    if lm.get("custom_ops"):
        # Registers llama::custom_sdpa / llama::update_cache (ExecuTorch's LLM extension kernels).
        import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401
    portable_lib._unsafe_reset_threadpool(int(threads))
    with open(path, "rb") as f:
        data = f.read()
    return EtLmSession(data, lm, portable_lib._threadpool_get_thread_count())
