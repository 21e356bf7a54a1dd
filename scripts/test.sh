#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up (idempotent), test recordings, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/fetch_french_sounds.sh data/sounds
exec .venv/bin/python -m pytest -q "$@"
