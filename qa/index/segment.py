"""Index segments: immutable folders of chunks, written once, shared by generations.

A generation (qa.index.files) is a manifest naming its segments and, for each live
document, the segment that holds it; an update writes one new segment with only the
documents that were added, changed or renamed, and the chunks of a changed or removed
document stay in their old segment, dead in the new generation (they neither match nor
count in statistics). This is the segment design of Lucene and of Milvus: writes cost what
changed, readers of an older generation keep reading its segments, and a compaction
(qa.builder) rewrites the live chunks into one segment when dead ones pile up.

Files of ``segments/seg-NNNNNN/`` (NNNNNN: the generation that wrote it); every array is
a ``.npy`` read memory-mapped, so a loaded segment costs pages of the page cache, shared
by every process serving it, not a copy per process::

    manifest.json        format, counts, the vector index type, checksum and size of every file
    documents.jsonl      id, path, title, hash and page starts of each document (no text)
    texts.txt            every document's text, UTF-8, one after the other
    text_offsets.npy     int64 (n_docs + 1,): byte offset of each document in texts.txt
    chunk_ids.npy        int64 (n,): stable id (qa.index.ids) of each chunk (segment row)
    chunk_docs.npy       int32 (n,): the chunk's document (row of documents.jsonl)
    chunk_spans.npy      int64 (n, 2): start, end in the document's text (characters)
    chunk_bytes.npy      int64 (n, 2): start, end of the chunk's text in texts.txt (bytes)
    chunk_lines.npy      int32 (n, 2): first and last line
    chunk_pages.npy      int32 (n,): page, -1 for none
    chunk_headings.npy   int32 (n,): row of headings.json, -1 for none
    headings.json        the distinct headings
    vectors.faiss        chunk vectors, float16: an exact FAISS index (ids = segment rows)
                         whose tail is also read as an (n, dim) array (qa.index.faiss_store)
    ann.faiss            from QA_ANN_MIN_CHUNKS chunks up: qa.ann's approximate index
    sentence_indptr.npy  int64 (n + 1,): sentences of row r are indptr[r]:indptr[r + 1]
    sentence_spans.npy   int64 (n_sentences, 2): start, end in the document's text
    sentence_codes.npy   int8 (n_sentences, dim): each sentence vector as 8-bit codes,
    sentence_scales.npy  float32 (n_sentences,): the vector is codes * scale (encode_sentences;
                         half the bytes of float16, no measured effect on ranking or
                         highlight: docs/quality.md). A segment written before holds
                         sentence_vectors.npy, float16 (n_sentences, dim), read as well.
    terms.json, tf_*.npy, lengths.npy   term frequencies for BM25 (qa.index.terms)
    identifiers.json     identifier -> rows holding it (exact matching, qa.lexical)
"""

from __future__ import annotations

import json
import os
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qa.ann import AnnConfig
from qa.documents import Chunk, Document
from qa.errors import IndexCorrupt, IndexMismatch
from qa.index.faiss_store import FaissStore, load_npy, mapped
from qa.index.publish import fsync_dir
from qa.index.spec import FORMAT_VERSION, READABLE_FORMATS
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
    chunk_vectors: np.ndarray  # (n_chunks, dim) float32 (float16 from a local export)
    sentences: np.ndarray  # (n_sentences, 3) int64
    sentence_vectors: np.ndarray  # (n_sentences, dim) float32 (float16 from a local export)
    dimension: int


@dataclass
class Segment:
    """A loaded segment: its columns memory-mapped (see the module docstring for each),
    ``Chunk`` and ``Document`` objects made only for the rows asked for."""

    name: str
    path: Path
    doc_rows: list[dict[str, Any]]  # documents.jsonl: doc_id, path, title, sha256, page_starts
    texts: np.ndarray  # (bytes,) uint8: texts.txt
    text_offsets: np.ndarray  # (n_docs + 1,) int64
    ids: np.ndarray  # (n,) int64
    docs: np.ndarray  # (n,) int32
    spans: np.ndarray  # (n, 2) int64
    byte_spans: np.ndarray  # (n, 2) int64
    lines: np.ndarray  # (n, 2) int32
    pages: np.ndarray  # (n,) int32
    heading_rows: np.ndarray  # (n,) int32
    headings: list[str]
    store: FaissStore
    sentence_indptr: np.ndarray  # (n + 1,) int64
    sentence_spans: np.ndarray  # (n_sentences, 2) int64
    sentence_vectors: np.ndarray  # (n_sentences, dim) int8 codes (float16 in older ones)
    terms: TermCounts
    identifiers: dict[str, list[int]]  # identifier -> segment rows (qa.lexical.postings)
    sentence_scales: np.ndarray | None = None  # (n_sentences,) float32 with int8 codes

    def __len__(self) -> int:
        return len(self.ids)

    def sentence_rows(self, rows: np.ndarray) -> np.ndarray:
        """The vectors of sentences ``rows`` (segment sentence rows), (len(rows), dim)
        float32, decoded from their codes (decode_sentences) and scaled back to unit
        length (a zero row stays zero)."""
        if self.sentence_scales is None:
            return np.asarray(self.sentence_vectors[rows], dtype=np.float32)
        out = decode_sentences(self.sentence_vectors[rows], self.sentence_scales[rows])
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out /= np.where(norms > 0, norms, 1.0)
        return out

    def document(self, i: int) -> Document:
        """Document ``i`` (row of documents.jsonl), its text decoded from texts.txt."""
        row = self.doc_rows[i]
        lo, hi = int(self.text_offsets[i]), int(self.text_offsets[i + 1])
        return Document(
            doc_id=row["doc_id"],
            path=row["path"],
            title=row["title"],
            text=bytes(self.texts[lo:hi]).decode("utf-8"),
            page_starts=tuple(row["page_starts"]),
            sha256=row["sha256"],
        )

    def chunks(self, rows: np.ndarray) -> list[Chunk]:
        """The chunks of some segment rows, in order: each column read once for all of
        them, each text its bytes of texts.txt, decoded."""
        rows = np.asarray(rows, dtype=np.int64)
        texts = self.texts.data  # a memoryview: slicing it makes no array object
        doc_ids = [self.doc_rows[d]["doc_id"] for d in self.docs[rows].tolist()]
        spans = self.spans[rows].tolist()
        byte_spans = self.byte_spans[rows].tolist()
        lines = self.lines[rows].tolist()
        pages = self.pages[rows].tolist()
        headings = self.heading_rows[rows].tolist()
        return [
            Chunk(
                doc_id=doc_id,
                start=span[0],
                end=span[1],
                text=str(texts[b[0] : b[1]], "utf-8"),
                line_start=line[0],
                line_end=line[1],
                page=None if page < 0 else page,
                heading=self.headings[heading] if heading >= 0 else "",
            )
            for doc_id, span, b, line, page, heading in zip(
                doc_ids, spans, byte_spans, lines, pages, headings, strict=True
            )
        ]


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
    """The rows of a JSON-lines file, parsed in one call (10x faster than a call a line)."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows: list[dict[str, Any]] = json.loads("[" + ",".join(lines) + "]")
    return rows


def fsync_tree(root: Path) -> None:
    for p in root.rglob("*"):
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
        elif p.is_dir():
            fsync_dir(p)
    fsync_dir(root)


def byte_offsets(text: str, encoded: bytes, offsets: np.ndarray) -> np.ndarray:
    """The UTF-8 byte offset in ``encoded`` (``text`` encoded) of each character offset."""
    if len(encoded) == len(text):  # ASCII: bytes are characters
        return offsets.astype(np.int64)
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    sizes = 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000)
    starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
    out: np.ndarray = starts[offsets]
    return out


def encode_sentences(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 8-bit scalar codes of ``vectors`` (n, dim): (codes (n, dim) int8, scales
    (n,) float32) with ``codes = round(v / scale)`` and ``scale = max|v| / 127`` per row (1
    for a zero row). Each component comes back within ``scale / 2`` (about 0.001 for a
    unit vector of 384 dimensions). Encoded in blocks of rows, so that the float32
    temporaries stay small: the memory is the codes' (at 1M chunks the 4M sentence
    vectors' float32 temporaries, a whole array at once, took the writer past 24 GB)."""
    n = len(vectors)
    dim = vectors.shape[1] if vectors.ndim == 2 else 0
    codes = np.empty((n, dim), dtype=np.int8)
    scales = np.empty(n, dtype=np.float32)
    for start in range(0, n, _ENCODE_ROWS):
        v = np.asarray(vectors[start : start + _ENCODE_ROWS], dtype=np.float32)
        block = np.abs(v).max(axis=1) / 127 if dim else np.zeros(len(v), dtype=np.float32)
        block = np.where(block > 0, block, 1.0).astype(np.float32)
        codes[start : start + len(v)] = np.clip(np.rint(v / block[:, None]), -127, 127)
        scales[start : start + len(v)] = block
    return codes, scales


_ENCODE_ROWS = 65_536


def decode_sentences(codes: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """Vectors (n, dim) float32 of codes (n, dim) int8 and their scales (n,)."""
    out: np.ndarray = np.asarray(codes, dtype=np.float32) * np.asarray(scales)[:, None]
    return out


def _save(path: Path, array: np.ndarray) -> None:
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def write_segment(
    segments_dir: Path, name: str, payload: SegmentPayload, ann: AnnConfig | None = None
) -> str:
    """Write ``payload`` as segment ``name`` (via ``name.tmp``, fsynced, verified, renamed),
    its vector index of the type ``ann`` gives for its size. Returns the SHA-256 of its
    manifest, which the generation records."""
    segments_dir.mkdir(parents=True, exist_ok=True)
    final = segments_dir / name
    tmp = segments_dir / f"{name}.tmp"
    for leftover in (tmp, final):  # of a crashed build: never in any generation
        if leftover.exists():
            import shutil

            shutil.rmtree(leftover)
    tmp.mkdir()
    docs, chunks = payload.documents, payload.chunks
    n = len(chunks)
    write_jsonl(
        tmp / "documents.jsonl",
        [
            {
                "doc_id": d.doc_id,
                "path": d.path,
                "title": d.title,
                "sha256": d.sha256,
                "page_starts": list(d.page_starts),
            }
            for d in docs
        ],
    )
    position = {d.doc_id: i for i, d in enumerate(docs)}
    doc_of = np.fromiter((position[c.doc_id] for c in chunks), dtype=np.int32, count=n)
    spans = np.asarray([(c.start, c.end) for c in chunks], dtype=np.int64).reshape(n, 2)
    byte_spans = np.zeros((n, 2), dtype=np.int64)
    text_offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    by_doc = np.argsort(doc_of, kind="stable")
    bounds = np.searchsorted(doc_of[by_doc], np.arange(len(docs) + 1))
    with (tmp / "texts.txt").open("wb") as fh:
        at = 0
        for i, d in enumerate(docs):
            encoded = d.text.encode("utf-8")
            fh.write(encoded)
            rows = by_doc[bounds[i] : bounds[i + 1]]
            if len(rows):
                byte_spans[rows] = at + byte_offsets(d.text, encoded, spans[rows])
            at += len(encoded)
            text_offsets[i + 1] = at
    headings: dict[str, int] = {}
    heading_rows = np.fromiter(
        (headings.setdefault(c.heading, len(headings)) if c.heading else -1 for c in chunks),
        dtype=np.int32,
        count=n,
    )
    columns: dict[str, np.ndarray] = {
        "text_offsets": text_offsets,
        "chunk_ids": np.asarray(payload.chunk_ids, dtype=np.int64).reshape(n),
        "chunk_docs": doc_of,
        "chunk_spans": spans,
        "chunk_bytes": byte_spans,
        "chunk_lines": np.asarray(
            [(c.line_start, c.line_end) for c in chunks], dtype=np.int32
        ).reshape(n, 2),
        "chunk_pages": np.asarray(
            [-1 if c.page is None else c.page for c in chunks], dtype=np.int32
        ).reshape(n),
        "chunk_headings": heading_rows,
    }
    for column, array in columns.items():
        _save(tmp / f"{column}.npy", array)
    (tmp / "headings.json").write_text(json.dumps(list(headings), ensure_ascii=False), "utf-8")
    sentences = np.asarray(payload.sentences, dtype=np.int64).reshape(-1, 3)
    order = np.argsort(sentences[:, 0], kind="stable")  # grouped by chunk, text order kept
    indptr = np.searchsorted(sentences[order, 0], np.arange(n + 1), side="left")
    _save(tmp / "sentence_indptr.npy", indptr.astype(np.int64))
    _save(tmp / "sentence_spans.npy", sentences[order, 1:])
    sentence_vectors = np.asarray(payload.sentence_vectors).reshape(-1, payload.dimension)
    if len(order) and (np.diff(order) < 0).any():  # not yet in chunk order
        sentence_vectors = sentence_vectors[order]
    codes, scales = encode_sentences(sentence_vectors)
    _save(tmp / "sentence_codes.npy", codes)
    _save(tmp / "sentence_scales.npy", scales)
    vectors = FaissStore.write(
        tmp, np.asarray(payload.chunk_vectors).reshape(n, payload.dimension), ann or AnnConfig()
    )
    texts = [c.text for c in chunks]
    TermCounts.build(texts).save(tmp)
    table = postings(texts)
    (tmp / "identifiers.json").write_text(json.dumps(table, ensure_ascii=False), "utf-8")
    manifest = {
        "format_version": FORMAT_VERSION,
        "segment": name,
        "dimension": payload.dimension,
        "counts": {"documents": len(docs), "chunks": n, "sentences": len(sentences)},
        "vectors": vectors,
        "files": {
            p.relative_to(tmp).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
            for p in sorted(tmp.rglob("*"))
            if p.is_file()
        },
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2), "utf-8")
    fsync_tree(tmp)
    verify_segment(tmp, checksums=False)  # the checksums were just computed from the files
    tmp.rename(final)
    fsync_dir(segments_dir)
    return sha256_file(final / MANIFEST)


def verify_segment(
    seg_dir: Path, manifest_sha256: str | None = None, *, checksums: bool = True
) -> dict[str, Any]:
    """Check the segment's manifest (against the generation's record of it) and every file
    against its size and (with ``checksums``) its SHA-256. Raises IndexCorrupt naming what
    is wrong, IndexMismatch for a segment of another format version."""
    path = seg_dir / MANIFEST
    if not path.is_file():
        raise IndexCorrupt(f"index segment {seg_dir} is missing; rebuild with `qa index build`")
    if manifest_sha256 is not None and sha256_file(path) != manifest_sha256:
        raise IndexCorrupt(f"{path} fails its checksum (corrupted); rebuild with `qa index build`")
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexCorrupt(f"{path} is not valid JSON ({exc}); rebuild it") from None
    if manifest.get("format_version") not in READABLE_FORMATS:
        raise IndexMismatch(
            f"{path} has format version {manifest.get('format_version')!r}, this qa reads "
            f"versions {', '.join(map(str, READABLE_FORMATS))}; rebuild with `qa index build`"
        )
    for name, meta in manifest["files"].items():
        file = seg_dir / name
        if not file.is_file():
            raise IndexCorrupt(f"index file {file} is missing; rebuild with `qa index build`")
        if file.stat().st_size != meta["bytes"]:
            raise IndexCorrupt(
                f"index file {file} has {file.stat().st_size} bytes, the manifest says "
                f"{meta['bytes']} (truncated?); rebuild with `qa index build`"
            )
        if checksums and sha256_file(file) != meta["sha256"]:
            raise IndexCorrupt(
                f"index file {file} fails its checksum (corrupted); rebuild with `qa index build`"
            )
    return manifest


# Segments this process has verified file by file: (folder, manifest checksum) -> the
# (name, size, mtime, inode) of each file then. A segment is immutable once written, so
# loading it again (the next generation names it too) checks the manifest's checksum and
# the files' sizes and stat, not every byte: a one-document update of a large index does
# not hash the unchanged segments again. A new process hashes everything once.
Signature = tuple[tuple[str, int, int, int], ...]  # (file, size, mtime_ns, inode) each
_VERIFIED: dict[tuple[str, str], Signature] = {}
_VERIFIED_LOCK = threading.Lock()


def _stat_signature(seg_dir: Path, manifest: dict[str, Any]) -> Signature:
    out = []
    for name in sorted(manifest["files"]):
        st = (seg_dir / name).stat()
        out.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
    return tuple(out)


def verify_once(
    seg_dir: Path, manifest_sha256: str | None
) -> tuple[dict[str, Any], Signature | None]:
    """``verify_segment``, with every file's checksum only the first time this process
    sees the segment unchanged (see ``_VERIFIED``). Returns the manifest and the files'
    stat signature (None without ``manifest_sha256``). Raises IndexCorrupt, IndexMismatch."""
    key = (str(seg_dir.resolve()), manifest_sha256 or "")
    with _VERIFIED_LOCK:
        known = _VERIFIED.get(key)
    if manifest_sha256 is not None and known is not None:
        manifest = verify_segment(seg_dir, manifest_sha256, checksums=False)
        try:
            if _stat_signature(seg_dir, manifest) == known:
                return manifest, known
        except OSError:
            pass
    manifest = verify_segment(seg_dir, manifest_sha256)
    if manifest_sha256 is None:
        return manifest, None
    signature = _stat_signature(seg_dir, manifest)
    with _VERIFIED_LOCK:
        _VERIFIED[key] = signature
    return manifest, signature


# Segments loaded in this process and still in use (a snapshot holds them), by folder,
# manifest checksum and the files' stat signature: the next generation of a served index
# names the same immutable segments, so loading it (an update, the reload after it) takes
# the loaded ``Segment`` (mapped columns, parsed documents, BM25 vocabulary, identifier
# table) instead of parsing the same files again. Weak: dropped with the last snapshot.
_LOADED: weakref.WeakValueDictionary[tuple[Any, ...], Segment] = weakref.WeakValueDictionary()


def load_segment(seg_dir: Path, manifest_sha256: str | None, dimension: int) -> Segment:
    """Verify one segment (``verify_once``) and map its files (nothing is read whole but
    the small JSON tables), or take it from ``_LOADED``. Raises IndexCorrupt."""
    manifest, signature = verify_once(seg_dir, manifest_sha256)
    key: tuple[Any, ...] | None = None
    if signature is not None:
        key = (str(seg_dir.resolve()), manifest_sha256, dimension, signature)
    if key is not None:
        with _VERIFIED_LOCK:
            loaded = _LOADED.get(key)
        if loaded is not None:
            return loaded
    segment = _read_segment(seg_dir, manifest, dimension)
    if key is not None:
        with _VERIFIED_LOCK:
            _LOADED[key] = segment
    return segment


def _read_segment(seg_dir: Path, manifest: dict[str, Any], dimension: int) -> Segment:
    try:
        doc_rows = read_jsonl(seg_dir / "documents.jsonl")
        cols = {
            name: load_npy(seg_dir / f"{name}.npy")
            for name in (
                "text_offsets",
                "chunk_ids",
                "chunk_docs",
                "chunk_spans",
                "chunk_bytes",
                "chunk_lines",
                "chunk_pages",
                "chunk_headings",
                "sentence_indptr",
                "sentence_spans",
            )
        }
        scales = None
        if (seg_dir / "sentence_codes.npy").exists():
            cols["sentence_vectors"] = load_npy(seg_dir / "sentence_codes.npy")
            scales = load_npy(seg_dir / "sentence_scales.npy")
            if len(scales) != len(cols["sentence_vectors"]):
                raise ValueError("sentence codes and scales differ in number")
        else:  # written before sentence codes
            cols["sentence_vectors"] = load_npy(seg_dir / "sentence_vectors.npy")
        texts_path = seg_dir / "texts.txt"
        texts = (
            mapped(np.memmap(texts_path, dtype=np.uint8, mode="r"))
            if texts_path.stat().st_size
            else np.zeros(0, dtype=np.uint8)
        )
        headings = json.loads((seg_dir / "headings.json").read_text("utf-8"))
        store = FaissStore.load(seg_dir, dimension, len(cols["chunk_ids"]), manifest["vectors"])
        terms = TermCounts.load(seg_dir)
        identifiers = json.loads((seg_dir / "identifiers.json").read_text("utf-8"))
        n = len(cols["chunk_ids"])
        if len(store) != n or len(cols["sentence_indptr"]) != n + 1:
            raise ValueError(f"{len(store)} vectors for {n} chunks")
        if len(cols["sentence_spans"]) != len(cols["sentence_vectors"]):
            raise ValueError("sentence spans and vectors differ in number")
        if len(terms.lengths) != n:
            raise ValueError(f"term counts for {len(terms.lengths)} of {n} chunks")
        if len(cols["text_offsets"]) != len(doc_rows) + 1:
            raise ValueError(f"text offsets for {len(cols['text_offsets']) - 1} documents")
    except (KeyError, ValueError, OSError, RuntimeError, TypeError) as exc:
        raise IndexCorrupt(f"index segment {seg_dir} cannot be read ({exc}); rebuild it") from exc
    return Segment(
        name=seg_dir.name,
        path=seg_dir,
        doc_rows=doc_rows,
        texts=texts,
        text_offsets=cols["text_offsets"],
        ids=cols["chunk_ids"],
        docs=cols["chunk_docs"],
        spans=cols["chunk_spans"],
        byte_spans=cols["chunk_bytes"],
        lines=cols["chunk_lines"],
        pages=cols["chunk_pages"],
        heading_rows=cols["chunk_headings"],
        headings=headings,
        store=store,
        sentence_indptr=cols["sentence_indptr"],
        sentence_spans=cols["sentence_spans"],
        sentence_vectors=cols["sentence_vectors"],
        terms=terms,
        identifiers=identifiers,
        sentence_scales=scales,
    )
