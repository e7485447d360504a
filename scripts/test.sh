#!/usr/bin/env bash
# Install what is needed and run the whole suite: ruff, mypy, pytest (unit + end-to-end).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
echo "== ruff"
.venv/bin/ruff check qa tests bench
.venv/bin/ruff format --check qa tests bench
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
