"""Build: load → chunk → embed → store, written as a new index generation.

Vectors of chunks and sentences whose text is unchanged are reused from the generation in
service (same model and chunker settings), so rebuilding after an edit embeds only what
changed.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qa.assemble import chunker_for
from qa.chunker import Chunker
from qa.documents import Chunk, Document
from qa.embedder import Embedder, sentence_policy
from qa.errors import QAError
from qa.extraction import CorpusLimits
from qa.index.files import GenerationPayload
from qa.index.ids import chunk_ids
from qa.index.local import LocalIndexStore, LocalSnapshot, text_key
from qa.index.publish import checkpoint
from qa.index.segment import SegmentPayload
from qa.index.spec import IndexSpec
from qa.loaders import FileStamp, LoadReport, load_corpus

if TYPE_CHECKING:
    from qa.milvus_store import MilvusSnapshot, MilvusStore

log = logging.getLogger(__name__)

_WORD = re.compile(r"\w+")

ProgressFactory = Callable[[int], Callable[[int], None]]  # total -> advance(n)


@dataclass
class BuildReport:
    generation: int
    path: Path
    documents: int
    chunks: int
    sentences: int
    embedded: int
    reused: int
    skipped: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    renamed: list[tuple[str, str]] = field(default_factory=list)
    unchanged: int = 0
    up_to_date: bool = False

    @property
    def chunks_per_second(self) -> float:
        return self.chunks / self.seconds if self.seconds else 0.0


def embed_with_cache(
    texts: list[str],
    embedder: Embedder,
    cache: dict[str, np.ndarray],
    progress: Callable[[int], None] | None,
) -> tuple[np.ndarray, int]:
    """Vectors for ``texts``; identical texts are embedded once, cached ones not at all."""
    keys = [text_key(t) for t in texts]
    todo: dict[str, str] = {}
    for k, t in zip(keys, texts, strict=True):
        if k not in cache and k not in todo:
            todo[k] = t
    if todo:
        fresh = embedder.embed(list(todo.values()), progress=progress)
        for k, vec in zip(todo, fresh, strict=True):
            cache[k] = vec
    dim = embedder.dimension
    if not texts:
        return np.zeros((0, dim), dtype=np.float32), 0
    return np.vstack([cache[k] for k in keys]).astype(np.float32), len(todo)


def _relative(chunk: Chunk, start: int, end: int) -> tuple[int, int]:
    """A sentence's document offsets as offsets into its chunk's ``embed_text``."""
    shift = len(chunk.embed_text) - len(chunk.text) - chunk.start
    return start + shift, end + shift


def embed_chunks_and_sentences(
    chunks: list[Chunk],
    sentence_rows: list[tuple[int, int, int]],
    documents: dict[str, Document],
    embedder: Embedder,
    cache: dict[str, np.ndarray],
    progress: ProgressFactory | None,
) -> tuple[np.ndarray, np.ndarray, int]:
    """(chunk vectors, sentence vectors, texts run through the model) of a build.

    By the embedder's sentence policy (qa.embedder.sentence_policy): ``separate`` embeds
    chunks and sentences on their own, and texts in ``cache`` (text hash -> vector) are
    not embedded again. ``pooled`` runs each distinct chunk once and takes its sentences'
    vectors from the chunk's token embeddings (a sentence beyond the model's window is
    embedded on its own); ``cache`` is not used then, since a sentence's vector depends on
    its chunk. ``mixed`` pools the chunks of documents that are one chunk (their sentences
    order nothing: qa.fusion.within_documents orders the chunks of one document; they
    only pick the highlight) and embeds the rest as ``separate`` does (``cache`` must then
    hold only separately embedded vectors). ``progress`` is called once with the number
    of texts to run.
    """
    policy = sentence_policy(embedder)
    dim = embedder.dimension
    chunk_vectors = np.zeros((len(chunks), dim), dtype=np.float32)
    sentence_vectors = np.zeros((len(sentence_rows), dim), dtype=np.float32)
    per_chunk: list[list[int]] = [[] for _ in chunks]
    for j, (row, _, _) in enumerate(sentence_rows):
        per_chunk[row].append(j)
    if policy == "separate":
        pooled_rows: list[int] = []
    elif policy == "pooled":
        pooled_rows = list(range(len(chunks)))
    else:
        sizes: dict[str, int] = {}
        for c in chunks:
            sizes[c.doc_id] = sizes.get(c.doc_id, 0) + 1
        pooled_rows = [r for r, c in enumerate(chunks) if sizes[c.doc_id] == 1]
    pooled_set = set(pooled_rows)
    separate_rows = [r for r in range(len(chunks)) if r not in pooled_set]
    separate_sentences = [j for r in separate_rows for j in per_chunk[r]]

    chunk_texts = [chunks[r].embed_text for r in separate_rows]
    sentence_texts = [
        documents[chunks[r].doc_id].text[s:e]
        for r, s, e in (sentence_rows[j] for j in separate_sentences)
    ]
    spans = {
        r: [_relative(chunks[r], *sentence_rows[j][1:]) for j in per_chunk[r]] for r in pooled_rows
    }
    first: dict[tuple[str, tuple[tuple[int, int], ...]], int] = {}  # -> first row with it
    for r in pooled_rows:
        first.setdefault((chunks[r].embed_text, tuple(spans[r])), r)
    runs = list(first.values())
    advance = None
    if progress is not None:
        need = {text_key(t) for t in chunk_texts + sentence_texts} - cache.keys()
        advance = progress(len(need) + len(runs))

    embedded = 0
    if separate_rows:
        vectors, n1 = embed_with_cache(chunk_texts, embedder, cache, advance)
        chunk_vectors[separate_rows] = vectors
        vectors, n2 = embed_with_cache(sentence_texts, embedder, cache, advance)
        sentence_vectors[separate_sentences] = vectors
        embedded += n1 + n2
    if not runs:
        return chunk_vectors, sentence_vectors, embedded
    vectors, pooled = embedder.embed_with_spans(  # type: ignore[attr-defined]
        [chunks[r].embed_text for r in runs], [spans[r] for r in runs], progress=advance
    )
    at = 0
    for r, vector in zip(runs, vectors, strict=True):
        chunk_vectors[r] = vector
        for j in per_chunk[r]:
            sentence_vectors[j] = pooled[at]
            at += 1
    for row in pooled_rows:  # a repeated chunk: the first one's vectors
        same = first[(chunks[row].embed_text, tuple(spans[row]))]
        if same != row:
            chunk_vectors[row] = chunk_vectors[same]
            sentence_vectors[per_chunk[row]] = sentence_vectors[per_chunk[same]]
    alone = [j for r in pooled_rows for j in per_chunk[r] if not sentence_vectors[j].any()]
    if alone:  # sentences the chunk's window did not reach
        texts = [
            documents[chunks[r].doc_id].text[s:e] for r, s, e in (sentence_rows[j] for j in alone)
        ]
        sentence_vectors[alone] = embedder.embed(texts)
    return chunk_vectors, sentence_vectors, embedded + len(runs) + len(alone)


@dataclass
class DocumentDiff:
    added: list[str]
    changed: list[str]
    removed: list[str]
    renamed: list[tuple[str, str]]  # (old doc_id, new doc_id), same content
    unchanged: list[str]

    @property
    def any(self) -> bool:
        return bool(self.added or self.changed or self.removed or self.renamed)


def diff_documents(before: dict[str, str], now: dict[str, str]) -> DocumentDiff:
    """Compare doc_id → sha256 maps; a removed and an added document with the same
    content are a rename."""
    added = sorted(set(now) - set(before))
    removed = sorted(set(before) - set(now))
    by_hash: dict[str, list[str]] = {}
    for doc_id in removed:
        by_hash.setdefault(before[doc_id], []).append(doc_id)
    renamed: list[tuple[str, str]] = []
    for doc_id in list(added):
        olds = by_hash.get(now[doc_id])
        if olds:
            old = olds.pop(0)
            renamed.append((old, doc_id))
            added.remove(doc_id)
            removed.remove(old)
    common = set(now) & set(before)
    changed = sorted(d for d in common if before[d] != now[d])
    unchanged = sorted(d for d in common if before[d] == now[d])
    return DocumentDiff(added, changed, removed, renamed, unchanged)


# Compaction, as Lucene's TieredMergePolicy merges segments (segmentsPerTier 10,
# deletesPctAllowed 20): rewrite the live chunks into one segment (copied, never embedded
# again) when dead chunks pass this share of all rows, or segments pass this number.
COMPACT_DEAD_SHARE = 0.2
COMPACT_SEGMENTS = 10


def _chunk(
    documents: list[Document], chunker: Chunker
) -> tuple[list[Chunk], np.ndarray, list[tuple[int, int, int]]]:
    """Chunks, their stable ids and the sentence rows (chunk row, start, end) of documents."""
    chunks: list[Chunk] = []
    ids: list[np.ndarray] = []
    sentence_rows: list[tuple[int, int, int]] = []
    for doc in documents:
        chunked = chunker.chunk(doc)
        ids.append(chunk_ids(doc.doc_id, doc.sha256, [(c.start, c.end) for c in chunked.chunks]))
        for chunk, sents in zip(chunked.chunks, chunked.sentences, strict=True):
            row = len(chunks)
            chunks.append(chunk)
            sentence_rows.extend((row, s, e) for s, e in sents)
    all_ids = np.concatenate(ids) if ids else np.zeros(0, dtype=np.int64)
    return chunks, all_ids, sentence_rows


def word_pieces_per_word(chunks: list[Chunk], embedder: Embedder, sample: int = 2000) -> float:
    """How finely the model's tokenizer cuts the corpus: about 1.1-1.3 for a language the
    model was trained on, over 2 for one it does not know (German with MiniLM: 2.2)."""
    step = max(1, len(chunks) // sample)
    texts = [" ".join(_WORD.findall(c.text)) for c in chunks[::step]]
    words = sum(len(t.split()) for t in texts)
    if not words:
        return 1.0
    return sum(embedder.count_tokens(texts)) / words


def _merge(a: SegmentPayload, b: SegmentPayload) -> SegmentPayload:
    """One payload with the documents of both (b's rows after a's)."""
    shifted = b.sentences + np.asarray([len(a.chunks), 0, 0], dtype=np.int64)
    return SegmentPayload(
        documents=a.documents + b.documents,
        chunks=a.chunks + b.chunks,
        chunk_ids=np.concatenate([a.chunk_ids, b.chunk_ids]),
        # in a's precision: a local export is float16, as the segment stores it
        chunk_vectors=np.vstack([a.chunk_vectors, b.chunk_vectors.astype(a.chunk_vectors.dtype)]),
        sentences=np.vstack([a.sentences, shifted]).astype(np.int64),
        sentence_vectors=np.vstack(
            [a.sentence_vectors, b.sentence_vectors.astype(a.sentence_vectors.dtype)]
        ),
        dimension=a.dimension,
    )


# The coarsest file-time granularity a stamp must outlast (FAT: 2 s; ext4, APFS: 1 ns).
STAMP_SLACK_NS = 2_000_000_000


def _stamps(previous: LocalSnapshot | MilvusSnapshot | None) -> tuple[dict[str, FileStamp], int]:
    """The file stamps of the generation in service and the time before which they are
    trusted (qa.loaders.load_corpus)."""
    if previous is None:
        return {}, 0
    sources = previous.manifest.get("sources", {})
    known = {rel: FileStamp.from_json(row) for rel, row in sources.items()}
    return known, int(previous.manifest.get("scanned_ns", 0)) - STAMP_SLACK_NS


def build_index(
    corpus_dir: Path,
    index: Path | LocalIndexStore | MilvusStore,
    embedder: Embedder,
    spec: IndexSpec,
    *,
    keep_generations: int = 2,
    progress: ProgressFactory | None = None,
    reuse: bool = True,
    loaded: LoadReport | None = None,
    skip_if_unchanged: bool = False,
    wait: bool = False,
    limits: CorpusLimits | None = None,
) -> BuildReport:
    """Index ``corpus_dir`` (or the documents already ``loaded``) into a new generation of
    ``index`` (a store, or a local index folder keeping ``keep_generations``) and put it in
    service.

    With ``reuse`` the generation in service keeps the documents that did not change (in
    the segments that hold them: nothing of theirs is written again) and supplies the
    vectors of unchanged texts; only added, changed and renamed documents are chunked and
    written, as one new segment. With ``skip_if_unchanged`` nothing is written when the
    corpus matches it. A second build at the same time is refused (or waits, with
    ``wait``). Files are read within ``limits`` (default: the settings'; qa.extraction).
    """
    if loaded is None and not corpus_dir.is_dir():
        raise QAError(f"corpus folder {corpus_dir} does not exist; set QA_CORPUS_DIR")
    began = time.perf_counter()
    store = index if not isinstance(index, Path) else LocalIndexStore(index, keep_generations)
    with store.lock(wait=wait):
        previous: LocalSnapshot | MilvusSnapshot | None = None
        if reuse:
            try:
                previous = store.load(spec)
            except QAError as exc:
                log.info("not reusing the previous index: %s", exc.message)
        scanned_ns = time.time_ns()
        if loaded is None:
            known, trusted = _stamps(previous)
            loaded = load_corpus(corpus_dir, limits, known=known, trust_before_ns=trusted)
        checkpoint("loaded")
        documents = loaded.documents  # read; loaded.kept: not read again, unchanged
        skipped = loaded.skipped_rows()
        before = (
            {d: m["sha256"] for d, m in previous.manifest["documents"].items()} if previous else {}
        )
        now = {d.doc_id: d.sha256 for d in documents} | dict(loaded.kept)
        diff = diff_documents(before, now)
        if (
            skip_if_unchanged
            and previous is not None
            and not diff.any
            and skipped == previous.manifest["skipped"]
        ):
            counts = previous.manifest["counts"]
            return BuildReport(
                generation=previous.generation,
                path=previous.path,
                documents=counts["documents"],
                chunks=counts["chunks"],
                sentences=counts["sentences"],
                embedded=0,
                reused=0,
                skipped=skipped,
                seconds=time.perf_counter() - began,
                unchanged=len(diff.unchanged),
                up_to_date=True,
            )

        # what stays where it is, and what goes into the new segment
        unchanged = set(diff.unchanged)
        if previous is not None:
            gone = {d for d in before if d not in unchanged}
            dead = previous.dead_chunks + sum(
                int(previous.manifest["documents"][d]["chunks"]) for d in gone
            )
            rows = previous.dead_chunks + len(previous)
            if (rows and dead / rows > COMPACT_DEAD_SHARE) or len(
                previous.segment_checksums
            ) >= COMPACT_SEGMENTS:
                unchanged = set()  # compaction: unchanged documents are copied, not kept
        fresh = [d for d in documents if d.doc_id not in unchanged]
        copied = (
            previous.export(sorted(set(diff.unchanged) - unchanged))
            if previous is not None and set(diff.unchanged) - unchanged
            else None
        )
        copied_ids = {d.doc_id for d in copied.documents} if copied is not None else set()
        fresh = [d for d in fresh if d.doc_id not in copied_ids]

        chunker = chunker_for(spec, embedder)
        chunks, ids, sentence_rows = _chunk(fresh, chunker)
        checkpoint("chunked")
        # vectors of the texts the changed and renamed documents had before
        old_versions = set(diff.changed) | {old for old, _ in diff.renamed}
        if previous is not None and sentence_policy(embedder) == "mixed":
            # a document of one chunk had pooled sentence vectors: never reused as separate
            old_versions = {
                d for d in old_versions if int(previous.manifest["documents"][d]["chunks"]) > 1
            }
        cache = previous.known_vectors(old_versions) if previous is not None else {}
        chunk_vectors, sentence_vectors, embedded = embed_chunks_and_sentences(
            chunks, sentence_rows, {d.doc_id: d for d in fresh}, embedder, cache, progress
        )
        checkpoint("embedded")

        segment = SegmentPayload(
            documents=fresh,
            chunks=chunks,
            chunk_ids=ids,
            chunk_vectors=chunk_vectors.reshape(len(chunks), embedder.dimension),
            sentences=np.asarray(sentence_rows, dtype=np.int64).reshape(-1, 3),
            sentence_vectors=sentence_vectors.reshape(len(sentence_rows), embedder.dimension),
            dimension=embedder.dimension,
        )
        if copied is not None:
            segment = _merge(copied, segment)
        holders: dict[str, dict[str, Any]] = {}
        kept_segments: dict[str, str] = {}
        if previous is not None:
            for doc_id in unchanged:
                meta = previous.manifest["documents"][doc_id]
                holders[doc_id] = meta
                kept_segments[meta["segment"]] = previous.segment_checksums[meta["segment"]]
        new_counts: dict[str, int] = {}
        for c in segment.chunks:
            new_counts[c.doc_id] = new_counts.get(c.doc_id, 0) + 1
        new_sentences: dict[str, int] = {}
        for row in segment.sentences[:, 0]:
            doc_id = segment.chunks[int(row)].doc_id
            new_sentences[doc_id] = new_sentences.get(doc_id, 0) + 1

        total_new = len(chunks) + len(sentence_rows)
        seconds = time.perf_counter() - began
        kept_chunks = sum(int(m["chunks"]) for m in holders.values())
        wppw = word_pieces_per_word(segment.chunks, embedder) if segment.chunks else 1.0
        if previous is not None and kept_chunks:
            share = kept_chunks / (kept_chunks + len(segment.chunks))
            wppw = share * previous.word_pieces_per_word + (1 - share) * wppw
        stats: dict[str, Any] = {
            "word_pieces_per_word": round(wppw, 3),
            "seconds": round(seconds, 3),
            "embedded": embedded,
            "reused": total_new - embedded,
            "written_chunks": len(segment.chunks),
            "kept_chunks": kept_chunks,
            "chunks_per_second": round(len(chunks) / seconds, 1) if seconds else None,
        }
        documents_map = {
            **holders,
            **{
                d.doc_id: {
                    "path": d.path,
                    "sha256": d.sha256,
                    "chunks": new_counts.get(d.doc_id, 0),
                    "sentences": new_sentences.get(d.doc_id, 0),
                    "segment": None,  # the new segment: named by the store when written
                }
                for d in segment.documents
            },
        }
        payload = GenerationPayload(
            sources={rel: stamp.as_json() for rel, stamp in loaded.stamps.items()},
            scanned_ns=scanned_ns,
            segment=segment if segment.documents else None,
            documents=documents_map,
            segments=kept_segments,
            skipped=skipped,
            spec=spec,
            dimension=embedder.dimension,
            stats=stats,
        )
        gen_dir = store.write(payload)
    return BuildReport(
        generation=int(gen_dir.name.split("-")[1]),
        path=gen_dir,
        documents=len(now),
        chunks=len(segment.chunks) + kept_chunks,
        sentences=sum(int(m["sentences"]) for m in documents_map.values()),
        embedded=embedded,
        reused=total_new - embedded,
        skipped=skipped,
        seconds=time.perf_counter() - began,
        added=diff.added,
        changed=diff.changed,
        removed=diff.removed,
        renamed=diff.renamed,
        unchanged=len(diff.unchanged),
    )


def index_freshness(
    corpus_dir: Path,
    index: Path | LocalIndexStore | MilvusStore,
    spec: IndexSpec,
    limits: CorpusLimits | None = None,
) -> tuple[str, str]:
    """("fresh" | "missing" | "mismatch" | "stale" | "corrupt", why) for the generation in
    service of ``index`` (a store, or a local index folder); see :func:`index_state`."""
    state, why, _ = index_state(corpus_dir, index, spec, limits)
    return state, why


def index_state(
    corpus_dir: Path,
    index: Path | LocalIndexStore | MilvusStore,
    spec: IndexSpec,
    limits: CorpusLimits | None = None,
) -> tuple[str, str, dict[str, Any] | None]:
    """(state, why, the manifest of the generation in service or None) for ``index``. The
    generation is loaded as a server loads it (checksums verified); the corpus is read as
    an update reads it, within ``limits``: files whose stamp did not change are not opened.
    Raises QAError when the corpus folder does not exist."""
    from qa.errors import IndexCorrupt, IndexMismatch, IndexNotReady

    store = LocalIndexStore(index) if isinstance(index, Path) else index
    if store.current_key() is None:
        return "missing", f"no index in {store}", None
    try:
        snapshot = store.load(spec)
    except IndexMismatch as exc:
        return "mismatch", exc.message, None
    except (IndexCorrupt, IndexNotReady) as exc:
        return "corrupt", exc.message, None
    manifest = snapshot.manifest
    if not corpus_dir.is_dir():
        raise QAError(f"corpus folder {corpus_dir} does not exist; set QA_CORPUS_DIR")
    known, trusted = _stamps(snapshot)
    loaded = load_corpus(corpus_dir, limits, known=known, trust_before_ns=trusted)
    diff = diff_documents(
        {k: v["sha256"] for k, v in manifest["documents"].items()},
        {d.doc_id: d.sha256 for d in loaded.documents} | dict(loaded.kept),
    )
    if diff.any:
        return (
            "stale",
            f"corpus changed: {len(diff.added)} added, {len(diff.changed)} changed, "
            f"{len(diff.removed)} removed, {len(diff.renamed)} renamed",
            manifest,
        )
    if loaded.skipped_rows() != manifest["skipped"]:
        return "stale", "the files that cannot be read changed", manifest
    return "fresh", f"generation {manifest['generation']} matches the corpus", manifest
