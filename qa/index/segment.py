"""Index segments: immutable folders of chunks, written once, shared by generations.

A generation (qa.index.files) is a manifest naming its segments and, for each live
document, the segment that holds it; an update writes one new segment with only the
documents that were added, changed or renamed, and the chunks of a changed or removed
document stay in their old segment, dead in the new generation (they neither match nor
count in statistics). This is the segment design of Lucene and of Milvus: writes cost what
changed, readers of an older generation keep reading its segments, and a compaction
(qa.builder) rewrites the live chunks into one segment when dead ones pile up.

Files of ``segments/seg-NNNNNN/`` (NNNNNN: the generation that wrote it)::

    manifest.json        format, counts, the checksum and size of every file below
    documents.jsonl      the exact text every offset points into
    chunks.jsonl         stable id (qa.index.ids), document, span, lines, page, heading
    sentences.npy        int64 (segment row, start, end) of each highlightable sentence
    sentence_vectors.npy float32 (n_sentences, dim)
    vectors.faiss        chunk vectors, FAISS ids = chunk ids
    terms.json, tf_*.npy, lengths.npy   term frequencies for BM25 (qa.index.terms)
    identifiers.json     identifier -> rows holding it (exact matching, qa.lexical)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qa.documents import Chunk, Document
from qa.errors import IndexCorrupt
from qa.index.faiss_store import FaissStore
from qa.index.publish import fsync_dir
from qa.index.spec import FORMAT_VERSION
from qa.index.terms import TermCounts
from qa.lexical import postings

SEGMENTS_DIR = "segments"
MANIFEST = "manifest.json"


@dataclass
class SegmentPayload:
    """What one segment holds. Row i of ``chunks``, ``chunk_ids`` and ``chunk_vectors`` is
    one chunk; ``sentences`` rows are (chunk row, start, end), in chunk order."""

    documents: list[Document]
    chunks: list[Chunk]
    chunk_ids: np.ndarray  # (n_chunks,) int64
    chunk_vectors: np.ndarray  # (n_chunks, dim) float32
    sentences: np.ndarray  # (n_sentences, 3) int64
    sentence_vectors: np.ndarray  # (n_sentences, dim) float32
    dimension: int


@dataclass
class Segment:
    """A loaded segment (the same tables as its payload) and its BM25 term counts."""

    name: str
    path: Path
    documents: dict[str, Document]
    chunks: list[Chunk]
    ids: np.ndarray
    store: FaissStore
    vectors: np.ndarray
    sentences: np.ndarray
    sentence_vectors: np.ndarray
    terms: TermCounts
    identifiers: dict[str, list[int]]  # identifier -> segment rows (qa.lexical.postings)


def segment_name(generation: int) -> str:
    return f"seg-{generation:06d}"


def sha256_file(path: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False))
            fh.write("\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
        elif p.is_dir():
            fsync_dir(p)
    fsync_dir(root)


def write_segment(segments_dir: Path, name: str, payload: SegmentPayload) -> str:
    """Write ``payload`` as segment ``name`` (via ``name.tmp``, fsynced, verified, renamed).
    Returns the SHA-256 of its manifest, which the generation records."""
    segments_dir.mkdir(parents=True, exist_ok=True)
    final = segments_dir / name
    tmp = segments_dir / f"{name}.tmp"
    for leftover in (tmp, final):  # of a crashed build: never in any generation
        if leftover.exists():
            import shutil

            shutil.rmtree(leftover)
    tmp.mkdir()
    write_jsonl(
        tmp / "documents.jsonl",
        [
            {
                "doc_id": d.doc_id,
                "path": d.path,
                "title": d.title,
                "sha256": d.sha256,
                "page_starts": list(d.page_starts),
                "text": d.text,
            }
            for d in payload.documents
        ],
    )
    write_jsonl(
        tmp / "chunks.jsonl",
        [
            {
                "id": int(cid),
                "doc_id": c.doc_id,
                "start": c.start,
                "end": c.end,
                "line_start": c.line_start,
                "line_end": c.line_end,
                "page": c.page,
                "heading": c.heading,
            }
            for c, cid in zip(payload.chunks, payload.chunk_ids, strict=True)
        ],
    )
    np.save(tmp / "sentences.npy", payload.sentences.astype(np.int64), allow_pickle=False)
    np.save(
        tmp / "sentence_vectors.npy",
        payload.sentence_vectors.astype(np.float32),
        allow_pickle=False,
    )
    store = FaissStore(payload.dimension)
    store.add(payload.chunk_ids, payload.chunk_vectors)
    store.save(tmp)
    TermCounts.build([c.text for c in payload.chunks]).save(tmp)
    table = postings([c.text for c in payload.chunks])
    (tmp / "identifiers.json").write_text(json.dumps(table, ensure_ascii=False), "utf-8")
    manifest = {
        "format_version": FORMAT_VERSION,
        "segment": name,
        "dimension": payload.dimension,
        "counts": {
            "documents": len(payload.documents),
            "chunks": len(payload.chunks),
            "sentences": len(payload.sentences),
        },
        "files": {
            p.relative_to(tmp).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        },
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), "utf-8")
    fsync_tree(tmp)
    verify_segment(tmp)
    tmp.rename(final)
    fsync_dir(segments_dir)
    return sha256_file(final / MANIFEST)


def verify_segment(seg_dir: Path, manifest_sha256: str | None = None) -> dict[str, Any]:
    """Check the segment's manifest (against the generation's record of it) and every file
    against its size and checksum. Raises IndexCorrupt naming what is wrong."""
    path = seg_dir / MANIFEST
    if not path.is_file():
        raise IndexCorrupt(f"index segment {seg_dir} is missing; rebuild with `qa index build`")
    if manifest_sha256 is not None and sha256_file(path) != manifest_sha256:
        raise IndexCorrupt(f"{path} fails its checksum (corrupted); rebuild with `qa index build`")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexCorrupt(f"{path} is not valid JSON ({exc}); rebuild it") from None
    for name, meta in manifest["files"].items():
        file = seg_dir / name
        if not file.is_file():
            raise IndexCorrupt(f"index file {file} is missing; rebuild with `qa index build`")
        if file.stat().st_size != meta["bytes"]:
            raise IndexCorrupt(
                f"index file {file} has {file.stat().st_size} bytes, the manifest says "
                f"{meta['bytes']} (truncated?); rebuild with `qa index build`"
            )
        if sha256_file(file) != meta["sha256"]:
            raise IndexCorrupt(
                f"index file {file} fails its checksum (corrupted); rebuild with `qa index build`"
            )
    return manifest


def load_segment(seg_dir: Path, manifest_sha256: str | None, dimension: int) -> Segment:
    """Verify and load one segment. Raises IndexCorrupt."""
    verify_segment(seg_dir, manifest_sha256)
    try:
        docs = {
            row["doc_id"]: Document(
                doc_id=row["doc_id"],
                path=row["path"],
                title=row["title"],
                text=row["text"],
                page_starts=tuple(row["page_starts"]),
                sha256=row["sha256"],
            )
            for row in read_jsonl(seg_dir / "documents.jsonl")
        }
        chunks: list[Chunk] = []
        ids: list[int] = []
        for row in read_jsonl(seg_dir / "chunks.jsonl"):
            ids.append(row.pop("id"))
            doc = docs[row["doc_id"]]
            chunks.append(Chunk(text=doc.text[row["start"] : row["end"]], **row))
        id_array = np.asarray(ids, dtype=np.int64)
        store = FaissStore.load(seg_dir, dimension)
        sentences = np.load(seg_dir / "sentences.npy", allow_pickle=False)
        sentence_vectors = np.load(seg_dir / "sentence_vectors.npy", allow_pickle=False)
        terms = TermCounts.load(seg_dir)
        identifiers = json.loads((seg_dir / "identifiers.json").read_text("utf-8"))
        if len(store) != len(chunks) or len(sentences) != len(sentence_vectors):
            raise ValueError(f"{len(store)} vectors for {len(chunks)} chunks")
        if len(terms.lengths) != len(chunks):
            raise ValueError(f"term counts for {len(terms.lengths)} of {len(chunks)} chunks")
        vectors = store.vectors(id_array).reshape(len(chunks), dimension)
    except (KeyError, ValueError, OSError, RuntimeError, TypeError) as exc:
        raise IndexCorrupt(f"index segment {seg_dir} cannot be read ({exc}); rebuild it") from exc
    return Segment(
        seg_dir.name,
        seg_dir,
        docs,
        chunks,
        id_array,
        store,
        vectors,
        sentences,
        sentence_vectors,
        terms,
        identifiers,
    )
