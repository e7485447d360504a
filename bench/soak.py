"""Soak: `qa serve` under mixed load for a long time, with an index update every 30 s.

    .venv/bin/python -m bench.soak [--minutes 10] [--clients 4] [--update-every 30]

1. Copies the default corpus and generates ``--docs`` more documents (seeded) into a
   temporary folder; `qa serve` builds the index and serves it on a free port.
2. ``--clients`` threads send requests back to back, each a random mix: ``POST /v1/ask``
   (45 %), ``POST /v1/chat/completions`` (25 %, one in three streamed), ``GET /v1/documents``
   and ``GET /v1/documents/{id}`` (30 %). Any status other than 200, or a transport error,
   is a failed request.
3. ``--update-every`` seconds after the previous update ended, one document is edited (or
   a new one added) and an update is started through ``POST /v1/index/update``; the update
   must succeed and the new generation must answer.
4. The server's resident memory (VmRSS of its process) is sampled every 5 s. Memory is
   flat when the median of the last minute is within 10 % of the median of the first.

Exits 1 when a request failed, an update failed, or memory was not flat.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx

from bench.server import start_server
from bench.server import stop as stop_server
from bench.updates import make_corpus

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "soak-token"
QUESTIONS = [
    "why is NATO engaging the Indo-Pacific",
    "which summit will measure progress",
    "what does the Strategic Concept say about China",
    "which countries are partners of NATO in Asia",
    "what does the old railway connect",
    "when was the lighthouse rebuilt",
    "who does the harbour protect in winter",
    "how do I bake sourdough bread",
]


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for process {pid}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


class Load:
    """Counts and latencies per kind of request, shared by the client threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.failures: list[str] = []
        self.latency: dict[str, list[float]] = defaultdict(list)

    def record(self, kind: str, seconds: float, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.ok[kind] += 1
                self.latency[kind].append(seconds * 1000)
            else:
                self.failed[kind] += 1
                if len(self.failures) < 20:
                    self.failures.append(f"{kind}: {error}")


def one_request(
    client: httpx.Client, rng: random.Random, doc_ids: list[str]
) -> tuple[str, str | None]:
    roll = rng.random()
    question = rng.choice(QUESTIONS)
    if roll < 0.45:
        kind = "ask"
        resp = client.post("/v1/ask", json={"question": question, "top_k": rng.randint(1, 5)})
    elif roll < 0.70:
        stream = rng.random() < 1 / 3
        kind = "chat-stream" if stream else "chat"
        body = {
            "model": "qa",
            "messages": [{"role": "user", "content": question}],
            "stream": stream,
        }
        resp = client.post("/v1/chat/completions", json=body)
        if resp.status_code == 200 and stream and not resp.text.rstrip().endswith("[DONE]"):
            return kind, "stream did not end with [DONE]"
    elif roll < 0.85:
        kind = "documents"
        resp = client.get("/v1/documents")
        if resp.status_code == 200:
            doc_ids[:] = [d["doc_id"] for d in resp.json()]
    else:
        kind = "document"
        resp = client.get(f"/v1/documents/{rng.choice(doc_ids)}")
    if resp.status_code != 200:
        return kind, f"{resp.status_code} {resp.text[:200]}"
    return kind, None


def client_loop(url: str, seed: int, load: Load, stop: threading.Event) -> None:
    rng = random.Random(seed)
    doc_ids = ["nato-indo-pacific.txt"]
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            began = time.perf_counter()
            try:
                kind, error = one_request(client, rng, doc_ids)
            except httpx.HTTPError as exc:
                kind, error = "transport", f"{type(exc).__name__}: {exc}"
            load.record(kind, time.perf_counter() - began, error)


def update_loop(
    url: str, corpus: Path, every: float, stop: threading.Event, results: list[dict[str, Any]]
) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    n = 0
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.wait(every):
            n += 1
            # alternately edit a generated document and add a new one
            if n % 2:
                target = corpus / "doc-00003.md"
                target.write_text(f"# Edited {n}\n\nThe soak edit number {n} of this file.\n")
            else:
                (corpus / f"soak-{n:03d}.md").write_text(f"# Soak {n}\n\nAdded during the soak.\n")
            began = time.perf_counter()
            entry: dict[str, Any] = {"n": n}
            try:
                job = client.post("/v1/index/update", headers=auth).json()["job"]
                while job["state"] in ("queued", "running"):
                    time.sleep(0.2)
                    job = client.get(f"/v1/index/jobs/{job['id']}", headers=auth).json()["job"]
                entry.update(state=job["state"], error=job["error"])
                generation = (job.get("report") or {}).get("generation")
                entry["generation"] = generation
                # the server switches to the new generation (reload or on_success)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    if client.get("/v1/index").json()["generation"] == generation:
                        break
                    time.sleep(0.2)
                else:
                    entry.update(state="failed", error=f"generation {generation} not served")
            except (httpx.HTTPError, KeyError, ValueError) as exc:
                entry.update(state="failed", error=f"{type(exc).__name__}: {exc}")
            entry["seconds"] = round(time.perf_counter() - began, 2)
            results.append(entry)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--update-every", type=float, default=30.0)
    parser.add_argument(
        "--docs", type=int, default=200, help="generated documents beside the article"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON only")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="qa-soak-"))
    corpus = work / "corpus"
    shutil.copytree(ROOT / "corpus", corpus)
    make_corpus(corpus, args.docs)
    env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")}
    env |= {
        "QA_CORPUS_DIR": str(corpus),
        "QA_INDEX_DIR": str(work / "index"),
        "QA_CACHE_DIR": str(ROOT / ".qa-cache"),
        "QA_ADMIN_TOKEN": TOKEN,
        "QA_RELOAD_INTERVAL": "1",
        "QA_LOG_FORMAT": "json",
    }
    try:
        url, server = start_server(env, work, cwd=ROOT, timeout=600, poll=0.5)
    except RuntimeError as exc:
        raise SystemExit(str(exc)) from None
    try:
        load = Load()
        updates: list[dict[str, Any]] = []
        rss: list[tuple[float, int]] = []
        stop = threading.Event()
        threads = [
            threading.Thread(target=client_loop, args=(url, seed, load, stop), daemon=True)
            for seed in range(args.clients)
        ]
        threads.append(
            threading.Thread(
                target=update_loop,
                args=(url, corpus, args.update_every, stop, updates),
                daemon=True,
            )
        )
        began = time.monotonic()
        for t in threads:
            t.start()
        duration = args.minutes * 60
        while (elapsed := time.monotonic() - began) < duration:
            rss.append((elapsed, rss_kib(server.pid)))
            if not args.json:
                done = sum(load.ok.values())
                print(
                    f"{elapsed:6.0f} s  {done} ok  {sum(load.failed.values())} failed  "
                    f"rss {rss[-1][1] / 1024:.0f} MiB  updates {len(updates)}",
                    flush=True,
                )
            time.sleep(5)
        stop.set()
        for t in threads:
            t.join(120)
        elapsed = time.monotonic() - began
        metrics = httpx.get(f"{url}/metrics").text
    finally:
        stop_server(server, timeout=30)

    first = [kib for t, kib in rss if t < 60]
    last = [kib for t, kib in rss if t >= elapsed - 60]
    first_mib, last_mib = statistics.median(first) / 1024, statistics.median(last) / 1024
    growth = last_mib / first_mib - 1
    failed_updates = [u for u in updates if u.get("state") != "succeeded"]
    requests = sum(load.ok.values()) + sum(load.failed.values())
    summary: dict[str, Any] = {
        "minutes": round(elapsed / 60, 2),
        "clients": args.clients,
        "documents": args.docs + 1,
        "requests": requests,
        "failed_requests": sum(load.failed.values()),
        "requests_per_second": round(requests / elapsed, 1),
        "by_kind": {
            kind: {
                "ok": load.ok[kind],
                "failed": load.failed[kind],
                "p50_ms": round(statistics.median(load.latency[kind]), 1)
                if load.latency[kind]
                else None,
                "p95_ms": round(percentile(load.latency[kind], 0.95), 1)
                if load.latency[kind]
                else None,
            }
            for kind in sorted(set(load.ok) | set(load.failed))
        },
        "updates": len(updates),
        "failed_updates": len(failed_updates),
        "update_seconds_p50": round(statistics.median(u["seconds"] for u in updates), 2)
        if updates
        else None,
        "rss_first_minute_mib": round(first_mib, 1),
        "rss_last_minute_mib": round(last_mib, 1),
        "rss_growth_percent": round(growth * 100, 1),
        "rss_max_mib": round(max(k for _, k in rss) / 1024, 1),
        "failures": load.failures + [json.dumps(u) for u in failed_updates],
        "metrics": {
            line.split(" ")[0]: line.split(" ")[1]
            for line in metrics.splitlines()
            if line.startswith(
                ("qa_index_generation ", "qa_updates_total{", "qa_update_failures_total ")
            )
        },
    }
    print(json.dumps(summary, indent=2))
    ok = summary["failed_requests"] == 0 and not failed_updates and abs(growth) <= 0.10
    if elapsed < 600 and args.minutes >= 10:
        ok = False
    print("PASS" if ok else "FAIL", file=sys.stderr)
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
