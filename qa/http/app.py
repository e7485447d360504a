"""The FastAPI application: routes parse, call the Engine, and shape the response."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import re
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from mcp.server.transport_security import TransportSecuritySettings
from pydantic import BaseModel, ConfigDict, Field, field_validator

from qa.assemble import spec_from_settings
from qa.engine import Engine, filters_from
from qa.errors import Forbidden, QAError, Unauthorized
from qa.extraction import CorpusLimits
from qa.http.chat import create_chat_router
from qa.http.deps import EngineDep, get_engine
from qa.http.errors import ADMIN, BODY, COMMON, error_response, errors, install_error_handlers
from qa.http.middleware import GuardMiddleware, allowed_hosts
from qa.http.observe import CONTENT_TYPE_LATEST, index_registry, metrics_text
from qa.mcp_server import build_mcp_server
from qa.schema import AskResponse, DocumentSummary, DocumentText
from qa.settings import Settings
from qa.synthesis import Synthesizer
from qa.updater import Updater, start_reloader, start_watcher

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"


class AskFilters(BaseModel):
    # a mistyped filter must not search everything; strict: no coercion of types
    model_config = ConfigDict(extra="forbid", strict=True)

    doc_id: list[str] | None = Field(None, description="Only these documents")
    path_prefix: str | None = Field(None, description="Only documents whose path starts so")


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)  # top_k: true is not 1

    question: str = Field(
        ...,
        description="The question, 1 to 2,000 characters (QA_MAX_QUESTION_CHARS), not blank",
        json_schema_extra={"minLength": 1, "pattern": r"\S"},
    )
    top_k: int | None = Field(
        None, ge=1, le=50, description="How many passages to return (1-50; QA_TOP_K if unset)"
    )
    filters: AskFilters | None = None

    @field_validator("question")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty or blank")
        return value


def require_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> None:
    """Bearer token matching QA_ADMIN_TOKEN; no token configured disables the endpoint."""
    expected = request.app.state.settings.admin_token
    if not expected:
        raise Forbidden("admin endpoints are disabled; set QA_ADMIN_TOKEN to enable them")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), expected.encode()
    ):
        raise Unauthorized("missing or wrong bearer token (Authorization: Bearer <token>)")


def is_admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> bool:
    """True with the right bearer token, False without one; a wrong token is a 401."""
    if authorization is None:
        return False
    require_admin(request, authorization)
    return True


AdminView = Annotated[bool, Depends(is_admin)]


def _mcp_security(hosts: list[str]) -> TransportSecuritySettings:
    """The MCP SDK's own Host and Origin checks, from the same allowed hosts (the Host was
    already checked by the middleware; this adds the SDK's Origin check)."""
    if any(h.startswith("*") for h in hosts):
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return TransportSecuritySettings(
        allowed_hosts=[p for h in hosts for p in (h, f"{h}:*")],
        allowed_origins=[
            p for h in hosts for s in ("http", "https") for p in (f"{s}://{h}", f"{s}://{h}:*")
        ],
    )


def _public_model(model_id: str) -> str:
    """A model given as a local path shows only its last part (no filesystem layout)."""
    return Path(model_id).name if "/" in model_id and Path(model_id).exists() else model_id


def _load_in_background(
    app: FastAPI, engine: Engine, then: Callable[[], object] | None = None
) -> threading.Thread:
    """Warm the model up and load the generation in service in a thread, then call
    ``then`` (start following new generations) whether the load worked or not: polling
    before would put the index in service ahead of the model, and /readyz would say ready
    while the first request still waits for the model."""

    def run() -> None:
        try:
            engine.warm_up()
            engine.load()
        except QAError as exc:
            app.state.load_error = exc.message
            log.error("index not loaded: %s", exc.message)
        except Exception as exc:  # keep the process up; /readyz says why
            app.state.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("index not loaded")
        finally:
            if then is not None:
                then()

    thread = threading.Thread(target=run, name="qa-index-loader", daemon=True)
    thread.start()
    app.state.loader = thread
    return thread


def _install_docs(app: FastAPI) -> None:
    """OpenAPI docs at /docs with Swagger UI 5 served from the fastapi-offline package's
    files, so the page works without internet access (FastAPI's default uses a CDN)."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.responses import HTMLResponse

    try:
        import fastapi_offline

        assets: str | None = str(Path(fastapi_offline.__file__).parent / "static")
        app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")
    except ImportError:  # pragma: no cover - falls back to FastAPI's CDN assets
        assets = None

    if assets is None:
        html = get_swagger_ui_html(openapi_url="/openapi.json", title="qa API")
        source = "'self' https://cdn.jsdelivr.net"
    else:
        html = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="qa API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )
        source = "'self'"
    # Swagger UI starts from one inline script: allow exactly that script by its hash.
    inline = re.findall(rb"<script>(.*?)</script>", bytes(html.body), re.S)
    hashes = " ".join(
        f"'sha256-{base64.b64encode(hashlib.sha256(s).digest()).decode()}'" for s in inline
    )
    csp = (
        f"default-src 'none'; script-src {source} {hashes}; style-src {source} 'unsafe-inline'; "
        f"img-src {source} data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
    )

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(html.body, headers={"Content-Security-Policy": csp})


def create_app(
    settings: Settings | None = None,
    engine: Engine | None = None,
    *,
    load: bool = True,
    watch: bool = False,
    wait_for_index: bool = False,
) -> FastAPI:
    """Build the app. The index loads in the background; /readyz is 503 until it is in.
    With ``wait_for_index`` (a worker of ``qa serve --workers``) start-up waits for that
    first load (or its failure) instead, so the worker takes no connection from the shared
    socket before it can answer; the workers already serving take them meanwhile.

    While it runs, a new index generation on disk (from `qa index update`, the update
    endpoint or, with ``watch``, an edit in the corpus folder) is loaded and swapped in
    without a restart; requests in flight finish on the generation they started with.
    """
    settings = settings or Settings()
    engine = engine or Engine(settings)
    updater = Updater(
        Path(settings.corpus_dir),
        engine.store,  # the folder QA_INDEX_DIR, or Milvus
        engine.embedder,
        spec_from_settings(settings),
        keep_generations=settings.keep_generations,
        on_success=lambda _: engine.reload_if_changed(),
        jobs_kept=settings.update_jobs_kept,
        limits=CorpusLimits.from_settings(settings),
    )
    synthesizer = Synthesizer.from_settings(settings)
    mcp = build_mcp_server(engine)
    # MCP over streamable HTTP at /mcp: stateless JSON responses, one session manager.
    hosts = allowed_hosts(settings)
    mcp_http = mcp.streamable_http_app(
        streamable_http_path="/mcp",
        stateless_http=True,
        json_response=True,
        host=settings.host,
        transport_security=_mcp_security(hosts),
        max_request_body_size=settings.max_body_bytes,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()

        def follow() -> None:
            start_reloader(engine.reload_if_changed, settings.reload_interval, stop)

        if load and not engine.ready:
            loader = _load_in_background(app, engine, then=follow)
            if wait_for_index:
                await asyncio.to_thread(loader.join)
        elif load:
            follow()
        if watch:
            start_watcher(updater, settings.watch_debounce_ms, stop)
        async with mcp.session_manager.run():
            try:
                yield
            finally:
                stop.set()
                if synthesizer is not None:
                    synthesizer.close()

    app = FastAPI(
        title="qa",
        version="0.1.0",
        summary="Answers questions from your documents with passages and exact citations.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    _install_docs(app)
    app.add_middleware(GuardMiddleware, settings=settings)
    app.state.engine = engine
    app.state.settings = settings
    app.state.updater = updater
    app.state.synthesizer = synthesizer
    app.state.load_error = None
    install_error_handlers(app)
    app.include_router(create_chat_router())

    @app.get("/mcp", include_in_schema=False)
    def mcp_get() -> Response:
        # Stateless JSON MCP has nothing to push: no event stream that would never send or
        # close; the transport's spec allows answering GET with 405.
        return error_response(
            405,
            "method_not_allowed",
            "GET /mcp opens no event stream here; send JSON-RPC messages with POST",
            headers={"Allow": "POST"},
        )

    app.router.routes.extend(mcp_http.routes)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")
    index_metrics = index_registry(engine)

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        # its Content-Security-Policy, like every HTML response's, comes from the middleware
        return FileResponse(WEB_DIR / "index.html", headers={"Cache-Control": "no-cache"})

    @app.get("/healthz", tags=["ops"], responses=errors(*COMMON))
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/metrics",
        tags=["ops"],
        response_class=Response,
        responses={
            200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus metrics"},
            **errors(*COMMON),
        },
    )
    def metrics() -> Response:
        """Prometheus text format: requests by route and status, stage latencies, index
        generation, documents and chunks, update durations and failures, build throughput."""
        return Response(metrics_text(index_metrics), media_type=CONTENT_TYPE_LATEST)

    @app.get("/readyz", tags=["ops"], response_model=None, responses=errors(503, *COMMON))
    def readyz(request: Request) -> Any:
        if engine.ready:
            return {"status": "ready", "generation": engine.data.generation}
        reason = request.app.state.load_error or "the index is loading"
        return error_response(503, "index_not_ready", reason)

    @app.post(
        "/v1/ask", response_model=AskResponse, tags=["ask"], responses=errors(*BODY, 503, *COMMON)
    )
    def ask_post(body: AskRequest, engine: EngineDep) -> AskResponse:
        f = body.filters
        filters = filters_from(f.doc_id, f.path_prefix) if f else None
        return engine.ask(body.question, body.top_k, filters)

    @app.get(
        "/v1/ask", response_model=AskResponse, tags=["ask"], responses=errors(422, 503, *COMMON)
    )
    def ask_get(
        engine: EngineDep,
        question: Annotated[
            str,
            Query(description="The question", json_schema_extra={"minLength": 1, "pattern": r"\S"}),
        ],
        top_k: Annotated[int | None, Query(ge=1, le=50)] = None,
        doc_id: Annotated[list[str] | None, Query(description="Only these documents")] = None,
        path_prefix: Annotated[str | None, Query()] = None,
    ) -> AskResponse:
        return engine.ask(question, top_k, filters_from(doc_id, path_prefix))

    @app.get(
        "/v1/documents",
        response_model=list[DocumentSummary],
        tags=["documents"],
        responses=errors(503, *COMMON),
    )
    def documents(engine: EngineDep) -> list[DocumentSummary]:
        return engine.documents()

    @app.get(
        "/v1/documents/{doc_id:path}",
        response_model=DocumentText,
        tags=["documents"],
        responses=errors(404, 503, *COMMON),
    )
    def document(doc_id: str, engine: EngineDep) -> DocumentText:
        return engine.document(doc_id)

    @app.get("/v1/index", tags=["index"], responses=errors(401, 503, *COMMON))
    def index_status(engine: EngineDep, admin: AdminView) -> dict[str, Any]:
        """The index in service and the update state. Without the admin token: no
        filesystem paths, skipped files or job ids (counts and states only)."""
        manifest = engine.data.manifest
        running, last = updater.running, updater.last
        if admin:
            return {
                "generation": manifest["generation"],
                "built_at": manifest["built_at"],
                "model": manifest["model"],
                "chunker": manifest["chunker"],
                "counts": manifest["counts"],
                "skipped": manifest["skipped"],
                "update": {
                    "running": running.as_dict() if running else None,
                    "last": last.as_dict() if last else None,
                },
            }

        def public(job: Any) -> dict[str, Any] | None:
            if job is None:
                return None
            return {
                "state": job.state,
                "created_at": job.created_at,
                "finished_at": job.finished_at,
            }

        return {
            "generation": manifest["generation"],
            "built_at": manifest["built_at"],
            "model": {**manifest["model"], "id": _public_model(manifest["model"]["id"])},
            "chunker": manifest["chunker"],
            "counts": manifest["counts"],
            "update": {"running": public(running), "last": public(last)},
        }

    @app.post(
        "/v1/index/update",
        tags=["index"],
        status_code=202,
        dependencies=[Depends(require_admin)],
        responses=errors(*ADMIN, *COMMON),
    )
    def index_update() -> dict[str, Any]:
        """Start an incremental update in the background; poll /v1/index/jobs/{id}."""
        return {"job": updater.start().as_dict()}

    @app.get(
        "/v1/index/jobs/{job_id}",
        tags=["index"],
        dependencies=[Depends(require_admin)],
        responses=errors(*ADMIN, 404, *COMMON),
    )
    def index_job(job_id: str) -> dict[str, Any]:
        return {"job": updater.job(job_id).as_dict()}

    return app


__all__ = ["EngineDep", "create_app", "get_engine"]
