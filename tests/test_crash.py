"""SIGKILL at any point of an update leaves the last good generation in service.

Every kill is aimed from an event the child reports on stderr (``paused at <stage>`` or
``reached <stage>``), so it always lands inside the build, past the imports, at the stage
named; a test never guesses with a delay.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from qa.index import current_generation_dir, load_current
from tests.conftest import ROOT

STAGES = ["loaded", "chunked", "embedded", "written", "renamed", "pointer"]


def run_update(
    corpus: Path, index: Path, *extra: str, pause: str | None = None, **env_extra: str
) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")}
    env["PYTHONPATH"] = str(ROOT)
    if pause:
        env["QA_TEST_PAUSE_AT"] = pause
    env.update(env_extra)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.fake_build", str(corpus), str(index), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_line(proc: subprocess.Popen[str], wanted: str) -> list[str]:
    """Read the child's stderr until the line ``wanted``; return the lines read. Fails if
    the child ends first (it never reached that point)."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line.strip())
        if wanted in line:
            return seen
    raise AssertionError(f"{wanted!r} never came; the child said {seen}, rc {proc.wait()}")


def rest_of_stderr(proc: subprocess.Popen[str], timeout: float) -> str:
    """Wait for the child to end; what it wrote to stderr after the lines already read
    (read through the same file object, so nothing read ahead is lost)."""
    assert proc.stderr is not None and proc.stdout is not None
    proc.wait(timeout)
    proc.stdout.read()
    return proc.stderr.read()


def kill(proc: subprocess.Popen[str]) -> str:
    """SIGKILL the child; assert the kill is what ended it; return the rest of its stderr."""
    proc.send_signal(signal.SIGKILL)
    rest = rest_of_stderr(proc, 10)
    assert proc.returncode == -signal.SIGKILL, f"it ended by itself first (rc {proc.returncode})"
    return rest


def assert_old_generation_serves(index: Path, generation: int) -> None:
    after_crash = load_current(index)  # verifies every checksum of what is in service
    assert after_crash.generation == generation
    assert after_crash.document("new.md") is None


def assert_next_update_completes(corpus: Path, index: Path, generation: int) -> None:
    finish = run_update(corpus, index)
    _out, err = finish.communicate(timeout=60)
    assert finish.returncode == 0, err
    done = load_current(index)
    assert done.document("new.md") is not None
    assert done.generation > generation
    assert not list(index.glob("*.tmp"))
    assert current_generation_dir(index) == done.path


@pytest.mark.parametrize("stage", STAGES)
def test_kill_during_update_keeps_the_old_generation(
    corpus_dir: Path, tmp_path: Path, stage: str
) -> None:
    index = tmp_path / "index"
    assert run_update(corpus_dir, index).wait(60) == 0
    before = load_current(index)
    (corpus_dir / "new.md").write_text("# New\n\nA new document about pasta.\n", "utf-8")

    proc = run_update(corpus_dir, index, pause=stage, QA_TEST_TRACE="1")
    seen = wait_for_line(proc, f"paused at {stage}")
    # the stages before this one really ran, in order, in this process
    assert [s for s in seen if s.startswith("reached ")] == [
        f"reached {s}" for s in STAGES[: STAGES.index(stage) + 1]
    ]
    kill(proc)

    assert_old_generation_serves(index, before.generation)
    assert_next_update_completes(corpus_dir, index, before.generation)


@pytest.mark.parametrize("stage", ["loaded", "chunked"])
def test_kill_while_the_build_is_working(corpus_dir: Path, tmp_path: Path, stage: str) -> None:
    """Not paused: killed while it runs, right after it reports ``stage`` (each embedding
    call takes 0.5 s, so the build is still chunking or embedding when the signal lands)."""
    index = tmp_path / "index"
    assert run_update(corpus_dir, index).wait(60) == 0
    before = load_current(index)
    (corpus_dir / "new.md").write_text("# New\n\nA new document about pasta.\n", "utf-8")

    proc = run_update(corpus_dir, index, QA_TEST_TRACE="1", QA_FAKE_EMBED_SECONDS="0.5")
    wait_for_line(proc, f"reached {stage}")
    rest = kill(proc)
    assert "reached embedded" not in rest, "the kill landed after embedding"

    assert_old_generation_serves(index, before.generation)
    assert_next_update_completes(corpus_dir, index, before.generation)


def test_two_updates_at_once_second_is_refused_or_waits(corpus_dir: Path, tmp_path: Path) -> None:
    index = tmp_path / "index"
    assert run_update(corpus_dir, index).wait(60) == 0
    (corpus_dir / "new.md").write_text("# New\n\nText.\n", "utf-8")
    first = run_update(corpus_dir, index, pause="embedded")
    wait_for_line(first, "paused at embedded")
    second = run_update(corpus_dir, index)
    _, err = second.communicate(timeout=60)
    assert second.returncode != 0
    assert "another build or update" in err
    waiting = run_update(corpus_dir, index, "--wait", QA_TEST_TRACE="1")
    # it says it waits for the lock; and it has not started building while the lock is held
    wait_for_line(waiting, "is running; waiting for it")
    assert waiting.poll() is None
    kill(first)
    err = rest_of_stderr(waiting, 60)
    assert waiting.returncode == 0, err
    assert err.splitlines()[0] == "reached loaded", "it built only once the lock was free"
    assert load_current(index).document("new.md") is not None
