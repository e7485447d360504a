"""End-to-end fixtures: the real bundled model, the real CLI, a real uvicorn server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import DEFAULT_CORPUS

QA = [sys.executable, "-m", "qa"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    """Start `qa serve` on a free port; return once ``wait_for`` answers 200."""
    port = free_port()
    log = open(Path(env["QA_INDEX_DIR"]).parent / f"server-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [*QA, "serve", "--port", str(port), *args], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}; see {log.name}")
        try:
            if httpx.get(f"{url}{wait_for}", timeout=2).status_code == 200:
                return url, proc
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server not ready after {timeout}s; see {log.name}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()


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
