"""The real bundled model: ONNX and torch paths agree; the export is cached and repaired."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qa.embedder import SentenceTransformerEmbedder, resolve_model_path
from qa.onnx_encoder import model_file
from qa.settings import DEFAULT_MODEL
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


def test_int8_model_is_quantized_once_and_stays_close_to_fp32(tmp_path: Path) -> None:
    texts = [t for t in (DEFAULT_CORPUS / "nato-indo-pacific.txt").read_text().split("\n") if t]
    int8 = SentenceTransformerEmbedder(cache_dir=tmp_path, precision="int8")
    assert int8.variant == "onnx-int8pc-l0+separate"
    (quantized,) = (tmp_path / "onnx").glob("*-int8pc-l0-*.onnx")
    model = Path(resolve_model_path(DEFAULT_MODEL))
    assert quantized == model_file(model, tmp_path, "int8")  # where bench.runtimes finds it
    assert model_file(model, tmp_path, "fp32").is_file()  # its fp32 source
    stamp = quantized.stat().st_mtime_ns
    fp32 = SentenceTransformerEmbedder(cache_dir=tmp_path)
    cosine = (int8.embed(texts) * fp32.embed(texts)).sum(axis=1)
    assert cosine.mean() > 0.98 and cosine.min() > 0.95, cosine  # per-channel scales
    assert cosine.max() < 0.9999, "int8 vectors are not fp32's"
    again = SentenceTransformerEmbedder(cache_dir=tmp_path, precision="int8")
    assert again.variant == "onnx-int8pc-l0+separate"
    assert quantized.stat().st_mtime_ns == stamp, "the quantized model is reused"


def test_pooled_spans_agree_on_onnx_and_torch(tmp_path: Path) -> None:
    text = (DEFAULT_CORPUS / "nato-indo-pacific.txt").read_text()[:900]
    spans = [(0, 120), (121, 400), (401, 900)]
    onnx = SentenceTransformerEmbedder(cache_dir=tmp_path)
    torch = SentenceTransformerEmbedder(backend="torch", cache_dir=tmp_path)
    (a, a_spans), (b, b_spans) = (
        e.embed_with_spans([text, "x"], [spans, []]) for e in (onnx, torch)
    )
    assert np.abs(a - b).max() < 1e-5 and np.abs(a_spans - b_spans).max() < 1e-5
    assert np.abs(a - onnx.embed([text, "x"])).max() < 1e-6  # the text vector is embed()'s
    alone = onnx.embed([text[s:e] for s, e in spans])
    cosine = (a_spans * alone).sum(axis=1)
    assert (cosine > 0.6).all() and (cosine < 0.999).all(), cosine  # in context, not alone


@pytest.mark.skipif(
    not __import__("torch").cuda.is_available(),
    reason="no CUDA device on this machine: QA_DEVICE=cuda (fp16) is tested where one exists",
)
def test_cuda_embeds_in_fp16_close_to_the_cpu(tmp_path: Path) -> None:
    texts = [t for t in (DEFAULT_CORPUS / "nato-indo-pacific.txt").read_text().split("\n") if t]
    gpu = SentenceTransformerEmbedder(device="cuda", cache_dir=tmp_path)
    assert gpu.variant == "torch-fp16+separate"
    assert next(gpu.model.parameters()).dtype == __import__("torch").float16
    cpu = SentenceTransformerEmbedder(backend="torch", cache_dir=tmp_path)
    cosine = (gpu.embed(texts) * cpu.embed(texts)).sum(axis=1)
    assert cosine.min() > 0.999, cosine
    vectors, spans = gpu.embed_with_spans(texts[:2], [[(0, 20)], []])
    assert vectors.shape == (2, 384) and spans.shape == (1, 384) and spans.any()


def test_two_streams_embed_as_one(tmp_path: Path) -> None:
    """QA_EMBED_STREAMS: batches run at once on one-thread sessions give the vectors (and
    pooled spans) of one stream, in the order of the texts."""
    article = (DEFAULT_CORPUS / "nato-indo-pacific.txt").read_text()
    texts = [t for t in article.split("\n") if t][:40]
    spans = [[(0, min(len(t), 60))] for t in texts]
    one = SentenceTransformerEmbedder(cache_dir=tmp_path, precision="int8", streams=1)
    two = SentenceTransformerEmbedder(cache_dir=tmp_path, precision="int8", streams=2)
    two.embed(["a question"])  # one text: no second session yet (a server never opens it)
    assert two._onnx._stream_session is None
    (a, a_spans), (b, b_spans) = (e.embed_with_spans(texts, spans) for e in (one, two))
    assert two._onnx._stream_session is not None and one._onnx.stream_session() is None
    # the streams share the process's threads: one caller each plus a pool of the rest
    threads = __import__("torch").get_num_threads()
    assert two._onnx.stream_threads == max(1, threads - 1)
    assert np.abs(a - b).max() < 1e-4 and np.abs(a_spans - b_spans).max() < 1e-4
    assert (a @ a.T).argmax(axis=1).tolist() == list(range(len(texts)))  # each its own
