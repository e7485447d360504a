"""The one error hierarchy of qa. Each error knows its HTTP status and a stable code."""

from __future__ import annotations


class QAError(Exception):
    """Base of every error qa raises on purpose. The message says what to do."""

    status_code = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(QAError):
    """A request or argument that cannot be served as given."""

    status_code = 422
    code = "invalid_request"


class NotFound(QAError):
    status_code = 404
    code = "not_found"


class IndexNotReady(QAError):
    """No index is loaded yet (or none exists)."""

    status_code = 503
    code = "index_not_ready"


class IndexMismatch(QAError):
    """The index on disk was built with other settings than the configured ones."""

    status_code = 409
    code = "index_mismatch"


class IndexCorrupt(QAError):
    """A file of the index is missing, truncated or fails its checksum."""

    status_code = 500
    code = "index_corrupt"


class IndexBusy(QAError):
    """Another build or update holds the index lock."""

    status_code = 409
    code = "index_busy"


class ModelLoadError(QAError):
    status_code = 500
    code = "model_load_error"


class Unauthorized(QAError):
    status_code = 401
    code = "unauthorized"


class Forbidden(QAError):
    status_code = 403
    code = "forbidden"


class UnknownModel(NotFound):
    """A chat request names a model this server does not serve."""

    code = "model_not_found"
