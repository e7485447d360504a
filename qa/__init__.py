"""qa: question answering over your documents, with passages and exact citations.

The flow, one module per stage: loaders → chunker → embedder → store/lexical → index
(on disk) → builder → search → engine (answers) → chat (follow-ups: conversation, optional
language model: synthesis) → http / cli / mcp_server (translation only).

The public names below are imported on first use, so that ``import qa.loaders`` (the
file-reading worker process of qa.extraction) does not load the model stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qa.builder import BuildReport, build_index
    from qa.chunker import Chunker
    from qa.documents import Chunk, Document
    from qa.engine import Engine
    from qa.errors import QAError
    from qa.evaluation import evaluate, load_dataset
    from qa.loaders import load_corpus
    from qa.schema import AskResponse, Citation, NumberedCitation, Passage
    from qa.settings import Settings

_EXPORTS = {
    "AskResponse": "qa.schema",
    "BuildReport": "qa.builder",
    "Chunk": "qa.documents",
    "Chunker": "qa.chunker",
    "Citation": "qa.schema",
    "Document": "qa.documents",
    "Engine": "qa.engine",
    "NumberedCitation": "qa.schema",
    "Passage": "qa.schema",
    "QAError": "qa.errors",
    "Settings": "qa.settings",
    "build_index": "qa.builder",
    "evaluate": "qa.evaluation",
    "load_corpus": "qa.loaders",
    "load_dataset": "qa.evaluation",
}

__all__ = [
    "AskResponse",
    "BuildReport",
    "Chunk",
    "Chunker",
    "Citation",
    "Document",
    "Engine",
    "NumberedCitation",
    "Passage",
    "QAError",
    "Settings",
    "build_index",
    "evaluate",
    "load_corpus",
    "load_dataset",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'qa' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
