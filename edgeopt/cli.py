"""The ``edgeopt`` command line. It parses flags, calls the public API and prints; no logic of its own.

Exit codes: 0 ok · 1 internal error (a bug) · 2 usage or profile error · 3 invalid or unsafe input file ·
4 model or op not supported by the chosen format · 5 no candidate fits / fidelity below tolerance ·
6 out of memory or disk · 7 device or transport error · 130 interrupted.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path

import click

from edgeopt import __version__
from edgeopt.errors import EdgeoptError

MB = 1024 * 1024
_MODEL_HELP = "Hugging Face directory, hub id, or file.py:factory (default: the built-in all-MiniLM-L6-v2)"


def _console(json_out: bool = False, *, uses_torch: bool = False):
    from edgeopt.console import Console

    if uses_torch:
        _quiet_torch()
    return Console(quiet=json_out)


def _native_log():
    """Converters' native logging goes to a temp log (kept, and named, only when the command fails)."""
    from edgeopt.console import native_output_to_log

    if os.environ.get("EDGEOPT_NATIVE_LOGS"):  # show everything, for debugging a converter
        import contextlib

        return contextlib.nullcontext()
    return native_output_to_log()


def _quiet_torch() -> None:
    """torch installs its own log handlers at import (exporter registration, pytree notices): quiet them after."""
    import logging

    import torch  # noqa: F401 - imported for its logging set-up, which must happen before we lower the levels

    for name in ("torch", "torch.onnx", "torch.utils._pytree", "torch.export", "torch._dynamo"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _quiet_libraries() -> None:
    """The converters print progress bars and warnings of their own; the CLI owns the terminal."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("transformers", "torch", "onnxscript", "onnx_ir", "torchao", "root"):
        logging.getLogger(name).setLevel(logging.ERROR)
    logging.getLogger().setLevel(logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
    except ImportError:
        pass


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgeopt")
def cli() -> None:
    """edgeopt: plan, package, verify and benchmark a model for a device profile."""


# --- profiles ----------------------------------------------------------------------------------


@cli.group()
def profiles() -> None:
    """List, show, validate and detect device profiles."""


@profiles.command("list")
@click.option("--json", "json_out", is_flag=True, help="Print JSON.")
def profiles_list(json_out: bool) -> None:
    """The built-in profiles."""
    from edgeopt.profiles import load_builtin_profiles

    profs = load_builtin_profiles()
    if json_out:
        click.echo(json.dumps([p.to_dict() for p in profs], indent=2))
        return
    rows = [[p.name, p.device.cpu or p.device.arch, str(p.limits.model_ram_mb), str(p.limits.model_storage_mb),
             str(p.limits.model_download_mb or "-"),
             ", ".join(x.value for x in p.limits.precisions), ", ".join(r.value for r in p.runtimes)] for p in profs]
    _console().table(None, ["name", "device", "RAM MB", "bundled MB", "download MB", "precisions", "runtimes"], rows)


@profiles.command("show")
@click.argument("name")
def profiles_show(name: str) -> None:
    """Print a profile (built-in name or YAML path) as resolved YAML."""
    from edgeopt.profiles import dump_profile_yaml, load_profile

    click.echo(dump_profile_yaml(load_profile(name).to_dict(), header=f"# resolved from {name}\n"), nl=False)


@profiles.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
def profiles_validate(file: str) -> None:
    """Check a profile file; every problem is listed at once."""
    from edgeopt.profiles import load_profile

    p = load_profile(file)
    click.echo(f"{file}: ok (profile {p.name!r})")


@profiles.command("calibrate")
@click.argument("results", nargs=-1, required=True, type=click.Path())
@click.option("--profile", "base", help="Profile to start from (default: the one the results' bundles were planned for).")
@click.option("--out", type=click.Path(dir_okay=False), required=True, help="Write the calibrated profile YAML here.")
@click.option("--name", help="Name of the new profile (default: the base profile's name + '-calibrated').")
@click.option("--json", "json_out", is_flag=True, help="Print the fit as JSON.")
def profiles_calibrate(results: tuple[str, ...], base: str | None, out: str, name: str | None, json_out: bool) -> None:
    """Fit a profile's compute numbers to `edgeopt bench` results from a real device.

    RESULTS are the JSON files bench stored under <bundle>/results/ (or bundle folders). The new profile
    keeps the base's limits and adds a `calibration` section: per runtime, the rate reached at each
    precision, per-op overhead and memory terms. Plans made with it predict that device more closely.
    """
    from edgeopt import api

    con = _console(json_out)
    fit = api.calibrate_profile(list(results), profile=base, out=out, name=name)
    if json_out:
        click.echo(json.dumps(fit, indent=2))
        return
    rows = [[r["model"], r["runtime"], r["precision"], f"{r['latency_ms']:.2f}", f"{r['before_ms']:.2f}",
             f"{r['after_ms']:.2f}", _opt(r["peak_rss_mb"], ".0f"), f"{r['before_rss_mb']:.0f}", f"{r['after_rss_mb']:.0f}"]
            for r in fit["points"]]
    con.table(f"{fit['base']} -> {fit['name']}: measured vs predicted before and after calibration",
              ["model", "runtime", "precision", "p50 ms", "before", "after", "peak RSS MB", "before", "after"], rows)
    s = fit["summary"]
    con.line(f"worst latency miss {s['before']['worst_latency']:.0%} before, {s['after']['worst_latency']:.0%} after; "
             f"worst peak-RSS miss {s['before']['worst_rss']:.0%} before, {s['after']['worst_rss']:.0%} after")
    if fit["invalid"]:
        con.line(f"{fit['invalid']} of the {len(fit['points'])} artifacts had a run the runner marked invalid (unstable "
                 "timings); they were used, but more runs on a quiet device give a better fit (repeated runs of one "
                 "artifact are merged into their median)")
    con.line(f"wrote {out}; plan with it: edgeopt plan --profile {out}")


def _opt(value, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


@profiles.command("detect")
@click.option("--out", type=click.Path(dir_okay=False), help="Write the YAML here instead of stdout.")
@click.option("--name", default="this-machine", show_default=True)
def profiles_detect(out: str | None, name: str) -> None:
    """Write a profile for the machine this runs on (psutil, CPU flags, a bandwidth probe)."""
    from edgeopt.detect import DETECT_HEADER, detect_profile
    from edgeopt.profiles import dump_profile_yaml

    text = dump_profile_yaml(detect_profile(name), header=DETECT_HEADER)
    if out:
        from edgeopt.api import _write_text_atomic

        _write_text_atomic(Path(out), text)  # a full disk leaves no half-written profile
        click.echo(f"wrote {out}", err=True)
    else:
        click.echo(text, nl=False)


# --- inspect / plan ----------------------------------------------------------------------------


@cli.command()
@click.option("--model", "model", default=None, help=_MODEL_HELP)
@click.option("--profile", "profile_name", default="arm-mobile", show_default=True, help="Shapes come from this profile.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle checkpoints (they can run code).")
@click.option("--json", "json_out", is_flag=True, help="Print JSON.")
def inspect(model: str | None, profile_name: str, allow_pickle: bool, json_out: bool) -> None:
    """Parameters, bytes per precision, FLOPs, memory, and fit against every built-in profile."""
    from edgeopt import api

    con = _console(json_out, uses_torch=True)
    with con.working("inspecting"), _native_log():
        report = api.inspect(model, profile=profile_name, allow_pickle=allow_pickle, progress=con.progress)
    if json_out:
        click.echo(json.dumps(report, indent=2))
        return
    s = report["stats"]
    con.line(f"{s['model_name']} ({s['family']}): {s['params_total']:,} parameters; "
             f"at batch {s['batch']}, seq {s['seq_len']}: {s['flops'] / 1e9:.2f} GFLOPs, "
             f"activation peak {s['activation_peak_bytes'] / MB:.1f} MB")
    con.table("parameters by module kind", ["kind", "params", "share"],
              [[k, f"{v:,}", f"{v / max(s['params_total'], 1):.1%}"] for k, v in s["params_by_kind"].items()])
    con.table("weight bytes by precision", ["precision", "MB"], [[k, f"{v / MB:.1f}"] for k, v in s["bytes_at"].items()])
    con.table("fit against the built-in profiles",
              ["profile", "precision", "size MB", "delivery", "RAM MB", "est ms", "fits", "reason"],
              [[r["profile"], r["precision"], f"{r['artifact_mb']:.1f}", r.get("delivery") or "-",
                f"{r['peak_ram_mb']:.0f}", f"{r['latency_ms']:.1f}", "yes" if r["fits"] else "no", r.get("reason") or ""]
               for r in report["fit"]])


@cli.command()
@click.option("--profile", "profile_name", required=True, help="Built-in profile name or YAML path.")
@click.option("--model", "model", default=None, help=_MODEL_HELP)
@click.option("--format", "fmt", default=None, help="Only this runtime/format (onnx|onnxruntime|pte|executorch|tflite|litert).")
@click.option("--precision", default=None, help="Only this precision (fp32|fp16|int8|int4).")
@click.option("--activations", default=None, help="Quantized activations: dynamic (default) or static (calibrated).")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle checkpoints (they can run code).")
@click.option("--json", "json_out", is_flag=True, help="Print JSON.")
def plan(profile_name: str, model: str | None, fmt: str | None, precision: str | None, activations: str | None,
         allow_pickle: bool, json_out: bool) -> None:
    """Print the candidate table (estimates, status, reason) without building anything."""
    from edgeopt import api

    con = _console(json_out, uses_torch=True)
    with con.working("planning"), _native_log():
        p = api.make_plan(model, profile=profile_name, fmt=fmt, precision=precision, activations=activations,
                          allow_pickle=allow_pickle, progress=con.progress)
    if json_out:
        click.echo(json.dumps(p.to_dict(), indent=2))
        return
    given = {"--profile": profile_name, "--model": model, "--format": fmt, "--precision": precision,
             "--activations": activations}
    command = " ".join(["edgeopt package", *(f"{k} {shlex.quote(v)}" for k, v in given.items() if v),
                        *(["--allow-pickle"] if allow_pickle else [])])
    _print_plan(con, p.to_dict(), f"plan for {p.model_name} on {p.profile_name}", package_command=command)
    if not p.feasible:
        raise _nofit(p)


def _print_plan(con, plan_dict: dict, title: str, package_command: str | None = None) -> None:
    from edgeopt.report_md import PLAN_HEADER, plan_explanation, plan_rows

    rows = plan_rows(plan_dict)
    chosen = next((i for i, r in enumerate(plan_dict["rows"]) if r["status"] == "chosen"), None)
    con.table(title, PLAN_HEADER, rows, highlight_row=chosen)
    for line in plan_explanation(plan_dict, package_command):
        con.line(line)


def _nofit(p):
    from edgeopt.errors import NoFitError

    err = NoFitError(f"no candidate fits profile {p.profile_name!r}; the table above gives each reason")
    return err


# --- package -----------------------------------------------------------------------------------


@cli.command()
@click.option("--profile", "profile_name", required=True, help="Built-in profile name or YAML path.")
@click.option("--model", "model", default=None, help=_MODEL_HELP)
@click.option("--out", default="dist", show_default=True, type=click.Path(file_okay=False), help="Bundles go to OUT/<model>-<profile>/.")
@click.option("--format", "fmt", default=None, help="Bypass the planner's runtime choice.")
@click.option("--precision", default=None, help="Bypass the planner's precision choice.")
@click.option("--activations", default=None, help="Quantized activations: dynamic (default) or static (calibrated).")
@click.option("--all-formats", is_flag=True, help="Also build the chosen scheme in every other format; compare side by side.")
@click.option("--recover-seconds", default=60.0, show_default=True, type=float,
              help="When the plan has to prune: seconds of distillation from the original model afterwards (0: none).")
@click.option("--force", is_flag=True, help="Replace an existing bundle.")
@click.option("--allow-pickle", is_flag=True, help="Allow pickle checkpoints (they can run code).")
@click.option("--json", "json_out", is_flag=True, help="Print the manifest as JSON.")
def package(profile_name: str, model: str | None, out: str, fmt: str | None, precision: str | None,
            activations: str | None, all_formats: bool, recover_seconds: float, force: bool, allow_pickle: bool,
            json_out: bool) -> None:
    """Plan, build, verify in the real runtime, and write a bundle."""
    from edgeopt import api
    from edgeopt.bundle import check_out_dir

    check_out_dir(Path(out))  # an unusable --out fails now, not after the ~20 s of loading and exporting
    con = _console(json_out, uses_torch=True)
    try:
        with con.working("packaging"), _native_log():
            result = api.package(model, profile=profile_name, out=out, fmt=fmt, precision=precision,
                                 activations=activations, all_formats=all_formats, force=force,
                                 allow_pickle=allow_pickle, progress=con.progress, recover_seconds=recover_seconds)
    except EdgeoptError as e:
        plan_obj = getattr(e, "plan", None)
        if plan_obj is not None and not json_out:
            _print_plan(con, plan_obj.to_dict(), f"plan for {plan_obj.model_name} on {plan_obj.profile_name}")
            raise type(e)(str(e).splitlines()[0]) from None
        raise
    if json_out:
        click.echo(json.dumps(result.manifest, indent=2))
        return
    m = result.manifest
    _print_plan(con, m["plan"], f"plan for {m['model']['name']} on {m['profile']['name']}")
    art, fid = m["artifacts"][0], m["fidelity"]
    con.line(f"bundle: {result.bundle_path}")
    con.line(f"  {art['file']}: {art['runtime']} {art['precision']} ({art['scheme']['description']}), "
             f"{art['bytes'] / MB:.1f} MB")
    if fid.get("perplexity") is not None:  # a decoder LM
        lm = art.get("lm") or {}
        con.line(f"  KV cache {lm.get('context_len')} tokens, prompt (prefill) {lm.get('prompt_len')} tokens")
        con.line(f"  quality vs fp32 on {fid['samples']} held-out windows: perplexity {fid['perplexity']:.3f} vs "
                 f"{fid['reference_perplexity']:.3f} (x{fid['perplexity_ratio']:.4f}), KL {fid['kl']:.4f} nats/token, "
                 f"greedy tokens {fid['greedy_agreement']:.0%} equal")
    else:
        con.line(f"  fidelity vs fp32 on {fid['samples']} held-out inputs: mean cosine {fid['mean_cosine']:.4f}, "
                 f"worst {fid['min_cosine']:.4f}, SQNR {fid['sqnr_db']:.1f} dB")
    if m.get("pruning"):
        pr = m["pruning"]
        con.line(f"  pruned: {pr.get('summary')} (fidelity of the pruned fp32 model vs the original)")
    if "all_formats" in m:
        _print_side_by_side(con, result.bundle_path, m)
    con.line(f"  next: edgeopt bench {result.bundle_path} --device local")


def _print_side_by_side(con, bundle_path, manifest: dict) -> None:
    """--all-formats: size, fidelity, host latency (the bundle's own runner, here) and delegation per format."""
    from edgeopt import api

    rows = []
    for r in manifest["all_formats"]:
        latency = "-"
        if r["status"] in ("chosen", "bundled"):
            con.progress(f"bench: {r['runtime']} on this host")
            try:
                res = api.bench(bundle_path, runs=30, min_seconds=1.0, warmup=3, repeats=1, runtime=r["runtime"],
                                save=False)
                latency = f"{res.latency_ms['p50']:.2f}"
            except EdgeoptError as e:
                latency = f"failed: {str(e).splitlines()[0][:40]}"
        fid = r.get("fidelity") or {}
        dele = r.get("delegation") or {}
        rows.append([r["runtime"], r["precision"], r["status"], f"{r['bytes'] / MB:.1f}" if r.get("bytes") else "-",
                     f"{fid['mean_cosine']:.4f}" if fid.get("mean_cosine") is not None else "-", latency,
                     f"{dele['share']:.0%}" if "share" in dele else "-", r.get("reason") or ""])
    con.table("all formats (host latency: p50 ms on this machine)",
              ["runtime", "precision", "status", "size MB", "cosine", "p50 ms", "delegated", "reason"], rows)


# --- demo LM -----------------------------------------------------------------------------------


@cli.command("demo-lm")
@click.option("--out", default=None, type=click.Path(file_okay=False),
              help="Copy the model here (default: print where the cached model is).")
@click.option("--steps", default=None, type=click.IntRange(min=1), metavar="N",
              help="Train for N steps instead of the default budget (600 steps, 4-6 minutes on one core). "
                   "Fewer steps give a worse but quicker model, e.g. 40 for a smoke test; each N is cached apart.")
@click.option("--force", is_flag=True, help="Train again even when a cached model exists.")
def demo_lm(out: str | None, steps: int | None, force: bool) -> None:
    """Train (once, then cached) the tiny Llama on the text edgeopt ships; print its directory.

    Use it as a decoder LM that means something: edgeopt package --model DIR --profile arm-mobile
    """
    from edgeopt.bundle import check_out_dir
    from edgeopt.lm.tinylm import build_tiny_lm

    if out:
        check_out_dir(Path(out))  # before minutes of training
    con = _console(uses_torch=True)
    with con.working("tiny LM"):
        path = build_tiny_lm(Path(out) if out else None, train_steps=steps, force=force, say=con.progress)
    con.line(str(path))


# --- bench -------------------------------------------------------------------------------------


@cli.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--device", default="local", show_default=True,
              help="local, ssh://user@host[:port] (OpenSSH, key auth) or adb[:serial] (Android).")
@click.option("--runs", default=100, show_default=True, type=click.IntRange(min=1), help="Timed runs per repeat (at least).")
@click.option("--min-seconds", default=5.0, show_default=True, type=click.FloatRange(min=0),
              help="Timed seconds per repeat (at least).")
@click.option("--warmup", default=10, show_default=True, type=click.IntRange(min=0), help="Untimed runs before each repeat.")
@click.option("--repeats", default=3, show_default=True, type=click.IntRange(min=1),
              help="Timed blocks; their p90 must agree for a valid run.")
@click.option("--threads", default=None, type=click.IntRange(min=1),
              help="Runtime threads. Default: the profile's, capped to the device's CPUs.")
@click.option("--cores", default=None, metavar="LIST", help="Pin to these CPU ids on the device, e.g. 4,5,6,7.")
@click.option("--runtime", default=None, help="Which artifact of a multi-artifact bundle (onnxruntime, executorch, litert).")
@click.option("--native", default=None, metavar="PATH",
              help="Path on the device of the runtime's own benchmark binary (onnxruntime_perf_test, "
                   "benchmark_model, executor_runner), for devices without Python.")
@click.option("--python", "python_path", default=None, metavar="PATH", help="Python on the device (default: python3).")
@click.option("--identity", default=None, metavar="FILE", help="SSH private key (default: EDGEOPT_SSH_IDENTITY, else ssh's).")
@click.option("--timeout", "timeout_s", default=None, type=click.FloatRange(min=1),
              help="Limit for the whole run in seconds (default 600 locally, 1800 on a device).")
@click.option("--no-save", is_flag=True, help="Do not store the result under the bundle's results/.")
@click.option("--json", "json_out", is_flag=True,
              help="Print the record as JSON: device, bundle, result (the runner's schema), comparison, saved_to.")
def bench(bundle: str, device: str, runs: int, min_seconds: float, warmup: int, repeats: int, threads: int | None,
          cores: str | None, runtime: str | None, native: str | None, python_path: str | None, identity: str | None,
          timeout_s: float | None, no_save: bool, json_out: bool) -> None:
    """Measure a bundle on a device; compare with the plan's estimates and the profile's target; store it."""
    from edgeopt import api

    con = _console(json_out)
    with con.working(f"benchmarking on {device}"):
        result = api.bench(bundle, device=device, runs=runs, min_seconds=min_seconds, warmup=warmup, repeats=repeats,
                           threads=threads, cores=cores, runtime=runtime, native=native, python=python_path,
                           identity_file=identity, timeout_s=timeout_s, save=not no_save)
    if json_out:
        click.echo(json.dumps({**result.record, "saved_to": result.saved_to}, indent=2))
        return
    from edgeopt.benchmark import format_comparison, format_table

    con.line(format_table(result))
    con.line(format_comparison(result.comparison))
    if result.saved_to:
        con.line(f"stored: {result.saved_to}")


# --- report ------------------------------------------------------------------------------------


@cli.command()
@click.argument("bundles", nargs=-1, required=True, type=click.Path())
@click.option("--html", "html_out", default=None, type=click.Path(dir_okay=False),
              help="Also write a self-contained HTML report (tables and plots) here.")
def report(bundles: tuple[str, ...], html_out: str | None) -> None:
    """Plan, fidelity, estimates against bench results, and every candidate built, for one or more bundles."""
    from edgeopt import api

    click.echo(api.report(list(bundles), html=html_out))


# --- sweep -------------------------------------------------------------------------------------


@cli.command()
@click.argument("spec", type=click.Path(dir_okay=False))
@click.option("--out", default=None, type=click.Path(file_okay=False), help="Replaces the spec's out folder.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Run the cells as tasks on this Ray cluster (host:port of `ray start --head`, or auto).")
@click.option("--jobs", default=None, type=click.IntRange(min=1),
              help="Local pool: cells at once (default: one per spare core, fewer if their builds' peak memory "
                   "would not fit).")
@click.option("--no-bench", is_flag=True, help="Build only; skip the spec's bench devices.")
@click.option("--json", "json_out", is_flag=True, help="Print the results table as JSON.")
def sweep(spec: str, out: str | None, ray_address: str | None, jobs: int | None, no_bench: bool,
          json_out: bool) -> None:
    """Build models x profiles (x formats x precisions) in parallel, bench each bundle, one report over all.

    A cell whose bundle already matches (model hash, profile, edgeopt version) is skipped; a cell whose process
    was killed is retried once; a cell that fails (exit 4, 5...) is reported in the table. Exit code: 0 when
    every cell and benchmark succeeded, else the first failed cell's (then benchmark's).
    """
    from edgeopt import api
    from edgeopt.sweeps import load_spec

    parsed = load_spec(spec, out=out)  # every problem of the spec, exit 2, before any work
    con = _console(json_out)
    with con.working("sweep"):
        result = api.sweep(parsed, ray_address=ray_address, jobs=jobs, bench=not no_bench, progress=con.progress)
    if json_out:
        click.echo(json.dumps(result.to_dict(), indent=2))
    else:
        _print_sweep(con, result)
    if result.exit_code:
        from edgeopt.errors import EdgeoptError as _Failed

        failed = sum(c.status not in ("ok", "skipped") for c in result.cells)
        err = _Failed(f"sweep: {failed} of {len(result.cells)} cells failed" if failed
                      else "sweep: a benchmark failed; the table above says which")
        err.exit_code = result.exit_code
        raise err


def _print_sweep(con, result) -> None:
    devices = sorted({d for c in result.cells for d in c.bench})
    rows = []
    for c in result.cells:
        art, fid = c.artifact or {}, c.fidelity or {}
        status = c.status + (" (retried)" if c.retried else "")
        rows.append([c.model.rsplit("/", 1)[-1], c.profile, c.fmt or "auto", c.precision or "auto", status,
                     str(c.exit_code if c.exit_code is not None else "-"),
                     f"{art['runtime']}/{art['precision']}" if art else "-",
                     f"{art['bytes'] / MB:.2f}" if art else "-",
                     f"{fid['min_cosine']:.4f}" if "min_cosine" in fid else "-", f"{c.seconds:.1f}",
                     *[_bench_cell(c.bench.get(d)) for d in devices], (c.error or "")[:80]])
    con.table(f"sweep {result.spec} on the {result.runner} runner: {result.wall_s:.1f} s",
              ["model", "profile", "format", "precision", "status", "exit", "built", "MB", "min cos", "s",
               *[f"p50 ms {d}" for d in devices], "error"], rows)
    if result.report:
        con.line(f"report: {result.report}")
    con.line(f"results: {Path(result.out) / '.sweep' / 'sweep.json'}")


def _bench_cell(job: dict | None) -> str:
    if not job:
        return "-"
    if job.get("p50_ms") is not None:
        return f"{job['p50_ms']:.3f}" + (" (stored)" if job["status"] == "stored" else "")
    return f"failed ({job.get('exit_code')})"


# --- entry point -------------------------------------------------------------------------------


def _debug() -> bool:
    """``EDGEOPT_DEBUG``: 1, true, yes or on show an internal error's traceback; unset, 0, false, no, off do not."""
    return os.environ.get("EDGEOPT_DEBUG", "").strip().lower() in ("1", "true", "yes", "on")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; map every error to its documented exit code with one line, no traceback."""
    import signal

    _quiet_libraries()
    # SIGTERM unwinds like Ctrl-C, so staging folders are removed and locks released on the way out.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        cli.main(args=argv, prog_name="edgeopt", standalone_mode=False)
    except click.exceptions.Abort:
        print("interrupted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except click.ClickException as e:
        e.show()
        return 2
    except EdgeoptError as e:
        _console().error(str(e))
        return e.exit_code
    except MemoryError:
        print("error: out of memory; try a smaller model or a machine with more RAM", file=sys.stderr)
        return 6
    except Exception as e:  # noqa: BLE001 - a bug: say so, traceback only on request
        import errno

        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):  # disk full, anywhere
            where = f"{e.filename}: " if e.filename else ""
            print(f"error: {where}out of disk ({e.strerror}); free some space, raise the file-size limit or pass "
                  "--out elsewhere", file=sys.stderr)
            return 6
        if _debug():
            raise
        print(f"internal error (a bug in edgeopt): {type(e).__name__}: {e}\n"
              "rerun with EDGEOPT_DEBUG=1 for the traceback and report it", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
