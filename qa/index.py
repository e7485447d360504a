"""The index on disk: versioned generations of plain files with a manifest.

Layout under ``index_dir``::

    CURRENT              name of the generation in service (replaced atomically)
    .lock                held while a build runs
    gen-000007/
        manifest.json    format, model, chunker settings, documents, counts, checksums
        documents.jsonl  the exact text every offset points into
        chunks.jsonl     the chunk table (provenance of each vector id)
        sentences.npy    int64 (chunk, start, end) of each highlightable sentence
        sentence_vectors.npy
        vectors.faiss    chunk vectors (ids = chunk row)
        bm25/            bm25s index files (JSON + .npy, no pickle)

A generation is written in a temporary folder, verified, renamed, and only then named in
``CURRENT``; a crash at any point leaves the previous generation in service.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from qa.documents import Chunk, Document
from qa.errors import IndexBusy, IndexCorrupt, IndexMismatch, IndexNotReady
from qa.lexical import BM25Index
from qa.store import FaissStore

log = logging.getLogger(__name__)

FORMAT_VERSION = 4  # 2: stats carry word_pieces_per_word; 3: BM25 keeps numbered identifiers;
# 4: search normalisation (NFKC) of BM25 tokens and embedder input, chunks within the window
CURRENT_FILE = "CURRENT"
LOCK_FILE = ".lock"
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class IndexSpec:
    """What an index must have been built with to be served with the current settings."""

    model_id: str
    chunk_tokens: int
    chunk_overlap_tokens: int

    def chunker_settings(self) -> dict[str, Any]:
        return {"chunk_tokens": self.chunk_tokens, "overlap_tokens": self.chunk_overlap_tokens}


@dataclass
class IndexData:
    """A loaded generation, everything search needs, immutable once loaded."""

    path: Path
    manifest: dict[str, Any]
    documents: dict[str, Document]
    chunks: list[Chunk]
    store: FaissStore
    chunk_vectors: np.ndarray  # (n_chunks, dim), row i is chunk i
    bm25: BM25Index
    sentences: np.ndarray  # (n_sentences, 3) int64: chunk row, start, end
    sentence_vectors: np.ndarray
    chunk_sentence_ranges: np.ndarray = field(init=False)  # (n_chunks, 2) rows into sentences
    chunks_per_doc: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.chunks)
        ranges = np.zeros((n, 2), dtype=np.int64)
        if len(self.sentences):
            owners = self.sentences[:, 0]
            ranges[:, 0] = np.searchsorted(owners, np.arange(n), side="left")
            ranges[:, 1] = np.searchsorted(owners, np.arange(n), side="right")
        self.chunk_sentence_ranges = ranges
        counts: dict[str, int] = {}
        for chunk in self.chunks:
            counts[chunk.doc_id] = counts.get(chunk.doc_id, 0) + 1
        self.chunks_per_doc = counts

    @property
    def generation(self) -> int:
        return int(self.manifest["generation"])

    @property
    def built_at(self) -> str:
        return str(self.manifest["built_at"])

    @property
    def word_pieces_per_word(self) -> float:
        return float(self.manifest.get("stats", {}).get("word_pieces_per_word", 1.0))


# --------------------------------------------------------------------------- files


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False))
            fh.write("\n")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


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


def generation_name(number: int) -> str:
    return f"gen-{number:06d}"


def current_generation_dir(index_dir: Path) -> Path | None:
    pointer = index_dir / CURRENT_FILE
    if not pointer.exists():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    return index_dir / name if name else None


def list_generations(index_dir: Path) -> list[Path]:
    if not index_dir.exists():
        return []
    return sorted(
        p
        for p in index_dir.iterdir()
        if p.is_dir() and p.name.startswith("gen-") and not p.name.endswith(".tmp")
    )


@contextlib.contextmanager
def index_lock(index_dir: Path, *, wait: bool = False) -> Iterator[None]:
    """Exclusive lock for a build; a second build is refused (or waits, if asked)."""
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


# --------------------------------------------------------------------------- write


@dataclass
class BuildPayload:
    documents: list[Document]
    chunks: list[Chunk]
    chunk_vectors: np.ndarray
    sentences: np.ndarray
    sentence_vectors: np.ndarray
    skipped: list[dict[str, str]]
    spec: IndexSpec
    dimension: int
    stats: dict[str, Any]


def write_generation(index_dir: Path, payload: BuildPayload, keep: int = 2) -> Path:
    """Write a new generation and put it in service. Caller holds the index lock."""
    index_dir.mkdir(parents=True, exist_ok=True)
    # numbers are never reused (a server tells generations apart by folder): count the
    # orphans of a crash or a rollback before removing them
    existing = [generation_number(p) for p in list_generations(index_dir)]
    number = max(existing, default=0) + 1
    remove_orphans(index_dir)
    final = index_dir / generation_name(number)
    tmp = index_dir / f"{final.name}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()

    _write_jsonl(
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
    _write_jsonl(
        tmp / "chunks.jsonl",
        [
            {
                "doc_id": c.doc_id,
                "start": c.start,
                "end": c.end,
                "line_start": c.line_start,
                "line_end": c.line_end,
                "page": c.page,
                "heading": c.heading,
            }
            for c in payload.chunks
        ],
    )
    np.save(tmp / "sentences.npy", payload.sentences.astype(np.int64), allow_pickle=False)
    np.save(
        tmp / "sentence_vectors.npy",
        payload.sentence_vectors.astype(np.float32),
        allow_pickle=False,
    )
    store = FaissStore(payload.dimension)
    store.add(np.arange(len(payload.chunks), dtype=np.int64), payload.chunk_vectors)
    store.save(tmp)
    BM25Index.build([c.text for c in payload.chunks]).save(tmp)

    files = {
        p.relative_to(tmp).as_posix(): {"sha256": _sha256_file(p), "bytes": p.stat().st_size}
        for p in sorted(tmp.rglob("*"))
        if p.is_file()
    }
    doc_chunks: dict[str, int] = {}
    for c in payload.chunks:
        doc_chunks[c.doc_id] = doc_chunks.get(c.doc_id, 0) + 1
    manifest = {
        "format_version": FORMAT_VERSION,
        "generation": number,
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {"id": payload.spec.model_id, "dimension": payload.dimension},
        "chunker": payload.spec.chunker_settings(),
        "counts": {
            "documents": len(payload.documents),
            "chunks": len(payload.chunks),
            "sentences": len(payload.sentences),
            "skipped": len(payload.skipped),
        },
        "documents": {
            d.doc_id: {"path": d.path, "sha256": d.sha256, "chunks": doc_chunks.get(d.doc_id, 0)}
            for d in payload.documents
        },
        "skipped": payload.skipped,
        "stats": payload.stats,
        "files": files,
    }
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False), "utf-8")
    for p in tmp.rglob("*"):
        if p.is_file():
            with p.open("rb") as fh:
                os.fsync(fh.fileno())
        elif p.is_dir():
            _fsync_dir(p)
    _fsync_dir(tmp)
    verify_generation(tmp)
    checkpoint("written")
    tmp.rename(final)
    _fsync_dir(index_dir)
    checkpoint("renamed")
    switch_to(index_dir, final)
    prune_generations(index_dir, keep)
    return final


def generation_number(gen_dir: Path) -> int:
    return int(gen_dir.name.split("-")[1])


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
    _fsync_dir(index_dir)


def rollback(index_dir: Path, spec: IndexSpec | None = None) -> Path:
    """Put the generation before the one in service back in service (verified first)."""
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
        load_generation(target, spec)  # verify before it goes into service
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


# --------------------------------------------------------------------------- read


def read_manifest(gen_dir: Path) -> dict[str, Any]:
    path = gen_dir / MANIFEST
    try:
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexCorrupt(f"{path} is missing; rebuild with `qa index build`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexCorrupt(
            f"{path} is not valid JSON ({exc}); rebuild with `qa index build`"
        ) from None
    if manifest.get("format_version") != FORMAT_VERSION:
        raise IndexMismatch(
            f"{path} has format version {manifest.get('format_version')!r}, this qa reads "
            f"version {FORMAT_VERSION}; rebuild with `qa index build`"
        )
    return manifest


def verify_generation(gen_dir: Path) -> dict[str, Any]:
    """Check every file against the manifest's size and checksum."""
    manifest = read_manifest(gen_dir)
    for name, meta in manifest["files"].items():
        path = gen_dir / name
        if not path.is_file():
            raise IndexCorrupt(f"index file {path} is missing; rebuild with `qa index build`")
        if path.stat().st_size != meta["bytes"]:
            raise IndexCorrupt(
                f"index file {path} has {path.stat().st_size} bytes, the manifest says "
                f"{meta['bytes']} (truncated?); rebuild with `qa index build`"
            )
        if _sha256_file(path) != meta["sha256"]:
            raise IndexCorrupt(
                f"index file {path} fails its checksum (corrupted); rebuild with `qa index build`"
            )
    return manifest


def check_spec(manifest: dict[str, Any], spec: IndexSpec, where: Path) -> None:
    built_model = manifest["model"]["id"]
    if built_model != spec.model_id:
        raise IndexMismatch(
            f"the index in {where} was built with model {built_model!r} but "
            f"QA_EMBEDDING_MODEL is {spec.model_id!r}; rebuild it with `qa index build` "
            "(or set QA_EMBEDDING_MODEL back)"
        )
    if manifest["chunker"] != spec.chunker_settings():
        raise IndexMismatch(
            f"the index in {where} was built with chunker settings {manifest['chunker']} but "
            f"the configured ones are {spec.chunker_settings()}; rebuild it with "
            "`qa index build`"
        )


def load_generation(gen_dir: Path, spec: IndexSpec | None = None) -> IndexData:
    """Load and verify one generation (checksums first, then contents)."""
    manifest = verify_generation(gen_dir)
    if spec is not None:
        check_spec(manifest, spec, gen_dir)
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
            for row in _read_jsonl(gen_dir / "documents.jsonl")
        }
        chunks = []
        for row in _read_jsonl(gen_dir / "chunks.jsonl"):
            doc = docs[row["doc_id"]]
            chunks.append(Chunk(text=doc.text[row["start"] : row["end"]], **row))
        dimension = int(manifest["model"]["dimension"])
        store = FaissStore.load(gen_dir, dimension)
        sentences = np.load(gen_dir / "sentences.npy", allow_pickle=False)
        sentence_vectors = np.load(gen_dir / "sentence_vectors.npy", allow_pickle=False)
        bm25 = BM25Index.load(gen_dir, len(chunks))
    except (KeyError, ValueError, OSError, RuntimeError) as exc:
        raise IndexCorrupt(f"index in {gen_dir} cannot be read ({exc}); rebuild it") from exc
    if len(store) != len(chunks) or len(sentences) != len(sentence_vectors):
        raise IndexCorrupt(
            f"index in {gen_dir} is inconsistent: {len(store)} vectors for {len(chunks)} "
            f"chunks; rebuild it with `qa index build`"
        )
    chunk_vectors = store.vectors(np.arange(len(chunks), dtype=np.int64))
    return IndexData(
        path=gen_dir,
        manifest=manifest,
        documents=docs,
        chunks=chunks,
        store=store,
        chunk_vectors=chunk_vectors,
        bm25=bm25,
        sentences=sentences,
        sentence_vectors=sentence_vectors,
    )


def load_current(index_dir: Path, spec: IndexSpec | None = None) -> IndexData:
    gen_dir = current_generation_dir(index_dir)
    if gen_dir is None:
        raise IndexNotReady(
            f"no index in {index_dir}; build one with `qa index build` "
            "(or start the server with `qa serve`, which builds it)"
        )
    if not gen_dir.is_dir():
        raise IndexCorrupt(
            f"{index_dir / CURRENT_FILE} names {gen_dir.name}, which does not exist; "
            "rebuild with `qa index build`"
        )
    return load_generation(gen_dir, spec)
