"""Keep the index in step with the corpus: background update jobs and a folder watcher."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qa.builder import BuildReport, build_index
from qa.embedder import Embedder
from qa.errors import NotFound, QAError
from qa.extraction import CorpusLimits
from qa.index import IndexSpec

if TYPE_CHECKING:
    from qa.index import LocalIndexStore
    from qa.milvus_store import MilvusStore
from qa.metrics import RELOAD_FAILURES, observe_update

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def report_dict(report: BuildReport) -> dict[str, Any]:
    data = asdict(report)
    data["path"] = str(report.path)
    data["seconds"] = round(report.seconds, 3)
    return data


@dataclass
class Job:
    id: str
    state: str = "queued"  # queued | running | succeeded | failed
    created_at: str = field(default_factory=_now)
    finished_at: str | None = None
    report: dict[str, Any] | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Updater:
    """Runs one index update at a time in a background thread and remembers its jobs
    (the last ``jobs_kept`` finished ones, and the one running)."""

    def __init__(
        self,
        corpus_dir: Path,
        index_dir: Path | LocalIndexStore | MilvusStore,
        embedder: Embedder,
        spec: IndexSpec,
        keep_generations: int = 2,
        on_success: Callable[[BuildReport], object] | None = None,
        jobs_kept: int = 100,
        limits: CorpusLimits | None = None,
    ) -> None:
        self.corpus_dir = corpus_dir
        self.index_dir = index_dir
        self.embedder = embedder
        self.spec = spec
        self.keep_generations = keep_generations
        self.on_success = on_success
        self.jobs_kept = jobs_kept
        self.limits = limits
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        self._running: Job | None = None
        self._rerun = False

    def run(self) -> BuildReport:
        """One update, in the calling thread (raises IndexBusy if another holds the lock)."""
        report = build_index(
            self.corpus_dir,
            self.index_dir,
            self.embedder,
            self.spec,
            keep_generations=self.keep_generations,
            skip_if_unchanged=True,
            limits=self.limits,
        )
        if self.on_success is not None:
            try:
                self.on_success(report)
            except Exception:  # the update itself succeeded; the server keeps polling
                log.exception("generation %s written but not loaded yet", report.generation)
        return report

    def start(self) -> Job:
        """Start an update in the background, or return the one already running."""
        with self._lock:
            if self._running is not None:
                return self._running
            job = Job(id=uuid.uuid4().hex[:12])
            self._jobs[job.id] = job
            self._running = job
        threading.Thread(target=self._work, args=(job,), name="qa-update", daemon=True).start()
        return job

    def request(self) -> None:
        """Ask for an update: start one, or run one more after the current one ends
        (edits made during an update are not lost)."""
        with self._lock:
            if self._running is not None:
                self._rerun = True
                return
        self.start()

    def _work(self, job: Job) -> None:
        job.state = "running"
        began = time.perf_counter()
        report: BuildReport | None = None
        try:
            report = self.run()
            job.report = report_dict(report)
            job.state = "succeeded"
        except QAError as exc:
            job.state, job.error = "failed", exc.message
            log.error("index update %s failed: %s", job.id, exc.message)
        except Exception as exc:
            job.state, job.error = "failed", f"{type(exc).__name__}: {exc}"
            log.exception("index update %s failed", job.id)
        finally:
            job.finished_at = _now()
            observe_update(
                time.perf_counter() - began,
                failed=report is None,
                chunks=report.chunks if report else 0,
                wrote=report is not None and not report.up_to_date,
            )
            with self._lock:
                self._running = None
                while len(self._jobs) > self.jobs_kept:  # oldest first (insertion order)
                    del self._jobs[next(iter(self._jobs))]
                again, self._rerun = self._rerun, False
            if again:
                self.start()

    def job(self, job_id: str) -> Job:
        found = self._jobs.get(job_id)
        if found is None:
            raise NotFound(f"no update job {job_id!r}")
        return found

    @property
    def running(self) -> Job | None:
        return self._running

    @property
    def last(self) -> Job | None:
        return next(reversed(self._jobs.values()), None) if self._jobs else None


def watch_changes(corpus_dir: Path, debounce_ms: int, stop: threading.Event) -> Iterator[int]:
    """Yield the number of changed paths each time edits to the corpus settle."""
    from watchfiles import watch

    for changes in watch(
        corpus_dir, debounce=debounce_ms, step=100, stop_event=stop, yield_on_timeout=False
    ):
        relevant = [p for _, p in changes if not Path(p).name.startswith(".")]
        if relevant:
            yield len(relevant)


def start_watcher(updater: Updater, debounce_ms: int, stop: threading.Event) -> threading.Thread:
    """A daemon thread that requests an update whenever the corpus changes."""

    def run() -> None:
        for n in watch_changes(updater.corpus_dir, debounce_ms, stop):
            log.info("%d change(s) in %s; updating the index", n, updater.corpus_dir)
            updater.request()

    thread = threading.Thread(target=run, name="qa-watch", daemon=True)
    thread.start()
    return thread


def start_reloader(
    check: Callable[[], bool], interval: float, stop: threading.Event
) -> threading.Thread:
    """A daemon thread that calls ``check`` (load a new generation if there is one)."""

    def run() -> None:
        while not stop.wait(interval):
            try:
                if check():
                    log.info("switched to a new index generation")
            except QAError as exc:
                RELOAD_FAILURES.inc()
                log.error("new index generation not loaded: %s", exc.message)
            except Exception:
                RELOAD_FAILURES.inc()
                log.exception("new index generation not loaded")

    thread = threading.Thread(target=run, name="qa-reload", daemon=True)
    thread.start()
    return thread


__all__ = [
    "Job",
    "Updater",
    "report_dict",
    "start_reloader",
    "start_watcher",
    "watch_changes",
]
