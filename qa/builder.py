"""Build: load → chunk → embed → store, written as a new index generation.

Vectors of chunks and sentences whose text is unchanged are reused from the generation in
service (same model and chunker settings), so rebuilding after an edit embeds only what
changed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from qa.chunker import Chunker
from qa.documents import Chunk, Document
from qa.embedder import Embedder
from qa.errors import QAError
from qa.extraction import CorpusLimits
from qa.index import (
    BuildPayload,
    IndexData,
    IndexSpec,
    checkpoint,
    index_lock,
    load_current,
    write_generation,
)
from qa.loaders import LoadReport, load_corpus

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


def _key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _reusable_vectors(previous: IndexData | None) -> dict[str, np.ndarray]:
    """Embedding-text hash → vector, from the generation in service."""
    if previous is None:
        return {}
    cache: dict[str, np.ndarray] = {}
    for i, chunk in enumerate(previous.chunks):
        cache[_key(chunk.embed_text)] = previous.chunk_vectors[i]
    for (row, start, end), vec in zip(previous.sentences, previous.sentence_vectors, strict=True):
        doc = previous.documents[previous.chunks[int(row)].doc_id]
        cache[_key(doc.text[int(start) : int(end)])] = vec
    return cache


def embed_with_cache(
    texts: list[str],
    embedder: Embedder,
    cache: dict[str, np.ndarray],
    progress: Callable[[int], None] | None,
) -> tuple[np.ndarray, int]:
    """Vectors for ``texts``; identical texts are embedded once, cached ones not at all."""
    keys = [_key(t) for t in texts]
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


def _chunk_documents(
    documents: list[Document],
    chunker: Chunker,
    previous: IndexData | None,
    unchanged: set[str],
) -> tuple[list[Chunk], list[tuple[int, int, int]]]:
    """Chunks and sentence rows of all documents; unchanged ones are copied, not re-cut."""
    old_rows: dict[str, list[int]] = {}
    if previous is not None:
        for row, chunk in enumerate(previous.chunks):
            if chunk.doc_id in unchanged:
                old_rows.setdefault(chunk.doc_id, []).append(row)
    chunks: list[Chunk] = []
    sentence_rows: list[tuple[int, int, int]] = []
    for doc in documents:
        if previous is not None and doc.doc_id in old_rows:
            for old in old_rows[doc.doc_id]:
                row = len(chunks)
                chunks.append(previous.chunks[old])
                lo, hi = previous.chunk_sentence_ranges[old]
                sentence_rows.extend(
                    (row, int(s), int(e)) for _, s, e in previous.sentences[int(lo) : int(hi)]
                )
            continue
        chunked = chunker.chunk(doc)
        for chunk, sents in zip(chunked.chunks, chunked.sentences, strict=True):
            row = len(chunks)
            chunks.append(chunk)
            sentence_rows.extend((row, s, e) for s, e in sents)
    return chunks, sentence_rows


def word_pieces_per_word(chunks: list[Chunk], embedder: Embedder, sample: int = 2000) -> float:
    """How finely the model's tokenizer cuts the corpus: about 1.1-1.3 for a language the
    model was trained on, over 2 for one it does not know (German with MiniLM: 2.2)."""
    step = max(1, len(chunks) // sample)
    texts = [" ".join(_WORD.findall(c.text)) for c in chunks[::step]]
    words = sum(len(t.split()) for t in texts)
    if not words:
        return 1.0
    return sum(embedder.count_tokens(texts)) / words


def build_index(
    corpus_dir: Path,
    index_dir: Path,
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
    ``index_dir`` and put it in service.

    With ``reuse`` the generation in service supplies the chunks of unchanged documents and
    the vectors of unchanged texts; with ``skip_if_unchanged`` nothing is written when the
    corpus matches it. A second build at the same time is refused (or waits, with ``wait``).
    Files are read within ``limits`` (default: the settings'; see qa.extraction).
    """
    if loaded is None and not corpus_dir.is_dir():
        raise QAError(f"corpus folder {corpus_dir} does not exist; set QA_CORPUS_DIR")
    began = time.perf_counter()
    with index_lock(index_dir, wait=wait):
        previous: IndexData | None = None
        if reuse:
            try:
                previous = load_current(index_dir, spec)
            except QAError as exc:
                log.info("not reusing the previous index: %s", exc.message)
        loaded = loaded or load_corpus(corpus_dir, limits)
        checkpoint("loaded")
        documents = loaded.documents
        skipped = loaded.skipped_rows()
        before = (
            {d: m["sha256"] for d, m in previous.manifest["documents"].items()} if previous else {}
        )
        diff = diff_documents(before, {d.doc_id: d.sha256 for d in documents})
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

        max_tokens = min(spec.chunk_tokens, embedder.max_tokens)
        overlap = min(spec.chunk_overlap_tokens, max_tokens - 1)
        chunker = Chunker(embedder.count_tokens, max_tokens, overlap)
        chunks, sentence_rows = _chunk_documents(documents, chunker, previous, set(diff.unchanged))
        checkpoint("chunked")
        by_id = {d.doc_id: d for d in documents}
        sentence_texts = [by_id[chunks[r].doc_id].text[s:e] for r, s, e in sentence_rows]
        chunk_texts = [c.embed_text for c in chunks]
        cache = _reusable_vectors(previous)
        advance = None
        if progress is not None:
            need = {_key(t) for t in chunk_texts + sentence_texts} - cache.keys()
            advance = progress(len(need))
        chunk_vectors, n1 = embed_with_cache(chunk_texts, embedder, cache, advance)
        sentence_vectors, n2 = embed_with_cache(sentence_texts, embedder, cache, advance)
        checkpoint("embedded")

        embedded = n1 + n2
        total_vectors = len(chunk_texts) + len(sentence_texts)
        seconds = time.perf_counter() - began
        stats: dict[str, Any] = {
            "word_pieces_per_word": round(word_pieces_per_word(chunks, embedder), 3),
            "seconds": round(seconds, 3),
            "embedded": embedded,
            "reused": total_vectors - embedded,
            "chunks_per_second": round(len(chunks) / seconds, 1) if seconds else None,
        }
        payload = BuildPayload(
            documents=documents,
            chunks=chunks,
            chunk_vectors=chunk_vectors,
            sentences=np.asarray(sentence_rows, dtype=np.int64).reshape(-1, 3),
            sentence_vectors=sentence_vectors,
            skipped=skipped,
            spec=spec,
            dimension=embedder.dimension,
            stats=stats,
        )
        gen_dir = write_generation(index_dir, payload, keep=keep_generations)
    return BuildReport(
        generation=int(gen_dir.name.split("-")[1]),
        path=gen_dir,
        documents=len(documents),
        chunks=len(chunks),
        sentences=len(sentence_rows),
        embedded=embedded,
        reused=total_vectors - embedded,
        skipped=skipped,
        seconds=time.perf_counter() - began,
        added=diff.added,
        changed=diff.changed,
        removed=diff.removed,
        renamed=diff.renamed,
        unchanged=len(diff.unchanged),
    )


def index_freshness(
    corpus_dir: Path, index_dir: Path, spec: IndexSpec, limits: CorpusLimits | None = None
) -> tuple[str, str]:
    """("fresh" | "missing" | "mismatch" | "stale" | "corrupt", why) for the index in service.
    The corpus is read as a build reads it, within ``limits``."""
    from qa.errors import IndexCorrupt, IndexMismatch, IndexNotReady
    from qa.index import check_spec, current_generation_dir, read_manifest

    gen_dir = current_generation_dir(index_dir)
    if gen_dir is None:
        return "missing", f"no index in {index_dir}"
    try:
        manifest = read_manifest(gen_dir)
        check_spec(manifest, spec, gen_dir)
    except IndexMismatch as exc:
        return "mismatch", exc.message
    except (IndexCorrupt, IndexNotReady) as exc:
        return "corrupt", exc.message
    if not corpus_dir.is_dir():
        raise QAError(f"corpus folder {corpus_dir} does not exist; set QA_CORPUS_DIR")
    loaded = load_corpus(corpus_dir, limits)
    diff = diff_documents(
        {k: v["sha256"] for k, v in manifest["documents"].items()},
        {d.doc_id: d.sha256 for d in loaded.documents},
    )
    if diff.any:
        return "stale", (
            f"corpus changed: {len(diff.added)} added, {len(diff.changed)} changed, "
            f"{len(diff.removed)} removed, {len(diff.renamed)} renamed"
        )
    if loaded.skipped_rows() != manifest["skipped"]:
        return "stale", "the files that cannot be read changed"
    return "fresh", f"generation {manifest['generation']} matches the corpus"
