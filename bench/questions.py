"""Labelled questions about a corpus: rank of the evidence, highlight hits, abstention.

    .venv/bin/python -m bench.questions [--corpus corpus] [--questions eval/nato]

``questions.jsonl`` lines are ``{"question", "evidence"}``: the passage that answers must
contain ``evidence``. ``offtopic.jsonl`` lines are ``{"question"}``: these should abstain.
Builds the index with the real model into a temporary folder, then asks every question in
each retrieval mode through the Engine (the code path the API uses).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

from qa.assemble import spec_from_settings
from qa.builder import build_index
from qa.engine import Engine
from qa.search import FusionConfig
from qa.settings import Settings


def _norm(text: str) -> str:
    return " ".join(text.replace("’", "'").replace("“", '"').replace("”", '"').split()).lower()


def _value(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def evidence_rank(passages: list[Any], evidence: str) -> int | None:
    """Rank of the first passage (API dicts or Passage models) containing ``evidence``."""
    wanted = _norm(evidence)
    for p in passages:
        text = p["text"] if isinstance(p, dict) else p.text
        if wanted in _norm(text):
            return int(p["rank"] if isinstance(p, dict) else p.rank)
    return None


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line.strip()]


def evaluate(
    engine: Engine, questions: list[dict[str, Any]], offtopic: list[dict[str, Any]], top_k: int = 10
) -> dict[str, Any]:
    ranks: list[int | None] = []
    highlight_hits = 0
    abstained_on_topic: list[str] = []
    failures: list[dict[str, Any]] = []
    latencies: list[float] = []
    for item in questions:
        result = engine.ask(item["question"], top_k)
        latencies.append(result.timings_ms["total"])
        evidence = _norm(item["evidence"])
        rank = next((p.rank for p in result.passages if evidence in _norm(p.text)), None)
        ranks.append(rank)
        if result.passages:
            first = result.passages[0]
            doc = engine.data.document(first.citation.doc_id)
            assert doc is not None
            if evidence in _norm(doc.text[first.highlight.start : first.highlight.end]) or (
                _norm(doc.text[first.highlight.start : first.highlight.end]) in evidence
            ):
                highlight_hits += 1
        if result.abstained:
            abstained_on_topic.append(item["question"])
        if rank != 1:
            failures.append({"question": item["question"], "rank": rank})
    off_abstained = sum(engine.ask(item["question"], top_k).abstained for item in offtopic)
    n = len(questions)
    return {
        "questions": n,
        "rank1": sum(r == 1 for r in ranks) / n if n else None,
        "top3": sum(r is not None and r <= 3 for r in ranks) / n if n else None,
        "mrr": sum(1 / r for r in ranks if r) / n if n else None,
        "highlight_has_evidence": highlight_hits / n if n else None,
        "on_topic_abstained": len(abstained_on_topic),
        "offtopic": len(offtopic),
        "offtopic_abstained": off_abstained,
        "p50_ms": statistics.median(latencies) if latencies else None,
        "failures": failures,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", type=Path, default=Path("corpus"))
    parser.add_argument("--questions", type=Path, default=Path("eval/nato"))
    parser.add_argument("--modes", default="hybrid,dense,bm25")
    parser.add_argument("--chunk-tokens", type=int, default=None)
    parser.add_argument("--overlap", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        help="FusionConfig field=value, e.g. --set lexical_weight=0.2",
    )
    args = parser.parse_args()

    overrides: dict[str, Any] = {"corpus_dir": args.corpus}
    if args.chunk_tokens:
        overrides["chunk_tokens"] = args.chunk_tokens
    if args.overlap is not None:
        overrides["chunk_overlap_tokens"] = args.overlap
    questions = read_jsonl(args.questions / "questions.jsonl")
    offtopic = read_jsonl(args.questions / "offtopic.jsonl")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(index_dir=Path(tmp), **overrides)
        engine = Engine(settings)
        build_index(args.corpus, Path(tmp), engine.embedder, spec_from_settings(settings))
        engine.load()
        for mode in args.modes.split(","):
            extra = {k: _value(v) for k, v in (kv.split("=", 1) for kv in args.set)}
            engine.fusion = FusionConfig(mode=mode, **extra)  # type: ignore[arg-type]
            engine.load()
            results[mode] = evaluate(engine, questions, offtopic)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"corpus {args.corpus}, {len(questions)} questions, {len(offtopic)} off-topic")
    print(
        "| mode | rank-1 | top-3 | MRR | highlight has evidence | on-topic abstained "
        "| off-topic abstained |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode, r in results.items():
        print(
            f"| {mode} | {r['rank1']:.3f} | {r['top3']:.3f} | {r['mrr']:.3f} | "
            f"{r['highlight_has_evidence']:.3f} | {r['on_topic_abstained']}/{r['questions']} | "
            f"{r['offtopic_abstained']}/{r['offtopic']} |"
        )
    for mode, r in results.items():
        for f in r["failures"]:
            print(f"  {mode}: rank {f['rank']}: {f['question']}")


if __name__ == "__main__":
    main()
