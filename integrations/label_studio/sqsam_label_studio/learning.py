"""The backend learns: fine-tune a project model from its annotations and serve it to that project.

Enabled by ``MODEL_DIR`` (a persistent folder, a compose volume). Then:

* ``ANNOTATION_CREATED`` / ``ANNOTATION_UPDATED`` webhooks count a project's new annotations;
  once ``SQSAM_TRAIN_MIN_ANNOTATIONS`` (10) distinct annotations have arrived since its last
  fine-tune, a job starts (``SQSAM_TRAIN_DELAY`` (10) s later, so a burst lands in it).
  ``START_TRAINING`` and ``POST /train`` start one at once. One job per project at a time, at
  most ``SQSAM_TRAIN_JOBS`` (1) jobs at once (more wait in line).
* a job reads the project's annotations from Label Studio's export API
  (``/api/projects/<id>/export?exportType=JSON``, with the backend's token, to Label Studio's
  origin only), fetches each image exactly as ``/predict`` does (the same
  :class:`~.images.ImageLoader`, the same fetch policy), writes them as an ``images/`` +
  ``masks/`` folder and runs ``python -m sqsam_train.finetune`` in a child process at lower CPU
  priority, with ``SQSAM_TRAIN_THREADS`` (1) threads and ``SQSAM_TRAIN_MINUTES`` (10) of
  training (``SQSAM_TRAIN_STEPS``: that many steps instead; ``SQSAM_TRAIN_DATA``: the general
  training data to mix in, optional; ``SQSAM_TRAIN_MEMBERS`` (1): fine-tunes averaged, as
  ``sqsam finetune --members``). The candidate
  must not be clearly worse than the model the project has now on the held-out tasks.
* while an interactive click is answered, running fine-tunes are paused (SIGSTOP) and continue
  ``SQSAM_TRAIN_PAUSE_FOR_CLICKS`` (0.5) s after the last click (``off``: never paused), so clicks
  stay as fast as without training (:meth:`Learner.clicks_first`).
* a model that passes is written as ``MODEL_DIR/project-<id>/model-<n>.onnx`` and made current by
  rewriting ``state.json`` (temporary file + ``os.replace``); that project's ``/predict`` then
  uses it, with ``model_version`` ``<base>+p<id>.<n>``. Other projects keep the base model. On
  start the backend serves whatever ``state.json`` names, so a restart keeps every project model.
* a job that fails, is killed or trains a worse model changes nothing that is served; the reason
  goes to the log and to ``GET /health`` (``training``), with the annotations skipped (empty masks,
  images that could not be fetched).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

logger = logging.getLogger("sqsam_label_studio.learning")

ANNOTATION_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
TRAIN_NOW_EVENTS = ("START_TRAINING",)
MAX_EXPORT_BYTES = 256 * 1024 * 1024
TRAIN_EXTRA_MISSING = 'training needs the train extra (pip install "sqsam[train]")'
EXIT_WORSE = 3  # sqsam_train.finetune's exit code for a candidate worse than the base
MAX_TRACKED_IDS = 100_000  # annotation ids remembered per project (to count each once)


@dataclass
class TrainSettings:
    model_dir: Path
    min_annotations: int = 10
    threads: int = 1
    minutes: float = 10.0
    jobs: int = 1
    data: str | None = None
    nice: int = 10
    export_timeout: float = 120.0
    delay: float = 10.0  # seconds a job waits before reading the export, so a burst of annotations lands in it
    steps: int | None = None  # train this many steps instead of `minutes` (the same model on any machine)
    # Fine-tunes averaged per job (``sqsam finetune --members``). One: a job's budget is short (10 min
    # on one thread, paused for clicks), and two members of ~100 steps each gained less than one of 200.
    members: int = 1
    # Seconds a running fine-tune stays paused after an interactive click is answered (None: never paused).
    pause_for_clicks: float | None = 0.5

    @classmethod
    def from_env(cls, env=os.environ) -> "TrainSettings | None":
        """None when ``MODEL_DIR`` is unset (the backend then does not learn)."""
        from .errors import ConfigError

        root = env.get("MODEL_DIR") or env.get("SQSAM_MODEL_DIR")
        if not root:
            return None
        try:
            settings = cls(Path(root), min_annotations=int(env.get("SQSAM_TRAIN_MIN_ANNOTATIONS", 10)),
                           threads=int(env.get("SQSAM_TRAIN_THREADS", 1)),
                           minutes=float(env.get("SQSAM_TRAIN_MINUTES", 10)),
                           jobs=int(env.get("SQSAM_TRAIN_JOBS", 1)), data=env.get("SQSAM_TRAIN_DATA") or None,
                           delay=float(env.get("SQSAM_TRAIN_DELAY", 10)),
                           steps=int(env["SQSAM_TRAIN_STEPS"]) if env.get("SQSAM_TRAIN_STEPS") else None,
                           members=int(env.get("SQSAM_TRAIN_MEMBERS", 1)),
                           pause_for_clicks=_pause_setting(env.get("SQSAM_TRAIN_PAUSE_FOR_CLICKS", "0.5")))
        except ValueError as exc:
            raise ConfigError(f"a SQSAM_TRAIN_* setting is not a number: {exc}") from None
        if (settings.min_annotations < 1 or settings.threads < 1 or not settings.minutes > 0 or settings.jobs < 1
                or (settings.steps is not None and settings.steps < 1) or settings.members < 1):
            raise ConfigError("SQSAM_TRAIN_MIN_ANNOTATIONS, SQSAM_TRAIN_THREADS, SQSAM_TRAIN_MINUTES, "
                              "SQSAM_TRAIN_STEPS, SQSAM_TRAIN_MEMBERS and SQSAM_TRAIN_JOBS must be positive")
        return settings


def _pause_setting(text: str) -> float | None:
    """``SQSAM_TRAIN_PAUSE_FOR_CLICKS``: seconds, or ``off``."""
    if text.strip().lower() == "off":
        return None
    value = float(text)
    if not 0 <= value <= 60:
        raise ValueError(f"SQSAM_TRAIN_PAUSE_FOR_CLICKS must be between 0 and 60 seconds or 'off', not {text!r}")
    return value


def _signal_group(pid: int, sig: int) -> None:
    """``sig`` to the process group ``pid`` leads (a fine-tune runs in its own session); gone is fine."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def held_out_scores(report: dict) -> dict:
    """What ``/health`` shows of a fine-tune's report (``sqsam_train.finetune``): the served and the
    candidate model's held-out scores, the chosen weight mix, and the change per object against
    the served model with its intervals."""
    return {"base": report.get("base"), "candidate": report.get("candidate"), "mix": report.get("mix"),
            "change": report.get("change")}


def _project_key(project_id: Any) -> str | None:
    """A project id as a folder-safe string of digits, or None."""
    text = str(project_id).split(".", 1)[0].strip()
    return text if text.isdigit() else None


class ProjectModels:
    """The project models in ``root`` (``project-<id>/state.json`` names the current file) and
    the base model; loaded models are kept in a small LRU."""

    def __init__(self, root: Path, base_model, load: Callable[[Path], Any], cache_size: int = 4):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_model = base_model
        self.base_version = str(getattr(getattr(base_model, "spec", None), "model_version", None) or "sqsam")
        self._load = load
        self._loaded: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def folder(self, project: str) -> Path:
        return self.root / f"project-{project}"

    def state(self, project: str) -> dict:
        path = self.folder(project) / "state.json"
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return {}

    def write_state(self, project: str, state: dict) -> None:
        self.folder(project).mkdir(parents=True, exist_ok=True)
        _write_json_atomic(self.folder(project) / "state.json", state)

    def current_path(self, project: str) -> Path | None:
        name = self.state(project).get("model_file")
        path = self.folder(project) / name if isinstance(name, str) else None
        return path if path is not None and path.is_file() else None

    def served(self, project_id: Any) -> tuple[Any, str]:
        """``(model, model_version)`` for a project's ``/predict``: its own model, else the base."""
        project = _project_key(project_id)
        if project is None:
            return self.base_model, self.base_version
        state = self.state(project)
        path = self.current_path(project)
        if path is None:
            return self.base_model, self.base_version
        key = (project, path.name)
        with self._lock:
            model = self._loaded.get(key)
            if model is not None:
                self._loaded.move_to_end(key)
                return model, state["model_version"]
        try:
            model = self._load(path)
        except Exception as exc:  # noqa: BLE001 - a broken file must not take the project down
            logger.error("project %s: cannot load %s (%s); serving the base model", project, path, exc)
            return self.base_model, self.base_version
        with self._lock:
            self._loaded[key] = model
            while len(self._loaded) > self._cache_size:
                self._loaded.popitem(last=False)
        return model, state["model_version"]

    def install(self, project: str, candidate: Path, version: str, number: int, report: dict) -> None:
        """Make ``candidate`` the project's model: moved to ``model-<n>.onnx``, then ``state.json``
        rewritten atomically; the model it replaces is deleted afterwards."""
        folder = self.folder(project)
        target = folder / f"model-{number}.onnx"
        os.replace(candidate, target)
        previous = self.current_path(project)
        state = self.state(project)
        state.update({"model_file": target.name, "model_version": version, "number": number,
                      "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      "held_out": held_out_scores(report)})
        self.write_state(project, state)
        if previous is not None and previous != target:
            previous.unlink(missing_ok=True)

    def projects(self) -> list[str]:
        return sorted(p.name.split("-", 1)[1] for p in self.root.glob("project-*") if p.is_dir())


class Learner:
    """Schedules and runs fine-tuning jobs (module docstring); thread-safe."""

    def __init__(self, settings: TrainSettings, models: ProjectModels, loader, project_info: Callable[[str], dict],
                 base_model_path: Path | None = None):
        self.settings = settings
        self.models = models
        self.loader = loader
        self.project_info = project_info
        self.base_model_path = base_model_path
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(settings.jobs)
        self._jobs: dict[str, dict] = {}  # project -> {"thread", "process", "number"}
        self._clicks = 0  # interactive clicks being answered now
        self._paused: set[int] = set()  # fine-tune process groups stopped for them
        self._resume_at = 0.0  # time.monotonic() after which the paused ones continue
        self._resumer: threading.Thread | None = None
        self.unavailable = None if importlib.util.find_spec("torch") else TRAIN_EXTRA_MISSING
        if self.unavailable:
            logger.warning("MODEL_DIR is set but %s; project models already in %s are served", self.unavailable,
                           models.root)
        for project in models.projects():  # a job cut short by a restart is reported as such
            state = models.state(project)
            if state.get("job", {}).get("status") in ("queued", "fetching", "training"):
                state["job"].update(status="failed", error="the backend restarted while the job ran")
                models.write_state(project, state)

    # ----------------------------------------------------------------------------------------
    # Events

    def on_event(self, action: str, data: dict) -> dict:
        """A webhook event; returns the JSON to answer with."""
        if self.unavailable:
            return {"status": "ok", "message": f"{action} ignored: {self.unavailable}"}
        project = _project_key((data.get("project") or {}).get("id") if isinstance(data.get("project"), dict)
                               else data.get("project"))
        if project is None:
            return {"status": "ok", "message": f"{action}: no project id in the event; ignored"}
        if action in TRAIN_NOW_EVENTS:
            return self.request(project, force=True)
        if action in ANNOTATION_EVENTS:
            annotation = data.get("annotation") if isinstance(data.get("annotation"), dict) else {}
            with self._lock:  # each annotation counts once, however many events (and webhooks) report it
                state = self.models.state(project)
                seen = state.setdefault("new_annotation_ids", [])
                key = annotation.get("id")
                if key is None or key not in seen:
                    seen.append(key)
                    del seen[:-MAX_TRACKED_IDS]
                    state["new_annotations"] = int(state.get("new_annotations", 0)) + 1
                    self.models.write_state(project, state)
            return self.request(project, force=False)
        return {"status": "ok", "message": f"{action}: nothing to learn from"}

    def request(self, project: str, force: bool) -> dict:
        """Start a job for ``project`` if none runs and enough annotations arrived (or ``force``)."""
        with self._lock:
            state = self.models.state(project)
            pending = int(state.get("new_annotations", 0))
            if project in self._jobs:
                return {"status": "ok", "message": f"project {project}: a fine-tune is already running"}
            if not force and pending < self.settings.min_annotations:
                return {"status": "ok", "message": f"project {project}: {pending} new annotation(s); training "
                                                   f"starts at {self.settings.min_annotations}"}
            number = int(state.get("jobs", 0)) + 1
            state["jobs"] = number
            state["job"] = {"number": number, "status": "queued", "annotations_counted": pending,
                            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            self.models.write_state(project, state)
            job = {"number": number, "process": None}
            self._jobs[project] = job
            job["thread"] = threading.Thread(target=self._run, args=(project, number, pending),
                                             name=f"sqsam-finetune-{project}", daemon=True)
            job["thread"].start()
        logger.info("project %s: fine-tune %d scheduled (%d new annotations)", project, number, pending)
        return {"status": "ok", "message": f"project {project}: fine-tune {number} started", "job": number}

    def running(self, project: str) -> bool:
        with self._lock:
            return project in self._jobs

    def wait(self, project: str, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the project's job to end; True when none runs."""
        with self._lock:
            job = self._jobs.get(project)
        if job is None:
            return True
        job["thread"].join(timeout)
        return not job["thread"].is_alive()

    def job_pid(self, project: str) -> int | None:
        with self._lock:
            job = self._jobs.get(project)
            process = job and job.get("process")
            return process.pid if process is not None else None

    # ----------------------------------------------------------------------------------------
    # Clicks first

    @contextmanager
    def clicks_first(self):
        """Around an interactive click: every running fine-tune is paused (SIGSTOP to its process
        group) and continues ``settings.pause_for_clicks`` seconds after the last click is answered
        (SIGCONT). One training thread beside a click on a 2-core machine makes the click 2-3x
        slower even at ``nice`` 10 (docs/finetune.md); paused, it costs the click nothing, and the
        job trains in the gaps between an annotator's clicks. Its ``--minutes`` are wall clock, so a
        busy project's job makes fewer steps (``SQSAM_TRAIN_STEPS`` gives a fixed number)."""
        if self.settings.pause_for_clicks is None:
            yield
            return
        with self._lock:
            self._clicks += 1
            for job in self._jobs.values():
                process = job.get("process")
                if process is not None and process.pid not in self._paused:
                    _signal_group(process.pid, signal.SIGSTOP)
                    self._paused.add(process.pid)
        try:
            yield
        finally:
            with self._lock:
                self._clicks -= 1
                self._resume_at = time.monotonic() + self.settings.pause_for_clicks
                if self._paused and self._resumer is None:
                    self._resumer = threading.Thread(target=self._resume_when_idle, name="sqsam-finetune-resume",
                                                     daemon=True)
                    self._resumer.start()

    def _resume_when_idle(self) -> None:
        while True:
            with self._lock:
                wait = self._resume_at - time.monotonic()
                if self._clicks == 0 and wait <= 0:
                    self._resume_all()
                    self._resumer = None
                    return
            time.sleep(min(max(wait, 0.02), 1.0))

    def _resume_all(self) -> None:
        """SIGCONT to every paused fine-tune (with ``_lock`` held)."""
        for pid in self._paused:
            _signal_group(pid, signal.SIGCONT)
        self._paused.clear()

    def adopt(self, project: str, process: subprocess.Popen) -> None:
        """Count ``process`` (a fine-tune in its own session) as ``project``'s running job, so that
        clicks pause it; :meth:`fine_tune` adopts the processes it starts, ``finetune_bench`` one
        it starts itself."""
        with self._lock:
            self._jobs.setdefault(project, {"number": None, "thread": None})["process"] = process

    def paused(self) -> set[int]:
        """Process ids of the fine-tunes paused for clicks now."""
        with self._lock:
            return set(self._paused)

    def health(self) -> dict:
        """Per project: the model served, the last job's outcome, new annotations waiting."""
        details = {}
        for project in self.models.projects():
            state = self.models.state(project)
            details[project] = {"model_version": state.get("model_version", self.models.base_version),
                                "new_annotations": int(state.get("new_annotations", 0)),
                                "running": self.running(project), "last_job": state.get("job")}
        return {"enabled": not self.unavailable, "reason": self.unavailable,
                "min_annotations": self.settings.min_annotations, "threads": self.settings.threads,
                "minutes": self.settings.minutes, "projects": details}

    # ----------------------------------------------------------------------------------------
    # The job

    def _update_job(self, project: str, **fields) -> None:
        with self._lock:
            state = self.models.state(project)
            state.setdefault("job", {}).update(fields)
            self.models.write_state(project, state)

    def _run(self, project: str, number: int, counted: int) -> None:
        folder = self.models.folder(project)
        work = folder / f"job-{number}"
        try:
            with self._slots:
                time.sleep(self.settings.delay)
                self._update_job(project, status="fetching")
                tasks = self.export_tasks(project)
                skipped = self.write_dataset(tasks, work / "data", project)
                self._update_job(project, status="training", skipped=skipped[:50], skipped_count=len(skipped))
                outcome = self.fine_tune(project, number, work)
            status = outcome.pop("status")
            self._update_job(project, status=status, ended_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                             **outcome)
            if status in ("installed", "worse"):  # these annotations have been learnt from (or tried)
                with self._lock:
                    state = self.models.state(project)
                    state["new_annotations"] = max(0, int(state.get("new_annotations", 0)) - counted)
                    state["new_annotation_ids"] = state.get("new_annotation_ids", [])[counted:]
                    self.models.write_state(project, state)
        except Exception as exc:  # noqa: BLE001 - report any failure; the served model stays
            logger.error("project %s: fine-tune %d failed: %s", project, number, exc)
            self._update_job(project, status="failed", error=str(exc)[:2000],
                             ended_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        finally:
            shutil.rmtree(work, ignore_errors=True)
            with self._lock:
                self._jobs.pop(project, None)

    def _label_studio(self, project: str) -> tuple[str, str]:
        info = self.project_info(project)
        url = self.loader.label_studio_url
        token = self.loader.api_key or info.get("access_token")
        if not url or not token:
            raise RuntimeError("cannot read the project's annotations: Label Studio's URL and API key are unknown "
                               "(set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY)")
        return url, token

    def export_tasks(self, project: str) -> list[dict]:
        """The project's tasks with their annotations, from Label Studio's export API."""
        import requests

        from .images import TokenAuth

        url, token = self._label_studio(project)
        session = requests.Session()
        session.trust_env = False
        auth = TokenAuth(url, token, session)
        endpoint = f"{url.rstrip('/')}/api/projects/{project}/export?exportType=JSON&download_all_tasks=false"
        response = session.get(endpoint, headers={"Authorization": auth.header()}, timeout=self.settings.export_timeout,
                               stream=True, allow_redirects=False)
        if response.status_code != 200:
            raise RuntimeError(f"Label Studio's export of project {project} answered {response.status_code}")
        chunks, size = [], 0
        for chunk in response.iter_content(1 << 16):
            size += len(chunk)
            if size > MAX_EXPORT_BYTES:
                raise RuntimeError(f"the export of project {project} is over {MAX_EXPORT_BYTES >> 20} MiB")
            chunks.append(chunk)
        try:
            tasks = json.loads(b"".join(chunks))
        except ValueError as exc:
            raise RuntimeError(f"Label Studio's export of project {project} is not JSON: {exc}") from None
        if not isinstance(tasks, list):
            raise RuntimeError(f"Label Studio's export of project {project} is not a list of tasks")
        return tasks

    def write_dataset(self, tasks: list[dict], out: Path, project: str) -> list[str]:
        """The annotated tasks as ``out/images/task<id>.png`` + ``out/masks/task<id>_<k>.png``;
        images fetched as ``/predict`` fetches them. Returns what was skipped, and why."""
        from sqsam_core.datasets import read_label_studio

        fallback = self.project_info(project).get("access_token")
        found = read_label_studio(tasks, fetch=lambda url: self.loader.load(url, fallback_token=fallback).rgb)
        (out / "images").mkdir(parents=True, exist_ok=True)
        (out / "masks").mkdir(parents=True, exist_ok=True)
        for item in found.images:
            rgb = item.load()
            cv2.imwrite(str(out / "images" / f"{item.name}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            for k, obj in enumerate(item.objects):
                cv2.imwrite(str(out / "masks" / f"{item.name}_{k}.png"), obj.mask.astype(np.uint8) * 255)
        for reason in found.skipped:
            logger.warning("project %s: skipped %s", project, reason)
        logger.info("project %s: %d annotated images, %d objects, %d skipped", project, len(found.images),
                    found.num_objects, len(found.skipped))
        if len(found.images) < 2:
            raise RuntimeError(f"{len(found.images)} usable annotated image(s); a fine-tune needs at least 2"
                               + (f" ({len(found.skipped)} skipped: {'; '.join(found.skipped[:3])})"
                                  if found.skipped else ""))
        return found.skipped

    def fine_tune(self, project: str, number: int, work: Path) -> dict:
        """Run ``sqsam_train.finetune`` in a child process; install the model when it passes."""
        version = f"{self.models.base_version}+p{project}.{number}"
        candidate = self.models.folder(project) / f"candidate-{number}.onnx"
        report_path = work / "report.json"
        against = self.models.current_path(project) or self.base_model_path
        command = [sys.executable, "-m", "sqsam_train.finetune", str(work / "data"), "--out", str(candidate),
                   "--run-dir", str(work / "run"),
                   *(["--steps", str(self.settings.steps)] if self.settings.steps else
                     ["--minutes", str(self.settings.minutes)]),
                   "--threads", str(self.settings.threads), "--members", str(self.settings.members),
                   "--version", version, "--no-progress",
                   "--json", str(report_path), "--nice", str(self.settings.nice)]
        if against is not None:
            command += ["--base-model", str(against)]
        if self.settings.data:
            command += ["--data", self.settings.data]
        threads = str(self.settings.threads)
        env = dict(os.environ, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, OPENBLAS_NUM_THREADS=threads,
                   SQSAM_EXIT_WITH_PARENT=str(os.getpid()))  # a job paused for clicks must not outlive us
        log_path = work / "finetune.log"
        started = time.time()
        with log_path.open("wb") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       env=env, start_new_session=True)
            self.adopt(project, process)
            logger.info("project %s: fine-tune %d running (pid %d, %s min, %s thread(s))", project, number,
                        process.pid, self.settings.minutes, threads)
            try:
                code = process.wait(timeout=self.settings.minutes * 60 * 3 + 600 if not self.settings.steps
                                    else self.settings.steps * 60 + 600)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                code = None
            finally:
                with self._lock:
                    self._paused.discard(process.pid)
        tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        minutes = round((time.time() - started) / 60, 2)
        candidate_exists = candidate.is_file()
        if code == 0 and candidate_exists:
            self.models.install(project, candidate, version, number, report)
            logger.info("project %s: now serving %s (held-out %s)", project, version, report.get("candidate"))
            return {"status": "installed", "model_version": version, "minutes": minutes,
                    "held_out": held_out_scores(report)}
        candidate.unlink(missing_ok=True)
        if code == EXIT_WORSE:
            why = (f"the fine-tuned model is worse than the one served on the held-out tasks "
                   f"(candidate {report.get('candidate')}, served {report.get('base')}, change per object "
                   f"{report.get('change')}); kept the served model")
            logger.warning("project %s: fine-tune %d: %s", project, number, why)
            return {"status": "worse", "error": why, "minutes": minutes, "held_out": held_out_scores(report)}
        how = "timed out" if code is None else (f"was killed by signal {-code}" if code < 0 else f"exited with {code}")
        why = f"the fine-tune {how}; kept the served model. {' | '.join(tail)}"[:2000]
        logger.error("project %s: fine-tune %d: %s", project, number, why)
        return {"status": "failed", "error": why, "minutes": minutes}


def make_learner(model, loader, project_info: Callable[[str], dict],
                 settings: TrainSettings | None) -> Learner | None:
    """A :class:`Learner` serving project models beside ``model`` (the base), or None when
    ``settings`` is None (``MODEL_DIR`` unset: the backend does not learn)."""
    if settings is None:
        return None

    def load(path: Path):
        from sqsam_core import SqueezeSAM

        return SqueezeSAM(path)

    base_path = getattr(getattr(model, "backend", None), "path", None)
    models = ProjectModels(settings.model_dir, model, load)
    return Learner(settings, models, loader, project_info, Path(base_path) if base_path else None)
