"""Start a real `qa serve` process on a free loopback port and wait until it is ready.

One helper for every script and test that needs a live server (bench/soak.py,
scripts/fuzz.py, tests/e2e/conftest.py).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    env: dict[str, str],
    log_dir: Path,
    *args: str,
    cwd: Path | None = None,
    timeout: float = 300,
    wait_for: str = "/readyz",
    poll: float = 0.2,
) -> tuple[str, subprocess.Popen[bytes]]:
    """Start ``python -m qa serve`` with ``env`` (its output to ``log_dir/server-PORT.log``)
    and return ``(base_url, process)`` once ``wait_for`` answers 200.

    Raises RuntimeError, naming the log (quoting its end when the process exited), when the
    process exits first or is not ready within ``timeout`` seconds (it is killed then).
    """
    port = free_port()
    log_path = log_dir / f"server-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "qa", "serve", "--port", str(port), *args],
            env=env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_text("utf-8", "replace")[-3000:]
            raise RuntimeError(f"server exited with {proc.returncode}; {log_path} ends:\n{tail}")
        try:
            if httpx.get(f"{url}{wait_for}", timeout=2).status_code == 200:
                return url, proc
        except httpx.HTTPError:
            pass
        time.sleep(poll)
    proc.kill()
    raise RuntimeError(f"server not ready after {timeout}s; see {log_path}")


def stop(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    """Terminate ``proc``, killing it if it has not exited within ``timeout`` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
