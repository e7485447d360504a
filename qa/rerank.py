"""Optional reranking of the fused candidates with a sentence-transformers CrossEncoder.

Off by default (no cross-encoder weights ship here); set QA_RERANKER_MODEL to a model name
or local path to turn it on.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from qa.embedder import LazyModel, load_sentence_transformers


class CrossEncoderReranker(LazyModel):
    """Scores (question, passage) pairs; loaded once, on first use."""

    def __init__(self, model_id: str, device: str = "cpu", allow_download: bool = False) -> None:
        self.model_id = model_id
        self.device = device
        self.allow_download = allow_download

    def _load(self) -> Any:
        from sentence_transformers import CrossEncoder

        return load_sentence_transformers(
            CrossEncoder,
            self.model_id,
            "reranker model",
            self.model_id,
            device=self.device,
            allow_download=self.allow_download,
        )

    def scores(self, question: str, passages: Sequence[str]) -> np.ndarray:
        if not passages:
            return np.zeros(0, dtype=np.float32)
        pairs = [(question, p) for p in passages]
        out = self.model.predict(pairs, show_progress_bar=False, convert_to_numpy=True)
        return np.asarray(out, dtype=np.float32).reshape(len(passages), -1)[:, -1]


@lru_cache(maxsize=2)
def get_reranker(
    model_id: str, device: str = "cpu", allow_download: bool = False
) -> CrossEncoderReranker:
    return CrossEncoderReranker(model_id, device, allow_download)
