"""The one place where errors become HTTP responses: ``{"error": {"code", "message"}}``."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from qa.errors import QAError, Unauthorized

log = logging.getLogger(__name__)

# The challenge sent with every 401 (RFC 9110 §11.6.1): the admin endpoints take a bearer token.
BEARER_CHALLENGE = 'Bearer realm="qa"'


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable code, e.g. invalid_request")
    message: str = Field(description="What was wrong and what to do, for a person")


class ErrorBody(BaseModel):
    """The one shape of every error response."""

    error: ErrorDetail


_DESCRIPTIONS = {
    400: "The body is not valid JSON",
    401: f"Missing or wrong bearer token (WWW-Authenticate: {BEARER_CHALLENGE})",
    403: "Admin endpoints are disabled (QA_ADMIN_TOKEN unset)",
    404: "Not found",
    408: "The request body did not arrive within QA_BODY_TIMEOUT",
    409: "The index is busy or was built with other settings",
    413: "The request body is larger than QA_MAX_BODY_BYTES",
    421: "The Host header names no host served here (QA_ALLOWED_HOSTS)",
    422: "A field is missing, of the wrong type or out of range; the message names it",
    500: "Internal error (details only in the server log)",
    503: "The index is not loaded yet",
}
# Statuses any route can answer (the middleware's Host check; an unexpected failure)...
COMMON = (421, 500)
# ...those of a route that reads a JSON body...
BODY = (400, 408, 413, 422)
# ...and of an admin route.
ADMIN = (401, 403)


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error statuses, all with the ErrorBody shape."""
    return {
        status: {"model": ErrorBody, "description": _DESCRIPTIONS[status]}
        for status in sorted(set(statuses))
    }


def use_error_shape_in_schema(app: FastAPI) -> None:
    """FastAPI documents its own ``{"detail": [...]}`` for 422 on every route with
    parameters; the server sends ErrorBody. Rewrite the generated schema to say so."""
    from fastapi.openapi.utils import get_openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, summary=app.summary, routes=app.routes
            )
            ref = "#/components/schemas/ErrorBody"
            for operations in schema.get("paths", {}).values():
                for operation in operations.values():
                    for parameter in operation.get("parameters", []):
                        # an optional parameter is omitted, never null: a query string
                        # cannot carry a null, so the schema should not offer one
                        options = parameter.get("schema", {}).get("anyOf")
                        if options and {"type": "null"} in options and len(options) == 2:
                            kept = next(o for o in options if o != {"type": "null"})
                            parameter["schema"] = {
                                **{k: v for k, v in parameter["schema"].items() if k != "anyOf"},
                                **kept,
                            }
                    response = operation.get("responses", {}).get("422")
                    if response is not None:
                        response["description"] = _DESCRIPTIONS[422]
                        response["content"] = {"application/json": {"schema": {"$ref": ref}}}
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            components.setdefault("ErrorBody", ErrorBody.model_json_schema(ref_template=ref))
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message}},
        headers=headers,
    )


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path (routes may share a path: GET and POST
    /v1/ask are two routes), for the Allow header of a 405."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches({**request.scope, "method": "GET"})
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def _describe(error: dict[str, Any]) -> str:
    loc = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path")]
    field = ".".join(loc)
    kind = error.get("type", "")
    if kind == "json_invalid":
        return "request body is not valid JSON"
    if kind == "missing":
        if not field:
            return 'a JSON request body is required, e.g. {"question": "..."}'
        return f"{field} is required"
    if kind == "extra_forbidden":
        return f"{field} is not a known field"
    msg = str(error.get("msg", "is invalid"))
    msg = msg.removeprefix("Value error, ")
    return f"{field}: {msg}" if field else msg


def install_error_handlers(app: FastAPI) -> None:
    use_error_shape_in_schema(app)

    @app.exception_handler(QAError)
    async def _qa_error(_: Request, exc: QAError) -> JSONResponse:
        if exc.status_code >= 500:
            log.error("%s: %s", exc.code, exc.message)
        headers = {"WWW-Authenticate": BEARER_CHALLENGE} if isinstance(exc, Unauthorized) else None
        return error_response(exc.status_code, exc.code, exc.message, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        message = "; ".join(_describe(e) for e in errors) or "invalid request"
        if any(e.get("type") == "json_invalid" for e in errors):
            return error_response(400, "invalid_json", message)
        return error_response(422, "invalid_request", message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}
        headers = dict(exc.headers or {})
        message = str(exc.detail)
        if exc.status_code == 405:
            headers["Allow"] = _allowed_methods(request) or headers.get("Allow", "")
            message = f"{request.method} is not allowed here; use {headers['Allow']}"
        if exc.status_code == 401:
            headers.setdefault("WWW-Authenticate", BEARER_CHALLENGE)
        return error_response(
            exc.status_code, codes.get(exc.status_code, "http_error"), message, headers or None
        )

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return error_response(500, "internal_error", "internal error; see the server log")
