"""Loopback load and fault tests of the Label Studio backend under gunicorn (1 worker x 4 threads,
the Dockerfile's layout), with the bundled model. No timing is asserted beyond deadlines.

* load: 8 client threads x 50 interactive requests, each client its own image and clicks; no
  errors, and every answer equals the answer to the same request sent alone (region ids aside).
* faults: image hosts on 127.0.0.1 that drip a byte a second, hang, or drop the connection
  (allowed through ``SQSAM_ALLOWED_HOSTS``) get a 424 within the fetch deadline plus slack,
  while ``/health`` keeps answering.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request

import pytest

pytest.importorskip("flask", reason="the label-studio extra (flask) is not installed")

from sqsam_core.loadtest import client_payload, post, run_clients  # noqa: E402
from tests.conftest import BUNDLED_MODEL  # noqa: E402
from tests.netfixtures import FaultServer, gunicorn_available, gunicorn_server  # noqa: E402

pytestmark = [
    pytest.mark.e2e,  # gunicorn servers and image hosts on 127.0.0.1, 400 requests
    pytest.mark.skipif(not gunicorn_available(), reason="gunicorn (label-studio extra) is not installed"),
    pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="bundled model not present"),
]

FETCH_DEADLINE = 3.0
SLACK = 4.0


def strip_ids(raw: bytes) -> dict:
    body = json.loads(raw)
    for result in body.get("results", []):
        for region in result.get("result", []):
            region.pop("id", None)
    return body


def payload(client: int, index: int) -> bytes:
    """Five distinct clicks per client (each sent alone once first, to keep the test short)."""
    return client_payload(client, index % 5)


def test_eight_clients_fifty_requests_no_errors_no_cross_talk():
    clients, requests = 8, 50
    with gunicorn_server({"SQSAM_MODEL": str(BUNDLED_MODEL)}) as url:
        alone = {}
        for client in range(clients):
            for index in range(requests):
                payload_ = payload(client, index)
                if payload_ in alone:
                    continue
                status, raw = post(url + "/predict", payload_)
                assert status == 200, raw[:300]
                alone[payload_] = strip_ids(raw)
        records = run_clients(url, clients, requests, payload=payload, timeout=120)
    assert len(records) == clients * requests
    errors = [r for r in records if r.get("status") != 200]
    assert not errors, errors[:3]
    for record in records:
        expected = alone[payload(record["client"], record["index"])]
        got = strip_ids(record["body"])
        assert got == expected, (record["client"], record["index"])
        assert got["results"][0]["result"], "every click is inside an object: a mask comes back"


def _health_ms(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url + "/health", timeout=5) as response:
        assert response.status == 200
    return (time.perf_counter() - started) * 1000


@pytest.mark.parametrize("mode", ["drip", "hang", "reset"])
def test_bad_image_host_gets_424_within_the_deadline_and_health_answers(mode):
    with FaultServer(mode, duration=30) as host:
        env = {"SQSAM_MODEL": str(BUNDLED_MODEL), "SQSAM_ALLOWED_HOSTS": f"127.0.0.1:{host.port}",
               "SQSAM_IMAGE_TIMEOUT": str(FETCH_DEADLINE), "SQSAM_FETCH_QUEUE_TIMEOUT": "0.5"}
        with gunicorn_server(env) as url:
            body = json.dumps({"tasks": [{"id": 1, "data": {"image": f"{host.url}/slow.png"}}],
                               "label_config": json.loads(client_payload(0))["label_config"]}).encode()
            answers: list[tuple[int, bytes, float]] = []

            def slow_request():
                started = time.perf_counter()
                status, raw = post(url + "/predict", body, timeout=60)
                answers.append((status, raw, time.perf_counter() - started))

            threads = [threading.Thread(target=slow_request) for _ in range(6)]  # more than gunicorn's 4 threads
            for thread in threads:
                thread.start()
            time.sleep(0.3)
            health = []
            while True:  # at least once, then while the slow requests run
                health.append(_health_ms(url))  # raises (fails the test) if /health does not answer in 5 s
                if not any(t.is_alive() for t in threads) or len(health) >= 40:
                    break
                time.sleep(0.1)
            for thread in threads:
                thread.join(60)
    assert len(answers) == 6
    for status, raw, seconds in answers:
        assert status in (424, 429), (status, raw[:300])
        message = json.loads(raw)["error"]
        assert message and "Traceback" not in message
        assert seconds < FETCH_DEADLINE + SLACK + 0.5, (mode, seconds, message)  # 429s wait at most 0.5 s
    assert sum(1 for status, _, _ in answers if status == 424) >= 2
    assert health and max(health) < 3000, health
