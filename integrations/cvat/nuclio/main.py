"""nuclio handlers for CVAT: ``main:handler`` (interactor) and ``main:detector_handler`` (detector).

Thin on purpose: request parsing and response building live in ``sqsam_cvat.common`` (shared
with the cvat-sdk functions), the model in ``sqsam_core``. The model is loaded once per worker
in ``init_context``; decoded frames are cached by the hash of the encoded frame, and the core
caches its preprocessing under the same key, so the clicks after the first on a frame only
run the network.

Bad input (bad base64, points outside the frame, no positive point, a frame over the size
limit, ...) gets HTTP 400 with ``{"error": "<one line>"}``; anything unexpected gets 500 with
the same shape (and a traceback in the function's log). The handler never raises.
"""

from __future__ import annotations

import json
import os
import traceback

from sqsam_core.errors import SqsamError, http_status
from sqsam_cvat import common

#: CVAT shows one status for every bad request (its interactor and detector protocols know no other).
BAD_INPUT_STATUS = 400


def init_context(context) -> None:
    context.logger.info("sqsam: loading the model")
    model = common.load_model()
    context.user_data.model = model
    context.user_data.frames = common.FrameCache(maxsize=int(os.environ.get("SQSAM_CVAT_FRAME_CACHE", 4)))
    context.user_data.history = common.ClickHistory(maxsize=int(os.environ.get("SQSAM_CVAT_SESSIONS", 4)))
    version = getattr(getattr(model, "spec", None), "model_version", "?")
    context.logger.info(f"sqsam: model {version} ready")


def _response(context, status: int, payload) -> object:
    return context.Response(
        body=json.dumps(payload, separators=(",", ":")),
        headers={},
        content_type="application/json",
        status_code=status,
    )


def _guarded(context, work):
    try:
        return _response(context, 200, work())
    except SqsamError as exc:  # bad request: a message CVAT (and the user) can act on
        context.logger.warn(f"sqsam: rejected request: {exc}")
        return _response(context, http_status(exc, bad_input=BAD_INPUT_STATUS), {"error": str(exc)})
    except Exception as exc:  # noqa: BLE001 -- never crash the worker
        context.logger.error(f"sqsam: internal error: {exc!r}\n{traceback.format_exc()}")
        return _response(context, http_status(exc), {"error": f"internal error in sqsam: {type(exc).__name__}: {exc}"})


def handler(context, event):
    """CVAT interactor: clicks (and an optional box) on a frame -> one mask."""

    def work():
        body = common.body_dict(event.body)
        ud = context.user_data
        frame = ud.frames.decode(body.get("image"))
        pos = common.parse_points(body.get("pos_points"), "pos_points", frame)
        neg = common.parse_points(body.get("neg_points"), "neg_points", frame)
        box = common.parse_box(body.get("obj_bbox"), frame)
        granularity = common.default_granularity(body.get("granularity"))
        pred = common.interact(ud.model, frame, pos, neg, box, ud.history, granularity)
        return common.interactor_response(pred.mask, pred.score)

    return _guarded(context, work)


def detector_handler(context, event):
    """CVAT detector: a frame -> the salient objects as masks (with polygons)."""

    def work():
        body = common.body_dict(event.body)
        ud = context.user_data
        frame = ud.frames.decode(body.get("image"))
        threshold = common.parse_threshold(body.get("threshold"))
        min_score = common.DEFAULT_MIN_SCORE if threshold is None else threshold
        objects = ud.model.automask(frame.image, max_objects=common.DEFAULT_MAX_OBJECTS, min_score=min_score)
        return common.detector_response(objects, common.DEFAULT_LABEL)

    return _guarded(context, work)
