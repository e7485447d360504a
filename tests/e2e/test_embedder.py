"""The real bundled model: ONNX and torch paths agree; the export is cached and repaired."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qa.embedder import SentenceTransformerEmbedder
from tests.conftest import DEFAULT_CORPUS

pytestmark = pytest.mark.e2e


def test_onnx_and_torch_give_the_same_vectors(tmp_path: Path) -> None:
    onnx = SentenceTransformerEmbedder(cache_dir=tmp_path)
    torch = SentenceTransformerEmbedder(backend="torch", cache_dir=tmp_path)
    assert onnx.active_backend == "onnx" and torch.active_backend == "torch"
    texts = [t for t in (DEFAULT_CORPUS / "nato-indo-pacific.txt").read_text().split("\n") if t]
    texts += ["x", "word " * 400]  # a one-token text and one over the model's limit
    a, b = onnx.embed(texts), torch.embed(texts)
    assert a.shape == b.shape == (len(texts), 384)
    assert np.abs(a - b).max() < 1e-5
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)


def test_export_is_cached_and_a_damaged_file_is_rebuilt(tmp_path: Path) -> None:
    SentenceTransformerEmbedder(cache_dir=tmp_path).embed(["first"])
    (exported,) = (tmp_path / "onnx").glob("*.onnx")
    stamp = exported.stat().st_mtime_ns
    SentenceTransformerEmbedder(cache_dir=tmp_path).embed(["second"])
    assert exported.stat().st_mtime_ns == stamp, "the export is reused"
    exported.write_bytes(b"not an onnx model")
    again = SentenceTransformerEmbedder(cache_dir=tmp_path)
    assert again.active_backend == "onnx"
    assert exported.stat().st_size > 1_000_000
