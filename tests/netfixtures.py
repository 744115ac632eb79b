"""Loopback servers for the security, fault and load tests (127.0.0.1 only, stopped by the tests).

* :class:`RecordingServer`: an HTTP server whose routes serve an image, redirect, or answer a
  status; it records every request's path and ``Authorization`` header.
* :class:`FaultServer`: a raw TCP server that misbehaves: ``drip`` (an HTTP head, then one body
  byte per second), ``hang`` (accepts, never answers), ``reset`` (accepts, then resets),
  ``garbage`` (answers bytes that are not HTTP).
* :func:`gunicorn_server`: the backend under gunicorn (1 worker x N threads, like the Dockerfile).
"""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def png_bytes(width: int = 64, height: int = 48) -> bytes:
    image = np.full((height, width, 3), 60, np.uint8)
    image[height // 4: 3 * height // 4, width // 4: 3 * width // 4] = (220, 30, 30)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


class RecordingServer:
    """``routes``: path -> ``("image", bytes)`` | ``("redirect", url)`` | ``("status", code)``;
    a path not listed answers the image. ``hits``: ``[(path, authorization or None)]``."""

    def __init__(self, routes: dict | None = None):
        self.routes = dict(routes or {})
        self.hits: list[tuple[str, str | None]] = []
        self.posts: list[tuple[str, bytes, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                outer.hits.append((self.path, self.headers.get("Authorization")))
                kind, value = outer.routes.get(self.path.split("?", 1)[0], ("image", png_bytes()))
                if kind == "redirect":
                    self.send_response(302)
                    self.send_header("Location", value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif kind == "status":
                    self.send_response(value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    self.send_response(200)
                    self.send_header("Content-Type", "image/png")
                    self.send_header("Content-Length", str(len(value)))
                    self.end_headers()
                    self.wfile.write(value)

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                outer.posts.append((self.path, self.rfile.read(length), self.headers.get("Authorization")))
                self.send_response(401)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class FaultServer:
    """A TCP server on 127.0.0.1 that misbehaves in one way (see the module docstring)."""

    def __init__(self, mode: str, duration: float = 30.0):
        self.mode = mode
        self.duration = duration
        self.connections = 0
        self._stop = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._clients: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            self._clients.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(1.0)
            try:
                conn.recv(65536)
            except OSError:
                pass
            if self.mode == "reset":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                return
            if self.mode == "garbage":
                conn.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
                time.sleep(0.2)
                conn.close()
                return
            if self.mode == "drip":
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 100000\r\n\r\n")
            end = time.monotonic() + self.duration
            while not self._stop.is_set() and time.monotonic() < end:
                if self.mode == "drip":
                    conn.sendall(b"\x89")
                self._stop.wait(1.0)
        except OSError:
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def stop(self) -> None:
        self._stop.set()
        self.sock.close()
        self.thread.join(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def gunicorn_available() -> bool:
    try:
        import gunicorn  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def gunicorn_server(env: dict, threads: int = 4, timeout: float = 120.0):
    """The backend under gunicorn on 127.0.0.1 (``sqsam_label_studio.app:create_app()``); yields its URL.

    Stopped by its PID (SIGTERM, then SIGKILL) when the block ends.
    """
    from sqsam_core.bench.server import free_port, wait_healthy

    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
               "--threads", str(threads), "--timeout", "120", "--log-level", "warning",
               "sqsam_label_studio.app:create_app()"]
    full_env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), **env}
    process = subprocess.Popen(command, env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               stdin=subprocess.DEVNULL, cwd=str(REPO))
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_healthy(url, process, timeout)
        except RuntimeError:
            process.kill()
            raise RuntimeError(f"gunicorn did not start: {process.stderr.read().decode(errors='replace')[-2000:]}")
        yield url
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
