#!/usr/bin/env bash
# Set up everything, then place a simulated call (a recorded French question) to the assistant.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
mkdir -p data/demo
.venv/bin/ivr simulate ivr/assets/demo_question.wav --out data/demo/reply.wav "$@"
