"""Errors sqsam raises on bad input. Adapters map them to HTTP 4xx / CLI exit codes.

Every message is one line a person can act on; none of these should surface as a traceback.
"""


class SqsamError(ValueError):
    """Base class: bad input or a bad model file, never a bug in sqsam."""


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


class BenchError(SqsamError):
    """A ``sqsam bench`` option or input that is the user's to fix."""
