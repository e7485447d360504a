"""End-to-end fixtures: the real bundled model, the real CLI, a real uvicorn server."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench import server as bench_server
from bench.server import stop
from tests.conftest import DEFAULT_CORPUS

QA = [sys.executable, "-m", "qa"]


@dataclass
class Server:
    url: str
    corpus: Path
    index: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]


def qa_env(corpus: Path, index: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")}
    env.update(QA_CORPUS_DIR=str(corpus), QA_INDEX_DIR=str(index), **extra)
    return env


def run_qa(env: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*QA, *args], env=env, capture_output=True, text=True, check=check, timeout=600
    )


def start_server(
    env: dict[str, str], *args: str, timeout: float = 300, wait_for: str = "/readyz"
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start `qa serve` on a free port (log beside the index); return once ``wait_for``
    answers 200."""
    log_dir = Path(env["QA_INDEX_DIR"]).parent
    return bench_server.start_server(env, log_dir, *args, timeout=timeout, wait_for=wait_for)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """`qa serve` on a copy of the default corpus, building its index on start."""
    root = tmp_path_factory.mktemp("e2e")
    corpus = root / "corpus"
    shutil.copytree(DEFAULT_CORPUS, corpus)
    env = qa_env(corpus, root / "index")
    url, proc = start_server(env)
    yield Server(url, corpus, root / "index", env, proc)
    stop(proc)
