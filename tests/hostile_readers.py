"""Imported by an extraction worker (``Extractor(preload=["tests.hostile_readers"])``):
makes the text reader misbehave for files whose name starts with ``hang``, ``hog`` or
``crash``, so tests can check that the build survives a reader that never returns, one
that wants too much memory and one that dies; ``keep`` files leave 300 MB behind in the
worker. Other files are read as usual."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from qa import loaders
from qa.documents import Document

_read_text = loaders._load_text
_kept: list[bytes] = []


def _hostile_text(path: Path, rel: str, *, markdown: bool) -> Document:
    name = Path(rel).name
    if name.startswith("hang"):
        while True:  # a parser that never returns
            time.sleep(1)
    if name.startswith("hog"):
        hog = bytearray(4 << 30)  # 4 GB, far over the test's memory cap
        hog[-1] = 1
    if name.startswith("keep"):
        _kept.append(b"k" * (300 << 20))  # resident, not just reserved
    if name.startswith("crash"):
        os.kill(os.getpid(), signal.SIGSEGV)
    return _read_text(path, rel, markdown=markdown)


loaders._load_text = _hostile_text  # type: ignore[assignment]
