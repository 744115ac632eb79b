"""sqsam's one error hierarchy: every error sqsam and its adapters raise for a reason the caller can
act on is a :class:`SqsamError`, and carries the HTTP status it is answered with.

Every message is one line a person can act on; none of these should surface as a traceback.
The command line prints ``sqsam: error: <message>`` and exits 2; the HTTP adapters (the Label
Studio backend, the CVAT nuclio function) answer with :func:`http_status` and a JSON message.
Adapter-specific errors live beside their adapter (``sqsam_label_studio.errors``), as subclasses.
"""

from __future__ import annotations


class SqsamError(ValueError):
    """Base class: bad input or a bad model file, never a bug in sqsam.

    ``status``: the HTTP status of a request that hits it; a class attribute (422 here, the
    request was understood but cannot be done), or per instance: ``SqsamError(message, status=413)``.
    """

    status: int = 422

    def __init__(self, message: str = "", status: int | None = None):
        super().__init__(message)
        if status is not None:
            self.status = status


def http_status(exc: BaseException, bad_input: int | None = None) -> int:
    """The HTTP status an adapter answers ``exc`` with: every adapter maps errors through this.

    A :class:`SqsamError` gets its ``status`` (a 4xx or 5xx; anything else counts as 422); an
    adapter whose protocol has one status for every bad input (CVAT's nuclio functions answer
    400) passes it as ``bad_input`` and it replaces every 4xx. Any other exception is a bug: 500.
    """
    if not isinstance(exc, SqsamError):
        return 500
    status = exc.status if isinstance(exc.status, int) and 400 <= exc.status < 600 else 422
    return bad_input if bad_input is not None and status < 500 else status


class InvalidImageError(SqsamError):
    """The image cannot be decoded, is empty, truncated, too large, or of an unusable shape."""


class ImageTooLargeError(InvalidImageError):
    """The image is over the pixel limit (or a decompression bomb): refused before decoding."""


class InvalidPromptError(SqsamError):
    """Clicks, box or previous mask are malformed (NaN, outside the image, wrong shape)."""


class ModelFileError(SqsamError):
    """The ONNX model file is missing, corrupt, or does not follow the model contract."""


class CliError(SqsamError):
    """A command-line problem that is the user's to fix (bad paths, bad option values)."""

    status = 400


class BenchError(SqsamError):
    """A ``sqsam bench`` option or input that is the user's to fix."""

    status = 400
