"""`python -m tests.fake_build CORPUS INDEX [--wait]`: an update with the fake embedder, in
its own process, so crash tests can kill it. QA_TEST_PAUSE_AT stops it at a named stage,
QA_TEST_TRACE=1 makes it say ``reached <stage>`` at each one, and QA_FAKE_EMBED_SECONDS
makes each embedding call take that long (so a kill can land in the middle of the work)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qa.builder import build_index
from qa.index import IndexSpec
from tests.fakes import FakeEmbedder


class SlowFakeEmbedder(FakeEmbedder):
    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds

    def embed(self, texts: Sequence[str], *args, **kwargs) -> np.ndarray:
        time.sleep(self.seconds)
        return super().embed(texts, *args, **kwargs)


if __name__ == "__main__":
    delay = float(os.environ.get("QA_FAKE_EMBED_SECONDS", "0"))
    report = build_index(
        Path(sys.argv[1]),
        Path(sys.argv[2]),
        SlowFakeEmbedder(delay) if delay else FakeEmbedder(),
        IndexSpec("fake-embedder", 192, 32),
        skip_if_unchanged=True,
        wait=len(sys.argv) > 3 and sys.argv[3] == "--wait",
    )
    print(f"generation {report.generation}")
