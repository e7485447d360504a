"""The on-disk format of one local generation: a manifest naming its segments.

``gen-NNNNNN/manifest.json`` holds the format version, the model and chunker settings that
built the index, counts, and for each live document the segment that holds it; the
segments (qa.index.segment) hold the data, each recorded with the checksum of its own
manifest, which lists the checksum of every file. Plain JSON, JSON lines, ``.npy`` without
objects and FAISS's own format: no pickle anywhere.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from qa.errors import IndexCorrupt, IndexMismatch
from qa.index.publish import generation_number
from qa.index.segment import SEGMENTS_DIR, SegmentPayload, fsync_tree, verify_segment
from qa.index.spec import FORMAT_VERSION, READABLE_FORMATS, IndexSpec

MANIFEST = "manifest.json"


@dataclass
class GenerationPayload:
    """One generation to write: at most one new segment, and the documents in service.

    ``documents`` maps every live doc id to {path, sha256, chunks, sentences, segment};
    documents of the new ``segment`` have segment None (the store names it seg-NNNNNN
    after the generation's number when it writes it), the others name the older segment
    that holds them. ``segments`` lists the older segments
    still referenced (name -> manifest checksum)."""

    segment: SegmentPayload | None
    documents: dict[str, dict[str, Any]]
    segments: dict[str, str]
    skipped: list[dict[str, str]]
    spec: IndexSpec
    dimension: int
    stats: dict[str, Any]
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # file -> its stamp
    scanned_ns: int = 0  # when the corpus scan of this generation began (time.time_ns)


def write_manifest(tmp: Path, payload: GenerationPayload, segments: dict[str, str]) -> None:
    """Write the generation manifest into ``tmp`` and fsync it."""
    counts = {
        "documents": len(payload.documents),
        "chunks": sum(int(m["chunks"]) for m in payload.documents.values()),
        "sentences": sum(int(m["sentences"]) for m in payload.documents.values()),
        "skipped": len(payload.skipped),
        "segments": len(segments),
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "generation": generation_number(tmp.with_name(tmp.name.removesuffix(".tmp"))),
        "built_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": {
            "id": payload.spec.model_id,
            "dimension": payload.dimension,
            "embedding": payload.spec.embedding,
        },
        "chunker": payload.spec.chunker_settings(),
        "counts": counts,
        "segments": segments,
        "documents": payload.documents,
        "skipped": payload.skipped,
        "stats": payload.stats,
        "sources": payload.sources,
        "scanned_ns": payload.scanned_ns,
    }
    # one line: the manifest lists every document and file, and is rewritten per generation
    text = json.dumps(manifest, ensure_ascii=False, separators=(",", ":"))
    (tmp / MANIFEST).write_text(text, "utf-8")
    fsync_tree(tmp)


_READ: OrderedDict[tuple[str, int, int, int, int], dict[str, Any]] = OrderedDict()
_READ_LOCK = threading.Lock()
READ_CACHE = 4  # manifests kept parsed: an update reads the same few several times


def read_manifest(gen_dir: Path) -> dict[str, Any]:
    """The manifest of ``gen_dir`` (read-only: a manifest read before is shared, parsed
    once; a generation's manifest is never rewritten, and a file replaced under the same
    name has another inode or time). Raises IndexCorrupt (missing, not JSON) or
    IndexMismatch (another format version)."""
    path = gen_dir / MANIFEST
    try:
        st = path.stat()
        key = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with _READ_LOCK:
            cached = _READ.get(key)
        if cached is not None:
            return cached
        manifest: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise IndexCorrupt(f"{path} is missing; rebuild with `qa index build`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexCorrupt(
            f"{path} is not valid JSON ({exc}); rebuild with `qa index build`"
        ) from None
    if manifest.get("format_version") not in READABLE_FORMATS:
        raise IndexMismatch(
            f"{path} has format version {manifest.get('format_version')!r}, this qa reads "
            f"versions {', '.join(map(str, READABLE_FORMATS))}; rebuild with `qa index build`"
        )
    with _READ_LOCK:
        _READ[key] = manifest
        while len(_READ) > READ_CACHE:
            _READ.popitem(last=False)
    return manifest


def verify_written(tmp: Path, new_segment: str | None) -> dict[str, Any]:
    """After a write: the manifest reads back and names only segments that exist, and the
    segment written by this generation (verified file by file when it was written) matches
    its recorded checksum. Older segments were verified when the generation they came
    from was loaded; they are not hashed again."""
    manifest = read_manifest(tmp)
    for name, sha in manifest["segments"].items():
        seg_dir = tmp.parent / SEGMENTS_DIR / name
        if not (seg_dir / "manifest.json").is_file():
            raise IndexCorrupt(f"segment {seg_dir} named by {tmp} is missing")
        if name == new_segment:
            verify_segment(seg_dir, sha)
    return manifest


def verify_generation(gen_dir: Path) -> dict[str, Any]:
    """Check the generation's manifest and every file of every segment it names against
    their sizes and checksums; returns the manifest. Raises IndexCorrupt naming the first
    file that is missing, truncated or altered."""
    manifest = read_manifest(gen_dir)
    for name, sha in manifest["segments"].items():
        verify_segment(gen_dir.parent / SEGMENTS_DIR / name, sha)
    return manifest
