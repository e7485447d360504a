"""The local store: a generation folder loaded as a Snapshot, and the folder as a store.

``LocalSnapshot`` holds one generation in memory (FAISS for vectors, bm25s for BM25, the
chunk table as columns); ``LocalIndexStore`` writes, publishes, loads and rolls back
generations in one folder (protocol: qa.index.publish, files: qa.index.files).
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qa.documents import Chunk, Document
from qa.errors import IndexCorrupt, IndexNotReady, QAError
from qa.index import publish
from qa.index.files import (
    GenerationPayload,
    read_manifest,
    verify_written,
    write_manifest,
)
from qa.index.segment import (
    SEGMENTS_DIR,
    Segment,
    SegmentPayload,
    load_segment,
    segment_name,
    write_segment,
)
from qa.index.snapshot import DocumentInfo, Filters, Scored, SentenceSet
from qa.index.spec import IndexSpec, check_spec
from qa.index.terms import SegmentedBM25
from qa.lexical import IdentifierIndex
from qa.normalize import nfc


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` largest scores, best first (ties in position order)."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k)[:k]
    return part[np.argsort(-scores[part], kind="stable")]


def text_key(text: str) -> str:
    """SHA-256 of a text as embedded: the key of a reusable vector."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class LocalSnapshot:
    """A loaded local generation: its segments side by side in one row order, the chunks
    of documents the generation does not hold from that segment dead (see
    qa.index.snapshot.Snapshot for the methods)."""

    def __init__(self, path: Path, manifest: dict[str, Any], segments: list[Segment]) -> None:
        self.path = path
        self._manifest = manifest
        self._segments = segments
        holder = {doc_id: meta["segment"] for doc_id, meta in manifest["documents"].items()}
        self._documents = {
            doc_id: seg.documents[doc_id]
            for seg in segments
            for doc_id in seg.documents
            if holder.get(doc_id) == seg.name
        }
        self._chunks = [c for seg in segments for c in seg.chunks]
        n = len(self._chunks)
        dim = int(manifest["model"]["dimension"])
        self._ids = (
            np.concatenate([seg.ids for seg in segments]) if segments else np.zeros(0, np.int64)
        )
        self._vectors = (
            np.concatenate([seg.vectors for seg in segments])
            if segments
            else np.zeros((0, dim), np.float32)
        )  # (n, dim), row i is chunk i
        offsets = np.cumsum([0] + [len(seg.chunks) for seg in segments])
        self._offsets = offsets
        live_parts = [
            np.fromiter(
                (holder.get(c.doc_id) == seg.name for c in seg.chunks),
                dtype=bool,
                count=len(seg.chunks),
            )
            for seg in segments
        ]
        self._live = np.concatenate(live_parts) if segments else np.zeros(0, bool)
        self._bm25 = SegmentedBM25(
            [
                (seg.terms, live, int(off))
                for seg, live, off in zip(segments, live_parts, offsets, strict=False)
            ],
            n,
        )
        self._sentences = (
            np.concatenate(
                [
                    seg.sentences + np.asarray([off, 0, 0], dtype=np.int64)
                    for seg, off in zip(segments, offsets, strict=False)
                ]
            )
            if segments
            else np.zeros((0, 3), np.int64)
        )  # (n_sentences, 3) int64: chunk row, start, end
        self._sentence_vectors = (
            np.concatenate([seg.sentence_vectors for seg in segments])
            if segments
            else np.zeros((0, dim), np.float32)
        )
        # the segments' own arrays become views of the joined ones: one copy in memory
        sentence_offsets = np.cumsum([0] + [len(seg.sentences) for seg in segments])
        for seg, lo, hi, s_lo, s_hi in zip(
            segments, offsets, offsets[1:], sentence_offsets, sentence_offsets[1:], strict=False
        ):
            seg.vectors = self._vectors[int(lo) : int(hi)]
            seg.sentence_vectors = self._sentence_vectors[int(s_lo) : int(s_hi)]
        live_rows = np.flatnonzero(self._live)
        live_ids = self._ids[live_rows]
        order = np.argsort(live_ids, kind="stable")
        self._sorted_ids = live_ids[order]  # row lookup by id, live chunks only
        self._sorted_rows = live_rows[order]
        ranges = np.zeros((n, 2), dtype=np.int64)
        if len(self._sentences):
            owners = self._sentences[:, 0]
            ranges[:, 0] = np.searchsorted(owners, np.arange(n), side="left")
            ranges[:, 1] = np.searchsorted(owners, np.arange(n), side="right")
        self._sentence_ranges = ranges  # (n, 2): rows into sentences of each chunk
        self._doc_list = list(self._documents.values())
        position = {d.doc_id: i for i, d in enumerate(self._doc_list)}
        self._position = position
        self._chunk_doc = np.fromiter(
            (
                position.get(c.doc_id, -1) if live else -1
                for c, live in zip(self._chunks, self._live, strict=True)
            ),
            dtype=np.int64,
            count=n,
        )  # (n,) document of each live chunk (-1: dead), a column filters are evaluated on
        doc_chunks = np.bincount(self._chunk_doc[self._live], minlength=len(self._doc_list))
        self._doc_info = {
            d.doc_id: DocumentInfo(d.doc_id, d.title, d.path, d.sha256, int(doc_chunks[i]))
            for i, d in enumerate(self._doc_list)
        }
        table: dict[str, list[np.ndarray]] = {}
        for seg, live, off in zip(segments, live_parts, offsets, strict=False):
            for token, seg_rows in seg.identifiers.items():
                rows = np.asarray(seg_rows, dtype=np.int64)
                rows = rows[live[rows]] + off
                if len(rows):
                    table.setdefault(token, []).append(rows)
        self._identifiers = IdentifierIndex.from_postings(
            {t: np.concatenate(parts) for t, parts in table.items()}, len(live_rows)
        )  # over the live chunks, by row
        self._last_bm25 = threading.local()  # (query, scores) of this thread's last query

    # ------------------------------------------------------------------ about
    @property
    def generation(self) -> int:
        return int(self._manifest["generation"])

    @property
    def built_at(self) -> str:
        return str(self._manifest["built_at"])

    @property
    def key(self) -> str:
        return self.path.name

    @property
    def word_pieces_per_word(self) -> float:
        return float(self._manifest.get("stats", {}).get("word_pieces_per_word", 1.0))

    @property
    def manifest(self) -> dict[str, Any]:
        return self._manifest

    def __len__(self) -> int:
        return len(self._sorted_rows)

    @property
    def chunk_ids(self) -> np.ndarray:
        """Stable id of every live chunk, in row order, shape (n,) int64."""
        ids: np.ndarray = self._ids[self._live]
        return ids

    # ------------------------------------------------------------------ rows and filters
    def rows(self, ids: np.ndarray) -> np.ndarray:
        """Row of each chunk id in this generation's tables. Raises KeyError."""
        ids = np.asarray(ids, dtype=np.int64)
        pos = np.searchsorted(self._sorted_ids, ids)
        pos = np.minimum(pos, max(len(self._sorted_ids) - 1, 0))
        if len(ids) and (not len(self._sorted_ids) or (self._sorted_ids[pos] != ids).any()):
            raise KeyError(f"chunk ids not in generation {self.generation}")
        rows: np.ndarray = self._sorted_rows[pos]
        return rows

    def _mask(self, filters: Filters | None) -> np.ndarray | None:
        """Boolean (n,) of the live chunks the filters allow; None when every row is live
        and there is no filter."""
        if filters is None or not filters.active:
            return None if self._live.all() else self._live
        allowed_docs = np.fromiter(
            (filters.allows(d.doc_id, d.path) for d in self._doc_list),
            dtype=bool,
            count=len(self._doc_list),
        )
        mask: np.ndarray = np.append(allowed_docs, False)[self._chunk_doc]  # -1: dead
        return mask

    def count(self, filters: Filters | None) -> int:
        mask = self._mask(filters)
        return len(self) if mask is None else int(mask.sum())

    # ------------------------------------------------------------------ retrieval
    def dense(self, vector: np.ndarray, k: int, filters: Filters | None) -> Scored:
        """Each segment's FAISS index searched for its allowed chunks (live and within the
        filters, by an id selector), the results merged by score."""
        mask = self._mask(filters)
        found_ids, found_scores = [], []
        for seg, lo in zip(self._segments, self._offsets, strict=False):
            allowed = None
            if mask is not None:
                part = mask[int(lo) : int(lo) + len(seg.ids)]
                if not part.any():
                    continue
                allowed = None if part.all() else seg.ids[part]
            ids, scores = seg.store.search(vector, k, allowed)
            found_ids.append(ids)
            found_scores.append(scores)
        if not found_ids:
            return Scored.empty()
        ids, scores = np.concatenate(found_ids), np.concatenate(found_scores)
        picked = _top(scores, k)
        return Scored(ids[picked], scores[picked].astype(np.float32))

    def _bm25_scores(self, query: str) -> np.ndarray:
        last = getattr(self._last_bm25, "value", None)
        if last is not None and last[0] == query:
            scores: np.ndarray = last[1]
            return scores
        scores = self._bm25.scores(query)
        self._last_bm25.value = (query, scores)
        return scores

    def lexical(self, query: str, k: int, filters: Filters | None) -> Scored:
        scores = self._bm25_scores(query)
        mask = self._mask(filters)
        if mask is not None:
            scores = np.where(mask, scores, 0.0).astype(np.float32)
        rows = _top(scores, k)
        rows = rows[scores[rows] > 0]
        return Scored(self._ids[rows], scores[rows])

    def lexical_scores(self, query: str, ids: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._bm25_scores(query)[self.rows(ids)]
        return out

    def exact(self, query: str, filters: Filters | None) -> Scored:
        rows, values = self._identifiers.match(query)
        mask = self._mask(filters)
        if mask is not None:
            keep = mask[rows]
            rows, values = rows[keep], values[keep]
        return Scored(self._ids[rows], values)

    # ------------------------------------------------------------------ contents
    def chunks(self, ids: np.ndarray) -> list[Chunk]:
        return [self._chunks[int(r)] for r in self.rows(ids)]

    def chunk_vectors(self, ids: np.ndarray) -> np.ndarray:
        out: np.ndarray = self._vectors[self.rows(ids)]
        return out

    def sentences(self, ids: np.ndarray) -> SentenceSet:
        ranges = self._sentence_ranges[self.rows(ids)]
        sizes = ranges[:, 1] - ranges[:, 0]
        total = int(sizes.sum())
        if total == 0:
            dim = self._vectors.shape[1] if self._vectors.ndim == 2 else 0
            return SentenceSet(
                np.zeros(0, np.int64), np.zeros((0, 2), np.int64), np.zeros((0, dim), np.float32)
            )
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        rows = np.arange(total) + np.repeat(ranges[:, 0] - offsets, sizes)
        owner = np.repeat(np.arange(len(ids)), sizes)
        return SentenceSet(owner, self._sentences[rows, 1:], self._sentence_vectors[rows])

    def document(self, doc_id: str) -> Document | None:
        doc = self._documents.get(doc_id)
        if doc is None:  # the same id in another normalisation form (NFD from macOS)
            wanted = nfc(doc_id)
            doc = next((d for k, d in self._documents.items() if nfc(k) == wanted), None)
        return doc

    def document_info(self, doc_id: str) -> DocumentInfo | None:
        return self._doc_info.get(doc_id)

    def documents(self) -> list[DocumentInfo]:
        return list(self._doc_info.values())

    def known_vectors(self, doc_ids: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Vectors of the live chunks and sentences (of ``doc_ids`` only, if given), by
        SHA-256 of the text embedded."""
        if doc_ids is None:
            rows = np.flatnonzero(self._live)
        else:
            wanted = {self._index_of(d) for d in doc_ids} - {-1}
            rows = np.flatnonzero(np.isin(self._chunk_doc, list(wanted)))
        cache: dict[str, np.ndarray] = {}
        for row in rows:
            chunk = self._chunks[int(row)]
            cache[text_key(chunk.embed_text)] = self._vectors[row]
            lo, hi = self._sentence_ranges[row]
            for i in range(int(lo), int(hi)):
                _, start, end = self._sentences[i]
                text = chunk.text[int(start) - chunk.start : int(end) - chunk.start]
                if chunk.start <= start and end <= chunk.end:
                    cache[text_key(text)] = self._sentence_vectors[i]
        return cache

    # ------------------------------------------------------------------ for the builder
    @property
    def segment_checksums(self) -> dict[str, str]:
        """Segment name -> checksum of its manifest, of every segment of this generation."""
        segments: dict[str, str] = self._manifest["segments"]
        return segments

    @property
    def dead_chunks(self) -> int:
        return int((~self._live).sum())

    def export(self, doc_ids: Iterable[str]) -> SegmentPayload:
        """The live chunks, vectors and sentences of some documents, as a segment payload
        (for a compaction: copied, not embedded again)."""
        wanted = [self._index_of(d) for d in doc_ids]
        docs = [self._doc_list[i] for i in wanted if i >= 0]
        rows = np.flatnonzero(np.isin(self._chunk_doc, [i for i in wanted if i >= 0]))
        by_doc = sorted(rows.tolist(), key=lambda r: (int(self._chunk_doc[r]), r))
        rows = np.asarray(by_doc, dtype=np.int64)
        sentence_rows: list[int] = []
        owners: list[int] = []
        for new_row, row in enumerate(rows):
            lo, hi = self._sentence_ranges[row]
            sentence_rows.extend(range(int(lo), int(hi)))
            owners.extend([new_row] * int(hi - lo))
        spans = self._sentences[sentence_rows, 1:] if sentence_rows else np.zeros((0, 2), int)
        sentences = np.column_stack([np.asarray(owners, dtype=np.int64), spans]).reshape(-1, 3)
        dim = self._vectors.shape[1]
        return SegmentPayload(
            documents=docs,
            chunks=[self._chunks[int(r)] for r in rows],
            chunk_ids=self._ids[rows],
            chunk_vectors=self._vectors[rows].reshape(-1, dim),
            sentences=sentences.astype(np.int64),
            sentence_vectors=self._sentence_vectors[sentence_rows].reshape(-1, dim),
            dimension=dim,
        )

    def _index_of(self, doc_id: str) -> int:
        return self._position.get(doc_id, -1)


def load_generation(gen_dir: Path, spec: IndexSpec | None = None) -> LocalSnapshot:
    """Load and verify one generation and its segments (checksums first, then contents).
    Raises IndexCorrupt or IndexMismatch (built with other settings than ``spec``)."""
    manifest = read_manifest(gen_dir)
    if spec is not None:
        check_spec(manifest, spec, gen_dir)
    try:
        dimension = int(manifest["model"]["dimension"])
        segments = [
            load_segment(gen_dir.parent / SEGMENTS_DIR / name, sha, dimension)
            for name, sha in manifest["segments"].items()
        ]
        return LocalSnapshot(gen_dir, manifest, segments)
    except (KeyError, ValueError, TypeError) as exc:
        raise IndexCorrupt(f"index in {gen_dir} cannot be read ({exc}); rebuild it") from exc


def load_current(index_dir: Path, spec: IndexSpec | None = None) -> LocalSnapshot:
    """Load the generation in service. Raises IndexNotReady (none yet), IndexCorrupt,
    IndexMismatch."""
    gen_dir = publish.current_generation_dir(index_dir)
    if gen_dir is None:
        raise IndexNotReady(
            f"no index in {index_dir}; build one with `qa index build` "
            "(or start the server with `qa serve`, which builds it)"
        )
    if not gen_dir.is_dir():
        raise IndexCorrupt(
            f"{index_dir / publish.CURRENT_FILE} names {gen_dir.name}, which does not exist; "
            "rebuild with `qa index build`"
        )
    return load_generation(gen_dir, spec)


class LocalIndexStore:
    """Generations of one local index folder: the store behind ``QA_VECTOR_STORE=faiss``."""

    def __init__(self, index_dir: Path, keep: int = 2) -> None:
        self.index_dir = index_dir
        self.keep = keep

    def __str__(self) -> str:
        return str(self.index_dir)

    @contextlib.contextmanager
    def lock(self, *, wait: bool = False) -> Iterator[None]:
        with publish.index_lock(self.index_dir, wait=wait):
            yield

    def current_key(self) -> str | None:
        """Name of the generation in service (cheap: one small file read), None if none."""
        gen_dir = publish.current_generation_dir(self.index_dir)
        return gen_dir.name if gen_dir is not None else None

    def load(self, spec: IndexSpec | None = None) -> LocalSnapshot:
        return load_current(self.index_dir, spec)

    def write(self, payload: GenerationPayload) -> Path:
        """Write the generation's new segment (if any) and manifest, and put it in service
        (caller holds the lock). Unchanged documents are not written again: the manifest
        names the segments that hold them. Returns the generation folder."""
        tmp = publish.next_generation(self.index_dir)
        self.collect_garbage()  # segments of crashed builds, never in service
        segments = dict(payload.segments)
        name = None
        if payload.segment is not None:
            name = segment_name(publish.generation_number(tmp.with_name(tmp.name[:-4])))
            segments[name] = write_segment(self.index_dir / SEGMENTS_DIR, name, payload.segment)
            for meta in payload.documents.values():
                if meta["segment"] is None:
                    meta["segment"] = name
        write_manifest(tmp, payload, segments)
        verify_written(tmp, name if payload.segment is not None else None)
        final = publish.publish(self.index_dir, tmp, self.keep)
        self.collect_garbage()
        return final

    def collect_garbage(self) -> None:
        """Remove segments no kept generation names (pruned, rolled back from, or left by a
        crashed build). Caller holds the lock."""
        seg_root = self.index_dir / SEGMENTS_DIR
        if not seg_root.is_dir():
            return
        used: set[str] = set()
        for gen in publish.list_generations(self.index_dir):
            try:
                used.update(read_manifest(gen)["segments"])
            except QAError:
                continue
        for seg in seg_root.iterdir():
            if seg.name not in used:
                shutil.rmtree(seg, ignore_errors=True)

    def rollback(self, spec: IndexSpec | None = None) -> int:
        target = publish.rollback(self.index_dir, lambda g: load_generation(g, spec))
        return publish.generation_number(target)
