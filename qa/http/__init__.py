"""The HTTP layer: translates requests to Engine calls and results to JSON."""

from qa.http.app import create_app

__all__ = ["create_app"]
