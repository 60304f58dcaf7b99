"""Latency on the lengths an app really sends, against every input padded to 128 tokens, per format.

    python benchmarks/bench_lengths.py [--threads 2] [--rounds 3] [--reps 3] [--formats onnxruntime,executorch]
                                       [--out results.json]

The distribution: the held-out half of the sentences shipped with edgeopt (``edgeopt.models.corpus_sentences``),
one query each, tokenized by MiniLM's tokenizer (padding to 128, as the inputs.npz of a bundle stores them).
For each format, edgeopt's int8 MiniLM artifact (seq_len 128) is loaded once through the device runner's own
backend (``runtimes/<runtime>/backend.py``: what a device runs) and every sentence is run two ways:
``padded-128`` (the tokenizer's output as is) and ``lengths`` (padding trimmed from the attention mask, then run
at the real length, or the smallest bucket that holds it, as the runner and the bundle README do). Rounds
interleave the two ways and the formats so drift on a shared machine lands on all alike; the table gives the
median round's mean latency per query and the ratio. Fidelity: cosine of ``sentence_embedding`` against eager
fp32 on the same sentence, for both ways.

Target (Step 9, item 4): mean latency on the distribution >= 3x lower than padded-128 for MiniLM, at the same
fidelity (mean cosine within 0.001 of the padded one).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SEQ = 128
TARGET_RATIO = 3.0


def _backend(runtime: str):
    path = ROOT / "runtimes" / runtime / "backend.py"
    spec = importlib.util.spec_from_file_location(f"bench_backend_{runtime}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runner():
    spec = importlib.util.spec_from_file_location("bench_runner", ROOT / "runtimes" / "common" / "runner.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _queries(loaded) -> list[dict]:
    """Each held-out sentence tokenized and padded to SEQ, as feeds of [1, SEQ] arrays."""
    from edgeopt.models import corpus_sentences

    sentences = corpus_sentences()
    held_out = sentences[len(sentences) // 2:]
    enc = loaded.tokenizer(held_out, padding="max_length", truncation=True, max_length=SEQ, return_tensors="np")
    return [{name: np.ascontiguousarray(enc[name][i:i + 1].astype(np.int64)) for name in loaded.input_names}
            for i in range(len(held_out))]


def _build(loaded, runtime, work: Path):
    from edgeopt.formats import Precision, Runtime
    from edgeopt.packagers import get_packager
    from edgeopt.quantize import default_scheme

    packager = get_packager(Runtime(runtime))
    packager.check_available()
    calibration = loaded.sample_inputs(4, batch=1, seq_len=SEQ, split="calibration")
    t = time.perf_counter()
    art = packager.export(loaded, default_scheme(Precision.INT8), work / runtime, shapes=(1, SEQ),
                          calibration=calibration)
    return art, time.perf_counter() - t


def _time_round(model, feeds_list, reps: int) -> tuple[float, list]:
    """Mean ms per query over ``feeds_list`` (each run ``reps`` times after one untimed run); outputs of the last."""
    times, outputs = [], []
    for feeds in feeds_list:
        out = model.run(feeds)
        for _ in range(reps):
            t0 = time.perf_counter()
            out = model.run(feeds)
            times.append((time.perf_counter() - t0) * 1000.0)
        outputs.append(out)
    return float(np.mean(times)), outputs


def _cosines(reference: list, outputs: list, index: int) -> list[float]:
    from edgeopt.verify import cosine

    return [cosine(r, np.asarray(o[index])) for r, o in zip(reference, outputs)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--reps", type=int, default=3, help="timed runs of each query per round")
    ap.add_argument("--formats", default="onnxruntime,executorch,litert")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()

    import torch

    from edgeopt.models import load_model

    runner = _runner()
    loaded = load_model(None)
    queries = _queries(loaded)
    with torch.no_grad():
        reference = [loaded.module(*(torch.from_numpy(q[n]) for n in loaded.input_names))[0].numpy() for q in queries]
    rows, models = [], []
    with tempfile.TemporaryDirectory(prefix="edgeopt-lengths-") as tmp:
        for runtime in [r for r in args.formats.split(",") if r]:
            print(f"building {runtime} int8 ...", file=sys.stderr, flush=True)
            try:
                art, build_s = _build(loaded, runtime, Path(tmp))
            except Exception as e:  # noqa: BLE001 - a table row, not a crash
                rows.append({"format": runtime, "error": str(e).splitlines()[0][:160]})
                continue
            lengths = art.lengths.to_dict() if art.lengths is not None and art.lengths.variable else None
            model = _backend(runtime).load(str(art.path), args.threads)
            index = runner.output_order(model, [s.name for s in art.outputs])[0]
            fitted, real, run = [], [], []
            for q in queries:
                if lengths is None:  # static shapes: the app must pad
                    fitted.append(q)
                    real.append(runner.real_length(q, {"mask": "attention_mask"}))
                    run.append(SEQ)
                    continue
                n = runner.real_length(q, lengths)
                real.append(n)
                run.append(runner.fit_length(lengths, n))
                fitted.append(runner.feeds_at(q, lengths, run[-1]))
            models.append((runtime, model, index, fitted, lengths, real, run, art, build_s))
        measured = {m[0]: {"padded": [], "lengths": []} for m in models}
        outputs = {}
        for r in range(args.rounds):
            for runtime, model, index, fitted, *_ in models:
                print(f"round {r + 1}/{args.rounds}: {runtime}", file=sys.stderr, flush=True)
                for way, feeds in (("padded", queries), ("lengths", fitted)) if r % 2 == 0 else \
                        (("lengths", fitted), ("padded", queries)):
                    ms, outs = _time_round(model, feeds, args.reps)
                    measured[runtime][way].append(ms)
                    outputs[(runtime, way)] = outs
        for runtime, model, index, fitted, lengths, real, run, art, build_s in models:
            m = measured[runtime]
            ratios = [p / q for p, q in zip(m["padded"], m["lengths"])]
            cos_p = _cosines(reference, outputs[(runtime, "padded")], index)
            cos_l = _cosines(reference, outputs[(runtime, "lengths")], index)
            rows.append({"format": runtime, "file": art.path.name, "bytes": art.path.stat().st_size,
                         "lengths": lengths["mode"] if lengths else "static",
                         "real_mean": float(np.mean(real)), "run_mean": float(np.mean(run)),
                         "padded_ms": float(np.median(m["padded"])), "lengths_ms": float(np.median(m["lengths"])),
                         "padded_rounds_ms": m["padded"], "lengths_rounds_ms": m["lengths"],
                         "ratio": float(np.median(ratios)), "cos_padded": float(np.mean(cos_p)),
                         "cos_lengths": float(np.mean(cos_l)), "min_cos_lengths": float(np.min(cos_l)),
                         "build_s": build_s})
    _print(rows, len(queries), args)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


def _print(rows: list[dict], n: int, args) -> None:
    print(f"\nall-MiniLM-L6-v2 int8, {n} held-out sentences (one query each), {args.threads} threads, "
          f"{args.rounds} interleaved rounds x {args.reps} runs per query; ms = mean per query, median round\n")
    head = (f"{'format':12} {'lengths':8} {'tokens':>7} {'run at':>7} {'padded-128 ms':>14} {'lengths ms':>11} "
            f"{'ratio':>6} {'cos padded':>11} {'cos lengths':>12} {'min cos':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        if "error" in r:
            print(f"{r['format']:12} failed: {r['error']}")
            continue
        print(f"{r['format']:12} {r['lengths']:8} {r['real_mean']:7.1f} {r['run_mean']:7.1f} {r['padded_ms']:14.2f} "
              f"{r['lengths_ms']:11.2f} {r['ratio']:5.2f}x {r['cos_padded']:11.5f} {r['cos_lengths']:12.5f} "
              f"{r['min_cos_lengths']:8.5f}")
    print()
    for r in rows:
        if "error" in r:
            continue
        same = abs(r["cos_lengths"] - r["cos_padded"]) <= 1e-3
        verdict = "PASS" if r["ratio"] >= TARGET_RATIO and same else "FAIL"
        print(f"target ({r['format']}): >= {TARGET_RATIO:g}x lower mean latency at the same fidelity: {verdict} "
              f"({r['ratio']:.2f}x, cosine {r['cos_lengths']:.5f} vs {r['cos_padded']:.5f} padded)")


if __name__ == "__main__":
    main()
