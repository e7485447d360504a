from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from qa.assemble import spec_from_settings
from qa.builder import build_index
from qa.engine import Engine
from qa.settings import Settings
from tests.fakes import FakeEmbedder

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CORPUS = ROOT / "corpus"


@pytest.fixture
def fake_embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    """A small corpus: the default article plus a markdown note in a sub-folder."""
    corpus = tmp_path / "corpus"
    (corpus / "notes").mkdir(parents=True)
    shutil.copy(DEFAULT_CORPUS / "nato-indo-pacific.txt", corpus / "nato-indo-pacific.txt")
    (corpus / "notes" / "baking.md").write_text(
        "# Sourdough baking\n\nA sourdough starter is a mix of flour and water that ferments.\n\n"
        "## Proofing\n\nLet the dough proof overnight in the fridge. Bake it at 250 degrees "
        "in a covered pot for forty minutes.\n",
        encoding="utf-8",
    )
    return corpus


@pytest.fixture
def settings(tmp_path: Path, corpus_dir: Path) -> Settings:
    return Settings(
        corpus_dir=corpus_dir,
        index_dir=tmp_path / "index",
        cache_dir=tmp_path / "cache",
        embedding_model="fake-embedder",
        min_score=0.05,
        allowed_hosts=["testserver"],  # Starlette's TestClient sends Host: testserver
    )


@pytest.fixture
def engine(settings: Settings, fake_embedder: FakeEmbedder) -> Engine:
    build_index(
        Path(settings.corpus_dir),
        Path(settings.index_dir),
        fake_embedder,
        spec_from_settings(settings),
    )
    eng = Engine(settings, embedder=fake_embedder)
    eng.load()
    return eng
