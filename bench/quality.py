"""Every retrieval-quality figure in docs/quality.md, from one script.

    .venv/bin/python -m bench.quality [--write docs/quality.md] [--sweep]

1. BEIR data sets (msmarco-5k from ../shared/benchmarks and every eval/*/ folder with a
   corpus.jsonl): nDCG@10, Recall@100, MRR@10 in dense, BM25 and hybrid mode through the
   project's pipeline (`qa eval`).
2. The default article: the labelled reader questions (rank of the evidence passage,
   highlight containing the evidence, abstention) and off-topic questions.
3. Near-duplicate suppression: overlapping passages in the top 5 with and without it.
4. Abstention calibration: the confidence the abstention threshold is compared with, for
   questions each corpus answers and for questions it does not (other corpora's queries).
5. With --sweep: chunk size and overlap against the NATO questions and msmarco-5k.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.fusion import collect
from bench.fusion import report as fusion_report
from bench.questions import evaluate as evaluate_questions
from bench.questions import read_jsonl
from qa.assemble import embedder_from_settings, spec_from_settings
from qa.builder import build_index
from qa.engine import Engine
from qa.evaluation import evaluate, index_for, load_dataset
from qa.index import load_current
from qa.search import FusionConfig, Searcher
from qa.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TOLERANCE = 0.005  # hybrid may trail the better of its two parts by at most this
SHARED = ROOT.parent / "shared" / "benchmarks"


def beir_sets() -> list[Path]:
    sets = [p for p in sorted(SHARED.glob("*")) if (p / "corpus.jsonl").exists()]
    sets += [p for p in sorted((ROOT / "eval").glob("*")) if (p / "corpus.jsonl").exists()]
    return sets


def beir_table(settings: Settings) -> tuple[list[str], dict[str, dict[str, Any]]]:
    embedder = embedder_from_settings(settings)
    spec = spec_from_settings(settings)
    rows: list[str] = []
    results: dict[str, dict[str, Any]] = {}
    for path in beir_sets():
        dataset = load_dataset(path)
        per_mode = {}
        for mode in ("dense", "bm25", "hybrid"):
            per_mode[mode] = evaluate(
                dataset, Path(settings.cache_dir), embedder, spec, mode=mode,
                candidates=settings.candidates,
            )  # fmt: skip
        results[path.name] = per_mode
        best_part = max(per_mode["dense"]["ndcg@10"], per_mode["bm25"]["ndcg@10"])
        margin = per_mode["hybrid"]["ndcg@10"] - best_part
        verdict = f"{margin:+.3f} {'yes' if margin >= -TOLERANCE else '**no**'}"
        for mode, r in per_mode.items():
            rows.append(
                f"| {path.name} ({r['docs']} docs, {r['queries']} q) | {mode} | "
                f"{r['ndcg@10']:.3f} | {r['recall@100']:.3f} | {r['mrr@10']:.3f} | "
                f"{r['latency_ms']['p50']:.1f} | {verdict if mode == 'hybrid' else ''} |"
            )
    return rows, results


def nato_engine(settings: Settings, tmp: Path) -> Engine:
    s = settings.model_copy(update={"index_dir": tmp})
    engine = Engine(s)
    build_index(Path(s.corpus_dir), tmp, engine.embedder, spec_from_settings(s))
    engine.load()
    return engine


def questions_table(settings: Settings) -> tuple[list[str], dict[str, Any]]:
    questions = read_jsonl(ROOT / "eval" / "nato" / "questions.jsonl")
    offtopic = read_jsonl(ROOT / "eval" / "nato" / "offtopic.jsonl")
    rows, out = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        engine = nato_engine(settings, Path(tmp))
        for mode in ("dense", "bm25", "hybrid"):
            engine.fusion = FusionConfig(mode=mode)
            engine.load()
            r = evaluate_questions(engine, questions, offtopic)
            out[mode] = r
            rows.append(
                f"| {mode} | {r['rank1']:.3f} | {r['top3']:.3f} | {r['mrr']:.3f} | "
                f"{r['highlight_has_evidence']:.3f} | {r['on_topic_abstained']}/{r['questions']} "
                f"| {r['offtopic_abstained']}/{r['offtopic']} |"
            )
    out["dedupe_rows"] = dedupe_rows(settings, questions)
    return rows, out


def dedupe_rows(settings: Settings, questions: list[dict[str, Any]]) -> list[str]:
    """Small chunks with heavy overlap (64 tokens, 32 shared) make near-duplicates common;
    count them in the top 5 with and without suppression."""
    s = settings.model_copy(update={"chunk_tokens": 64, "chunk_overlap_tokens": 32})
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        engine = nato_engine(s, Path(tmp))
        for dedupe in (True, False):
            near, distinct, mrr = [], [], []
            for item in questions:
                vector = engine.embedder.embed([item["question"]])[0]
                hits = Searcher(engine.data, fusion=FusionConfig()).search(
                    item["question"], vector, 5, dedupe=dedupe
                )
                spans = [h.chunk for h in hits]
                near.append(
                    sum(
                        1
                        for a, b in itertools.combinations(spans, 2)
                        if a.doc_id == b.doc_id
                        and min(a.end, b.end) - max(a.start, b.start)
                        >= 0.5 * min(a.end - a.start, b.end - b.start)
                    )
                )
                covered: set[int] = set()
                for c in spans:
                    covered.update(range(c.start, c.end))
                distinct.append(len(covered))
                ranks = [i for i, c in enumerate(spans, 1) if item["evidence"] in c.text]
                mrr.append(1 / ranks[0] if ranks else 0.0)
            rows.append(
                f"| {'on' if dedupe else 'off'} | {statistics.fmean(near):.2f} | "
                f"{statistics.fmean(distinct):.0f} | {statistics.fmean(mrr):.3f} |"
            )
    return rows


def calibration_table(settings: Settings) -> list[str]:
    """Confidence (best cosine of question to passage or sentence) for answerable and
    unanswerable questions per corpus; abstention happens below QA_MIN_SCORE."""
    embedder = embedder_from_settings(settings)
    spec = spec_from_settings(settings)
    corpora: dict[str, tuple[Engine, list[str]]] = {}
    tmp = tempfile.TemporaryDirectory()
    nato = nato_engine(settings, Path(tmp.name))
    corpora["nato article"] = (
        nato,
        [q["question"] for q in read_jsonl(ROOT / "eval" / "nato" / "questions.jsonl")],
    )
    for path in beir_sets():
        dataset = load_dataset(path)
        index_dir = index_for(dataset, Path(settings.cache_dir), embedder, spec)
        engine = Engine(settings.model_copy(update={"index_dir": index_dir}), embedder)
        engine.install(load_current(index_dir, spec))
        corpora[path.name] = (engine, list(dataset.queries.values()))
    offtopic = [q["question"] for q in read_jsonl(ROOT / "eval" / "nato" / "offtopic.jsonl")]
    rows = []
    threshold = settings.min_score
    for name, (engine, own) in corpora.items():
        others = [q for other, (_, qs) in corpora.items() if other != name for q in qs[:15]]
        conf = [confidence(engine, q) for q in own]
        off = [confidence(engine, q) for q in offtopic]
        other = [confidence(engine, q) for q in others]
        abstained = sum(c < threshold for c in conf)
        answered = sum(c >= threshold for c in off)
        answered_other = sum(c >= threshold for c in other)
        rows.append(
            f"| {name} | {len(conf)} | {min(conf):.2f} / {statistics.median(conf):.2f} | "
            f"{abstained}/{len(conf)} ({abstained / len(conf):.0%}) | "
            f"{max(off):.2f} | {answered}/{len(off)} ({answered / len(off):.0%}) | "
            f"{answered_other}/{len(other)} ({answered_other / len(other):.0%}) |"
        )
    tmp.cleanup()
    return rows


def confidence(engine: Engine, question: str) -> float:
    return engine.ask(question, 5).confidence


def sweep_table(settings: Settings) -> list[str]:
    questions = read_jsonl(ROOT / "eval" / "nato" / "questions.jsonl")
    msmarco = SHARED / "msmarco-5k"
    rows = []
    for tokens, overlap in [(96, 16), (128, 32), (192, 32), (192, 64), (254, 32)]:
        s = settings.model_copy(update={"chunk_tokens": tokens, "chunk_overlap_tokens": overlap})
        with tempfile.TemporaryDirectory() as tmp:
            engine = nato_engine(s, Path(tmp))
            r = evaluate_questions(engine, questions, [])
            chunks = len(engine.data)
        ms = "n/a"
        if msmarco.exists():
            m = evaluate(
                load_dataset(msmarco), Path(s.cache_dir), embedder_from_settings(s),
                spec_from_settings(s), mode="hybrid",
            )  # fmt: skip
            ms = f"{m['ndcg@10']:.3f}"
        rows.append(
            f"| {tokens} | {overlap} | {chunks} | {r['rank1']:.3f} | {r['top3']:.3f} | "
            f"{r['mrr']:.3f} | {ms} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--write", type=Path, default=None, help="write the markdown here")
    parser.add_argument("--sweep", action="store_true", help="also sweep chunk sizes (slow)")
    args = parser.parse_args()
    settings = Settings()
    began = time.perf_counter()
    beir_rows, _ = beir_table(settings)
    fusion_rows = fusion_report([collect(p, settings) for p in beir_sets()], FusionConfig())
    q_rows, q = questions_table(settings)
    cal_rows = calibration_table(settings)
    parts = [
        "## Retrieval on BEIR data sets (`qa eval`)",
        "",
        "| data set | mode | nDCG@10 | Recall@100 | MRR@10 | p50 ms "
        f"| hybrid − better part (within {TOLERANCE}) |",
        "|---|---|---|---|---|---|---|",
        *beir_rows,
        "",
        "## Fusion parameters chosen by leave-one-set-out (`python -m bench.fusion`)",
        "",
        *fusion_rows,
        "",
        "## The default article: reader questions (`python -m bench.questions`)",
        "",
        "| mode | evidence at rank 1 | in top 3 | MRR | highlight has evidence "
        "| on-topic abstained | off-topic abstained |",
        "|---|---|---|---|---|---|---|",
        *q_rows,
        "",
        "## Near-duplicate suppression (default article, chunks of 64 tokens overlapping by "
        "32, top 5)",
        "",
        "| suppression | pairs sharing half their span, per question | distinct characters "
        "shown | MRR of the evidence |",
        "|---|---|---|---|",
        *q["dedupe_rows"],
        "",
        f"## Abstention calibration (threshold QA_MIN_SCORE = {settings.min_score})",
        "",
        "| corpus | answerable questions | their min / median confidence | answerable that "
        "abstain | off-topic max confidence | off-topic that answer | other sets' questions "
        "that answer |",
        "|---|---|---|---|---|---|---|",
        *cal_rows,
    ]
    if args.sweep:
        parts += [
            "",
            "## Chunk size and overlap",
            "",
            "| chunk tokens | overlap | NATO chunks | NATO rank 1 | NATO top 3 | NATO MRR "
            "| msmarco-5k hybrid nDCG@10 |",
            "|---|---|---|---|---|---|---|",
            *sweep_table(settings),
        ]
    text = "\n".join(parts) + "\n"
    print(text)
    print(f"bench.quality took {time.perf_counter() - began:.0f} s", file=sys.stderr)
    if args.write:
        write_between_markers(args.write, text)


BEGIN = "<!-- BEGIN generated by bench/quality.py: do not edit by hand -->"
END = "<!-- END generated by bench/quality.py -->"


def write_between_markers(path: Path, text: str) -> None:
    """Replace the generated part of ``path`` (between the markers), keeping the prose."""
    old = path.read_text("utf-8") if path.exists() else f"{BEGIN}\n{END}\n"
    head, _, rest = old.partition(BEGIN)
    _, _, tail = rest.partition(END)
    path.write_text(f"{head}{BEGIN}\n\n{text}\n{END}{tail}", "utf-8")


if __name__ == "__main__":
    main()
