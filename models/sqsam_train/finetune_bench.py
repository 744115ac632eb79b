"""Per-click latency of the Label Studio backend alone and while a fine-tune runs beside it.

    PYTHONPATH=models python -m sqsam_train.finetune_bench ../shared/data/project/CamVid-cars/train \
        --clicks 60 --threads 1 --json finetune-bench.json

The backend (``sqsam_label_studio.app``, the bundled model) serves on 127.0.0.1; interactive
``/predict`` requests (one positive click, then a corrective click, on the project's images sent as
``data:`` URLs) are timed over HTTP, first with nothing else of ours running, then while
``python -m sqsam_train.finetune`` trains on the same project in a child process as the backend
starts it (``--threads`` threads, ``nice`` 10): first unknown to the backend, then adopted as a
project's job, which the backend pauses while it answers a click (``--pause`` seconds after the
last one, ``SQSAM_TRAIN_PAUSE_FOR_CLICKS``). Prints p50 / p95 of the three phases; nothing else on
the machine is controlled, so say what else ran (``uptime``) beside the numbers.
"""

from __future__ import annotations

import argparse
import base64
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def data_url(path: Path) -> str:
    return "data:image/jpeg;base64," + base64.b64encode(path.read_bytes()).decode()


def click_payload(url: str, clicks: list[tuple[float, float, bool]], w: int, h: int) -> dict:
    result = [{"type": "keypointlabels", "from_name": "click", "to_name": "image", "original_width": w,
               "original_height": h, "is_positive": positive,
               "value": {"x": 100 * (x + 0.5) / w, "y": 100 * (y + 0.5) / h, "keypointlabels": ["Object"]}}
              for x, y, positive in clicks]
    from sqsam_label_studio.cli import template

    return {"tasks": [{"id": 1, "data": {"image": url}}], "label_config": template("brush"),
            "params": {"context": {"result": result}}}


def time_clicks(url_base: str, objects: list, count: int, rng: np.random.Generator) -> list[float]:
    """Milliseconds per interactive request: a random positive click inside an object, then a
    random negative one beside it (new clicks every time, so no prediction comes from a cache;
    the image is decoded once, as in an annotator's session)."""
    import requests

    times = []
    session = requests.Session()
    while len(times) < count:
        for url, gt in objects:
            h, w = gt.shape
            ys, xs = np.nonzero(gt)
            k = rng.integers(len(xs))
            ring = cv2.dilate(gt.astype(np.uint8), np.ones((25, 25), np.uint8)).astype(bool) & ~gt
            ny, nx = np.nonzero(ring)
            j = rng.integers(len(nx))
            clicks = [(float(xs[k]), float(ys[k]), True)]
            for prompt in (clicks, clicks + [(float(nx[j]), float(ny[j]), False)]):
                started = time.perf_counter()
                response = session.post(f"{url_base}/predict", json=click_payload(url, prompt, w, h), timeout=120)
                response.raise_for_status()
                times.append((time.perf_counter() - started) * 1000)
            if len(times) >= count:
                break
    return times


def stats(times: list[float]) -> dict:
    return {"clicks": len(times), "p50_ms": round(float(np.percentile(times, 50)), 1),
            "p95_ms": round(float(np.percentile(times, 95)), 1)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("project", type=Path, help="a folder with images/ + masks/")
    p.add_argument("--clicks", type=int, default=60, help="clicks timed per phase")
    p.add_argument("--threads", type=int, default=1, help="the fine-tune's threads (SQSAM_TRAIN_THREADS)")
    p.add_argument("--images", type=int, default=6, help="project images clicked on")
    p.add_argument("--pause", type=float, default=0.5,
                   help="seconds the adopted fine-tune stays paused after a click (SQSAM_TRAIN_PAUSE_FOR_CLICKS)")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)

    from sqsam_core import SqueezeSAM
    from sqsam_core.datasets import read_annotations
    from sqsam_label_studio.app import Settings, create_app
    from sqsam_label_studio.images import ImageLoader
    from sqsam_label_studio.learning import TrainSettings
    from sqsam_label_studio.lsproc import BackgroundServer

    found = read_annotations(args.project)
    objects = [(data_url(Path(im.source)), im.objects[0].mask) for im in found.images[: args.images]]
    report = {"load_before": os.getloadavg()}
    with tempfile.TemporaryDirectory() as work:
        app = create_app(model=SqueezeSAM(), loader=ImageLoader(), settings=Settings(preannotate=False),
                         train_settings=TrainSettings(Path(work) / "models", pause_for_clicks=args.pause))
        with BackgroundServer(app) as backend:
            run_phases(backend.url, app.extensions["sqsam"]["learner"], objects, args, work, report)
    report["load_after"] = os.getloadavg()
    report["fine_tune_threads"] = args.threads
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def run_phases(url: str, learner, objects: list, args, work: str, report: dict) -> None:
    """Clicks alone; beside a fine-tune the backend does not know of (it trains through every
    click); beside the same fine-tune adopted as a project's job (``Learner.clicks_first`` pauses
    it while each click is answered)."""
    rng = np.random.default_rng(0)
    time_clicks(url, objects, 2 * len(objects), rng)  # warm-up: images decoded and cached
    report["alone"] = stats(time_clicks(url, objects, args.clicks, rng))
    threads = str(args.threads)
    env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    command = [sys.executable, "-m", "sqsam_train.finetune", str(args.project), "--minutes", "30",
               "--threads", threads, "--nice", "10", "--run-dir", f"{work}/run", "--out", f"{work}/m.onnx",
               "--no-progress"]
    trainer = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        log = Path(work) / "run" / "log.jsonl"
        while not (log.exists() and log.stat().st_size) and time.monotonic() < deadline:  # 10 steps trained
            time.sleep(2)
        report["beside_finetune"] = stats(time_clicks(url, objects, args.clicks, rng))
        learner.adopt("bench", trainer)
        report["beside_finetune_paused_for_clicks"] = stats(time_clicks(url, objects, args.clicks, rng))
        report["pause_for_clicks_s"] = args.pause
        report["fine_tune_steps_logged"] = log.read_text().count("\n") * 10 if log.exists() else 0
    finally:
        trainer.kill()  # SIGKILL also ends a process the backend has paused
        trainer.wait(60)


if __name__ == "__main__":
    main()
