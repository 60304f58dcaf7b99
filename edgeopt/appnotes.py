"""How an app loads a bundle's artifact: dependency lines and code for Android, iOS and desktop Python.

``app_notes(artifact, toolchain)`` turns one manifest artifact (its runtime, file, inputs and outputs, and the
``lm`` entry of a decoder LM) plus the manifest's toolchain versions into text an app developer pastes:
the Gradle line with the runtime's Maven coordinates at the version the bundle was verified with, a Kotlin
snippet on the runtime's official API, the iOS package and a Swift snippet, and a Python snippet that runs
the artifact on the first sample of ``inputs.npz`` and prints its max abs difference from the host's outputs
(the tests run that one). Pure string building: nothing here imports a runtime.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field

from edgeopt.formats import Runtime

# The pip distribution whose version, in the manifest's toolchain, is the runtime's version.
VERSION_KEY = {Runtime.ONNXRUNTIME: "onnxruntime", Runtime.EXECUTORCH: "executorch", Runtime.LITERT: "ai-edge-litert"}

# Maven coordinates (group:artifact) of each runtime's Android AAR. LiteRT publishes the pip wheel
# ai-edge-litert and the Maven AAR com.google.ai.edge.litert:litert from the same release tag (vX.Y.Z);
# onnxruntime-android and executorch-android carry the release's version too.
MAVEN = {Runtime.ONNXRUNTIME: "com.microsoft.onnxruntime:onnxruntime-android",
         Runtime.EXECUTORCH: "org.pytorch:executorch-android",
         Runtime.LITERT: "com.google.ai.edge.litert:litert"}

ORT_SWIFTPM = "https://github.com/microsoft/onnxruntime-swift-package-manager"
EXECUTORCH_SWIFTPM = "https://github.com/pytorch/executorch.git"
LITERT_SIGNATURE = "serving_default"  # what litert-torch names an encoder's one signature

# dtype -> (Kotlin element, Kotlin array, java.nio buffer, LiteRT TensorBuffer write/read suffix)
_KOTLIN = {"int64": ("Long", "LongArray", "LongBuffer", "Long"), "int32": ("Int", "IntArray", "IntBuffer", "Int"),
           "float32": ("Float", "FloatArray", "FloatBuffer", "Float"), "int8": ("Byte", "ByteArray", "ByteBuffer", "Int8"),
           "bool": ("Boolean", "BooleanArray", None, "Boolean")}
# dtype -> (Swift scalar, ORTTensorElementDataType case)
_SWIFT = {"int64": ("Int64", ".int64"), "int32": ("Int32", ".int32"), "float32": ("Float", ".float"),
          "int8": ("Int8", ".int8"), "uint8": ("UInt8", ".uInt8"), "bool": ("Bool", ".bool")}


@dataclass(frozen=True)
class AppNotes:
    """Snippets for one artifact. Code fields hold source text without Markdown fences."""

    runtime: Runtime
    version: str | None            # the runtime version the bundle was verified with (None: not recorded)
    maven: list[str]               # "group:artifact:version" the Android app depends on
    gradle: str                    # build.gradle.kts dependencies block
    kotlin: str
    ios_package: str               # Podfile / Package.swift lines
    swift: str
    python: str                    # runs with cwd = the bundle; prints "max abs diff vs host: X" (encoders)
    notes: list[str] = field(default_factory=list)


def runtime_version(runtime: Runtime, toolchain: dict) -> str | None:
    """The release version (``X.Y.Z``) of ``runtime`` named in a manifest's ``toolchain``, or None.

    A local or dev suffix (``1.5.1+cpu``, ``2.3.0.dev20260101``) is dropped: apps depend on releases.
    """
    raw = toolchain.get(VERSION_KEY[runtime])
    if not raw:
        return None
    match = re.match(r"\d+(\.\d+){1,2}", str(raw))
    return match.group(0) if match else None


def maven_coordinates(runtime: Runtime, version: str | None) -> list[str]:
    """The Android dependencies (``group:artifact:version``) for ``runtime`` at ``version``."""
    return [f"{MAVEN[runtime]}:{version or 'VERSION'}"]


def ios_package(runtime: Runtime, version: str | None) -> str:
    """Podfile / Package.swift lines for ``runtime``'s iOS library at ``version``."""
    v = version or "VERSION"
    if runtime is Runtime.ONNXRUNTIME:
        return (f"# Podfile\npod 'onnxruntime-objc', '{v}'\n"
                f"// or Package.swift (SwiftPM), product \"onnxruntime\"\n"
                f".package(url: \"{ORT_SWIFTPM}\", exact: \"{v}\")")
    if runtime is Runtime.EXECUTORCH:
        return (f"// Package.swift (SwiftPM): the branch names the ExecuTorch release\n"
                f".package(url: \"{EXECUTORCH_SWIFTPM}\", branch: \"swiftpm-{v}\")\n"
                "// products: executorch, backend_xnnpack, kernels_optimized, kernels_quantized;\n"
                "// add -all_load to Other Linker Flags so the backend and kernels register")
    return ("# Podfile: LiteRT's iOS library is still the TensorFlowLite pod, which is not versioned with\n"
            f"# ai-edge-litert {v}: take the latest and check the outputs on a device against inputs.npz\n"
            "use_frameworks!\npod 'TensorFlowLiteSwift'")


def app_notes(artifact: dict, toolchain: dict, *, threads: int = 4, targets: list[str] | None = None,
              spinning: bool | None = None, affinity: str = "none") -> AppNotes:
    """Android, iOS and Python snippets for ``artifact`` (a manifest ``artifacts`` entry).

    Args:
        artifact: the manifest entry: ``runtime``, ``file``, ``inputs``/``outputs`` ([{name, dtype, shape}]),
            and ``lm`` for a decoder LM.
        toolchain: the manifest's ``toolchain`` (pip distribution -> version).
        threads: CPU threads the snippets ask for (the profile's ``compute.threads``).
        spinning: the profile's ``compute.spinning``: onnxruntime snippets set session.intra_op.allow_spinning to
            it (None: the runtime's default, on). The XNNPACK runtimes have no such switch.
        affinity: the profile's ``compute.affinity``: with ``fastest`` the Python snippet pins the process to the
            ``threads`` fastest cores (Android and iOS apps get a comment: neither SDK exposes thread affinity).
        targets: where the profile runs this runtime (``profile.execution``, e.g. ["tensorrt", "cuda"]); the
            onnxruntime Python snippet asks for those providers, then the CPU. None: the CPU.
    Returns:
        An ``AppNotes``; an unknown dtype gives a comment in the code, never an exception.
    """
    runtime = Runtime.parse(artifact["runtime"])
    version = runtime_version(runtime, toolchain)
    maven = maven_coordinates(runtime, version)
    gradle = "dependencies {\n" + "".join(f'    implementation("{c}")\n' for c in maven) + "}"
    lm = artifact.get("lm")
    kotlin = {Runtime.ONNXRUNTIME: functools.partial(_kotlin_ort, spinning=spinning), Runtime.EXECUTORCH: _kotlin_et,
              Runtime.LITERT: _kotlin_litert}[runtime](artifact, threads)
    swift = {Runtime.ONNXRUNTIME: functools.partial(_swift_ort, spinning=spinning), Runtime.EXECUTORCH: _swift_et,
             Runtime.LITERT: _swift_litert}[runtime](artifact, threads) if not lm else _swift_lm(
        runtime, artifact, threads, spinning=spinning)
    providers = ort_providers(targets)
    python = _hoist_imports(_pin_fastest(threads, affinity) + (
        _python_lm(runtime, artifact, threads, providers, spinning=spinning) if lm
        else _python(runtime, artifact, threads, providers, spinning=spinning)))
    if affinity == "fastest":
        note = (f"// the profile runs the {threads} threads on the fastest cores (compute.affinity: fastest); neither\n"
                "// SDK sets thread affinity: keep inference off the UI thread (on Android, pin from native code)\n")
        kotlin, swift = note + kotlin, note + swift
    notes = _notes(runtime, artifact, version)
    return AppNotes(runtime, version, maven, gradle, kotlin, ios_package(runtime, version), swift, python, notes)


# ------------------------------------------------------------------------------------------ helpers


def _spin_value(spinning: bool | None) -> str | None:
    """session.intra_op.allow_spinning's value for ``spinning`` (None: leave onnxruntime's default)."""
    return None if spinning is None else ("1" if spinning else "0")


def _pin_fastest(threads: int, affinity: str) -> str:
    """Python lines pinning the process to the ``threads`` fastest cores, for ``affinity: fastest``."""
    if affinity != "fastest":
        return ""
    return ("import os\n\n"
            f"try:  # the profile's compute.affinity (fastest): pin to the {threads} cores of highest maximum frequency\n"
            "    cpus = sorted(os.sched_getaffinity(0))\n"
            "    khz = {c: int(open(f\"/sys/devices/system/cpu/cpu{c}/cpufreq/cpuinfo_max_freq\").read()) for c in cpus}\n"
            f"    os.sched_setaffinity(0, sorted(cpus, key=lambda c: -khz[c])[:{threads}])\n"
            "except (AttributeError, OSError, ValueError):  # no affinity or cpufreq here: the OS schedules\n"
            "    pass\n\n")


def _shape(spec: dict) -> list[int]:
    return [int(d) for d in spec.get("shape") or []]


def _numel(spec: dict) -> int:
    n = 1
    for d in _shape(spec):
        n *= max(d, 1)  # a dynamic dim (-1): one element per row here; size it to your data
    return n


def _camel(name: str) -> str:
    parts = re.split(r"[^0-9a-zA-Z]+", name)
    word = parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])
    return word if word and not word[0].isdigit() else "t" + word


def _kt(dtype: str) -> tuple | None:
    return _KOTLIN.get(str(dtype))


def _unknown(lang_comment: str, spec: dict) -> str:
    return (f"{lang_comment} {spec['name']}: dtype {spec['dtype']} has no mapping in these notes; "
            f"see the runtime's docs for {spec['dtype']} tensors")


def _mapped(specs: list[dict], table: dict, lines: list[str], *, usable=lambda _t: True, indent: str = ""):
    """Yield ``(spec, entry)`` for each spec whose dtype ``table`` maps (and ``usable`` accepts); each other spec
    gets a comment line in ``lines``, in order, saying there is no mapping."""
    for spec in specs:
        entry = table.get(str(spec["dtype"]))
        if entry is None or not usable(entry):
            lines.append(indent + _unknown("//", spec))
            continue
        yield spec, entry


def _io_comment(spec: dict) -> str:
    return f"{spec['name']}: {spec['dtype']} {_shape(spec)}"


def _notes(runtime: Runtime, artifact: dict, version: str | None) -> list[str]:
    notes = [(f"Android assets are compressed by default: add `androidResources {{ noCompress += "
             f"listOf(\"{artifact['file'].rsplit('.', 1)[-1]}\") }}` so the file can be memory-mapped.")]
    if version is None:
        notes.append(f"The manifest names no {VERSION_KEY[runtime]} version: use the one you verified with.")
    if runtime is Runtime.ONNXRUNTIME:
        notes.append("`onnxruntime-android` runs `model.onnx` and `model.ort`; a reduced-size custom build "
                     "can take `model.required_operators.config` (ORT's `--include_ops_by_config`).")
    lengths = _lengths(artifact)
    if lengths:
        seq = ", ".join(lengths.get("inputs") or [])
        if lengths["mode"] == "dynamic":
            notes.append(f"Sequence length is dynamic ({lengths['min']}..{lengths['max']} tokens): do not pad. Cut "
                         f"{seq} to the real length n (the last 1 in attention_mask, plus one) and run at n; "
                         f"outputs with a sequence axis come back with n positions. More than {lengths['max']} "
                         f"tokens: truncate to {lengths['max']}.")
        else:
            notes.append(f"Sequence length comes in buckets {lengths['buckets']} (one signature each, shared "
                         f"weights): pad {seq} to the smallest bucket that holds the real length n (attention_mask 0 "
                         f"on the padding), call that bucket's signature, and read the first n positions.")
    if runtime is Runtime.LITERT:
        notes.append("LiteRT Maven and pip releases share their version (tag vX.Y.Z); if Google Maven lacks "
                     "this exact patch, use the newest X.Y.* there.")
    return notes


# ------------------------------------------------------------------------------------------ Kotlin


def _lengths(art: dict) -> dict | None:
    """The artifact's ``lengths`` entry when its sequence length varies, else None (static shapes)."""
    lengths = art.get("lengths")
    return lengths if isinstance(lengths, dict) and lengths.get("mode") in ("dynamic", "buckets") else None


def _fill_comment(art: dict) -> str:
    lengths = _lengths(art)
    if lengths and lengths["mode"] == "dynamic":
        return "\n".join(["// Inputs: your tokenizer's ids at their real length n, unpadded", *_n_line(art, "val")])
    return "// Inputs: fill these with your tokenizer's ids (row-major, padded to the fixed shape)"


def _n_line(art: dict, keyword: str) -> list[str]:
    """``val n = ...`` (Kotlin) / ``let n = ...`` (Swift) for a dynamic sequence axis, written ``n`` in the shapes."""
    lengths = _lengths(art)
    if not lengths or lengths["mode"] != "dynamic":
        return []
    return [f"{keyword} n = tokenCount  // real tokens, {lengths['min']}..{lengths['max']} (truncate longer input)"]


def _dims(spec: dict) -> str:
    """The shape as code: a dynamic (-1) axis is ``n``."""
    return ", ".join("n" if d < 0 else str(d) for d in _shape(spec))


def _count(spec: dict) -> str:
    """The element count as code: ``n`` times the fixed dimensions when an axis is dynamic."""
    fixed = _numel(spec)
    if all(d >= 0 for d in _shape(spec)):
        return str(fixed)
    return "n" if fixed == 1 else f"{fixed} * n"


def _kotlin_ort(art: dict, threads: int, spinning: bool | None = None) -> str:
    lm = art.get("lm")
    buffers = {"FloatBuffer", "LongBuffer"} if lm else {
        kt[2] for kt in (_kt(s["dtype"]) for s in art["inputs"]) if kt and kt[2]}
    lines = ["import ai.onnxruntime.OnnxTensor", "import ai.onnxruntime.OrtEnvironment",
             "import ai.onnxruntime.OrtSession", *(f"import java.nio.{b}" for b in sorted(buffers)), "",
             "val env = OrtEnvironment.getEnvironment()",
             (f"val options = OrtSession.SessionOptions().apply {{ setIntraOpNumThreads({threads}) }}"
              if _spin_value(spinning) is None else
              f"val options = OrtSession.SessionOptions().apply {{\n    setIntraOpNumThreads({threads})\n"
              f"    addConfigEntry(\"session.intra_op.allow_spinning\", \"{_spin_value(spinning)}\")  "
              "// the profile's compute.spinning\n}"),
             f"val session = env.createSession(context.assets.open(\"{art['file']}\").readBytes(), options)"]
    if lm:
        return "\n".join(lines + ["", *_kotlin_ort_lm(art, lm)])
    lines += ["", _fill_comment(art)]
    feeds = []
    for spec, kt in _mapped(art["inputs"], _KOTLIN, lines, usable=lambda kt: kt[2] is not None):
        var = _camel(spec["name"])
        lines.append(f"val {var} = {kt[1]}({_count(spec)})  // {_io_comment(spec)}")
        shape = _dims(spec)
        feeds.append(f"    \"{spec['name']}\" to OnnxTensor.createTensor(env, {kt[2]}.wrap({var}), "
                     f"longArrayOf({shape})),")
    lines += ["val feeds = mapOf(", *feeds, ")", "session.run(feeds).use { result ->"]
    for spec, kt in _mapped(art["outputs"], _KOTLIN, lines, usable=lambda kt: kt[2] is not None, indent="    "):
        lines.append(f"    val {_camel(spec['name'])} = (result.get(\"{spec['name']}\").get() as OnnxTensor)"
                     f".{kt[2][0].lower() + kt[2][1:]}  // {_io_comment(spec)}")
    lines += ["}", "feeds.values.forEach { it.close() }"]
    return "\n".join(lines)


def _kotlin_ort_lm(art: dict, lm: dict) -> list[str]:
    ids, mask = lm.get("input_ids", "input_ids"), lm.get("attention_mask")
    past, present = list(lm.get("past_inputs") or []), list(lm.get("present_outputs") or [])
    shape = f"longArrayOf(1, {lm.get('num_kv_heads')}, 0, {lm.get('head_dim')})"
    out = [f"// Decoder LM, explicit KV cache ({len(past)} tensors, context {lm.get('context_len')} tokens):",
           f"// feed \"{ids}\" [1, n]" + (f" and \"{mask}\" (ones) [1, position + n]" if mask else "")
           + ", past_key_values.* in, present.* out; keep the outputs as the next call's past.",
           "var past: Map<String, OnnxTensor> = listOf(" + ", ".join(f'"{p}"' for p in past[:2])
           + (", ..." if len(past) > 2 else "") + ")",
           f"    .associateWith {{ OnnxTensor.createTensor(env, FloatBuffer.allocate(0), {shape}) }}",
           "var position = 0",
           "fun step(tokens: LongArray): FloatArray {  // logits of the last token",
           "    val n = tokens.size",
           (f"    val feeds = mutableMapOf<String, OnnxTensor>(\"{ids}\" to "
           "OnnxTensor.createTensor(env, LongBuffer.wrap(tokens), longArrayOf(1, n.toLong())))")]
    if mask:
        out.append(f"    feeds[\"{mask}\"] = OnnxTensor.createTensor(env, LongBuffer.wrap(LongArray(position + n) "
                   "{ 1L }), longArrayOf(1, (position + n).toLong()))")
    pairs = ", ".join(f'"{p}" to "{q}"' for p, q in list(zip(past, present))[:2]) + (", ..." if len(past) > 2 else "")
    out += ["    feeds.putAll(past)",
            "    val result = session.run(feeds)",
            f"    past = mapOf({pairs}).mapValues {{ result.get(it.value).get() as OnnxTensor }}",
            "    position += n",
            f"    val logits = (result.get(\"{lm.get('logits', 'logits')}\").get() as OnnxTensor).floatBuffer",
            f"    return FloatArray({lm.get('vocab_size')}) {{ logits.get((n - 1) * {lm.get('vocab_size')} + it) }}",
            "}",
            "// prefill: var logits = step(promptIds); then decode one token at a time:",
            "// repeat(maxNew) { val next = argmax(logits); logits = step(longArrayOf(next)) }"]
    return out


def _kotlin_et(art: dict, threads: int) -> str:
    lines = ["import org.pytorch.executorch.EValue", "import org.pytorch.executorch.Module",
             "import org.pytorch.executorch.Tensor", "import java.io.File", "",
             "// Module.load takes a file path: copy the asset to filesDir once",
             f"val pte = File(context.filesDir, \"{art['file']}\").apply {{",
             (f"    if (!exists()) context.assets.open(\"{art['file']}\").use {{ input -> outputStream().use "
             "{ input.copyTo(it) } }"),
             "}",
             f"val module = Module.load(pte.absolutePath, Module.LOAD_MODE_MMAP, {threads})  // {threads} threads"]
    lm = art.get("lm")
    if lm:
        method = lm.get("method", "forward")
        pad = "" if lm.get("dynamic_prefill", True) else f" (pad every call to {lm.get('prompt_len')} tokens)"
        lines += ["", (f"// Decoder LM, KV cache inside the program (context {lm.get('context_len')} tokens): "
                  f"call \"{method}\" with the new tokens and their positions{pad}"),
                  "var position = 0L",
                  "fun step(tokens: LongArray): FloatArray {  // logits [1, n, vocab] -> the last token's",
                  "    val n = tokens.size",
                  "    val positions = LongArray(n) { position + it }",
                  (f"    val out = module.execute(\"{method}\", EValue.from(Tensor.fromBlob(tokens, longArrayOf(1, "
                  "n.toLong()))),"),
                  "        EValue.from(Tensor.fromBlob(positions, longArrayOf(n.toLong()))))",
                  "    position += n",
                  "    val logits = out[0].toTensor().dataAsFloatArray",
                  f"    return logits.copyOfRange((n - 1) * {lm.get('vocab_size')}, n * {lm.get('vocab_size')})",
                  "}",
                  "// prefill: var logits = step(promptIds); decode: logits = step(longArrayOf(argmax(logits)))"]
        return "\n".join(lines)
    lines += ["", "// Inputs, in this order (a .pte has no input names): fill with your tokenizer's ids",
              *_n_line(art, "val")]
    args = []
    for spec, kt in _mapped(art["inputs"], _KOTLIN, lines, usable=lambda kt: kt[0] != "Boolean"):
        var = _camel(spec["name"])
        shape = _dims(spec)
        lines.append(f"val {var} = Tensor.fromBlob({kt[1]}({_count(spec)}), longArrayOf({shape}))  "
                     f"// {_io_comment(spec)}")
        args.append(f"EValue.from({var})")
    lines.append(f"val outputs = module.forward({', '.join(args)})")
    for spec, kt in _mapped(art["outputs"], _KOTLIN, lines, usable=lambda kt: kt[0] != "Boolean"):
        i = art["outputs"].index(spec)  # a .pte's outputs are positional
        lines.append(f"val {_camel(spec['name'])} = outputs[{i}].toTensor().dataAs{kt[0]}Array  "
                     f"// {_io_comment(spec)}")
    return "\n".join(lines)


def _litert_buckets(art: dict) -> dict | None:
    """The artifact's ``lengths`` entry when it is a LiteRT model with one signature per length bucket."""
    lengths = _lengths(art)
    return lengths if lengths and lengths["mode"] == "buckets" and lengths.get("signatures") else None


def _bucket_pairs(lengths: dict) -> list[tuple[int, str]]:
    return [(int(b), str(lengths["signatures"][str(b)])) for b in lengths["buckets"]]


def _kotlin_litert(art: dict, threads: int) -> str:
    lm = art.get("lm")
    if lm:
        return _kotlin_litert_lm(art, lm, threads)
    ins, outs = art["inputs"], art["outputs"]
    buckets = _litert_buckets(art)
    seq_in = set(buckets.get("inputs") or ()) if buckets else set()
    seq_out = set(buckets.get("outputs") or ()) if buckets else set()
    sig = "signature" if buckets else f"\"{LITERT_SIGNATURE}\""

    def fed(spec: dict) -> str:  # an input as fed: cut to the chosen bucket when it has the sequence axis
        var = _camel(spec["name"])
        return f"{var}.copyOf(bucket)" if spec["name"] in seq_in else var
    lines = ["import com.google.ai.edge.litert.Accelerator", "import com.google.ai.edge.litert.CompiledModel",
             "import org.tensorflow.lite.Interpreter", "import java.nio.ByteBuffer", "import java.nio.ByteOrder",
             "import java.nio.channels.FileChannel", "",
             "// 1) Interpreter API (org.tensorflow.lite, CPU), through the model's signature",
             f"val fd = context.assets.openFd(\"{art['file']}\")",
             ("val mapped = fd.createInputStream().channel.map(FileChannel.MapMode.READ_ONLY, fd.startOffset, "
             "fd.declaredLength)"),
             f"val interpreter = Interpreter(mapped, Interpreter.Options().setNumThreads({threads}))"]
    if buckets:
        pairs = ", ".join(f"{b} to \"{name}\"" for b, name in _bucket_pairs(buckets))
        lines += [f"// Length buckets {buckets['buckets']}: one signature each, shared weights. Fill the first n "
                  "positions of the arrays below",
                  "// (sized for the largest bucket), run the smallest bucket that holds n, read the first n "
                  "positions back.",
                  f"val n = tokenCount  // real tokens, 1..{buckets['max']} (truncate longer input)",
                  f"val buckets = listOf({pairs})  // (length, signature), shortest first",
                  "val (bucket, signature) = buckets.first { it.first >= n }"]
    feeds, outputs = [], []
    for spec, kt in _mapped(ins, _KOTLIN, lines):
        lines.append(f"val {_camel(spec['name'])} = {kt[1]}({_numel(spec)})  // {_io_comment(spec)}")
        feeds.append(f"    \"{spec['name']}\" to {_nested(spec, fed(spec))},")
    for spec, kt in _mapped(outs, _KOTLIN, lines):
        size = _numel(spec) * {"Long": 8, "Int": 4, "Float": 4, "Byte": 1, "Boolean": 1}[kt[0]]
        if spec["name"] in seq_out:  # per token: the chosen bucket's positions
            size = f"{size // int(buckets['max'])} * bucket"
        var = _camel(spec["name"]) + "Out"
        lines.append(f"val {var} = ByteBuffer.allocateDirect({size}).order(ByteOrder.nativeOrder())"
                     f"  // {_io_comment(spec)}")
        outputs.append(f"    \"{spec['name']}\" to {var},")
    lines += ["val inputs = mapOf<String, Any>(", *feeds, ")", "val outputs = mutableMapOf<String, Any>(",
              *outputs, ")", f"interpreter.runSignature(inputs, outputs, {sig})"]
    for spec in outs:
        kt = _kt(spec["dtype"])
        if kt and kt[2]:
            lines.append(f"val {_camel(spec['name'])} = {_camel(spec['name'])}Out.rewind().let {{ "
                         f"(it as ByteBuffer).as{kt[2]}() }}")
    lines += ["", "// 2) CompiledModel API (com.google.ai.edge.litert, CPU/GPU/NPU), buffers by signature name",
              "val options = CompiledModel.Options(Accelerator.CPU).apply {",
              f"    cpuOptions = CompiledModel.CpuOptions(numThreads = {threads})", "}",
              f"val model = CompiledModel.create(context.assets, \"{art['file']}\", options)"]
    runs_in, runs_out = [], []
    for spec in ins:
        kt = _kt(spec["dtype"])
        if kt is None:
            continue
        lines.append(f"val {_camel(spec['name'])}Buffer = model.createInputBuffer(\"{spec['name']}\", "
                     f"{sig}).apply {{ write{kt[3]}({fed(spec)}) }}")
        runs_in.append(f"\"{spec['name']}\" to {_camel(spec['name'])}Buffer")
    for spec in outs:
        if _kt(spec["dtype"]) is None:
            continue
        runs_out.append(f"\"{spec['name']}\" to model.createOutputBuffer(\"{spec['name']}\", {sig})")
    lines += ["val outBuffers = mapOf(" + ", ".join(runs_out) + ")",
              "model.run(mapOf(" + ", ".join(runs_in) + f"), outBuffers, {sig})"]
    for spec in outs:
        kt = _kt(spec["dtype"])
        if kt:
            lines.append(f"val {_camel(spec['name'])}Values = outBuffers.getValue(\"{spec['name']}\")"
                         f".read{kt[3]}()  // {_io_comment(spec)}")
    return "\n".join(lines)


def _nested(spec: dict, var: str) -> str:
    """A flat Kotlin array as the Interpreter expects it: reshaped to [1, n] only for rank-2 batch-1 inputs."""
    shape = _shape(spec)
    if len(shape) == 2 and shape[0] == 1:
        return f"arrayOf({var})"
    return var


def _kotlin_litert_lm(art: dict, lm: dict, threads: int) -> str:
    sig, names = lm.get("signatures") or {}, lm.get("tensors") or {}
    specs = {s["name"]: s for s in art["inputs"]}
    cache = [c for c in lm.get("cache_tensors") or [] if c in specs]
    ctx, prompt, vocab = lm.get("context_len"), lm.get("prompt_len"), lm.get("vocab_size")
    size = {"int32": 4, "int64": 8, "float32": 4}

    def put(name: str) -> tuple[int, str]:
        dtype = specs.get(name, {}).get("dtype", "int32")
        return size.get(dtype, 4), "putLong(%s.toLong())" if dtype == "int64" else "putInt(%s)"

    tok_bytes, tok_put = put(names.get("tokens"))
    pos_bytes, pos_put = put(names.get("input_pos"))
    cache_sizes = ", ".join(f'"{c}" to {_numel(specs[c]) * size.get(specs[c]["dtype"], 4)}' for c in cache)
    return "\n".join([
        "import org.tensorflow.lite.Interpreter", "import java.nio.ByteBuffer", "import java.nio.ByteOrder", "",
        f"// {art['file']} memory-mapped from assets (assets.openFd(...).createInputStream().channel.map(...))",
        f"val interpreter = Interpreter(mapped, Interpreter.Options().setNumThreads({threads}))",
        "fun direct(bytes: Int): ByteBuffer = ByteBuffer.allocateDirect(bytes).order(ByteOrder.nativeOrder())",
        f"// Decoder LM, explicit KV cache as signature inputs/outputs (context {ctx} tokens): bytes per tensor",
        f"val cacheBytes = mapOf({cache_sizes})",
        "var cache = cacheBytes.mapValues { direct(it.value) }  // zeros: an empty cache",
        "var position = 0",
        f"fun step(ids: IntArray): FloatArray {{  // prefill: up to {prompt} ids (padded); decode: 1 id",
        f"    val length = if (ids.size == 1) 1 else {prompt}",
        f"    val signature = if (length == 1) \"{sig.get('decode')}\" else \"{sig.get('prefill')}\"",
        f"    val tokens = direct(length * {tok_bytes}).apply {{ ids.forEach {{ {tok_put % 'it'} }}; rewind() }}",
        (f"    val positions = direct(length * {pos_bytes}).apply {{ repeat(length) {{ {pos_put % '(position + it)'} }}; "
        "rewind() }"),
        f"    val mask = direct(length * {ctx} * 4).apply {{  // float32 [1, 1, length, {ctx}]: slot <= position only",
        (f"        for (i in 0 until length) for (slot in 0 until {ctx}) putFloat(if (slot <= position + i) 0f else "
        "-3.4028235e38f)"),
        "        rewind()",
        "    }",
        f"    val logits = direct(length * {vocab} * 4)",
        "    val next = cacheBytes.mapValues { direct(it.value) }",
        (f"    val inputs = mapOf<String, Any>(\"{names.get('tokens')}\" to tokens, \"{names.get('input_pos')}\" to "
        f"positions, \"{names.get('mask')}\" to mask) + cache"),
        (f"    interpreter.runSignature(inputs, mapOf<String, Any>(\"{names.get('logits')}\" to logits) + next, "
        "signature)"),
        "    cache = next.onEach { it.value.rewind() }",
        "    position += ids.size",
        "    val all = logits.rewind().let { (it as ByteBuffer).asFloatBuffer() }",
        f"    return FloatArray({vocab}) {{ all.get((ids.size - 1) * {vocab} + it) }}  // the last real token's logits",
        "}",
        "// prefill: var logits = step(promptIds); decode: logits = step(intArrayOf(argmax(logits)))",
    ])


# ------------------------------------------------------------------------------------------ Swift


def _swift_ort(art: dict, threads: int, spinning: bool | None = None) -> str:
    lines = ["import onnxruntime_objc", "",
             "let env = try ORTEnv(loggingLevel: .warning)",
             "let options = try ORTSessionOptions()",
             f"try options.setIntraOpNumThreads({threads})", *_swift_spin(spinning),
             (f"let path = Bundle.main.path(forResource: \"{art['file'].rsplit('.', 1)[0]}\", "
             f"ofType: \"{art['file'].rsplit('.', 1)[-1]}\")!"),
             "let session = try ORTSession(env: env, modelPath: path, sessionOptions: options)"]
    feeds = []
    lines += _n_line(art, "let")
    for spec, sw in _mapped(art["inputs"], _SWIFT, lines):
        var = _camel(spec["name"])
        shape = _dims(spec).replace("n", "n as NSNumber")  # ORTValue takes [NSNumber]
        lines += [f"var {var} = [{sw[0]}](repeating: 0, count: {_count(spec)})  // {_io_comment(spec)}",
                  (f"let {var}Value = try ORTValue(tensorData: NSMutableData(bytes: &{var}, length: "
                  f"{var}.count * MemoryLayout<{sw[0]}>.size), elementType: {sw[1]}, shape: [{shape}])")]
        feeds.append(f"\"{spec['name']}\": {var}Value")
    names = ", ".join(f'"{s["name"]}"' for s in art["outputs"])
    lines.append(f"let outputs = try session.run(withInputs: [{', '.join(feeds)}], outputNames: [{names}], "
                 "runOptions: nil)")
    for spec in art["outputs"][:1]:
        lines.append(f"let {_camel(spec['name'])} = try outputs[\"{spec['name']}\"]!.tensorData()  "
                     f"// {_io_comment(spec)}")
    return "\n".join(lines)


def _swift_et(art: dict, threads: int) -> str:
    lines = ["import ExecuTorch", "",
             f"let path = Bundle.main.path(forResource: \"{art['file'].rsplit('.', 1)[0]}\", ofType: \"pte\")!",
             "let module = Module(filePath: path)",
             "try module.load(\"forward\")"]
    args = []
    lines += _n_line(art, "let")
    for spec, sw in _mapped(art["inputs"], _SWIFT, lines):
        var = _camel(spec["name"])
        shape = _dims(spec)
        lines.append(f"let {var} = Tensor<{sw[0]}>([{sw[0]}](repeating: 0, count: {_count(spec)}), "
                     f"shape: [{shape}])  // {_io_comment(spec)}")
        args.append(var)
    lines.append(f"let outputs = try module.forward([{', '.join(args)}])")
    for i, spec in enumerate(art["outputs"][:1]):
        sw = _SWIFT.get(str(spec["dtype"]))
        if sw:
            lines.append(f"let {_camel(spec['name'])}: Tensor<{sw[0]}> = outputs[{i}].tensor()!  "
                         f"// {_io_comment(spec)}; .scalars() gives [{sw[0]}]")
    return "\n".join(lines)


def _swift_litert(art: dict, threads: int) -> str:
    lines = ["import TensorFlowLite", "",
             f"let path = Bundle.main.path(forResource: \"{art['file'].rsplit('.', 1)[0]}\", ofType: \"tflite\")!",
             "var options = Interpreter.Options()", f"options.threadCount = {threads}",
             "let interpreter = try Interpreter(modelPath: path, options: options)"]
    buckets = _litert_buckets(art)
    seq_in = set(buckets.get("inputs") or ()) if buckets else set()
    if buckets:
        pairs = ", ".join(f"({b}, \"{name}\")" for b, name in _bucket_pairs(buckets))
        lines += [f"// Length buckets {buckets['buckets']}: one signature each, shared weights. Fill the first n "
                  "positions, run the smallest bucket that holds n.",
                  f"let n = tokenCount  // real tokens, 1..{buckets['max']} (truncate longer input)",
                  f"let buckets = [{pairs}]  // (length, signature), shortest first",
                  "let (bucket, signature) = buckets.first { $0.0 >= n }!",
                  "let runner = try interpreter.signatureRunner(with: signature)"]
    else:
        lines.append(f"let runner = try interpreter.signatureRunner(with: \"{LITERT_SIGNATURE}\")")
    feeds = []
    for spec, sw in _mapped(art["inputs"], _SWIFT, lines):
        var = _camel(spec["name"])
        lines.append(f"let {var} = [{sw[0]}](repeating: 0, count: {_numel(spec)})  // {_io_comment(spec)}")
        fed = f"Array({var}.prefix(bucket))" if spec["name"] in seq_in else var
        feeds.append(f"\"{spec['name']}\": {fed}.withUnsafeBufferPointer {{ Data(buffer: $0) }}")
    lines.append(f"try runner.invoke(with: [{', '.join(feeds)}])")
    for spec in art["outputs"][:1]:
        lines.append(f"let {_camel(spec['name'])} = try runner.output(named: \"{spec['name']}\").data  "
                     f"// {_io_comment(spec)}")
    return "\n".join(lines)


def _swift_spin(spinning: bool | None) -> list[str]:
    value = _spin_value(spinning)
    return [] if value is None else [f"try options.addConfigEntry(withKey: \"session.intra_op.allow_spinning\", "
                                     f"value: \"{value}\")  // the profile's compute.spinning"]


def _swift_lm(runtime: Runtime, art: dict, threads: int, spinning: bool | None = None) -> str:
    """The first (prefill) call of a decoder LM on iOS; decode repeats it with one token."""
    lm = art["lm"]
    base, ext = art["file"].rsplit(".", 1)
    path = f"let path = Bundle.main.path(forResource: \"{base}\", ofType: \"{ext}\")!"
    if runtime is Runtime.EXECUTORCH:
        method = lm.get("method", "forward")
        return "\n".join([
            "import ExecuTorch", "", path, "let module = Module(filePath: path)", f"try module.load(\"{method}\")",
            "let prompt: [Int64] = [/* token ids from your tokenizer */]",
            "var position: Int64 = 0",
            "func step(_ ids: [Int64]) throws -> [Float] {  // logits [1, n, vocab] of the new tokens",
            "    let positions = (0..<Int64(ids.count)).map { position + $0 }",
            f"    let outputs = try module.execute(\"{method}\", [Tensor<Int64>(ids, shape: [1, ids.count]),",
            "                                                 Tensor<Int64>(positions, shape: [ids.count])])",
            "    position += Int64(ids.count)",
            "    let logits: Tensor<Float> = outputs[0].tensor()!",
            "    return logits.scalars()",
            "}",
            f"// prefill: step(prompt); decode: step([argmax of the last {lm.get('vocab_size')} logits])",
        ])
    if runtime is Runtime.ONNXRUNTIME:
        past, present = list(lm.get("past_inputs") or []), list(lm.get("present_outputs") or [])
        mask = lm.get("attention_mask")
        lines = ["import onnxruntime_objc", "", "let env = try ORTEnv(loggingLevel: .warning)",
                 "let options = try ORTSessionOptions()", f"try options.setIntraOpNumThreads({threads})",
                 *_swift_spin(spinning), path,
                 "let session = try ORTSession(env: env, modelPath: path, sessionOptions: options)",
                 ("func int64s(_ v: [Int64]) -> NSMutableData { var v = v; return NSMutableData(bytes: &v, "
                 "length: v.count * 8) }"),
                 f"let pastNames = {_swift_list(past)}",
                 f"let presentNames = {_swift_list(present)}",
                 "// the cache starts empty: shape [1, kv_heads, 0, head_dim]",
                 (f"var past = try pastNames.map {{ _ in try ORTValue(tensorData: NSMutableData(), elementType: "
                 f".float, shape: [1, {lm.get('num_kv_heads')}, 0, {lm.get('head_dim')}]) }}"),
                 "var position = 0",
                 "func step(_ ids: [Int64]) throws -> NSMutableData {  // logits [1, n, vocab]",
                 (f"    var feeds = [\"{lm.get('input_ids', 'input_ids')}\": try ORTValue(tensorData: int64s(ids), "
                 "elementType: .int64, shape: [1, NSNumber(value: ids.count)])]")]
        if mask:
            lines.append(f"    feeds[\"{mask}\"] = try ORTValue(tensorData: int64s([Int64](repeating: 1, count: "
                         "position + ids.count)), elementType: .int64, shape: [1, NSNumber(value: position + "
                         "ids.count)])")
        lines += ["    for (name, value) in zip(pastNames, past) { feeds[name] = value }",
                  (f"    let out = try session.run(withInputs: feeds, outputNames: Set([\"{lm.get('logits', 'logits')}\"] "
                  "+ presentNames), runOptions: nil)"),
                  "    past = presentNames.map { out[$0]! }",
                  "    position += ids.count",
                  f"    return try out[\"{lm.get('logits', 'logits')}\"]!.tensorData()",
                  "}",
                  "// prefill: step(promptIds); decode: step([argmax of the last token's logits])"]
        return "\n".join(lines)
    sig, names = lm.get("signatures") or {}, lm.get("tensors") or {}
    return "\n".join([
        "import TensorFlowLite", "", path, "var options = Interpreter.Options()", f"options.threadCount = {threads}",
        "let interpreter = try Interpreter(modelPath: path, options: options)",
        (f"let prefill = try interpreter.signatureRunner(with: \"{sig.get('prefill')}\")  "
        f"// exactly {lm.get('prompt_len')} tokens (pad)"),
        f"let decode = try interpreter.signatureRunner(with: \"{sig.get('decode')}\")  // 1 token",
        (f"// each call: \"{names.get('tokens')}\", \"{names.get('input_pos')}\", \"{names.get('mask')}\" and every cache "
        "tensor in; logits and the same-named cache tensors out (feed them to the next call)."),
        "// runner/litert/backend.py (LiteRTLMSession) is the reference loop.",
    ])


def _swift_list(names: list[str]) -> str:
    return "[" + ", ".join(f'"{n}"' for n in names) + "]"


# ------------------------------------------------------------------------------------------ Python


_NP = {"int64": "np.int64", "int32": "np.int32", "float32": "np.float32", "int8": "np.int8", "uint8": "np.uint8",
       "bool": "np.bool_", "float16": "np.float16"}

_PY_HEAD = '''import numpy as np

samples = np.load("inputs.npz")  # input.<name> and expected.<name>: [samples, *shape]


def host(name):
    """The host's outputs of this artifact (a bundle with several artifacts keys them by file)."""
    key = "expected.{file}." + name
    return samples[key if key in samples.files else "expected." + name][0]


'''


def _python(runtime: Runtime, art: dict, threads: int, providers: list[str] | None = None,
            spinning: bool | None = None) -> str:
    feeds = []
    for spec in art["inputs"]:
        np_dtype = _NP.get(str(spec["dtype"]))
        cast = f".astype({np_dtype})" if np_dtype else f"  # dtype {spec['dtype']}: cast it as the runtime expects"
        feeds.append(f"    \"{spec['name']}\": samples[\"input.{spec['name']}\"][0]{cast},  # {_io_comment(spec)}")
    names = [s["name"] for s in art["outputs"]]
    text = _PY_HEAD.replace("{file}", art["file"]) + "feeds = {\n" + "\n".join(feeds) + "\n}\n"
    lengths = _lengths(art)
    if lengths and runtime is not Runtime.LITERT:  # LiteRT buckets: padded to its one signature below
        seq = tuple(lengths.get("inputs") or ())
        text += (f"n = int(np.nonzero(feeds[\"{lengths['mask']}\"][0])[0][-1]) + 1  # real tokens: drop the padding\n"
                 f"feeds = {{k: v[:, :max(n, {lengths['min']})] if k in {seq!r} else v for k, v in feeds.items()}}"
                 "  # dynamic length\n")
    buckets = _litert_buckets(art) if runtime is Runtime.LITERT else None
    if buckets:
        seq = tuple(buckets.get("inputs") or ())
        text += (f"n = int(np.nonzero(feeds[\"{buckets['mask']}\"][0])[0][-1]) + 1  # real tokens: drop the padding\n"
                 f"bucket = min(b for b in {list(buckets['buckets'])!r} if b >= n)  # the smallest length bucket "
                 "that holds n\n"
                 f"feeds = {{k: v[:, :bucket] if k in {seq!r} else v for k, v in feeds.items()}}\n")
    text += python_run(runtime, art, threads, providers, spinning=spinning)
    if buckets:
        seq_out = tuple(buckets.get("outputs") or ())
        text += (f"diff = max(float(np.max(np.abs((outputs[k][:, :n] if k in {seq_out!r} else outputs[k]) - "
                 f"(host(k, trimmed=True)[:, :n] if k in {seq_out!r} else host(k, trimmed=True))))) "
                 f"for k in {names!r})\n"
                 "print(f\"max abs diff vs host: {diff:.3g}\")\n")
        return text.replace(_PY_HOST.replace("{file}", art["file"]), _PY_HOST_TRIMMED.replace("{file}", art["file"]))
    if lengths and runtime is not Runtime.LITERT:
        seq_out = tuple(lengths.get("outputs") or ())
        text += (f"diff = max(float(np.max(np.abs(outputs[k] - (host(k, trimmed=True)[:, :n] if k in {seq_out!r} "
                 f"else host(k, trimmed=True))))) for k in {names!r})\n"
                 "print(f\"max abs diff vs host: {diff:.3g}\")\n")
        return text.replace(_PY_HOST.replace("{file}", art["file"]), _PY_HOST_TRIMMED.replace("{file}", art["file"]))
    text += (f"diff = max(float(np.max(np.abs(outputs[n] - host(n)))) for n in {names!r})\n"
             "print(f\"max abs diff vs host: {diff:.3g}\")\n")
    return text


_ORT_PROVIDERS = {"tensorrt": "TensorrtExecutionProvider", "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


def ort_providers(targets: list[str] | None) -> list[str] | None:
    """onnxruntime's provider names for a profile's execution targets, the CPU last (None: the CPU only)."""
    if not targets or list(targets) == ["cpu"]:
        return None
    names = [_ORT_PROVIDERS[t] for t in targets if t in _ORT_PROVIDERS and t != "cpu"]
    return [*names, "CPUExecutionProvider"]


def _py_spin(spinning: bool | None) -> str:
    value = _spin_value(spinning)
    return "" if value is None else (f"options.add_session_config_entry(\"session.intra_op.allow_spinning\", "
                                     f"\"{value}\")  # the profile's compute.spinning\n")


def python_run(runtime: Runtime, art: dict, threads: int, providers: list[str] | None = None,
               spinning: bool | None = None) -> str:
    """Python lines that run ``art`` on a ``feeds`` dict (input name -> array, in manifest order) and leave the
    results in ``outputs`` (output name -> array); imports are hoisted by ``_hoist_imports``."""
    names = [s["name"] for s in art["outputs"]]
    if runtime is Runtime.ONNXRUNTIME:
        return ("import onnxruntime as ort\n\n"
                f"options = ort.SessionOptions()\noptions.intra_op_num_threads = {threads}\n" + _py_spin(spinning) +
                f"session = ort.InferenceSession(\"{art['file']}\", options, providers={json.dumps(providers or ['CPUExecutionProvider'])})\n"
                f"names = {names!r}\n"
                "outputs = dict(zip(names, session.run(names, feeds)))\n")
    if runtime is Runtime.EXECUTORCH:
        return ("import executorch.kernels.quantized  # noqa: F401  registers the int8 kernels\n"
                "import torch\nfrom executorch.runtime import Runtime\n\n"
                f"method = Runtime.get().load_program(\"{art['file']}\").load_method(\"forward\")\n"
                "values = method.execute([torch.from_numpy(v) for v in feeds.values()])  # in manifest order\n"
                f"outputs = dict(zip({names!r}, (v.numpy() for v in values)))\n")
    buckets = _litert_buckets(art)
    if buckets:  # one signature per length bucket: the one whose length is the feeds'
        seq = (buckets.get("inputs") or [""])[0]
        pick = (f"signatures = {dict(_bucket_pairs(buckets))!r}  # bucket length -> signature\n"
                f"signature = signatures[min(b for b in signatures if b >= feeds[\"{seq}\"].shape[1])]\n"
                "runner = interpreter.get_signature_runner(signature)\n")
    else:
        pick = f"runner = interpreter.get_signature_runner(\"{LITERT_SIGNATURE}\")\n"
    return ("from ai_edge_litert.interpreter import Interpreter\n\n"
            f"interpreter = Interpreter(model_path=\"{art['file']}\", num_threads={threads})\n"
            + pick + "outputs = runner(**feeds)\n")


_PY_HOST = '''def host(name):
    """The host's outputs of this artifact (a bundle with several artifacts keys them by file)."""
    key = "expected.{file}." + name
    return samples[key if key in samples.files else "expected." + name][0]
'''
_PY_HOST_TRIMMED = '''def host(name, trimmed=False):
    """The host's outputs of this artifact (a bundle with several artifacts keys them by file); ``trimmed``: at
    the samples' real lengths (trimmed.*, zero-padded to the stored length)."""
    kind = "trimmed" if trimmed else "expected"
    key = kind + ".{file}." + name
    return samples[key if key in samples.files else kind + "." + name][0]
'''


def _python_lm(runtime: Runtime, art: dict, threads: int, providers: list[str] | None = None,
               spinning: bool | None = None) -> str:
    """Greedy generation from the first stored prompt, compared token by token with the host's."""
    lm = art["lm"]
    head = ("import numpy as np\n\n"
            "samples = np.load(\"inputs.npz\")  # lm.prompts [k, prompt_len], expected.tokens [k, new_tokens]\n"
            f"key = \"expected.{art['file']}.tokens\"\n"
            "host = samples[key if key in samples.files else \"expected.tokens\"][0]\n"
            "prompt = samples[\"lm.prompts\"][0].astype(np.int64)\n\n")
    if runtime is Runtime.ONNXRUNTIME:
        mask = lm.get("attention_mask")
        body = ("import onnxruntime as ort\n\n"
                f"options = ort.SessionOptions()\noptions.intra_op_num_threads = {threads}\n" + _py_spin(spinning) +
                f"session = ort.InferenceSession(\"{art['file']}\", options, providers={json.dumps(providers or ['CPUExecutionProvider'])})\n"
                f"past_names = {list(lm['past_inputs'])!r}\n"
                f"outputs = [{lm.get('logits', 'logits')!r}] + {list(lm['present_outputs'])!r}\n"
                f"cache = [np.zeros((1, {lm['num_kv_heads']}, 0, {lm['head_dim']}), "
                f"np.{lm.get('cache_dtype', 'float32')})] * len(past_names)\n"
                "position = 0\n\n\n"
                "def step(ids):\n"
                "    \"\"\"The last token's logits; the cache grows by len(ids).\"\"\"\n"
                "    global cache, position\n"
                f"    feeds = {{{lm.get('input_ids', 'input_ids')!r}: ids[None, :]}}\n"
                + (f"    feeds[{mask!r}] = np.ones((1, position + len(ids)), np.int64)\n" if mask else "")
                + "    feeds.update(zip(past_names, cache))\n"
                "    logits, *cache = session.run(outputs, feeds)\n"
                "    position += len(ids)\n"
                "    return logits[0, -1]\n\n\n")
    elif runtime is Runtime.EXECUTORCH:
        body = ("import executorch.kernels.quantized  # noqa: F401\nimport torch\n"
                + ("import executorch.extension.llm.custom_ops.custom_ops  # noqa: F401\n" if lm.get("custom_ops")
                   else "")
                + "from executorch.runtime import Runtime\n\n"
                f"method = Runtime.get().load_program(\"{art['file']}\").load_method({lm.get('method', 'forward')!r})\n"
                "position = 0\n\n\n"
                "def step(ids):\n"
                "    \"\"\"The last token's logits; the program's cache takes ids at positions position...\"\"\"\n"
                "    global position\n"
                "    n = len(ids)\n"
                + ("" if lm.get("dynamic_prefill", True) else
                   f"    ids = np.pad(ids, (0, {lm['prompt_len']} - n))  # a fixed-length method\n")
                + "    positions = torch.arange(position, position + len(ids), dtype=torch.int64)\n"
                "    logits = method.execute([torch.from_numpy(ids).reshape(1, -1), positions])[0].numpy()\n"
                "    position += n\n"
                "    return logits[0, n - 1]\n\n\n")
    else:
        names = lm["tensors"]
        body = ("from ai_edge_litert.interpreter import Interpreter\n\n"
                f"interpreter = Interpreter(model_path=\"{art['file']}\", num_threads={threads})\n"
                f"prefill = interpreter.get_signature_runner({lm['signatures']['prefill']!r})\n"
                f"decode = interpreter.get_signature_runner({lm['signatures']['decode']!r})\n"
                "details = decode.get_input_details()\n"
                f"cache = {{k: np.zeros(details[k][\"shape\"], details[k][\"dtype\"]) for k in "
                f"{list(lm['cache_tensors'])!r}}}\n"
                "position = 0\n\n\n"
                "def step(ids):\n"
                "    \"\"\"The last token's logits: prefill pads to its fixed length, one token goes to decode.\"\"\"\n"
                "    global position\n"
                f"    n, length = len(ids), (1 if len(ids) == 1 else {lm['prompt_len']})\n"
                "    runner = decode if length == 1 else prefill\n"
                "    tokens = np.zeros((1, length), np.int64)\n    tokens[0, :n] = ids\n"
                "    positions = position + np.arange(length)\n"
                f"    mask = np.where(np.arange({lm['context_len']})[None, :] <= positions[:, None], 0.0, "
                "-3.4028234663852886e38)\n"
                f"    feeds = {{{names['tokens']!r}: tokens, {names['input_pos']!r}: positions, "
                f"{names['mask']!r}: mask.reshape(1, 1, length, -1)}}\n"
                "    feeds = {k: v.astype(details[k][\"dtype\"]) for k, v in feeds.items()}\n"
                "    out = runner(**feeds, **cache)\n"
                "    cache.update({k: out[k] for k in cache})\n"
                "    position += n\n"
                f"    return out[{names['logits']!r}].reshape(length, -1)[n - 1]\n\n\n")
    tail = ("logits = step(prompt)  # prefill\n"
            "tokens = [int(np.argmax(logits))]\n"
            "while len(tokens) < len(host):  # greedy decode, one token per call\n"
            "    tokens.append(int(np.argmax(step(np.array([tokens[-1]], np.int64)))))\n"
            "same = int(np.sum(np.array(tokens) == host))\n"
            "print(f\"greedy tokens equal to the host's: {same}/{len(host)}\")\n")
    return head + body + tail


def _hoist_imports(text: str) -> str:
    """Top-level imports first (as a script is written), then the code, at most two blank lines in a row."""
    lines = text.split("\n")
    imports = [ln for ln in lines if ln.startswith(("import ", "from "))]
    body = [ln for ln in lines if not ln.startswith(("import ", "from "))]
    out = "\n".join(imports + [""] + body).strip("\n") + "\n"
    return re.sub(r"\n{4,}", "\n\n\n", out)
