"""Fuzz the running server with schemathesis, from its own OpenAPI schema.

    .venv/bin/python scripts/fuzz.py [--max-examples 15]

Starts `qa serve` (real model) on a copy of the default corpus with an admin token, then
runs `schemathesis run` against /openapi.json with at most ``--max-examples`` test cases
per operation (positive and negative data), sending the token so that the admin routes
are exercised too. Fails on any 5xx, any status the schema does not document, any body or
content type that does not match it, and valid data refused or invalid data accepted.
Prints the number of requests made (counted from schemathesis' HAR report).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script: make the repo's bench package importable

from bench.server import start_server  # noqa: E402
from bench.server import stop as stop_server  # noqa: E402

TOKEN = "fuzz-token"
CHECKS = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
    "negative_data_rejection",
    "unsupported_method",
    "allow_header_conformance",
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-examples", type=int, default=15)
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="qa-fuzz-"))
    shutil.copytree(ROOT / "corpus", work / "corpus")
    env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")}
    env |= {
        "QA_CORPUS_DIR": str(work / "corpus"),
        "QA_INDEX_DIR": str(work / "index"),
        "QA_ADMIN_TOKEN": TOKEN,
    }
    try:
        url, server = start_server(env, work, cwd=ROOT, timeout=300, poll=0.3)
    except RuntimeError as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        har = work / "requests.har"
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "schemathesis"),
                "run",
                f"{url}/openapi.json",
                "--checks",
                ",".join(CHECKS),
                "--max-examples",
                str(args.max_examples),
                "--seed",
                str(args.seed),
                "--workers",
                "1",  # two workers sometimes trip over hypothesis' shared caches
                "--phases",
                "examples,coverage,fuzzing",
                "--header",
                f"Authorization: Bearer {TOKEN}",
                "--request-timeout",
                "30",
                "--no-shrink",
                "--report",
                "har",
                "--report-har-path",
                str(har),
            ],
            env={**env, "NO_COLOR": "1"},
            cwd=work,
            check=False,
        )
        requests = len(json.loads(har.read_text())["log"]["entries"]) if har.exists() else 0
        print(f"schemathesis made {requests} requests to {url}; exit code {run.returncode}")
        if run.returncode != 0:
            print(f"server log: {work}", file=sys.stderr)
            return run.returncode
    finally:
        stop_server(server, timeout=30)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
