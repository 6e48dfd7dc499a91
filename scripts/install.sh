#!/usr/bin/env bash
# Install perceiverar into a virtual environment inside the checkout (.venv), plus the
# Debian packages it uses (fluidsynth + a General MIDI soundfont to render MIDI, chromium
# for the browser tests). Idempotent: a second run only checks what is there.
#   bash scripts/install.sh          # the app and library
#   bash scripts/install.sh --dev    # also the test tools
set -euo pipefail
cd "$(dirname "$0")/.."
extra=""
[[ "${1:-}" == "--dev" ]] && extra="[dev]"

bash scripts/setup-debian.sh

PY="${PYTHON:-python3}"
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
  echo "perceiverar needs Python >= 3.10 (found $("$PY" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".${extra}"
echo "perceiverar installed in $(pwd)/.venv"
