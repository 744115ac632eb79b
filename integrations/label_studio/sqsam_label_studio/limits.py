"""Bounds on every request's work, and the checks that keep request bodies sane.

Settings (environment variables; each refused request gets a 4xx with a JSON message):

=============================  =========  ============================================================
``SQSAM_MAX_BODY_BYTES``       32 MiB     request body size (413)
``SQSAM_MAX_JSON_DEPTH``       64         nesting depth of a JSON body (400)
``SQSAM_MAX_TASKS``            100        tasks in one ``/predict`` (413)
``SQSAM_MAX_CLICKS``           64         clicks on one object (422; shared with the CLI and CVAT)
``SQSAM_MAX_OBJECTS_LIMIT``    100        the largest ``max_objects`` extra_params may ask for (422)
``SQSAM_REQUEST_DEADLINE``     60 s       a ``/predict`` stops between tasks past it (408)
=============================  =========  ============================================================
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any

from sqsam_core.prompts import DEFAULT_MAX_CLICKS

from .errors import ConfigError, RequestError


@dataclass(frozen=True)
class RequestLimits:
    max_body_bytes: int = 32 * 1024 * 1024
    max_json_depth: int = 64
    max_tasks: int = 100
    max_clicks: int = DEFAULT_MAX_CLICKS
    max_objects_limit: int = 100
    request_deadline: float = 60.0

    def __post_init__(self):
        for name in ("max_body_bytes", "max_json_depth", "max_tasks", "max_clicks", "max_objects_limit"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{_ENV[name]} must be a positive integer, got {value!r}")
        if not (isinstance(self.request_deadline, (int, float)) and math.isfinite(self.request_deadline)
                and self.request_deadline > 0):
            raise ConfigError(f"SQSAM_REQUEST_DEADLINE must be a positive number of seconds, "
                              f"got {self.request_deadline!r}")

    @classmethod
    def from_env(cls, env=os.environ) -> "RequestLimits":
        values: dict[str, Any] = {}
        for name, variable in _ENV.items():
            raw = env.get(variable)
            if raw is None or not raw.strip():
                continue
            kind = float if name == "request_deadline" else int
            try:
                values[name] = kind(raw)
            except ValueError:
                raise ConfigError(f"{variable} must be a number, got {raw!r}") from None
        return cls(**values)


_ENV = {
    "max_body_bytes": "SQSAM_MAX_BODY_BYTES",
    "max_json_depth": "SQSAM_MAX_JSON_DEPTH",
    "max_tasks": "SQSAM_MAX_TASKS",
    "max_clicks": "SQSAM_MAX_CLICKS",
    "max_objects_limit": "SQSAM_MAX_OBJECTS_LIMIT",
    "request_deadline": "SQSAM_REQUEST_DEADLINE",
}


def json_depth(value: Any, limit: int) -> int:
    """Nesting depth of a parsed JSON value (a scalar is 0), counted without recursion;
    stops counting once past ``limit``."""
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            depth += 1
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth) for child in children if isinstance(child, (dict, list)))
    return deepest


def parse_json_object(raw: bytes, limits: RequestLimits) -> dict:
    """A request body -> a JSON object, or RequestError 400/413 with a one-line reason."""
    if not raw:
        raise RequestError("the request body is empty; send a JSON object")
    if len(raw) > limits.max_body_bytes:
        raise RequestError(f"the request body is {len(raw)} bytes, over the limit of {limits.max_body_bytes} "
                           f"(SQSAM_MAX_BODY_BYTES)", 413)
    try:
        data = json.loads(raw)
    except RecursionError:
        raise RequestError(f"the JSON body is nested deeper than {limits.max_json_depth} levels "
                           f"(SQSAM_MAX_JSON_DEPTH)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(data, dict):
        raise RequestError("the request body must be a JSON object")
    if json_depth(data, limits.max_json_depth) > limits.max_json_depth:
        raise RequestError(f"the JSON body is nested deeper than {limits.max_json_depth} levels "
                           f"(SQSAM_MAX_JSON_DEPTH)")
    return data


def _finite(value: Any, what: str) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise RequestError(f"extra_params {what} must be a number, got {value[:40]!r}", 422) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(f"extra_params {what} must be a number, got {type(value).__name__}", 422)
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise RequestError(f"extra_params {what} must be a finite number", 422)
    return number


def check_extra_params(extra: dict, limits: RequestLimits) -> dict:
    """``extra_params`` with ``max_objects`` (int in 1..limit) and ``min_score`` (0..1) checked
    and normalised; other keys pass through. RequestError 422 on a bad value."""
    out = dict(extra)
    if "max_objects" in out:
        value = _finite(out["max_objects"], "max_objects")
        if value != int(value) or not 1 <= value <= limits.max_objects_limit:
            raise RequestError(f"extra_params max_objects must be an integer in 1..{limits.max_objects_limit} "
                               f"(SQSAM_MAX_OBJECTS_LIMIT), got {value:g}", 422)
        out["max_objects"] = int(value)
    if "min_score" in out:
        value = _finite(out["min_score"], "min_score")
        if not 0.0 <= value <= 1.0:
            raise RequestError(f"extra_params min_score must be in [0, 1], got {value:g}", 422)
        out["min_score"] = value
    if "label" in out and out["label"] is not None and not isinstance(out["label"], str):
        raise RequestError("extra_params label must be a string", 422)
    return out


def check_basic_auth(user: str | None, password: str | None) -> bool:
    """True when basic auth is on; ConfigError when only one of the pair is set (fail closed)."""
    if bool(user) != bool(password):
        missing = "BASIC_AUTH_PASS" if user else "BASIC_AUTH_USER"
        raise ConfigError(f"basic auth is half configured: set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or "
                          f"neither ({missing} is empty); refusing to start without the protection asked for")
    return bool(user)
