"""Errors of the Label Studio backend, each a :class:`sqsam_core.errors.SqsamError` with a one-line message.

``status`` is the HTTP status a request that hits the error is answered with
(:func:`sqsam_core.errors.http_status` reads it); where one class covers several causes it is
given per instance: ``ImageFetchError(message, 413)``.
"""

from __future__ import annotations

from sqsam_core.errors import SqsamError


class ConfigError(SqsamError):
    """A setting (environment variable or argument) the backend cannot start with."""

    status = 400


class ApiError(SqsamError):
    """A request that does not follow the ML backend protocol: 400, or 422 where it is well-formed
    but cannot be served (no ``<Image>`` in the labeling config, a task without an image)."""

    status = 400


class RequestError(SqsamError):
    """A request over one of the backend's limits (body, JSON depth, tasks, clicks, extra_params):
    400, 413 (too large) or 422 (a bad value)."""

    status = 400


class ImageFetchError(SqsamError):
    """An image could not be fetched or decoded: 403 (refused by the fetch policy), 413 (too large),
    422 (unusable URL or image), 424 (the image host failed), 429 (too many downloads at once)."""

    status = 422


class LabelStudioError(SqsamError, RuntimeError):
    """A Label Studio process (``sqsam demo``, the end-to-end tests) failed to start or answered an
    API call with an error; the message names the process, its exit code and its log's tail."""

    status = 502
