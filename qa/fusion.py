"""Fusion of dense, BM25 and exact-identifier evidence into one ranking (pure functions).

A candidate chunk's fused score is a convex combination of the two retrievers' scores, each
normalised with its *theoretical* minimum and the question's best score (Bruch, Gai and
Ingber, "An Analysis of Fusion Functions for Hybrid Retrieval", ACM TOIS 2023, the "TMM"
normalisation), plus the exact-identifier score::

    fused = (1 - w) * (cos + 1) / (best_cos + 1) + w * bm25 / best_bm25 + b * exact

Cosine's floor is -1 and BM25's is 0, so neither part is stretched by how close the worst
candidate happens to be to the best (min-max over the candidates does that). ``exact`` is
in [0, 1] (``qa.lexical.IdentifierIndex``). ``w`` is the one fitted constant, chosen by
leave-one-set-out over the BEIR-form sets (``bench/fusion.py``, docs/quality.md); it moves
toward BM25 only for a corpus in a language the model does not know (``familiarity``).

The best sentence's cosine orders the chunks *of one document* (``within_documents``): the
chunk's own cosine says which documents are about the question, the best sentence says
which passage of a document answers it.

Nothing here reads an index: the caller passes arrays over its candidate chunks, so the
functions are the same whichever store produced the candidates.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COSINE_FLOOR = -1.0  # the smallest cosine there is: the dense score's theoretical minimum
FOREIGN_LEXICAL_WEIGHT = 0.8  # BM25's share on a corpus the model does not know at all


@dataclass(frozen=True)
class FusionConfig:
    mode: str = "hybrid"  # hybrid | dense | bm25
    lexical_weight: float = 0.1  # w: BM25's share of the fused score (leave-one-set-out)
    exact_weight: float = 0.25  # b: weight of the exact-identifier score, added
    dedupe_overlap: float = 0.5  # drop a hit sharing this share of a better hit's span
    prf_k: int = 10  # pseudo-relevance feedback: top chunks averaged into the query vector
    prf_beta: float = 0.3  # weight of their mean vector
    prf_min_chunks: int = 200  # no feedback on smaller corpora: their top k is not a signal
    language_rule: bool = True  # lean on BM25 for a corpus the tokenizer shreds (word pieces)
    familiar_wppw: float = 1.3  # word pieces per word of a corpus in the model's language
    foreign_wppw: float = 2.0  # ... and of one in a language the model does not know


def familiarity(word_pieces_per_word: float, config: FusionConfig) -> float:
    """1 for a corpus in the model's language, falling to 0 as its tokenizer shreds it
    (linear between ``familiar_wppw`` and ``foreign_wppw`` word pieces per word)."""
    if not config.language_rule:
        return 1.0
    lo, hi = config.familiar_wppw, config.foreign_wppw
    return float(np.clip((hi - word_pieces_per_word) / (hi - lo), 0.0, 1.0))


def lexical_weight(config: FusionConfig, known: float = 1.0) -> float:
    """BM25's share: ``lexical_weight`` for a corpus in the model's language, sliding to
    FOREIGN_LEXICAL_WEIGHT as the corpus gets foreign to it (``known`` from 1 to 0)."""
    return FOREIGN_LEXICAL_WEIGHT + known * (config.lexical_weight - FOREIGN_LEXICAL_WEIGHT)


def normalise_dense(cosines: np.ndarray) -> np.ndarray:
    """Cosines mapped onto [0, 1] by their theoretical minimum (-1) and the best candidate's
    cosine: ``(cos + 1) / (best + 1)``; shape kept. The best candidate gets 1."""
    top = float(cosines.max()) if len(cosines) else 0.0
    out: np.ndarray = (cosines - COSINE_FLOOR) / max(top - COSINE_FLOOR, 1e-9)
    return out


def normalise_lexical(scores: np.ndarray) -> np.ndarray:
    """BM25 scores divided by the best one (BM25's theoretical minimum is 0); all 0 when no
    candidate shares a term with the question. Shape kept."""
    top = float(scores.max()) if len(scores) else 0.0
    out: np.ndarray = scores / top if top > 0 else np.zeros_like(scores)
    return out


def combine(
    dense: np.ndarray,
    lexical: np.ndarray,
    exact: np.ndarray,
    config: FusionConfig,
    known: float = 1.0,
) -> np.ndarray:
    """One fused score per candidate, shape (n,), from arrays of shape (n,): ``dense`` the
    cosine, ``lexical`` BM25 (0 where no term matches), ``exact`` the exact-identifier score
    in [0, 1]. ``known``: the corpus's familiarity to the model (``familiarity``)."""
    if config.mode == "dense":
        return dense
    if config.mode == "bm25":
        return normalise_lexical(lexical)
    w = lexical_weight(config, known) if float(lexical.max(initial=0.0)) > 0 else 0.0
    fused: np.ndarray = (1 - w) * normalise_dense(dense) + w * normalise_lexical(lexical)
    if config.exact_weight:
        fused = fused + config.exact_weight * exact
    return fused


def blend(chunk: np.ndarray, sentence: np.ndarray, weight: float) -> np.ndarray:
    """A chunk's cosine blended with its best sentence's: ``(1 - weight) * chunk + weight *
    sentence`` (shape (n,)); ``sentence`` equals ``chunk`` for a chunk without sentences."""
    out: np.ndarray = (1 - weight) * chunk + weight * sentence
    return out


def within_documents(across: np.ndarray, within: np.ndarray, documents: np.ndarray) -> np.ndarray:
    """Reorder each document's chunks by ``within`` while keeping the scores it has.

    ``across``, ``within``: scores of shape (n,); ``documents``: an integer label per chunk.
    Each document keeps the multiset of its ``across`` scores (so documents rank among each
    other exactly as by ``across``), handed out to its chunks in the order of ``within``:
    its best ``across`` score goes to its chunk with the best ``within`` score, and so on.
    """
    n = len(across)
    if n < 2:
        return across
    slots = np.lexsort((np.arange(n), -across, documents))  # per document, best across first
    chunks = np.lexsort((np.arange(n), -within, documents))  # per document, best within first
    out = np.empty_like(across)
    out[chunks] = across[slots]
    return out


def fuse(
    dense: np.ndarray,
    lexical: np.ndarray,
    exact: np.ndarray,
    config: FusionConfig,
    known: float = 1.0,
    *,
    sentence: np.ndarray | None = None,
    documents: np.ndarray | None = None,
) -> np.ndarray:
    """Fused score of each candidate chunk (higher is better), shape (n,).

    ``dense``: the chunk's cosine with the (feedback) query vector, ``lexical``: BM25 (0
    where no term matches), ``exact``: the exact-identifier score (``IdentifierIndex.match``);
    ``sentence``: the cosine of the chunk's best sentence (the chunk's own where it has
    none) and ``documents``: an integer label of the chunk's document, both optional, shape
    (n,) like the others. Documents rank by ``combine`` of the chunk cosines; with
    ``sentence`` and ``documents`` the chunks of one document are then ordered by
    ``combine`` with the best sentence's cosine in place of the chunk's
    (``within_documents``). ``known``: the corpus's familiarity to the model.
    """
    across = combine(dense, lexical, exact, config, known)
    if sentence is None or documents is None or config.mode == "bm25":
        return across
    within = combine(sentence, lexical, exact, config, known)
    return within_documents(across, within, documents)
