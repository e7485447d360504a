"""`python -m tests.fake_build CORPUS INDEX`: an update with the fake embedder, in its own
process, so crash tests can kill it (QA_TEST_PAUSE_AT stops it at a named stage)."""

from __future__ import annotations

import sys
from pathlib import Path

from qa.builder import build_index
from qa.index import IndexSpec
from tests.fakes import FakeEmbedder

if __name__ == "__main__":
    report = build_index(
        Path(sys.argv[1]),
        Path(sys.argv[2]),
        FakeEmbedder(),
        IndexSpec("fake-embedder", 192, 32),
        skip_if_unchanged=True,
        wait=len(sys.argv) > 3 and sys.argv[3] == "--wait",
    )
    print(f"generation {report.generation}")
