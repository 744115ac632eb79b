"""Errors of the Label Studio backend, each a :class:`sqsam_core.errors.SqsamError` with a one-line message.

``status`` is the HTTP status a request that hits the error is answered with.
"""

from __future__ import annotations

from sqsam_core.errors import SqsamError


class ConfigError(SqsamError):
    """A setting (environment variable or argument) the backend cannot start with."""

    status = 400


class ImageFetchError(SqsamError):
    """An image could not be fetched or decoded: 403 (refused by the fetch policy), 413 (too large),
    422 (unusable URL or image), 424 (the image host failed), 429 (too many downloads at once)."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status
