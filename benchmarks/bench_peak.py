"""The physical limit, stated: MiniLM's FLOPs, this host's measured GEMM peak, and each artifact's fraction of it.

    python benchmarks/bench_peak.py [--bundle DIR ...] [--work DIR] [--threads 2] [--rounds 8] [--spin off]
                                    [--quick] [--json] [--out report.json]

1. FLOPs of all-MiniLM-L6-v2 (the built-in default model) at batch 1, seq 128, counted analytically from its
   config (``bert_flops``: QKV / output projections, attention scores and context, FFN as GEMMs; bias, softmax,
   LayerNorm, GELU and residuals as the rest, at stated per-element costs) and cross-checked against
   ``torch.utils.flop_counter.FlopCounterMode`` on the real model (which counts matmul-like ops only, so it must
   equal the GEMM part). FLOPs = 2 x MACs.
2. The measured peak of a plain GEMM in the runtimes' own kernels at 1 and --threads threads: an ONNX graph of one
   ``MatMul`` (fp32), one ``MatMulInteger`` (uint8 x int8 -> int32) and ``DynamicQuantizeLinear`` + ``MatMulInteger``
   + rescale (the op chain the dynamic-int8 artifacts carry) in onnxruntime; one Linear lowered to XNNPACK (fp32 and
   PT2E dynamic int8) in ExecuTorch, the kernels of the .pte artifacts (LiteRT's delegate is XNNPACK too);
   ``torch.matmul`` fp32 and ``torch._int_mm`` int8 as cross-checks. Shapes: MiniLM's FFN (128x384x1536,
   M x K x N) and 1024^3. Each cell is the best of --rounds blocks, the cells interleaved within every round so
   drift on a shared CPU lands on all.
3. Each artifact of the bundles (default: edgeopt packages MiniLM for desktop-cpu with --all-formats, once with
   the planner's precision and once with --precision fp32, the latency target lifted so that fp32 is not pruned) is
   timed at seq 128 by the bundle's own runner (runner/common/runner.py --seq-len 128) at --threads, best p50 over
   interleaved rounds, and set against the peak of its precision (the best GEMM of that precision at those
   threads, any kernel, any shape): achieved GFLOP/s = model FLOPs / p50, fraction of peak, and the time the GEMMs
   alone would take at peak against the measured time (the rest is overhead: non-GEMM ops, quantization, memory
   traffic, dispatch, idle threads).

Not part of the test run (tests/test_bench_peak.py checks the analytic counter only).
Results: benchmarks/results/peak.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runtimes/ (the device runner's backends) is not installed with edgeopt
SEQ_LEN, BATCH = 128, 1
# Per-element FLOP costs of the non-GEMM ops (conventions, not measurements): an exp is counted as one FLOP.
SOFTMAX_FLOPS = 5  # max, subtract, exp, sum, divide
LAYERNORM_FLOPS = 8  # mean, subtract, square, variance sum, rsqrt/divide, scale, shift
GELU_FLOPS = 8  # erf-form GELU: x * 0.5 * (1 + erf(x / sqrt 2)), erf as ~4
GEMM_SHAPES = ((128, 384, 1536), (1024, 1024, 1024))  # M, K, N: MiniLM's FFN up-projection; a square one for peak
QUICK_SHAPES = ((128, 384, 1536), (512, 512, 512))
_THREADS: dict = {}  # runtime -> its process-wide thread count now (torch)
# (runtime, kernel) of every GEMM cell; precision int8 unless the kernel is fp32
KERNELS = (("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("onnxruntime", "int8-dynamic"),
           ("executorch", "fp32"), ("executorch", "int8-dynamic"), ("torch", "fp32"), ("torch", "int8"))


@dataclass(frozen=True)
class ModelFlops:
    """A transformer's work at one shape: GEMM MACs per part and the non-GEMM FLOPs per part (whole model)."""

    gemm_macs: dict = field(default_factory=dict)
    other_flops: dict = field(default_factory=dict)

    @property
    def gemm_flops(self) -> int:
        return 2 * sum(self.gemm_macs.values())

    @property
    def total_flops(self) -> int:
        return self.gemm_flops + sum(self.other_flops.values())


def bert_flops(config, seq_len: int = SEQ_LEN, batch: int = BATCH, pooler: bool = False) -> ModelFlops:
    """Count a BERT encoder's work from its config (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
    ``intermediate_size``).

    Args:
        config: a transformers BertConfig (or anything with those attributes).
        seq_len, batch: the input shape.
        pooler: include BertPooler's dense layer on the [CLS] token (run by eager BertModel; dead code in an export
            that outputs only the hidden states and the mean-pooled embedding).
    Returns:
        ModelFlops with GEMM MACs for qkv_proj, attn_scores, attn_context, out_proj, ffn (and pooler) and the
        non-GEMM FLOPs (biases, softmax with its scaling, LayerNorm, GELU, residual adds, embedding sum).
    """
    h, layers, inter = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    heads = config.num_attention_heads
    tokens = batch * seq_len
    scores = batch * heads * seq_len * seq_len  # elements of the attention matrix, all heads
    gemm = {
        "qkv_proj": layers * 3 * tokens * h * h,
        "attn_scores": layers * batch * seq_len * seq_len * h,  # heads x (S x dh) @ (dh x S), dh = h / heads
        "attn_context": layers * batch * seq_len * seq_len * h,  # heads x (S x S) @ (S x dh)
        "out_proj": layers * tokens * h * h,
        "ffn": layers * 2 * tokens * h * inter,
    }
    if pooler:
        gemm["pooler"] = batch * h * h
    other = {
        "bias_add": layers * tokens * (3 * h + h + inter + h) + (batch * h if pooler else 0),
        "softmax": layers * scores * (SOFTMAX_FLOPS + 2),  # + scale by 1/sqrt(dh) and the additive mask
        "layernorm": (2 * layers + 1) * tokens * h * LAYERNORM_FLOPS,  # two per layer, one after the embeddings
        "gelu": layers * tokens * inter * GELU_FLOPS,
        "residual_add": layers * 2 * tokens * h + 2 * tokens * h,  # two per layer; word + position + type embeddings
    }
    return ModelFlops(gemm, other)


def counted_flops(module, inputs) -> int:
    """FLOPs that torch.utils.flop_counter.FlopCounterMode counts for ``module(*inputs)`` (matmul, addmm, bmm,
    attention kernels; elementwise ops count zero)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_flash(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    # FlopCounterMode has formulas for the CUDA attention kernels only: SDPA on the CPU would count zero.
    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_flash}
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        module(*inputs)
    return int(counter.get_total_flops())


def minilm_flops() -> dict:
    """Analytic and FlopCounterMode counts of the built-in MiniLM at SEQ_LEN x BATCH."""
    from edgeopt.models import load_model

    loaded = load_model(None)
    bert = loaded.module.model
    has_pooler = getattr(bert, "pooler", None) is not None
    counted = counted_flops(loaded.module, loaded.example_inputs(batch=BATCH, seq_len=SEQ_LEN))
    eager = bert_flops(bert.config, pooler=has_pooler)
    exported = bert_flops(bert.config, pooler=False)
    return {"config": {k: getattr(bert.config, k) for k in ("num_hidden_layers", "hidden_size", "num_attention_heads",
                                                            "intermediate_size")},
            "seq_len": SEQ_LEN, "batch": BATCH, "eager_has_pooler": has_pooler,
            "analytic": asdict(exported), "gemm_flops": exported.gemm_flops, "total_flops": exported.total_flops,
            "analytic_eager_gemm_flops": eager.gemm_flops, "flop_counter_eager": counted}


# --- GEMM peak ------------------------------------------------------------------------------------------------


def _onnx_gemm(kind: str, m: int, k: int, n: int) -> bytes:
    """One-GEMM ONNX graph; the weight is an initializer, as in the artifacts. kind: fp32, int8, int8-dynamic."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "fp32":
        weight = numpy_helper.from_array(rng.standard_normal((k, n), dtype=np.float32), "B")
        nodes = [helper.make_node("MatMul", ["A", "B"], ["Y"])]
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
        inits = [weight]
    elif kind == "int8":
        weight = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "B")
        zero_a = numpy_helper.from_array(np.array(128, dtype=np.uint8), "a_zp")
        zero_b = numpy_helper.from_array(np.array(0, dtype=np.int8), "b_zp")
        nodes = [helper.make_node("MatMulInteger", ["A", "B", "a_zp", "b_zp"], ["Y"])]
        a_type, y_type = TensorProto.UINT8, TensorProto.INT32
        inits = [weight, zero_a, zero_b]
    elif kind == "int8-dynamic":  # what onnxruntime.quantization.quantize_dynamic writes per MatMul
        weight = numpy_helper.from_array(rng.integers(-127, 128, (k, n), dtype=np.int8), "B")
        zero_b = numpy_helper.from_array(np.array(0, dtype=np.int8), "b_zp")
        scale_b = numpy_helper.from_array(np.array(0.01, dtype=np.float32), "b_scale")
        nodes = [helper.make_node("DynamicQuantizeLinear", ["A"], ["Aq", "a_scale", "a_zp"]),
                 helper.make_node("MatMulInteger", ["Aq", "B", "a_zp", "b_zp"], ["Yi"]),
                 helper.make_node("Cast", ["Yi"], ["Yf"], to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["a_scale", "b_scale"], ["s"]),
                 helper.make_node("Mul", ["Yf", "s"], ["Y"])]
        a_type, y_type = TensorProto.FLOAT, TensorProto.FLOAT
        inits = [weight, zero_b, scale_b]
    else:
        raise ValueError(f"unknown GEMM kind {kind!r} (known: fp32, int8, int8-dynamic)")
    graph = helper.make_graph(nodes, "gemm", [helper.make_tensor_value_info("A", a_type, [m, k])],
                              [helper.make_tensor_value_info("Y", y_type, [m, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _ort_call(kind, m, k, n, threads, spin):
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    session = ort.InferenceSession(_onnx_gemm(kind, m, k, n), sess_options=options,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    if kind == "int8":
        a = rng.integers(0, 256, (m, k), dtype=np.uint8)
    else:
        a = rng.standard_normal((m, k), dtype=np.float32)
    return lambda: session.run(None, {"A": a})


def _torch_call(kind, m, k, n, threads):
    import torch

    gen = torch.Generator().manual_seed(0)
    if kind == "fp32":
        a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
        op = torch.matmul
    else:  # torch._int_mm: int8 x int8 -> int32 (M > 16, K and N multiples of 8)
        a = torch.randint(-127, 128, (m, k), dtype=torch.int8, generator=gen)
        b = torch.randint(-127, 128, (k, n), dtype=torch.int8, generator=gen)
        op = torch._int_mm

    def call():
        if _THREADS.get("torch") != threads:  # the cells interleave thread counts in one process
            torch.set_num_threads(threads)
            _THREADS["torch"] = threads
        with torch.no_grad():
            op(a, b)
    return call


def _et_program(kind: str, m: int, k: int, n: int, work: Path) -> Path:
    """A .pte of one Linear (with bias, like the model's) lowered to XNNPACK; int8-dynamic: PT2E XNNPACKQuantizer
    with dynamic per-channel int8, as edgeopt's packager quantizes."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    path = work / f"gemm-{kind}-{m}x{k}x{n}.pte"
    if path.is_file():
        return path
    torch.manual_seed(0)
    module = torch.nn.Linear(k, n).eval()
    example = (torch.randn(m, k),)
    if kind == "int8-dynamic":
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer,
            get_symmetric_quantization_config,
        )
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True,
                                                                                    is_dynamic=True))
        prepared = prepare_pt2e(torch.export.export(module, example, strict=False).module(), quantizer)
        prepared(*example)
        module = convert_pt2e(prepared)
    with torch.no_grad():
        program = to_edge_transform_and_lower(torch.export.export(module, example, strict=False),
                                              partitioner=[XnnpackPartitioner()]).to_executorch()
    work.mkdir(parents=True, exist_ok=True)
    path.write_bytes(program.buffer)
    return path


def _block_seconds(call, min_seconds: float) -> float:
    """Mean seconds per call over a block of at least ``min_seconds`` (at least 3 calls), after one warm call."""
    call()
    calls, start = 0, time.perf_counter()
    while True:
        call()
        calls += 1
        elapsed = time.perf_counter() - start
        if calls >= 3 and elapsed >= min_seconds:
            return elapsed / calls


def et_worker(threads: int, min_seconds: float, programs: list[str]) -> list[float]:
    """Seconds per call of each .pte in ``programs`` (one block each) on a ``threads``-thread pool, in this process.

    A child process per thread count: XNNPACK delegates keep the threadpool they were loaded on, so resizing the
    process-wide pool with methods loaded crashes (SIGSEGV) - the thread counts cannot share one process."""
    import numpy as np

    from runtimes.executorch import backend  # the device runner's adapter: the pybindings the .pte artifacts use

    times = []
    for path in programs:
        model = backend.load_pybindings(path, threads)
        m, k = (int(d) for d in Path(path).stem.rsplit("-", 1)[1].split("x")[:2])
        feeds = {"x": np.random.default_rng(1).standard_normal((m, k), dtype=np.float32)}
        times.append(_block_seconds(lambda: model.run(feeds), min_seconds))
    return times


def _et_round(cells: list[dict], threads: int, min_seconds: float) -> None:
    mine = [c for c in cells if c["runtime"] == "executorch" and c["threads"] == threads]
    if not mine:
        return
    cmd = [sys.executable, str(Path(__file__).resolve()), "--et-worker", json.dumps(
        {"threads": threads, "min_seconds": min_seconds, "programs": [c["_pte"] for c in mine]})]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit("ExecuTorch GEMM worker failed (exit %d): %s" % (proc.returncode, proc.stderr[-800:]))
    for cell, seconds in zip(mine, json.loads(proc.stdout.strip().splitlines()[-1])):
        cell["_times"].append(seconds)


def gemm_peaks(shapes, thread_counts, rounds: int, min_seconds: float, spin: bool, work: Path) -> list[dict]:
    """Best-of-``rounds`` GFLOP/s (int8: GOP/s) of every kernel x shape x threads cell, cells interleaved per round
    (the ExecuTorch cells of one thread count in one child process per round, see ``et_worker``)."""
    cells = []
    for m, k, n in shapes:
        for threads in thread_counts:
            for runtime, kind in KERNELS:
                cell = {"runtime": runtime, "kernel": kind, "precision": "fp32" if kind == "fp32" else "int8",
                        "m": m, "k": k, "n": n, "threads": threads, "_times": []}
                if runtime == "onnxruntime":
                    cell["_call"] = _ort_call(kind, m, k, n, threads, spin)
                elif runtime == "executorch":
                    cell["_pte"] = str(_et_program(kind, m, k, n, work / "gemm"))
                else:
                    cell["_call"] = _torch_call(kind, m, k, n, threads)
                cells.append(cell)
    for _ in range(rounds):
        for threads in thread_counts:
            for cell in cells:
                if cell["threads"] == threads and "_call" in cell:
                    cell["_times"].append(_block_seconds(cell["_call"], min_seconds))
            _et_round(cells, threads, min_seconds)
    for cell in cells:
        best = min(cell.pop("_times"))
        cell.pop("_call", None)
        cell.pop("_pte", None)
        cell["best_ms"] = best * 1e3
        cell["gflops"] = 2 * cell["m"] * cell["k"] * cell["n"] / best / 1e9
    return cells


def peak_of(cells: list[dict], precision: str, threads: int) -> dict | None:
    """The fastest cell of ``precision`` at ``threads`` (any kernel, any shape)."""
    pool = [c for c in cells if c["precision"] == precision and c["threads"] == threads]
    return max(pool, key=lambda c: c["gflops"]) if pool else None


# --- artifacts ------------------------------------------------------------------------------------------------


def package_bundles(work: Path, quick: bool) -> list[Path]:
    """MiniLM for desktop-cpu with --all-formats at the planner's precision and (not --quick) at fp32; reused."""
    variants = [("planned", "desktop-cpu", [])]
    if not quick:
        variants.append(("fp32", str(_fp32_profile(work)), ["--precision", "fp32"]))
    bundles = []
    for name, profile, extra in variants:
        out = work / name
        found = sorted(out.glob("*/manifest.json"))
        if not found:
            cmd = [sys.executable, "-m", "edgeopt.cli", "package", "--profile", profile, "--all-formats",
                   "--out", str(out), *extra]
            print("packaging:", " ".join(cmd[2:]), file=sys.stderr)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            found = sorted(out.glob("*/manifest.json"))
        bundles.append(found[0].parent)
    return bundles


def _fp32_profile(work: Path) -> Path:
    """desktop-cpu without its latency target: at 9 ms the planner prunes fp32 MiniLM (drops a block), which would
    change the FLOPs counted here; the peak comparison needs the whole model."""
    import yaml

    data = yaml.safe_load((ROOT / "profiles" / "desktop-cpu.yaml").read_text())
    data["name"] = "desktop-cpu-fp32"
    data["targets"]["latency_ms"] = 10000
    data["description"] += " (latency target lifted by bench_peak.py so fp32 is built unpruned)"
    path = work / "desktop-cpu-fp32.yaml"
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _check_unpruned(bundle: Path, manifest: dict) -> None:
    pruned = [r["candidate"]["prune"] for r in manifest["plan"]["rows"] if r["status"] == "chosen"]
    if any(pruned):
        raise SystemExit(f"{bundle}: the plan pruned the model ({pruned[0]}); its FLOPs are not MiniLM's. Package "
                         "with a profile whose latency target the unpruned model meets (see _fp32_profile).")


def _artifacts(bundle: Path) -> list[dict]:
    manifest = json.loads((bundle / "manifest.json").read_text())
    _check_unpruned(bundle, manifest)
    return [{"bundle": str(bundle), "file": a["file"], "runtime": a["runtime"], "precision": a["precision"]}
            for a in manifest["artifacts"]]


def _run_artifact(art: dict, threads: int, runs: int, min_seconds: float, spin: bool) -> dict:
    cmd = [sys.executable, str(ROOT / "runtimes" / "common" / "runner.py"), "--bundle", art["bundle"],
           "--artifact", art["file"], "--threads", str(threads), "--seq-len", str(SEQ_LEN), "--warmup", "5",
           "--runs", str(runs), "--min-seconds", str(min_seconds), "--repeats", "1", "--max-spread", "10",
           "--cooldown-s", "0"]
    if art["runtime"] == "onnxruntime":
        cmd += ["--spin", "on" if spin else "off"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise SystemExit("runner failed on %s/%s: %s" % (art["bundle"], art["file"], proc.stderr[-800:]))
    return json.loads(proc.stdout)


def time_artifacts(bundles, threads: int, rounds: int, runs: int, min_seconds: float, spin: bool) -> list[dict]:
    """Best p50 (ms) over ``rounds`` of every artifact, the artifacts interleaved within each round."""
    arts = [a for b in bundles for a in _artifacts(b)]
    for art in arts:
        art["p50_ms"], art["runner"] = [], None
    for _ in range(rounds):
        for art in arts:
            res = _run_artifact(art, threads, runs, min_seconds, spin)
            art["p50_ms"].append(res["latency_ms"]["p50"])
            art["runner"] = (res.get("extra") or {}).get("runner", art["runtime"])
    for art in arts:
        art["p50_rounds_ms"] = art["p50_ms"]
        art["p50_ms"] = min(art["p50_rounds_ms"])
    return arts


def fractions(arts: list[dict], flops: dict, cells: list[dict], threads: int) -> None:
    """Add achieved GFLOP/s, fraction of the precision's peak and GEMM-at-peak time to every artifact."""
    for art in arts:
        seconds = art["p50_ms"] / 1e3
        art["achieved_gflops"] = flops["total_flops"] / seconds / 1e9
        art["gemm_gflops"] = flops["gemm_flops"] / seconds / 1e9
        peak = peak_of(cells, "fp32" if art["precision"] in ("fp32", "fp16") else "int8", threads)
        if peak is None or art["precision"] not in ("fp32", "int8"):
            art["peak_gflops"] = art["fraction_of_peak"] = art["gemm_at_peak_ms"] = art["overhead_share"] = None
            continue
        art["peak_gflops"] = peak["gflops"]
        art["peak_kernel"] = "%s %s %dx%dx%d" % (peak["runtime"], peak["kernel"], peak["m"], peak["k"], peak["n"])
        art["fraction_of_peak"] = art["achieved_gflops"] / peak["gflops"]
        macs = flops["analytic"]["gemm_macs"]
        attention = 2 * (macs["attn_scores"] + macs["attn_context"])
        # Quantized artifacts quantize the weight GEMMs only: scores and context stay fp32 matmuls, at the fp32 peak.
        attention_peak = peak_of(cells, "fp32", threads) if art["precision"] == "int8" else peak
        seconds_at_peak = ((flops["gemm_flops"] - attention) / peak["gflops"]
                           + attention / (attention_peak or peak)["gflops"]) / 1e9
        art["gemm_at_peak_ms"] = seconds_at_peak * 1e3
        art["overhead_share"] = 1 - art["gemm_at_peak_ms"] / art["p50_ms"]


# --- report ---------------------------------------------------------------------------------------------------


def host_info() -> dict:
    import numpy
    import onnxruntime
    import torch

    model = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        flags = " ".join(f for f in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni") if f" {f} " in text)
    except OSError:
        pass
    versions = {"python": platform.python_version(), "numpy": numpy.__version__, "torch": torch.__version__,
                "onnxruntime": onnxruntime.__version__}
    for dist in ("executorch", "ai-edge-litert"):
        try:
            from importlib.metadata import version

            versions[dist] = version(dist)
        except Exception:  # noqa: BLE001 - a runtime not installed is just not listed
            pass
    fields = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("cpu family", "model", "cpu MHz") and key.strip() not in fields:
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    return {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpu": model, "cpu_flags": flags,
            "cpu_family_model": "%s/%s" % (fields.get("cpu family", "?"), fields.get("model", "?")),
            "cpu_mhz_reported": fields.get("cpu MHz"),
            "cores": len(os.sched_getaffinity(0)), "machine": platform.machine(), "versions": versions,
            "load_avg": os.getloadavg()}


def print_report(report: dict) -> None:
    host, flops = report["host"], report["flops"]
    print("host: %s (family/model %s, %s MHz reported, %s, %d cores usable, %s), %s" % (
        host["cpu"], host["cpu_family_model"], host["cpu_mhz_reported"], host["machine"], host["cores"],
        host["cpu_flags"], host["date_utc"]))
    print("versions: " + ", ".join("%s %s" % kv for kv in host["versions"].items()))
    print("load average at start: %.2f %.2f %.2f (shared CPU: timings are best-of-N)" % tuple(host["load_avg"]))
    cfg = flops["config"]
    print("\n## FLOPs: all-MiniLM-L6-v2, batch %d, seq %d (%d layers, hidden %d, %d heads, intermediate %d)\n"
          % (flops["batch"], flops["seq_len"], cfg["num_hidden_layers"], cfg["hidden_size"],
             cfg["num_attention_heads"], cfg["intermediate_size"]))
    print("| part | MACs | FLOPs |")
    print("|---|---:|---:|")
    for part, macs in flops["analytic"]["gemm_macs"].items():
        print("| GEMM %s | %s | %s |" % (part, f"{macs:,}", f"{2 * macs:,}"))
    print("| **GEMM total** | %s | **%s** |" % (f"{flops['gemm_flops'] // 2:,}", f"{flops['gemm_flops']:,}"))
    for part, value in flops["analytic"]["other_flops"].items():
        print("| other %s | - | %s |" % (part, f"{value:,}"))
    other = flops["total_flops"] - flops["gemm_flops"]
    print("| other total | - | %s (%.2f%%) |" % (f"{other:,}", 100 * other / flops["total_flops"]))
    print("| **model total** | - | **%s** |" % f"{flops['total_flops']:,}")
    pooler = " + pooler" if flops["eager_has_pooler"] else ""
    diff = flops["flop_counter_eager"] / flops["analytic_eager_gemm_flops"] - 1
    print("\ncross-check: FlopCounterMode on the eager model: %s FLOPs; analytic GEMMs%s: %s (%+.3f%%). "
          "The artifacts drop the pooler (unused output), so the model count above excludes it."
          % (f"{flops['flop_counter_eager']:,}", pooler, f"{flops['analytic_eager_gemm_flops']:,}", 100 * diff))
    if flops.get("edgeopt_stats_flops"):
        print("edgeopt's own analysis (the bundle manifest's stats.flops): %s FLOPs."
              % f"{flops['edgeopt_stats_flops']:,}")
    print("\n## GEMM peak (best of %d interleaved blocks; GFLOP/s, int8: GOP/s; onnxruntime spinning %s)\n"
          % (report["rounds"], report["spin"]))
    print("| runtime | kernel | M x K x N | threads | best ms | GFLOP/s |")
    print("|---|---|---|---:|---:|---:|")
    for c in report["gemm"]:
        print("| %s | %s | %dx%dx%d | %d | %.3f | %.1f |" % (c["runtime"], c["kernel"], c["m"], c["k"], c["n"],
                                                         c["threads"], c["best_ms"], c["gflops"]))
    t = report["threads"]
    print("\n## Artifacts at seq %d, %d threads (runner --seq-len %d; best p50 of %d interleaved rounds)\n"
          % (SEQ_LEN, t, SEQ_LEN, report["artifact_rounds"], ))
    print("| artifact | runner | precision | p50 ms | model GFLOP/s | peak GFLOP/s (kernel) | fraction of peak "
          "| GEMMs at peak ms | overhead share |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    for a in report["artifacts"]:
        label = "%s/%s" % (Path(a["bundle"]).parent.name, a["file"])
        if a["peak_gflops"] is None:
            print("| %s | %s | %s | %.2f | %.1f | n/a | n/a | n/a | n/a |" % (
                label, a["runner"], a["precision"], a["p50_ms"], a["achieved_gflops"]))
            continue
        print("| %s | %s | %s | %.2f | %.1f | %.1f (%s) | %.1f%% | %.2f | %.0f%% |" % (
            label, a["runner"], a["precision"], a["p50_ms"], a["achieved_gflops"], a["peak_gflops"],
            a["peak_kernel"], 100 * a["fraction_of_peak"], a["gemm_at_peak_ms"], 100 * a["overhead_share"]))
    print("\nmodel GFLOP/s = model FLOPs / p50; fraction of peak = model GFLOP/s / peak of the artifact's precision; "
          "GEMMs at peak = the weight GEMMs at that peak plus attention scores and context (fp32 matmuls in every "
          "artifact) at the fp32 peak; overhead share = 1 - GEMMs at peak / p50.")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bundle", action="append", type=Path, help="existing bundle folder (repeatable); default: "
                   "package MiniLM into --work")
    p.add_argument("--work", type=Path, default=Path("/tmp/edgeopt-bench-peak"), help="where bundles are packaged")
    p.add_argument("--threads", type=int, default=2, help="threads for the artifacts (peaks: 1 and this)")
    p.add_argument("--rounds", type=int, default=8, help="interleaved rounds for the GEMM cells and the artifacts")
    p.add_argument("--spin", choices=("on", "off"), default="off",
                   help="onnxruntime intra-op spinning, GEMMs and artifacts alike (off: the CPU is shared)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: small shapes, 1 round, short blocks, no fp32 bundle")
    p.add_argument("--json", action="store_true", help="print the report as JSON instead of tables")
    p.add_argument("--out", type=Path, help="also write the JSON report to this file")
    p.add_argument("--et-worker", help=argparse.SUPPRESS)  # internal: one ExecuTorch GEMM round (et_worker)
    args = p.parse_args(argv)
    if args.et_worker:
        spec = json.loads(args.et_worker)
        print(json.dumps(et_worker(spec["threads"], spec["min_seconds"], spec["programs"])))
        return
    rounds = 1 if args.quick else args.rounds
    spin = args.spin == "on"
    report = {"host": host_info(), "rounds": rounds, "spin": args.spin, "threads": args.threads}
    report["flops"] = minilm_flops()
    bundles = args.bundle or package_bundles(args.work, args.quick)
    report["gemm"] = gemm_peaks(QUICK_SHAPES if args.quick else GEMM_SHAPES, sorted({1, args.threads}), rounds,
                                0.05 if args.quick else 0.15, spin, args.work)
    report["artifact_rounds"] = rounds
    report["artifacts"] = time_artifacts(bundles, args.threads, rounds, 5 if args.quick else 20,
                                         0.2 if args.quick else 0.5, spin)
    fractions(report["artifacts"], report["flops"], report["gemm"], args.threads)
    stats = json.loads((bundles[0] / "manifest.json").read_text()).get("stats") or {}
    report["flops"]["edgeopt_stats_flops"] = stats.get("flops")  # edgeopt's own analysis, in every manifest
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


if __name__ == "__main__":
    main()
