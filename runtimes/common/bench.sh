#!/bin/sh
# Benchmark this edgeopt bundle on this device; prints one JSON result on stdout (logs on stderr).
#
# usage: sh bench.sh [--runtime NAME | --artifact FILE] [--threads N] [--cores 4,5,6,7]
#                    [--warmup 10] [--runs 100] [--min-seconds 5] [--repeats 3] [--seq-len N] [--out result.json]
#        PYTHON=/path/to/python3 sh bench.sh ...     (default: python3, else python)
#        python3 runner/common/runner.py --help      (every flag and threshold)
# Needs Python 3.9+, numpy and the artifact's runtime (e.g. pip install onnxruntime).
#
# Devices without Python: sh bench.sh --native PATH --artifact FILE [--runtime NAME] [--threads N]
#        [--cores LIST] [--warmup N] [--runs N] [--min-seconds S]
#   runs a runtime's own benchmark binary (onnxruntime_perf_test, LiteRT's benchmark_model, ExecuTorch's
#   executor_runner) on the artifact and prints its output in an envelope; the host (or, where Python
#   exists, `python3 runner/common/native.py < envelope`) turns it into the same JSON result.
#
# Exit codes: 0 measured (read "valid") · 2 bad flags · 3 a bundle file missing, unlisted or failing its sha256
#             · 4 Python, numpy or the runtime not installed, or the runtime cannot run the artifact
#             · 7 the --native benchmark binary is not an executable file on this device.
# A relative --out path is relative to this bundle folder.
cd "$(dirname "$0")" || exit 3

# ---------------------------------------------------------------------------------------- native mode

need_value() {
    if [ "$2" -lt 2 ]; then
        echo "bench.sh: $1 needs a value" >&2
        exit 2
    fi
}

sha256_of() {
    # Whichever tool this device has (coreutils, busybox and Android's toybox all have one of these).
    for tool in sha256sum "toybox sha256sum" "busybox sha256sum" "shasum -a 256"; do
        sum=$($tool "$1" 2>/dev/null) && { echo "${sum%% *}"; return; }
    done
    if command -v openssl >/dev/null 2>&1; then
        sum=$(openssl dgst -sha256 "$1" 2>/dev/null) && { echo "${sum##* }"; return; }
    fi
    echo "-"
}

readings() {
    # Raw sysfs numbers (millidegrees, kHz); the host turns them into degrees and MHz.
    temps=""
    for f in /sys/class/thermal/thermal_zone*/temp; do
        [ -r "$f" ] && temps="$temps $(cat "$f" 2>/dev/null)"
    done
    freqs=""
    for f in /sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq; do
        [ -r "$f" ] || continue
        id=${f#/sys/devices/system/cpu/cpu}
        freqs="$freqs ${id%%/*}=$(cat "$f" 2>/dev/null)"
    done
    echo "temp_$1$temps"
    echo "freq_$1$freqs"
}

device_lines() {
    echo "machine $(uname -m 2>/dev/null)"
    echo "os $(uname -sr 2>/dev/null)"
    cpu=$(grep -m1 -E '^(model name|Hardware|Processor)[[:space:]]*:' /proc/cpuinfo 2>/dev/null)
    echo "cpu ${cpu#*: }"
    echo "cores $(grep -c '^processor' /proc/cpuinfo 2>/dev/null)"
    mem=$(grep -m1 '^MemTotal:' /proc/meminfo 2>/dev/null)
    mem=${mem#MemTotal:}
    echo "ram_kb ${mem%kB}"
}

native_mode() {
    tool=$1
    shift
    artifact="" runtime="" threads="" cores="" runs=100 warmup=10 min_seconds=5
    while [ $# -gt 0 ]; do
        case "$1" in
            --artifact) need_value "$1" $#; artifact=$2; shift 2 ;;
            --runtime) need_value "$1" $#; runtime=$2; shift 2 ;;
            --threads) need_value "$1" $#; threads=$2; shift 2 ;;
            --cores) need_value "$1" $#; cores=$2; shift 2 ;;
            --runs) need_value "$1" $#; runs=$2; shift 2 ;;
            --warmup) need_value "$1" $#; warmup=$2; shift 2 ;;
            --min-seconds) need_value "$1" $#; min_seconds=$2; shift 2 ;;
            # The runner's repeat and validity flags: a native binary runs one timed block, so they do not apply.
            --repeats|--cooldown-s|--max-seconds|--max-runs|--max-spread|--max-temp-rise-c|--max-freq-drop)
                need_value "$1" $#; shift 2 ;;
            *) echo "bench.sh: $1 is not a flag of --native mode (see the top of bench.sh)" >&2; exit 2 ;;
        esac
    done
    for value in "$threads" "$runs" "$warmup"; do
        case "$value" in *[!0-9]*) echo "bench.sh: --threads/--runs/--warmup must be whole numbers" >&2; exit 2 ;; esac
    done
    case "$min_seconds" in ''|*[!0-9.]*) echo "bench.sh: --min-seconds must be a number" >&2; exit 2 ;; esac
    case "$cores" in *[!0-9,]*) echo "bench.sh: --cores must be CPU ids like 4,5,6,7" >&2; exit 2 ;; esac
    if [ -z "$artifact" ]; then
        echo "bench.sh: --native needs --artifact FILE (an artifact's \"file\" in manifest.json)" >&2
        exit 2
    fi
    case "$artifact" in */*) echo "bench.sh: --artifact must be a file name in this bundle" >&2; exit 2 ;; esac
    [ -f "$artifact" ] || { echo "bench.sh: $artifact is not in this bundle" >&2; exit 3; }
    case "$(basename "$tool")" in
        *onnxruntime_perf_test*) implied=onnxruntime ;;
        *benchmark_model*) implied=litert ;;
        *executor_runner*) implied=executorch ;;
        *) implied="" ;;
    esac
    if [ -z "$runtime" ]; then
        runtime=$implied
        [ -n "$runtime" ] || { echo "bench.sh: pass --runtime onnxruntime|litert|executorch for $tool" >&2; exit 2; }
    fi
    if [ -n "$implied" ] && [ "$implied" != "$runtime" ]; then
        echo "bench.sh: $(basename "$tool") benchmarks $implied artifacts, but $artifact is for $runtime;" \
             "give the $runtime benchmark binary" >&2
        exit 2
    fi
    # The device lacks the tool (or it is not executable there): a device problem (7), not the artifact's (4).
    [ -x "$tool" ] || { echo "bench.sh: $tool is not an executable file on this device" >&2; exit 7; }
    pin=""
    if [ -n "$cores" ]; then
        command -v taskset >/dev/null 2>&1 || { echo "bench.sh: --cores needs taskset on this device" >&2; exit 2; }
        pin="taskset -c $cores"
    fi
    work=".native-$$"
    rm -rf "$work" && mkdir "$work" || exit 2
    case "$runtime" in
        onnxruntime)
            name=onnxruntime_perf_test
            set -- -m times -r "$runs" -e cpu -I -s
            [ -n "$threads" ] && set -- "$@" -x "$threads"
            set -- "$@" "$artifact" "$work/per_run.txt" ;;
        litert)
            name=benchmark_model
            set -- "--graph=$artifact" "--num_runs=$runs" "--min_secs=$min_seconds" "--warmup_runs=$warmup"
            [ -n "$threads" ] && set -- "$@" "--num_threads=$threads" ;;
        executorch)
            name=executor_runner
            set -- "--model_path=$artifact" "--num_executions=$runs"
            [ -n "$threads" ] && set -- "$@" "--cpu_threads=$threads" ;;
        *) echo "bench.sh: no native benchmark for runtime $runtime (onnxruntime, litert, executorch)" >&2
           rm -rf "$work"; exit 2 ;;
    esac
    before=$(readings before)
    $pin "$tool" "$@" > "$work/log" 2>&1
    code=$?
    after=$(readings after)
    if [ "$code" -ne 0 ]; then
        echo "bench.sh: $name exited $code; its output ends with:" >&2
        tail -c 3000 "$work/log" >&2
        rm -rf "$work"
        exit 4
    fi
    echo "edgeopt-native 1"
    echo "tool $name"
    echo "runtime $runtime"
    echo "artifact $artifact"
    echo "sha256 $(sha256_of "$artifact")"
    echo "threads $threads"
    echo "cores_pinned $cores"
    echo "runs $runs"
    echo "warmup $warmup"
    echo "min_seconds $min_seconds"
    echo "timestamp $(date -u +%Y-%m-%dT%H:%M:%SZ 2>/dev/null)"
    device_lines
    echo "$before"
    echo "$after"
    echo "--- tool output ---"
    tail -c 200000 "$work/log"
    if [ -f "$work/per_run.txt" ]; then
        echo ""
        echo "--- per-run ---"
        head -n 50000 "$work/per_run.txt"
    fi
    echo ""
    echo "--- end ---"
    rm -rf "$work"
    exit 0
}

# ----------------------------------------------------------------------------------------- entry

prev=""
for arg in "$@"; do
    if [ "$prev" = "--native" ]; then
        native=$arg
    fi
    prev=$arg
done
if [ -n "${native:-}" ]; then
    # Drop "--native PATH" from the arguments, keep the rest in order.
    first=1 skip=0
    for arg in "$@"; do
        if [ "$first" = 1 ]; then set --; first=0; fi
        if [ "$skip" = 1 ]; then skip=0; continue; fi
        if [ "$arg" = "--native" ]; then skip=1; continue; fi
        set -- "$@" "$arg"
    done
    native_mode "$native" "$@"
fi
case " $* " in
    *" --native "*) echo "bench.sh: --native needs the path of a benchmark binary" >&2; exit 2 ;;
esac

PY="${PYTHON:-}"
if [ -z "$PY" ]; then
    if command -v python3 >/dev/null 2>&1; then
        PY=python3
    elif command -v python >/dev/null 2>&1; then
        PY=python
    else
        echo "bench.sh: no python3 on this device; install Python 3.9+ or set PYTHON=/path/to/python3," \
             "or benchmark with the runtime's own binary: sh bench.sh --native PATH --artifact FILE" >&2
        exit 4
    fi
fi
exec "$PY" runner/common/runner.py --bundle . "$@"
