#!/bin/sh
# A decoder LM end to end with the CLI: train the tiny Shakespeare Llama, package it, benchmark it, report.
#
#   sh examples/tiny_lm.sh [OUT_DIR]                       # defaults: OUT_DIR=tiny-lm-example
#   STEPS=40 FORMAT=onnx sh examples/tiny_lm.sh /tmp/x     # a quick run (what the tests do)
#
# Environment:
#   STEPS       training steps (default: demo-lm's budget, 600 steps, 4-6 minutes on one core, then cached)
#   PROFILE     built-in profile name (default arm-mobile)
#   FORMAT      onnx | pte | tflite (default: the planner's choice; for the tiny LM on arm-mobile that is
#               ExecuTorch fp32, whose export takes a few minutes)
#   BENCH_ARGS  extra `edgeopt bench` flags (default: none; e.g. "--runs 10 --min-seconds 0.5" for a quick look)
#   EDGEOPT     the edgeopt command (default: edgeopt)
#
# Writes OUT_DIR/tiny-lm/ (the model), OUT_DIR/dist/tiny-lm-PROFILE/ (the bundle, with the bench result under
# results/) and OUT_DIR/report.html.
set -eu

OUT_DIR=${1:-tiny-lm-example}
PROFILE=${PROFILE:-arm-mobile}
EDGEOPT=${EDGEOPT:-edgeopt}
MODEL="$OUT_DIR/tiny-lm"
BUNDLE="$OUT_DIR/dist/tiny-lm-$PROFILE"
mkdir -p "$OUT_DIR"

# 1. A 4.2M-parameter Llama with its own BPE tokenizer, trained on the Shakespeare edgeopt ships
#    (deterministic for a given number of steps; cached under ~/.cache/edgeopt/tiny-lm, so a rerun is instant).
$EDGEOPT demo-lm --out "$MODEL" ${STEPS:+--steps "$STEPS"}

# 2. What would be built for this device, and why (nothing is built yet).
$EDGEOPT plan --model "$MODEL" --profile "$PROFILE" ${FORMAT:+--format "$FORMAT"}

# 3. Build and verify: the artifact runs in its real runtime with its KV cache on held-out text; the bundle
#    is kept only if perplexity and KL stay within the profile's limits vs fp32 (manifest.json "fidelity").
$EDGEOPT package --model "$MODEL" --profile "$PROFILE" --out "$OUT_DIR/dist" --force ${FORMAT:+--format "$FORMAT"}

# 4. Measure on this machine: time to first token, decode tokens/s, peak RSS, and perplexity / greedy agreement
#    recomputed by the runner. For a board or phone: --device ssh://user@host or --device adb.
# shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
$EDGEOPT bench "$BUNDLE" --device local ${BENCH_ARGS:-}

# 5. One page: plan, fidelity, estimates vs the measurement, with plots.
$EDGEOPT report "$BUNDLE" --html "$OUT_DIR/report.html"
echo "bundle: $BUNDLE  report: $OUT_DIR/report.html"
