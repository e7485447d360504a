"""Incremental update cost and zero-downtime swaps, on a generated corpus.

    .venv/bin/python -m bench.updates [--docs 2000] [--swaps 10]

1. Generates ``--docs`` documents (seeded, reproducible) into a temporary corpus.
2. Times a full build (nothing reused), an update after changing one document, and an
   update of the unchanged corpus, all in one process with the model already loaded.
3. Starts `qa serve` on that corpus, sends queries continuously from two clients, and
   swaps the index ``--swaps`` times through the admin update endpoint, each time after
   editing one document. Reports failed requests and latency before and during swaps.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from qa.assemble import embedder_from_settings, spec_from_settings
from qa.builder import build_index
from qa.settings import Settings

TOPICS = [
    "river", "harbour", "glacier", "orchard", "railway", "library", "volcano", "market",
    "bridge", "forest", "satellite", "vineyard", "monastery", "lighthouse", "canal", "mine",
]  # fmt: skip
VERBS = ["supplies", "protects", "connects", "feeds", "shelters", "drains", "lights", "crosses"]
THINGS = [
    "the old town", "three villages", "the northern valley", "a fishing fleet", "the capital",
    "local farmers", "the university", "a salt works", "the border post", "two islands",
]  # fmt: skip


def make_corpus(root: Path, n: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        topic = rng.choice(TOPICS)
        name = f"{topic.title()} {i}"
        sentences = [
            f"The {topic} of {name} {rng.choice(VERBS)} {rng.choice(THINGS)}.",
            f"It was built in {1700 + rng.randrange(300)} and rebuilt after a storm.",
            f"Visitors say the {topic} {rng.choice(VERBS)} {rng.choice(THINGS)} in winter.",
        ]
        (root / f"doc-{i:05d}.md").write_text(f"# {name}\n\n{' '.join(sentences)}\n", "utf-8")


def timed_build(settings: Settings, embedder: Any, **kw: Any) -> tuple[float, Any]:
    began = time.perf_counter()
    report = build_index(
        Path(settings.corpus_dir), Path(settings.index_dir), embedder,
        spec_from_settings(settings), **kw,
    )  # fmt: skip
    return time.perf_counter() - began, report


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else 0.0


def load_test(settings: Settings, swaps: int) -> dict[str, Any]:
    from tests.e2e.conftest import qa_env, start_server, stop

    env = qa_env(
        Path(settings.corpus_dir), Path(settings.index_dir),
        QA_ADMIN_TOKEN="bench", QA_RELOAD_INTERVAL="0.5",
    )  # fmt: skip
    url, proc = start_server(env, "--no-build")
    auth = {"Authorization": "Bearer bench"}
    phase = {"name": "baseline"}
    lat: dict[str, list[float]] = {"baseline": [], "swapping": []}
    failures: list[str] = []
    generations: list[int] = []
    stop_flag = threading.Event()

    def client_loop(k: int) -> None:
        questions = [f"What does the {t} supply?" for t in TOPICS]
        with httpx.Client(base_url=url, timeout=60) as client:
            i = k
            while not stop_flag.is_set():
                began = time.perf_counter()
                try:
                    resp = client.post("/v1/ask", json={"question": questions[i % len(questions)]})
                    ms = (time.perf_counter() - began) * 1000
                    if resp.status_code == 200:
                        lat[phase["name"]].append(ms)
                        generations.append(resp.json()["index"]["generation"])
                    else:
                        failures.append(f"{resp.status_code}: {resp.text[:120]}")
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                i += 1

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(2)]
    try:
        for t in threads:
            t.start()
        time.sleep(10)
        phase["name"] = "swapping"
        swap_seconds: list[float] = []
        with httpx.Client(base_url=url, timeout=60) as admin:
            start_gen = admin.get("/v1/index").json()["generation"]
            for s in range(swaps):
                doc = Path(settings.corpus_dir) / f"doc-{s:05d}.md"
                doc.write_text(doc.read_text("utf-8") + f"\nEdited in swap {s}.\n", "utf-8")
                began = time.perf_counter()
                job = admin.post("/v1/index/update", headers=auth).json()["job"]
                while True:
                    state = admin.get(f"/v1/index/jobs/{job['id']}", headers=auth).json()["job"]
                    if state["state"] in ("succeeded", "failed"):
                        break
                    time.sleep(0.1)
                if state["state"] != "succeeded":
                    failures.append(f"update failed: {state['error']}")
                while admin.get("/v1/index").json()["generation"] < start_gen + s + 1:
                    time.sleep(0.05)
                swap_seconds.append(time.perf_counter() - began)
    finally:
        stop_flag.set()
        for t in threads:
            t.join(60)
        stop(proc)
    return {
        "swaps": swaps,
        "requests": len(lat["baseline"]) + len(lat["swapping"]) + len(failures),
        "failed_requests": len(failures),
        "failures_sample": failures[:5],
        "generations_seen": sorted(set(generations)),
        "baseline_p50_ms": round(statistics.median(lat["baseline"]), 2),
        "baseline_p95_ms": round(percentile(lat["baseline"], 0.95), 2),
        "during_swaps_p50_ms": round(statistics.median(lat["swapping"]), 2),
        "during_swaps_p95_ms": round(percentile(lat["swapping"], 0.95), 2),
        "during_swaps_max_ms": round(max(lat["swapping"]), 2),
        "update_to_swap_seconds_median": round(statistics.median(swap_seconds), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=int, default=2000)
    parser.add_argument("--swaps", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(corpus_dir=Path(tmp) / "corpus", index_dir=Path(tmp) / "index")
        make_corpus(Path(settings.corpus_dir), args.docs)
        embedder = embedder_from_settings(settings)
        embedder.embed(["warm up"])
        full_s, full = timed_build(settings, embedder, reuse=False)
        doc = Path(settings.corpus_dir) / f"doc-{args.docs // 2:05d}.md"
        doc.write_text(doc.read_text("utf-8") + "\nA new sentence about the harbour.\n", "utf-8")
        one_s, one = timed_build(settings, embedder, skip_if_unchanged=True)
        noop_s, noop = timed_build(settings, embedder, skip_if_unchanged=True)
        result: dict[str, Any] = {
            "documents": full.documents,
            "chunks": full.chunks,
            "full_build_seconds": round(full_s, 2),
            "full_build_chunks_per_second": round(full.chunks / full_s, 1),
            "update_one_changed_seconds": round(one_s, 2),
            "update_one_changed_embedded": one.embedded,
            "update_ratio_to_full": round(one_s / full_s, 4),
            "update_unchanged_seconds": round(noop_s, 2),
            "update_unchanged_embedded": noop.embedded,
        }
        print(json.dumps(result, indent=2), flush=True)
        result["load_test"] = load_test(settings, args.swaps)
        print(json.dumps(result["load_test"], indent=2))


if __name__ == "__main__":
    main()
