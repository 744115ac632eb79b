"""The Label Studio ML backend protocol on Flask, as Label Studio 1.23 calls it.

Routes (the ones label-studio-ml-backend's ``api.py`` serves):

* ``GET /health`` (and ``GET /``): ``{"status": "UP", "model_class": ..., "model_version": ...}``
* ``POST /setup``: ``{"project": "<id>.<ts>", "schema": <label config>, "hostname", "access_token",
  "extra_params"}`` -> ``{"model_version": ...}`` (Label Studio filters predictions by it)
* ``POST /predict``: ``{"tasks": [...], "project", "label_config", "params": {"context": ...}}``
  -> ``{"results": [{"result": [...], "score", "model_version"}, ...]}``, one per task, in order.
  Without context: salient auto-masks (pre-annotation). With context: one object from the clicks.
* ``POST /webhook``, ``POST /train``: annotation events; with ``MODEL_DIR`` set the backend fine-tunes
  a model per project from its annotations and serves it to that project (:mod:`.learning`,
  ``SQSAM_TRAIN_*`` settings); without it events are acknowledged and ignored
* ``GET /metrics``, ``GET /versions``

Errors are JSON ``{"error": message, "status": code}`` with a 4xx code for bad input.

Environment: ``LABEL_STUDIO_URL``, ``LABEL_STUDIO_API_KEY``, ``LOCAL_FILES_DOCUMENT_ROOT``,
``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS``, ``SQSAM_MODEL`` (ONNX path), ``SQSAM_LS_LABEL``
(label for pre-annotations), ``SQSAM_LS_MAX_OBJECTS`` (5), ``SQSAM_LS_MIN_SCORE`` (0.5),
``SQSAM_LS_PREANNOTATE`` (true), ``SQSAM_MAX_IMAGE_BYTES``, ``SQSAM_MAX_IMAGE_PIXELS``,
``SQSAM_IMAGE_TIMEOUT`` (seconds, a total deadline per download).

Security and limits (``integrations/label_studio/README.md``, *Security and limits*):

* basic auth fails closed: with only one of ``BASIC_AUTH_USER`` / ``BASIC_AUTH_PASS`` set,
  :func:`create_app` raises :class:`~sqsam_label_studio.errors.ConfigError` (``sqsam serve
  label-studio`` exits 2). ``GET /health`` stays open by design (the container healthcheck and
  Label Studio's connection check use it); it tells only the status and the model version, and
  the fine-tune details (``training``) only to a caller with the credentials.
  Failed logins are logged.
* the token goes only to Label Studio's origin and file paths; without ``LABEL_STUDIO_URL`` the
  first ``/setup`` hostname is pinned (:mod:`.images`).
* outbound fetches: Label Studio, ``SQSAM_ALLOWED_HOSTS`` and public addresses only
  (:mod:`.netpolicy`); ``SQSAM_MAX_FETCHES`` (2) downloads at once, ``SQSAM_FETCH_QUEUE_TIMEOUT``
  (2 s) wait for a slot, then 429.
* work per request (:mod:`.limits`): ``SQSAM_MAX_BODY_BYTES`` (32 MiB), ``SQSAM_MAX_JSON_DEPTH``
  (64), ``SQSAM_MAX_TASKS`` (100), ``SQSAM_MAX_CLICKS`` (64), ``SQSAM_MAX_OBJECTS_LIMIT`` (100),
  ``SQSAM_REQUEST_DEADLINE`` (60 s, checked between tasks).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from sqsam_core.contract import GRANULARITIES
from sqsam_core.errors import SqsamError, http_status

from .errors import ApiError, ConfigError, ImageFetchError
from .images import ImageLoader
from .labelconfig import LabelConfig, LabelConfigError, parse_label_config
from .learning import TrainSettings, make_learner
from .limits import RequestLimits, check_basic_auth, check_extra_params, parse_json_object
from .protocol import mask_regions, outputs_or_error, parse_context, prediction

logger = logging.getLogger("sqsam_label_studio")

MAX_REQUEST_BYTES = 32 * 1024 * 1024
TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATION_DELETED", "START_TRAINING")


def _env_bool(value: str | None, default: bool) -> bool:
    if value is None or value.strip() == "":
        return default
    return value.strip().lower() not in ("0", "false", "no", "off")


@dataclass
class Settings:
    label: str | None = None
    max_objects: int = 5
    granularity: str = "whole"  # what a single click selects: "whole" or "part"
    min_score: float = 0.5
    preannotate: bool = True
    polygon_tolerance: float = 1.0
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None

    @classmethod
    def from_env(cls, env=os.environ) -> "Settings":
        try:
            return cls(
                label=env.get("SQSAM_LS_LABEL") or None,
                max_objects=int(env.get("SQSAM_LS_MAX_OBJECTS", 5)),
                granularity=env.get("SQSAM_GRANULARITY") or "whole",
                min_score=float(env.get("SQSAM_LS_MIN_SCORE", 0.5)),
                preannotate=_env_bool(env.get("SQSAM_LS_PREANNOTATE"), True),
                polygon_tolerance=float(env.get("SQSAM_LS_POLYGON_TOLERANCE", 1.0)),
                basic_auth_user=env.get("BASIC_AUTH_USER") or None,
                basic_auth_pass=env.get("BASIC_AUTH_PASS") or None,
            )
        except ValueError as exc:
            raise ConfigError(f"a SQSAM_LS_* setting is not a number: {exc}") from None


class ProjectStore:
    """What ``/setup`` told us per project (bounded, thread-safe)."""

    def __init__(self, max_items: int = 1000):
        self._items: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()
        self._max = max_items

    def put(self, project_id: str, info: dict) -> None:
        with self._lock:
            self._items[project_id] = info
            self._items.move_to_end(project_id)
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def get(self, project_id: str) -> dict:
        with self._lock:
            return dict(self._items.get(project_id, {}))


def _extra_params(raw: Any) -> dict:
    if raw is None or raw == "":
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except (ValueError, RecursionError):
            raise ApiError("extra_params must be a JSON object") from None
    if not isinstance(raw, dict):
        raise ApiError("extra_params must be a JSON object")
    return raw


def _project_id(value: Any) -> str:
    return str(value).split(".", 1)[0] if value not in (None, "") else ""


def create_app(model=None, loader: ImageLoader | None = None, settings: Settings | None = None,
               limits: RequestLimits | None = None, train_settings=None):
    """The Flask app. ``model``: a :class:`sqsam_core.SqueezeSAM` (loaded here when None).

    Raises :class:`~sqsam_label_studio.errors.ConfigError` for settings it cannot start with
    (half a basic-auth pair, non-numeric limits, a malformed ``SQSAM_ALLOWED_HOSTS``).
    """
    from flask import Flask, Response, jsonify, request
    from werkzeug.exceptions import HTTPException

    settings = settings or Settings.from_env()
    auth_on = check_basic_auth(settings.basic_auth_user, settings.basic_auth_pass)
    limits = limits or RequestLimits.from_env()
    loader = loader or ImageLoader.from_env()
    if model is None:
        from sqsam_core import SqueezeSAM

        model = SqueezeSAM()
    model_version = str(getattr(getattr(model, "spec", None), "model_version", None) or "sqsam")
    projects = ProjectStore()
    learner = make_learner(model, loader, projects.get, train_settings or TrainSettings.from_env())  # MODEL_DIR

    app = Flask("sqsam_label_studio")
    app.config["MAX_CONTENT_LENGTH"] = limits.max_body_bytes
    app.json.sort_keys = False
    app.extensions["sqsam"] = {"model": model, "loader": loader, "settings": settings, "projects": projects,
                               "learner": learner}

    def error(message: str, status: int):
        return jsonify({"error": message, "status": status}), status

    @app.errorhandler(SqsamError)
    def _sqsam_error(exc: SqsamError):  # every sqsam error (ApiError, ImageFetchError, ...) carries its status
        status = http_status(exc)
        logger.info("%s %s -> %d: %s", request.method, request.path, status, exc)
        return error(str(exc), status)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        return error(exc.description or exc.name, exc.code or 500)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception):  # a bug: log it, answer without a traceback
        logger.exception("unexpected error on %s %s", request.method, request.path)
        return error(f"internal error ({type(exc).__name__}); see the sqsam backend's log", http_status(exc))

    def authenticated() -> bool:
        """The request carries the backend's basic-auth credentials (always true with auth off)."""
        if not auth_on:
            return True
        auth = request.authorization
        return (auth is not None and auth.type == "basic"
                and hmac.compare_digest((auth.username or "").encode(), settings.basic_auth_user.encode())
                and hmac.compare_digest((auth.password or "").encode(), settings.basic_auth_pass.encode()))

    @app.before_request
    def _basic_auth():
        if request.method in ("GET", "HEAD") and request.path == "/health":  # open by design
            return None
        if not authenticated():
            auth = request.authorization
            logger.warning("basic auth failed: %s %s from %s (%s)", request.method, request.path,
                           request.remote_addr, "no credentials" if auth is None else "wrong credentials")
            response = jsonify({"error": "basic authentication required", "status": 401})
            return Response(response.get_data(), 401, {"WWW-Authenticate": 'Basic realm="sqsam"',
                                                       "Content-Type": "application/json"})
        return None

    def body() -> dict:
        return parse_json_object(request.get_data(cache=True), limits)

    @app.get("/")
    @app.get("/health")
    def health():
        # Training details name projects, files and fetch errors: with auth on, only for its callers.
        details = {"training": learner.health()} if learner and authenticated() else {}
        return jsonify({"status": "UP", "model_class": type(model).__name__, "model_version": model_version, **details})

    @app.get("/metrics")
    def metrics():
        return jsonify({})

    @app.get("/versions")
    def versions():
        return jsonify({"versions": [model_version], "message": ""})

    @app.post("/setup")
    def setup():
        data = body()
        schema = data.get("schema")
        if schema is not None and not isinstance(schema, str):
            raise ApiError("'schema' must be the labeling config (XML text)")
        extra = check_extra_params(_extra_params(data.get("extra_params")), limits)
        hostname = data.get("hostname") if isinstance(data.get("hostname"), str) and data.get("hostname") else None
        if hostname is not None:  # pinned when LABEL_STUDIO_URL is unset; moved only by an authenticated caller
            loader.pin_label_studio(hostname, may_move=auth_on)
        info = {"schema": schema, "extra_params": extra, "hostname": hostname,
                "access_token": data.get("access_token") if isinstance(data.get("access_token"), str) else None}
        projects.put(_project_id(data.get("project")), info)
        if schema:
            try:
                config = parse_label_config(schema)
                if not config.outputs:
                    logger.warning("project %s: the labeling config has no BrushLabels/PolygonLabels control",
                                   data.get("project"))
            except LabelConfigError as exc:
                logger.warning("project %s: %s", data.get("project"), exc)
        return jsonify({"model_version": model_version})

    @app.post("/webhook")
    def webhook():
        data = body()
        action = data.get("action")
        if not isinstance(action, str):
            raise ApiError("a webhook event needs an 'action'")
        if action in TRAIN_EVENTS and learner:
            return jsonify(learner.on_event(action, data)), 200
        if action in TRAIN_EVENTS:
            return jsonify({"status": "ok", "result": None,
                            "message": "sqsam does not train from annotations; event ignored"}), 200
        return jsonify({"status": "Unknown event"}), 200

    @app.post("/train")
    def train():
        data = body()
        if learner:
            return jsonify(learner.on_event("START_TRAINING", data)), 200
        return jsonify({"status": "ok", "message": "sqsam does not train from annotations"}), 200

    @app.post("/predict")
    def predict():
        started = time.perf_counter()
        data = body()
        tasks = data.get("tasks")
        if not isinstance(tasks, list) or not tasks or not all(isinstance(t, dict) for t in tasks):
            raise ApiError("'tasks' must be a non-empty list of task objects")
        if len(tasks) > limits.max_tasks:
            raise ApiError(f"{len(tasks)} tasks in one request; at most {limits.max_tasks} are accepted "
                           f"(SQSAM_MAX_TASKS)", 413)
        deadline = time.monotonic() + limits.request_deadline
        params = data.get("params") or {}
        if not isinstance(params, dict):
            raise ApiError("'params' must be an object")
        project = projects.get(_project_id(data.get("project")))
        served = learner.models.served(_project_id(data.get("project"))) if learner else (model, model_version)
        xml = data.get("label_config") or project.get("schema")
        if not isinstance(xml, str) or not xml:
            raise ApiError("'label_config' (the project's labeling config) is missing")
        config = parse_label_config(xml)
        extra = dict(project.get("extra_params") or {})
        fetch = {"fallback_token": project.get("access_token")}
        prompt = parse_context(params.get("context"), limits.max_clicks)
        if prompt is not None:
            with learner.clicks_first() if learner else nullcontext():  # a fine-tune pauses for the click
                results = [_interactive(tasks[0], prompt, config, extra, fetch, deadline, *served)]
        else:
            results = _preannotate(tasks, config, extra, fetch, deadline, *served)
        elapsed = (time.perf_counter() - started) * 1000
        logger.info("predict: %d task(s), %s, %.0f ms", len(tasks), "interactive" if prompt else "automask", elapsed)
        response = jsonify({"results": results, "model_version": served[1]})
        response.headers["X-Sqsam-Elapsed-Ms"] = f"{elapsed:.1f}"
        return response

    def _image_for(task: dict, config: LabelConfig, image_name: str | None, fetch: dict):
        image = config.images.get(image_name) if image_name else None
        if image is None:
            image = config.first_target() or (next(iter(config.images.values())) if config.images else None)
        if image is None:
            raise ApiError("the labeling config has no <Image> object", 422)
        task_data = task.get("data")
        if not isinstance(task_data, dict):
            raise ApiError(f"task {task.get('id')} has no 'data' object", 422)
        url = task_data.get(image.value_key)
        if not isinstance(url, str) or not url:
            raise ApiError(f"task {task.get('id')} has no image in data[{image.value_key!r}]", 422)
        return image, loader.load(url, **fetch)

    def _granularity(extra: dict) -> str:
        """What a single click selects in this project: extra param ``granularity``, else SQSAM_GRANULARITY."""
        value = extra.get("granularity", settings.granularity)
        if value not in GRANULARITIES:
            raise ApiError(f"extra_params granularity must be one of {', '.join(GRANULARITIES)}, not {value!r}", 422)
        return value

    def _default_label(extra: dict) -> str | None:
        label = extra.get("label") or settings.label
        return str(label) if label else None

    def _check_deadline(deadline: float, done: int, total: int) -> None:
        if time.monotonic() > deadline:
            raise ApiError(f"the request ran past its {limits.request_deadline:g} s deadline after {done} of "
                           f"{total} task(s) (SQSAM_REQUEST_DEADLINE); send fewer tasks per request", 408)

    def _interactive(task: dict, prompt, config: LabelConfig, extra: dict, fetch: dict, deadline: float,
                     model=model, model_version=model_version) -> dict:  # the project's model (learning.py)
        image_name = prompt.to_name if prompt.to_name in config.images else None
        image_obj = config.images.get(image_name) if image_name else config.first_target()
        if image_obj is None:
            raise ApiError("the labeling config has no <Image> object that a BrushLabels or PolygonLabels "
                           "control points at", 422)
        outputs = outputs_or_error(config, image_obj.name)
        image_obj, image = _image_for(task, config, image_obj.name, fetch)
        if not prompt.has_positive:
            return prediction([], 0.0, model_version)
        clicks, box = prompt.to_pixels(image.width, image.height, limits.max_clicks)
        _check_deadline(deadline, 0, 1)
        run = getattr(model, "predict_history", None) or model.predict
        pred = run(image.rgb, clicks, box=box, cache_key=image.key, granularity=_granularity(extra))
        regions = []
        for control in outputs:
            label = control.pick_label(prompt.label, _default_label(extra))
            regions += mask_regions(pred.mask, pred.score, control, label, image_obj.name,
                                    settings.polygon_tolerance)
        return prediction(regions, pred.score, model_version)

    def _preannotate(tasks: list[dict], config: LabelConfig, extra: dict, fetch: dict, deadline: float,
                     model=model, model_version=model_version) -> list[dict]:
        enabled = _env_bool(str(extra["preannotate"]), True) if "preannotate" in extra else settings.preannotate
        target = config.first_target()
        if not enabled or target is None:
            return [prediction([], None, model_version) for _ in tasks]
        checked = check_extra_params({"max_objects": extra.get("max_objects", settings.max_objects),
                                      "min_score": extra.get("min_score", settings.min_score)}, limits)
        max_objects, min_score = checked["max_objects"], checked["min_score"]
        outputs = config.outputs_for(target.name)
        label = _default_label(extra)
        results, failures = [], []
        for done, task in enumerate(tasks):
            _check_deadline(deadline, done, len(tasks))
            try:
                _, image = _image_for(task, config, target.name, fetch)
                objects = model.automask(image.rgb, max_objects=max_objects, min_score=min_score,
                                         cache_key=image.key)
            except (ImageFetchError, ApiError, SqsamError) as exc:
                if len(tasks) == 1:
                    raise
                logger.warning("task %s: no pre-annotation: %s", task.get("id"), exc)
                failures.append(exc)
                results.append(prediction([], None, model_version))
                continue
            regions = []
            for obj in objects:
                for control in outputs:
                    regions += mask_regions(obj.mask, obj.score, control, control.pick_label(None, label),
                                            target.name, settings.polygon_tolerance)
            score = sum(o.score for o in objects) / len(objects) if objects else 0.0
            results.append(prediction(regions, score, model_version))
        if failures and len(failures) == len(tasks):
            raise failures[0]
        return results

    return app
