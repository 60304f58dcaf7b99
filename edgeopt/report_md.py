"""Human-readable Markdown from manifests and plans: the plan table, a bundle's README.md and report.md.

(Not `edgeopt/report.py`: `edgeopt.report` is the public function, and a submodule of that name would replace it
on the package as soon as it was imported.)
"""

from __future__ import annotations

MB = 1024 * 1024


def plan_rows(plan_dict: dict) -> list[list[str]]:
    """The plan table as rows of strings: try order, candidate, size, delivery, RAM, latency, status, fidelity,
    reason. Delivery is "bundled" (fits model_storage_mb), "download" (fits only model_download_mb) or "-"."""
    rows = []
    order = 0
    for r in plan_dict["rows"]:
        c, est = r["candidate"], r.get("estimate") or {}
        fid = r.get("fidelity")
        tried = r["status"] != "rejected" or fid is not None or r.get("attempts")
        order += 1 if tried else 0
        rows.append([
            str(order) if tried else "-",
            f"{c['runtime']}/{c['precision']}" + _prune_suffix(c.get("prune")) + _targets_suffix(r.get("targets")),
            f"{est['artifact_bytes'] / MB:.1f}" if est else "-",
            r.get("delivery") or "-",
            f"{est['peak_ram_bytes'] / MB:.0f}" if est else "-",
            f"{est['latency_ms']:.1f}" if est else "-",
            r["status"],
            _fidelity_cell(fid),
            "; ".join(r.get("reasons", [])),
        ])
    return rows


def _fidelity_cell(fid: dict | None) -> str:
    """The cosine column: mean cosine; for decoder LMs perplexity ratio and KL."""
    if not fid:
        return "-"
    if fid.get("perplexity_ratio") is not None:
        return f"ppl x{fid['perplexity_ratio']:.3f} KL {fid['kl']:.3f}"
    return f"{fid['mean_cosine']:.4f}" if fid.get("mean_cosine") is not None else "-"


def _targets_suffix(targets: list | None) -> str:
    """`` on tensorrt,cuda`` for a row that executes on an accelerator; nothing for the CPU (or no target)."""
    return f" on {','.join(targets)}" if targets and targets != ["cpu"] else ""


def _prune_suffix(prune: dict | None) -> str:
    if not prune:
        return ""
    from edgeopt.planner.search import prune_tag
    from edgeopt.prune import PruneSpec

    return "+" + prune_tag(PruneSpec.from_dict(prune))


PLAN_HEADER = ["#", "candidate", "size MB", "delivery", "RAM MB", "est ms", "status", "cosine", "reason"]


def _fidelity_target(ctx: dict) -> str:
    if ctx.get("family") == "decoder" and (ctx.get("max_perplexity_ratio") or ctx.get("max_kl")):
        parts = [f"perplexity <= x{ctx['max_perplexity_ratio']:g}" if ctx.get("max_perplexity_ratio") else "",
                 f"KL <= {ctx['max_kl']:g} nats/token" if ctx.get("max_kl") else ""]
        return " and ".join(p for p in parts if p) + " on held-out text (prefill + decode through the KV cache)"
    return f"mean cosine >= {ctx['min_cosine']:g}"


def plan_explanation(plan_dict: dict, package_command: str | None = None) -> list[str]:
    """Lines under the plan table that say what was judged against what, and how to read the rows.

    ``package_command``: the ``edgeopt package`` line that builds this plan (the same --profile, --model,
    --format... as the plan was made with); default ``edgeopt package --profile <profile name>``.
    """
    ctx = plan_dict.get("context") or {}
    if not ctx:
        return []
    target = f"latency target {ctx['latency_ms']:g} ms" if ctx.get("latency_ms") else "no latency target"
    shape = f"batch {ctx['batch']}, seq {ctx['seq_len']}" + (
        f", KV cache for {ctx['context_len']} tokens" if ctx.get("context_len") and ctx.get("family") == "decoder" else "")
    source = (f"calibrated on the device ({ctx['calibrated']})" if ctx.get("calibrated") else
              "the profile's nominal compute x each runtime's measured efficiency, not yet calibrated on this "
              "device (edgeopt profiles calibrate fits them to bench results)")
    storage = f"storage <= {ctx['model_storage_mb']} MB"
    if ctx.get("model_download_mb"):
        storage += f" bundled in the app, or <= {ctx['model_download_mb']} MB downloaded after install"
    lines = [
        f"profile {plan_dict['profile']}: RAM <= {ctx['model_ram_mb']} MB, {storage}, "
        f"precisions {', '.join(ctx['precisions'])}, runtimes {', '.join(ctx['runtimes'])}; {target}; "
        f"fidelity: {_fidelity_target(ctx)} vs fp32.",
        f"estimates at {shape}, {ctx['threads']} threads: size = artifact file, RAM = peak resident memory of the "
        f"runtime's runner with the model loaded, est ms = p50 latency. Source: {source}.",
        "order (#): candidates that fit are built and verified top to bottom, least accuracy risk first "
        "(no pruning before pruning, shallow before deep; then fp32, fp16, int8, int4), then fastest estimate "
        "(within 10%: the profile's runtime order); the first whose artifact keeps the fidelity target in its real "
        "runtime is chosen. Pruned candidates (+prune:w<width kept>-<blocks dropped>b) appear only when nothing "
        "unpruned fits. Rejected rows give the reason.",
    ]
    if ctx.get("model_download_mb"):
        lines.append(f"delivery: bundled = the artifact fits model_storage_mb ({ctx['model_storage_mb']} MB) and ships "
                     f"inside the app; download = it fits only model_download_mb ({ctx['model_download_mb']} MB) and "
                     "the app fetches it after install (e.g. a Play Asset Delivery pack). Bundled candidates are "
                     "tried before any download.")
    first = next((r for r in plan_dict["rows"] if r["status"] in ("feasible", "chosen")), None)
    chosen = next((r for r in plan_dict["rows"] if r["status"] == "chosen"), None)
    if ctx.get("family") == "decoder":
        lead = chosen or first
        rate = ((lead or {}).get("estimate") or {}).get("decode_tokens_per_s")
        lines.append(f"decoder LM: est ms is the prefill of a {ctx['seq_len']}-token prompt"
                     + (f"; decoding is estimated at {rate:.0f} tokens/s for "
                        f"{lead['candidate']['runtime']}/{lead['candidate']['precision']}" if rate else "")
                     + (f"; the latency target ({ctx['latency_ms']:g} ms) applies to each decoded token"
                        if ctx.get("latency_ms") else "")
                     + "; the cosine column shows perplexity ratio and KL, measured on held-out text.")
    if chosen:
        c = chosen["candidate"]
        lines.append(f"chosen: {c['runtime']}/{c['precision']}{_delivered(chosen, ctx)}.")
    elif first:
        c = first["candidate"]
        command = package_command or f"edgeopt package --profile {plan_dict['profile']}"
        lines.append(f"next: `{command}` builds {c['runtime']}/{c['precision']} first{_delivered(first, ctx)}.")
    elif any(r.get("fidelity") or r.get("attempts") for r in plan_dict["rows"]):
        lines.append("nothing passed: every candidate built missed the fidelity target (cosine column; the reason "
                     "lists each attempt). Lower targets.fidelity.min_cosine, give pruning more distillation "
                     "(--recover-seconds), or loosen the limits that ruled out the rest.")
    else:
        lines.append("nothing fits: loosen the limits named in the reasons, or pick a smaller model.")
    return lines


def _delivered(row: dict, ctx: dict) -> str:
    """", delivered as a download after install: 130 MB > ..." for a profile with a download budget, else ""."""
    if not ctx.get("model_download_mb") or not row.get("delivery_note"):
        return ""
    how = "as a download after install" if row.get("delivery") == "download" else "bundled in the app"
    return f", delivered {how}: {row['delivery_note']}"


def _delivery_lines(nbytes: int, limits: dict) -> list[str]:
    """How the built artifact (its real size, not the estimate) reaches the phone, for a profile with a download
    budget; nothing for a profile with one storage budget."""
    storage, download = limits.get("model_storage_mb"), limits.get("model_download_mb")
    if not (storage and download):
        return []
    size = f"{nbytes / MB:.1f} MB"
    if nbytes <= storage * MB:
        return [f"Delivery: **bundled** in the app ({size} <= model_storage_mb {storage}).", ""]
    if nbytes <= download * MB:
        return [f"Delivery: **download after install** ({size} > model_storage_mb {storage}, the bundled budget; "
                f"<= model_download_mb {download}): ship it as an asset pack the app fetches (Play Asset Delivery "
                "fast-follow or on-demand) or with the app's own downloader, not inside the APK.", ""]
    return [f"Delivery: {size} exceeds both model_storage_mb {storage} and model_download_mb {download}.", ""]


def plan_markdown(plan_dict: dict) -> str:
    lines = ["| " + " | ".join(PLAN_HEADER) + " |", "|" + "---|" * len(PLAN_HEADER)]
    for row in plan_rows(plan_dict):
        lines.append("| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |")
    explanation = plan_explanation(plan_dict)
    if explanation:
        lines += [""] + explanation
    return "\n".join(lines)


def bundle_report(manifest: dict) -> str:
    """report.md: what was chosen, why, and what it measured."""
    art = manifest["artifacts"][0]
    fid = manifest["fidelity"]
    est = manifest.get("estimates") or {}
    prof = manifest["profile"]
    lines = [
        f"# {manifest['model']['name']} for {prof['name']}",
        "",
        f"Chosen: **{art['runtime']} / {art['precision']}** — {art['scheme']['description']}; "
        f"{art['bytes'] / MB:.1f} MB.",
        "",
    ]
    lines += _delivery_lines(art["bytes"], prof.get("limits") or {})
    if fid.get("perplexity") is not None:
        tol, lm = prof["targets"]["fidelity"], art.get("lm") or {}
        lines += [
            "## Quality (held-out text, against the fp32 PyTorch model)",
            "",
            f"- KV cache {lm.get('context_len')} tokens; each of {fid['samples']} held-out windows is prefilled for "
            f"{lm.get('prompt_len')} tokens, then decoded one token at a time, in the artifact's runtime",
            f"- perplexity {fid['perplexity']:.4f} vs fp32 {fid['reference_perplexity']:.4f}: "
            f"x{fid['perplexity_ratio']:.4f} (limit x{tol.get('max_perplexity_ratio')})",
            f"- KL(fp32 || artifact) {fid['kl']:.5f} nats/token (limit {tol.get('max_kl')})",
            f"- greedy decoding from held-out prompts: {fid['greedy_agreement']:.1%} of tokens equal to fp32's, "
            f"identical for the first {fid['greedy_prefix']:.1f} tokens on average",
            f"- logits: mean cosine {fid['mean_cosine']:.5f}, top-1 agreement {fid['top1_agreement']:.1%}",
            "",
        ]
    else:
        lines += [
            "## Fidelity (held-out inputs, against the fp32 PyTorch model)",
            "",
            f"- mean cosine {fid['mean_cosine']:.5f}, worst sample {fid['min_cosine']:.5f} (tolerance: mean ≥ "
            f"{prof['targets']['fidelity']['min_cosine']})",
            f"- SQNR {fid['sqnr_db']:.1f} dB, max abs error {fid['max_abs_err']:.3g}, {fid['samples']} samples",
            "",
        ]
    lines += [
        "## Estimates for the profile's device",
        "",
    ]
    if est:
        lines += [f"- artifact {est['artifact_bytes'] / MB:.1f} MB, peak RAM {est['peak_ram_bytes'] / MB:.0f} MB "
                  f"(limit {prof['limits']['model_ram_mb']} MB), latency {est['latency_ms']:.1f} ms"]
    pr = manifest.get("pruning")
    if pr:
        lines += ["", "## Pruning", "", f"- {pr['summary']} (the pruned fp32 model against the original, before "
                  "quantization)",
                  f"- importance: {pr['importance']}; blocks dropped: {pr['dropped_blocks'] or 'none'} "
                  f"({pr.get('depth_method') or 'no depth pruning'}); {pr['calibration_samples']} calibration samples",
                  f"- distillation: {pr['recovery_seconds']:.0f} s, {pr['recovery_steps']} steps"]
    q = art.get("quantization")
    if q:
        lines += ["", "## Quantization coverage", "",
                  f"{q['quantized_count']} of {q['total']} weight tensors quantized; kept float:"]
        lines += [f"- `{name}`: {why}" for name, why in q["kept_float"].items()] or ["- none"]
    lines += ["", "## Candidates", "", plan_markdown(manifest["plan"]), ""]
    return "\n".join(lines)


def _lm_readme(art: dict) -> list[str]:
    """How to drive a decoder LM's KV cache: what the app must do per token."""
    lm = art["lm"]
    how = {
        "in_program": "The KV cache is state inside the program: call the method with the new tokens and their "
                      "positions (`cache_position`); the program updates its cache in place.",
        "explicit": "The KV cache is explicit: pass the cache tensors in, keep the ones that come out, and pass "
                    "them to the next call.",
    }.get(lm.get("cache"), "")
    lines = [
        f"This is a decoder LM with a KV cache of **{lm.get('context_len')} tokens** (prompt + generated tokens "
        f"never exceed it); prompts are prefilled {lm.get('prompt_len')} tokens at a time, then each new token "
        "is one decode call. " + how,
        "",
        "`runner/" + art["runtime"] + "/backend.py` (`load_lm`) is a complete, short reference of the calls: "
        "`prefill(ids)` and `decode(token)` return logits; the runner's greedy loop is in "
        "`runner/common/lmeval.py`, and text in -> text out (tokenizer, sampling, eos, streaming) in "
        "`runner/common/generate.py`. The snippets below show the same loop on the runtime's app API.",
    ]
    names = {k: v for k, v in lm.items() if k in ("signatures", "method", "methods", "tensors", "cache_tensors",
                                                  "past_inputs", "present_outputs")}
    if names:
        lines += ["", "Names in the artifact: " + ", ".join(f"{k} `{v}`" for k, v in names.items())]
    return lines


def bundle_readme(manifest: dict) -> str:
    """README.md for the app developer: runtime and version, inputs/outputs, app snippets, on-device benchmark."""
    from edgeopt.appnotes import app_notes
    from edgeopt.profiles import AFFINITIES
    from edgeopt.tokenizer_bundle import readme_section

    art = manifest["artifacts"][0]
    compute = (manifest.get("profile") or {}).get("compute") or {}
    threads = int(compute.get("threads") or 4)
    spinning = compute.get("spinning") if isinstance(compute.get("spinning"), bool) else None
    execution = (manifest.get("profile") or {}).get("execution")
    targets = execution.get(art.get("runtime")) if isinstance(execution, dict) else None
    notes = app_notes(art, manifest.get("toolchain", {}), threads=threads,
                      targets=targets if isinstance(targets, list) else None, spinning=spinning,
                      affinity=compute.get("affinity") if compute.get("affinity") in AFFINITIES else "none")
    version = notes.version or "(not recorded: see manifest.json)"

    def io_lines(specs):
        return [f"| `{s['name']}` | {s['dtype']} | {s['shape']} |" for s in specs]

    return "\n".join([
        f"# {manifest['model']['name']} — {art['runtime']} {art['precision']} bundle",
        "",
        f"Made by edgeopt {manifest['edgeopt_version']} for the `{manifest['profile']['name']}` profile.",
        "",
        "## The artifact",
        "",
        f"- Artifact: `{art['file']}` ({art['format']}, {art['bytes']} bytes, sha256 `{art['sha256']}`)",
        (f"- Runtime: **{art['runtime']} {version}** (pip `{_pip_pin(notes)}`; Android `{', '.join(notes.maven)}`)"
         " — verified with this version; use it (or newer) in the app."),
        "",
        "Inputs:",
        "",
        "| name | dtype | shape |",
        "|---|---|---|",
        *io_lines(art["inputs"]),
        "",
        "Outputs:",
        "",
        "| name | dtype | shape |",
        "|---|---|---|",
        *io_lines(art["outputs"]),
        "",
        *(_lm_readme(art) if art.get("lm") else
          [_shape_note(art),
           *([("Token ids come from the model's own tokenizer: `tokenizer/` in this bundle (see Tokenizer below)."
               if manifest.get("tokenizer") else
               "Token ids come from the model's own tokenizer (`tokenizer.json` in the model directory).")]
             if any(s["name"] == "input_ids" for s in art["inputs"]) else [])]),
        "",
        *_readme_app_sections(art, notes),
        *readme_section(manifest, threads),
        *_readme_bench_section(art),
    ])


def _shape_note(art: dict) -> str:
    """How the app sizes inputs: fixed shapes, or the variable sequence axis of ``art["lengths"]``."""
    from edgeopt.lengths import Lengths, LengthMode

    lengths = Lengths.from_dict(art["lengths"]) if isinstance(art.get("lengths"), dict) else None
    if lengths is None or not lengths.variable:
        return "Shapes are fixed at export time (the profile's batch and sequence length): pad inputs to them."
    if lengths.mode is LengthMode.DYNAMIC:
        return (f"The sequence axis (-1 above) is dynamic, {lengths.min}..{lengths.max} tokens: send the real length, "
                "unpadded (see the length note under Load it in your app).")
    return (f"The sequence length comes in buckets {list(lengths.buckets)}: pad to the smallest bucket that holds "
            "the text (see the length note under Load it in your app).")


def _pip_pin(notes) -> str:  # notes: edgeopt.appnotes.AppNotes
    from edgeopt.appnotes import VERSION_KEY

    return f"{VERSION_KEY[notes.runtime]}=={notes.version}" if notes.version else VERSION_KEY[notes.runtime]


def _readme_app_sections(art: dict, notes) -> list[str]:  # notes: edgeopt.appnotes.AppNotes
    """"Load it in your app": Android (Gradle + Kotlin), iOS (package + Swift), Python (desktop check)."""
    return [
        "## Load it in your app",
        "",
        "### Android (Kotlin)",
        "",
        f"Put `{art['file']}` in `app/src/main/assets/`, then depend on the runtime:",
        "",
        "```kotlin", notes.gradle, "```",
        "",
        "```kotlin", notes.kotlin, "```",
        "",
        *[f"- {n}" for n in notes.notes],
        "",
        "### iOS (Swift)",
        "",
        f"Add `{art['file']}` to the app target (Copy Bundle Resources), then the package:",
        "",
        "```", notes.ios_package, "```",
        "",
        "```swift", notes.swift, "```",
        "",
        "### Python (desktop check)",
        "",
        "Run from this folder: it feeds the first sample of `inputs.npz` to the artifact and compares the",
        "outputs with the ones the host stored when it built the bundle.",
        "",
        "```python", notes.python.rstrip("\n"), "```",
        "",
    ]


def _readme_bench_section(art: dict) -> list[str]:
    """How to benchmark on the device: copy, run bench.sh, or drive it from a host with edgeopt."""
    return [
        "## Benchmark it on the device",
        "",
        "Copy this whole folder to the device (`adb push`, `scp`); it needs Python 3.9+, numpy and the runtime",
        f"above (`pip install` the runtime's Python package, see `runner/{art['runtime']}/README.md`). On the device:",
        "",
        "```sh",
        "sh bench.sh --runs 100 --min-seconds 5 --out result.json",
        "```",
        "",
        "It checks the artifact's sha256 against `manifest.json`, measures load time, first inference,",
        "latency percentiles and peak RSS, checks the outputs against `inputs.npz`, and prints one JSON object.",
        "A device without Python can run the runtime's own benchmark binary: `sh bench.sh --native PATH`.",
        "",
        "From a host with edgeopt, which copies the folder, runs it and validates the result:",
        "",
        "```sh",
        "edgeopt bench THIS_FOLDER --device adb            # a phone over adb (adb:SERIAL for one of several)",
        "edgeopt bench THIS_FOLDER --device ssh://user@host  # a board over ssh",
        "edgeopt bench THIS_FOLDER --device local           # this machine",
        "```",
        "",
    ]
