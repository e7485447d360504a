"""Rebuild the evaluation sets under eval/ that are made by a program.

    .venv/bin/python -m bench.make_datasets [--only SET] [--out eval] [--work DIR] [--check]

SET is one of multilingual-de, keywords (corpora only: their questions and judgements are
written by hand and not touched here), manpages-en, pydocs-html (corpus, questions and
judgements generated from Debian packages) and identifiers (generated here, nothing
downloaded; ``bench/identifiers.py``).

The Debian sets are made from bookworm packages. What this downloads, from the Debian
archive only, through ``apt-get`` with a private sources list and a private state folder under
``--work`` (the system's apt lists and cache are left alone; run as root, like apt-get):

* ``apt-get update`` of ``bookworm main`` alone, with English descriptions: the signed
  InRelease (~150 kB), the amd64 Packages index (~9 MB) and Translation-en (~6 MB);
* for multilingual-de, ``apt-get download manpages-de=4.18.1-1``: one .deb of ~3.6 MB;
* for manpages-en, ``apt-get download manpages-dev=6.03-2``: one .deb of ~2.5 MB;
* for pydocs-html, ``apt-get download python3.11-doc=3.11.2-6+deb12u8``: one .deb of ~13 MB.

Nothing else is fetched, and nothing at all is fetched at the project's run time: the built
files are committed. Document ids are stable: ``<page>.<section>-<n>`` (the n-th passage of a
manual page) for multilingual-de, the package name for keywords, ``<page>.<section>`` for
manpages-en, the documented object's anchor (``os.makedirs``) for pydocs-html, so a rebuild
from the same package versions gives the same files byte for byte (``--check`` compares
instead of writing). Needs ``apt-get``, ``dpkg-deb`` and ``groff`` (Debian's groff-base) on
the PATH, and BeautifulSoup for pydocs-html.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# The point release the committed corpora were built from; another one may change the
# version strings (and a few descriptions) in the keywords corpus.
POINT_RELEASE = "12.15"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

MANPAGES_PACKAGE = "manpages-de"
MANPAGES_VERSION = "4.18.1-1"

# The manual pages of multilingual-de, in families that overlap in topic (compression,
# checksums, files, text, processes, users, disks, time, ssh, names), so that a question
# has more than one relevant passage and near misses to rank below them.
MAN_PAGES = [
    # compression and archives
    "man1/gzip.1", "man1/bzip2.1", "man1/zgrep.1", "man1/znew.1", "man1/gzexe.1",
    "man1/zless.1", "man1/cpio.1",
    # checksums and encodings
    "man1/md5sum.1", "man1/sha256sum.1", "man1/b2sum.1", "man1/cksum.1", "man1/base64.1",
    "man1/basenc.1",
    # files and directories
    "man1/cp.1", "man1/mv.1", "man1/rm.1", "man1/ln.1", "man1/mkdir.1", "man1/touch.1",
    "man1/chmod.1", "man1/chown.1", "man1/chgrp.1", "man1/install.1", "man1/shred.1",
    "man1/truncate.1", "man1/stat.1", "man1/dd.1", "man1/fallocate.1", "man1/mktemp.1",
    "man1/du.1", "man1/df.1", "man1/realpath.1",
    # text processing
    "man1/sort.1", "man1/uniq.1", "man1/cut.1", "man1/paste.1", "man1/join.1", "man1/wc.1",
    "man1/head.1", "man1/tail.1", "man1/tr.1", "man1/split.1", "man1/comm.1", "man1/diff.1",
    "man1/cmp.1", "man1/column.1", "man1/tac.1", "man1/sed.1", "man1/od.1", "man1/iconv.1",
    "man1/strings.1", "man1/nl.1",
    # processes and scheduling
    "man1/nice.1", "man1/renice.1", "man1/ionice.1", "man1/chrt.1", "man1/taskset.1",
    "man1/timeout.1", "man1/nohup.1", "man1/prlimit.1", "man1/flock.1", "man1/crontab.1",
    "man5/crontab.5", "man8/anacron.8", "man5/anacrontab.5",
    # users and sessions
    "man1/su.1", "man1/runuser.1", "man1/id.1", "man1/who.1", "man1/last.1", "man1/wall.1",
    "man1/write.1",
    # disks and file systems
    "man8/fdisk.8", "man8/parted.8", "man8/mkswap.8", "man8/swapon.8", "man5/fstab.5",
    "man8/lsblk.8", "man8/blkid.8", "man8/findmnt.8", "man8/losetup.8", "man8/wipefs.8",
    "man8/fstrim.8", "man8/mkfs.8", "man8/umount.8",
    # time and date
    "man1/date.1", "man1/cal.1", "man1/timedatectl.1", "man5/timesyncd.conf.5",
    # remote access
    "man1/scp.1", "man1/sftp.1", "man1/ssh-agent.1", "man1/ssh-add.1", "man1/ssh-copy-id.1",
    "man1/ssh-keyscan.1",
    # names, hardware and logs
    "man1/hostnamectl.1", "man5/hosts.5", "man5/resolv.conf.5", "man1/uname.1",
    "man1/lscpu.1", "man1/dmesg.1", "man8/lsmod.8", "man1/logger.1", "man8/shutdown.8",
]  # fmt: skip

# Sections left out of the passages: credits, links, bug addresses, translator notes.
SKIP_SECTIONS = {
    "SIEHE AUCH", "ÜBERSETZUNG", "AUTOR", "AUTOREN", "FEHLER MELDEN", "COPYRIGHT",
    "KOLOPHON", "ANMERKUNGEN", "VERFÜGBARKEIT", "GESCHICHTE", "DANKSAGUNGEN", "COPYRIGHT-HINWEIS",
    "FEHLERBERICHTE",
}  # fmt: skip
PASSAGE_CHARS = 900  # passages are packed up to about this many characters
PASSAGE_MIN_CHARS = 300  # a passage shorter than this takes in the next section too
PASSAGE_MAX_CHARS = 1500  # a single paragraph longer than this is cut between sentences

# keywords: whole Debian sections of system tools, and the binary packages of a set of
# core libraries and services (their -dev, -doc, -utils siblings and soname variants are the
# near duplicates that exact identifiers tell apart).
KEYWORD_SECTIONS = {"admin", "database", "vcs", "shells", "kernel", "httpd"}
KEYWORD_SOURCES = {
    "openssl", "curl", "zlib", "xz-utils", "libzstd", "lz4", "bzip2", "brotli", "libxml2",
    "sqlite3", "gnutls28", "nettle", "krb5", "openldap", "cyrus-sasl2", "icu", "pcre2",
    "pcre3", "libssh", "libssh2", "nghttp2", "libevent", "libuv1", "ncurses", "readline",
    "libffi", "expat", "libyaml", "json-c", "jansson", "libpng1.6", "libjpeg-turbo", "tiff",
    "freetype", "fontconfig", "libseccomp", "libcap2", "libselinux", "pam", "gnupg2",
    "libgcrypt20", "libgpg-error", "p11-kit", "libidn2", "libarchive", "libzip", "libsodium",
    "gmp", "mpfr4", "redis",
}  # fmt: skip
KEYWORD_TEXT_MAX_CHARS = 2500  # a handful of descriptions run to pages; keep their start


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- apt, with a private state folder --------------------------------------------------------


class Apt:
    """apt-get against ``bookworm main`` alone, its lists and cache kept under ``work``."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.lists = work / "apt" / "lists"
        self.cache = work / "apt" / "cache"
        self.sources = work / "apt" / "sources.list"

    def options(self) -> list[str]:
        return [
            "-o", f"Dir::State::Lists={self.lists}",
            "-o", f"Dir::Cache={self.cache}",
            "-o", f"Dir::Etc::SourceList={self.sources}",
            "-o", "Dir::Etc::SourceParts=/nonexistent",
            "-o", "Acquire::Languages=en",
            "-o", "APT::Sandbox::User=root",
        ]  # fmt: skip

    def update(self) -> None:
        (self.lists / "partial").mkdir(parents=True, exist_ok=True)
        (self.cache / "archives" / "partial").mkdir(parents=True, exist_ok=True)
        self.sources.write_text(f"deb [signed-by={KEYRING}] {MIRROR} {SUITE} main\n")
        log(f"downloading: the {SUITE} main index (InRelease, Packages, Translation-en)")
        subprocess.run(["apt-get", "-q", *self.options(), "update"], check=True)
        release = self.index("InRelease").decode("utf-8", "replace")
        found = re.search(r"^Version: (\S+)", release, re.M)
        version = found.group(1) if found else "?"
        if version != POINT_RELEASE:
            log(
                f"warning: the archive serves {SUITE} {version}, the committed corpora were "
                f"built from {POINT_RELEASE}; package versions may differ"
            )

    def index(self, suffix: str) -> bytes:
        """The decompressed content of the list file whose name ends with ``suffix``."""
        compressed = re.compile(r"\.(gz|xz|lz4|zst|bz2|lzma)$")
        matches = sorted(
            p for p in self.lists.iterdir() if compressed.sub("", p.name).endswith(suffix)
        )
        if len(matches) != 1:
            raise SystemExit(f"expected one apt list ending in {suffix} in {self.lists}")
        return subprocess.run(
            ["/usr/lib/apt/apt-helper", "cat-file", str(matches[0])],
            check=True,
            capture_output=True,
        ).stdout

    def download(self, package: str, version: str, into: Path) -> Path:
        into.mkdir(parents=True, exist_ok=True)
        log(f"downloading: {package}={version} (.deb)")
        subprocess.run(
            ["apt-get", "-q", *self.options(), "download", f"{package}={version}"],
            check=True,
            cwd=into,
        )
        debs = sorted(into.glob(f"{package}_*.deb"))
        if not debs:
            raise SystemExit(f"apt-get download left no {package} .deb in {into}")
        return debs[-1]


def deb822(text: str) -> Iterator[dict[str, str]]:
    """Stanzas of a Debian control file (Packages, Translation-en): field -> raw value."""
    for stanza in text.split("\n\n"):
        record: dict[str, str] = {}
        key = ""
        for line in stanza.splitlines():
            if line[:1] in (" ", "\t") and key:
                record[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                record[key] = value.strip()
        if record:
            yield record


# --- multilingual-de: passages of German manual pages ----------------------------------------


@dataclass(frozen=True)
class Question:
    """A generated question and its judgements (document id -> grade)."""

    query_id: str
    text: str
    judged: dict[str, int]


@dataclass(frozen=True)
class Passage:
    doc_id: str
    title: str
    text: str


def render_man(source: bytes) -> str:
    """A manual page as plain UTF-8 text, one output line per paragraph (no hard wrapping)."""
    return subprocess.run(
        ["groff", "-k", "-t", "-Tutf8", "-mandoc", "-rLL=2000n", "-rHY=0", "-P-cbou"],
        input=source,
        capture_output=True,
        check=True,
    ).stdout.decode("utf-8")


BOX_RULE = re.compile(r"[\s\u2500-\u257f]+")


def man_sections(rendered: str) -> list[tuple[str, list[str]]]:
    """(heading, paragraphs) in order; a paragraph keeps its lines, stripped of indentation."""
    lines = rendered.splitlines()
    # the first line is the page header, the last non-blank one the footer
    body = [line.rstrip() for line in lines[1:]]
    while body and not body[-1]:
        body.pop()
    body = body[:-1]
    sections: list[tuple[str, list[str]]] = []
    paragraph: list[str] = []

    def close() -> None:
        if paragraph and sections:
            sections[-1][1].append("\n".join(paragraph))
        paragraph.clear()

    for line in body:
        if line and BOX_RULE.fullmatch(line):  # a table's ruling: no text in it
            continue
        line = line.replace("│", " ")
        if not line.strip():
            close()
        elif not line[0].isspace():
            close()
            sections.append((line.strip(), []))
        else:
            paragraph.append(" ".join(line.split()))
    close()
    return sections


def split_long(paragraph: str, limit: int) -> list[str]:
    """Cut a paragraph longer than ``limit`` between sentences (or words, as a last resort)."""
    if len(paragraph) <= limit:
        return [paragraph]
    pieces = re.split(r"(?<=[.!?:;])\s+(?=[A-ZÄÖÜ»(0-9-])", paragraph)
    if len(pieces) == 1:
        pieces = paragraph.split(" ")
    out: list[str] = []
    current = ""
    for piece in pieces:
        if current and len(current) + 1 + len(piece) > limit:
            out.append(current)
            current = piece
        else:
            current = f"{current} {piece}" if current else piece
    if current:
        out.append(current)
    return out


def page_passages(page: str, rendered: str) -> list[Passage]:
    """Passages of one page: its sections packed to about PASSAGE_CHARS, each piece under its
    heading. A section opens a new passage unless the open one is still short."""
    name, _, section = Path(page).name.rpartition(".")
    sections = [
        (heading, paragraphs)
        for heading, paragraphs in man_sections(rendered)
        if heading not in SKIP_SECTIONS and paragraphs
    ]
    summary = next((p[0] for h, p in sections if h == "BEZEICHNUNG"), "").replace("\n", " ")
    title = f"{name}({section})"
    named = re.split(r" [-–—] ", summary, maxsplit=1)
    if len(named) == 2:
        title += " – " + named[1].strip()
    passages: list[list[str]] = []
    current: list[str] = []  # the open passage: headings and paragraph pieces
    headings: set[int] = set()  # positions of the headings in ``current``

    def size() -> int:
        return sum(len(part) + 2 for part in current)

    def flush() -> None:
        while current and len(current) - 1 in headings:  # no heading without its text
            headings.discard(len(current) - 1)
            current.pop()
        if current:
            passages.append(current[:])
        current.clear()
        headings.clear()

    def open_heading(heading: str) -> None:
        headings.add(len(current))
        current.append(heading)

    for heading, paragraphs in sections:
        if size() >= PASSAGE_MIN_CHARS:
            flush()
        open_heading(heading)
        pieces = [piece for p in paragraphs for piece in split_long(p, PASSAGE_MAX_CHARS)]
        for i, piece in enumerate(pieces):
            rest = sum(len(later) + 2 for later in pieces[i:])
            has_text = len(current) > len(headings)
            if has_text and size() + len(piece) > PASSAGE_CHARS and rest >= PASSAGE_MIN_CHARS:
                flush()
                open_heading(heading)
            current.append(piece)
    flush()
    # a short tail of a page joins the passage before it
    while len(passages) > 1 and sum(len(part) for part in passages[-1]) < PASSAGE_MIN_CHARS:
        tail = passages.pop()
        passages[-1].extend(tail[1:] if tail[0] in passages[-1] else tail)
    texts = ["\n\n".join(parts) for parts in passages]
    return [Passage(f"{name}.{section}-{i:02d}", title, text) for i, text in enumerate(texts)]


def build_multilingual(apt: Apt, work: Path) -> list[dict[str, str]]:
    deb = apt.download(MANPAGES_PACKAGE, MANPAGES_VERSION, work / "debs")
    tree = work / MANPAGES_PACKAGE
    shutil.rmtree(tree, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    man = tree / "usr" / "share" / "man" / "de"
    rows: list[dict[str, str]] = []
    for page in MAN_PAGES:
        source = gzip.decompress((man / f"{page}.gz").read_bytes())
        if source.startswith(b".so "):
            raise SystemExit(f"{page} is a link to another page; list the target instead")
        for passage in page_passages(page, render_man(source)):
            rows.append({"_id": passage.doc_id, "title": passage.title, "text": passage.text})
    return rows


# --- keywords: one document per Debian package ----------------------------------------------


def long_description(raw: str) -> str:
    """A deb822 long description as text: " ." lines end paragraphs, wrapped lines are joined,
    indented lines and list items keep their own lines."""
    paragraphs: list[str] = []
    lines: list[str] = []
    for line in raw.splitlines():
        line = line[1:] if line.startswith(" ") else line
        if line.strip() == ".":
            paragraphs.append("\n".join(lines))
            lines = []
        elif lines and not line.startswith((" ", "\t")) and not re.match(r"[*+-] ", line):
            lines[-1] = f"{lines[-1]} {line.strip()}"
        else:
            lines.append(line.strip())
    paragraphs.append("\n".join(lines))
    return "\n\n".join(p for p in paragraphs if p)


def clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text.rfind("\n\n", 0, limit)
    return text[: cut if cut > limit // 2 else text.rfind(" ", 0, limit)].rstrip() + " …"


def newer(version: str, than: str) -> bool:
    """Debian version order, as dpkg has it."""
    command = ["dpkg", "--compare-versions", version, "gt", than]
    return subprocess.run(command, check=False).returncode == 0


def package_rows(packages: str, translations: str) -> list[dict[str, str]]:
    descriptions = {
        (record["Package"], record.get("Description-md5", "")): record["Description-en"]
        for record in deb822(translations)
        if "Description-en" in record
    }
    rows: dict[str, dict[str, str]] = {}
    versions: dict[str, str] = {}
    for record in deb822(packages):
        name = record.get("Package", "")
        source = record.get("Source", name).split(" ")[0]
        section = record.get("Section", "").rpartition("/")[2]
        if section not in KEYWORD_SECTIONS and source not in KEYWORD_SOURCES:
            continue
        description = descriptions.get((name, record.get("Description-md5", "")))
        if description is None:
            description = record.get("Description", "")
        short, _, rest = description.partition("\n")
        body = clip(long_description(rest), KEYWORD_TEXT_MAX_CHARS)
        facts = f"Version: {record.get('Version', '?')}. Section: {section}. Source: {source}."
        if record.get("Provides"):
            facts += f" Provides: {' '.join(record['Provides'].split())}."
        text = "\n\n".join(part for part in (short.strip(), body, facts) if part)
        version = record.get("Version", "")
        if name in versions and not newer(version, versions[name]):
            continue  # listed twice (an arch: all and an amd64 build): keep the newer
        versions[name] = version
        rows[name] = {"_id": name, "title": name, "text": text}
    return [rows[name] for name in sorted(rows)]


def build_keywords(apt: Apt) -> list[dict[str, str]]:
    packages = apt.index("Packages").decode("utf-8")
    translations = apt.index("Translation-en").decode("utf-8")
    return package_rows(packages, translations)


# --- manpages-en: English manual pages of functions, asked by what they do ----------------

DEV_MANPAGES_PACKAGE = "manpages-dev"
DEV_MANPAGES_VERSION = "6.03-2"
ENTITY_TEXT_MAX_CHARS = 1200  # the start of a page's DESCRIPTION: what a short entry holds
ENTITY_QUERY_EVERY = 5  # one page in this many (by a hash of its name) is asked about


def picked(key: str, every: int) -> bool:
    """A stable pseudo-random choice of one key in ``every`` (same on every rebuild)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % every == 0


def man_entity(page: str, rendered: str) -> tuple[dict[str, str], str] | None:
    """(corpus row, the page's one-line summary) of a section 2 or 3 page, or None for a
    page without a NAME summary or a DESCRIPTION. The row holds the page's names and the
    start of its DESCRIPTION; the summary is not in it (it becomes the question)."""
    sections = dict(man_sections(rendered))
    name_line = " ".join(" ".join(sections.get("NAME", [])).split())
    names, sep, summary = name_line.partition(" - ")
    description = "\n\n".join(sections.get("DESCRIPTION", []))
    if not sep or not summary or not description:
        return None
    stem, _, section = Path(page).name.rpartition(".")
    row = {
        "_id": f"{stem}.{section}",
        "title": f"{stem}({section}): {names.strip()}",
        "text": clip(description, ENTITY_TEXT_MAX_CHARS),
    }
    return row, summary.strip()


def build_manpages_en(apt: Apt, work: Path) -> tuple[list[dict[str, str]], list[Question]]:
    deb = apt.download(DEV_MANPAGES_PACKAGE, DEV_MANPAGES_VERSION, work / "debs")
    tree = work / DEV_MANPAGES_PACKAGE
    shutil.rmtree(tree, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    man = tree / "usr" / "share" / "man"
    rows: list[dict[str, str]] = []
    questions: list[Question] = []
    seen: set[str] = set()
    for path in sorted([*man.glob("man2/*.gz"), *man.glob("man3/*.gz")]):
        if path.is_symlink():  # another name of a page listed anyway (.so links become these)
            continue
        source = gzip.decompress(path.read_bytes())
        if source.startswith(b".so "):
            continue
        found = man_entity(f"{path.parent.name}/{path.name[:-3]}", render_man(source))
        if found is None:
            continue
        row, summary = found
        if row["text"] in seen:  # a copy of a page under another name (creat.2 of open.2)
            continue
        seen.add(row["text"])
        rows.append(row)
        if picked(row["_id"], ENTITY_QUERY_EVERY) and len(summary.split()) >= 3:
            questions.append(Question(f"man-{row['_id']}", summary, {row["_id"]: 2}))
    return rows, questions


# --- pydocs-html: entries of Python's library reference (HTML) ------------------------------

PYDOC_PACKAGE = "python3.11-doc"
PYDOC_VERSION = "3.11.2-6+deb12u8"
# Library pages in families that overlap (files, data formats, text, time, processes,
# networking, numbers, functional tools), so that near-namesakes compete.
PYDOC_PAGES = [
    "os", "os.path", "pathlib", "shutil", "glob", "fnmatch", "tempfile", "filecmp", "io",
    "json", "csv", "pickle", "shelve", "sqlite3", "zipfile", "tarfile", "gzip", "bz2", "lzma",
    "zlib", "re", "string", "textwrap", "difflib", "unicodedata", "datetime", "time",
    "calendar", "logging", "argparse", "subprocess", "threading", "queue", "socket", "ssl",
    "select", "http.client", "urllib.request", "urllib.parse", "hashlib", "hmac", "secrets",
    "random", "statistics", "math", "decimal", "fractions", "collections", "itertools",
    "functools", "heapq", "bisect", "base64", "binascii", "struct", "codecs", "signal", "mmap",
]  # fmt: skip
PYDOC_KINDS = {"function", "method", "class", "exception", "attribute", "data"}
PYDOC_QUERY_EVERY = 10
PYDOC_TEXT_MAX_CHARS = 1500


def first_sentence(text: str) -> tuple[str, str]:
    """(the first sentence, the rest) of a paragraph of documentation prose."""
    found = re.search(r"(?<=[.!?])\s+(?=[A-Z(`*])", text)
    if not found:
        return text.strip(), ""
    return text[: found.start()].strip(), text[found.end() :].strip()


def pydoc_entries(page: str, html: str) -> list[tuple[dict[str, str], str]]:
    """(corpus row, summary sentence) for each documented object of one library page. The
    row is the signature and the description without nested entries (a class's methods are
    entries of their own)."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    out: list[tuple[dict[str, str], str]] = []
    for dl in soup.select("dl.py"):
        kind = next((c for c in dl.get("class", []) if c in PYDOC_KINDS), None)
        dt, dd = dl.find("dt", recursive=False), dl.find("dd", recursive=False)
        if kind is None or dt is None or dd is None or not dt.get("id"):
            continue
        for link in dt.select("a.headerlink"):
            link.decompose()
        signature = " ".join(dt.get_text().split())
        paragraphs = [
            " ".join(p.get_text().split())
            for p in dd.find_all(["p", "pre", "li"])
            if p.find_parent("dl") is dl and not p.find_parent("li")
        ]
        paragraphs = [p for p in paragraphs if p]
        if not paragraphs:
            continue
        row = {
            "_id": str(dt["id"]),
            "title": signature,
            "text": clip("\n\n".join(paragraphs), PYDOC_TEXT_MAX_CHARS),
        }
        out.append((row, paragraphs[0]))
    return out


def build_pydocs(apt: Apt, work: Path) -> tuple[list[dict[str, str]], list[Question]]:
    deb = apt.download(PYDOC_PACKAGE, PYDOC_VERSION, work / "debs")
    tree = work / PYDOC_PACKAGE
    shutil.rmtree(tree, ignore_errors=True)
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    library = tree / "usr" / "share" / "doc" / "python3.11" / "html" / "library"
    rows: dict[str, dict[str, str]] = {}
    questions: list[Question] = []
    for page in PYDOC_PAGES:
        for row, first in pydoc_entries(page, (library / f"{page}.html").read_text("utf-8")):
            if row["_id"] in rows:
                continue
            summary, rest = first_sentence(first)
            short_name = row["_id"].rpartition(".")[2]
            asked = (
                picked(row["_id"], PYDOC_QUERY_EVERY)
                and len(summary.split()) >= 5
                and short_name.lower() not in summary.lower()
            )
            if asked:
                # the summary becomes the question; the entry keeps the rest of its text
                body = row["text"].replace(first, rest, 1).strip()
                if len(body) < 80:
                    asked = False
                else:
                    row["text"] = body
                    questions.append(Question(f"py-{row['_id']}", summary, {row["_id"]: 2}))
            rows[row["_id"]] = row
    return [rows[k] for k in sorted(rows)], questions


# --- writing ---------------------------------------------------------------------------------


def corpus_bytes(rows: Iterable[dict[str, str]]) -> bytes:
    lines = [json.dumps(row, ensure_ascii=False) for row in rows]
    return ("\n".join(lines) + "\n").encode("utf-8")


def write_corpus(folder: Path, rows: list[dict[str, str]], check: bool) -> bool:
    """Write (or with ``check`` compare) ``folder/corpus.jsonl``; True when it matches."""
    ids = [row["_id"] for row in rows]
    if len(set(ids)) != len(ids):
        raise SystemExit(f"{folder.name}: duplicate document ids")
    data = corpus_bytes(rows)
    target = folder / "corpus.jsonl"
    digest = hashlib.sha256(data).hexdigest()[:16]
    log(f"{folder.name}: {len(rows)} documents, {len(data):,} bytes, sha256 {digest}")
    if check:
        same = target.is_file() and target.read_bytes() == data
        log(f"{folder.name}: {'matches' if same else 'DIFFERS FROM'} {target}")
        return same
    folder.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return True


def questions_bytes(questions: list[Question]) -> tuple[bytes, bytes]:
    """queries.jsonl and qrels/test.tsv of generated questions."""
    queries = "".join(
        json.dumps({"_id": q.query_id, "text": q.text}, ensure_ascii=False) + "\n"
        for q in questions
    )
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(
        f"{q.query_id}\t{doc}\t{grade}\n" for q in questions for doc, grade in q.judged.items()
    )
    return queries.encode("utf-8"), qrels.encode("utf-8")


def write_questions(folder: Path, questions: list[Question], check: bool) -> bool:
    """Write (or with ``check`` compare) the queries and qrels of a generated set."""
    queries, qrels = questions_bytes(questions)
    log(f"{folder.name}: {len(questions)} questions")
    targets = [(folder / "queries.jsonl", queries), (folder / "qrels" / "test.tsv", qrels)]
    if check:
        same = all(t.is_file() and t.read_bytes() == data for t, data in targets)
        log(f"{folder.name}: questions {'match' if same else 'DIFFER'}")
        return same
    for target, data in targets:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    return True


def build_identifiers() -> tuple[list[dict[str, str]], list[Question]]:
    from bench.identifiers import questions, records

    recs = records(IDENT_DOCS)
    rows = [{"_id": r.doc_id, "title": r.title, "text": r.text} for r in recs]
    asked = [Question(q, text, {doc: 2}) for q, text, doc in questions(recs, IDENT_QUERIES)]
    return rows, asked


IDENT_DOCS = 2400  # near-identical records (the issue asks for 2,000+)
IDENT_QUERIES = 160  # ten of each question form
GENERATED = ("manpages-en", "pydocs-html", "identifiers")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", choices=["multilingual-de", "keywords", *GENERATED])
    parser.add_argument("--out", type=Path, default=ROOT / "eval", help="the eval folder")
    parser.add_argument(
        "--work", type=Path, help="keep downloads and apt state here (default: a temp folder)"
    )
    parser.add_argument(
        "--check", action="store_true", help="compare with the committed corpora, write nothing"
    )
    args = parser.parse_args(argv)
    for tool in ("apt-get", "dpkg-deb", "groff"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not on the PATH (Debian: apt-get install groff-base)")
    if args.only == "identifiers":  # generated here: nothing to download
        rows, asked = build_identifiers()
        folder = args.out / "identifiers"
        ok = write_corpus(folder, rows, args.check) & write_questions(folder, asked, args.check)
        return 0 if ok else 1
    with tempfile.TemporaryDirectory(prefix="qa-datasets-") as scratch:
        work = (args.work or Path(scratch)).resolve()
        apt = Apt(work)
        apt.update()
        ok = True
        if args.only in (None, "multilingual-de"):
            rows = build_multilingual(apt, work)
            ok &= write_corpus(args.out / "multilingual-de", rows, args.check)
        if args.only in (None, "keywords"):
            ok &= write_corpus(args.out / "keywords", build_keywords(apt), args.check)
        builders = {"manpages-en": build_manpages_en, "pydocs-html": build_pydocs}
        for name, builder in builders.items():
            if args.only in (None, name):
                rows, asked = builder(apt, work)
                ok &= write_corpus(args.out / name, rows, args.check)
                ok &= write_questions(args.out / name, asked, args.check)
        if args.only is None:
            rows, asked = build_identifiers()
            ok &= write_corpus(args.out / "identifiers", rows, args.check)
            ok &= write_questions(args.out / "identifiers", asked, args.check)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
