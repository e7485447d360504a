"""An update reads only the files that changed since the index (size and mtime stamps, as
git's index does), and never trusts a stamp made in the same tick as the file's write."""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from qa.builder import build_index
from qa.extraction import shared_extractor
from qa.index import IndexSpec, read_manifest
from qa.loaders import FileStamp, load_corpus
from tests.fakes import FakeEmbedder

SPEC = IndexSpec("fake-embedder", 192, 32)


class SpyExtractor:
    """The real extractor, recording which files it was asked to read."""

    def __init__(self) -> None:
        self.read: list[str] = []

    def extract_many(self, files: Iterable[Any], root: Path, limits: Any) -> Iterator[Any]:
        files = list(files)
        self.read.extend(f.rel for f in files)
        yield from shared_extractor().extract_many(files, root, limits)


def make_corpus(root: Path, n: int = 6) -> Path:
    corpus = root / "corpus"
    corpus.mkdir()
    for i in range(n):
        (corpus / f"note-{i}.md").write_text(f"# Note {i}\n\nNote {i} is about item {i}.\n")
    (corpus / "rows.jsonl").write_text(
        '{"_id": "a", "text": "first row"}\nnot json\n{"_id": "b", "text": "second row"}\n'
    )
    past = time.time() - 60  # well before any scan: stamps of these files are trusted
    for p in corpus.iterdir():
        os.utime(p, (past, past))
    return corpus


def test_unchanged_files_are_not_read_again(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path)
    first = load_corpus(corpus)
    assert set(first.stamps) == {f"note-{i}.md" for i in range(6)} | {"rows.jsonl"}
    (corpus / "note-2.md").write_text("# Note 2\n\nRewritten.\n")
    spy = SpyExtractor()
    again = load_corpus(corpus, extractor=spy, known=first.stamps, trust_before_ns=time.time_ns())
    assert spy.read == ["note-2.md"]
    assert [d.doc_id for d in again.documents] == ["note-2.md"]
    kept = dict(again.kept)
    assert "note-2.md" not in kept and "rows.jsonl#a" in kept and len(kept) == 7
    # the bad row of the kept file is still reported, as when it was read
    assert again.skipped_rows() == first.skipped_rows() != []


def test_a_stamp_younger_than_its_scan_is_not_trusted(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path)
    first = load_corpus(corpus)
    stamp = first.stamps["note-0.md"]
    spy = SpyExtractor()
    # the scan that made the stamps began before the file's time: same size, same mtime,
    # but written in the same tick as the scan, so it is read again
    load_corpus(corpus, extractor=spy, known=first.stamps, trust_before_ns=stamp.mtime_ns)
    assert "note-0.md" in spy.read


def test_a_same_size_edit_with_a_new_mtime_is_seen(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path)
    index = tmp_path / "index"
    build_index(corpus, index, FakeEmbedder(), SPEC)
    note = corpus / "note-3.md"
    note.write_text(note.read_text().replace("item 3", "item X"))  # same size
    report = build_index(corpus, index, FakeEmbedder(), SPEC, skip_if_unchanged=True)
    assert report.changed == ["note-3.md"]
    unchanged = build_index(corpus, index, FakeEmbedder(), SPEC, skip_if_unchanged=True)
    assert unchanged.up_to_date


def test_the_manifest_records_every_file_stamp(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path)
    report = build_index(corpus, tmp_path / "index", FakeEmbedder(), SPEC)
    manifest = read_manifest(report.path)
    stamps = {rel: FileStamp.from_json(row) for rel, row in manifest["sources"].items()}
    assert stamps["rows.jsonl"].docs == (
        ("rows.jsonl#a", manifest["documents"]["rows.jsonl#a"]["sha256"]),
        ("rows.jsonl#b", manifest["documents"]["rows.jsonl#b"]["sha256"]),
    )
    assert stamps["rows.jsonl"].problems and 0 < manifest["scanned_ns"] <= time.time_ns()


def test_an_edit_with_its_mtime_put_back_is_seen(tmp_path: Path) -> None:
    """Tools that normalise modification times (SOURCE_DATE_EPOCH builds, `touch -r`,
    some sync tools) can hide an edit from size + mtime; the status-change time, which no
    user tool sets back, still shows it."""
    corpus = make_corpus(tmp_path)
    first = load_corpus(corpus)
    note = corpus / "note-4.md"
    st = note.stat()
    note.write_text(note.read_text().replace("item 4", "item Z"))  # same size
    os.utime(note, ns=(st.st_atime_ns, st.st_mtime_ns))  # modification time put back
    assert (note.stat().st_size, note.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    spy = SpyExtractor()
    load_corpus(corpus, extractor=spy, known=first.stamps, trust_before_ns=time.time_ns())
    assert spy.read == ["note-4.md"]


def test_a_stamp_from_before_ctime_was_kept_is_not_trusted(tmp_path: Path) -> None:
    corpus = make_corpus(tmp_path)
    first = load_corpus(corpus)
    old = {
        rel: FileStamp.from_json({k: v for k, v in s.as_json().items() if k not in ("ctime_ns",)})
        for rel, s in first.stamps.items()
    }
    spy = SpyExtractor()
    load_corpus(corpus, extractor=spy, known=old, trust_before_ns=time.time_ns())
    assert sorted(spy.read) == sorted(first.stamps)
