"""Write a benchmark's output into a document between its two marker comments."""

from __future__ import annotations

from pathlib import Path


def write_section(path: Path, text: str, begin: str, end: str) -> None:
    """Replace what lies between ``begin`` and ``end`` in ``path`` with ``text`` (blank
    lines around it), keeping the prose on either side; append the markers and ``text``
    when ``path`` has no ``begin`` marker yet."""
    old = path.read_text("utf-8")
    if begin in old:
        head, _, rest = old.partition(begin)
        _, _, tail = rest.partition(end)
    else:
        head, tail = old.rstrip("\n") + "\n\n", "\n"
    path.write_text(f"{head}{begin}\n\n{text}\n\n{end}{tail}", "utf-8")
