"""Bounded work per file: limits checked before reading, and a reader process that can be
stopped.

Every corpus file is read by :func:`extract_file`, which refuses, before anything is
inflated or parsed, a file over ``QA_MAX_FILE_MB`` (stat), a .docx whose zip directory
promises more than ``QA_MAX_UNZIPPED_MB`` or a member compressed more than
``QA_MAX_ZIP_RATIO``:1, a PDF of more than ``QA_MAX_PDF_PAGES`` pages and HTML nested deeper
than ``QA_MAX_HTML_DEPTH``; after reading, more than ``QA_MAX_TEXT_CHARS`` characters of
text. :class:`Extractor` runs it in one long-lived worker process with an address-space cap
(``QA_EXTRACT_MEMORY_MB``) and a time limit per file (``QA_EXTRACT_TIMEOUT``): a file that
exceeds either is skipped with the reason, the worker is replaced, and the build goes on.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import select
import signal
import stat
import subprocess
import sys
import threading
import time
import zipfile
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qa.corpus_files import OUTSIDE, CorpusFile, inside
from qa.documents import Document
from qa.errors import QAError
from qa.loaders import SkipFile, Skipped, load_file

if TYPE_CHECKING:
    from qa.settings import Settings

log = logging.getLogger(__name__)

MB = 1024 * 1024
RATIO_MIN_MEMBER = MB  # members smaller than this may have any ratio (they cost nothing)
PIPE_BUDGET = 32 * 1024  # bytes of requests in flight (a pipe buffers 64 KiB)
RECYCLE_BYTES = 256 * MB  # a worker left holding more than this is replaced
STARTUP_S = 60.0  # how long a new reader process may take to import its modules


@dataclass(frozen=True)
class CorpusLimits:
    """What one file may cost. Sizes in bytes, time in seconds."""

    max_file_bytes: int = 50 * MB
    max_text_chars: int = 10_000_000
    max_unzipped_bytes: int = 200 * MB
    max_zip_ratio: float = 100.0
    max_pdf_pages: int = 2000
    max_html_depth: int = 512
    timeout_s: float = 60.0
    memory_bytes: int = 2048 * MB
    follow_external_symlinks: bool = False

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> CorpusLimits:
        """The limits of ``settings`` (default: the process-wide settings)."""
        if settings is None:
            from qa.settings import get_settings

            settings = get_settings()
        return cls(
            max_file_bytes=int(settings.max_file_mb * MB),
            max_text_chars=settings.max_text_chars,
            max_unzipped_bytes=int(settings.max_unzipped_mb * MB),
            max_zip_ratio=settings.max_zip_ratio,
            max_pdf_pages=settings.max_pdf_pages,
            max_html_depth=settings.max_html_depth,
            timeout_s=settings.extract_timeout,
            memory_bytes=settings.extract_memory_mb * MB,
            follow_external_symlinks=settings.follow_external_symlinks,
        )


def _mb(n: float) -> str:
    return f"{n / MB:,.1f} MB"


# ----------------------------------------------------------------------- checks before reading


def check_zip(path: Path, limits: CorpusLimits) -> None:
    """Refuse a zip-based file (.docx) from its central directory alone, before any member
    is inflated. Raises SkipFile naming the limit; a file that is not a zip passes (its
    reader reports it as broken)."""
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return
    total = sum(m.file_size for m in members)
    if total > limits.max_unzipped_bytes:
        raise SkipFile(
            f"zip archive would inflate to {_mb(total)}, over the "
            f"{_mb(limits.max_unzipped_bytes)} limit (QA_MAX_UNZIPPED_MB); not inflated"
        )
    for m in members:
        if m.file_size < RATIO_MIN_MEMBER:
            continue
        ratio = m.file_size / max(m.compress_size, 1)
        if ratio > limits.max_zip_ratio:
            raise SkipFile(
                f"zip member {m.filename} would inflate {m.file_size:,} bytes from "
                f"{m.compress_size:,} (ratio {ratio:,.0f}:1), over the "
                f"{limits.max_zip_ratio:g}:1 limit (QA_MAX_ZIP_RATIO); not inflated"
            )


_HTML_TOKEN = re.compile(rb"<!--|<(/?)([A-Za-z][^\s/>]*)([^>]*)>")
_HTML_RAW = {b"script", b"style", b"textarea", b"title", b"xmp", b"plaintext"}
_HTML_VOID = {
    b"area", b"base", b"br", b"col", b"embed", b"hr", b"img", b"input", b"link", b"meta",
    b"param", b"source", b"track", b"wbr", b"basefont", b"bgsound", b"frame", b"keygen",
    b"spacer", b"command", b"menuitem",
}  # fmt: skip
_RAW_CLOSE: dict[bytes, re.Pattern[bytes]] = {}


def html_depth(raw: bytes, limit: int) -> int:
    """How deep the elements of ``raw`` nest as Python's html.parser and BeautifulSoup build
    them (an unclosed ``<p>`` nests what follows), scanning tags only; stops as soon as
    ``limit`` is passed and returns the depth reached. Linear in the size of ``raw``."""
    stack: list[bytes] = []
    open_count: dict[bytes, int] = {}
    deepest = 0
    pos = 0
    while True:
        m = _HTML_TOKEN.search(raw, pos)
        if m is None:
            return deepest
        pos = m.end()
        if m.group(0) == b"<!--":
            end = raw.find(b"-->", pos)
            if end < 0:
                return deepest
            pos = end + 3
            continue
        closing, name, rest = m.group(1), m.group(2).lower(), m.group(3)
        if closing:
            if open_count.get(name):
                while stack:
                    top = stack.pop()
                    open_count[top] -= 1
                    if top == name:
                        break
            continue
        if name in _HTML_VOID or rest.endswith(b"/"):
            continue
        if name in _HTML_RAW:  # text up to the closing tag, not markup
            close = _RAW_CLOSE.get(name)
            if close is None:
                close = _RAW_CLOSE[name] = re.compile(b"</" + re.escape(name), re.IGNORECASE)
            found = close.search(raw, pos)
            if found is None:
                return max(deepest, len(stack) + 1)
            pos = found.start()
        stack.append(name)
        open_count[name] = open_count.get(name, 0) + 1
        deepest = max(deepest, len(stack))
        if deepest > limit:
            return deepest


def check_html(path: Path, limits: CorpusLimits) -> None:
    """Refuse HTML nested deeper than ``limits.max_html_depth`` before it is parsed."""
    depth = html_depth(path.read_bytes(), limits.max_html_depth)
    if depth > limits.max_html_depth:
        raise SkipFile(
            f"HTML nests deeper than {limits.max_html_depth} elements "
            f"(QA_MAX_HTML_DEPTH); not parsed"
        )


def check_pdf(path: Path, limits: CorpusLimits) -> None:
    """Refuse a PDF with more than ``limits.max_pdf_pages`` pages (the page tree's count,
    which is also how many pages the reader extracts) before any text is extracted."""
    from pypdf import PdfReader

    try:
        pages = len(PdfReader(str(path)).pages)
    except Exception:  # a broken PDF: its reader reports it
        return
    if pages > limits.max_pdf_pages:
        raise SkipFile(
            f"PDF has {pages:,} pages, over the {limits.max_pdf_pages:,} limit "
            f"(QA_MAX_PDF_PAGES); not read"
        )


_CHECKS = {".docx": check_zip, ".html": check_html, ".htm": check_html, ".pdf": check_pdf}


class Extracted(list[Document]):
    """A file's documents, with what inside the file could not be read (BEIR rows, DOCX
    parts) in ``problems``; load_corpus reports those."""

    def __init__(self, documents: Sequence[Document] = (), problems: Sequence[Skipped] = ()):
        super().__init__(documents)
        self.problems = list(problems)


def extract_file(path: Path, rel: str, root: Path, limits: CorpusLimits) -> Extracted:
    """The documents of one corpus file, in this process, with every limit but time and
    memory checked. ``path`` is the resolved file, ``rel`` its path in the corpus, ``root``
    the resolved corpus folder. Raises SkipFile with the reason."""
    real = Path(os.path.realpath(path))
    if not limits.follow_external_symlinks and not inside(real, root):
        raise SkipFile(OUTSIDE)  # a folder was swapped for a link since the walk
    st = os.stat(real)
    if not stat.S_ISREG(st.st_mode):
        raise SkipFile("not a regular file (a FIFO, socket or device); not read")
    if st.st_size > limits.max_file_bytes:
        raise SkipFile(
            f"file is {_mb(st.st_size)}, over the {_mb(limits.max_file_bytes)} limit "
            f"(QA_MAX_FILE_MB); not read"
        )
    check = _CHECKS.get(Path(rel).suffix.lower())  # the suffix load_file dispatches on
    if check is not None:
        check(real, limits)
    documents: list[Document] = []
    chars = 0
    problems: list[Skipped] = []
    for doc in load_file(real, rel, problems):
        chars += len(doc.text)
        if chars > limits.max_text_chars:
            raise SkipFile(
                f"extracted text is over the {limits.max_text_chars:,} character limit "
                f"(QA_MAX_TEXT_CHARS)"
            )
        documents.append(doc)
    return Extracted(documents, problems)


# ------------------------------------------------------------------------- the reader process


def _timeout_reason(limits: CorpusLimits) -> str:
    return (
        f"reading took longer than {limits.timeout_s:g} s (QA_EXTRACT_TIMEOUT); "
        "the reader was stopped"
    )


def _memory_reason(limits: CorpusLimits) -> str:
    return (
        f"reading needed more than {limits.memory_bytes // MB:,} MB of memory "
        "(QA_EXTRACT_MEMORY_MB); the reader was stopped"
    )


class _Replies:
    """Length-prefixed messages from the worker's pipe, read in large chunks (one system
    call often brings several replies)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buffer = bytearray()

    def _fill(self, n: int, deadline: float) -> None:
        """At least ``n`` bytes buffered; TimeoutError at ``deadline``, EOFError if the
        pipe closes."""
        while len(self.buffer) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                raise TimeoutError
            data = os.read(self.fd, 1 << 20)
            if not data:
                raise EOFError
            self.buffer += data

    def next(self, deadline: float) -> bytes:
        self._fill(8, deadline)
        end = 8 + int.from_bytes(self.buffer[:8], "big")
        self._fill(end, deadline)
        body = bytes(self.buffer[8:end])
        del self.buffer[:end]
        return body


_GONE = "the reader process ended before it could read the file"
_WORKER_CODE = "from qa.extraction import _worker_main; _worker_main()"


class Extractor:
    """Reads corpus files in one worker process that is reused across files and replaced
    after a file that exceeded the time or memory limit (or crashed it, or left it holding
    over 256 MB). Thread-safe: one file at a time. ``preload`` names modules the worker
    imports first (tests use it to install a reader that hangs). Raises QAError when the
    worker cannot start at all."""

    def __init__(self, *, preload: Sequence[str] = ()) -> None:
        self.preload = tuple(preload)
        self.starts = 0  # worker processes started, for tests and benchmarks
        self._proc: subprocess.Popen[bytes] | None = None
        self._replies = _Replies(-1)
        self._memory = 0
        self._lock = threading.Lock()

    def _worker(self, memory_bytes: int) -> subprocess.Popen[bytes]:
        proc = self._proc
        if proc is not None and proc.poll() is None and self._memory == memory_bytes:
            return proc
        self._stop()
        package_parent = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (package_parent, env.get("PYTHONPATH", "")) if p
        )
        self._proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, str(memory_bytes), *self.preload],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
            env=env,
        )
        self._memory = memory_bytes
        self.starts += 1
        # the time limit of a file starts once the worker is up (imports can be slow)
        assert self._proc.stdout is not None
        self._replies = _Replies(self._proc.stdout.fileno())
        try:
            self._replies.next(time.monotonic() + STARTUP_S)
        except (TimeoutError, EOFError, OSError):
            self._stop()
            raise QAError(
                f"the process that reads corpus files did not start within {STARTUP_S:g} s "
                f"({sys.executable} -c {_WORKER_CODE!r}); see the errors above"
            ) from None
        return self._proc

    def _stop(self) -> int | None:
        """Kill the worker (if any) and return its exit status."""
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        code = proc.wait()
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()
        return code

    def close(self) -> None:
        """Stop the worker process."""
        with self._lock:
            self._stop()

    def extract(self, file: CorpusFile, root: Path, limits: CorpusLimits) -> list[Document]:
        """The documents of ``file`` (see :meth:`extract_many`); raises SkipFile."""
        ((_, result),) = self.extract_many([file], root, limits)
        if isinstance(result, SkipFile):
            raise result
        return result

    def extract_many(
        self, files: Sequence[CorpusFile], root: Path, limits: CorpusLimits
    ) -> list[tuple[CorpusFile, list[Document] | SkipFile]]:
        """Each file's documents (see :func:`extract_file`) or the SkipFile saying why not,
        in order. Each file is read in the worker within ``limits.timeout_s`` seconds and
        ``limits.memory_bytes`` of address space; a timeout or a crash of the reader skips
        that file only. Requests are pipelined (the worker never waits for the next file),
        and a file's time starts when the worker can start on it (the previous reply)."""
        results: list[tuple[CorpusFile, list[Document] | SkipFile]] = []
        pending: deque[tuple[CorpusFile, bytes]] = deque()
        lim = asdict(limits)
        for file in files:
            request = {"path": str(file.path), "rel": file.rel, "root": str(root), "limits": lim}
            line = json.dumps(request).encode("utf-8", "surrogateescape") + b"\n"
            pending.append((file, line))
        sent: deque[tuple[CorpusFile, bytes]] = deque()
        in_flight = 0  # bytes of the requests in ``sent``
        with self._lock:
            try:
                while pending or sent:
                    proc = self._worker(limits.memory_bytes)
                    assert proc.stdin is not None and proc.stdout is not None
                    # keep the requests in flight well under a pipe's buffer: the worker
                    # may be blocked writing a reply while we write
                    while pending and (not sent or in_flight + len(pending[0][1]) < PIPE_BUDGET):
                        item = pending.popleft()
                        try:
                            proc.stdin.write(item[1])
                        except OSError:  # the worker is gone; its reply says what it was on
                            if not sent:
                                self._stop()
                                results.append((item[0], SkipFile(_GONE)))
                            else:
                                pending.appendleft(item)
                            break
                        in_flight += len(item[1])
                        sent.append(item)
                    if not sent:
                        continue
                    file = sent[0][0]
                    results.append((file, self._reply(proc, file, limits)))
                    in_flight -= len(sent.popleft()[1])
                    if self._proc is None:  # the worker was stopped: send the rest again
                        pending.extendleft(reversed(sent))
                        sent.clear()
                        in_flight = 0
            finally:
                if sent:  # replies we will not read must not reach the next caller
                    self._stop()
        return results

    def _reply(
        self, proc: subprocess.Popen[bytes], file: CorpusFile, limits: CorpusLimits
    ) -> list[Document] | SkipFile:
        assert proc.stdout is not None
        deadline = time.monotonic() + limits.timeout_s
        try:
            body = self._replies.next(deadline)
        except TimeoutError:
            self._stop()
            log.warning("stopped the reader of %s after %g s", file.rel, limits.timeout_s)
            return SkipFile(_timeout_reason(limits))
        except (EOFError, OSError):
            code = self._stop()
            if code is not None and code < 0:
                how = f"killed by signal {signal.Signals(-code).name}"
            else:
                how = f"exit status {code}"
            return SkipFile(f"the reader process ended while reading the file ({how})")
        reply: dict[str, Any] = json.loads(body.decode("utf-8", "surrogatepass"))
        if reply.get("restart"):
            self._stop()
        if not reply["ok"]:
            return SkipFile(str(reply["reason"]))
        return Extracted(
            [
                Document(
                    doc_id=d["doc_id"],
                    path=d["path"],
                    title=d["title"],
                    text=d["text"],
                    page_starts=tuple(d["page_starts"]),
                    blocks=tuple((int(a), int(b), int(c)) for a, b, c in d.get("blocks", ())),
                    sha256=d["sha256"],
                )
                for d in reply["documents"]
            ],
            [Skipped(str(p), str(r)) for p, r in reply.get("problems", ())],
        )


_shared: Extractor | None = None
_shared_lock = threading.Lock()


def shared_extractor() -> Extractor:
    """The process-wide extractor (its worker starts on first use, stops at exit)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = Extractor()
            atexit.register(_shared.close)
        return _shared


def _resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - no /proc
        return 0


def _set_memory_cap(memory_bytes: int) -> None:
    try:
        import resource
    except ImportError:  # pragma: no cover - not POSIX: no cap
        return
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    try:
        with open("/proc/self/statm") as fh:  # pages of address space in use now
            in_use = int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        in_use = 0
    cap = max(memory_bytes, in_use + 64 * MB)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def _worker_main() -> None:  # pragma: no cover - runs in the worker process
    """The worker: one JSON request a line on stdin, one length-prefixed JSON reply each on
    the original stdout (anything a library prints goes to stderr)."""
    import importlib

    channel = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the parent, which stops us
    memory_bytes = int(sys.argv[1])
    for module in sys.argv[2:]:
        importlib.import_module(module)
    _set_memory_cap(memory_bytes)
    ready = b'{"ready": true}'
    channel.write(len(ready).to_bytes(8, "big") + ready)
    for line in sys.stdin.buffer:
        request = json.loads(line.decode("utf-8", "surrogateescape"))
        limits = CorpusLimits(**request["limits"])
        # if the parent dies while a file hangs, the kernel still ends this process
        signal.alarm(int(limits.timeout_s) + 5)
        reply: dict[str, Any]
        try:
            docs = extract_file(
                Path(request["path"]), request["rel"], Path(request["root"]), limits
            )
            reply = {
                "ok": True,
                "documents": [
                    {
                        "doc_id": d.doc_id,
                        "path": d.path,
                        "title": d.title,
                        "text": d.text,
                        "page_starts": list(d.page_starts),
                        "blocks": [list(b) for b in d.blocks],
                        "sha256": d.sha256,
                    }
                    for d in docs
                ],
                "problems": [[p.path, p.reason] for p in docs.problems],
            }
        except SkipFile as exc:
            reply = {"ok": False, "reason": str(exc)}
        except MemoryError:
            reply = {"ok": False, "reason": _memory_reason(limits), "restart": True}
        except RecursionError:
            reply = {"ok": False, "reason": "the file nests too deeply to read", "restart": True}
        except Exception as exc:  # a broken file must never stop the build
            reply = {"ok": False, "reason": f"{type(exc).__name__}: {exc}"}
        signal.alarm(0)
        if _resident_bytes() > RECYCLE_BYTES:  # memory a big file left behind goes too
            reply["restart"] = True
        data = json.dumps(reply, ensure_ascii=False).encode("utf-8", "surrogatepass")
        channel.write(len(data).to_bytes(8, "big") + data)


__all__ = [
    "CorpusLimits",
    "Extracted",
    "Extractor",
    "check_html",
    "check_pdf",
    "check_zip",
    "extract_file",
    "html_depth",
    "shared_extractor",
]
