#!/usr/bin/env bash
# Install what is needed, build the index if missing or stale, serve on http://127.0.0.1:8000
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
exec .venv/bin/qa serve "$@"
