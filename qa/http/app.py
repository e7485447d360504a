"""The FastAPI application: routes parse, call the Engine, and shape the response."""

from __future__ import annotations

import hmac
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, ConfigDict, Field, field_validator

from qa.engine import Engine, filters_from, spec_from_settings
from qa.errors import Forbidden, QAError, Unauthorized
from qa.http.chat import create_chat_router
from qa.http.deps import EngineDep, get_engine
from qa.http.errors import error_response, install_error_handlers
from qa.mcp_server import build_mcp_server
from qa.schema import AskResponse, DocumentSummary, DocumentText
from qa.settings import Settings
from qa.synthesis import Synthesizer
from qa.updater import Updater, start_reloader, start_watcher

log = logging.getLogger(__name__)

WEB_DIR = Path(__file__).resolve().parent.parent / "web"
# The page loads nothing but its own files and talks only to this server; document text is
# rendered as text, and this policy is the second line if that were ever broken.
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


class AskFilters(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a mistyped filter must not search everything

    doc_id: list[str] | None = Field(None, description="Only these documents")
    path_prefix: str | None = Field(None, description="Only documents whose path starts so")


class AskRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: str = Field(..., description="The question, 1 to 2,000 characters")
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


def _load_in_background(app: FastAPI, engine: Engine) -> None:
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

    thread = threading.Thread(target=run, name="qa-index-loader", daemon=True)
    thread.start()
    app.state.loader = thread


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

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if assets is None:
            return get_swagger_ui_html(openapi_url="/openapi.json", title="qa API")
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="qa API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon.png",
        )


def create_app(
    settings: Settings | None = None,
    engine: Engine | None = None,
    *,
    load: bool = True,
    watch: bool = False,
) -> FastAPI:
    """Build the app. The index loads in the background; /readyz is 503 until it is in.

    While it runs, a new index generation on disk (from `qa index update`, the update
    endpoint or, with ``watch``, an edit in the corpus folder) is loaded and swapped in
    without a restart; requests in flight finish on the generation they started with.
    """
    settings = settings or Settings()
    engine = engine or Engine(settings)
    updater = Updater(
        Path(settings.corpus_dir),
        Path(settings.index_dir),
        engine.embedder,
        spec_from_settings(settings),
        keep_generations=settings.keep_generations,
        on_success=lambda _: engine.reload_if_changed(),
    )
    synthesizer = Synthesizer.from_settings(settings)
    mcp = build_mcp_server(engine)
    # MCP over streamable HTTP at /mcp: stateless JSON responses, one session manager.
    mcp_http = mcp.streamable_http_app(
        streamable_http_path="/mcp", stateless_http=True, json_response=True, host=settings.host
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        if load and not engine.ready:
            _load_in_background(app, engine)
        if load:
            start_reloader(engine.reload_if_changed, settings.reload_interval, stop)
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
    app.state.engine = engine
    app.state.settings = settings
    app.state.updater = updater
    app.state.synthesizer = synthesizer
    app.state.load_error = None
    install_error_handlers(app)
    app.include_router(create_chat_router())
    app.router.routes.extend(mcp_http.routes)
    app.mount("/static", StaticFiles(directory=WEB_DIR), name="static")

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(
            WEB_DIR / "index.html",
            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"},
        )

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], response_model=None)
    def readyz(request: Request) -> Any:
        if engine.ready:
            return {"status": "ready", "generation": engine.data.generation}
        reason = request.app.state.load_error or "the index is loading"
        return error_response(503, "index_not_ready", reason)

    @app.post("/v1/ask", response_model=AskResponse, tags=["ask"])
    def ask_post(body: AskRequest, engine: EngineDep) -> AskResponse:
        f = body.filters
        filters = filters_from(f.doc_id, f.path_prefix) if f else None
        return engine.ask(body.question, body.top_k, filters)

    @app.get("/v1/ask", response_model=AskResponse, tags=["ask"])
    def ask_get(
        engine: EngineDep,
        question: Annotated[str, Query(description="The question")],
        top_k: Annotated[int | None, Query(ge=1, le=50)] = None,
        doc_id: Annotated[list[str] | None, Query(description="Only these documents")] = None,
        path_prefix: Annotated[str | None, Query()] = None,
    ) -> AskResponse:
        return engine.ask(question, top_k, filters_from(doc_id, path_prefix))

    @app.get("/v1/documents", response_model=list[DocumentSummary], tags=["documents"])
    def documents(engine: EngineDep) -> list[DocumentSummary]:
        return engine.documents()

    @app.get("/v1/documents/{doc_id:path}", response_model=DocumentText, tags=["documents"])
    def document(doc_id: str, engine: EngineDep) -> DocumentText:
        return engine.document(doc_id)

    @app.get("/v1/index", tags=["index"])
    def index_status(engine: EngineDep) -> dict[str, Any]:
        manifest = engine.data.manifest
        running, last = updater.running, updater.last
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

    @app.post(
        "/v1/index/update",
        tags=["index"],
        status_code=202,
        dependencies=[Depends(require_admin)],
    )
    def index_update() -> dict[str, Any]:
        """Start an incremental update in the background; poll /v1/index/jobs/{id}."""
        return {"job": updater.start().as_dict()}

    @app.get("/v1/index/jobs/{job_id}", tags=["index"], dependencies=[Depends(require_admin)])
    def index_job(job_id: str) -> dict[str, Any]:
        return {"job": updater.job(job_id).as_dict()}

    return app


__all__ = ["EngineDep", "create_app", "get_engine"]
