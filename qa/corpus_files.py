"""Find the files of a corpus folder without ever leaving it: the corpus is a boundary.

The walk starts at the resolved ``QA_CORPUS_DIR`` and skips hidden files and folders. A
symlink is followed only when its resolved target stays inside the corpus (or
``QA_FOLLOW_EXTERNAL_SYMLINKS`` allows it); a link that leaves the corpus, a broken link, a
link loop and a file that is not a regular file (a FIFO would block a reader forever) are
reported with the reason instead. Each real folder is walked once: a folder link to a
folder already in the corpus is reported, not indexed twice, so links cannot multiply work.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

OUTSIDE = (
    "symlink to a path outside the corpus folder; not read "
    "(QA_FOLLOW_EXTERNAL_SYMLINKS=true allows it)"
)


@dataclass(frozen=True)
class CorpusFile:
    """A file to read: ``rel`` is its path in the corpus as the user sees it (a link's own
    name), ``path`` the resolved real file behind it."""

    rel: str
    path: Path


@dataclass
class Discovery:
    """What a walk of the corpus found: files to read, and (rel, reason) pairs skipped."""

    root: Path
    files: list[CorpusFile] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def inside(path: Path, root: Path) -> bool:
    """True when the resolved ``path`` is ``root`` or below it."""
    return path == root or path.is_relative_to(root)


def _dir_key(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def discover(
    corpus_dir: Path, suffixes: Iterable[str], *, follow_external: bool = False
) -> Discovery:
    """Walk ``corpus_dir`` and return the files with one of ``suffixes`` (lower case, with
    the dot) in path order, and what was skipped and why. Raises OSError when
    ``corpus_dir`` itself does not exist."""
    wanted = {s.lower() for s in suffixes}
    root = corpus_dir.resolve(strict=True)
    found = Discovery(root=root)
    root_key = _dir_key(root.stat())
    walked: dict[tuple[int, int], str] = {root_key: ""}
    # (real folder, rel prefix, keys of the folders above it and itself)
    queue: deque[tuple[Path, str, tuple[tuple[int, int], ...]]] = deque([(root, "", (root_key,))])
    # folder links wait until every real folder is walked, so a real folder always wins
    links: list[tuple[str, Path, tuple[tuple[int, int], ...]]] = []

    def skip(rel: str, reason: str) -> None:
        log.warning("skipped %s: %s", rel, reason)
        found.skipped.append((rel, reason))

    while queue or links:
        if not queue:
            rel_dir, target, ancestors = links.pop(0)
            key = _dir_key(target.stat())
            if key in ancestors:
                skip(rel_dir, "symlink loop: the link points to a folder that contains it")
            elif key in walked:
                first = walked[key] or "."
                skip(rel_dir, f"symlink to a folder already in the corpus ({first}); read once")
            else:
                walked[key] = rel_dir
                queue.append((target, f"{rel_dir}/", (*ancestors, key)))
            continue
        folder, prefix, ancestors = queue.popleft()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            skip(prefix.rstrip("/") or ".", f"folder cannot be read: {exc.strerror or exc}")
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            suffix = Path(entry.name).suffix.lower()
            path = Path(entry.path)
            try:
                if entry.is_symlink():
                    try:
                        path = Path(os.path.realpath(entry.path, strict=True))
                    except OSError as exc:
                        if exc.errno == errno.ELOOP:
                            skip(rel, "symlink loop: the link never reaches a file")
                        else:
                            skip(rel, "broken symlink: its target does not exist")
                        continue
                    st = path.stat()
                    if not follow_external and not inside(path, root):
                        if stat.S_ISDIR(st.st_mode) or suffix in wanted:
                            log.warning("%s links to %s, outside %s", rel, path, root)
                            skip(rel, OUTSIDE)
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        links.append((rel, path, ancestors))
                        continue
                else:
                    st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                skip(rel, f"cannot be read: {exc.strerror or exc}")
                continue
            if stat.S_ISDIR(st.st_mode):
                key = _dir_key(st)
                walked.setdefault(key, rel)
                queue.append((path, f"{rel}/", (*ancestors, key)))
            elif suffix not in wanted:
                continue
            elif stat.S_ISREG(st.st_mode):
                found.files.append(CorpusFile(rel, path))
            else:
                skip(rel, "not a regular file (a FIFO, socket or device); not read")
    found.files.sort(key=lambda f: f.rel)
    found.skipped.sort()
    return found


__all__ = ["OUTSIDE", "CorpusFile", "Discovery", "discover", "inside"]
