"""onnxruntime transformer fusions: unfused vs fused ONNX artifacts of one encoder, fp32 and int8 (issue 18 part 1).

    python benchmarks/bench_onnx_fusions.py [--model DIR|HUB_ID] [--seq 128] [--threads 2] [--rounds 30] [--spin]

Builds the four artifacts with the ONNX packager (unfused = the packager with its fusion attempt switched off,
the artifact edgeopt built before fusions), then in one process, in interleaved rounds, times each at batch 1 and
the full sequence length (a held-out sentence padded to it, so the mask has zeros) and prints the median latency,
the ratio to today's artifact (unfused int8) and the sentence-embedding cosine against eager fp32 on 16 padded
held-out inputs. Not part of the test run.

Measured Dec 2026 on the 2-core x86-64 build host (AVX2, no VNNI) shared with two other jobs, all-MiniLM-L6-v2,
seq 128, 2 threads, 30 rounds (ratio to unfused int8): spinning off: fused int8 0.980 (28.9 ms), unfused fp32 1.303,
fused fp32 1.213; spinning on (load ~3.4): fused int8 0.985, unfused fp32 1.264, fused fp32 1.230; an earlier
40-round run in a quieter spell gave fused int8 0.925 (20.7 -> 19.4 ms). Cosine mean / min on the padded inputs:
int8 0.9974 / 0.9964 unfused, 0.9975 / 0.9960 fused. The quantized MatMuls are 50-70% of the int8 run time
(onnxruntime profiler) and fusion does not touch them, which bounds what it can give.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def build(loaded, scheme, work: Path, fused: bool, seq: int):
    from edgeopt.packagers import onnx as onnx_packager

    saved = onnx_packager._FUSABLE_MODEL_TYPES
    if not fused:  # the packager as it was before fusions: no attempt
        onnx_packager._FUSABLE_MODEL_TYPES = frozenset()
    try:
        calibration = loaded.sample_inputs(16, seq_len=seq, split="calibration")
        return onnx_packager.OnnxPackager().export(loaded, scheme, work, shapes=(1, seq), calibration=calibration)
    finally:
        onnx_packager._FUSABLE_MODEL_TYPES = saved


def session(path: Path, threads: int, spin: bool):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = threads, 1, 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main(argv=None) -> None:
    import numpy as np
    import torch

    from edgeopt.formats import Precision
    from edgeopt.models import load_model
    from edgeopt.quantize import QuantScheme, default_scheme

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--runs", type=int, default=10, help="runs per cell per round")
    p.add_argument("--spin", action="store_true", help="let onnxruntime's threads spin (costly on a shared CPU)")
    args = p.parse_args(argv)
    loaded = load_model(args.model)
    work = Path(tempfile.mkdtemp(prefix="bench-fusions-"))
    variants = {}
    for name, scheme in (("int8", default_scheme(Precision.INT8)), ("fp32", QuantScheme(Precision.FP32))):
        for fused in (False, True):
            label = f"{'fused' if fused else 'unfused'} {name}"
            artifact = build(loaded, scheme, work / label.replace(" ", "-"), fused, args.seq)
            variants[label] = (artifact, session(artifact.path, args.threads, args.spin))
            print(f"{label}: fusions {artifact.details['fusions'].get('ops') or artifact.details['fusions']}")
    samples = [tuple(t.numpy() for t in s) for s in loaded.sample_inputs(16, seq_len=args.seq, split="eval")]
    with torch.no_grad():
        reference = [loaded.module(*(torch.from_numpy(x) for x in s))[0].numpy() for s in samples]

    def feed(artifact, sess, sample):
        specs = [s.name for s in artifact.inputs]
        return {i.name: sample[specs.index(i.name)] for i in sess.get_inputs()}

    cosine = {}
    for label, (artifact, sess) in variants.items():
        values = []
        for sample, ref in zip(samples, reference):
            out = np.asarray(sess.run(None, feed(artifact, sess, sample))[0], np.float64).ravel()
            r = np.asarray(ref, np.float64).ravel()
            values.append(float(out @ r / (np.linalg.norm(out) * np.linalg.norm(r))))
        cosine[label] = (float(np.mean(values)), min(values))
    feeds = {label: feed(a, s, samples[0]) for label, (a, s) in variants.items()}
    for label, (_, sess) in variants.items():  # warm-up
        for _ in range(5):
            sess.run(None, feeds[label])
    times = {label: [] for label in variants}
    for _ in range(args.rounds):  # interleaved: every variant once per round, ratios per round
        for label, (_, sess) in variants.items():
            start = time.perf_counter()
            for _ in range(args.runs):
                sess.run(None, feeds[label])
            times[label].append((time.perf_counter() - start) / args.runs * 1000.0)
    base = times["unfused int8"]
    print(f"\n{loaded.name}, batch 1, seq {args.seq}, {args.threads} threads, spinning {'on' if args.spin else 'off'}, "
          f"{args.rounds} interleaved rounds of {args.runs} runs")
    print("| artifact | median ms | ratio to unfused int8 (median of per-round ratios) | cosine mean / min |")
    print("|---|---|---|---|")
    for label, ts in times.items():
        ratio = statistics.median(t / b for t, b in zip(ts, base))
        mean, worst = cosine[label]
        print(f"| {label} | {statistics.median(ts):.2f} | {ratio:.3f} | {mean:.4f} / {worst:.4f} |")


if __name__ == "__main__":
    main()
