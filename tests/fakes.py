"""A deterministic fake embedder: bag of hashed words, no model, instant."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence

import numpy as np

_TOKEN = re.compile(r"\w+|[^\w\s]")


def _word_vector(word: str, dim: int) -> np.ndarray:
    seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


class FakeEmbedder:
    """Texts sharing words get similar vectors; the same text always gets the same vector."""

    model_id = "fake-embedder"

    def __init__(self, dimension: int = 64, max_tokens: int = 254) -> None:
        self._dimension = dimension
        self._max_tokens = max_tokens
        self.calls = 0
        self.texts_embedded = 0

    @property
    def dimension(self) -> int:
        return self._dimension

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(_TOKEN.findall(t)) for t in texts]

    def embed(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> np.ndarray:
        self.calls += 1
        self.texts_embedded += len(texts)
        out = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            words = [w.lower() for w in re.findall(r"\w+", text)] or ["<empty>"]
            vec = sum((_word_vector(w, self._dimension) for w in words), np.zeros(self._dimension))
            out[i] = vec / (np.linalg.norm(vec) or 1.0)
        if progress is not None:
            progress(len(texts))
        return out
