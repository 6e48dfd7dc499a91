#!/usr/bin/env bash
# Install what the web app needs (the perceiverar package into .venv; no Debian packages: fluidsynth is for
# training on MIDI, chromium for the browser tests), then start it on the bundled checkpoints:
# http://127.0.0.1:7860. Extra arguments go to perceiverar-app (see perceiverar-app --help).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "perceiverar needs Python >= 3.10 (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e .
exec .venv/bin/perceiverar-app "$@"
