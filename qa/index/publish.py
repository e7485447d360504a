"""The publish protocol of a local index folder: generations, the pointer, the lock.

Layout under ``index_dir``::

    CURRENT              name of the generation in service (replaced atomically)
    .lock                held while a build or update runs
    gen-000007/          one generation (its files: qa.index.files)

A generation is written in ``gen-NNNNNN.tmp``, verified, renamed, and only then named in
``CURRENT``; a crash at any point leaves the previous generation in service. Numbers are
never reused, so a reader tells generations apart by name. Readers poll ``CURRENT``
(``current_generation_dir``); several processes can serve one folder.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from qa.errors import IndexBusy, IndexNotReady

log = logging.getLogger(__name__)

CURRENT_FILE = "CURRENT"
LOCK_FILE = ".lock"


def checkpoint(stage: str) -> None:
    """Fault-injection point for crash tests: with QA_TEST_PAUSE_AT=<stage> in the
    environment the process says so on stderr and stops there, to be killed; with
    QA_TEST_TRACE=1 it writes ``reached <stage>`` at every stage and goes on."""
    if os.environ.get("QA_TEST_TRACE"):
        sys.stderr.write(f"reached {stage}\n")
        sys.stderr.flush()
    if os.environ.get("QA_TEST_PAUSE_AT") == stage:
        sys.stderr.write(f"paused at {stage}\n")
        sys.stderr.flush()
        time.sleep(3600)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def generation_name(number: int) -> str:
    return f"gen-{number:06d}"


def generation_number(gen_dir: Path) -> int:
    return int(gen_dir.name.split("-")[1])


def current_generation_dir(index_dir: Path) -> Path | None:
    """The generation folder ``CURRENT`` names (None when there is no index yet)."""
    pointer = index_dir / CURRENT_FILE
    if not pointer.exists():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    return index_dir / name if name else None


def list_generations(index_dir: Path) -> list[Path]:
    """Complete generation folders, oldest first (``.tmp`` folders of a build excluded)."""
    if not index_dir.exists():
        return []
    return sorted(
        p
        for p in index_dir.iterdir()
        if p.is_dir() and p.name.startswith("gen-") and not p.name.endswith(".tmp")
    )


@contextlib.contextmanager
def index_lock(index_dir: Path, *, wait: bool = False) -> Iterator[None]:
    """Exclusive lock for a build; a second build is refused with IndexBusy (or waits)."""
    index_dir.mkdir(parents=True, exist_ok=True)
    fh = (index_dir / LOCK_FILE).open("a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise IndexBusy(
                    f"another build or update of {index_dir} is running; try again when it ends"
                ) from None
            log.warning("another build or update of %s is running; waiting for it", index_dir)
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield
    finally:
        fh.close()


def next_generation(index_dir: Path) -> Path:
    """An empty ``gen-NNNNNN.tmp`` folder for the next generation (caller holds the lock).

    Orphans (generations newer than the one in service: left by a crash before the
    switch, or rolled back from) are counted first, so their numbers are not reused, and
    then removed."""
    index_dir.mkdir(parents=True, exist_ok=True)
    number = max((generation_number(p) for p in list_generations(index_dir)), default=0) + 1
    remove_orphans(index_dir)
    tmp = index_dir / f"{generation_name(number)}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def publish(index_dir: Path, tmp: Path, keep: int) -> Path:
    """Rename a written and verified ``.tmp`` generation into place, put it in service and
    prune old generations down to ``keep``. Returns the generation folder."""
    final = tmp.with_name(tmp.name.removesuffix(".tmp"))
    checkpoint("written")
    tmp.rename(final)
    fsync_dir(index_dir)
    checkpoint("renamed")
    switch_to(index_dir, final)
    prune_generations(index_dir, keep)
    return final


def remove_orphans(index_dir: Path) -> None:
    """Remove generations newer than the one in service: left by a crash before the
    switch, or rolled back from. They were never (or are no longer) in service."""
    current = current_generation_dir(index_dir)
    if current is None:
        return
    for gen in list_generations(index_dir):
        if generation_number(gen) > generation_number(current):
            shutil.rmtree(gen, ignore_errors=True)


def switch_to(index_dir: Path, gen_dir: Path) -> None:
    """Put ``gen_dir`` in service by atomically replacing the CURRENT pointer."""
    pointer_tmp = index_dir / f"{CURRENT_FILE}.tmp"
    pointer_tmp.write_text(gen_dir.name + "\n", encoding="utf-8")
    with pointer_tmp.open("rb") as fh:
        os.fsync(fh.fileno())
    checkpoint("pointer")
    os.replace(pointer_tmp, index_dir / CURRENT_FILE)
    fsync_dir(index_dir)


def rollback(index_dir: Path, verify: Callable[[Path], object]) -> Path:
    """Put the generation before the one in service back in service, after ``verify``
    (which raises when it cannot be served). Raises IndexNotReady when there is none."""
    with index_lock(index_dir):
        current = current_generation_dir(index_dir)
        if current is None:
            raise IndexNotReady(f"no index in {index_dir} to roll back")
        older = [
            g
            for g in list_generations(index_dir)
            if generation_number(g) < generation_number(current)
        ]
        if not older:
            raise IndexNotReady(
                f"no generation older than {current.name} is kept in {index_dir}; "
                "nothing to roll back to"
            )
        target = older[-1]
        verify(target)  # verify before it goes into service
        switch_to(index_dir, target)
        return target


def prune_generations(index_dir: Path, keep: int) -> None:
    """Remove old generations and leftovers of crashed builds; keep ``keep`` newest."""
    current = current_generation_dir(index_dir)
    gens = list_generations(index_dir)
    if current is not None:
        gens = [g for g in gens if generation_number(g) <= generation_number(current)]
    survivors = set(gens[-keep:]) | ({current} if current else set())
    for gen in gens:
        if gen not in survivors:
            shutil.rmtree(gen, ignore_errors=True)
    for leftover in index_dir.glob("gen-*.tmp"):
        shutil.rmtree(leftover, ignore_errors=True)
