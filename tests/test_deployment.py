"""The deployment files say what docs/deployment.md says they do (no Docker needed):
compose.yaml loads, two API replicas that never build behind one proxy port, one indexer,
Milvus standalone, the settings the store reads; the Dockerfile's pins and health check."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from qa.http.server import WorkerApp, timed_protocol
from qa.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text("utf-8"))
    return data


def test_compose_runs_milvus_one_indexer_and_two_replicas_behind_one_port(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    assert {"etcd", "minio", "milvus", "indexer", "api", "proxy"} <= set(services)
    assert services["milvus"]["image"].startswith("milvusdb/milvus:")
    assert services["milvus"]["command"] == ["milvus", "run", "standalone"]
    api, indexer = services["api"], services["indexer"]
    assert api["deploy"]["replicas"] == 2
    assert api["command"] == ["qa", "serve", "--no-build"]
    assert indexer["command"][:3] == ["qa", "index", "watch"]
    assert "deploy" not in indexer  # one builder
    for service in (api, indexer):
        env = service["environment"]
        assert env["QA_VECTOR_STORE"] == "milvus"
        assert env["QA_MILVUS_URI"] == "http://milvus:19530"
        assert "qa-index:/data/index" in service["volumes"]
    assert "ports" not in api  # reached only through the proxy
    assert services["proxy"]["depends_on"]["api"]["condition"] == "service_healthy"
    (published,) = services["proxy"]["ports"]
    nginx = (ROOT / "deploy" / "nginx.conf").read_text("utf-8")
    assert published.endswith(":8080") and "listen 8080;" in nginx
    assert "server api:8000" in nginx


def test_dockerfile_pins_cpu_torch_first_and_checks_readyz() -> None:
    text = (ROOT / "Dockerfile").read_text("utf-8")
    assert text.startswith("#") and "\nFROM python:3.11-slim\n" in text
    torch = text.index('--index-url https://download.pytorch.org/whl/cpu "torch==2.13.0"')
    assert torch < text.index("RUN pip install .")
    assert re.search(r"HEALTHCHECK .*\n.*http://127\.0\.0\.1:8000/readyz", text)
    assert 'VOLUME ["/data/index"]' in text and "USER qa" in text


def test_a_worker_gets_everything_it_needs_by_pickle() -> None:
    # uvicorn spawns the workers: the app factory and the protocol travel pickled
    import pickle

    settings = Settings(index_dir=Path("/somewhere/index"), port=8123, header_timeout=3)
    factory = pickle.loads(pickle.dumps(WorkerApp(settings)))
    assert factory.settings == settings
    protocol = pickle.loads(pickle.dumps(timed_protocol(3.0)))
    assert protocol.keywords == {"header_timeout": 3.0}
