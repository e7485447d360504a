"""One place that assembles the parts from Settings: the embedder, the index spec, the
chunker and the index store. The CLI, the HTTP app, the MCP server, the benchmarks and the
tests all build through it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from qa.ann import AnnConfig
from qa.chunker import Chunker
from qa.embedder import Embedder, get_embedder
from qa.index.local import LocalIndexStore
from qa.index.spec import IndexSpec
from qa.onnx_encoder import precision_label
from qa.settings import Settings

if TYPE_CHECKING:
    from qa.milvus_store import MilvusStore


def spec_from_settings(settings: Settings) -> IndexSpec:
    """The model and chunker settings an index must have been built with."""
    return IndexSpec(
        model_id=settings.embedding_model,
        chunk_tokens=settings.chunk_tokens,
        chunk_overlap_tokens=settings.chunk_overlap_tokens,
        embedding=f"{precision_label(settings.embed_precision)}+{settings.sentence_vectors}",
    )


def embedder_from_settings(settings: Settings) -> Embedder:
    """The embedding model (loaded lazily, offline unless QA_ALLOW_DOWNLOAD)."""
    return get_embedder(
        settings.embedding_model,
        settings.device,
        settings.embed_batch_size,
        settings.allow_download,
        settings.embed_backend,
        Path(settings.cache_dir),
        settings.embed_precision,
        settings.sentence_vectors,
        settings.onnx_batch_size,
        settings.embed_streams,
    )


def chunker_for(spec: IndexSpec, embedder: Embedder) -> Chunker:
    """The chunker of ``spec``, counting tokens with the embedder's tokenizer; the window
    never exceeds what the model reads."""
    max_tokens = min(spec.chunk_tokens, embedder.max_tokens)
    overlap = min(spec.chunk_overlap_tokens, max_tokens - 1)
    return Chunker(embedder.count_tokens, max_tokens, overlap)


def store_from_settings(settings: Settings) -> LocalIndexStore | MilvusStore:
    """The index store, keeping QA_KEEP_GENERATIONS: the local folder QA_INDEX_DIR, or with
    QA_VECTOR_STORE=milvus the Milvus database at QA_MILVUS_URI (qa.milvus_store)."""
    if settings.vector_store == "milvus":
        from qa.milvus_store import MilvusStore

        token = settings.milvus_token.get_secret_value() if settings.milvus_token else ""
        return MilvusStore(
            settings.milvus_uri_resolved,
            token=token,
            prefix=settings.milvus_prefix,
            keep=settings.keep_generations,
        )
    return LocalIndexStore(
        Path(settings.index_dir), settings.keep_generations, AnnConfig.from_settings(settings)
    )
