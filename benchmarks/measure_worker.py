"""Measures one model variant in a fresh process (so peak RSS is its own) and prints one JSON line.

    python benchmarks/measure_worker.py KIND PATH --inputs inputs.npz --outputs out.npz [--threads 2] [--runs 50]

KIND: torch-eager | torch-dynamic-int8 (PATH = a HF dir, or "default") | onnx | pte | tflite (PATH = the file).
Outputs of the first output for every sample are written to --outputs so the parent computes fidelity.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def _peak_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _torch_runner(kind: str, path: str, threads: int):
    import torch

    from edgeopt.models import load_model

    torch.set_num_threads(threads)
    loaded = load_model(None if path == "default" else path)
    module = loaded.module
    if kind == "torch-dynamic-int8":
        module = torch.ao.quantization.quantize_dynamic(module, {torch.nn.Linear}, dtype=torch.qint8)

    def run(feeds):
        with torch.no_grad():
            return [o.numpy() for o in module(*[torch.from_numpy(feeds[n]) for n in loaded.input_names])]

    return run


def _runtime_runner(kind: str, path: str, threads: int, input_names):
    import importlib.util
    from pathlib import Path

    folder = {"onnx": "onnxruntime", "pte": "executorch", "tflite": "litert"}[kind]
    backend_file = Path(__file__).resolve().parent.parent / "runtimes" / folder / "backend.py"
    spec = importlib.util.spec_from_file_location(f"backend_{folder}", backend_file)
    backend = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(backend)
    model = backend.load(path, threads)
    run = lambda feeds: model.run({n: feeds[n] for n in input_names})  # noqa: E731
    run.runner = getattr(model, "runner", folder)  # executorch: light (no torch) or pybindings
    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("kind")
    ap.add_argument("path")
    ap.add_argument("--inputs", required=True)
    ap.add_argument("--outputs", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--primary-shape", default="1,384",
                    help="shape of the output compared for fidelity (runtimes may order outputs differently)")
    args = ap.parse_args()

    import numpy as np

    data = np.load(args.inputs)
    names = [k[len("input."):] for k in data.files if k.startswith("input.")]
    samples = [{n: data[f"input.{n}"][i] for n in names} for i in range(data[f"input.{names[0]}"].shape[0])]
    t0 = time.perf_counter()
    if args.kind.startswith("torch"):
        run = _torch_runner(args.kind, args.path, args.threads)
    else:
        run = _runtime_runner(args.kind, args.path, args.threads, names)
    load_ms = (time.perf_counter() - t0) * 1000
    shape = tuple(int(d) for d in args.primary_shape.split(","))
    outs = [next(np.asarray(o) for o in run(s) if tuple(np.shape(o)) == shape) for s in samples]
    for _ in range(args.warmup):
        run(samples[0])
    times = []
    for _ in range(args.runs):
        t = time.perf_counter()
        run(samples[0])
        times.append((time.perf_counter() - t) * 1000)
    np.save(args.outputs, np.stack(outs))
    print(json.dumps({"p50_ms": statistics.median(times), "min_ms": min(times), "load_ms": load_ms,
                      "peak_rss_mb": _peak_rss_mb(), "runner": getattr(run, "runner", args.kind)}))


if __name__ == "__main__":
    main()
