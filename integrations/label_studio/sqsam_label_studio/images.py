"""Fetch task images the way Label Studio serves them, bounded in size and time.

URL forms in task data:

* ``/data/upload/...``, ``/data/local-files/?d=...``, ``/tasks/<id>/presign/?fileuri=...`` and
  any other path: relative to Label Studio (``LABEL_STUDIO_URL``, else the ``hostname`` that
  ``/setup`` sent), fetched with its token. ``/data/local-files/?d=...`` is read from disk
  instead when ``LOCAL_FILES_DOCUMENT_ROOT`` is set and the file is there.
* ``http(s)://...``: fetched directly; the token is sent only when the URL's scheme, host and
  port are Label Studio's.
* ``data:image/...;base64,...``: decoded in place.

Tokens (``LABEL_STUDIO_API_KEY``): a legacy token goes as ``Authorization: Token <t>``; a personal
access token (a JWT refresh token) is exchanged at ``/api/token/refresh/`` for an access token
sent as ``Authorization: Bearer <access>``, refreshed shortly before it expires (or after a 401).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import numpy as np

from sqsam_core.errors import ImageTooLargeError, InvalidImageError
from sqsam_core.imageio import decode_image_bytes

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 60_000_000
DEFAULT_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0


class ImageFetchError(Exception):
    """An image could not be fetched or decoded; ``status`` is the HTTP status to answer."""

    def __init__(self, message: str, status: int = 422):
        super().__init__(message)
        self.status = status


@dataclass
class LoadedImage:
    rgb: np.ndarray  # (H, W, 3) uint8
    key: str  # stable per fetched copy: the model's cache key

    @property
    def height(self) -> int:
        return int(self.rgb.shape[0])

    @property
    def width(self) -> int:
        return int(self.rgb.shape[1])


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def _jwt_payload(token: str) -> dict | None:
    """The payload of a JWT (unverified), or None when ``token`` is not a JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header = json.loads(base64.urlsafe_b64decode(parts[0] + "=" * (-len(parts[0]) % 4)))
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None
    if not isinstance(header, dict) or "alg" not in header or not isinstance(payload, dict):
        return None
    return payload


def is_jwt(token: str) -> bool:
    return _jwt_payload(token) is not None


class TokenAuth:
    """The ``Authorization`` header for one Label Studio host and one API key."""

    def __init__(self, base_url: str, api_key: str, session, timeout: float = 10.0):
        self.base_url = base_url.rstrip("/") + "/"
        self.api_key = api_key.strip()
        self.session = session
        self.timeout = timeout
        self.jwt = is_jwt(self.api_key)
        self._access: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def header(self, force_refresh: bool = False) -> str:
        if not self.jwt:
            return f"Token {self.api_key}"
        with self._lock:
            if force_refresh or self._access is None or time.time() > self._expires - 30:
                self._refresh()
            return f"Bearer {self._access}"

    def _refresh(self) -> None:
        url = urljoin(self.base_url, "api/token/refresh/")
        try:
            response = self.session.post(url, json={"refresh": self.api_key}, timeout=(CONNECT_TIMEOUT, self.timeout),
                                         allow_redirects=False)
        except Exception as exc:  # requests.RequestException and socket errors
            raise ImageFetchError(f"cannot reach Label Studio at {self.base_url} to refresh the API token: {exc}",
                                  424) from None
        if response.status_code != 200:
            raise ImageFetchError(
                f"Label Studio refused the personal access token (POST /api/token/refresh/ answered "
                f"{response.status_code}); check LABEL_STUDIO_API_KEY", 424)
        try:
            access = response.json()["access"]
        except (ValueError, KeyError, TypeError):
            raise ImageFetchError("Label Studio's /api/token/refresh/ answered without an access token", 424) from None
        payload = _jwt_payload(access) or {}
        self._access = access
        exp = payload.get("exp")
        self._expires = float(exp) if isinstance(exp, (int, float)) else time.time() + 240


class ImageLoader:
    """Fetches, decodes and caches task images (thread-safe LRU of decoded RGB arrays)."""

    def __init__(self, ls_url: str | None = None, api_key: str | None = None, document_root: str | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
                 timeout: float = DEFAULT_TIMEOUT, cache_size: int = 8, cache_ttl: float = 600.0):
        import requests

        self.ls_url = ls_url.rstrip("/") + "/" if ls_url else None
        self.api_key = api_key or None
        self.document_root = Path(document_root).resolve() if document_root else None
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)
        self.timeout = float(timeout)
        self.session = requests.Session()
        self.session.max_redirects = 5
        self.session.trust_env = True
        self._auths: dict[tuple[str, str], TokenAuth] = {}
        self._cache: OrderedDict[str, tuple[float, LoadedImage]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, env=os.environ) -> "ImageLoader":
        return cls(
            ls_url=env.get("LABEL_STUDIO_URL") or env.get("LABEL_STUDIO_HOST") or None,
            api_key=env.get("LABEL_STUDIO_API_KEY") or env.get("LABEL_STUDIO_ACCESS_TOKEN") or None,
            document_root=env.get("LOCAL_FILES_DOCUMENT_ROOT") or None,
            max_bytes=int(env.get("SQSAM_MAX_IMAGE_BYTES", DEFAULT_MAX_BYTES)),
            max_pixels=int(env.get("SQSAM_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS)),
            timeout=float(env.get("SQSAM_IMAGE_TIMEOUT", DEFAULT_TIMEOUT)),
        )

    # ----------------------------------------------------------------------------------------

    def load(self, url: str, fallback_host: str | None = None, fallback_token: str | None = None) -> LoadedImage:
        """Fetch and decode ``url``; ``fallback_*`` come from ``/setup`` when the env has none."""
        if not isinstance(url, str) or not url.strip():
            raise ImageFetchError("the task has no image URL")
        url = url.strip()
        ls_url = self.ls_url or (fallback_host.rstrip("/") + "/" if fallback_host else None)
        token = self.api_key or fallback_token
        cache_id = hashlib.sha1(f"{ls_url}|{url}".encode()).hexdigest()  # data: URLs can be megabytes
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(cache_id)
            if hit is not None and now - hit[0] < self._cache_ttl:
                self._cache.move_to_end(cache_id)
                return hit[1]
        data = self._read(url, ls_url, token)
        rgb = self.decode(data)
        key = "ls:" + hashlib.sha1(f"{cache_id}|{now}".encode()).hexdigest()[:20]
        image = LoadedImage(rgb, key)
        with self._lock:
            self._cache[cache_id] = (now, image)
            self._cache.move_to_end(cache_id)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return image

    def _read(self, url: str, ls_url: str | None, token: str | None) -> bytes:
        if url.startswith("data:"):
            return self._read_data_url(url)
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            absolute = url
        elif scheme == "" and url.startswith("/"):
            if parts.path.startswith("/data/local-files") and self.document_root is not None:
                local = self._local_file(url)
                if local is not None:
                    return local
            if ls_url is None:
                raise ImageFetchError(
                    f"cannot fetch {url!r}: it is served by Label Studio; set LABEL_STUDIO_URL (and "
                    f"LABEL_STUDIO_API_KEY) for the sqsam backend")
            absolute = urljoin(ls_url, url.lstrip("/"))
        else:
            raise ImageFetchError(
                f"cannot fetch {url[:200]!r}: unsupported URL scheme {scheme or '(relative)'!r}; use http(s) "
                f"URLs or let Label Studio serve the file (uploads, local files, cloud storage with proxy)")
        send_token = bool(token and ls_url and _origin(absolute) == _origin(ls_url))
        return self._http_get(absolute, ls_url if send_token else None, token if send_token else None)

    def _read_data_url(self, url: str) -> bytes:
        head, _, payload = url.partition(",")
        if ";base64" not in head:
            raise ImageFetchError("data: URLs must be base64-encoded images")
        if len(payload) > self.max_bytes * 4 // 3 + 4:
            raise ImageFetchError(f"the image is larger than {self.max_bytes} bytes", 413)
        try:
            return base64.b64decode(payload, validate=False)
        except (binascii.Error, ValueError):
            raise ImageFetchError("the data: URL is not valid base64") from None

    def _local_file(self, url: str) -> bytes | None:
        values = parse_qs(urlsplit(url).query, keep_blank_values=True).get("d")
        relative = unquote(values[-1]) if values else ""
        if not relative:
            raise ImageFetchError(f"local-files URL has no file path: {url!r}")
        root = self.document_root
        path = (root / relative.lstrip("/")).resolve()
        if path != root and root not in path.parents:
            raise ImageFetchError(f"local file {relative!r} lies outside LOCAL_FILES_DOCUMENT_ROOT", 403)
        if not path.is_file():
            return None  # not mounted here: ask Label Studio
        size = path.stat().st_size
        if size > self.max_bytes:
            raise ImageFetchError(f"the image is {size} bytes, more than the limit of {self.max_bytes}", 413)
        return path.read_bytes()

    def _auth(self, ls_url: str, token: str) -> TokenAuth:
        key = (ls_url, token)
        with self._lock:
            auth = self._auths.get(key)
            if auth is None:
                auth = self._auths[key] = TokenAuth(ls_url, token, self.session, self.timeout)
            return auth

    def _http_get(self, url: str, ls_url: str | None, token: str | None) -> bytes:
        import requests

        auth = self._auth(ls_url, token) if ls_url and token else None
        for attempt in (0, 1):
            headers = {"Accept": "image/*,*/*;q=0.5", "User-Agent": "sqsam-label-studio"}
            if auth is not None:
                headers["Authorization"] = auth.header(force_refresh=attempt > 0)
            deadline = time.monotonic() + self.timeout
            try:
                with self.session.get(url, headers=headers, stream=True,
                                      timeout=(CONNECT_TIMEOUT, self.timeout)) as response:
                    if response.status_code == 401 and auth is not None and auth.jwt and attempt == 0:
                        continue  # access token expired early: refresh once
                    if response.status_code >= 400:
                        hint = ""
                        if response.status_code in (401, 403):
                            hint = ("; set LABEL_STUDIO_API_KEY to a valid Label Studio token" if auth is None
                                    else "; check LABEL_STUDIO_API_KEY")
                        raise ImageFetchError(f"fetching the image {_short(url)} failed: HTTP "
                                              f"{response.status_code}{hint}", 424)
                    length = response.headers.get("Content-Length")
                    if length and length.isdigit() and int(length) > self.max_bytes:
                        raise ImageFetchError(
                            f"the image {_short(url)} is {length} bytes, more than the limit of {self.max_bytes}", 413)
                    chunks, total = [], 0
                    for chunk in response.iter_content(256 * 1024):
                        total += len(chunk)
                        if total > self.max_bytes:
                            raise ImageFetchError(
                                f"the image {_short(url)} is more than the limit of {self.max_bytes} bytes", 413)
                        if time.monotonic() > deadline:
                            raise ImageFetchError(f"fetching the image {_short(url)} took longer than "
                                                  f"{self.timeout:g} s", 424)
                        chunks.append(chunk)
                    return b"".join(chunks)
            except requests.RequestException as exc:
                raise ImageFetchError(f"fetching the image {_short(url)} failed: {type(exc).__name__}", 424) from None
        raise ImageFetchError(f"fetching the image {_short(url)} failed: HTTP 401 after a token refresh", 424)

    # ----------------------------------------------------------------------------------------

    def decode(self, data: bytes) -> np.ndarray:
        """Bytes -> ``(H, W, 3)`` uint8 RGB via the core's decoder (EXIF applied, pixel limit
        checked on the header before decoding): 413 when too large, 422 when unreadable."""
        try:
            return decode_image_bytes(data, self.max_pixels, name="the image")
        except ImageTooLargeError as exc:
            raise ImageFetchError(str(exc), 413) from None
        except InvalidImageError as exc:
            raise ImageFetchError(str(exc), 422) from None


def _short(url: str) -> str:
    parts = urlsplit(url)
    shown = f"{parts.scheme}://{parts.netloc}{parts.path}" if parts.scheme else parts.path
    return shown if len(shown) <= 160 else shown[:157] + "..."
