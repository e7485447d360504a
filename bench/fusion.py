"""Choose the fusion's parameters across data sets, offline, by leave-one-set-out.

    .venv/bin/python -m bench.fusion [--sets NAME ...]

For every BEIR-form set (``bench.quality.beir_sets``) the dense and BM25 evidence of each
question is computed once through the project's own index and search code and cached under
``.qa-cache/scores/``: the candidate chunks, their chunk and best-sentence cosines (with and
without pseudo-relevance feedback), their BM25 scores and their exact-identifier scores.
Fusion variants are then scored from that cache in milliseconds (nDCG@10 as trec_eval
computes it, a document ranked by its best chunk), so a sweep never re-embeds or re-searches.

Leave-one-set-out: for each set, every parameter grid point is scored on the other sets and
the point whose worst shortfall there (nDCG@10 below the best any point reaches on that set)
is smallest is chosen; the table shows the chosen point and
what it gives on the held-out set against the best any point reaches on it.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import pickle
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from qa.assemble import embedder_from_settings, spec_from_settings
from qa.evaluation import Dataset, index_for, load_dataset
from qa.index import load_current
from qa.search import FusionConfig, Searcher, familiarity, fuse
from qa.settings import Settings

DEPTH = 300  # candidates per retriever, as `qa eval` asks for
TOLERANCE = 0.005  # hybrid may trail the better of its parts by this much, no more
FLOORS = {"msmarco-5k": 0.807}  # reference figures hybrid must keep (the floor)
SCORES_VERSION = 2  # bump when what is cached changes


@dataclass
class QueryScores:
    """One question's candidates and every score the fusion may use (arrays over rows)."""

    rows: np.ndarray  # chunk rows (int64)
    docs: list[str]  # the document id of each row
    chunk: np.ndarray  # cosine of question and chunk
    sentence: np.ndarray  # cosine of question and the chunk's best sentence
    chunk_prf: np.ndarray  # the same two with the feedback query vector
    sentence_prf: np.ndarray
    bm25: np.ndarray
    exact: np.ndarray  # exact-identifier score, 0 when none of the query's identifiers
    in_dense: np.ndarray  # bool: among the dense top DEPTH (plain vector)
    in_dense_prf: np.ndarray  # bool: ... with the feedback vector
    in_lex: np.ndarray  # bool: among the BM25 top DEPTH with a score above 0
    in_exact: np.ndarray  # bool: holds one of the query's identifiers


@dataclass
class SetScores:
    name: str
    docs: int
    chunks: int
    word_pieces_per_word: float
    qrels: dict[str, dict[str, int]]
    queries: dict[str, QueryScores]


def _cache_file(cache: Path, dataset: Dataset, index_dir: Path) -> Path:
    digest = hashlib.sha256()
    digest.update(index_dir.name.encode())
    digest.update(json.dumps([SCORES_VERSION, DEPTH, sorted(dataset.queries.items())]).encode())
    return cache / "scores" / f"{dataset.path.name}-{digest.hexdigest()[:16]}.pkl"


def collect(path: Path, settings: Settings) -> SetScores:
    """The cached evidence of one set, computed when missing (embeds each question once)."""
    dataset = load_dataset(path)
    embedder = embedder_from_settings(settings)
    spec = spec_from_settings(settings)
    cache = Path(settings.cache_dir)
    index_dir = index_for(dataset, cache, embedder, spec)
    target = _cache_file(cache, dataset, index_dir)
    if target.exists():
        with target.open("rb") as fh:
            cached: SetScores = pickle.load(fh)
        return cached
    data = load_current(index_dir, spec)
    searcher = Searcher(
        data, candidates=DEPTH, fusion=FusionConfig(prf_min_chunks=0, language_rule=False)
    )
    no_sentences = Searcher(data, fusion=FusionConfig(sentence_weight=0.0))
    best_sentence = Searcher(data, fusion=FusionConfig(sentence_weight=1.0))
    vectors = embedder.embed(list(dataset.queries.values()))
    out: dict[str, QueryScores] = {}
    n = len(data)
    for (qid, text), vector in zip(dataset.queries.items(), vectors, strict=True):
        prf = searcher.feedback_vector(vector, None, n)
        dense = data.dense(vector, DEPTH, None).ids
        dense_prf = data.dense(prf, DEPTH, None).ids
        lex = data.lexical(text, DEPTH, None).ids
        found = data.exact(text, None)
        rows = np.unique(np.concatenate([dense, dense_prf, lex, found.ids]))  # chunk ids
        exact = np.zeros(len(rows), dtype=np.float32)
        exact[np.searchsorted(rows, found.ids)] = found.scores
        out[qid] = QueryScores(
            rows=rows,
            docs=[c.doc_id.split("#", 1)[-1] for c in data.chunks(rows)],
            chunk=no_sentences.dense_scores(rows, vector),
            sentence=best_sentence.dense_scores(rows, vector),
            chunk_prf=no_sentences.dense_scores(rows, prf),
            sentence_prf=best_sentence.dense_scores(rows, prf),
            bm25=data.lexical_scores(text, rows),
            exact=exact,
            in_dense=np.isin(rows, dense),
            in_dense_prf=np.isin(rows, dense_prf),
            in_lex=np.isin(rows, lex),
            in_exact=np.isin(rows, found.ids),
        )
    result = SetScores(
        path.name, len(data.documents()), n, data.word_pieces_per_word, dataset.qrels, out
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("wb") as fh:
        pickle.dump(result, fh)
    return result


def ndcg10(ranked_docs: Iterable[str], judged: dict[str, int]) -> float:
    """nDCG@10 as trec_eval's ndcg_cut.10 (gain = grade, log2 discount)."""
    gains = [judged.get(d, 0) for d in itertools.islice(ranked_docs, 10)]
    dcg = sum(g / np.log2(i + 2) for i, g in enumerate(gains) if g > 0)
    ideal = sorted((g for g in judged.values() if g > 0), reverse=True)[:10]
    idcg = sum(g / np.log2(i + 2) for i, g in enumerate(ideal))
    return float(dcg / idcg) if idcg > 0 else 0.0


def first_docs(docs: Sequence[str], order: np.ndarray) -> Iterable[str]:
    seen: set[str] = set()
    for j in order:
        d = docs[j]
        if d not in seen:
            seen.add(d)
            yield d


def score_set(scores: SetScores, config: FusionConfig) -> float:
    """Mean nDCG@10 of one set under ``config`` from the cached evidence."""
    values = []
    known = familiarity(scores.word_pieces_per_word, config)
    for qid, q in scores.queries.items():
        use_prf = config.prf_beta > 0 and scores.chunks >= config.prf_min_chunks and known >= 0.5
        in_dense = q.in_dense_prf if use_prf else q.in_dense
        keep = in_dense.copy()
        if config.mode != "dense":
            keep |= q.in_lex
            if config.exact_weight > 0 and config.mode == "hybrid":
                keep |= q.in_exact
        if config.mode == "bm25":
            keep = q.in_lex
        if not keep.any():
            values.append(0.0)
            continue
        sw = config.sentence_weight
        chunk, sent = (q.chunk_prf, q.sentence_prf) if use_prf else (q.chunk, q.sentence)
        dense = ((1 - sw) * chunk + sw * sent)[keep]
        fused = fuse(dense, q.bm25[keep], q.exact[keep], config, known)
        order = np.argsort(-fused, kind="stable")
        docs = [d for d, k in zip(q.docs, keep, strict=True) if k]
        values.append(ndcg10(first_docs(docs, order), scores.qrels[qid]))
    return statistics.fmean(values)


# --- the sweep --------------------------------------------------------------------------------

GRID: dict[str, list[Any]] = {
    "lexical_weight": [0.1, 0.2, 0.3, 0.4, 0.5],
    "gap_gain": [0.0, 0.25, 0.5, 0.75, 1.0],
    "exact_weight": [0.0, 0.1, 0.25, 0.5, 1.0],
}
# Components kept or dropped by whether they help on most sets (each toggled alone, from
# the chosen point), with their former constants.
COMPONENTS: dict[str, dict[str, Any]] = {
    "sentence score (weight 0.5)": {"sentence_weight": 0.5},
    "pseudo-relevance feedback (beta 0.3, 200+ chunks)": {"prf_beta": 0.3},
    "language rule (1.3-2.0 word pieces per word)": {"language_rule": True},
}
OFF: dict[str, Any] = {
    "sentence_weight": 0.0,
    "prf_beta": 0.0,
    "language_rule": False,
}


def grid_points(base: FusionConfig) -> list[FusionConfig]:
    keys = list(GRID)
    return [
        replace(base, **dict(zip(keys, values, strict=True)))
        for values in itertools.product(*(GRID[k] for k in keys))
    ]


def leave_one_out(
    sets: list[SetScores], base: FusionConfig
) -> tuple[list[str], dict[str, FusionConfig]]:
    """One table row per held-out set: the grid point chosen on the others, its nDCG@10 on
    the held-out set, the best any point reaches there, and each parameter's good range
    there (values of the points within 0.005 of that best)."""
    points = grid_points(base)
    table = {s.name: [score_set(s, p) for p in points] for s in sets}
    # a point that breaks a requirement on a training set is not chosen (see ``choose``)
    floors = {
        s.name: max(
            [score_set(s, replace(base, mode=m)) for m in ("dense", "bm25")]
            + [FLOORS.get(s.name, 0.0) + TOLERANCE]
        )
        - TOLERANCE
        for s in sets
    }
    rows, chosen = [], {}
    for held in sets:
        train = [s.name for s in sets if s.name != held.name]
        best = choose(table, train, floors)
        point = points[best]
        chosen[held.name] = point
        held_best = max(table[held.name])
        good = [p for i, p in enumerate(points) if table[held.name][i] >= held_best - 0.005]
        ranges = "; ".join(
            key
            + " "
            + ", ".join(str(v) for v in GRID[key] if any(getattr(p, key) == v for p in good))
            for key in GRID
        )
        values = " | ".join(str(getattr(point, key)) for key in GRID)
        ok = table[held.name][best] >= held_best - 0.005
        rows.append(
            f"| {held.name} | {values} | {table[held.name][best]:.3f} | {held_best:.3f} | "
            f"{'yes' if ok else '**no**'} | {ranges} |"
        )
    every = [s.name for s in sets]
    means = [statistics.fmean(table[s][i] for s in every) for i in range(len(points))]
    point = points[choose(table, every, floors)]
    chosen["all"] = point
    values = " | ".join(str(getattr(point, key)) for key in GRID)
    shipped = all(getattr(point, key) == getattr(base, key) for key in GRID)
    rows.append(
        f"| all {len(sets)} sets ({'' if shipped else '**not** '}the shipped default) | "
        f"{values} | mean {max(means):.3f} | | | |"
    )
    return rows, chosen


def choose(table: dict[str, list[float]], train: list[str], floors: dict[str, float]) -> int:
    """The grid point to use, judged on the training sets only. Requirements first: hybrid
    at most TOLERANCE below the better of its two parts on every set, and at or above
    FLOORS (today's reference figures). Among the points that meet them (all points if
    none does), the one whose worst shortfall (its nDCG@10 below the best any point
    reaches on that set) is smallest; ties go to the better mean. Fusion must hold on every
    set, so the worst set decides, not the average."""
    n = len(table[train[0]])
    best = {t: max(table[t]) for t in train}
    meets = [i for i in range(n) if all(table[t][i] >= floors[t] for t in train)] or list(range(n))
    shortfall = {i: max(best[t] - table[t][i] for t in train) for i in meets}
    mean = {i: statistics.fmean(table[t][i] for t in train) for i in meets}
    return min(meets, key=lambda i: (round(shortfall[i], 4), -mean[i]))


def component_rows(sets: list[SetScores], base: FusionConfig) -> list[str]:
    rows = []
    for label, change in COMPONENTS.items():
        without = replace(base, **{k: OFF[k] for k in change})
        with_it = replace(base, **change)
        deltas = [score_set(s, with_it) - score_set(s, without) for s in sets]
        helped = sum(d > 0.002 for d in deltas)
        hurt = sum(d < -0.002 for d in deltas)
        cells = " | ".join(f"{d:+.3f}" for d in deltas)
        rows.append(f"| {label} | {cells} | {helped} | {hurt} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    from bench.quality import beir_sets

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", nargs="*", help="only these sets (folder names)")
    args = parser.parse_args(argv)
    settings = Settings()
    paths = [p for p in beir_sets() if not args.sets or p.name in args.sets]
    sets = [collect(p, settings) for p in paths]
    base = FusionConfig()
    for line in report(sets, base):
        print(line)


def report(sets: list[SetScores], base: FusionConfig) -> list[str]:
    loo_rows, _ = leave_one_out(sets, base)
    names = " | ".join(s.name for s in sets)
    return [
        "| held-out set | "
        + " | ".join(f"{k} chosen on the others" for k in GRID)
        + " | held-out nDCG@10 | best on it | within 0.005 | good values on it |",
        "|---|" + "---|" * (len(GRID) + 4),
        *loo_rows,
        "",
        f"| component added to the chosen fusion | {names} | sets helped | sets hurt |",
        "|---|" + "---|" * len(sets) + "---|---|",
        *component_rows(sets, base),
    ]


if __name__ == "__main__":
    main()
