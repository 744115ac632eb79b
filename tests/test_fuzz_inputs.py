"""Table-driven fuzz suite: bad inputs over every interface get a clear error, never a 5xx or a traceback.

* Label Studio backend: the real Flask app served by werkzeug on 127.0.0.1, raw bytes sent with
  ``http.client`` (and a part again through Flask's test client). Each case: a 4xx, a JSON body
  ``{"error": <message>, "status": <code>}``.
* CVAT: the nuclio handlers (``main.py``, nuclio-sdk's test platform) -> 400 with ``{"error"}``;
  the cvat-sdk interaction function -> an ``InvalidPromptError`` with a one-line message.
* CLI: ``sqsam predict`` in a subprocess -> exit 2 and exactly one line ``sqsam: error: ...``.

No case sends traffic off the machine: URLs that would need a DNS lookup are refused before it
or name loopback addresses.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("flask", reason="the label-studio extra (flask) is not installed")

from sqsam_label_studio.app import Settings, create_app  # noqa: E402
from sqsam_label_studio.images import ImageLoader  # noqa: E402
from sqsam_label_studio.limits import RequestLimits  # noqa: E402
from sqsam_label_studio.lsproc import BackgroundServer  # noqa: E402
from tests.conftest import build_fixture_model  # noqa: E402
from tests.netfixtures import REPO  # noqa: E402
from tests.test_label_studio_backend import BRUSH, ComponentModel, huge_png, keypoint, rectangle  # noqa: E402

BODY_LIMIT = 1024 * 1024


def png_b64(width: int = 120, height: int = 90) -> str:
    image = np.full((height, width, 3), 60, np.uint8)
    image[20:50, 30:70] = (220, 30, 30)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


IMAGE_URL = "data:image/png;base64," + png_b64()


def task(image=IMAGE_URL, **extra):
    return {"id": 1, "data": {"image": image}, **extra}


def predict(tasks=None, context=None, config=BRUSH, **extra) -> dict:
    body = {"tasks": [task()] if tasks is None else tasks, "project": "1.1", "label_config": config,
            "params": {"context": context}}
    body.update(extra)
    return body


def ctx(*items) -> dict:
    return {"result": list(items)}


def kp(x=50.0, y=50.0, **value_extra):
    item = keypoint(x, y)
    item["value"].update(value_extra)
    return item


def nested(depth: int, open_: str = "[", close: str = "]") -> bytes:
    return (open_ * depth + close * depth).encode()


def raw_with(path_body: dict, old: str, new: str) -> bytes:
    text = json.dumps(path_body)
    assert old in text, old
    return text.replace(old, new, 1).encode()


# (id, method, path, body: dict | bytes | None, content type)
LS_CASES = [
    # --- the body itself
    ("empty-body", "POST", "/predict", b"", "application/json"),
    ("truncated-json", "POST", "/predict", b'{"tasks": [', "application/json"),
    ("json-array", "POST", "/predict", b"[1, 2]", "application/json"),
    ("json-null", "POST", "/predict", b"null", "application/json"),
    ("json-number", "POST", "/predict", b"123", "application/json"),
    ("json-string", "POST", "/predict", b'"tasks"', "application/json"),
    ("invalid-utf8", "POST", "/predict", b"\xff\xfe\xfd", "application/json"),
    ("utf16-bom", "POST", "/predict", '{"tasks": []}'.encode("utf-16"), "application/json"),
    ("form-encoded", "POST", "/predict", b"tasks=1&label_config=x", "application/x-www-form-urlencoded"),
    ("nested-50000-lists", "POST", "/predict", nested(50000), "application/json"),
    ("nested-50000-objects", "POST", "/predict", b'{"a":' * 50000 + b"1" + b"}" * 50000, "application/json"),
    ("nested-100", "POST", "/predict", b'{"tasks": ' + nested(100) + b"}", "application/json"),
    ("nested-setup", "POST", "/setup", b'{"schema": ' + nested(20000) + b"}", "application/json"),
    ("nested-webhook", "POST", "/webhook", b'{"action": ' + nested(20000) + b"}", "application/json"),
    ("nested-in-task-data", "POST", "/predict", raw_with(predict(), '"image": "data', '"deep": ' + "[" * 3000
                                                          + "]" * 3000 + ', "image": "data'), "application/json"),
    ("over-body-limit", "POST", "/predict", b'{"pad": "' + b"x" * (BODY_LIMIT + 10) + b'"}', "application/json"),
    ("int-5000-digits", "POST", "/predict", b'{"tasks": [{"id": 1' + b"0" * 5000 + b"}]}", "application/json"),
    ("duplicate-keys-bad-last", "POST", "/predict", b'{"tasks": [{"id": 1}], "tasks": "x"}', "application/json"),
    # --- tasks
    ("tasks-missing", "POST", "/predict", {"label_config": BRUSH}, None),
    ("tasks-empty", "POST", "/predict", predict(tasks=[]), None),
    ("tasks-string", "POST", "/predict", predict(tasks="x"), None),
    ("tasks-numbers", "POST", "/predict", predict(tasks=[1, 2]), None),
    ("tasks-nulls", "POST", "/predict", predict(tasks=[None]), None),
    ("tasks-object", "POST", "/predict", predict(tasks={"id": 1}), None),
    ("tasks-over-limit", "POST", "/predict", predict(tasks=[{"id": i, "data": {}} for i in range(101)]), None),
    ("tasks-20000", "POST", "/predict", predict(tasks=[{}] * 20000), None),
    ("task-data-missing", "POST", "/predict", predict(tasks=[{"id": 1}]), None),
    ("task-data-string", "POST", "/predict", predict(tasks=[{"id": 1, "data": "x"}]), None),
    ("task-image-missing", "POST", "/predict", predict(tasks=[{"id": 1, "data": {"img": IMAGE_URL}}]), None),
    ("task-image-number", "POST", "/predict", predict(tasks=[task(image=12)]), None),
    ("task-image-empty", "POST", "/predict", predict(tasks=[task(image="")]), None),
    ("task-image-list", "POST", "/predict", predict(tasks=[task(image=[IMAGE_URL])]), None),
    # --- image URLs
    ("url-file", "POST", "/predict", predict(tasks=[task(image="file:///etc/passwd")]), None),
    ("url-s3", "POST", "/predict", predict(tasks=[task(image="s3://bucket/key.png")]), None),
    ("url-ftp", "POST", "/predict", predict(tasks=[task(image="ftp://127.0.0.1/a.png")]), None),
    ("url-javascript", "POST", "/predict", predict(tasks=[task(image="javascript:alert(1)")]), None),
    ("url-gopher", "POST", "/predict", predict(tasks=[task(image="gopher://127.0.0.1:6379/_INFO")]), None),
    ("url-protocol-relative", "POST", "/predict", predict(tasks=[task(image="//127.0.0.1/a.png")]), None),
    ("url-relative-no-ls", "POST", "/predict", predict(tasks=[task(image="/data/upload/1/a.png")]), None),
    ("url-relative-word", "POST", "/predict", predict(tasks=[task(image="images/a.png")]), None),
    ("url-loopback", "POST", "/predict", predict(tasks=[task(image="http://127.0.0.1:1/a.png")]), None),
    ("url-loopback-v6", "POST", "/predict", predict(tasks=[task(image="http://[::1]:1/a.png")]), None),
    ("url-metadata", "POST", "/predict", predict(tasks=[task(image="http://169.254.169.254/latest/meta-data/")]), None),
    ("url-private", "POST", "/predict", predict(tasks=[task(image="http://10.0.0.1/a.png")]), None),
    ("url-localhost", "POST", "/predict", predict(tasks=[task(image="http://localhost:1/a.png")]), None),
    ("url-zero", "POST", "/predict", predict(tasks=[task(image="http://0.0.0.0:1/a.png")]), None),
    ("url-decimal-ip", "POST", "/predict", predict(tasks=[task(image="http://2130706433:1/a.png")]), None),
    ("url-mapped-v6", "POST", "/predict", predict(tasks=[task(image="http://[::ffff:7f00:1]:1/a.png")]), None),
    ("url-userinfo", "POST", "/predict", predict(tasks=[task(image="http://user:pw@127.0.0.1:1/a.png")]), None),
    ("url-bad-port", "POST", "/predict", predict(tasks=[task(image="http://127.0.0.1:99999/a.png")]), None),
    ("url-crlf", "POST", "/predict", predict(tasks=[task(image="http://127.0.0.1/a.png\r\nX-Injected: 1")]), None),
    ("url-nul", "POST", "/predict", predict(tasks=[task(image="http://127.0.0.1/a\x00.png")]), None),
    ("url-bracket", "POST", "/predict", predict(tasks=[task(image="http://[127.0.0.1/a.png")]), None),
    ("local-files-nul", "POST", "/predict", predict(tasks=[task(image="/data/local-files/?d=a%00b.png")]), None),
    ("local-files-traversal", "POST", "/predict",
     predict(tasks=[task(image="/data/local-files/?d=../../etc/passwd")]), None),
    ("local-files-empty", "POST", "/predict", predict(tasks=[task(image="/data/local-files/?d=")]), None),
    ("local-files-long", "POST", "/predict", predict(tasks=[task(image="/data/local-files/?d=" + "a" * 5000)]), None),
    ("data-url-not-base64", "POST", "/predict", predict(tasks=[task(image="data:image/png;base64,!!!")]), None),
    ("data-url-plain", "POST", "/predict", predict(tasks=[task(image="data:text/plain,hello")]), None),
    ("data-url-not-image", "POST", "/predict",
     predict(tasks=[task(image="data:image/png;base64," + base64.b64encode(b"not an image").decode())]), None),
    ("data-url-bomb", "POST", "/predict",
     predict(tasks=[task(image="data:image/png;base64," + base64.b64encode(huge_png()).decode())]), None),
    ("data-url-empty", "POST", "/predict", predict(tasks=[task(image="data:image/png;base64,")]), None),
    # --- label config
    ("config-missing", "POST", "/predict", {"tasks": [task()]}, None),
    ("config-number", "POST", "/predict", predict(config=123), None),
    ("config-truncated", "POST", "/predict", predict(config="<View><Image", context=ctx(kp())), None),
    ("config-empty-view", "POST", "/predict", predict(config="<View/>", context=ctx(kp())), None),
    ("config-entities", "POST", "/predict",
     predict(config='<!DOCTYPE x [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]><View>&b;</View>', context=ctx(kp())), None),
    ("config-external-entity", "POST", "/predict",
     predict(config='<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><View>&e;</View>', context=ctx(kp())), None),
    ("config-lone-surrogate", "POST", "/predict", raw_with(predict(context=ctx(kp())), "<View>", "<View>\\ud800"),
     "application/json"),
    # --- params and the interactive context
    ("params-string", "POST", "/predict", {**predict(), "params": "x"}, None),
    ("params-list", "POST", "/predict", {**predict(), "params": [1]}, None),
    ("context-string", "POST", "/predict", predict(context="abc"), None),
    ("context-result-string", "POST", "/predict", predict(context={"result": "abc"}), None),
    ("context-result-empty", "POST", "/predict", predict(context={"result": []}), None),
    ("context-no-result", "POST", "/predict", predict(context={"foo": 1}), None),
    ("context-result-numbers", "POST", "/predict", predict(context={"result": [1, 2]}), None),
    ("keypoint-value-missing", "POST", "/predict", predict(context=ctx({"type": "keypointlabels"})), None),
    ("keypoint-value-string", "POST", "/predict", predict(context=ctx({"type": "keypointlabels", "value": "x"})), None),
    ("keypoint-x-missing", "POST", "/predict", predict(context=ctx({"type": "keypointlabels", "value": {"y": 5}})), None),
    ("keypoint-x-string", "POST", "/predict", predict(context=ctx(kp(x="abc"))), None),
    ("keypoint-x-null", "POST", "/predict", predict(context=ctx(kp(x=None))), None),
    ("keypoint-x-bool", "POST", "/predict", predict(context=ctx(kp(x=True))), None),
    ("keypoint-x-list", "POST", "/predict", predict(context=ctx(kp(x=[1]))), None),
    ("keypoint-x-object", "POST", "/predict", predict(context=ctx(kp(x={"a": 1}))), None),
    ("keypoint-x-negative", "POST", "/predict", predict(context=ctx(kp(x=-5.0))), None),
    ("keypoint-x-over-100", "POST", "/predict", predict(context=ctx(kp(x=100.5))), None),
    ("keypoint-x-huge", "POST", "/predict", predict(context=ctx(kp(x=1e308))), None),
    ("keypoint-x-nan", "POST", "/predict", raw_with(predict(context=ctx(kp(x=12.25))), '"x": 12.25', '"x": NaN'),
     "application/json"),
    ("keypoint-x-infinity", "POST", "/predict",
     raw_with(predict(context=ctx(kp(x=12.25))), '"x": 12.25', '"x": -Infinity'), "application/json"),
    ("keypoint-x-1e999", "POST", "/predict", raw_with(predict(context=ctx(kp(x=12.25))), '"x": 12.25', '"x": 1e999'),
     "application/json"),
    ("keypoint-x-nan-string", "POST", "/predict", predict(context=ctx(kp(x="nan"))), None),
    ("keypoints-over-limit", "POST", "/predict", predict(context=ctx(*[kp(10 + i % 80, 20) for i in range(65)])), None),
    ("keypoints-10000", "POST", "/predict", predict(context=ctx(*[kp(50, 50)] * 10000)), None),
    ("rectangle-zero-size", "POST", "/predict", predict(context=ctx(rectangle(10, 10, 0, 0))), None),
    ("rectangle-zero-width", "POST", "/predict", predict(context=ctx(rectangle(10, 10, 0, 30))), None),
    ("rectangle-sub-pixel", "POST", "/predict", predict(context=ctx(rectangle(10, 10, 0.2, 30))), None),
    ("rectangle-negative", "POST", "/predict", predict(context=ctx(rectangle(10, 10, -5, 10))), None),
    ("rectangle-past-edge", "POST", "/predict", predict(context=ctx(rectangle(90, 10, 30, 10))), None),
    ("rectangle-height-string", "POST", "/predict", predict(context=ctx(rectangle(10, 10, 20, "tall"))), None),
    # --- /setup and extra_params
    ("setup-schema-number", "POST", "/setup", {"project": "1.1", "schema": 5}, None),
    ("setup-extra-not-json", "POST", "/setup", {"project": "1.1", "schema": BRUSH, "extra_params": "{oops"}, None),
    ("setup-extra-list", "POST", "/setup", {"project": "1.1", "schema": BRUSH, "extra_params": [1]}, None),
    ("setup-extra-deep-string", "POST", "/setup",
     {"project": "1.1", "schema": BRUSH, "extra_params": "[" * 50000 + "]" * 50000}, None),
    ("setup-max-objects-infinity", "POST", "/setup",
     raw_with({"project": "1.1", "schema": BRUSH, "extra_params": {"max_objects": 7}}, "7", "Infinity"),
     "application/json"),
    ("setup-max-objects-nan", "POST", "/setup",
     raw_with({"project": "1.1", "schema": BRUSH, "extra_params": {"max_objects": 7}}, "7", "NaN"), "application/json"),
    ("setup-max-objects-1e999", "POST", "/setup",
     raw_with({"project": "1.1", "schema": BRUSH, "extra_params": {"max_objects": 7}}, "7", "1e999"), "application/json"),
    ("setup-max-objects-string-inf", "POST", "/setup",
     {"project": "1.1", "schema": BRUSH, "extra_params": {"max_objects": "inf"}}, None),
    ("setup-max-objects-zero", "POST", "/setup", {"project": "1", "schema": BRUSH, "extra_params": {"max_objects": 0}}, None),
    ("setup-max-objects-huge", "POST", "/setup",
     {"project": "1", "schema": BRUSH, "extra_params": {"max_objects": 10 ** 9}}, None),
    ("setup-max-objects-fraction", "POST", "/setup",
     {"project": "1", "schema": BRUSH, "extra_params": {"max_objects": 2.5}}, None),
    ("setup-max-objects-list", "POST", "/setup", {"project": "1", "schema": BRUSH, "extra_params": {"max_objects": [5]}}, None),
    ("setup-min-score-2", "POST", "/setup", {"project": "1", "schema": BRUSH, "extra_params": {"min_score": 2}}, None),
    ("setup-min-score-string", "POST", "/setup", {"project": "1", "schema": BRUSH, "extra_params": {"min_score": "hi"}}, None),
    ("setup-label-object", "POST", "/setup", {"project": "1", "schema": BRUSH, "extra_params": {"label": {"a": 1}}}, None),
    ("setup-hostname-ftp", "POST", "/setup", {"project": "1", "schema": BRUSH, "hostname": "ftp://127.0.0.1"}, None),
    ("setup-hostname-junk", "POST", "/setup", {"project": "1", "schema": BRUSH, "hostname": "::::"}, None),
    # --- webhook
    ("webhook-no-action", "POST", "/webhook", {"project": 1}, None),
    ("webhook-action-number", "POST", "/webhook", {"action": 5}, None),
    ("webhook-empty", "POST", "/webhook", b"", "application/json"),
    # --- routes and methods
    ("get-predict", "GET", "/predict", None, None),
    ("put-setup", "PUT", "/setup", {"a": 1}, None),
    ("post-health", "POST", "/health", {"a": 1}, None),
    ("unknown-route", "GET", "/admin", None, None),
    ("unknown-route-deep", "GET", "/" + "a/" * 2000, None, None),
]


def _body_bytes(body, content_type):
    if isinstance(body, (bytes, bytearray)):
        return bytes(body), content_type or "application/json"
    if body is None:
        return None, None
    return json.dumps(body).encode(), content_type or "application/json"


def _fuzz_app():
    loader = ImageLoader(document_root=str(REPO / "tests"))
    return create_app(model=ComponentModel(), loader=loader, settings=Settings(),
                      limits=RequestLimits(max_body_bytes=BODY_LIMIT))


@pytest.fixture(scope="module")
def ls_server():
    with BackgroundServer(_fuzz_app()) as server:
        yield server


def check_json_4xx(status: int, raw: bytes, case: str) -> dict:
    assert 400 <= status < 500, (case, status, raw[:300])
    body = json.loads(raw)
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"].strip(), (case, body)
    assert "Traceback" not in body["error"] and "internal error" not in body["error"], (case, body)
    assert "\n" not in body["error"], (case, body)
    return body


@pytest.mark.parametrize("case, method, path, body, content_type", LS_CASES, ids=[c[0] for c in LS_CASES])
def test_label_studio_over_http(ls_server, case, method, path, body, content_type):
    data, ctype = _body_bytes(body, content_type)
    host, port = ls_server.url.split("//")[1].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.putrequest(method, path)
        if ctype:
            conn.putheader("Content-Type", ctype)
        conn.putheader("Content-Length", str(len(data or b"")))
        conn.endheaders()
        try:
            for start in range(0, len(data or b""), 1 << 20):
                conn.send(data[start:start + (1 << 20)])
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered (413) and closed before reading a body over its limit
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    check_json_4xx(response.status, raw, case)


def test_the_suite_is_large_enough():
    assert len(LS_CASES) + len(CVAT_CASES) + len(SDK_CASES) + len(CLI_CASES) >= 100


SAMPLE = [c for c in LS_CASES if c[0].startswith(("nested", "keypoint", "setup-max", "local-files", "url-"))]


@pytest.mark.parametrize("case, method, path, body, content_type", SAMPLE, ids=[c[0] for c in SAMPLE])
def test_label_studio_test_client(case, method, path, body, content_type):
    """The same cases through Flask's test client (no server): the same 4xx JSON answers."""
    client = _fuzz_app().test_client()
    data, ctype = _body_bytes(body, content_type)
    response = client.open(path, method=method, data=data, content_type=ctype)
    check_json_4xx(response.status_code, response.get_data(), case)


def test_preannotation_after_a_refused_setup_still_works(ls_server):
    """max_objects: Infinity used to be stored by /setup and crash the next pre-annotation (500)."""
    client = _fuzz_app().test_client()
    raw = raw_with({"project": "9.1", "schema": BRUSH, "extra_params": {"max_objects": 7}}, "7", "Infinity")
    assert client.post("/setup", data=raw, content_type="application/json").status_code == 422
    r = client.post("/predict", json={"tasks": [task()], "project": "9.1", "label_config": BRUSH})
    assert r.status_code == 200 and len(r.get_json()["results"]) == 1


# ---------------------------------------------------------------------------------------------
# CVAT: the nuclio handlers and the cvat-sdk interaction function
# ---------------------------------------------------------------------------------------------

FRAME = png_b64(100, 50)
HUGE_FRAME = base64.b64encode(huge_png()).decode()


def ib(**over):
    body = {"image": FRAME, "pos_points": [[10, 10]], "neg_points": [], "obj_bbox": None}
    body.update(over)
    return body


CVAT_CASES = [
    ("body-not-json", "handler", b"{oops"),
    ("body-list", "handler", b"[1, 2]"),
    ("body-deep", "handler", nested(50000)),
    ("body-empty", "handler", b""),
    ("image-missing", "handler", {"pos_points": [[1, 1]]}),
    ("image-number", "handler", ib(image=5)),
    ("image-not-base64", "handler", ib(image="!!!")),
    ("image-garbage", "handler", ib(image=base64.b64encode(b"garbage bytes").decode())),
    ("image-bomb", "handler", ib(image=HUGE_FRAME)),
    ("image-empty", "handler", ib(image="")),
    ("pos-string", "handler", ib(pos_points="12,3")),
    ("pos-short-pair", "handler", ib(pos_points=[[1]])),
    ("pos-triple", "handler", ib(pos_points=[[1, 2, 3]])),
    ("pos-string-coord", "handler", ib(pos_points=[["1", 2]])),
    ("pos-bool", "handler", ib(pos_points=[[True, 2]])),
    ("pos-null", "handler", ib(pos_points=[[None, 2]])),
    ("pos-negative", "handler", ib(pos_points=[[-5, 10]])),
    ("pos-outside", "handler", ib(pos_points=[[101, 10]])),
    ("pos-huge", "handler", ib(pos_points=[[1e308, 10]])),
    ("pos-big-int", "handler", ib(pos_points=[[10 ** 400, 10]])),
    ("pos-too-many", "handler", ib(pos_points=[[i % 100, 5] for i in range(65)])),
    ("pos-and-neg-too-many", "handler", ib(pos_points=[[5, 5]] * 40, neg_points=[[6, 6]] * 40)),
    ("no-positive", "handler", ib(pos_points=[], neg_points=[[5, 5]])),
    ("box-zero-size", "handler", ib(pos_points=[], obj_bbox=[[10, 10], [10, 10]])),
    ("box-flat", "handler", ib(pos_points=[], obj_bbox=[[10, 10], [40, 10.5]])),
    ("box-outside", "handler", ib(obj_bbox=[[10, 10], [200, 40]])),
    ("box-negative", "handler", ib(obj_bbox=[[-10, 10], [20, 40]])),
    ("box-one-corner", "handler", ib(obj_bbox=[[10, 10]])),
    ("box-string", "handler", ib(obj_bbox="10,10,20,20")),
    ("detector-no-image", "detector_handler", {"threshold": 0.5}),
    ("detector-threshold-string", "detector_handler", {"image": FRAME, "threshold": "high"}),
    ("detector-threshold-2", "detector_handler", {"image": FRAME, "threshold": 2}),
    ("detector-threshold-list", "detector_handler", {"image": FRAME, "threshold": [0.5]}),
    ("detector-threshold-inf-string", "detector_handler", {"image": FRAME, "threshold": "inf"}),
]


@pytest.fixture(scope="module")
def nuclio_function(tmp_path_factory):
    pytest.importorskip("nuclio_sdk")
    from tests.test_cvat_nuclio import Function

    mp = pytest.MonkeyPatch()
    try:
        yield Function(build_fixture_model(tmp_path_factory.mktemp("nuclio") / "fixture.onnx"), mp)
    finally:
        mp.undo()


@pytest.mark.parametrize("case, handler, body", CVAT_CASES, ids=[c[0] for c in CVAT_CASES])
def test_cvat_nuclio_handlers(nuclio_function, case, handler, body):
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    status, payload = nuclio_function.call(handler, body)
    assert status == 400, (case, status, payload)
    assert isinstance(payload.get("error"), str) and payload["error"] and "\n" not in payload["error"], payload


SDK_CASES = [
    ("negative", [(-5, 10)], [], None),
    ("outside", [(150, 10)], [], None),
    ("nan", [(float("nan"), 10)], [], None),
    ("inf", [(float("inf"), 10)], [], None),
    ("too-many", [(5, 5)] * 65, [], None),
    ("zero-box", [], [], [10, 10, 10, 10]),
    ("box-outside", [(5, 5)], [], [10, 10, 500, 40]),
    ("only-negative", [], [(5, 5)], None),
]


@pytest.mark.parametrize("case, pos, neg, box", SDK_CASES, ids=[c[0] for c in SDK_CASES])
def test_cvat_sdk_interaction(tmp_path, case, pos, neg, box):
    pytest.importorskip("cvat_sdk.auto_annotation")
    from types import SimpleNamespace

    from sqsam_core.errors import InvalidPromptError
    from sqsam_cvat.interaction import SqueezeSAMInteraction

    function = SqueezeSAMInteraction(str(build_fixture_model(tmp_path / "fixture.onnx")))
    frame = function.preprocess_image(None, Image.fromarray(np.zeros((50, 100, 3), np.uint8)))
    prompts = SimpleNamespace(pos_points=pos, neg_points=neg, bounding_box=box)
    with pytest.raises(InvalidPromptError) as info:
        function.detect(None, frame, prompts)
    assert str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# CLI (subprocess): exit 2, one line
# ---------------------------------------------------------------------------------------------

CLI_CASES = [
    ("click-negative-separate", ["--click", "-5,10"], "outside"),
    ("click-negative-equals", ["--click=-5,10"], "outside"),
    ("click-negative-both", ["--click", "-5,-10"], "outside"),
    ("click-huge", ["--click", "1e999,5"], "finite"),
    ("click-nan", ["--click", "nan,5"], "finite"),
    ("click-one-number", ["--click", "5"], "X,Y"),
    ("click-words", ["--click", "a,b"], "not a number"),
    ("click-sign", ["--click", "5,5,?"], "+ or -"),
    ("click-empty", ["--click", ""], "X,Y"),
    ("clicks-too-many", [a for i in range(65) for a in ("--click", f"{i % 60},5")], "at most"),
    ("box-zero-size", ["--box", "10,10,10,10"], "encloses no area"),
    ("box-flat", ["--box", "10,10,40,10.5"], "encloses no area"),
    ("box-negative", ["--box", "-5,0,10,10"], "outside"),
    ("box-three", ["--box", "1,2,3"], "X0,Y0,X1,Y1"),
    ("no-prompt", [], "no positive click"),
    ("only-negative", ["--click", "5,5,-"], "no positive click"),
    ("click-option-missing-value", ["--click"], "expected one argument"),
    ("unknown-option", ["--click", "5,5", "--frobnicate"], "unrecognized"),
]


@pytest.fixture(scope="module")
def cli_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli")
    image = folder / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(image)
    return image, build_fixture_model(folder / "fixture.onnx"), folder


@pytest.mark.parametrize("case, args, fragment", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_predict(cli_files, case, args, fragment):
    image, model, folder = cli_files
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("SQSAM_MAX_CLICKS", None)
    out = folder / f"{case}.png"
    proc = subprocess.run([sys.executable, "-m", "sqsam_core", "predict", str(image), *args, "--out", str(out),
                           "--model", str(model)], capture_output=True, text=True, env=env, timeout=120)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (case, proc.returncode, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("sqsam: error: "), (case, proc.stderr)
    assert fragment in lines[0], (case, lines[0])
    assert "Traceback" not in proc.stderr and "usage:" not in proc.stderr
    assert not out.exists()
