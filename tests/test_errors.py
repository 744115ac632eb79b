"""One error hierarchy: every error sqsam and its adapters raise is a SqsamError with an HTTP status,
and one function (sqsam_core.errors.http_status) maps errors to statuses for both HTTP adapters."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

from sqsam_core import errors
from sqsam_core.errors import (
    BenchError,
    CliError,
    ImageTooLargeError,
    InvalidImageError,
    InvalidPromptError,
    ModelFileError,
    SqsamError,
    http_status,
)

#: Exceptions used for control flow inside one module, never raised to a caller.
CONTROL_FLOW = {"sqsam_train.finetune.Interrupted"}


def test_statuses():
    assert http_status(SqsamError("x")) == 422
    assert http_status(InvalidPromptError("x")) == 422 and http_status(InvalidImageError("x")) == 422
    assert http_status(ImageTooLargeError("x")) == 422 and http_status(ModelFileError("x")) == 422
    assert http_status(CliError("x")) == 400 and http_status(BenchError("x")) == 400
    assert http_status(SqsamError("x", status=413)) == 413 and http_status(SqsamError("x", 429)) == 429
    assert http_status(SqsamError("x", status=200)) == 422  # a success is not an error's status
    assert http_status(RuntimeError("x")) == 500 and http_status(KeyError("x")) == 500
    # an adapter with a single bad-input status (CVAT's nuclio functions: 400)
    assert http_status(SqsamError("x", status=413), bad_input=400) == 400
    assert http_status(SqsamError("x", status=503), bad_input=400) == 503
    assert http_status(ValueError("x"), bad_input=400) == 500


def test_message_and_status_survive():
    exc = SqsamError("one line", 413)
    assert str(exc) == "one line" and exc.status == 413 and isinstance(exc, ValueError)
    assert SqsamError("x").status == 422 and SqsamError.status == 422  # per instance, not per class


def test_label_studio_errors_are_sqsam_errors():
    pytest.importorskip("flask", reason="the label-studio extra is not installed")
    from sqsam_label_studio import app, images, limits, lsproc
    from sqsam_label_studio import errors as ls_errors

    assert app.ApiError is ls_errors.ApiError and images.ImageFetchError is ls_errors.ImageFetchError
    assert limits.RequestError is ls_errors.RequestError and lsproc.LabelStudioError is ls_errors.LabelStudioError
    assert http_status(ls_errors.ApiError("x")) == 400 and http_status(ls_errors.ApiError("x", 422)) == 422
    assert http_status(ls_errors.ImageFetchError("x")) == 422
    assert http_status(ls_errors.ImageFetchError("x", 424)) == 424
    assert http_status(ls_errors.RequestError("x", 413)) == 413 and http_status(ls_errors.ConfigError("x")) == 400
    assert isinstance(ls_errors.LabelStudioError("x"), RuntimeError) and http_status(ls_errors.LabelStudioError("x")) == 502


def _modules(package: str):
    root = importlib.import_module(package)
    yield root
    for info in pkgutil.walk_packages(root.__path__, package + "."):
        if info.name.endswith(("__main__", ".dask_worker", ".sam_export")):
            continue  # entry scripts, or modules that need an optional package at import (dask, torch)
        yield importlib.import_module(info.name)


@pytest.mark.parametrize("package", ["sqsam_core", "sqsam_label_studio", "sqsam_cvat"])
def test_every_error_class_is_a_sqsam_error(package):
    if package == "sqsam_label_studio":
        pytest.importorskip("flask", reason="the label-studio extra is not installed")
    if package == "sqsam_cvat":
        pytest.importorskip("cvat_sdk", reason="the cvat extra is not installed")
    found = []
    for module in _modules(package):
        for name, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ != module.__name__ or not issubclass(cls, BaseException):
                continue
            found.append(name)
            if f"{cls.__module__}.{name}" not in CONTROL_FLOW:
                assert issubclass(cls, SqsamError), f"{cls.__module__}.{name} is not a SqsamError"
                assert isinstance(cls.status, int) and 400 <= cls.status < 600, f"{cls.__module__}.{name}"
    if package != "sqsam_cvat":
        assert found


def test_core_error_module_names_every_core_error():
    names = {name for name, cls in inspect.getmembers(errors, inspect.isclass) if issubclass(cls, SqsamError)}
    assert {"SqsamError", "InvalidImageError", "ImageTooLargeError", "InvalidPromptError", "ModelFileError",
            "CliError", "BenchError"} <= names
