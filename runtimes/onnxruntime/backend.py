"""ONNX Runtime adapter for the edgeopt device runner (``runner/onnxruntime/backend.py`` in a bundle).

The backend API every runtime folder implements (see runtimes/common/README.md):
``name``, ``pip_package``, ``version() -> str``, ``load(path, threads, targets=None) -> model`` where the model has
``input_names``, ``output_names`` and ``run(feeds) -> list of numpy arrays`` in ``output_names`` order.
onnxruntime is imported inside the functions, so a missing install surfaces as an ImportError from
``version()`` that the runner turns into exit 4 with the pip command.

Execution targets (the bundle profile's ``execution.onnxruntime``, e.g. ``["tensorrt", "cuda"]``) map to execution
providers, most preferred first, with CPUExecutionProvider last for the nodes a GPU provider does not take; a
target whose provider this onnxruntime build lacks is left out. The model then reports where its nodes really ran
(``execution_report()``): the session's providers and, from onnxruntime's profiler over the second run, the node
count and kernel-time share per provider. A run asked for a GPU that did not get one, or whose kernels spent more
than ``MAX_CPU_SHARE`` of their time on the CPU, is reported with an ``invalid_reason``: the runner marks the
result ``valid: false`` rather than label a CPU number as a GPU one.
"""

from __future__ import annotations

import os
import tempfile

name = "onnxruntime"
pip_package = "onnxruntime"
targets = ("cpu", "cuda", "tensorrt")  # what load() can be asked for
supports_spinning = True  # load(spinning=...) sets session.intra_op.allow_spinning
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}
GPU_PACKAGE = "onnxruntime-gpu"  # the build with the CUDA and TensorRT providers (replaces onnxruntime, not beside it)
# Kernel time the CPU provider may take in a GPU run: onnxruntime places shape arithmetic (Shape, Gather of dims,
# Unsqueeze, Concat on int64) on the CPU on purpose, which costs microseconds; a real fallback of compute ops costs
# most of the run.
MAX_CPU_SHARE = 0.10
_PROFILED_RUNS = 2  # the first run warms up kernels and allocators; the share is taken from the last one


def version():
    """The installed onnxruntime version (raises ImportError when it is not installed)."""
    import onnxruntime

    return onnxruntime.__version__


def providers_for(targets_, available):
    """The provider list for ``targets_`` (target names, most preferred first): each target's provider that is in
    ``available``, then CPUExecutionProvider. Returns (providers, missing target names)."""
    chosen, missing = [], []
    for target in targets_ or ["cpu"]:
        provider = PROVIDERS.get(target)
        if provider is None:
            raise ValueError("unknown execution target %r for onnxruntime (known: %s)" % (target, ", ".join(PROVIDERS)))
        if provider in available:
            if provider not in chosen:
                chosen.append(provider)
        else:
            missing.append(target)
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen, missing


class OrtModel:
    """One InferenceSession; on a GPU provider, inputs and outputs go through IO binding."""

    def __init__(self, session, requested=("cpu",), missing=(), io_binding_device=None, profiled=False):
        self._session = session
        self.input_names = [i.name for i in session.get_inputs()]
        self.output_names = [o.name for o in session.get_outputs()]
        self.requested = list(requested)
        self.missing = list(missing)
        # "cuda" for a session on a GPU provider: outputs are bound on the device and copied back once per run, so
        # no per-run host allocation or implicit synchronisation beyond that copy (None: plain session.run)
        self.io_binding_device = io_binding_device
        self._profiling = profiled
        self._runs = 0
        self._profile = None  # parsed node events, once the profiled runs are done

    def run(self, feeds):
        """Run once; ``feeds`` maps input name to array. Returns outputs in ``output_names`` order."""
        if self.io_binding_device is None:
            out = self._session.run(self.output_names, feeds)
        else:
            binding = self._session.io_binding()
            for key, value in feeds.items():
                binding.bind_cpu_input(key, value)
            for key in self.output_names:
                binding.bind_output(key, self.io_binding_device)
            self._session.run_with_iobinding(binding)
            out = binding.copy_outputs_to_cpu()
        self._runs += 1
        if self._profiling and self._runs >= _PROFILED_RUNS:
            self._end_profiling()
        return out

    def _end_profiling(self):
        import json

        self._profiling = False
        path = self._session.end_profiling()
        try:
            with open(path) as f:
                self._profile = node_events(json.load(f))
        except (OSError, ValueError) as e:
            self._profile = {"error": "%s: %s" % (type(e).__name__, e)}
        finally:
            if path and os.path.exists(path):
                os.remove(path)

    def execution_report(self):
        """Where the nodes ran: requested targets, the session's providers, node counts and kernel-time share per
        provider (of the last profiled run; null when the session was not profiled), and ``invalid_reason``."""
        providers = list(self._session.get_providers())
        report = {"requested": self.requested, "providers": providers, "io_binding": self.io_binding_device is not None,
                  "nodes": None, "time_share": None, "invalid_reason": None}
        if self._profiling and self._runs:  # fewer runs than planned: take what was profiled
            self._end_profiling()
        if isinstance(self._profile, dict) and "error" not in self._profile:
            report["nodes"], report["time_share"] = self._profile["nodes"], self._profile["time_share"]
        report["invalid_reason"] = fallback_reason(self.requested, providers, report["time_share"], self.missing)
        return report


def node_events(events):
    """Node counts and kernel-time share per provider in the last ``model_run`` of an onnxruntime profile."""
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    last = max(runs, key=lambda e: e.get("ts", 0)) if runs else None
    nodes, time_us = {}, {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        if last is not None and not last["ts"] <= e.get("ts", 0) <= last["ts"] + last.get("dur", 0):
            continue
        provider = (e.get("args") or {}).get("provider") or "unknown"
        nodes[provider] = nodes.get(provider, 0) + 1
        time_us[provider] = time_us.get(provider, 0) + int(e.get("dur", 0))
    total = sum(time_us.values())
    share = {p: round(t / total, 4) for p, t in time_us.items()} if total else {p: 0.0 for p in time_us}
    return {"nodes": nodes, "time_share": share}


def fallback_reason(requested, providers, time_share, missing=()):
    """Why a run asked for a GPU is not a GPU run (None when it is, or when only the CPU was asked for)."""
    wanted = [PROVIDERS[t] for t in requested if t != "cpu"]
    if not wanted:
        return None
    if not any(p in providers for p in wanted):
        absent = ", ".join(missing) if missing else ", ".join(t for t in requested if t != "cpu")
        return ("fell back to CPU: asked for %s, but the session runs on %s only (this onnxruntime has no %s "
                "provider: install %s, which replaces onnxruntime, with a matching CUDA driver)"
                % (", ".join(requested), ", ".join(providers), absent, GPU_PACKAGE))
    cpu = (time_share or {}).get("CPUExecutionProvider", 0.0)
    if cpu > MAX_CPU_SHARE:
        return ("fell back to CPU: %.0f%% of kernel time ran on CPUExecutionProvider (more than %.0f%%): ops the GPU "
                "provider lacks run on the CPU" % (cpu * 100, MAX_CPU_SHARE * 100))
    return None


def load(path, threads, targets=None, profile=True, spinning=None):
    """An ``OrtModel`` for the .onnx file at ``path`` using ``threads`` intra-op threads, on ``targets`` (execution
    target names, most preferred first; None: the CPU). ``profile``: on a GPU request, profile the first runs to
    learn where the nodes ran (the model must then be run through ``OrtModel.run``)."""
    import onnxruntime as ort

    requested = list(targets or ["cpu"])
    providers, missing = providers_for(requested, ort.get_available_providers())
    on_gpu = providers[0] != "CPUExecutionProvider"
    if on_gpu and hasattr(ort, "preload_dlls"):
        # CUDA and cuDNN from the nvidia-* wheels (torch's) where the system has none on its library path; when this
        # fails the session has no CUDA provider, which execution_report() says
        try:
            ort.preload_dlls()
        except Exception:  # noqa: BLE001 - any failure here shows up as the fallback report, with its reason
            pass
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # One model run at a time: inter-op parallelism would only add threads that compete with intra-op ones.
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: the runner's stderr is for its own one-line messages
    if spinning is not None:  # idle intra-op threads spin (on, onnxruntime's default) or sleep at once (off)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    profiled = profile and requested != ["cpu"]  # a GPU run proves where its nodes ran; a CPU one need not
    if profiled:
        options.enable_profiling = True
        options.profile_file_prefix = os.path.join(tempfile.gettempdir(), "edgeopt-ort-profile-%d" % os.getpid())
    provider_options = [_provider_options(p) for p in providers]
    session = ort.InferenceSession(path, sess_options=options, providers=providers, provider_options=provider_options)
    on_gpu = on_gpu and session.get_providers()[0] != "CPUExecutionProvider"
    model = OrtModel(session, requested, missing, io_binding_device="cuda" if on_gpu else None, profiled=profiled)
    model.threads = int(threads)
    model.spinning = True if spinning is None else bool(spinning)
    return model


def _provider_options(provider):
    if provider == "TensorrtExecutionProvider":
        # Engines are built on first use of an input shape (minutes for a large model): cache them, and let TensorRT
        # run fp16 kernels where the graph is fp32.
        return {"trt_fp16_enable": "True", "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": os.path.join(tempfile.gettempdir(), "edgeopt-trt-cache")}
    if provider == "CUDAExecutionProvider":
        return {"device_id": "0"}
    return {}


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


def load_lm(path, threads, lm, targets=None):
    """An ``OrtLMSession`` for the explicit-past LM graph at ``path``; ``lm`` is the manifest's ``lm`` entry."""
    if lm.get("cache") != "explicit":
        raise ValueError(f"onnxruntime runs LMs with an explicit cache only, got cache={lm.get('cache')!r}")
    if targets:  # TensorRT would build a new engine at every cache length a decode step brings: CUDA runs LMs
        targets = list(dict.fromkeys("cuda" if t == "tensorrt" else t for t in targets))
    model = load(path, threads, targets, profile=False)  # decode steps call the session directly
    session = OrtLMSession(model._session, lm)
    session.execution_report = model.execution_report  # providers of the session (no node profile: steps vary)
    return session
