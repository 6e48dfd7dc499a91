#!/usr/bin/env bash
# Install perceiverar and start the web app on the bundled checkpoints (http://127.0.0.1:7860).
# Extra arguments go to perceiverar-app (see perceiverar-app --help).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/perceiverar-app "$@"
