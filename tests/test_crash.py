"""SIGKILL at any point of an update leaves the last good generation in service."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from qa.index import current_generation_dir, load_current
from tests.conftest import ROOT

STAGES = ["loaded", "chunked", "embedded", "written", "renamed", "pointer"]


def run_update(corpus: Path, index: Path, *extra: str, pause: str | None = None):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("QA_TEST_PAUSE_AT", None)
    if pause:
        env["QA_TEST_PAUSE_AT"] = pause
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fake_build", str(corpus), str(index), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_pause(proc: subprocess.Popen, stage: str) -> None:
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert line.strip() == f"paused at {stage}", line


@pytest.mark.parametrize("stage", STAGES)
def test_kill_during_update_keeps_the_old_generation(
    corpus_dir: Path, tmp_path: Path, stage: str
) -> None:
    index = tmp_path / "index"
    assert run_update(corpus_dir, index).wait(60) == 0
    before = load_current(index)
    (corpus_dir / "new.md").write_text("# New\n\nA new document about pasta.\n", "utf-8")

    proc = run_update(corpus_dir, index, pause=stage)
    wait_for_pause(proc, stage)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)

    after_crash = load_current(index)  # verifies every checksum of what is in service
    assert after_crash.generation == before.generation
    assert "new.md" not in after_crash.documents

    finish = run_update(corpus_dir, index)
    _out, err = finish.communicate(timeout=60)
    assert finish.returncode == 0, err
    done = load_current(index)
    assert "new.md" in done.documents
    assert done.generation > before.generation
    assert not list(index.glob("*.tmp"))
    assert current_generation_dir(index) == done.path


def test_kill_at_random_moments(corpus_dir: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    assert run_update(corpus_dir, index).wait(60) == 0
    for i, delay in enumerate([0.05, 0.2, 0.4, 0.8]):
        (corpus_dir / f"doc{i}.md").write_text(f"# Doc {i}\n\nBody {i}.\n", "utf-8")
        proc = run_update(corpus_dir, index)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        load_current(index)  # whatever is in service is complete and verified
    assert run_update(corpus_dir, index).wait(60) == 0
    assert {f"doc{i}.md" for i in range(4)} <= set(load_current(index).documents)


def test_two_updates_at_once_second_is_refused_or_waits(corpus_dir: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    assert run_update(corpus_dir, index).wait(60) == 0
    (corpus_dir / "new.md").write_text("# New\n\nText.\n", "utf-8")
    first = run_update(corpus_dir, index, pause="embedded")
    wait_for_pause(first, "embedded")
    second = run_update(corpus_dir, index)
    _, err = second.communicate(timeout=60)
    assert second.returncode != 0
    assert "another build or update" in err
    waiting = run_update(corpus_dir, index, "--wait")
    time.sleep(0.5)
    assert waiting.poll() is None, "a waiting update blocks while the lock is held"
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    _out, err = waiting.communicate(timeout=60)
    assert waiting.returncode == 0, err
    assert "new.md" in load_current(index).documents
