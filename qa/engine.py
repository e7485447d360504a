"""Answer: the engine that holds the index in service and answers questions.

The HTTP API, the CLI, chat and MCP all call this; none of them knows about FAISS or BM25.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

import numpy as np

from qa.assemble import embedder_from_settings, spec_from_settings, store_from_settings
from qa.embedder import Embedder
from qa.errors import IndexNotReady, InvalidRequest, NotFound, QAError
from qa.index.snapshot import Filters, Snapshot
from qa.metrics import observe_stage
from qa.normalize import nfc
from qa.schema import (
    Answer,
    AskResponse,
    Citation,
    DocumentSummary,
    DocumentText,
    IndexInfo,
    Passage,
    Span,
)
from qa.search import FusionConfig, Hit, Searcher, span_text
from qa.settings import Settings

log = logging.getLogger(__name__)

ABSTAIN_MESSAGE = "The documents do not cover this question."


class Engine:
    """Answers questions from the index generation in service; swaps generations safely."""

    def __init__(
        self,
        settings: Settings,
        embedder: Embedder | None = None,
        fusion: FusionConfig | None = None,
    ) -> None:
        self.settings = settings
        self.embedder = embedder or embedder_from_settings(settings)
        self.spec = spec_from_settings(settings)
        self.store = store_from_settings(settings)
        self.fusion = fusion or FusionConfig()
        self._searcher: Searcher | None = None
        self._swap_lock = threading.Lock()
        self._refused: str | None = None  # a generation that failed to load; not retried

    # ------------------------------------------------------------------ index in service

    @property
    def ready(self) -> bool:
        return self._searcher is not None

    @property
    def data(self) -> Snapshot:
        searcher = self._searcher
        if searcher is None:
            raise IndexNotReady("the index is not loaded yet; try again in a moment")
        return searcher.data

    def load(self) -> Snapshot:
        """Load the generation in service from the store and put it in service here."""
        data = self.store.load(self.spec)
        self.install(data)
        return data

    def install(self, data: Snapshot) -> None:
        searcher = Searcher(data, self.settings.candidates, self.fusion)
        with self._swap_lock:
            self._searcher = searcher  # one reference swap: requests see old or new, whole
        log.info("index generation %s in service", data.generation)

    def reload_if_changed(self) -> bool:
        """Load the generation the store names if it is not the one in service."""
        key = self.store.current_key()
        searcher = self._searcher
        if key is None or (searcher is not None and searcher.data.key == key):
            return False
        if key == self._refused:
            return False
        try:
            self.load()
        except QAError:
            self._refused = key  # keep serving the generation in service; say it once
            raise
        return True

    def warm_up(self) -> None:
        """Load the model and run one query so the first request is not slow."""
        self.embedder.embed(["warm up"])

    # ------------------------------------------------------------------ asking

    def validate_question(self, question: str) -> str:
        if not isinstance(question, str) or not question.strip():
            raise InvalidRequest("question must be a non-empty string")
        try:
            question.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidRequest(
                "question is not valid Unicode text (it contains a lone surrogate)"
            ) from None
        if len(question) > self.settings.max_question_chars:
            raise InvalidRequest(
                f"question is {len(question)} characters long; the limit is "
                f"{self.settings.max_question_chars}"
            )
        return question.strip()

    def ask(
        self,
        question: str,
        top_k: int | None = None,
        filters: Filters | None = None,
        focus: str | None = None,
    ) -> AskResponse:
        """Passages for ``question``, best first, and the sentence that answers it.

        ``focus`` (chat follow-ups, see qa.conversation) picks the answering sentence in
        each passage instead of ``question``, which then only finds the passages.
        Raises InvalidRequest (bad question or top_k) and IndexNotReady.
        """
        began = time.perf_counter()
        question = self.validate_question(question)
        top_k = self.settings.top_k if top_k is None else top_k
        if not 1 <= top_k <= 50:
            raise InvalidRequest(f"top_k must be between 1 and 50, got {top_k}")
        searcher = self._searcher  # pin one generation for the whole request
        if searcher is None:
            raise IndexNotReady("the index is not loaded yet; try again in a moment")
        vector = self.embedder.embed([question])[0]
        embedded = time.perf_counter()
        observe_stage("embed", embedded - began)
        reranked = None
        if self.settings.reranker_model:
            pool = max(top_k, self.settings.rerank_candidates)
            hits = self._search(searcher, question, vector, pool, filters, focus)
            searched = time.perf_counter()
            hits = self._rerank(question, searcher, hits)[:top_k]
            reranked = time.perf_counter()
            observe_stage("rerank", reranked - searched)
        else:
            hits = self._search(searcher, question, vector, top_k, filters, focus)
            searched = time.perf_counter()
        observe_stage("search", searched - embedded)
        response = self._respond(question, searcher.data, hits, began, embedded, searched)
        if reranked is not None:
            response.timings_ms["rerank"] = round((reranked - searched) * 1000, 2)
        return response

    def _search(
        self,
        searcher: Searcher,
        question: str,
        vector: np.ndarray,
        k: int,
        filters: Filters | None,
        focus: str | None,
    ) -> list[Hit]:
        """The searcher's hits; with ``focus``, each hit's answering sentence is its best."""
        hits = searcher.search(question, vector, k, filters, highlight=focus is None)
        if focus is not None:
            searcher.highlight(focus, self.embedder.embed([focus])[0], hits)
        return hits

    def _rerank(self, question: str, searcher: Searcher, hits: list[Hit]) -> list[Hit]:
        """Reorder hits by the cross-encoder's score, which becomes their score."""
        from qa.rerank import get_reranker

        assert self.settings.reranker_model is not None
        reranker = get_reranker(
            self.settings.reranker_model, self.settings.device, self.settings.allow_download
        )
        texts = [h.chunk.text for h in hits]
        scores = reranker.scores(question, texts)
        for hit, score in zip(hits, scores, strict=True):
            hit.score = float(score)
        return sorted(hits, key=lambda h: -h.score)

    def _respond(
        self,
        question: str,
        data: Snapshot,
        hits: list[Hit],
        began: float,
        embedded: float,
        searched: float,
    ) -> AskResponse:
        passages = [self._passage(data, rank, hit) for rank, hit in enumerate(hits, 1)]
        confidence = max((max(h.dense, h.highlight_dense) for h in hits), default=-1.0)
        abstained = confidence < self.settings.min_score
        answer = None
        message = None
        if abstained:
            message = ABSTAIN_MESSAGE
        else:
            first = passages[0]
            sentence = span_text(data, hits[0].chunk, first.highlight.start, first.highlight.end)
            answer = Answer(text=f"{sentence} [1]", citations=[1])
        done = time.perf_counter()
        return AskResponse(
            question=question,
            answer=answer,
            abstained=abstained,
            confidence=round(confidence, 4),
            message=message,
            passages=passages,
            timings_ms={
                "embed": round((embedded - began) * 1000, 2),
                "search": round((searched - embedded) * 1000, 2),
                "total": round((done - began) * 1000, 2),
            },
            index=IndexInfo(generation=data.generation, built_at=data.built_at),
        )

    @staticmethod
    def _passage(data: Snapshot, rank: int, hit: Hit) -> Passage:
        chunk = hit.chunk
        doc = data.document_info(chunk.doc_id)
        if doc is None:
            raise IndexNotReady(f"document {chunk.doc_id!r} of a hit is not in the index")
        return Passage(
            rank=rank,
            score=round(hit.score, 4),
            text=chunk.text,
            citation=Citation(
                doc_id=doc.doc_id,
                title=doc.title,
                path=doc.path,
                start=chunk.start,
                end=chunk.end,
                line_start=chunk.line_start,
                line_end=chunk.line_end,
                page=chunk.page,
                heading=chunk.heading,
                sha256=doc.sha256,
            ),
            highlight=Span(start=hit.highlight[0], end=hit.highlight[1]),
        )

    # ------------------------------------------------------------------ documents

    def documents(self) -> list[DocumentSummary]:
        return [
            DocumentSummary(
                doc_id=d.doc_id, title=d.title, path=d.path, chunks=d.chunks, sha256=d.sha256
            )
            for d in self.data.documents()
        ]

    def document(self, doc_id: str) -> DocumentText:
        doc = self.data.document(doc_id)  # also finds the id in another normalisation form
        if doc is None:
            raise NotFound(f"no document with id {doc_id!r}; GET /v1/documents lists them")
        return DocumentText(
            doc_id=doc.doc_id,
            title=doc.title,
            path=doc.path,
            text=doc.text,
            sha256=doc.sha256,
            page_starts=list(doc.page_starts),
        )


def filters_from(doc_ids: Iterable[str] | None, path_prefix: str | None) -> Filters | None:
    if doc_ids is None and not path_prefix:
        return None
    return Filters(
        doc_ids=frozenset(nfc(d) for d in doc_ids) if doc_ids is not None else None,
        path_prefix=nfc(path_prefix) if path_prefix else None,
    )


__all__ = ["ABSTAIN_MESSAGE", "Engine", "filters_from"]
