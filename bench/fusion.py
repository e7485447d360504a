"""Choose the fusion's parameters across data sets, offline, by leave-one-set-out.

    .venv/bin/python -m bench.fusion [--sets NAME ...]

For every BEIR-form set (``bench.quality.beir_sets``) the dense and BM25 evidence of each
question is computed once through the project's own index and search code and cached under
``.qa-cache/scores/``: the candidate chunks, their chunk and best-sentence cosines (with and
without pseudo-relevance feedback), their BM25 scores and their exact-identifier scores.
Fusion variants are then scored from that cache in milliseconds (nDCG@10 as trec_eval
computes it, a document ranked by its best chunk), so a sweep never re-embeds or re-searches.

Leave-one-set-out: for each set, the parameters are chosen on the other sets by ``choose``
and scored on the held-out one, against the best any grid point reaches there; the table
also gives each parameter's good values on the held-out set (those of the points within
0.005 of that best). The same is done for other well-known fusion functions (reciprocal
rank, z-score, distribution-based, min-max) so the shipped one is compared on equal terms,
and each component (feedback, language rule, the former gap rule, the sentence score) is
switched on and off at the chosen point.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import pickle
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from qa.assemble import embedder_from_settings, spec_from_settings
from qa.evaluation import Dataset, index_for, load_dataset
from qa.fusion import (
    FusionConfig,
    familiarity,
    fuse,
    lexical_weight,
    normalise_dense,
    normalise_lexical,
)
from qa.index import load_current
from qa.search import Searcher
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
            chunk=searcher.dense_scores(rows, vector, 0.0),
            sentence=searcher.dense_scores(rows, vector, 1.0),
            chunk_prf=searcher.dense_scores(rows, prf, 0.0),
            sentence_prf=searcher.dense_scores(rows, prf, 1.0),
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


Method = Callable[[np.ndarray, np.ndarray, np.ndarray, FusionConfig, float], np.ndarray]


def score_set(
    scores: SetScores,
    config: FusionConfig,
    method: Method | None = None,
    sentence_across: bool = False,
) -> float:
    """Mean nDCG@10 of one set under ``config`` from the cached evidence, a document ranked
    by its best chunk. ``method``: another fusion function with ``qa.fusion.combine``'s
    signature instead of the shipped ``qa.fusion.fuse``; ``sentence_across``: rank by the
    sentence blend across documents too (the former use of the sentence score)."""
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
        chunk, sent = (q.chunk_prf, q.sentence_prf) if use_prf else (q.chunk, q.sentence)
        dense = (0.5 * chunk + 0.5 * sent)[keep] if sentence_across else chunk[keep]
        docs = [d for d, k in zip(q.docs, keep, strict=True) if k]
        if method is not None:
            fused = method(dense, q.bm25[keep], q.exact[keep], config, known)
        else:
            labels = np.unique(docs, return_inverse=True)[1]
            fused = fuse(
                dense, q.bm25[keep], q.exact[keep], config, known,
                sentence=sent[keep], documents=labels,
            )  # fmt: skip
        order = np.argsort(-fused, kind="stable")
        values.append(ndcg10(first_docs(docs, order), scores.qrels[qid]))
    return statistics.fmean(values)


# --- other fusion functions, measured on equal terms ------------------------------------------


def _ranks(scores: np.ndarray) -> np.ndarray:
    order = np.argsort(-scores, kind="stable")
    out = np.empty(len(scores))
    out[order] = np.arange(1, len(scores) + 1)
    return out


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = float(x.std())
    out: np.ndarray = (x - x.mean()) / sd if sd > 0 else np.zeros_like(x)
    return out


def _dbsf(x: np.ndarray) -> np.ndarray:
    """Distribution-based score fusion's normalisation: mean ± 3 standard deviations onto
    [0, 1] (Qdrant's DBSF)."""
    m, sd = float(x.mean()), float(x.std())
    if sd == 0:
        return np.ones_like(x)
    out: np.ndarray = np.clip((x - (m - 3 * sd)) / (6 * sd), 0.0, 1.0)
    return out


def _minmax(x: np.ndarray) -> np.ndarray:
    lo, hi = float(x.min()), float(x.max())
    out: np.ndarray = (x - lo) / (hi - lo) if hi > lo else np.ones_like(x)
    return out


def _convex(
    norm_dense: Callable[[np.ndarray], np.ndarray], norm_lex: Callable[[np.ndarray], np.ndarray]
) -> Method:
    def method(
        dense: np.ndarray, lex: np.ndarray, exact: np.ndarray, cfg: FusionConfig, known: float
    ) -> np.ndarray:
        w = lexical_weight(cfg, known) if lex.max() > 0 else 0.0
        out: np.ndarray = (1 - w) * norm_dense(dense) + w * norm_lex(lex)
        return out + cfg.exact_weight * exact

    return method


def _rrf(
    dense: np.ndarray, lex: np.ndarray, exact: np.ndarray, cfg: FusionConfig, known: float
) -> np.ndarray:
    """Weighted reciprocal rank fusion, k = 60; the exact score is counted as a rank-1
    list of its own weighted by exact_weight."""
    w = lexical_weight(cfg, known)
    lex_rank = np.where(lex > 0, _ranks(lex), np.inf)
    out: np.ndarray = (1 - w) / (60 + _ranks(dense)) + w / (60 + lex_rank)
    return out + cfg.exact_weight * exact / 61 * 2


def _gap_rule(
    dense: np.ndarray, lex: np.ndarray, exact: np.ndarray, cfg: FusionConfig, known: float
) -> np.ndarray:
    """The former gap rule on top of the shipped normalisation: BM25's share moves by
    0.5 x (how far BM25's top hit stands above its runner-up - the same for dense),
    clipped to 0.05-0.8."""
    d, lx = normalise_dense(dense), normalise_lexical(lex)
    w = lexical_weight(cfg, known) if lex.max() > 0 else 0.0
    if w and len(d) > 1:
        gap_d, gap_l = np.diff(np.sort(d)[-2:])[0], np.diff(np.sort(lx)[-2:])[0]
        w = float(np.clip(w + 0.5 * (gap_l - gap_d), 0.05, 0.8))
    out: np.ndarray = (1 - w) * d + w * lx + cfg.exact_weight * exact
    return out


ALTERNATIVES: dict[str, Method | None] = {
    "theoretical min-max, cosine from -1, BM25 from 0 (shipped)": None,
    "min-max over the candidates (the former fusion's)": _convex(_minmax, normalise_lexical),
    "z-scores over the candidates": _convex(_zscore, _zscore),
    "distribution-based (mean ± 3 sd, Qdrant DBSF)": _convex(_dbsf, _dbsf),
    "raw cosine and BM25 / best": _convex(lambda x: x, normalise_lexical),
    "reciprocal rank fusion (k 60)": _rrf,
}


# --- the sweep --------------------------------------------------------------------------------

GRID: dict[str, list[Any]] = {
    "lexical_weight": [0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5],
    "exact_weight": [0.0, 0.1, 0.25, 0.5, 1.0],
}
# Components kept or dropped by whether they help on most sets, each toggled alone at the
# chosen point: (what changes in the config, the fusion function, sentence across docs).
COMPONENTS: dict[str, tuple[dict[str, Any], Method | None, bool]] = {
    "pseudo-relevance feedback (beta 0.3, 200+ chunks)": ({"prf_beta": 0.0}, None, False),
    "language rule (1.3-2.0 word pieces per word)": ({"language_rule": False}, None, False),
    "exact-identifier score": ({"exact_weight": 0.0}, None, False),
    "gap rule (gain 0.5; removed)": ({}, _gap_rule, False),
    "sentence score across documents too (weight 0.5; now within a document only)": (
        {},
        None,
        True,
    ),
}


def grid_points(base: FusionConfig) -> list[FusionConfig]:
    keys = list(GRID)
    return [
        replace(base, **dict(zip(keys, values, strict=True)))
        for values in itertools.product(*(GRID[k] for k in keys))
    ]


def floors_of(sets: list[SetScores], base: FusionConfig) -> dict[str, float]:
    """The least nDCG@10 hybrid may have on each set: the better of dense and BM25 alone
    less TOLERANCE, and at least FLOORS (the issue's reference figures)."""
    return {
        s.name: max(
            max(score_set(s, replace(base, mode=m)) for m in ("dense", "bm25")) - TOLERANCE,
            FLOORS.get(s.name, 0.0),
        )
        for s in sets
    }


def choose(table: dict[str, list[float]], train: list[str], floors: dict[str, float]) -> int:
    """The grid point to use, judged on the training sets only.

    Requirements first: hybrid at most TOLERANCE below the better of its two parts on every
    set and at or above FLOORS. Among the points that meet them (all points if none does),
    the one whose worst shortfall (its nDCG@10 below the best any point reaches on that
    set) is smallest, shortfalls within TOLERANCE counting as none: differences that small
    are one or two questions on these sets. Ties go to the smallest weights (exact weight
    first, then BM25's share; GRID order), the fusion closest to the dense model alone."""
    n = len(table[train[0]])
    best = {t: max(table[t]) for t in train}
    meets = [i for i in range(n) if all(table[t][i] >= floors[t] for t in train)] or list(range(n))

    def shortfall(i: int) -> float:
        worst = max(best[t] - table[t][i] for t in train)
        return 0.0 if worst <= TOLERANCE else round(worst, 4)

    keys = list(GRID)
    order = {i: tuple(GRID[k].index(v) for k, v in zip(keys, POINT_VALUES[i], strict=True))
             for i in meets}  # fmt: skip
    return min(meets, key=lambda i: (shortfall(i), order[i][::-1]))


POINT_VALUES: list[tuple[Any, ...]] = list(itertools.product(*GRID.values()))


def good_values(points: list[FusionConfig], scores: list[float]) -> str:
    """Each parameter's values among the points within TOLERANCE of the best on a set."""
    top = max(scores)
    good = [p for p, v in zip(points, scores, strict=True) if v >= top - TOLERANCE]
    return "; ".join(
        key + " " + ", ".join(str(v) for v in GRID[key] if any(getattr(p, key) == v for p in good))
        for key in GRID
    )


def leave_one_out(
    sets: list[SetScores], base: FusionConfig, method: Method | None = None
) -> tuple[list[str], dict[str, FusionConfig], int, float]:
    """One table row per held-out set: the grid point chosen on the others, its nDCG@10 on
    the held-out set, the best any point reaches there, and each parameter's good values
    there. Also the point chosen on all sets, the number of held-out sets where the chosen
    point falls more than TOLERANCE short, and the largest such shortfall."""
    points = grid_points(base)
    table = {s.name: [score_set(s, p, method) for p in points] for s in sets}
    floors = floors_of(sets, base) if method is None else floors_of_parts(sets, base)
    rows, chosen, misses, worst = [], {}, 0, 0.0
    for held in sets:
        train = [s.name for s in sets if s.name != held.name]
        k = choose(table, train, floors)
        point = points[k]
        chosen[held.name] = point
        held_best = max(table[held.name])
        short = held_best - table[held.name][k]
        misses += short > TOLERANCE
        worst = max(worst, short)
        values = " | ".join(str(getattr(point, key)) for key in GRID)
        rows.append(
            f"| {held.name} | {values} | {table[held.name][k]:.3f} | {held_best:.3f} | "
            f"{'yes' if short <= TOLERANCE else '**no**'} | "
            f"{good_values(points, table[held.name])} |"
        )
    every = [s.name for s in sets]
    k = choose(table, every, floors)
    point = points[k]
    chosen["all"] = point
    values = " | ".join(str(getattr(point, key)) for key in GRID)
    shipped = all(getattr(point, key) == getattr(base, key) for key in GRID)
    mean = statistics.fmean(table[s][k] for s in every)
    label = "the shipped default" if shipped else "**not** the shipped default"
    rows.append(f"| all {len(sets)} sets ({label}) | {values} | mean {mean:.3f} | | | |")
    return rows, chosen, misses, worst


def floors_of_parts(sets: list[SetScores], base: FusionConfig) -> dict[str, float]:
    return floors_of(sets, base)


def alternative_rows(sets: list[SetScores], base: FusionConfig) -> list[str]:
    """Each fusion function with its BM25 share and exact weight chosen the same way."""
    rows = []
    floors = floors_of(sets, base)
    for label, method in ALTERNATIVES.items():
        _, chosen, misses, worst = leave_one_out(sets, base, method)
        point = chosen["all"]
        got = {s.name: score_set(s, point, method) for s in sets}
        below = [n for n, v in got.items() if v < floors[n]]
        cells = " | ".join(f"{got[s.name]:.3f}" for s in sets)
        rows.append(
            f"| {label} | {point.lexical_weight} / {point.exact_weight} | {cells} | "
            f"{misses} of {len(sets)} (worst {worst:.3f}) | {', '.join(below) or 'none'} |"
        )
    return rows


def component_rows(sets: list[SetScores], base: FusionConfig) -> list[str]:
    rows = []
    shipped = [score_set(s, base) for s in sets]
    for label, (change, method, across) in COMPONENTS.items():
        other = [score_set(s, replace(base, **change), method, across) for s in sets]
        in_shipped = bool(change)  # switched off here, so the shipped fusion has it
        deltas = [(a - b) if in_shipped else (b - a) for a, b in zip(shipped, other, strict=True)]
        helped = sum(d > 0.002 for d in deltas)
        hurt = sum(d < -0.002 for d in deltas)
        cells = " | ".join(f"{d:+.3f}" for d in deltas)
        rows.append(f"| {label} | {'yes' if in_shipped else 'no'} | {cells} | {helped} | {hurt} |")
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
    loo_rows, _, _, _ = leave_one_out(sets, base)
    names = " | ".join(s.name for s in sets)
    return [
        "| held-out set | "
        + " | ".join(f"{k} chosen on the others" for k in GRID)
        + " | held-out nDCG@10 | best on it | within 0.005 | good values on it |",
        "|---|" + "---|" * (len(GRID) + 4),
        *loo_rows,
        "",
        f"| fusion function | BM25 share / exact weight chosen on all sets | {names} "
        "| held-out sets more than 0.005 short | sets where hybrid breaks a requirement |",
        "|---|---|" + "---|" * len(sets) + "---|---|",
        *alternative_rows(sets, base),
        "",
        f"| component | in the shipped fusion | {names} | sets helped | sets hurt |",
        "|---|---|" + "---|" * len(sets) + "---|---|",
        *component_rows(sets, base),
    ]


if __name__ == "__main__":
    main()
