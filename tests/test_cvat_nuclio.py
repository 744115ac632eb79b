"""CVAT nuclio functions (integrations/cvat/nuclio): handlers driven through
``nuclio_sdk.test.Platform`` with the request bodies CVAT's lambda manager sends, a loopback
HTTP test that serves the handler the way nuclio's HTTP trigger does, bad input, and the
function.yaml metadata read the way CVAT reads it.

Plumbing uses the click-echo ONNX fixture (masks = positive-click disks); mask accuracy on a
GrabCut image uses the bundled model and skips without it (or without the data).
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

nuclio_sdk = pytest.importorskip("nuclio_sdk")
from nuclio_sdk.test import Platform  # noqa: E402

from tests.conftest import build_fixture_model  # noqa: E402
from tests.test_cvat_common import (  # noqa: E402
    CVAT_DIR,
    IOU_ONE_CLICK,
    IOU_SALIENT,
    IOU_THREE_CLICKS,
    b64,
    grabcut_sample,
    huge_jpeg_bytes,
    interior_click,
    iou,
    jpeg_bytes,
    need_bundled_model,
)

NUCLIO_DIR = CVAT_DIR / "nuclio"
_loaded = 0


def load_main():
    """A fresh import of nuclio/main.py (nuclio imports it as module ``main``)."""
    global _loaded
    _loaded += 1
    name = f"sqsam_cvat_nuclio_main_{_loaded}"
    spec = importlib.util.spec_from_file_location(name, NUCLIO_DIR / "main.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # Platform finds init_context through sys.modules
    spec.loader.exec_module(module)
    return module


class Function:
    """One deployed function: the module, a platform (one worker context) and helpers."""

    def __init__(self, model_path, monkeypatch):
        monkeypatch.setenv("SQSAM_MODEL", str(model_path))
        self.main = load_main()
        self.platform = Platform()

    def call(self, handler_name: str, body, content_type: str = "application/json"):
        event = nuclio_sdk.Event(body=body, content_type=content_type, method="POST", path="/")
        response = self.platform.call_handler(getattr(self.main, handler_name), event)
        assert isinstance(response, nuclio_sdk.Response)
        assert response.content_type == "application/json"
        return response.status_code, json.loads(response.body)

    def interact(self, body):
        return self.call("handler", body)

    def detect(self, body):
        return self.call("detector_handler", body)


@pytest.fixture
def fixture_fn(tmp_path, monkeypatch):
    return Function(build_fixture_model(tmp_path / "fixture.onnx"), monkeypatch)


@pytest.fixture
def real_fn(monkeypatch):
    return Function(need_bundled_model(), monkeypatch)


def interactor_body(raw: bytes, pos, neg=(), bbox=None) -> dict:
    """What CVAT's lambda manager posts to an interactor (``obj_bbox`` is sent, maybe null)."""
    return {"image": b64(raw), "pos_points": [list(p) for p in pos], "neg_points": [list(p) for p in neg], "obj_bbox": bbox}


def mask_from_interactor(payload: dict, width: int, height: int) -> np.ndarray:
    """The mask as cvat-ui builds it: ``mask`` rows flattened, followed by ``bounds``."""
    x1, y1, x2, y2 = payload["bounds"]
    crop = np.asarray(payload["mask"], dtype=np.uint8)
    assert crop.shape == (y2 - y1 + 1, x2 - x1 + 1)
    full = np.zeros((height, width), bool)
    full[y1 : y2 + 1, x1 : x2 + 1] = crop > 0
    if payload["shapes"]:  # and the agent-style shape carries the same mask
        from cvat_sdk.masks import decode_mask

        decoded = decode_mask(payload["shapes"][0]["points"], image_width=width, image_height=height)
        assert np.array_equal(decoded, full)
    return full


def mask_from_detector(item: dict, width: int, height: int) -> np.ndarray:
    """The mask as CVAT's server stores a detector's ``mask``: RLE of the flat crop + box."""
    from cvat_sdk.masks import decode_mask

    *bits, x1, y1, x2, y2 = item["mask"]
    flat = np.asarray(bits, dtype=np.uint8)
    # datumaro's mask_to_rle on the flat crop: runs, background first
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate(([0], change, [flat.size]))).tolist()
    if flat[0]:
        runs = [0] + runs
    return decode_mask(runs + [x1, y1, x2, y2], image_width=width, image_height=height)


# ------------------------------------------------------------------------------------------
# plumbing (fixture model)
# ------------------------------------------------------------------------------------------


def test_interactor_returns_the_mask_at_the_click(fixture_fn):
    rgb = np.random.default_rng(1).integers(0, 255, (240, 320, 3), dtype=np.uint8)
    status, payload = fixture_fn.interact(interactor_body(jpeg_bytes(rgb), [(200, 120)]))
    assert status == 200, payload
    mask = mask_from_interactor(payload, 320, 240)
    ys, xs = np.nonzero(mask)
    assert mask[120, 200] and abs(xs.mean() - 200) < 4 and abs(ys.mean() - 120) < 4
    assert 0 <= float(payload["score"]) <= 1
    assert payload["points"] and all(mask[int(round(y)), int(round(x))] for x, y in payload["points"])
    # a second positive click and a box: the same frame is served from the cache
    status, payload = fixture_fn.interact(
        interactor_body(jpeg_bytes(rgb), [(200, 120), (60, 60)], [(300, 20)], [[10, 10], [310, 230]])
    )
    assert status == 200, payload
    mask = mask_from_interactor(payload, 320, 240)
    assert mask[120, 200] and mask[60, 60] and not mask[20, 300]


def test_detector_answers_in_cvat_serverless_layout(fixture_fn):
    rgb = np.random.default_rng(2).integers(0, 255, (120, 160, 3), dtype=np.uint8)
    # the click-echo fixture has no salient object: a well-formed empty list
    status, payload = fixture_fn.detect({"image": b64(jpeg_bytes(rgb))})
    assert (status, payload) == (200, [])
    status, payload = fixture_fn.detect({"image": b64(jpeg_bytes(rgb)), "threshold": 0.3})
    assert (status, payload) == (200, [])


BAD_INTERACTOR_REQUESTS = [
    ({"image": "@@not base64@@", "pos_points": [[1, 1]], "neg_points": []}, "not valid base64"),
    ({"image": b64(b"this is not an image"), "pos_points": [[1, 1]], "neg_points": []}, "'image'"),
    ({"pos_points": [[1, 1]], "neg_points": []}, "non-empty base64"),
    ({"image": "FRAME", "pos_points": [[500, 20]], "neg_points": []}, "outside the 160x120 frame"),
    ({"image": "FRAME", "pos_points": [], "neg_points": [[5, 5]]}, "no positive points"),
    ({"image": "FRAME", "pos_points": [["5", 5]], "neg_points": []}, "must be a number"),
    ({"image": "FRAME", "pos_points": [[5, 5]], "neg_points": [], "obj_bbox": [[1, 1]]}, "obj_bbox"),
    ({"image": b64(huge_jpeg_bytes()), "pos_points": [[5, 5]], "neg_points": []}, "MP limit|too large"),
    ({"image": "FRAME", "pos_points": [[5, 5]], "neg_points": [], "granularity": "sleeve"}, "granularity must be"),
]


@pytest.mark.parametrize("body,message", BAD_INTERACTOR_REQUESTS)
def test_bad_interactor_requests_get_400_with_a_message(fixture_fn, body, message):
    import re

    frame = b64(jpeg_bytes(np.zeros((120, 160, 3), np.uint8)))
    body = {k: (frame if v == "FRAME" else v) for k, v in body.items()}
    status, payload = fixture_fn.interact(body)
    assert status == 400 and set(payload) == {"error"}
    assert re.search(message, payload["error"]), payload["error"]
    assert "\n" not in payload["error"]


def test_bad_bodies_and_detector_input_get_400(fixture_fn):
    status, payload = fixture_fn.call("handler", b"{not json", content_type="text/plain")
    assert status == 400 and "JSON" in payload["error"]
    status, payload = fixture_fn.call("handler", [1, 2])
    assert status == 400 and "JSON object" in payload["error"]
    frame = b64(jpeg_bytes(np.zeros((40, 40, 3), np.uint8)))
    status, payload = fixture_fn.detect({"image": frame, "threshold": "high"})
    assert status == 400 and "threshold" in payload["error"]
    status, payload = fixture_fn.detect({"image": "%%%"})
    assert status == 400 and "base64" in payload["error"]


def test_an_internal_failure_is_a_500_not_a_crash(fixture_fn):
    frame = b64(jpeg_bytes(np.zeros((40, 40, 3), np.uint8)))
    status, _ = fixture_fn.interact({"image": frame, "pos_points": [[5, 5]], "neg_points": []})
    assert status == 200
    ctx = fixture_fn.platform._get_handler_context(fixture_fn.main.handler)

    def boom(*args, **kwargs):
        raise RuntimeError("simulated failure")

    ctx.user_data.model.predict_history = boom
    status, payload = fixture_fn.interact({"image": frame, "pos_points": [[5, 5]], "neg_points": []})
    assert status == 500 and "simulated failure" in payload["error"]


class _NuclioHTTPTrigger(http.server.BaseHTTPRequestHandler):
    """Serves a handler the way nuclio's HTTP trigger and Python wrapper do: JSON bodies of
    content type application/json arrive decoded, the handler's output is turned into a
    response by ``nuclio_sdk.Response.from_entrypoint_output``."""

    function: Function
    handler_name: str

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length)
        content_type = self.headers.get("Content-Type", "")
        body = raw
        if content_type == "application/json":
            try:
                body = json.loads(raw)
            except ValueError:
                pass  # nuclio hands the bytes over
        event = nuclio_sdk.Event(body=body, content_type=content_type, method="POST", path=self.path,
                                 headers=dict(self.headers), size=length)
        output = self.function.platform.call_handler(getattr(self.function.main, self.handler_name), event)
        response = nuclio_sdk.Response.from_entrypoint_output(json.dumps, output)
        data = response["body"].encode()
        self.send_response(response["status_code"])
        self.send_header("Content-Type", response["content_type"])
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output quiet
        pass


def _post(url: str, payload) -> tuple[int, dict]:
    """What CVAT's ``_invoke_directly`` does: ``requests.post(url, json=payload)``."""
    request = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_loopback_http_like_nuclio(fixture_fn):
    handler_class = type("Trigger", (_NuclioHTTPTrigger,), {"function": fixture_fn, "handler_name": "handler"})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler_class)
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        rgb = np.random.default_rng(3).integers(0, 255, (90, 130, 3), dtype=np.uint8)
        status, payload = _post(url, interactor_body(jpeg_bytes(rgb), [(65, 45)]))
        assert status == 200, payload
        assert mask_from_interactor(payload, 130, 90)[45, 65]
        status, payload = _post(url, {"image": "@@", "pos_points": [[1, 1]], "neg_points": []})
        assert status == 400 and "base64" in payload["error"]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
    assert not thread.is_alive()


# ------------------------------------------------------------------------------------------
# function.yaml, read as CVAT's lambda manager reads it
# ------------------------------------------------------------------------------------------


def _functions():
    yaml = pytest.importorskip("yaml")
    return {p.name: yaml.safe_load(p.read_text()) for p in sorted(NUCLIO_DIR.glob("function*.yaml"))}


def test_function_yaml_metadata_is_what_cvat_expects():
    functions = _functions()
    assert {"function.yaml", "function-detector.yaml"} <= set(functions)
    main_source = (NUCLIO_DIR / "main.py").read_text()
    kinds = {}
    for name, config in functions.items():
        meta, spec = config["metadata"], config["spec"]
        assert meta["name"] != "pth-facebookresearch-sam-vit-h"  # bound to CVAT's SAM UI plugin
        anno = {k: ("" if v is None else str(v)) for k, v in meta["annotations"].items()}  # nuclio: strings
        kinds[anno["type"]] = (anno, spec)
        labels = json.loads(anno.get("spec") or "[]")
        assert len({label["name"] for label in labels}) == len(labels)
        module, entry = spec["handler"].split(":")
        assert module == "main" and f"def {entry}(context, event)" in main_source
        assert spec["runtime"].startswith("python:3.1")
        assert any("wheels/" in d["value"] for d in spec["build"]["directives"]["postCopy"])
        assert int(spec["triggers"]["myHttpTrigger"]["attributes"]["maxRequestBodySize"]) >= 16 * 2**20
    anno, spec = kinds["interactor"]
    assert int(anno.get("version", "1")) == 2
    assert int(anno.get("min_pos_points", 1)) == 1 and int(anno.get("min_neg_points", -1)) == 0
    assert anno["startswith_box_optional"].lower() == "true"
    assert "startswith_box" not in anno  # CVAT does bool(str): any value there would mean True
    assert anno["help_message"]
    anno, spec = kinds["detector"]
    (label,) = json.loads(anno["spec"])
    env = {e["name"]: e["value"] for e in spec["env"]}
    assert label["type"] == "mask" and label["name"] == env["SQSAM_CVAT_LABEL"]


# ------------------------------------------------------------------------------------------
# accuracy on a real image (bundled model + GrabCut)
# ------------------------------------------------------------------------------------------


@pytest.mark.data
def test_interactor_masks_match_the_object(real_fn):
    from sqsam_core.geometry import next_click

    raw, rgb, gt, ignore = grabcut_sample()
    h, w = gt.shape
    x, y = interior_click(gt)
    status, payload = real_fn.interact(interactor_body(raw, [(x, y)]))
    assert status == 200, payload
    mask = mask_from_interactor(payload, w, h)
    assert iou(mask, gt, ignore) >= IOU_ONE_CLICK
    pos, neg = [(x, y)], []
    for _ in range(2):  # RITM-style corrections, sent as CVAT sends them (all points each time)
        click = next_click(mask, gt, ignore)
        if click is None:
            break
        (pos if click[2] else neg).append((click[0], click[1]))
        status, payload = real_fn.interact(interactor_body(raw, pos, neg))
        assert status == 200, payload
        mask = mask_from_interactor(payload, w, h)
    assert iou(mask, gt, ignore) >= IOU_THREE_CLICKS


@pytest.mark.data
def test_detector_finds_the_salient_object(real_fn):
    raw, rgb, gt, ignore = grabcut_sample()
    h, w = gt.shape
    status, payload = real_fn.detect({"image": b64(raw), "threshold": 0.3})
    assert status == 200, payload
    assert payload and all(item["label"] == "object" and item["type"] == "mask" for item in payload)
    assert all(0 <= float(item["confidence"]) <= 1 and len(item["points"]) >= 6 for item in payload)
    best = max(iou(mask_from_detector(item, w, h), gt, ignore) for item in payload)
    assert best >= IOU_SALIENT
