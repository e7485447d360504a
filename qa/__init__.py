"""qa: question answering over your documents, with passages and exact citations.

The flow, one module per stage: loaders → chunker → embedder → store/lexical → index
(on disk) → builder → search → engine (answers) → chat (follow-ups: conversation, optional
language model: synthesis) → http / cli / mcp_server (translation only).
"""

from qa.builder import BuildReport, build_index
from qa.chunker import Chunker
from qa.documents import Chunk, Document
from qa.engine import Engine
from qa.errors import QAError
from qa.evaluation import evaluate, load_dataset
from qa.loaders import load_corpus
from qa.schema import AskResponse, Citation, NumberedCitation, Passage
from qa.settings import Settings

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
