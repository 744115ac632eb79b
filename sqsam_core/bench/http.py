"""The Label Studio round trip of ``sqsam bench``, measured over HTTP as Label Studio makes it.

``sqsam serve label-studio`` runs as a separate process on 127.0.0.1 (:mod:`sqsam_core.bench.server`)
with ``LOCAL_FILES_DOCUMENT_ROOT`` pointing at a temporary folder of synthetic JPEGs; one keep-alive
connection sends interactive ``/predict`` requests (every click of the object so far, as Label
Studio sends them) and batch pre-annotation requests. Latencies are client-side; the server's own
time comes from its ``X-Sqsam-Elapsed-Ms`` header.
"""

from __future__ import annotations

import http.client
import importlib.util
import json
import tempfile
import time
from pathlib import Path
from typing import Sequence
from urllib.parse import urlsplit

import numpy as np

from sqsam_core.bench.config import BenchConfig, Log
from sqsam_core.bench.server import BackendProcess
from sqsam_core.bench.stats import ms, summarize
from sqsam_core.bench.synthetic import SyntheticImage, click_sequence

LABEL_CONFIG = """<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image"><Label value="Object" background="#1e90ff"/></BrushLabels>
  <KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object" smart="true"/></KeyPointLabels>
</View>"""
#: Python packages ``sqsam serve label-studio`` needs (the ``label-studio`` extra).
SERVER_PACKAGES = ("flask", "werkzeug")


def bench_label_studio(config: BenchConfig, image: SyntheticImage, batch_images: Sequence[SyntheticImage],
                       log: Log) -> dict:
    """Interactive and batch ``/predict`` round trips against a ``sqsam serve label-studio`` process."""
    missing = [name for name in SERVER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        return {"status": "skipped", "reason": f"Label Studio backend not importable: {', '.join(missing)} not "
                                               f'installed (pip install "sqsam[label-studio]")'}
    with tempfile.TemporaryDirectory(prefix="sqsam-bench-ls-") as root:
        Path(root, "interactive.jpg").write_bytes(image.jpeg)
        names = []
        for r in range(config.ls_batch_requests + 1):
            for t in range(config.ls_batch_tasks):
                name = f"batch-{r}-{t}.jpg"
                Path(root, name).write_bytes(batch_images[(r * config.ls_batch_tasks + t) % len(batch_images)].jpeg)
                names.append(name)
        env = {"LOCAL_FILES_DOCUMENT_ROOT": root, "LABEL_STUDIO_URL": "", "LABEL_STUDIO_API_KEY": "",
               "BASIC_AUTH_USER": "", "BASIC_AUTH_PASS": ""}
        try:
            with BackendProcess(model=config.model_path, threads=config.threads, env=env) as url:
                log(f"Label Studio backend on {url}")
                with _Client(url) as client:
                    return _ls_requests(client, config, image, names)
        except (OSError, http.client.HTTPException, RuntimeError, ValueError) as exc:
            return {"status": "failed", "reason": f"{type(exc).__name__}: {exc}"[:300]}


class _Client:
    """One keep-alive HTTP/1.1 connection to the backend; :meth:`post` times a JSON POST to ``/predict``."""

    def __init__(self, url: str, timeout: float = 120.0):
        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)

    def __enter__(self) -> "_Client":
        return self

    def __exit__(self, *exc) -> None:
        self.connection.close()

    def post(self, payload: dict) -> tuple[float, float | None, dict]:
        """``(round trip ms, server ms or None, decoded JSON answer)``; RuntimeError unless HTTP 200."""
        body = json.dumps(payload).encode()
        start = time.perf_counter()
        self.connection.request("POST", "/predict", body=body, headers={"Content-Type": "application/json"})
        response = self.connection.getresponse()
        raw = response.read()
        elapsed = ms(time.perf_counter() - start)
        if response.status != 200:
            raise RuntimeError(f"/predict answered HTTP {response.status}: {raw[:200].decode(errors='replace')}")
        server_ms = response.getheader("X-Sqsam-Elapsed-Ms")
        return elapsed, float(server_ms) if server_ms else None, json.loads(raw)


def _ls_interactive_payload(image: SyntheticImage, clicks, task_id: int) -> dict:
    result = []
    for x, y, positive in clicks:
        result.append({
            "type": "keypointlabels", "from_name": "kp", "to_name": "image",
            "original_width": image.width, "original_height": image.height, "image_rotation": 0,
            "value": {"x": (x + 0.5) / image.width * 100.0, "y": (y + 0.5) / image.height * 100.0,
                      "width": 0.5, "keypointlabels": ["Object"]},
            "is_positive": bool(positive),
        })
    return {
        "tasks": [{"id": task_id, "data": {"image": "/data/local-files/?d=interactive.jpg"}}],
        "project": "1.1700000000",
        "label_config": LABEL_CONFIG,
        "params": {"login": None, "password": None, "context": {"result": result}},
    }


def _ls_requests(client: _Client, config: BenchConfig, image: SyntheticImage, names: list[str]) -> dict:
    rng = np.random.default_rng(3)
    # warm-up: fetch + decode + prepare the interactive image (Label Studio's first click)
    first_ms, _, _ = client.post(_ls_interactive_payload(image, click_sequence(image, 1, rng), 1))
    rounds, server, regions = [], [], 0
    for _ in range(config.ls_interactions):
        clicks = click_sequence(image, config.clicks_per_interaction, rng)
        for n in range(1, len(clicks) + 1):  # Label Studio sends every click of the object each time
            elapsed, server_ms, data = client.post(_ls_interactive_payload(image, clicks[:n], 1))
            rounds.append(elapsed)
            if server_ms is not None:
                server.append(server_ms)
            regions += len(data["results"][0]["result"])
    interactive = {**summarize(rounds), "server_p50_ms": summarize(server)["p50_ms"],
                   "first_request_ms": round(first_ms, 1), "regions_returned": regions}

    batches, batch_server = [], []
    tasks_per = config.ls_batch_tasks
    for r in range(config.ls_batch_requests + 1):
        tasks = [{"id": 100 + r * tasks_per + t, "data": {"image": f"/data/local-files/?d={names[r * tasks_per + t]}"}}
                 for t in range(tasks_per)]
        payload = {"tasks": tasks, "project": "1.1700000000", "label_config": LABEL_CONFIG, "params": {}}
        elapsed, server_ms, data = client.post(payload)
        if len(data.get("results", [])) != tasks_per:
            raise RuntimeError(f"batch /predict returned {len(data.get('results', []))} results for {tasks_per} tasks")
        if r == 0:
            continue  # warm-up
        batches.append(elapsed)
        if server_ms is not None:
            batch_server.append(server_ms)
    batch = {**summarize(batches), "tasks_per_request": tasks_per,
             "per_task_p50_ms": round(summarize(batches)["p50_ms"] / tasks_per, 2) if batches else None,
             "server_p50_ms": summarize(batch_server)["p50_ms"]}
    return {
        "status": "ok",
        "method": "`sqsam serve label-studio` started as a separate process on 127.0.0.1 (werkzeug, threaded), "
                  "one keep-alive http.client connection, images from LOCAL_FILES_DOCUMENT_ROOT; label config "
                  "BrushLabels + smart KeyPointLabels; every request carries all clicks so far (as Label Studio "
                  "sends them)",
        "interactive": interactive,
        "batch": batch,
    }

