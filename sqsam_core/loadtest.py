"""``sqsam loadtest``: load figures for the Label Studio backend, measured as a user would see them.

Starts ``sqsam serve label-studio`` as a subprocess on 127.0.0.1 (or uses ``--url``), then
``--clients`` threads (8) each send ``--requests`` (50) interactive ``/predict`` requests, one
after another, over HTTP keep-alive-free connections. Each client has its own synthetic image
(a data: URL, so no image host is involved) and its own click, so cross-talk would show. Prints
and optionally writes as JSON: latency p50 / p95 / p99 (ms), requests/s over the whole run,
errors, and the server's peak RSS (``VmHWM`` from ``/proc``, Linux only).

This module never imports the backend: the server is a separate process, started the way a
user starts it.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import platform
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np

from sqsam_core.bench.server import free_port, start_server, stop_process, wait_healthy

CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="mask" toName="image"><Label value="Object"/></BrushLabels>
  <KeyPointLabels name="click" toName="image" smart="true"><Label value="Object"/></KeyPointLabels>
</View>"""


def client_image(client: int, width: int = 160, height: int = 120) -> np.ndarray:
    """A distinct ``(height, width, 3)`` uint8 scene per client: one bright rectangle on grey."""
    image = np.full((height, width, 3), 60, np.uint8)
    x0 = 10 + (client * 13) % (width // 2)
    y0 = 10 + (client * 7) % (height // 2)
    color = ((client * 70) % 200 + 55, (client * 40) % 200 + 55, 255 - (client * 30) % 200)
    image[y0:y0 + height // 3, x0:x0 + width // 3] = color
    return image


def _png_data_url(image: np.ndarray) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def client_payload(client: int, index: int = 0) -> bytes:
    """The interactive ``/predict`` body of client ``client``'s request ``index``: a click inside its
    rectangle, at one of 50 distinct positions (the model caches repeated prompts)."""
    image = client_image(client)
    height, width = image.shape[:2]
    x0 = 10 + (client * 13) % (width // 2)
    y0 = 10 + (client * 7) % (height // 2)
    x = x0 + width // 6 - 5 + index % 10  # near the rectangle's centre, x = column
    y = y0 + height // 6 - 2 + (index // 10) % 5
    click = {"id": f"c{client}", "type": "keypointlabels", "from_name": "click", "to_name": "image",
             "original_width": width, "original_height": height, "image_rotation": 0, "is_positive": True,
             "value": {"x": 100 * (x + 0.5) / width, "y": 100 * (y + 0.5) / height, "width": 0.5,
                       "keypointlabels": ["Object"]}}
    body = {"tasks": [{"id": client + 1, "data": {"image": _png_data_url(image)}}], "project": "1.1",
            "label_config": CONFIG, "params": {"context": {"result": [click]}}}
    return json.dumps(body).encode()


def post(url: str, body: bytes, timeout: float = 60.0, headers: dict | None = None) -> tuple[int, bytes]:
    """POST JSON; ``(status, body)`` for any HTTP answer (4xx/5xx included)."""
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def run_clients(url: str, clients: int = 8, requests: int = 50, payload=client_payload,
                timeout: float = 60.0) -> list[dict]:
    """``clients`` threads x ``requests`` sequential POSTs of ``payload(client, index)`` to ``url``/predict.

    Returns one record per request: ``client``, ``index``, ``status``, ``body`` (bytes) or
    ``error`` (a network error's text), ``ms``.
    """
    records: list[dict] = []
    lock = threading.Lock()

    def worker(client: int) -> None:
        for index in range(requests):
            body = payload(client, index)
            started = time.perf_counter()
            record = {"client": client, "index": index}
            try:
                record["status"], record["body"] = post(url.rstrip("/") + "/predict", body, timeout)
            except OSError as exc:
                record["status"], record["error"] = None, f"{type(exc).__name__}: {exc}"
            record["ms"] = (time.perf_counter() - started) * 1000.0
            with lock:
                records.append(record)

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout * requests)
    return records


def peak_rss_mb(pid: int) -> float | None:
    """Peak resident memory of process ``pid`` in MB (Linux ``/proc``), or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, float), q)) if values else float("nan")


def summarize(records: list[dict], seconds: float) -> dict:
    ok = [r for r in records if r.get("status") == 200]
    latencies = [r["ms"] for r in ok]
    return {
        "requests": len(records),
        "ok": len(ok),
        "errors": len(records) - len(ok),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p95_ms": round(percentile(latencies, 95), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "requests_per_s": round(len(ok) / seconds, 1) if seconds > 0 else None,
        "seconds": round(seconds, 2),
    }


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def measure(clients: int = 8, requests: int = 50, url: str | None = None, model: str | None = None,
            warmup: int = 2) -> dict:
    """Start a server (unless ``url``), warm it up, run the load; returns the summary dict."""
    process = None
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_server(port, model)
    try:
        wait_healthy(url, process)
        for client in range(clients):  # decode each image once, as a user's first click would
            for _ in range(warmup):
                post(url + "/predict", client_payload(client, requests + 1))
        started = time.perf_counter()
        records = run_clients(url, clients, requests)
        seconds = time.perf_counter() - started
        summary = summarize(records, seconds)
        summary.update({"clients": clients, "requests_per_client": requests, "cpu": cpu_model(),
                        "cores": os.cpu_count(),
                        "server_peak_rss_mb": round(peak_rss_mb(process.pid), 1) if process else None})
        return summary
    finally:
        if process is not None:
            stop_process(process)


def cmd_loadtest(args) -> int:
    summary = measure(args.clients, args.requests, args.url, args.model)
    print(f"{summary['clients']} clients x {summary['requests_per_client']} requests: "
          f"{summary['ok']} ok, {summary['errors']} errors; p50 {summary['p50_ms']} ms, p95 {summary['p95_ms']} ms, "
          f"p99 {summary['p99_ms']} ms; {summary['requests_per_s']} requests/s; server peak RSS "
          f"{summary['server_peak_rss_mb']} MB ({summary['cpu']}, {summary['cores']} cores)")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    return 0 if summary["errors"] == 0 else 1


def register_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "loadtest", help="load figures of the Label Studio backend (p50/p95/p99, requests/s, RSS)",
        description="Start `sqsam serve label-studio` on 127.0.0.1 (or use --url) and send N clients x M "
                    "interactive /predict requests; print latency percentiles, requests/s and the server's peak RSS.")
    p.add_argument("--clients", type=int, default=8, help="client threads (default 8)")
    p.add_argument("--requests", type=int, default=50, help="requests per client (default 50)")
    p.add_argument("--url", default=None, help="a running backend instead of starting one")
    p.add_argument("--model", default=None, help="ONNX model for the started server (default: the bundled one)")
    p.add_argument("--json", default=None, metavar="OUT.json", help="write the summary as JSON")
    p.set_defaults(func=cmd_loadtest)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sqsam_core.loadtest")
    sub = parser.add_subparsers(dest="command", required=True)
    register_commands(sub)
    args = parser.parse_args(["loadtest", *(sys.argv[1:] if argv is None else argv)])
    return cmd_loadtest(args)


if __name__ == "__main__":
    sys.exit(main())
