#!/usr/bin/env bash
# Install what is needed and run the whole suite: ruff, mypy, pytest (unit, end-to-end, browser).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/bootstrap.sh"
cd "$root"
# The web page's browser tests drive Debian's chromium (never a browser build of Playwright's
# own, which cannot be downloaded here). A fresh machine does not have it: install it.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "== installing chromium for the browser tests"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "== chromium is missing and cannot be installed (needs root and apt-get);" \
      "the browser tests will be skipped" >&2
  fi
fi
echo "== ruff"
.venv/bin/ruff check qa tests bench
.venv/bin/ruff format --check qa tests bench
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
.venv/bin/python -m pytest "$@"
echo "== schemathesis (fuzzing the running server from its OpenAPI schema)"
.venv/bin/python scripts/fuzz.py --max-examples "${QA_FUZZ_EXAMPLES:-15}"
