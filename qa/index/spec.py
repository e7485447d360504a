"""What an index must have been built with to be served with the current settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qa.errors import IndexMismatch

FORMAT_VERSION = 8  # 2: stats carry word_pieces_per_word; 3: BM25 keeps numbered identifiers;
# 4: search normalisation (NFKC) of BM25 tokens and embedder input, chunks within the window;
# 5: stable chunk ids (qa.index.ids) are the vector ids and a column of chunks.jsonl
# 6: columns memory-mapped: float16 vectors (.npy), a qa.ann index by size, chunk columns,
#    document texts in one UTF-8 file read per document
# 7: sentence vectors as 8-bit codes with a scale each (sentence_codes.npy,
#    sentence_scales.npy) where 6 held float16 sentence_vectors.npy
# 8: the approximate index (qa.ann) is IVF over 4-bit PQ fast-scan codes re-ranked on the
#    float16 vectors, its shortlist in the segment manifest, where 7 held IVF-SQ8
READABLE_FORMATS = (6, 7, 8)  # 6 and 7 are still read (a generation may mix them)


@dataclass(frozen=True)
class IndexSpec:
    """The model and chunker settings an index was built with (from Settings, see
    qa.assemble.spec)."""

    model_id: str
    chunk_tokens: int
    chunk_overlap_tokens: int
    # how vectors are made: weights' precision and how sentence vectors are made
    # (QA_EMBED_PRECISION, QA_SENTENCE_VECTORS); vectors of two variants never mix
    embedding: str = "fp32+separate"

    def chunker_settings(self) -> dict[str, Any]:
        return {"chunk_tokens": self.chunk_tokens, "overlap_tokens": self.chunk_overlap_tokens}


def check_spec(manifest: dict[str, Any], spec: IndexSpec, where: Path | str) -> None:
    """Raise IndexMismatch when the index in ``where`` was built with another model or
    other chunker settings than ``spec``."""
    built_model = manifest["model"]["id"]
    if built_model != spec.model_id:
        raise IndexMismatch(
            f"the index in {where} was built with model {built_model!r} but "
            f"QA_EMBEDDING_MODEL is {spec.model_id!r}; rebuild it with `qa index build` "
            "(or set QA_EMBEDDING_MODEL back)"
        )
    built_embedding = manifest["model"].get("embedding", "fp32+separate")
    if built_embedding != spec.embedding:
        raise IndexMismatch(
            f"the index in {where} was built with embedding {built_embedding!r} but the "
            f"configured one is {spec.embedding!r} (QA_EMBED_PRECISION, QA_SENTENCE_VECTORS); "
            "rebuild it with `qa index build`"
        )
    if manifest["chunker"] != spec.chunker_settings():
        raise IndexMismatch(
            f"the index in {where} was built with chunker settings {manifest['chunker']} but "
            f"the configured ones are {spec.chunker_settings()}; rebuild it with "
            "`qa index build`"
        )
