"""Optional CrossEncoder reranking, with a tiny cross-encoder built inside the test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from qa.engine import Engine
from qa.errors import ModelLoadError
from qa.rerank import CrossEncoderReranker


@pytest.fixture(scope="module")
def tiny_cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path = tmp_path_factory.mktemp("tiny-ce")
    words = [
        "nato",
        "japan",
        "australia",
        "sourdough",
        "bread",
        "dough",
        "proof",
        "fridge",
        "the",
        "a",
        "of",
        "and",
        "in",
    ]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", "utf-8")
    tokenizer = BertTokenizerFast(vocab_file=str(path / "vocab.txt"))
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=512, num_labels=1,
    )  # fmt: skip
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_reranker_reorders_by_cross_encoder_scores(
    engine: Engine, tiny_cross_encoder: Path
) -> None:
    engine.settings.reranker_model = str(tiny_cross_encoder)
    engine.settings.rerank_candidates = 6
    question = "sourdough dough proof fridge"
    result = engine.ask(question, top_k=3)
    reranker = CrossEncoderReranker(str(tiny_cross_encoder))
    pool = engine.settings.rerank_candidates
    engine.settings.reranker_model = None
    candidates = engine.ask(question, top_k=pool).passages
    expected = reranker.scores(question, [p.text for p in candidates])
    order = [candidates[i].text for i in np.argsort(-expected, kind="stable")[:3]]
    assert [p.text for p in result.passages] == order
    assert [p.score for p in result.passages] == sorted(
        [p.score for p in result.passages], reverse=True
    )


def test_missing_reranker_model_is_a_clear_error(tmp_path: Path) -> None:
    reranker = CrossEncoderReranker(str(tmp_path / "no-such-model"))
    with pytest.raises(ModelLoadError, match="no-such-model"):
        reranker.scores("q", ["p"])
