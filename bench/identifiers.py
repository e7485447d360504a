"""Generated near-identical records that only their identifiers tell apart.

Each record is the same sentence pattern with its own ledger code (``marker1199x``),
document number, IPv4 address, version, date, file name and error code. Many share a prefix
with another record's (``10.0.3.17`` and ``10.0.3.171``, ``2.14.3`` and ``2.14.31``), so
an identifier matched by its parts, or a dense model that sees every record as alike, ranks
the wrong record first. Used by ``eval/identifiers`` (``bench/make_datasets.py``) and by the
fast tests of identifier matching (``tests/test_identifiers.py``).
"""

from __future__ import annotations

import datetime
import itertools
import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Record:
    doc_id: str
    number: int
    code: str
    ip: str
    version: str
    date: str
    file: str
    error: str

    @property
    def title(self) -> str:
        return f"Ledger record {self.number}"

    @property
    def text(self) -> str:
        return (
            f"Document {self.number} is a ledger record of the accounts office. Its ledger "
            f"code is {self.code}. It was filed on {self.date} from host {self.ip}, where "
            f"importer version {self.version} wrote it to {self.file}. The last import "
            f"ended with error {self.error}; the record was checked and kept."
        )


def records(count: int, seed: int = 12) -> list[Record]:
    """``count`` records with unique identifiers of every kind (deterministic in ``seed``)."""
    rng = random.Random(seed)
    hosts = rng.sample(list(itertools.product(range(4), range(256), range(1, 255))), count)
    versions = rng.sample(list(itertools.product(range(1, 5), range(21), range(41))), count)
    days = rng.sample(range(4000), count)
    files = rng.sample(range(16**5), count)
    errors = rng.sample(range(1000, 10000), count)
    start = datetime.date(2015, 1, 1)
    out = []
    for i in range(count):
        n = 1000 + i
        out.append(
            Record(
                doc_id=f"rec{n}",
                number=n,
                code=f"marker{n}x",
                ip="10.{}.{}.{}".format(*hosts[i]),
                version="{}.{}.{}".format(*versions[i]),
                date=(start + datetime.timedelta(days=days[i])).isoformat(),
                file=f"batch-{files[i]:05x}.csv",
                error=f"E{errors[i]}",
            )
        )
    return out


# The question forms: the identifier bare, with a few words, and inside a sentence, at the
# start, middle and end.
TEMPLATES = [
    "{code}",
    "ledger code {code}",
    "{code} ledger code",
    "What is the ledger code of document {number}?",
    "document {number}",
    "{ip}",
    "Which record came from host {ip}?",
    "{ip} import",
    "version {version}",
    "records written by importer version {version}",
    "{date}",
    "What was filed on {date}?",
    "{file}",
    "which record was written to {file}",
    "error {error}",
    "{error} import failure",
]


def questions(recs: list[Record], count: int, seed: int = 12) -> list[tuple[str, str, str]]:
    """``count`` (question id, question, the record's id): records drawn at random, the
    templates in turn so that every form is asked about as often."""
    rng = random.Random(seed + 1)
    picked = rng.sample(recs, count)
    out = []
    for i, rec in enumerate(picked):
        template = TEMPLATES[i % len(TEMPLATES)]
        text = template.format(**rec.__dict__)
        out.append((f"id{i:03d}", text, rec.doc_id))
    return out
