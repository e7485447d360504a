"""Requests/s, p50 and p99 of /v1/ask under concurrent clients, with 1 and 2 server workers.

    .venv/bin/python -m bench.load [--workers 1 2] [--clients 1 4 16] [--seconds 20] [--json]

Builds the index of a copy of the default corpus once (`qa index build`), starts a real
`qa serve --workers W --no-build` on a free port for each worker count, and then, for each
number of clients and each of those servers in turn (interleaved, so that the drifting
load of a shared machine falls on both alike), runs locust as a library: that many users
(FastHttpUser, one keep-alive connection each), no wait between requests (each client
sends its next question as soon as the answer is in), cycling through the labelled
questions of eval/nato. After a warm-up the counters are reset and the next ``--seconds``
are measured: requests/s (requests answered / seconds), p50 and p99 of the response time
as locust records it (whole milliseconds below 100 ms, rounded to 2 significant digits
above), failed requests (any status but 200 is a failure). Locust runs in this process,
on the same machine as the server: its own CPU use is printed beside each row
(``client cpu``), with the load average. The resident memory of `qa serve` and of each
worker is read (psutil) once it is ready.
"""

from gevent import monkey

monkey.patch_all()  # locust's own import does this too; first, before ssl is imported

import argparse  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from locust import FastHttpUser, constant, task  # noqa: E402
from locust.env import Environment  # noqa: E402

from bench.server import start_server, stop  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ROOT / "eval" / "nato" / "questions.jsonl"


def questions() -> list[str]:
    lines = QUESTIONS.read_text("utf-8").splitlines()
    return [json.loads(line)["question"] for line in lines if line.strip()]


def measure(
    url: str, asked: list[str], clients: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """Run ``clients`` locust users against ``url`` for ``warmup`` + ``seconds`` seconds
    and return the figures of the last ``seconds``."""
    cycle = itertools.cycle(asked)

    class Asker(FastHttpUser):
        host = url
        wait_time = constant(0)
        network_timeout = 120.0
        connection_timeout = 120.0

        @task
        def ask(self) -> None:
            with self.client.post(
                "/v1/ask", json={"question": next(cycle)}, catch_response=True
            ) as resp:
                if resp.status_code != 200:
                    resp.failure(f"{resp.status_code}: {(resp.text or '')[:200]}")

    env = Environment(user_classes=[Asker])
    runner = env.create_local_runner()
    runner.start(clients, spawn_rate=clients)
    gevent.sleep(warmup)
    env.stats.reset_all()
    cpu0, began = time.process_time(), time.perf_counter()
    load0 = os.getloadavg()[0]
    gevent.sleep(seconds)
    elapsed = time.perf_counter() - began
    cpu = time.process_time() - cpu0
    total = env.stats.total
    row = {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "requests": total.num_requests,
        "failed": total.num_failures,
        "rps": round(total.num_requests / elapsed, 1),
        "p50_ms": total.get_response_time_percentile(0.5),
        "p99_ms": total.get_response_time_percentile(0.99),
        "mean_ms": round(total.avg_response_time, 1),
        "client_cpu_pct": round(100 * cpu / elapsed),
        "load_avg_1m": round(load0, 1),
        "errors": [f"{e.occurrences}x {e.error}" for e in env.stats.errors.values()][:3],
    }
    runner.quit()
    return row


def server_rss_mb(pid: int) -> dict[str, float]:
    """Resident memory (MB) of ``qa serve`` (pid) and of each worker process it spawned."""
    import psutil  # a dependency of locust

    proc = psutil.Process(pid)
    rss = {"serve": round(proc.memory_info().rss / 2**20)}

    def is_worker(child: psutil.Process) -> bool:
        try:  # a child that has just exited (a zombie) is no worker
            return "spawn_main" in " ".join(child.cmdline())
        except psutil.Error:
            return False

    workers = [c for c in proc.children() if is_worker(c)]
    for i, child in enumerate(workers, 1):
        rss[f"worker{i}"] = round(child.memory_info().rss / 2**20)
    rss["total"] = sum(rss.values())
    return rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured per row")
    parser.add_argument("--warmup", type=float, default=3.0, help="seconds before each row")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    asked = questions()
    rows: list[dict[str, Any]] = []
    memory: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="qa-load-") as tmp:
        root = Path(tmp)
        shutil.copytree(ROOT / "corpus", root / "corpus")
        env = {k: v for k, v in os.environ.items() if not k.startswith("QA_")}
        env.update(QA_CORPUS_DIR=str(root / "corpus"), QA_INDEX_DIR=str(root / "index"))
        subprocess.run(
            [sys.executable, "-m", "qa", "index", "build"],
            env=env,
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
        # every server first, then the rows interleaved (1 worker, 2 workers, for each
        # number of clients): a shared machine's load drifts, and this spreads it evenly
        servers: dict[int, tuple[str, Any]] = {}
        try:
            for workers in args.workers:
                servers[workers] = start_server(
                    env, root, "--no-build", "--workers", str(workers), cwd=ROOT, timeout=600
                )
                memory[workers] = server_rss_mb(servers[workers][1].pid)
            for clients in args.clients:
                for workers, (url, _) in servers.items():
                    row = {
                        "workers": workers,
                        **measure(url, asked, clients, args.seconds, args.warmup),
                    }
                    rows.append(row)
                    if not args.json:
                        print(json.dumps(row), file=sys.stderr, flush=True)
        finally:
            for _, proc in servers.values():
                stop(proc)
    if args.json:
        print(json.dumps({"cpus": os.cpu_count(), "rows": rows, "rss_mb": memory}))
        return
    print(f"{os.cpu_count()} CPUs; {len(asked)} questions cycled; {args.seconds:g} s per row")
    print("| workers | clients | requests/s | p50 ms | p99 ms | failed | client cpu | load avg |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['workers']} | {r['clients']} | {r['rps']} | {r['p50_ms']:g} | {r['p99_ms']:g} "
            f"| {r['failed']} of {r['requests']} | {r['client_cpu_pct']} % | {r['load_avg_1m']} |"
        )
    for workers, rss in memory.items():
        print(f"RSS with {workers} worker(s), ready, before load (MB): {json.dumps(rss)}")


if __name__ == "__main__":
    main()
