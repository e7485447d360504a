"""The local store: a generation folder loaded as a Snapshot, and the folder as a store.

``LocalSnapshot`` serves one generation from its segments' memory-mapped files (float16
vectors and a qa.ann index per segment, chunk columns, document texts, BM25 term
counts); ``LocalIndexStore`` writes, publishes, loads and rolls back
generations in one folder (protocol: qa.index.publish, files: qa.index.files).
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import shutil
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from qa.ann import AnnConfig
from qa.documents import Chunk, Document
from qa.errors import IndexCorrupt, IndexNotReady, QAError
from qa.index import publish
from qa.index.files import (
    GenerationPayload,
    read_manifest,
    verify_written,
    write_manifest,
)
from qa.index.faiss_store import top
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


def text_key(text: str) -> str:
    """SHA-256 of a text as embedded: the key of a reusable vector."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _ranges(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The positions lo[0]:hi[0], lo[1]:hi[1], ... one after the other, int64."""
    sizes = hi - lo
    total = int(sizes.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    out: np.ndarray = np.arange(total, dtype=np.int64) + np.repeat(lo - starts, sizes)
    return out


class _LivePostings(dict[str, np.ndarray]):
    """identifier -> live generation rows holding it, looked up in each segment's table
    when a query asks (and kept), instead of merging every segment's table at load."""

    KEPT = 4096

    def __init__(self, parts: list[tuple[dict[str, list[int]], np.ndarray, int]]) -> None:
        super().__init__()
        self._parts = parts  # (segment table, live mask of its rows, offset of its rows)

    def __getitem__(self, token: str) -> np.ndarray:
        kept = dict.get(self, token)  # one lookup: another thread may clear the table
        if kept is not None:
            return kept
        found = [np.zeros(0, dtype=np.int64)]
        for table, live, offset in self._parts:
            seg_rows = table.get(token)
            if seg_rows:
                rows = np.asarray(seg_rows, dtype=np.int64)
                found.append(rows[live[rows]] + offset)
        rows = np.concatenate(found)
        if len(self) >= self.KEPT:
            self.clear()
        self[token] = rows
        return rows

    def __contains__(self, token: object) -> bool:
        return isinstance(token, str) and len(self[token]) > 0


_MASKS_KEPT = 16  # filters whose row mask a snapshot keeps (one search asks 4-5 times)


class LocalSnapshot:
    """A loaded local generation: its segments side by side in one row order, the chunks
    of documents the generation does not hold from that segment dead (see
    qa.index.snapshot.Snapshot for the methods).

    Vectors, chunk columns and texts stay the segments' memory-mapped files, looked up by
    (segment, row); only small per-row columns of the whole generation are held (id,
    document, live flag, and ids sorted with their rows: 29 bytes a chunk), and ``Chunk``
    and ``Document`` objects are made for the ids asked for."""

    def __init__(self, path: Path, manifest: dict[str, Any], segments: list[Segment]) -> None:
        self.path = path
        self._manifest = manifest
        self._segments = segments
        self._dim = int(manifest["model"]["dimension"])
        holder = {doc_id: meta["segment"] for doc_id, meta in manifest["documents"].items()}
        self._doc_refs: list[tuple[int, int]] = []  # document position -> (segment, row)
        doc_maps: list[np.ndarray] = []  # per segment: its document rows -> position (-1)
        for s, seg in enumerate(segments):
            name = seg.name
            rows = [j for j, row in enumerate(seg.doc_rows) if holder.get(row["doc_id"]) == name]
            held = np.full(len(seg.doc_rows) + 1, -1, dtype=np.int32)
            held[rows] = np.arange(len(self._doc_refs), len(self._doc_refs) + len(rows))
            self._doc_refs += zip([s] * len(rows), rows, strict=True)
            doc_maps.append(held)
        self._meta = [segments[s].doc_rows[j] for s, j in self._doc_refs]
        self._position = {row["doc_id"]: i for i, row in enumerate(self._meta)}
        sizes = [len(seg) for seg in segments]
        offsets = np.cumsum([0, *sizes]).astype(np.int64)
        self._offsets = offsets
        n = int(offsets[-1])
        self._chunk_doc = (
            np.concatenate([held[seg.docs] for held, seg in zip(doc_maps, segments, strict=True)])
            if segments
            else np.zeros(0, np.int32)
        )  # (n,) int32 document position of each chunk, -1: dead; filters read this column
        self._live = self._chunk_doc >= 0
        self._all_live = bool(self._live.all())
        live_parts = [self._live[int(lo) : int(hi)] for lo, hi in zip(offsets, offsets[1:])]
        self._ids = (
            np.concatenate([np.asarray(seg.ids) for seg in segments])
            if segments
            else np.zeros(0, np.int64)
        )
        self._bm25 = SegmentedBM25(
            [
                (seg.terms, live, int(off))
                for seg, live, off in zip(segments, live_parts, offsets, strict=False)
            ],
            n,
        )
        live_rows = np.flatnonzero(self._live)
        live_ids = self._ids[live_rows]
        order = np.argsort(live_ids, kind="stable")
        self._sorted_ids = live_ids[order]  # row lookup by id, live chunks only
        self._sorted_rows = live_rows[order]
        self._doc_chunks = np.bincount(self._chunk_doc[self._live], minlength=len(self._meta))
        # filters: documents by NFC id, and NFC paths sorted (a prefix is a range of them);
        # made by the first filter or NFD lookup (``_paths``), not at load: an update loads
        # the generation in service only to write the next one
        self._paths_lock = threading.Lock()
        self._path_tables: tuple[dict[str, list[int]], list[str], np.ndarray] | None = None
        self._masks: dict[Filters, np.ndarray] = {}
        self._masks_lock = threading.Lock()
        self._identifiers = IdentifierIndex.from_postings(
            _LivePostings(
                [
                    (seg.identifiers, live, int(off))
                    for seg, live, off in zip(segments, live_parts, offsets, strict=False)
                ]
            ),
            len(live_rows),
        )  # over the live chunks, by row

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

    def _locate(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(segment, row in it) of generation rows."""
        seg_of = np.searchsorted(self._offsets, rows, side="right") - 1
        return seg_of, rows - self._offsets[seg_of]

    def _paths(self) -> tuple[dict[str, list[int]], list[str], np.ndarray]:
        """(NFC id -> document positions, NFC paths sorted, their positions), made once."""
        tables = self._path_tables
        if tables is None:
            with self._paths_lock:
                tables = self._path_tables
                if tables is None:
                    by_nfc_id: dict[str, list[int]] = {}
                    for i, m in enumerate(self._meta):
                        by_nfc_id.setdefault(nfc(m["doc_id"]), []).append(i)
                    paths = sorted((nfc(m["path"]), i) for i, m in enumerate(self._meta))
                    order = np.asarray([i for _, i in paths], dtype=np.int64)
                    tables = (by_nfc_id, [p for p, _ in paths], order)
                    self._path_tables = tables
        return tables

    def _allowed_documents(self, filters: Filters) -> np.ndarray:
        """Boolean (n_docs,) of the documents the filters allow, without a loop over them:
        ids through a dict, a path prefix as a range of the sorted NFC paths."""
        by_nfc_id, paths, path_order = self._paths()
        allowed = np.ones(len(self._meta), dtype=bool)
        if filters.doc_ids is not None:
            allowed[:] = False
            for doc_id in filters.doc_ids:
                allowed[by_nfc_id.get(doc_id, [])] = True
        if filters.path_prefix:
            prefix = filters.path_prefix
            lo = bisect.bisect_left(paths, prefix)
            hi = bisect.bisect_left(paths, prefix + "\U0010ffff", lo)
            while hi < len(paths) and paths[hi].startswith(prefix):
                hi += 1
            in_range = np.zeros(len(self._meta), dtype=bool)
            in_range[path_order[lo:hi]] = True
            allowed &= in_range
        return allowed

    def _mask(self, filters: Filters | None) -> np.ndarray | None:
        """Boolean (n,) of the live chunks the filters allow; None when every row is live
        and there is no filter. Evaluated on the document column, kept for a few filters."""
        if filters is None or not filters.active:
            return None if self._all_live else self._live
        mask = self._masks.get(filters)
        if mask is None:
            allowed = np.append(self._allowed_documents(filters), False)
            mask = allowed[self._chunk_doc]  # -1 (dead) reads the appended False
            with self._masks_lock:
                if len(self._masks) >= _MASKS_KEPT:
                    self._masks.pop(next(iter(self._masks)))
                self._masks[filters] = mask
        return mask

    def count(self, filters: Filters | None) -> int:
        mask = self._mask(filters)
        return len(self) if mask is None else int(np.count_nonzero(mask))

    # ------------------------------------------------------------------ retrieval
    def dense(self, vector: np.ndarray, k: int, filters: Filters | None) -> Scored:
        """Each segment's vector index searched for its allowed rows (live and within the
        filters: a row bitmap for its approximate index, or exact search over the allowed
        rows when they are few; qa.index.faiss_store), the results merged by score."""
        mask = self._mask(filters)
        found_ids, found_scores = [], []
        for seg, lo, hi in zip(self._segments, self._offsets, self._offsets[1:], strict=False):
            allowed = None if mask is None else mask[int(lo) : int(hi)]
            if allowed is not None and allowed.all():
                allowed = None
            rows, scores = seg.store.search(vector, k, allowed)
            found_ids.append(np.asarray(seg.ids[rows], dtype=np.int64))
            found_scores.append(scores)
        if not found_ids:
            return Scored.empty()
        ids, scores = np.concatenate(found_ids), np.concatenate(found_scores)
        picked = top(scores, k)
        return Scored(ids[picked], scores[picked].astype(np.float32))

    def lexical(self, query: str, k: int, filters: Filters | None) -> Scored:
        """The ``k`` best chunks by BM25 (``SegmentedBM25.top``: only the query terms'
        postings are read, the filter applied to them)."""
        rows, scores = self._bm25.top(query, k, self._mask(filters))
        return Scored(self._ids[rows], scores)

    def lexical_scores(self, query: str, ids: np.ndarray) -> np.ndarray:
        return self._bm25.scores_of(query, self.rows(ids))

    def exact(self, query: str, filters: Filters | None) -> Scored:
        rows, values = self._identifiers.match(query)
        mask = self._mask(filters)
        if mask is not None:
            keep = mask[rows]
            rows, values = rows[keep], values[keep]
        return Scored(self._ids[rows], values)

    # ------------------------------------------------------------------ contents
    def _chunks_at(self, rows: np.ndarray) -> list[Chunk]:
        seg_of, local = self._locate(rows)
        out: list[Chunk] = []
        order = np.argsort(seg_of, kind="stable")
        for s in np.unique(seg_of):  # a segment's rows read together, then put in order
            out += self._segments[int(s)].chunks(local[order][seg_of[order] == s])
        back = np.empty(len(rows), dtype=np.int64)
        back[order] = np.arange(len(rows))
        return [out[i] for i in back.tolist()]

    def chunks(self, ids: np.ndarray) -> list[Chunk]:
        return self._chunks_at(self.rows(ids))

    def chunk_places(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(document position int64 (m,), spans int64 (m, 2)) of the chunks: two column
        reads, no ``Chunk`` objects (search makes those for its hits only)."""
        rows = self.rows(ids)
        spans = np.zeros((len(rows), 2), dtype=np.int64)
        seg_of, local = self._locate(rows)
        for s in np.unique(seg_of):
            sel = seg_of == s
            spans[sel] = self._segments[int(s)].spans[local[sel]]
        return self._chunk_doc[rows].astype(np.int64), spans

    def _vectors_at(self, rows: np.ndarray, dtype: type = np.float32) -> np.ndarray:
        out: np.ndarray = np.zeros((len(rows), self._dim), dtype=dtype)
        seg_of, local = self._locate(rows)
        for s in np.unique(seg_of):
            sel = seg_of == s
            out[sel] = self._segments[int(s)].store.vectors[local[sel]]
        return out

    def chunk_vectors(self, ids: np.ndarray) -> np.ndarray:
        return self._vectors_at(self.rows(ids))

    def _sentences_at(
        self, rows: np.ndarray, dtype: type = np.float32
    ) -> tuple[SentenceSet, np.ndarray]:
        """The sentences of generation rows (vectors as ``dtype``), and how many each row
        has."""
        m = len(rows)
        seg_of, local = self._locate(rows)
        lo = np.zeros(m, dtype=np.int64)
        hi = np.zeros(m, dtype=np.int64)
        for s in np.unique(seg_of):
            sel = seg_of == s
            indptr = self._segments[int(s)].sentence_indptr
            lo[sel], hi[sel] = indptr[local[sel]], indptr[local[sel] + 1]
        sizes = hi - lo
        total = int(sizes.sum())
        owner = np.repeat(np.arange(m, dtype=np.int64), sizes)
        spans = np.zeros((total, 2), dtype=np.int64)
        vectors: np.ndarray = np.zeros((total, self._dim), dtype=dtype)
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        for s in np.unique(seg_of) if total else []:
            sel = seg_of == s
            seg = self._segments[int(s)]
            src = _ranges(lo[sel], hi[sel])
            dst = _ranges(starts[sel], starts[sel] + sizes[sel])
            spans[dst] = seg.sentence_spans[src]
            vectors[dst] = seg.sentence_rows(src)
        return SentenceSet(owner, spans, vectors), sizes

    def sentences(self, ids: np.ndarray) -> SentenceSet:
        return self._sentences_at(self.rows(ids))[0]

    def _document_at(self, position: int) -> Document:
        s, j = self._doc_refs[position]
        return self._segments[s].document(j)

    def document(self, doc_id: str) -> Document | None:
        position = self._position.get(doc_id)
        if position is None:  # the same id in another normalisation form (NFD from macOS)
            found = self._paths()[0].get(nfc(doc_id))
            position = found[0] if found else None
        return None if position is None else self._document_at(position)

    def _info(self, position: int) -> DocumentInfo:
        m = self._meta[position]
        chunks = int(self._doc_chunks[position])
        return DocumentInfo(m["doc_id"], m["title"], m["path"], m["sha256"], chunks)

    def document_info(self, doc_id: str) -> DocumentInfo | None:
        position = self._position.get(doc_id)
        return None if position is None else self._info(position)

    def documents(self) -> list[DocumentInfo]:
        return [self._info(i) for i in range(len(self._meta))]

    def _rows_of(self, doc_ids: Iterable[str]) -> np.ndarray:
        wanted = [p for p in (self._position.get(d, -1) for d in doc_ids) if p >= 0]
        return np.flatnonzero(np.isin(self._chunk_doc, wanted))

    def known_vectors(self, doc_ids: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Vectors of the live chunks and sentences (of ``doc_ids`` only, if given), by
        SHA-256 of the text embedded."""
        rows = np.flatnonzero(self._live) if doc_ids is None else self._rows_of(doc_ids)
        cache: dict[str, np.ndarray] = {}
        for lo in range(0, len(rows), 4096):  # a block at a time: vectors are mapped
            block = rows[lo : lo + 4096]
            chunks = self._chunks_at(block)
            vectors = self._vectors_at(block)
            sents, sizes = self._sentences_at(block)
            for chunk, vector in zip(chunks, vectors, strict=True):
                cache[text_key(chunk.embed_text)] = vector
            for i, (start, end) in enumerate(sents.spans.tolist()):
                chunk = chunks[int(sents.owner[i])]
                if chunk.start <= start and end <= chunk.end:
                    text = chunk.text[start - chunk.start : end - chunk.start]
                    cache[text_key(text)] = sents.vectors[i]
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
        wanted = [p for p in (self._position.get(d, -1) for d in doc_ids) if p >= 0]
        rows = np.flatnonzero(np.isin(self._chunk_doc, wanted))
        rows = rows[np.argsort(self._chunk_doc[rows], kind="stable")]  # by document
        # float16 as stored: a compaction of 1M chunks copies 4M sentence vectors
        sents, sizes = self._sentences_at(rows, np.float16)
        sentences = np.column_stack([sents.owner, sents.spans]).reshape(-1, 3)
        return SegmentPayload(
            documents=[self._document_at(p) for p in dict.fromkeys(wanted)],
            chunks=self._chunks_at(rows),
            chunk_ids=self._ids[rows],
            chunk_vectors=self._vectors_at(rows, np.float16),
            sentences=sentences.astype(np.int64),
            sentence_vectors=sents.vectors,
            dimension=self._dim,
        )


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

    def __init__(self, index_dir: Path, keep: int = 2, ann: AnnConfig | None = None) -> None:
        self.index_dir = index_dir
        self.keep = keep
        self.ann = ann or AnnConfig()  # the vector index type of segments written here

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
            segments[name] = write_segment(
                self.index_dir / SEGMENTS_DIR, name, payload.segment, self.ann
            )
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
