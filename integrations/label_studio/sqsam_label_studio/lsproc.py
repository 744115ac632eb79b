"""Run a local Label Studio (from its pip package) and drive it over its REST API.

Used by ``sqsam demo`` and by the end-to-end test. Label Studio pins many packages, so it lives in
a virtual environment of its own, ``.venv-label-studio`` (``make install-label-studio`` builds it from
``requirements/label-studio.txt``); ``SQSAM_LABEL_STUDIO_BIN`` (or ``--label-studio-bin``) points
at another ``label-studio`` executable. The server listens on 127.0.0.1 only.
"""

from __future__ import annotations

import mimetypes
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Iterable

from .errors import LabelStudioError

ENV_BIN = "SQSAM_LABEL_STUDIO_BIN"
#: The one name of Label Studio's own venv (the Makefile, the demo and the tests use it).
LS_VENV = ".venv-label-studio"
#: Files per import request (Label Studio's DATA_UPLOAD_MAX_NUMBER_FILES is 100 by default).
IMPORT_BATCH = 50
#: How to build that venv by hand, from the constraints the repository commits.
LS_INSTALL = (f"python -m venv {LS_VENV} && {LS_VENV}/bin/pip install "
              "-c requirements/label-studio.txt -r requirements/label-studio.in")


def find_label_studio(explicit: str | None = None) -> str | None:
    """The ``label-studio`` executable: ``explicit``, ``$SQSAM_LABEL_STUDIO_BIN``, ``./.venv-label-studio``,
    or on PATH (a venv folder is accepted wherever a path is)."""
    for candidate in (explicit, os.environ.get(ENV_BIN)):
        if candidate:
            return _executable(Path(candidate).expanduser())
    return _executable(Path(LS_VENV)) or shutil.which("label-studio")


def _executable(path: Path) -> str | None:
    if path.is_dir():
        path = path / "bin" / "label-studio"  # a venv directory
    return str(path.absolute()) if path.is_file() and os.access(path, os.X_OK) else None


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class LabelStudioServer:
    """A Label Studio process on 127.0.0.1 with one admin user (legacy token enabled)."""

    def __init__(self, executable: str, data_dir: str | os.PathLike, port: int | None = None,
                 username: str = "admin@example.com", password: str = "sqsam-demo",
                 token: str = "sqsam-demo-token-0123456789", log_path: str | os.PathLike | None = None,
                 extra_env: dict[str, str] | None = None):
        self.executable = executable
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.username, self.password, self.token = username, password, token
        self.log_path = Path(log_path) if log_path else self.data_dir / "label-studio.log"
        self.extra_env = extra_env or {}
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 300.0) -> "LabelStudioServer":
        import requests

        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        for key in ("LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "HOST", "PORT", "USERNAME", "PASSWORD",
                    "USER_TOKEN", "DATABASE_NAME"):
            env.pop(key, None)
        env.update({
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir.resolve()),
            "ML_BLOCK_LOCAL_IP": "false",  # the sqsam backend runs on 127.0.0.1 too
            "SSRF_PROTECTION_ENABLED": "false",
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
        })
        env.update(self.extra_env)
        command = [self.executable, "start", "--no-browser", "--internal-host", "127.0.0.1",
                   "--port", str(self.port), "--data-dir", str(self.data_dir.resolve()),
                   "--username", self.username, "--password", self.password,
                   "--user-token", self.token, "--enable-legacy-api-token", "--log-level", "WARNING"]
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, env=env, cwd=str(self.data_dir),
                                         start_new_session=True)
        process = self.process
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = process.poll()
            if code is not None:
                self.stop()
                raise LabelStudioError(self._failure(f"exited with code {code} during start-up", process))
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(1.0)
        self.stop()
        raise LabelStudioError(self._failure(f"did not answer on {self.url}/health within {timeout:.0f} s "
                                             f"(stopped; exit code {process.returncode})", process))

    def _failure(self, what: str, process: subprocess.Popen) -> str:
        """A start-up failure message: the process, what happened, and the last lines of its log."""
        return (f"Label Studio ({self.executable}, pid {process.pid}) {what}. "
                f"Last lines of {self.log_path}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 25) -> str:
        """The last ``lines`` lines of the server's log ('' if it cannot be read)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.rstrip().splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the process we started (by its PID / its own process group), bounded."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)  # start_new_session: its group id is its pid
            except (ProcessLookupError, PermissionError):
                process.terminate()
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    process.kill()
                process.wait(10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def client(self, auth_header: str | None = None) -> "LabelStudioClient":
        return LabelStudioClient(self.url, auth_header or f"Token {self.token}")

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


class LabelStudioClient:
    """The few REST calls sqsam's demo and tests need."""

    def __init__(self, url: str, auth_header: str, timeout: float = 120.0):
        import requests

        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = auth_header
        self.timeout = timeout

    def _call(self, method: str, path: str, expect: Iterable[int] = (200, 201), **kwargs) -> Any:
        response = self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        if response.status_code not in tuple(expect):
            raise LabelStudioError(f"{method} {path} -> {response.status_code}: {response.text[:1000]}")
        return response.json() if response.content else None

    def whoami(self) -> dict:
        return self._call("GET", "/api/current-user/whoami")

    def create_project(self, title: str, label_config: str, **fields) -> int:
        payload = {"title": title, "label_config": label_config, "show_collab_predictions": True}
        payload.update(fields)
        return int(self._call("POST", "/api/projects", json=payload)["id"])

    def import_images(self, project_id: int, paths: Iterable[str | os.PathLike]) -> list[int]:
        """Upload image files as tasks, ``IMPORT_BATCH`` files per request (Label Studio refuses a
        request with more than ``DATA_UPLOAD_MAX_NUMBER_FILES``, 100 by default); the new task ids."""
        paths = [Path(p) for p in paths]
        ids: list[int] = []
        for start in range(0, len(paths), IMPORT_BATCH):
            batch = paths[start:start + IMPORT_BATCH]
            with ExitStack() as stack:
                # one form field per file: Label Studio reads one file per field name
                files = [(f"file{n}", (path.name, stack.enter_context(open(path, "rb")),
                                       mimetypes.guess_type(path.name)[0] or "image/jpeg"))
                         for n, path in enumerate(batch)]
                result = self._call("POST", f"/api/projects/{project_id}/import?return_task_ids=true", files=files)
            ids += [int(t) for t in (result or {}).get("task_ids", [])]
        return ids or self.task_ids(project_id)

    def task_ids(self, project_id: int) -> list[int]:
        tasks = self._call("GET", f"/api/tasks?project={project_id}&page_size=1000")
        if isinstance(tasks, dict):
            tasks = tasks.get("tasks", [])
        return [int(t["id"]) for t in tasks]

    def connect_ml(self, project_id: int, url: str, title: str = "sqsam", interactive: bool = True,
                   **fields) -> dict:
        payload = {"project": project_id, "url": url, "title": title, "is_interactive": interactive}
        payload.update(fields)
        return self._call("POST", "/api/ml", json=payload)

    def ml_backend(self, ml_id: int) -> dict:
        return self._call("GET", f"/api/ml/{ml_id}")

    def task(self, task_id: int) -> dict:
        return self._call("GET", f"/api/tasks/{task_id}")

    def predictions(self, task_id: int) -> list[dict]:
        result = self._call("GET", f"/api/predictions?task={task_id}")
        return result if isinstance(result, list) else result.get("results", [])

    def interactive(self, ml_id: int, task_id: int, context: dict) -> dict:
        return self._call("POST", f"/api/ml/{ml_id}/interactive-annotating",
                          json={"task": task_id, "context": context})

    def create_personal_token(self) -> str:
        """A personal access token (JWT refresh token) for the current user."""
        return str(self._call("POST", "/api/token/", json={})["token"])


class BackgroundServer:
    """A WSGI app served on 127.0.0.1 from a thread (for the demo and tests)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0):
        from werkzeug.serving import make_server

        self.server = make_server(host, port, app, threaded=True)
        self.host, self.port = host, int(self.server.server_port)
        self.thread = threading.Thread(target=self.server.serve_forever, name="sqsam-ls-backend", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "BackgroundServer":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
