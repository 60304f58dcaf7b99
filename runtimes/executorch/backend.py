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
