#!/usr/bin/env bash
# Install everything the tests need, then run them. Extra arguments go to pytest.
# pytest's exit code 5 ("no tests collected") counts as a failure: a test command that
# ran nothing must not pass.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --dev || { echo "installation failed" >&2; exit 1; }
.venv/bin/python -m pytest -q --durations=25 "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit $rc
