"""The index in Milvus: generations as visibility ranges on rows, a pointer in a collection.

One Milvus database (a server, a cluster, Milvus Lite's gRPC server, or Milvus Lite embedded
in this process for a local ``.db`` path) holds four collections named ``<prefix>_<name>``:

``chunks``
    one row per chunk of a document in some generation: ``chunk_id`` (stable, see
    :func:`chunk_id`), doc id, path, span, lines, page, heading, the chunk text, the chunk
    vector (COSINE), the text BM25 sees and the sparse vector Milvus's BM25 function makes of
    it, the content hash of what the model embedded (for vector reuse), and the visibility
    range ``gen_from`` / ``gen_to``.
``sentences``
    one row per highlightable sentence of a chunk id: span and vector, keyed by ``chunk_id``
    (a renamed document keeps its chunk ids, so its sentences are not written again).
``documents``
    a document's metadata and its text, split into pieces that fit a VARCHAR field.
``meta``
    the pointer (generation in service, highest generation number ever written) and one
    record per generation (state, stats).

A row is visible in generation ``G`` when ``gen_from <= G and (gen_to == 0 or gen_to > G)``;
every search and read carries that expression. Writing generation ``G`` inserts only new or
changed rows (``gen_from = G``) and closes the rows of removed or changed documents
(``gen_to = G``); nothing unchanged is copied. :meth:`MilvusIndex.publish` then switches the
pointer, which every API process polls (:meth:`MilvusIndex.current`); a request keeps the
:class:`MilvusSnapshot` it started with, and that generation's rows stay visible to it.
Rollback moves the pointer back; the next write first removes what the rolled-back or crashed
generations left (:meth:`MilvusIndex.cleanup_orphans`). Writers must be serialised (one
``qa index`` process at a time, as the local store's lock does); readers are unlimited.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from qa.chunker import Chunker
from qa.documents import Chunk, Document
from qa.embedder import Embedder
from qa.errors import IndexMismatch, IndexNotReady, InvalidRequest, NotFound
from qa.index.files import GenerationPayload
from qa.index.ids import chunk_id
from qa.index.segment import SegmentPayload
from qa.index.snapshot import DocumentInfo, Scored, SentenceSet
from qa.index.spec import FORMAT_VERSION, IndexSpec, check_spec
from qa.lexical import identifiers, tokenize
from qa.normalize import nfc
from qa.settings import Settings

log = logging.getLogger(__name__)

STORE_FORMAT = 1
MAX_VARCHAR_BYTES = 65535  # Milvus's VARCHAR limit
PIECE_CHARS = 16000  # a document text piece: at most 4 bytes a character fits 65535 bytes
ID_BATCH = 1000  # ids per ``in [...]`` expression
CACHE_ROWS = 8192  # chunk rows (vector, text, span) a snapshot keeps, least recently used out
CACHE_ANSWERS = 1024  # counts and identifier frequencies a snapshot keeps
ROW_FIELDS = [
    "chunk_id", "doc_id", "start", "end", "line_start", "line_end", "page", "heading", "text",
    "vector",
]  # fmt: skip
MAX_TOPK = 16384  # Milvus's limit on a search's top k
MAX_IDENTIFIERS = 4096  # per chunk (Milvus's ARRAY capacity limit)
MAX_IDENTIFIER_BYTES = 512
POINTER_PK = 0
LEXICAL_FORMS = ("qa", "raw")
_TOP_CODE_POINT = "\U0010ffff"


def _row_pk(*parts: object) -> int:
    """Primary key of a stored row (rows of one chunk id differ by generation and document)."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return (int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF) or 1


def content_hash(text: str) -> str:
    """Key of a vector's input text for reuse across generations (sha256 hex)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- expressions


def quote(value: str) -> str:
    """``value`` as a Milvus string literal: backslash, double quote and line breaks escaped."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def visible(generation: int) -> str:
    """The expression selecting the rows visible in ``generation``."""
    g = int(generation)
    return f"(gen_from <= {g} and (gen_to == 0 or gen_to > {g}))"


def prefix_expr(field_name: str, prefix: str) -> str:
    """Rows whose ``field_name`` starts with ``prefix``.

    ``like "prefix%"`` when the prefix holds no LIKE metacharacter; otherwise the range
    ``field >= prefix and field < prefix + U+10FFFF``: LIKE escapes (``\\%``, ``\\_``) are not
    honoured the same way by every evaluator (Milvus Lite's row-wise one has none), a range
    compare is exact everywhere (code point order, which UTF-8 byte order preserves).
    """
    if not any(ch in prefix for ch in "%_\\"):
        return f"{field_name} like {quote(prefix + '%')}"
    return f"({field_name} >= {quote(prefix)} and {field_name} < {quote(prefix + _TOP_CODE_POINT)})"


def in_expr(field_name: str, values: Iterable[str] | Iterable[int]) -> str:
    items = [quote(v) if isinstance(v, str) else str(int(v)) for v in values]
    return f"{field_name} in [{', '.join(items)}]"


class FilterLike(Protocol):
    """What a request filter carries (``qa.search.Filters``); values already in NFC."""

    @property
    def doc_ids(self) -> frozenset[str] | None: ...

    @property
    def path_prefix(self) -> str | None: ...


def filter_expr(generation: int, filters: FilterLike | None) -> str | None:
    """The whole filter of a search in ``generation``; None when ``filters`` admit nothing."""
    parts = [visible(generation)]
    if filters is not None:
        if filters.doc_ids is not None:
            if not filters.doc_ids:
                return None
            parts.append(in_expr("doc_key", sorted(nfc(d) for d in filters.doc_ids)))
        if filters.path_prefix:
            parts.append(prefix_expr("path_key", nfc(filters.path_prefix)))
    return " and ".join(parts)


def chunk_identifiers(text: str) -> list[str]:
    """The identifiers of a chunk (qa.lexical.identifiers) that fit Milvus's ARRAY field."""
    out = sorted(t for t in identifiers(text) if len(t.encode()) <= MAX_IDENTIFIER_BYTES)
    return out[:MAX_IDENTIFIERS]


def lexical_text(text: str, form: str) -> str:
    """What Milvus's BM25 analyzer is given for ``text``.

    ``qa``: the project's BM25 tokens (qa.lexical.tokenize: English stopwords removed,
    Snowball stems, numbered identifiers kept whole) joined by spaces, with the joining
    characters of an identifier turned into ``_`` so that Milvus's standard analyzer
    (``\\w+``) keeps it one term. ``raw``: the text itself (Milvus's analyzer alone).
    """
    if form == "raw":
        return text
    terms = tokenize([text])[0]
    return " ".join("".join(ch if ch.isalnum() else "_" for ch in t) for t in terms)


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class DocumentWrite:
    """A new, changed or renamed document with everything stored about it.

    ``chunk_vectors``: (n_chunks, d) float32, row i is ``chunks[i]``; ``sentences``: (s, 3)
    int64 rows ``(chunk index into chunks, start, end)``; ``sentence_vectors``: (s, d);
    ``content_hashes``: per chunk, the key of its vector for reuse (default:
    :func:`content_hash` of ``chunk.embed_text``).
    """

    document: Document
    chunks: Sequence[Chunk]
    chunk_vectors: np.ndarray
    sentences: np.ndarray
    sentence_vectors: np.ndarray
    content_hashes: Sequence[str] | None = None


@dataclass
class WriteReport:
    generation: int
    documents_written: int = 0
    documents_closed: int = 0
    documents_unchanged: int = 0
    chunks_written: int = 0
    chunks_closed: int = 0
    sentences_written: int = 0
    sentences_closed: int = 0
    bytes_sent: int = 0  # vector and text bytes of rows written or rewritten
    orphans_removed: int = 0
    unknown_removed: list[str] = field(default_factory=list)


@dataclass
class UpdateReport:
    generation: int
    write: WriteReport
    added: list[str]
    changed: list[str]
    removed: list[str]
    unchanged: int
    embedded: int  # texts sent to the model
    reused: int  # vectors found in the store by content hash


# --------------------------------------------------------------------------- store


class MilvusIndex:
    """Generations of an index in one Milvus database (write side and pointer).

    ``uri``: a local path ending in ``.db`` runs Milvus Lite inside this process (one process
    per path); ``http(s)://host:port`` reaches a Milvus server or Milvus Lite's gRPC server
    (``milvus-lite server --data-dir D --port P``), which any number of processes share.
    ``dimension``: of chunk and sentence vectors; an existing store with another dimension
    raises :class:`qa.errors.IndexMismatch`. ``lexical_form``: see :func:`lexical_text`.
    Raises :class:`qa.errors.IndexNotReady` when Milvus cannot be reached.
    """

    def __init__(
        self,
        uri: str,
        *,
        dimension: int,
        token: str = "",
        prefix: str = "qa",
        lexical_form: str = "qa",
        timeout: float = 30.0,
    ) -> None:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        if lexical_form not in LEXICAL_FORMS:
            raise InvalidRequest(
                f"lexical_form must be one of {LEXICAL_FORMS}, got {lexical_form!r}"
            )
        if not prefix.replace("_", "").isalnum() or not prefix[:1].isalpha():
            raise InvalidRequest(
                f"collection prefix {prefix!r} must start with a letter and hold only letters, "
                "digits and _"
            )
        if uri.endswith(".db"):
            parent = os.path.dirname(os.path.abspath(uri))
            os.makedirs(parent, exist_ok=True)
            # the embedded server logs a traceback for each timestamp request of a paged
            # query, which Milvus Lite does not implement; pymilvus then pages without one
            logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
        logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)
        self.uri = uri
        self.dimension = int(dimension)
        self.prefix = prefix
        self.lexical_form = lexical_form
        self.timeout = timeout
        for attempt in range(3):  # a busy machine can miss the channel's ready deadline
            try:
                self.client = MilvusClient(uri=uri, token=token, timeout=timeout)
                break
            except MilvusException as exc:
                if attempt == 2:
                    raise IndexNotReady(f"cannot reach Milvus at {uri}: {exc}") from exc
                log.warning("Milvus at %s not reachable (%s); trying again", uri, exc)
        self.chunks_name = f"{prefix}_chunks"
        self.sentences_name = f"{prefix}_sentences"
        self.documents_name = f"{prefix}_documents"
        self.meta_name = f"{prefix}_meta"
        self._load_existing()

    def _load_existing(self) -> None:
        """Load the collections that exist into memory: an embedded Milvus Lite database
        opened by a new process holds them released, and a released collection refuses
        queries (a server keeps them loaded; loading again is a no-op there)."""
        names = (self.chunks_name, self.sentences_name, self.documents_name, self.meta_name)
        for name in names:
            if self.client.has_collection(name):
                self.client.load_collection(name, timeout=self.timeout)

    # ------------------------------------------------------------------ schema

    def exists(self) -> bool:
        return bool(self.client.has_collection(self.meta_name))

    def ensure_collections(self) -> None:
        """Create the four collections (and their indexes) where missing; check the
        dimension of existing ones."""
        from pymilvus import DataType, Function, FunctionType, MilvusClient

        strong = {"consistency_level": "Strong"}
        if not self.client.has_collection(self.chunks_name):
            s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            s.add_field("pk", DataType.INT64, is_primary=True)
            s.add_field("chunk_id", DataType.INT64)
            s.add_field("doc_id", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES)
            s.add_field("doc_key", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES)
            s.add_field("path", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES)
            s.add_field("path_key", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES)
            for name in ("start", "end", "line_start", "line_end", "page"):
                s.add_field(name, DataType.INT64)
            s.add_field("heading", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES)
            s.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES)
            s.add_field(
                "lexical",
                DataType.VARCHAR,
                max_length=MAX_VARCHAR_BYTES,
                enable_analyzer=True,
                analyzer_params={"tokenizer": "standard"},
            )
            s.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
            s.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dimension)
            s.add_field("content_hash", DataType.VARCHAR, max_length=64)
            s.add_field(
                "identifiers",
                DataType.ARRAY,
                element_type=DataType.VARCHAR,
                max_capacity=MAX_IDENTIFIERS,
                max_length=MAX_IDENTIFIER_BYTES,
            )
            s.add_field("gen_from", DataType.INT64)
            s.add_field("gen_to", DataType.INT64)
            s.add_function(
                Function(
                    name="bm25",
                    function_type=FunctionType.BM25,
                    input_field_names=["lexical"],
                    output_field_names=["sparse"],
                )
            )
            ip = self.client.prepare_index_params()
            ip.add_index(field_name="vector", index_type="FLAT", metric_type="COSINE")
            ip.add_index(
                field_name="sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25"
            )
            self.client.create_collection(self.chunks_name, schema=s, index_params=ip, **strong)
        if not self.client.has_collection(self.sentences_name):
            s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            s.add_field("pk", DataType.INT64, is_primary=True)
            s.add_field("chunk_id", DataType.INT64)
            s.add_field("start", DataType.INT64)
            s.add_field("end", DataType.INT64)
            s.add_field("vector", DataType.FLOAT_VECTOR, dim=self.dimension)
            s.add_field("content_hash", DataType.VARCHAR, max_length=64)
            s.add_field("gen_from", DataType.INT64)
            s.add_field("gen_to", DataType.INT64)
            ip = self.client.prepare_index_params()
            ip.add_index(field_name="vector", index_type="FLAT", metric_type="COSINE")
            self.client.create_collection(self.sentences_name, schema=s, index_params=ip, **strong)
        for name, fields in (
            (
                self.documents_name,
                ("doc_id", "doc_key", "path", "title", "sha256", "page_starts", "text"),
            ),
            (self.meta_name, ("kind", "info")),
        ):
            if self.client.has_collection(name):
                continue
            s = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
            s.add_field("pk", DataType.INT64, is_primary=True)
            for f in fields:
                s.add_field(f, DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES)
            for f in ("piece", "chunks", "sentences", "value", "gen_from", "gen_to"):
                s.add_field(f, DataType.INT64)
            # Milvus needs a vector field in every collection; this one is never searched
            s.add_field("_unused", DataType.FLOAT_VECTOR, dim=2)
            ip = self.client.prepare_index_params()
            ip.add_index(field_name="_unused", index_type="FLAT", metric_type="L2")
            self.client.create_collection(name, schema=s, index_params=ip, **strong)
        self._check_dimension()

    def _check_dimension(self) -> None:
        described = self.client.describe_collection(self.chunks_name)
        for f in described.get("fields", []):
            if f.get("name") == "vector":
                dim = int(f.get("params", {}).get("dim", self.dimension))
                if dim != self.dimension:
                    raise IndexMismatch(
                        f"the Milvus collection {self.chunks_name} at {self.uri} holds "
                        f"{dim}-dimensional vectors but the embedder makes {self.dimension}; "
                        "use another collection prefix or rebuild"
                    )

    # ------------------------------------------------------------------ low level

    def _query(self, collection: str, expr: str, fields: Sequence[str]) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.client.query(
            collection,
            filter=expr,
            output_fields=list(fields),
            consistency_level="Strong",
            timeout=self.timeout,
        )
        return rows

    def _query_ids(
        self,
        collection: str,
        field_name: str,
        values: Sequence[Any],
        extra: str,
        fields: Sequence[str],
        bulk: bool = False,
    ) -> list[dict[str, Any]]:
        """Rows whose ``field_name`` is one of ``values`` (and ``extra``), in batches;
        ``bulk``: page through the results (no limit on their number; for the write side)."""
        out: list[dict[str, Any]] = []
        for lo in range(0, len(values), ID_BATCH):
            batch = values[lo : lo + ID_BATCH]
            expr = in_expr(field_name, batch)
            expr = f"{expr} and {extra}" if extra else expr
            if bulk:
                out.extend(self._iterate(collection, expr, fields))
            else:
                out.extend(self._query(collection, expr, fields))
        return out

    def _iterate(
        self, collection: str, expr: str, fields: Sequence[str], batch: int = 1000
    ) -> Iterator[dict[str, Any]]:
        """Every row matching ``expr``, in pages (no result-window limit)."""
        iterator = self.client.query_iterator(
            collection,
            batch_size=batch,
            filter=expr,
            output_fields=list(fields),
            consistency_level="Strong",
            timeout=self.timeout,
        )
        try:
            while True:
                page = iterator.next()
                if not page:
                    return
                yield from page
        finally:
            iterator.close()

    def _insert(self, collection: str, rows: list[dict[str, Any]], batch: int = 500) -> None:
        for lo in range(0, len(rows), batch):
            self.client.insert(collection, rows[lo : lo + batch], timeout=self.timeout)

    def _upsert(self, collection: str, rows: list[dict[str, Any]], batch: int = 500) -> None:
        for lo in range(0, len(rows), batch):
            self.client.upsert(collection, rows[lo : lo + batch], timeout=self.timeout)

    # ------------------------------------------------------------------ pointer

    def _pointer(self) -> dict[str, Any]:
        if not self.exists():
            return {"current": 0, "high": 0}
        rows = self._query(self.meta_name, f"pk == {POINTER_PK}", ["value", "info"])
        if not rows:
            return {"current": 0, "high": 0}
        info = json.loads(rows[0]["info"] or "{}")
        return {"current": int(rows[0]["value"]), "high": int(info.get("high", 0))}

    def _set_pointer(self, current: int, high: int) -> None:
        self._upsert(
            self.meta_name,
            [
                self._meta_row(
                    POINTER_PK, "pointer", current, {"high": high, "format": STORE_FORMAT}
                )
            ],
        )

    @staticmethod
    def _meta_row(pk: int, kind: str, value: int, info: dict[str, Any]) -> dict[str, Any]:
        return {
            "pk": pk,
            "kind": kind,
            "info": json.dumps(info, ensure_ascii=False),
            "piece": 0,
            "chunks": 0,
            "sentences": 0,
            "value": value,
            "gen_from": 0,
            "gen_to": 0,
            "_unused": [1.0, 0.0],
        }

    def current(self) -> int:
        """The generation in service (0: none yet). Cheap: one point query; poll it."""
        return int(self._pointer()["current"])

    def next_generation(self) -> int:
        """A number never used before (rolled-back and crashed generations included)."""
        return int(self._pointer()["high"]) + 1

    def generations(self) -> dict[int, dict[str, Any]]:
        """Records of the generations kept: number -> {state, written_at, stats, ...}."""
        if not self.exists():
            return {}
        rows = self._query(self.meta_name, 'kind == "generation"', ["value", "info"])
        return {int(r["value"]): json.loads(r["info"]) for r in rows}

    def set_listing(self, kind: str, generation: int, value: Any) -> None:
        """Keep a generation's corpus-sized listing (``kind`` "sources": the file stamps
        it was built from, qa.loaders.FileStamp as JSON by file; "skipped": every file or
        row that could not be read) in the meta collection, as pieces of one JSON text (a
        VARCHAR holds 64 KB). Pruned with the generation."""
        text = json.dumps(value, ensure_ascii=False, sort_keys=True)
        pieces = [text[i : i + PIECE_CHARS] for i in range(0, len(text), PIECE_CHARS)] or [""]
        rows = []
        for n, piece in enumerate(pieces):
            row = self._meta_row(_row_pk(kind, generation, n), kind, generation, {})
            row["info"], row["piece"], row["chunks"] = piece, n, len(pieces)
            rows.append(row)
        self._upsert(self.meta_name, rows)

    def listing(self, kind: str, generation: int) -> Any:
        """What :meth:`set_listing` kept, or None if nothing or a piece is missing."""
        rows = list(
            self._iterate(
                self.meta_name,
                f"kind == {quote(kind)} and value == {int(generation)}",
                ["piece", "chunks", "info"],
            )
        )
        rows.sort(key=lambda r: int(r["piece"]))
        if not rows or [int(r["piece"]) for r in rows] != list(range(int(rows[0]["chunks"]))):
            return None
        try:
            return json.loads("".join(str(r["info"]) for r in rows))
        except ValueError:
            return None

    def set_sources(self, generation: int, sources: dict[str, Any]) -> None:
        """Keep the corpus file stamps of ``generation``: the next update opens only files
        whose stamp changed."""
        self.set_listing("sources", generation, sources)

    def sources(self, generation: int) -> dict[str, Any]:
        """The file stamps kept for ``generation`` ({} if none or incomplete: then the next
        update reads every file, as without stamps)."""
        found = self.listing("sources", generation)
        return found if isinstance(found, dict) else {}

    def skipped(self, generation: int) -> list[dict[str, Any]] | None:
        """Every file or row ``generation`` could not read (None if not kept whole)."""
        found = self.listing("skipped", generation)
        return found if isinstance(found, list) else None

    def _set_record(self, generation: int, info: dict[str, Any]) -> None:
        """Store a generation's record (one JSON VARCHAR): a long list of skipped files is
        cut to what fits, with the number left out. File stamps are kept apart
        (:meth:`set_sources`)."""
        info = dict(info)
        skipped = list(info.get("skipped", []))
        total = len(skipped)
        while len(json.dumps(info, ensure_ascii=False).encode()) > MAX_VARCHAR_BYTES - 512:
            if not skipped:
                raise InvalidRequest(f"the record of generation {generation} is too large")
            skipped = skipped[: len(skipped) // 2]
            info["skipped"] = skipped
            info["skipped_left_out"] = total - len(skipped)
        self._upsert(self.meta_name, [self._meta_row(generation, "generation", generation, info)])

    def publish(self, generation: int) -> None:
        """Put ``generation`` (written by :meth:`write_generation`) in service."""
        records = self.generations()
        if generation not in records:
            raise NotFound(f"generation {generation} was never written to {self.uri}")
        pointer = self._pointer()
        if generation < pointer["current"]:
            raise InvalidRequest(
                f"generation {generation} is older than the one in service "
                f"({pointer['current']}); use rollback"
            )
        info = {**records[generation], "state": "published"}
        info["published_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        self._set_record(generation, info)
        self._set_pointer(generation, max(pointer["high"], generation))

    def rollback(self) -> int:
        """Put the newest published generation older than the one in service back in
        service; returns its number. Raises IndexNotReady when there is none."""
        pointer = self._pointer()
        current = pointer["current"]
        older = [
            g
            for g, info in self.generations().items()
            if g < current and info.get("state") == "published"
        ]
        if not current or not older:
            raise IndexNotReady(
                f"no published generation older than {current} is kept in {self.uri}; "
                "nothing to roll back to"
            )
        target = max(older)
        self._set_pointer(target, pointer["high"])
        return target

    def cleanup_orphans(self) -> int:
        """Remove what generations newer than the one in service left (a crashed write, a
        rolled-back generation): their rows are deleted and rows they closed are open
        again. Returns the number of rows deleted or reopened."""
        if not self.exists():
            return 0
        current = self.current()
        touched = 0
        for name in (self.chunks_name, self.sentences_name, self.documents_name):
            newer = list(self._iterate(name, f"gen_from > {current}", ["pk"]))
            if newer:
                self.client.delete(name, ids=[int(r["pk"]) for r in newer], timeout=self.timeout)
                touched += len(newer)
            closed = list(self._iterate(name, f"gen_to > {current}", ["*"]))
            for row in closed:
                row["gen_to"] = 0
                row.pop("sparse", None)  # the BM25 function makes it again from the text
            if closed:
                self._upsert(name, closed)
                touched += len(closed)
        if touched:
            self.flush()
        self._delete_meta(f"value > {current}")
        return touched

    def _delete_meta(self, bound: str) -> None:
        """Delete the records and listings (file stamps, skip list) of the generations
        whose number meets ``bound`` (e.g. "value < 7"); the pointer is never one."""
        expr = f'kind in ["generation", "sources", "skipped"] and {bound}'
        pks = [int(r["pk"]) for r in self._iterate(self.meta_name, expr, ["pk"])]
        if pks:
            self.client.delete(self.meta_name, ids=pks, timeout=self.timeout)

    def prune(self, keep: int = 2) -> int:
        """Delete rows no longer visible in any of the ``keep`` newest published
        generations up to the one in service (so they can no longer be rolled back to)."""
        current = self.current()
        kept = sorted(
            g
            for g, info in self.generations().items()
            if g <= current and info.get("state") == "published"
        )[-max(1, keep) :]
        if not kept:
            return 0
        oldest = kept[0]
        removed = 0
        for name in (self.chunks_name, self.sentences_name, self.documents_name):
            dead = list(self._iterate(name, f"gen_to != 0 and gen_to <= {oldest}", ["pk"]))
            if dead:
                self.client.delete(name, ids=[int(r["pk"]) for r in dead], timeout=self.timeout)
                removed += len(dead)
        self._delete_meta(f"value < {oldest}")
        return removed

    # ------------------------------------------------------------------ write

    def vectors_by_content_hash(self, hashes: Iterable[str]) -> dict[str, np.ndarray]:
        """Vectors already stored for these content hashes (:func:`content_hash` of the
        text the model embedded: a chunk's ``embed_text`` or a sentence's text), from chunk
        rows and sentence rows of any kept generation (the store holds one model's
        vectors), so an update embeds only new texts. Hash -> (d,) float32."""
        wanted = sorted(set(hashes))
        if not wanted or not self.exists():
            return {}
        found: dict[str, np.ndarray] = {}
        for name in (self.chunks_name, self.sentences_name):
            missing = [h for h in wanted if h not in found]
            if not missing:
                break
            for r in self._query_ids(name, "content_hash", missing, "", ["content_hash", "vector"]):
                found.setdefault(r["content_hash"], np.asarray(r["vector"], dtype=np.float32))
        return found

    def write_generation(
        self,
        generation: int,
        added: Sequence[DocumentWrite],
        removed: Iterable[str] = (),
        stats: dict[str, Any] | None = None,
        info: dict[str, Any] | None = None,
    ) -> WriteReport:
        """Write generation ``generation`` as the one in service plus ``added`` documents
        (new, changed or renamed) minus ``removed`` doc ids, without publishing it.

        Only new or changed rows are written; an added document equal to the one in service
        (same text hash, path and title) is skipped. Orphans of earlier crashed or rolled-back
        writes are removed first. ``generation`` must be above every number used before
        (:meth:`next_generation`). ``info`` is kept in the generation's record (model,
        chunker, skipped files). Raises InvalidRequest for a bad number, a document both
        added and removed or added twice, mismatched vector shapes, or a text too long for a
        Milvus VARCHAR field.
        """
        self.ensure_collections()
        pointer = self._pointer()
        if generation <= pointer["high"]:
            raise InvalidRequest(
                f"generation {generation} is not above the highest one written "
                f"({pointer['high']}); use next_generation()"
            )
        removed_ids = sorted(set(removed))
        added_ids = [w.document.doc_id for w in added]
        if len(set(added_ids)) != len(added_ids):
            raise InvalidRequest("a document is added twice in one generation")
        if set(added_ids) & set(removed_ids):
            raise InvalidRequest("a document is both added and removed in one generation")
        for w in added:
            self._check_write(w)
        report = WriteReport(generation)
        report.orphans_removed = self.cleanup_orphans()
        current = pointer["current"]
        # the number is taken before anything is written: a crash never lets it be reused
        self._set_pointer(current, generation)
        self._set_record(
            generation,
            {
                "state": "writing",
                "based_on": current,
                "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
            },
        )
        seen = visible(current)
        touched = sorted(set(added_ids) | set(removed_ids))
        in_service: dict[str, dict[str, Any]] = {}
        if current and touched:
            for row in self._query_ids(
                self.documents_name,
                "doc_id",
                touched,
                f"piece == 0 and {seen}",
                ["doc_id", "path", "title", "sha256"],
            ):
                in_service[row["doc_id"]] = row
        report.unknown_removed = [d for d in removed_ids if d not in in_service]
        writes = []
        for w in added:
            old = in_service.get(w.document.doc_id)
            d = w.document
            if old and (old["sha256"], old["path"], old["title"]) == (d.sha256, d.path, d.title):
                report.documents_unchanged += 1
                continue
            writes.append(w)
        closing = sorted(
            [d for d in removed_ids if d in in_service]
            + [w.document.doc_id for w in writes if w.document.doc_id in in_service]
        )
        g = generation
        # 1. close the rows of removed and changed documents (gen_to = G)
        closed_chunk_ids: set[int] = set()
        if closing:
            docs = self._query_ids(
                self.documents_name, "doc_id", closing, f"gen_to == 0 and {seen}", ["*"], bulk=True
            )
            for row in docs:
                row["gen_to"] = g
            self._upsert(self.documents_name, docs)
            report.documents_closed = len({r["doc_id"] for r in docs})
            chunks = self._query_ids(
                self.chunks_name, "doc_id", closing, f"gen_to == 0 and {seen}", ["*"], bulk=True
            )
            for row in chunks:
                row["gen_to"] = g
                row.pop("sparse", None)
                closed_chunk_ids.add(int(row["chunk_id"]))
            self._upsert(self.chunks_name, chunks)
            report.chunks_closed = len(chunks)
            report.bytes_sent += sum(
                4 * self.dimension + len(str(r["text"]).encode()) for r in chunks
            )
        # 2. insert the rows of new and changed documents (gen_from = G)
        new_chunk_ids: set[int] = set()
        chunk_rows: list[dict[str, Any]] = []
        doc_rows: list[dict[str, Any]] = []
        sentence_candidates: list[tuple[int, int, int, np.ndarray, str]] = []
        for w in writes:
            d = w.document
            ids = [chunk_id(d.doc_id, d.sha256, c.start, c.end) for c in w.chunks]
            hashes = list(w.content_hashes or [content_hash(c.embed_text) for c in w.chunks])
            for c, cid, h, vec in zip(w.chunks, ids, hashes, w.chunk_vectors, strict=True):
                chunk_rows.append(
                    {
                        "pk": _row_pk("c", cid, d.doc_id, g),
                        "chunk_id": cid,
                        "doc_id": d.doc_id,
                        "doc_key": nfc(d.doc_id),
                        "path": d.path,
                        "path_key": nfc(d.path),
                        "start": c.start,
                        "end": c.end,
                        "line_start": c.line_start,
                        "line_end": c.line_end,
                        "page": -1 if c.page is None else c.page,
                        "heading": c.heading,
                        "text": c.text,
                        "lexical": lexical_text(c.text, self.lexical_form),
                        "vector": np.asarray(vec, dtype=np.float32).tolist(),
                        "content_hash": h,
                        "identifiers": chunk_identifiers(c.text),
                        "gen_from": g,
                        "gen_to": 0,
                    }
                )
                report.bytes_sent += 4 * self.dimension + len(c.text.encode())
            new_chunk_ids.update(ids)
            for (row, s, e), vec in zip(w.sentences, w.sentence_vectors, strict=True):
                sentence_candidates.append((ids[int(row)], int(s), int(e), vec, d.text))
            pieces = [d.text[i : i + PIECE_CHARS] for i in range(0, len(d.text), PIECE_CHARS)]
            for n, piece in enumerate(pieces or [""]):
                doc_rows.append(
                    {
                        "pk": _row_pk("d", d.doc_id, n, g),
                        "doc_id": d.doc_id,
                        "doc_key": nfc(d.doc_id),
                        "path": d.path,
                        "title": d.title if n == 0 else "",
                        "sha256": d.sha256,
                        "page_starts": json.dumps(list(d.page_starts)) if n == 0 else "[]",
                        "text": piece,
                        "piece": n,
                        "chunks": len(w.chunks),
                        "sentences": len(w.sentences),
                        "value": len(pieces),
                        "gen_from": g,
                        "gen_to": 0,
                        "_unused": [1.0, 0.0],
                    }
                )
                report.bytes_sent += len(piece.encode())
        self._insert(self.documents_name, doc_rows)
        self._insert(self.chunks_name, chunk_rows)
        report.documents_written = len(writes)
        report.chunks_written = len(chunk_rows)
        # 3. sentences: written for chunk ids no chunk row held in the generation in
        # service (a renamed or retitled document keeps its chunk ids and their sentences),
        # closed for chunk ids no open chunk row holds any more
        held_before: set[int] = set()
        if new_chunk_ids and current:
            held_before = {
                int(r["chunk_id"])
                for r in self._query_ids(
                    self.chunks_name, "chunk_id", sorted(new_chunk_ids), seen, ["chunk_id"]
                )
            }
        sentence_rows = [
            {
                "pk": _row_pk("s", cid, s, e, g),
                "chunk_id": cid,
                "start": s,
                "end": e,
                "vector": np.asarray(vec, dtype=np.float32).tolist(),
                "content_hash": content_hash(text[s:e]),
                "gen_from": g,
                "gen_to": 0,
            }
            for cid, s, e, vec, text in sentence_candidates
            if cid not in held_before
        ]
        sentence_rows = list({r["pk"]: r for r in sentence_rows}.values())  # same text twice
        self._insert(self.sentences_name, sentence_rows)
        report.sentences_written = len(sentence_rows)
        report.bytes_sent += len(sentence_rows) * 4 * self.dimension
        gone = closed_chunk_ids - new_chunk_ids
        if gone:
            still_open = {
                int(r["chunk_id"])
                for r in self._query_ids(
                    self.chunks_name, "chunk_id", sorted(gone), "gen_to == 0", ["chunk_id"]
                )
            }
            gone -= still_open
        if gone:
            sentences = self._query_ids(
                self.sentences_name,
                "chunk_id",
                sorted(gone),
                f"gen_to == 0 and {seen}",
                ["*"],
                bulk=True,
            )
            for row in sentences:
                row["gen_to"] = g
            self._upsert(self.sentences_name, sentences)
            report.sentences_closed = len(sentences)
            report.bytes_sent += len(sentences) * 4 * self.dimension
        self.flush()
        self._set_record(
            g,
            {
                "state": "written",
                "based_on": current,
                "written_at": datetime.now(UTC).isoformat(timespec="seconds"),
                **(info or {}),
                "stats": stats or {},
                "report": {
                    k: v for k, v in report.__dict__.items() if k not in ("unknown_removed",)
                },
            },
        )
        return report

    def flush(self) -> None:
        """Seal what was written into segments. Milvus Lite computes BM25 statistics per
        segment, and over only the rows a filter admits while rows are still in its
        memtable; after a flush a filtered BM25 search scores as an unfiltered one does."""
        for name in (self.chunks_name, self.sentences_name, self.documents_name):
            self.client.flush(name, timeout=self.timeout)

    def _check_write(self, w: DocumentWrite) -> None:
        n = len(w.chunks)
        if w.chunk_vectors.shape != (n, self.dimension):
            raise InvalidRequest(
                f"{w.document.doc_id}: chunk vectors have shape {w.chunk_vectors.shape}, "
                f"expected ({n}, {self.dimension})"
            )
        if w.sentence_vectors.shape != (len(w.sentences), self.dimension):
            raise InvalidRequest(
                f"{w.document.doc_id}: sentence vectors have shape {w.sentence_vectors.shape}, "
                f"expected ({len(w.sentences)}, {self.dimension})"
            )
        if w.content_hashes is not None and len(w.content_hashes) != n:
            raise InvalidRequest(f"{w.document.doc_id}: {len(w.content_hashes)} hashes, {n} chunks")
        for value, what in [(w.document.doc_id, "doc id"), (w.document.path, "path")] + [
            (c.text, "chunk text") for c in w.chunks
        ]:
            if len(value.encode("utf-8")) > MAX_VARCHAR_BYTES:
                raise InvalidRequest(
                    f"{w.document.doc_id}: a {what} of {len(value.encode())} bytes exceeds "
                    f"Milvus's VARCHAR limit of {MAX_VARCHAR_BYTES}"
                )

    def update_from_documents(
        self,
        documents: Sequence[Document],
        chunker: Chunker,
        embedder: Embedder,
        *,
        keep: int = 2,
        stats: dict[str, Any] | None = None,
    ) -> UpdateReport | None:
        """Make the corpus ``documents`` the generation in service: documents new or
        different from the ones in service (text, path or title) are chunked and written,
        missing ones removed; texts whose vectors the store holds are not embedded again.
        Publishes the new generation and prunes to ``keep``; returns None (nothing written)
        when the corpus matches the generation in service."""
        current = self.current()
        before: dict[str, tuple[str, str, str]] = {}
        if current:
            before = {
                d.doc_id: (d.sha256, d.path, d.title) for d in self.snapshot(current).documents()
            }
        now = {d.doc_id: d for d in documents}
        if len(now) != len(documents):
            raise InvalidRequest("two documents have the same doc id")
        todo = [d for d in documents if before.get(d.doc_id) != (d.sha256, d.path, d.title)]
        removed = sorted(set(before) - set(now))
        if current and not todo and not removed:
            return None
        chunked = [chunker.chunk(d) for d in todo]
        texts: list[str] = []
        for d, c in zip(todo, chunked, strict=True):
            texts += [chunk.embed_text for chunk in c.chunks]
            texts += [d.text[s:e] for sents in c.sentences for s, e in sents]
        keys = [content_hash(t) for t in texts]
        cache = self.vectors_by_content_hash(keys)
        reused = sum(1 for k in keys if k in cache)
        fresh: dict[str, str] = {}
        for k, t in zip(keys, texts, strict=True):
            if k not in cache:
                fresh.setdefault(k, t)
        if fresh:
            vectors = embedder.embed(list(fresh.values()))
            cache.update(zip(fresh, np.asarray(vectors, dtype=np.float32), strict=True))
        writes = []
        for d, c in zip(todo, chunked, strict=True):
            rows = [(i, s, e) for i, sents in enumerate(c.sentences) for s, e in sents]
            chunk_keys = [content_hash(chunk.embed_text) for chunk in c.chunks]
            sentence_keys = [content_hash(d.text[s:e]) for _, s, e in rows]
            writes.append(
                DocumentWrite(
                    document=d,
                    chunks=c.chunks,
                    chunk_vectors=np.asarray(
                        [cache[k] for k in chunk_keys], dtype=np.float32
                    ).reshape(-1, self.dimension),
                    sentences=np.asarray(rows, dtype=np.int64).reshape(-1, 3),
                    sentence_vectors=np.asarray(
                        [cache[k] for k in sentence_keys], dtype=np.float32
                    ).reshape(-1, self.dimension),
                    content_hashes=chunk_keys,
                )
            )
        generation = self.next_generation()
        report = self.write_generation(generation, writes, removed, stats)
        self.publish(generation)
        self.prune(keep)
        return UpdateReport(
            generation=generation,
            write=report,
            added=sorted(d.doc_id for d in todo if d.doc_id not in before),
            changed=sorted(d.doc_id for d in todo if d.doc_id in before),
            removed=removed,
            unchanged=len(documents) - len(todo),
            embedded=len(fresh),
            reused=reused,
        )

    # ------------------------------------------------------------------ read

    def snapshot(self, generation: int | None = None) -> MilvusSnapshot:
        """The read side of ``generation`` (default: the one in service)."""
        if not self.exists():
            raise IndexNotReady(f"no index in Milvus at {self.uri} (prefix {self.prefix!r})")
        g = self.current() if generation is None else int(generation)
        if g <= 0:
            raise IndexNotReady(f"no generation is in service in Milvus at {self.uri}")
        return MilvusSnapshot(self, g)

    def close(self) -> None:
        self.client.close()


class LRU:
    """A thread-safe least-recently-used map of at most ``size`` entries."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Any) -> Any:
        with self._lock:
            if key not in self._data:
                return None
            self._data.move_to_end(key)
            return self._data[key]

    def split(self, keys: Iterable[Any]) -> tuple[dict[Any, Any], list[Any]]:
        """({key: value} of the keys held, [the keys not held]), in the keys' order."""
        found: dict[Any, Any] = {}
        missing: list[Any] = []
        for key in keys:
            value = self.get(key)
            if value is None:
                missing.append(key)
            else:
                found[key] = value
        return found, missing

    def put(self, key: Any, value: Any) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


class MilvusSnapshot:
    """One generation, read-only (qa.index.snapshot.Snapshot); every call filters on its
    visibility range, so a request keeps reading the generation it started with.

    Ids are stable chunk ids (qa.index.ids). Scores: cosine (dense), BM25 (lexical), best
    first. Holds nothing corpus-sized: every answer is a Milvus query or search. A
    generation never changes, so the snapshot keeps bounded caches of what one search asks
    more than once (a chunk's row and sentences, counts, identifier frequencies): at most
    CACHE_ROWS chunks, whatever the corpus size.
    """

    def __init__(self, index: MilvusIndex, generation: int) -> None:
        self.index = index
        self._generation = generation
        self._visible = visible(generation)
        self.record = index.generations().get(generation, {})
        self.path = Path(f"milvus/{index.prefix}/gen-{generation:06d}")  # a label
        self._size: int | None = None
        self._documents_map: dict[str, dict[str, Any]] | None = None
        self._manifest: dict[str, Any] | None = None
        self._document_list: list[tuple[DocumentInfo, int]] | None = None
        self._row_cache = LRU(CACHE_ROWS)  # chunk id -> row of every chunk field
        self._sentence_cache = LRU(CACHE_ROWS)  # chunk id -> its sentence rows
        self._row_keys = LRU(CACHE_ROWS)  # chunk id -> primary key of its row visible here
        self._answers = LRU(CACHE_ANSWERS)  # ("count", filter) / ("df", token) -> int

    # ------------------------------------------------------------------ about
    @property
    def generation(self) -> int:
        return self._generation

    @property
    def key(self) -> str:
        return str(self._generation)

    @property
    def built_at(self) -> str:
        return str(self.record.get("published_at") or self.record.get("written_at", ""))

    @property
    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.record.get("stats", {})
        return stats

    @property
    def word_pieces_per_word(self) -> float:
        return float(self.stats.get("word_pieces_per_word", 1.0))

    @property
    def manifest(self) -> dict[str, Any]:
        """The generation's record in the local manifest's shape (documents listed on first
        use: one paged query; built once, a generation never changes)."""
        if self._manifest is not None:
            return self._manifest
        if self._documents_map is None:
            self._documents_map = {
                d.doc_id: {
                    "path": d.path,
                    "sha256": d.sha256,
                    "chunks": d.chunks,
                    "sentences": sentences,
                    "segment": "milvus",
                }
                for d, sentences in self._document_rows()
            }
        docs = self._documents_map
        self._manifest = {
            "format_version": FORMAT_VERSION,
            "generation": self._generation,
            "built_at": self.built_at,
            "model": self.record.get("model", {"id": "", "dimension": self.index.dimension}),
            "chunker": self.record.get("chunker", {}),
            "counts": {
                "documents": len(docs),
                "chunks": sum(int(m["chunks"]) for m in docs.values()),
                "sentences": sum(int(m["sentences"]) for m in docs.values()),
                "skipped": len(self.record.get("skipped", []))
                + int(self.record.get("skipped_left_out", 0)),
                "segments": 0,
            },
            "documents": docs,
            "skipped": self.index.skipped(self._generation) or self.record.get("skipped", []),
            "stats": self.stats,
            "sources": self.index.sources(self._generation),
            "scanned_ns": int(self.record.get("scanned_ns", 0)),
            "store": {"kind": "milvus", "uri": self.index.uri, "prefix": self.index.prefix},
        }
        return self._manifest

    def __len__(self) -> int:
        if self._size is None:
            self._size = self.count(None)
        return self._size

    def count(self, filters: FilterLike | None) -> int:
        expr = filter_expr(self._generation, filters)
        if expr is None:
            return 0
        cached = self._answers.get(("count", expr))
        if cached is not None:
            return int(cached)
        rows = self.index._query(self.index.chunks_name, expr, ["count(*)"])
        count = int(rows[0]["count(*)"]) if rows else 0
        self._answers.put(("count", expr), count)
        return count

    # ------------------------------------------------------------------ retrieval
    def _search(self, data: list[Any], field_name: str, k: int, expr: str) -> Scored:
        if k <= 0:
            return Scored.empty()
        result = self.index.client.search(
            self.index.chunks_name,
            data=data,
            anns_field=field_name,
            limit=min(int(k), MAX_TOPK),
            filter=expr,
            output_fields=["pk", "chunk_id"],
            consistency_level="Strong",
            timeout=self.index.timeout,
        )
        ids: list[int] = []
        scores: list[float] = []
        for hit in result[0] if result else []:
            ids.append(int(hit["entity"]["chunk_id"]))
            scores.append(float(hit["distance"]))
            self._row_keys.put(ids[-1], int(hit["entity"]["pk"]))
        return Scored(np.asarray(ids, dtype=np.int64), np.asarray(scores, dtype=np.float32))

    def dense(self, vector: np.ndarray, k: int, filters: FilterLike | None) -> Scored:
        """The ``k`` chunks nearest to ``vector`` (dim,) by cosine, within ``filters``."""
        expr = filter_expr(self._generation, filters)
        if expr is None:
            return Scored.empty()
        q = np.asarray(vector, dtype=np.float32).reshape(-1).tolist()
        return self._search([q], "vector", k, expr)

    def _lexical_query(self, query: str) -> str:
        return lexical_text(query, self.index.lexical_form).strip()

    def lexical(self, query: str, k: int, filters: FilterLike | None) -> Scored:
        """The ``k`` best chunks by Milvus's BM25 (score > 0), within ``filters``."""
        expr = filter_expr(self._generation, filters)
        text = self._lexical_query(query)
        if expr is None or not text:
            return Scored.empty()
        found = self._search([text], "sparse", k, expr)
        # Milvus reports the BM25 score as the distance; Milvus Lite as its negation
        scores = np.abs(found.scores)
        keep = scores > 0
        return Scored(found.ids[keep], scores[keep])

    def lexical_scores(self, query: str, ids: np.ndarray) -> np.ndarray:
        """BM25 score (float32, 0 where the chunk has no query term) of each of ``ids``."""
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros(len(ids), dtype=np.float32)
        text = self._lexical_query(query)
        if not len(ids) or not text:
            return out
        unique = sorted({int(i) for i in ids})
        found: dict[int, float] = {}
        for lo in range(0, len(unique), ID_BATCH):
            batch = unique[lo : lo + ID_BATCH]
            expr = f"{in_expr('chunk_id', batch)} and {self._visible}"
            got = self._search([text], "sparse", len(batch), expr)
            found.update(zip(got.ids.tolist(), np.abs(got.scores).tolist(), strict=True))
        for i, cid in enumerate(ids.tolist()):
            out[i] = found.get(cid, 0.0)
        return out

    def exact(self, query: str, filters: FilterLike | None) -> Scored:
        """Chunks holding the query's identifiers verbatim, scored as
        qa.lexical.IdentifierIndex does: the mean over the query's identifiers found in
        the generation of log(N / df) / log(N) for those the chunk holds (N live chunks,
        df of them holding the identifier; both counted by Milvus)."""
        expr = filter_expr(self._generation, filters)
        wanted = sorted(t for t in identifiers(query) if len(t.encode()) <= MAX_IDENTIFIER_BYTES)
        n = len(self)
        if expr is None or not wanted or n < 2:
            return Scored.empty()
        # one query over the generation finds every chunk holding a wanted identifier:
        # their count per identifier is its df, and without filters they are the answer
        filtered = expr != self._visible
        rows: list[dict[str, Any]] | None = None
        if not filtered or any(self._answers.get(("df", t)) is None for t in wanted):
            found = self._holding(wanted, self._visible)
            if len(found) < MAX_TOPK:  # all of them: count
                held = Counter(t for r in found for t in set(r["identifiers"]))
                for token in wanted:
                    self._answers.put(("df", token), held.get(token, 0))
            if not filtered:
                rows = found
        df: dict[str, int] = {}
        for token in wanted:
            cached = self._answers.get(("df", token))
            if cached is None:  # too many holders to count from rows
                counted = self.index._query(
                    self.index.chunks_name,
                    f"array_contains(identifiers, {quote(token)}) and {self._visible}",
                    ["count(*)"],
                )
                cached = int(counted[0]["count(*)"]) if counted else 0
                self._answers.put(("df", token), cached)
            if int(cached):
                df[token] = int(cached)
        if not df:
            return Scored.empty()
        rarity = {t: float(np.log(n / c) / np.log(n) / len(df)) for t, c in df.items()}
        if rows is None:
            rows = self._holding(sorted(df), expr)
        for r in rows:
            self._row_keys.put(int(r["chunk_id"]), int(r["pk"]))
        scored = [
            (int(r["chunk_id"]), sum(rarity.get(t, 0.0) for t in r["identifiers"])) for r in rows
        ]
        scored = sorted((x for x in scored if x[1] > 0), key=lambda x: (-x[1], x[0]))
        return Scored(
            np.asarray([c for c, _ in scored], dtype=np.int64),
            np.asarray([v for _, v in scored], dtype=np.float32),
        )

    def _holding(self, tokens: Sequence[str], expr: str) -> list[dict[str, Any]]:
        """Rows (pk, chunk id, identifiers) holding any of ``tokens``, within ``expr``; at
        most MAX_TOPK."""
        listed = ", ".join(quote(t) for t in tokens)
        rows: list[dict[str, Any]] = self.index.client.query(
            self.index.chunks_name,
            filter=f"array_contains_any(identifiers, [{listed}]) and {expr}",
            output_fields=["pk", "chunk_id", "identifiers"],
            limit=MAX_TOPK,
            consistency_level="Strong",
            timeout=self.index.timeout,
        )
        return rows

    # ------------------------------------------------------------------ contents
    def _rows(self, ids: np.ndarray) -> dict[int, dict[str, Any]]:
        """Every chunk field of each id (from the cache, the rest in one query)."""
        wanted = sorted({int(i) for i in np.asarray(ids, dtype=np.int64).tolist()})
        by_id, fetch = self._row_cache.split(wanted)
        if fetch:
            # rows a search of this snapshot returned are read by primary key (a point
            # lookup; a filter on chunk_id is a scan in Milvus Lite), the rest by filter
            keys = {i: self._row_keys.get(i) for i in fetch}
            by_key = [k for k in keys.values() if k is not None]
            rows = []
            for lo in range(0, len(by_key), ID_BATCH):
                rows += self.index.client.get(
                    self.index.chunks_name,
                    ids=by_key[lo : lo + ID_BATCH],
                    output_fields=ROW_FIELDS,
                    timeout=self.index.timeout,
                )
            unknown = [i for i, k in keys.items() if k is None]
            if unknown:
                rows += self.index._query_ids(
                    self.index.chunks_name, "chunk_id", unknown, self._visible, ROW_FIELDS
                )
            for r in rows:
                r["vector"] = np.asarray(r["vector"], dtype=np.float32)
                by_id[int(r["chunk_id"])] = r
                self._row_cache.put(int(r["chunk_id"]), r)
        missing = [i for i in wanted if i not in by_id]
        if missing:
            raise KeyError(
                f"chunk ids {missing[:5]} are not in generation {self._generation} "
                f"({len(missing)} missing)"
            )
        return by_id

    def chunks(self, ids: np.ndarray) -> list[Chunk]:
        """The chunk of each id, in order. Raises KeyError for an id not in the generation."""
        arr = np.asarray(ids, dtype=np.int64)
        by_id = self._rows(arr)
        out = []
        for cid in arr.tolist():
            r = by_id[cid]
            out.append(
                Chunk(
                    doc_id=r["doc_id"],
                    start=int(r["start"]),
                    end=int(r["end"]),
                    text=r["text"],
                    line_start=int(r["line_start"]),
                    line_end=int(r["line_end"]),
                    page=None if int(r["page"]) < 0 else int(r["page"]),
                    heading=r["heading"],
                )
            )
        return out

    def chunk_places(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(document label int64 (m,), spans int64 (m, 2)) of the chunks, from the rows
        ``chunks`` reads (cached). Raises KeyError for an id not in the generation."""
        arr = np.asarray(ids, dtype=np.int64)
        by_id = self._rows(arr) if len(arr) else {}
        rows = [by_id[cid] for cid in arr.tolist()]
        labels = np.unique([r["doc_id"] for r in rows], return_inverse=True)[1]
        spans = np.asarray([(int(r["start"]), int(r["end"])) for r in rows], dtype=np.int64)
        return labels.astype(np.int64).reshape(len(arr)), spans.reshape(len(arr), 2)

    def chunk_vectors(self, ids: np.ndarray) -> np.ndarray:
        """(len(ids), d) float32 vectors of the chunks, in order."""
        arr = np.asarray(ids, dtype=np.int64)
        if not len(arr):
            return np.zeros((0, self.index.dimension), dtype=np.float32)
        by_id = self._rows(arr)
        return np.stack([by_id[i]["vector"] for i in arr.tolist()]).astype(np.float32)

    def sentences(self, ids: np.ndarray) -> SentenceSet:
        """Sentences of the chunks: owner (s,) int64 index into ``ids``, spans (s, 2) int64
        document offsets, vectors (s, d) float32; a chunk's sentences adjacent, in text
        order."""
        arr = np.asarray(ids, dtype=np.int64)
        d = self.index.dimension
        empty = SentenceSet(
            np.zeros(0, np.int64), np.zeros((0, 2), np.int64), np.zeros((0, d), np.float32)
        )
        if not len(arr):
            return empty
        per_chunk, fetch = self._sentence_cache.split(sorted(set(arr.tolist())))
        if fetch:
            rows = self.index._query_ids(
                self.index.sentences_name,
                "chunk_id",
                fetch,
                self._visible,
                ["chunk_id", "start", "end", "vector"],
            )
            fresh: dict[int, list[dict[str, Any]]] = {cid: [] for cid in fetch}
            for r in rows:
                r["vector"] = np.asarray(r["vector"], dtype=np.float32)  # not a list of floats
                fresh[int(r["chunk_id"])].append(r)
            for cid, found in fresh.items():
                self._sentence_cache.put(cid, found)
            per_chunk.update(fresh)
        owners: list[int] = []
        spans: list[tuple[int, int]] = []
        vectors: list[list[float]] = []
        for pos, cid in enumerate(arr.tolist()):
            for r in sorted(per_chunk.get(cid, []), key=lambda r: (r["start"], r["end"])):
                owners.append(pos)
                spans.append((int(r["start"]), int(r["end"])))
                vectors.append(r["vector"])
        if not owners:
            return empty
        return SentenceSet(
            np.asarray(owners, dtype=np.int64),
            np.asarray(spans, dtype=np.int64).reshape(-1, 2),
            np.asarray(vectors, dtype=np.float32).reshape(-1, d),
        )

    def document(self, doc_id: str) -> Document | None:
        """The document ``doc_id`` (compared in NFC) with its whole text, or None."""
        rows = self.index._query(
            self.index.documents_name,
            f"doc_key == {quote(nfc(doc_id))} and {self._visible}",
            ["doc_id", "path", "title", "sha256", "page_starts", "text", "piece", "value"],
        )
        if not rows:
            return None
        rows.sort(key=lambda r: int(r["piece"]))
        head = rows[0]
        if len(rows) != int(head["value"]) or [int(r["piece"]) for r in rows] != list(
            range(len(rows))
        ):
            raise NotFound(
                f"document {doc_id!r} has {len(rows)} of {head['value']} text pieces in "
                f"generation {self._generation}"
            )
        return Document(
            doc_id=head["doc_id"],
            path=head["path"],
            title=head["title"],
            text="".join(r["text"] for r in rows),
            page_starts=tuple(json.loads(head["page_starts"])),
            sha256=head["sha256"],
        )

    def document_info(self, doc_id: str) -> DocumentInfo | None:
        """Title, path, hash and chunk count of a document, without its text."""
        rows = self.index._query(
            self.index.documents_name,
            f"doc_id == {quote(doc_id)} and piece == 0 and {self._visible}",
            ["doc_id", "path", "title", "sha256", "chunks"],
        )
        if not rows:
            return None
        r = rows[0]
        return DocumentInfo(r["doc_id"], r["title"], r["path"], r["sha256"], int(r["chunks"]))

    def _document_rows(self) -> list[tuple[DocumentInfo, int]]:
        """(document, its sentence count) of every document, by doc id; listed once."""
        if self._document_list is not None:
            return self._document_list
        rows = self.index._iterate(
            self.index.documents_name,
            f"piece == 0 and {self._visible}",
            ["doc_id", "path", "title", "sha256", "chunks", "sentences"],
        )
        out = [
            (
                DocumentInfo(r["doc_id"], r["title"], r["path"], r["sha256"], int(r["chunks"])),
                int(r["sentences"]),
            )
            for r in rows
        ]
        self._document_list = sorted(out, key=lambda x: x[0].doc_id)
        return self._document_list

    def documents(self) -> list[DocumentInfo]:
        """Every document of the generation, ordered by doc id (one paged query)."""
        return [d for d, _ in self._document_rows()]

    def known_vectors(self, doc_ids: Iterable[str] | None = None) -> dict[str, np.ndarray]:
        """Vectors of the chunks and sentences (of ``doc_ids`` only, if given) by SHA-256 of
        the text embedded. Without ``doc_ids`` this reads every vector: prefer
        MilvusIndex.vectors_by_content_hash for the texts an update needs."""
        extra = self._visible
        if doc_ids is not None:
            wanted = sorted(set(doc_ids))
            if not wanted:
                return {}
            chunk_rows = self.index._query_ids(
                self.index.chunks_name,
                "doc_id",
                wanted,
                extra,
                ["chunk_id", "content_hash", "vector"],
                bulk=True,
            )
        else:
            chunk_rows = list(
                self.index._iterate(
                    self.index.chunks_name, extra, ["chunk_id", "content_hash", "vector"]
                )
            )
        cache = {r["content_hash"]: np.asarray(r["vector"], np.float32) for r in chunk_rows}
        ids = sorted({int(r["chunk_id"]) for r in chunk_rows})
        for r in self.index._query_ids(
            self.index.sentences_name, "chunk_id", ids, extra, ["content_hash", "vector"], bulk=True
        ):
            cache.setdefault(r["content_hash"], np.asarray(r["vector"], np.float32))
        return cache

    # ------------------------------------------------------------------ for the builder
    @property
    def dead_chunks(self) -> int:
        """Rows of closed documents are not dead weight here (prune removes them)."""
        return 0

    @property
    def segment_checksums(self) -> dict[str, str]:
        """One pseudo-segment, the store itself: every document's manifest entry names it."""
        return {"milvus": ""}

    def export(self, doc_ids: Iterable[str]) -> SegmentPayload:
        """Chunks, vectors and sentences of some documents as a segment payload (what the
        builder copies when it compacts; written again, Milvus skips them as unchanged)."""
        docs = [d for d in (self.document(i) for i in sorted(set(doc_ids))) if d is not None]
        chunks: list[Chunk] = []
        ids: list[int] = []
        for d in docs:
            rows = self.index._query_ids(
                self.index.chunks_name, "doc_id", [d.doc_id], self._visible, ["chunk_id", "start"],
                bulk=True,
            )  # fmt: skip
            doc_ids_sorted = [int(r["chunk_id"]) for r in sorted(rows, key=lambda r: r["start"])]
            ids += doc_ids_sorted
            chunks += self.chunks(np.asarray(doc_ids_sorted, dtype=np.int64))
        arr = np.asarray(ids, dtype=np.int64)
        sents = self.sentences(arr)
        return SegmentPayload(
            documents=docs,
            chunks=chunks,
            chunk_ids=arr,
            chunk_vectors=self.chunk_vectors(arr).reshape(-1, self.index.dimension),
            sentences=np.column_stack([sents.owner, sents.spans]).astype(np.int64).reshape(-1, 3),
            sentence_vectors=sents.vectors,
            dimension=self.index.dimension,
        )


class MilvusStore:
    """Generations in Milvus, the store behind ``QA_VECTOR_STORE=milvus``: the interface of
    qa.index.local.LocalIndexStore (lock, current_key, load, write, rollback).

    The dimension is learned from the first write (or the generation in service).
    """

    def __init__(
        self, uri: str, *, token: str = "", prefix: str = "qa", keep: int = 2, timeout: float = 30
    ) -> None:
        self.uri = uri
        self.token = token
        self.prefix = prefix
        self.keep = keep
        self.timeout = timeout
        self._index: MilvusIndex | None = None
        self._loaded: MilvusSnapshot | None = None  # the last snapshot load() gave
        self._lock = threading.Lock()

    def __str__(self) -> str:
        return f"{self.uri} (collections {self.prefix}_*)"

    def index(self, dimension: int = 0) -> MilvusIndex:
        """The MilvusIndex (its dimension from the argument or the generation in service)."""
        if self._index is None or (dimension and self._index.dimension != dimension):
            probe = self._index or MilvusIndex(
                self.uri, dimension=dimension, token=self.token, prefix=self.prefix,
                timeout=self.timeout,
            )  # fmt: skip
            if not dimension:
                current = probe.current()
                dimension = int(
                    probe.generations().get(current, {}).get("model", {}).get("dimension", 0)
                )
            probe.dimension = dimension
            self._index = probe
        return self._index

    @contextlib.contextmanager
    def lock(self, *, wait: bool = False) -> Iterator[None]:
        """Serialises writers of this process. Milvus has no compare-and-set: run one
        writing process (``qa index`` or one server with updates) per store."""
        if not self._lock.acquire(blocking=wait):
            from qa.errors import IndexBusy

            raise IndexBusy(f"another build or update of {self} is running; try again")
        try:
            yield
        finally:
            self._lock.release()

    def current_key(self) -> str | None:
        """The generation in service, as a key (one point query), None if none."""
        current = self.index().current()
        return str(current) if current else None

    def load(self, spec: IndexSpec | None = None) -> MilvusSnapshot:
        index = self.index()
        snapshot = index.snapshot()
        self._loaded = snapshot  # write() lists the documents it replaces from it
        if spec is not None:
            built = {
                "model": snapshot.record.get("model", {"id": "(not recorded)"}),
                "chunker": snapshot.record.get("chunker"),
            }
            check_spec(built, spec, str(self))
        return snapshot

    def write(self, payload: GenerationPayload) -> Path:
        """Write the payload's new and changed documents as a new generation, remove the
        documents it no longer lists, publish it and prune to ``keep``. Returns a label
        path ending in gen-NNNNNN."""
        index = self.index(payload.dimension)
        writes: list[DocumentWrite] = []
        seg = payload.segment
        if seg is not None:
            rows_of: dict[str, list[int]] = {}
            for row, c in enumerate(seg.chunks):
                rows_of.setdefault(c.doc_id, []).append(row)
            owners = np.asarray(seg.sentences, dtype=np.int64).reshape(-1, 3)[:, 0]
            by_owner = np.argsort(owners, kind="stable")  # sentence rows grouped by chunk
            sorted_owners = owners[by_owner]
            for d in seg.documents:
                rows = rows_of.get(d.doc_id, [])
                parts = [
                    by_owner[
                        np.searchsorted(sorted_owners, r, "left") : np.searchsorted(
                            sorted_owners, r, "right"
                        )
                    ]
                    for r in rows
                ]
                picked = np.concatenate(parts) if parts else np.zeros(0, np.int64)
                sentences = np.asarray(seg.sentences, dtype=np.int64).reshape(-1, 3)[picked]
                local = {r: i for i, r in enumerate(rows)}
                sentences[:, 0] = [local[int(r)] for r in sentences[:, 0]]
                writes.append(
                    DocumentWrite(
                        document=d,
                        chunks=[seg.chunks[r] for r in rows],
                        chunk_vectors=seg.chunk_vectors[rows].reshape(-1, payload.dimension),
                        sentences=sentences,
                        sentence_vectors=seg.sentence_vectors[picked].reshape(
                            -1, payload.dimension
                        ),
                    )
                )
        current = index.current()
        loaded = self._loaded
        last = loaded if loaded is not None and loaded.generation == current else None
        in_service = last or (index.snapshot(current) if current else None)
        before = {d.doc_id for d in in_service.documents()} if in_service else set()
        written = {w.document.doc_id for w in writes}
        removed = sorted(before - set(payload.documents) - written)
        generation = index.next_generation()
        index.write_generation(
            generation,
            writes,
            removed,
            payload.stats,
            info={
                "model": {
                    "id": payload.spec.model_id,
                    "dimension": payload.dimension,
                    "embedding": payload.spec.embedding,
                },
                "chunker": payload.spec.chunker_settings(),
                "skipped": payload.skipped,
                "scanned_ns": payload.scanned_ns,
            },
        )
        index.set_sources(generation, payload.sources)
        index.set_listing("skipped", generation, payload.skipped)
        index.publish(generation)
        index.prune(self.keep)
        return Path(f"milvus/{self.prefix}/gen-{generation:06d}")

    def rollback(self, spec: IndexSpec | None = None) -> None:
        """Put the previous published generation back in service, after checking that it
        was built with ``spec``. Raises IndexNotReady (none kept) or IndexMismatch."""
        index = self.index()
        current = index.current()
        records = index.generations()
        older = [g for g, r in records.items() if g < current and r.get("state") == "published"]
        if spec is not None and older:
            record = records[max(older)]
            built = {"model": record.get("model", {"id": "(not recorded)"}), **record}
            check_spec({**built, "chunker": record.get("chunker")}, spec, str(self))
        index.rollback()

    def collect_garbage(self) -> None:
        self.index().cleanup_orphans()


def milvus_index_from_settings(settings: Settings, dimension: int) -> MilvusIndex:
    """The Milvus store the settings name (QA_MILVUS_URI, QA_MILVUS_TOKEN, QA_MILVUS_PREFIX)."""
    token = settings.milvus_token.get_secret_value() if settings.milvus_token else ""
    return MilvusIndex(
        settings.milvus_uri_resolved,
        dimension=dimension,
        token=token,
        prefix=settings.milvus_prefix,
    )


__all__ = [
    "DocumentWrite",
    "MilvusIndex",
    "MilvusSnapshot",
    "MilvusStore",
    "UpdateReport",
    "WriteReport",
    "chunk_id",
    "content_hash",
    "filter_expr",
    "lexical_text",
    "milvus_index_from_settings",
    "prefix_expr",
    "quote",
    "visible",
]
