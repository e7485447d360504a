"""Peak memory of `qa index build` over hostile files, and what bounded reading costs.

    .venv/bin/python -m bench.hostile [--skip-build] [--skip-overhead] [--runs N]
                                      [--stop-at-mb MB]

1. Generates a corpus of hostile files beside the default article: a .docx whose
   word/document.xml inflates to 1 GB (a zip bomb of about 1 MB), a 100 MB one-line .txt,
   a 20 MB deeply nested .html, a 20 MB flat .html (about 15 million characters of
   text), a 5,000-page PDF, and symlinks out of the corpus (/etc/passwd, a file and a folder
   beside it), a broken and a looping link and a link inside it.
2. Runs `qa index build` on it (the bundled model) and then `qa index status`, each while
   sampling the resident memory of its whole process tree (the command and its reader
   process) every 20 ms from /proc; prints the peak, the time and every skipped file with
   its reason (and kills a command that passes ``--stop-at-mb``, as qa before these limits
   needed).
3. Times loading the default corpus and a generated 2,000-file corpus (bench.updates) with
   the reader process against reading each file in the build process (`extract_file`, the
   same checks without the process), medians of ``--runs``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from bench.updates import make_corpus
from qa.extraction import MB, CorpusLimits, Extractor, extract_file
from qa.loaders import SUFFIXES, load_corpus

ROOT = Path(__file__).resolve().parent.parent


def make_hostile_corpus(root: Path) -> Path:
    corpus = root / "corpus"
    outside = root / "outside"
    (outside / "folder").mkdir(parents=True)
    corpus.mkdir()
    (outside / "secret.md").write_text("# Secret\n\nNot for the index.\n", "utf-8")
    (outside / "folder" / "more.md").write_text("# More\n\nNot for the index.\n", "utf-8")
    shutil.copy(ROOT / "corpus" / "nato-indo-pacific.txt", corpus / "nato-indo-pacific.txt")

    with zipfile.ZipFile(corpus / "bomb.docx", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        with z.open("word/document.xml", "w", force_zip64=True) as member:
            block = b"\0" * MB
            for _ in range(1024):
                member.write(block)
    with (corpus / "one-line.txt").open("wb") as fh:
        for _ in range(100):
            fh.write(b"word " * (MB // 5))
    depth = 20 * MB // 11
    (corpus / "deep.html").write_bytes(b"<div>" * depth + b"x" + b"</div>" * depth)
    para = b"<p>" + b"plain words in a flat page " * 8 + b"</p>\n"
    (corpus / "flat.html").write_bytes(b"<html><body>" + para * (20 * MB // len(para)))

    from pypdf import PdfWriter

    writer = PdfWriter()
    for _ in range(5000):
        writer.add_blank_page(width=595, height=842)
    with (corpus / "many-pages.pdf").open("wb") as fh:
        writer.write(fh)

    os.symlink("/etc/passwd", corpus / "passwd.txt")
    os.symlink("../outside/secret.md", corpus / "secret.md")
    os.symlink(outside / "folder", corpus / "outside-folder")
    os.symlink("missing.md", corpus / "broken.md")
    os.symlink("loop-b.md", corpus / "loop-a.md")
    os.symlink("loop-a.md", corpus / "loop-b.md")
    os.symlink("nato-indo-pacific.txt", corpus / "inside-link.txt")
    return corpus


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        rss[int(entry)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total


def run_measured(args: list[str], env: dict[str, str], limit_mb: int) -> tuple[int, str]:
    """Run `python -m qa ARGS` from this checkout, print its time and the peak resident
    memory of its process tree; return its exit status and output."""
    began = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "qa", *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        if peak > limit_mb * MB:  # a shared machine: stop a runaway process
            proc.kill()
            print(f"stopped at {peak / MB:,.0f} MB")
        time.sleep(0.02)
    seconds = time.perf_counter() - began
    out = proc.stdout.read().decode() if proc.stdout else ""
    print(
        f"qa {' '.join(args)}: exit {proc.returncode}, {seconds:.1f} s, peak resident memory "
        f"of the process and its reader process {peak / MB:,.0f} MB"
    )
    return proc.returncode, out


def measure_build(corpus: Path, index: Path, limit_mb: int) -> None:
    # this checkout's qa (the venv's `qa` script may import another checkout's)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, QA_CORPUS_DIR=str(corpus), QA_INDEX_DIR=str(index), PYTHONPATH=path)
    code, out = run_measured(["index", "build"], env, limit_mb)
    if code:
        print(out[-3000:])
        return
    manifest = json.loads(next(index.glob("gen-*/manifest.json")).read_text("utf-8"))
    print(f"documents indexed: {sorted(manifest['documents'])}")
    print("skipped:")
    for row in manifest["skipped"]:
        print(f"  {row['path']}: {row['reason']}")
    code, out = run_measured(["index", "status"], env, limit_mb)
    states = ("fresh", "stale", "missing", "mismatch", "corrupt")
    print(next((line for line in out.splitlines() if line.startswith(states)), out[-500:]))


def _cpu_of(pid: int) -> float:
    """CPU seconds (user + system) used so far by process ``pid``."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_overhead(runs: int) -> None:
    """Wall and CPU time of loading a corpus with the reader process against reading each
    file in this process (same discovery and checks), runs interleaved, medians."""
    limits = CorpusLimits()

    def in_process(corpus: Path) -> tuple[float, float]:
        from qa.corpus_files import discover

        wall, cpu = time.perf_counter(), time.process_time()
        found = discover(corpus, SUFFIXES)
        for f in found.files:
            extract_file(f.path, f.rel, found.root, limits)
        return time.perf_counter() - wall, time.process_time() - cpu

    def with_worker(corpus: Path, extractor: Extractor) -> tuple[float, float]:
        assert extractor._proc is not None
        pid = extractor._proc.pid
        wall, cpu, worker = time.perf_counter(), time.process_time(), _cpu_of(pid)
        load_corpus(corpus, limits, extractor)
        used = time.process_time() - cpu + _cpu_of(pid) - worker
        return time.perf_counter() - wall, used

    with tempfile.TemporaryDirectory() as tmp:
        big = Path(tmp) / "c2000"
        make_corpus(big, 2000)
        extractor = Extractor()
        began = time.perf_counter()
        load_corpus(ROOT / "corpus", limits, extractor)
        first = time.perf_counter() - began
        print(
            f"first load_corpus of the default corpus, reader process start included: "
            f"{first * 1000:.0f} ms"
        )
        print(
            "| corpus | files | wall, in the build process | wall, reader process | "
            "CPU, in the build process | CPU, both processes |"
        )
        print("|---|---|---|---|---|---|")
        for name, corpus, files in [("default", ROOT / "corpus", 1), ("generated", big, 2000)]:
            a, b = [], []
            for _ in range(runs):
                a.append(in_process(corpus))
                b.append(with_worker(corpus, extractor))
            wall_a = statistics.median(x[0] for x in a)
            wall_b = statistics.median(x[0] for x in b)
            cpu_a = statistics.median(x[1] for x in a)
            cpu_b = statistics.median(x[1] for x in b)
            print(
                f"| {name} | {files:,} | {wall_a * 1000:.1f} ms | {wall_b * 1000:.1f} ms "
                f"({(wall_b - wall_a) / files * 1e6:+.0f} µs a file) | {cpu_a * 1000:.0f} ms | "
                f"{cpu_b * 1000:.0f} ms ({(cpu_b - cpu_a) / files * 1e6:+.0f} µs a file) |"
            )
        extractor.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--skip-build", action="store_true")
    parser.add_argument("--skip-overhead", action="store_true")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--stop-at-mb", type=int, default=8000, help="kill a build past this")
    args = parser.parse_args()
    if not args.skip_build:
        with tempfile.TemporaryDirectory() as tmp:
            began = time.perf_counter()
            corpus = make_hostile_corpus(Path(tmp))
            print(f"hostile corpus generated in {time.perf_counter() - began:.1f} s:")
            for p in sorted(corpus.iterdir()):
                size = f"{p.lstat().st_size:,} bytes" if not p.is_symlink() else "symlink"
                print(f"  {p.name}: {size}")
            measure_build(corpus, Path(tmp) / "index", args.stop_at_mb)
    if not args.skip_overhead:
        measure_overhead(args.runs)


if __name__ == "__main__":
    main()
