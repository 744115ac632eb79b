"""``sqsam serve label-studio`` as a separate process on 127.0.0.1, started the way a user starts it.

The benchmarks talk to the backend over HTTP only; nothing here imports it. A server gets a free
port, is waited for on ``GET /health`` (bounded) and is stopped by its PID (SIGTERM, then SIGKILL).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


def free_port(host: str = HOST) -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen | None = None, timeout: float = 120.0) -> None:
    """Poll ``url``/health until it answers 200; RuntimeError when ``process`` exits or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server exited with code {process.returncode} before answering /health")
        try:
            with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url}/health did not answer within {timeout:g} s")


def serve_command(port: int, model: str | None = None, threads: int | None = None) -> list[str]:
    """The ``sqsam serve label-studio`` command line for 127.0.0.1:``port``."""
    command = [sys.executable, "-m", "sqsam_core", "serve", "label-studio", "--host", HOST,
               "--port", str(port), "--log-level", "WARNING"]
    if model:
        command += ["--model", str(model)]
    if threads:
        command += ["--threads", str(threads)]
    return command


def start_server(port: int, model: str | None = None, env: dict | None = None, threads: int | None = None,
                 stderr=subprocess.PIPE) -> subprocess.Popen:
    """``sqsam serve label-studio`` on 127.0.0.1:``port`` as a subprocess (stop it with :func:`stop_process`)."""
    return subprocess.Popen(serve_command(port, model, threads), stdout=subprocess.DEVNULL, stderr=stderr,
                            stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def stop_process(process: subprocess.Popen, timeout: float = 20.0) -> None:
    """SIGTERM ``process`` (by its PID), SIGKILL it if it is still there after ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


class BackendProcess:
    """``with BackendProcess(model=..., env=...) as url:`` a running backend at ``url``, stopped on exit.

    ``env`` adds environment variables (``LOCAL_FILES_DOCUMENT_ROOT`` ...). The server's stderr
    goes to a temporary file whose tail is in the error when it does not start.
    """

    def __init__(self, model: str | None = None, threads: int | None = None, env: dict | None = None,
                 timeout: float = 120.0):
        self.model, self.threads, self.env, self.timeout = model, threads, env or {}, timeout
        self.process: subprocess.Popen | None = None
        self.url: str | None = None
        self._log = None

    def __enter__(self) -> str:
        port = free_port()
        self._log = tempfile.NamedTemporaryFile(prefix="sqsam-serve-", suffix=".log", delete=False)
        self.process = start_server(port, self.model, self.env, self.threads, stderr=self._log)
        self.url = f"http://{HOST}:{port}"
        try:
            wait_healthy(self.url, self.process, self.timeout)
        except RuntimeError as exc:
            self.__exit__(None, None, None, keep_log=True)
            raise RuntimeError(f"sqsam serve label-studio did not start: {exc}: {self._log_tail()}") from None
        return self.url

    def __exit__(self, exc_type, exc, tb, keep_log: bool = False) -> None:
        if self.process is not None:
            stop_process(self.process)
        if self._log is not None:
            self._log.close()
            if not keep_log:
                Path(self._log.name).unlink(missing_ok=True)

    def _log_tail(self, lines: int = 3) -> str:
        try:
            path = Path(self._log.name)
            text = path.read_text(errors="replace").strip().splitlines()
            path.unlink(missing_ok=True)
        except OSError:
            return "no log"
        return " | ".join(text[-lines:]) or "no output"
