#!/bin/sh
# A custom edgeopt profile for a Raspberry Pi 5: detect the board, make the edits a person would, check, plan.
#
#   sh make_profile.sh [OUT_DIR] [MODEL]
#
# Run it ON the board (Raspberry Pi OS 64-bit, edgeopt installed in a venv; see README.md). It writes
#   OUT_DIR/pi5.detected.yaml   what `edgeopt profiles detect` measured, untouched
#   OUT_DIR/pi5.yaml            the edited profile (edit_profile.py; its docstring lists the edits and the
#                               PI5_* environment variables that change them), validated
# and prints `edgeopt plan` for MODEL on it. OUT_DIR defaults to the current folder, MODEL to the built-in
# all-MiniLM-L6-v2. It runs on any Linux (the tests run it on x86-64), but only a Pi's own numbers mean much.
#
#   PI5_DETECTED=FILE   skip detection and edit this earlier detect output (detect on the board, edit and plan
#                       on your workstation)
#   EDGEOPT, PYTHON     the commands to use (default: edgeopt, python3 - the Python edgeopt is installed in)
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
OUT_DIR=${1:-.}
MODEL=${2:-}
EDGEOPT=${EDGEOPT:-edgeopt}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT_DIR"
DETECTED="$OUT_DIR/pi5.detected.yaml"
PROFILE="$OUT_DIR/pi5.yaml"

# 1. Measure: cores, RAM, CPU flags (asimddp -> int8 dot product, asimdhp -> fp16), max clock, copy bandwidth.
if [ -n "${PI5_DETECTED:-}" ]; then
    cp "$PI5_DETECTED" "$DETECTED"
else
    $EDGEOPT profiles detect --name "${PI5_NAME:-rpi5}" --out "$DETECTED"
fi

# 2. Edit what detect cannot know: name, RAM and storage budgets, thermal derating, threads, runtimes, targets.
"$PYTHON" "$HERE/edit_profile.py" "$DETECTED" "$PROFILE"

# 3. Check it (every problem at once), then see what edgeopt would build for this board.
$EDGEOPT profiles validate "$PROFILE"
$EDGEOPT plan --profile "$PROFILE" ${MODEL:+--model "$MODEL"}
