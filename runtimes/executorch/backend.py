"""ExecuTorch adapter for the edgeopt device runner (``runner/executorch/backend.py`` in a bundle).

The backend API every runtime folder implements (see runtimes/common/README.md): ``name``,
``pip_package``, ``version() -> str``, ``load(path, threads) -> model`` where the model has ``input_names``,
``output_names`` and ``run(feeds) -> list of numpy arrays``.

ExecuTorch's Python runtime (``executorch.runtime``) takes and returns torch tensors, and the executorch
wheel depends on torch, so this backend imports torch (only to wrap numpy arrays, zero-copy). A .pte stores
no tensor names: inputs are fed in manifest order and outputs come back in export order under positional
names, which the runner matches by position. Everything is imported inside the functions, so a missing
install surfaces as an ImportError from ``version()`` that the runner turns into exit 4.

Light mode (what an app pays): when ``libedgeopt_et_light.so`` (``light.cpp`` beside this file, built against the
executorch wheel's own C++ libraries by ``python3 backend.py --build-light``) is found (``$EDGEOPT_ET_LIGHT_LIB``, else
``light_library_path()``), encoders run through it by ctypes and neither torch nor ``executorch.runtime`` is imported:
int8 MiniLM peaks at 59.2 MB RSS instead of 387.6, fp32 at 131.3 instead of 451.3, outputs bit-identical (this
x86-64 host, 2 threads). ``EDGEOPT_ET_RUNNER=pybindings`` forces the torch-importing path; decoder LMs always use it.
"""

from __future__ import annotations

name = "executorch"
pip_package = "executorch"


LIGHT_LIB = "libedgeopt_et_light.so"
LIGHT_ABI = 1
# ExecuTorch ScalarType codes of the numpy dtypes a bundle feeds or gets back
_SCALAR = {"uint8": 0, "int8": 1, "int16": 2, "int32": 3, "int64": 4, "float16": 5, "float32": 6, "float64": 7,
           "bool": 11}
_DTYPE = {code: name for name, code in _SCALAR.items()}


def _package_dir():
    """The installed ``executorch`` package folder, found without importing it (importing pulls in torch)."""
    import importlib.util

    spec = importlib.util.find_spec("executorch")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("executorch is not installed")
    return list(spec.submodule_search_locations)[0]


def light_library_path():
    """Where ``--build-light`` puts the light runner: ``$EDGEOPT_ET_LIGHT_LIB``, else a per-version user cache."""
    import os
    import platform

    if os.environ.get("EDGEOPT_ET_LIGHT_LIB"):
        return os.environ["EDGEOPT_ET_LIGHT_LIB"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "edgeopt", "et-light", "%s-%s" % (_dist_version(), platform.machine()), LIGHT_LIB)


def _dist_version():
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("executorch")
    except PackageNotFoundError:  # a source build without wheel metadata
        return "unknown"


def use_light():
    """True when the light runner library exists and ``EDGEOPT_ET_RUNNER`` does not ask for the pybindings."""
    import os

    if os.environ.get("EDGEOPT_ET_RUNNER", "auto") == "pybindings":
        return False
    return os.path.isfile(light_library_path())


def build_light(out=None, compiler="g++"):
    """Compile ``light.cpp`` against the executorch wheel's headers and libraries; returns the library path.

    Raises RuntimeError with the compiler's message when the build fails (no compiler, headers missing)."""
    import os
    import subprocess

    root = _package_dir()
    out = out or light_library_path()
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "light.cpp")
    lib = os.path.join(root, "lib")
    # the definitions and include dirs the wheel's share/cmake/executorch-config.cmake gives consumers
    cmd = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-DC10_USING_CUSTOM_GENERATED_MACROS",
           "-DET_EVENT_TRACER_ENABLED", "-DET_USE_THREADPOOL", "-Wno-deprecated-declarations", "-o", out + ".tmp", src,
           "-I" + os.path.join(root, "include"),
           "-I" + os.path.join(root, "include", "executorch", "runtime", "core", "portable_type", "c10"),
           "-L" + lib, "-Wl,--no-as-needed", "-lexecutorch", "-lexecutorch_threadpool", "-lexecutorch_backend_xnnpack",
           "-lexecutorch_kernels_optimized", "-lexecutorch_kernels_quantized", "-Wl,--as-needed", "-Wl,-rpath," + lib]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise RuntimeError("cannot run %s: %s (install a C++17 compiler, e.g. apt-get install g++)" % (compiler, e))
    if done.returncode != 0:
        raise RuntimeError("%s failed (exit %d): %s" % (compiler, done.returncode, done.stderr[-2000:]))
    os.replace(out + ".tmp", out)
    return out


def version():
    """The installed executorch version (raises ImportError when it is not installed)."""
    if use_light():
        _package_dir()
    else:
        import executorch.runtime  # noqa: F401 - the runtime itself, not just the metadata, must import
    return _dist_version()


class EtModel:
    """The ``forward`` method of one program, on the XNNPACK threadpool (torch imported: the pybindings)."""

    runner = "pybindings"

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


class LightModel:
    """The ``forward`` method of one program through ``libedgeopt_et_light.so`` (no torch in the process)."""

    runner = "light"

    def __init__(self, lib_path, path, threads):
        import ctypes

        self._ct = ctypes
        lib = ctypes.CDLL(lib_path)
        if lib.eo_et_abi_version() != LIGHT_ABI:
            raise RuntimeError("%s has C ABI %d, this backend needs %d: rebuild it with backend.py --build-light"
                               % (lib_path, lib.eo_et_abi_version(), LIGHT_ABI))
        lib.eo_et_load.restype = ctypes.c_void_p
        lib.eo_et_load.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
        vp = ctypes.c_void_p
        lib.eo_et_run.argtypes = [vp, ctypes.c_char_p, ctypes.c_int, vp, vp, vp, vp, ctypes.c_char_p, ctypes.c_size_t]
        lib.eo_et_output.argtypes = [vp, ctypes.c_int, vp, vp, vp, vp, vp]
        lib.eo_et_num_inputs.argtypes = lib.eo_et_num_outputs.argtypes = [vp, ctypes.c_char_p]
        lib.eo_et_free.argtypes = [vp]
        self._lib = lib
        if lib.eo_et_set_threads(int(threads)) != 0:
            raise RuntimeError("cannot size the ExecuTorch threadpool to %d threads" % threads)
        self._err = ctypes.create_string_buffer(1024)
        self._handle = lib.eo_et_load(path.encode(), b"forward", 0, self._err, len(self._err))
        if not self._handle:
            raise RuntimeError(self._err.value.decode(errors="replace"))
        self.input_names = ["input_%d" % i for i in range(lib.eo_et_num_inputs(self._handle, b"forward"))]
        self.output_names = ["output_%d" % i for i in range(lib.eo_et_num_outputs(self._handle, b"forward"))]
        self.threads = lib.eo_et_get_threads()
        self.library = lib_path

    def run(self, feeds):
        """Run once; ``feeds`` holds the inputs in manifest order. Returns copies of the outputs, in export order."""
        import numpy as np

        ct = self._ct
        arrays = [np.ascontiguousarray(v) for v in feeds.values()]
        n = len(arrays)
        data = (ct.c_void_p * n)(*[a.ctypes.data for a in arrays])
        dtypes = (ct.c_int * n)(*[_SCALAR[a.dtype.name] for a in arrays])
        ndims = (ct.c_int * n)(*[a.ndim for a in arrays])
        sizes = (ct.c_int64 * max(1, sum(a.ndim for a in arrays)))(*[s for a in arrays for s in a.shape])
        count = self._lib.eo_et_run(self._handle, b"forward", n, data, dtypes, ndims, sizes, self._err, len(self._err))
        if count < 0:
            raise RuntimeError(self._err.value.decode(errors="replace"))
        out = []
        for i in range(count):
            code, rank, ptr, nbytes = ct.c_int(), ct.c_int(), ct.c_void_p(), ct.c_size_t()
            dims = (ct.c_int64 * 16)()
            if self._lib.eo_et_output(self._handle, i, ct.byref(code), ct.byref(rank), dims, ct.byref(ptr),
                                      ct.byref(nbytes)) != 0:
                raise RuntimeError("output %d is not a tensor" % i)
            raw = (ct.c_char * nbytes.value).from_address(ptr.value) if nbytes.value else b""
            out.append(np.frombuffer(raw, dtype=_DTYPE[code.value]).reshape(list(dims[:rank.value])).copy())
        return out

    def __del__(self):
        if getattr(self, "_handle", None):
            self._lib.eo_et_free(self._handle)
            self._handle = None


def load(path, threads):
    """A ``LightModel`` (light runner built) or an ``EtModel`` for the .pte at ``path``, on ``threads`` threads."""
    if use_light():
        return LightModel(light_library_path(), path, threads)
    return load_pybindings(path, threads)


def load_pybindings(path, threads):
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

    Runs in the pybindings (torch in the process): ``runner`` says so in the result.

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
        self.runner = "pybindings"
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


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] != ["--build-light"]:
        sys.exit("usage: python3 backend.py --build-light [OUT.so]")
    try:
        print(build_light(sys.argv[2] if len(sys.argv) > 2 else None))
    except (RuntimeError, ImportError) as e:
        sys.exit("build-light: %s" % e)
