"""Fetch task images the way Label Studio serves them, bounded in size, time and destination.

URL forms in task data:

* ``/data/upload/...``, ``/data/local-files/?d=...``, ``/tasks/<id>/resolve/?fileuri=...`` and
  any other path: relative to Label Studio (``LABEL_STUDIO_URL``, else the first ``/setup``
  hostname, pinned), fetched with its token. ``/data/local-files/?d=...`` is read from disk
  instead when ``LOCAL_FILES_DOCUMENT_ROOT`` is set and the file is there.
* ``http(s)://...``: fetched directly under the fetch policy (:mod:`.netpolicy`: Label Studio,
  ``SQSAM_ALLOWED_HOSTS`` and public addresses; redirects re-checked, at most 5).
* ``data:image/...;base64,...``: decoded in place.

Tokens (``LABEL_STUDIO_API_KEY``, else the ``access_token`` of ``/setup``) go only to Label
Studio's origin (scheme, host and port), and only on the paths it serves files from
(:data:`TOKEN_PATHS`); a redirect elsewhere drops them. A legacy token goes as
``Authorization: Token <t>``; a personal access token (a JWT refresh token) is exchanged at
``<origin>/api/token/refresh/`` for an access token sent as ``Authorization: Bearer <access>``,
refreshed shortly before it expires (or after a 401).

Pinning: without ``LABEL_STUDIO_URL`` the first ``/setup`` hostname becomes Label Studio's
origin for the life of the process; a ``/setup`` naming another origin is refused (403)
unless the caller authenticated with basic auth (:meth:`ImageLoader.pin_label_studio`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import numpy as np

from sqsam_core.errors import ImageTooLargeError, InvalidImageError
from sqsam_core.imageio import decode_image_bytes

from .errors import ConfigError, ImageFetchError
from .netpolicy import FetchPolicy
from .safe_fetch import SafeFetcher, origin_of, short_url

logger = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_PIXELS = 60_000_000
DEFAULT_TIMEOUT = 30.0
CONNECT_TIMEOUT = 5.0
#: Image downloads running at once (``SQSAM_MAX_FETCHES``); a request finding them all busy
#: waits up to ``SQSAM_FETCH_QUEUE_TIMEOUT`` seconds, then gets 429. This keeps request threads
#: free (``/health`` answers) while image hosts are slow.
DEFAULT_MAX_FETCHES = 2
DEFAULT_FETCH_QUEUE_TIMEOUT = 2.0

#: Paths (below Label Studio's base URL) that serve task files: the only ones that get the token.
#: ``data/upload/<file>``, ``data/local-files/?d=``, ``storage-data/uploaded/?filepath=``, and the
#: cloud-storage resolvers ``tasks|projects/<id>/resolve|presign/?fileuri=``.
TOKEN_PATHS = re.compile(r"^(data/upload/[^?#]+|data/local-files/?|storage-data/uploaded/?"
                         r"|(tasks|projects)/\d+/(resolve|presign)/?)$")

# Back-compatible name for the origin helper.
_origin = origin_of


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


def _base_url(url: str, what: str) -> str:
    """``url`` checked as an http(s) origin with an optional base path, ending in '/'."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigError(f"{what} must be an http(s) URL")
    url = url.strip()
    parts = urlsplit(url)
    scheme, host, port = origin_of(url)
    if scheme not in ("http", "https") or not host or port is None or parts.username or parts.password \
            or parts.query or parts.fragment:
        raise ConfigError(f"{what} must be an http(s) URL such as http://label-studio:8080, got {short_url(url)!r}")
    return url.rstrip("/") + "/"


def is_token_path(url: str, ls_url: str) -> bool:
    """True when ``url`` is one of Label Studio's file paths (:data:`TOKEN_PATHS`) on ``ls_url``'s origin."""
    if origin_of(url) != origin_of(ls_url):
        return False
    raw_path = urlsplit(url).path
    base = urlsplit(ls_url).path or "/"
    path = unquote(raw_path)
    if "\\" in path or "\x00" in path or "//" in path or any(seg in (".", "..") for seg in path.split("/")):
        return False  # a server may normalise these onto other routes
    if not path.startswith(base):
        return False
    return TOKEN_PATHS.match(path[len(base):]) is not None


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
    """Fetches, decodes and caches task images (thread-safe LRU of decoded RGB arrays).

    ``ls_url``: Label Studio's base URL (``LABEL_STUDIO_URL``); ``allowed_hosts``: the
    ``SQSAM_ALLOWED_HOSTS`` entries; ``resolver``: see :class:`SafeFetcher`.
    """

    def __init__(self, ls_url: str | None = None, api_key: str | None = None, document_root: str | None = None,
                 max_bytes: int = DEFAULT_MAX_BYTES, max_pixels: int = DEFAULT_MAX_PIXELS,
                 timeout: float = DEFAULT_TIMEOUT, cache_size: int = 8, cache_ttl: float = 600.0,
                 allowed_hosts=None, max_fetches: int = DEFAULT_MAX_FETCHES,
                 fetch_queue_timeout: float = DEFAULT_FETCH_QUEUE_TIMEOUT, resolver=None):
        self.ls_url = _base_url(ls_url, "LABEL_STUDIO_URL") if ls_url else None
        self._pinned: str | None = None
        self.api_key = api_key or None
        self.document_root = Path(document_root).resolve() if document_root else None
        self.max_bytes = int(max_bytes)
        self.max_pixels = int(max_pixels)
        self.timeout = float(timeout)
        if not (self.max_bytes > 0 and self.max_pixels > 0 and 0 < self.timeout < 3600 and max_fetches >= 1
                and fetch_queue_timeout >= 0):
            raise ConfigError("image limits must be positive (SQSAM_MAX_IMAGE_BYTES, SQSAM_MAX_IMAGE_PIXELS, "
                              "SQSAM_IMAGE_TIMEOUT < 3600 s, SQSAM_MAX_FETCHES, SQSAM_FETCH_QUEUE_TIMEOUT)")
        self.policy = FetchPolicy(allowed_hosts)
        self.fetcher = SafeFetcher(self.policy, timeout=self.timeout,
                                   connect_timeout=min(CONNECT_TIMEOUT, self.timeout),
                                   max_bytes=self.max_bytes, trusted=self._trusted_origins, resolver=resolver)
        self.session = self.fetcher  # the name TokenAuth callers used
        self._fetch_slots = threading.BoundedSemaphore(int(max_fetches))
        self.max_fetches = int(max_fetches)
        self.fetch_queue_timeout = float(fetch_queue_timeout)
        self._auths: dict[tuple[str, str], TokenAuth] = {}
        self._cache: OrderedDict[str, tuple[float, LoadedImage]] = OrderedDict()
        self._cache_size = cache_size
        self._cache_ttl = cache_ttl
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls, env=os.environ) -> "ImageLoader":
        def number(name, default, kind=float):
            raw = env.get(name)
            if raw is None or not raw.strip():
                return default
            try:
                return kind(raw)
            except ValueError:
                raise ConfigError(f"{name} must be a number, got {raw!r}") from None

        return cls(
            ls_url=env.get("LABEL_STUDIO_URL") or env.get("LABEL_STUDIO_HOST") or None,
            api_key=env.get("LABEL_STUDIO_API_KEY") or env.get("LABEL_STUDIO_ACCESS_TOKEN") or None,
            document_root=env.get("LOCAL_FILES_DOCUMENT_ROOT") or None,
            max_bytes=number("SQSAM_MAX_IMAGE_BYTES", DEFAULT_MAX_BYTES, int),
            max_pixels=number("SQSAM_MAX_IMAGE_PIXELS", DEFAULT_MAX_PIXELS, int),
            timeout=number("SQSAM_IMAGE_TIMEOUT", DEFAULT_TIMEOUT),
            allowed_hosts=env.get("SQSAM_ALLOWED_HOSTS") or None,
            max_fetches=number("SQSAM_MAX_FETCHES", DEFAULT_MAX_FETCHES, int),
            fetch_queue_timeout=number("SQSAM_FETCH_QUEUE_TIMEOUT", DEFAULT_FETCH_QUEUE_TIMEOUT),
        )

    # ----------------------------------------------------------------------------------------
    # Label Studio's origin

    @property
    def label_studio_url(self) -> str | None:
        """Label Studio's base URL: ``LABEL_STUDIO_URL``, else the pinned ``/setup`` hostname."""
        return self.ls_url or self._pinned

    def _trusted_origins(self) -> list:
        url = self.label_studio_url
        return [origin_of(url)] if url else []

    def pin_label_studio(self, hostname: str, may_move: bool = False) -> str:
        """Take ``/setup``'s ``hostname`` as Label Studio's origin when ``LABEL_STUDIO_URL`` is unset.

        The first one is pinned; a later one with another origin raises ImageFetchError 403
        unless ``may_move`` (the caller authenticated). Returns the base URL in use.
        """
        try:
            url = _base_url(hostname, "'hostname'")
        except ConfigError as exc:
            raise ImageFetchError(str(exc), 422) from None
        if self.ls_url is not None:
            if origin_of(url) != origin_of(self.ls_url):
                logger.info("/setup hostname %s ignored: LABEL_STUDIO_URL is %s", short_url(url),
                            short_url(self.ls_url))
            return self.ls_url
        with self._lock:
            if self._pinned is None or origin_of(self._pinned) == origin_of(url) or may_move:
                if self._pinned is not None and origin_of(self._pinned) != origin_of(url):
                    logger.warning("Label Studio's origin moved from %s to %s by an authenticated /setup",
                                   short_url(self._pinned), short_url(url))
                    self._cache.clear()
                self._pinned = url
                return url
            pinned = self._pinned
        logger.warning("/setup tried to move Label Studio's origin from %s to %s: refused",
                       short_url(pinned), short_url(url))
        raise ImageFetchError(
            f"Label Studio's address is already {short_url(pinned)}; a /setup naming another host is refused "
            f"unless it authenticates (set BASIC_AUTH_USER and BASIC_AUTH_PASS) or LABEL_STUDIO_URL is set", 403)

    # ----------------------------------------------------------------------------------------

    def load(self, url: str, fallback_token: str | None = None, **_ignored) -> LoadedImage:
        """Fetch and decode ``url``; ``fallback_token`` is ``/setup``'s access token (used when
        ``LABEL_STUDIO_API_KEY`` is unset, and like it only on Label Studio's file paths)."""
        if not isinstance(url, str) or not url.strip():
            raise ImageFetchError("the task has no image URL")
        url = url.strip()
        ls_url = self.label_studio_url
        token = self.api_key or fallback_token
        cache_id = hashlib.sha1(f"{ls_url}|{url}".encode("utf-8", "surrogatepass")).hexdigest()
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
        if any(c in url for c in "\x00\r\n\t"):
            raise ImageFetchError(f"the image URL {short_url(url)!r} holds control characters")
        try:
            parts = urlsplit(url)
        except ValueError:
            raise ImageFetchError(f"the image URL {url[:200]!r} is not a valid URL") from None
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            absolute = url
        elif scheme == "" and url.startswith("/") and not url.startswith("//"):
            if parts.path.startswith("/data/local-files") and self.document_root is not None:
                local = self._local_file(url)
                if local is not None:
                    return local
            if ls_url is None:
                raise ImageFetchError(
                    f"cannot fetch {short_url(url)!r}: it is served by Label Studio; set LABEL_STUDIO_URL (and "
                    f"LABEL_STUDIO_API_KEY) for the sqsam backend")
            absolute = urljoin(ls_url, url.lstrip("/"))
        else:
            raise ImageFetchError(
                f"cannot fetch {url[:200]!r}: unsupported URL scheme {scheme or '(relative)'!r}; use http(s) "
                f"URLs or let Label Studio serve the file (uploads, local files, cloud storage with proxy)")
        return self._http_get(absolute, ls_url, token)

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
            raise ImageFetchError(f"local-files URL has no file path: {short_url(url)!r}")
        if "\x00" in relative:
            raise ImageFetchError("the local file path holds a NUL byte")
        root = self.document_root
        try:
            path = (root / relative.lstrip("/")).resolve()
            if path != root and root not in path.parents:
                raise ImageFetchError(f"local file {relative[:200]!r} lies outside LOCAL_FILES_DOCUMENT_ROOT", 403)
            if not path.is_file():
                return None  # not mounted here: ask Label Studio
            size = path.stat().st_size
            if size > self.max_bytes:
                raise ImageFetchError(f"the image is {size} bytes, more than the limit of {self.max_bytes}", 413)
            return path.read_bytes()
        except ImageFetchError:
            raise
        except (OSError, ValueError, RuntimeError):  # too long, not readable, symlink loop
            raise ImageFetchError(f"local file {relative[:200]!r} cannot be read") from None

    def _auth(self, ls_url: str, token: str) -> TokenAuth:
        key = (ls_url, token)
        with self._lock:
            auth = self._auths.get(key)
            if auth is None:
                if len(self._auths) > 64:  # tokens from /setup: keep the map bounded
                    self._auths.clear()
                auth = self._auths[key] = TokenAuth(ls_url, token, self.fetcher, self.timeout)
            return auth

    def _http_get(self, url: str, ls_url: str | None, token: str | None) -> bytes:
        auth = self._auth(ls_url, token) if ls_url and token else None
        if not self._fetch_slots.acquire(timeout=self.fetch_queue_timeout):
            raise ImageFetchError(f"{self.max_fetches} image downloads are already running; retry shortly "
                                  f"(SQSAM_MAX_FETCHES)", 429)
        try:
            for attempt in (0, 1):
                sent = []

                def headers_for(hop: str, attempt=attempt, sent=sent) -> dict:
                    headers = {"Accept": "image/*,*/*;q=0.5"}
                    if auth is not None and is_token_path(hop, ls_url):
                        headers["Authorization"] = auth.header(force_refresh=attempt > 0)
                        sent.append(hop)
                    return headers

                response = self.fetcher.get(url, headers_for)
                if response.status == 401 and auth is not None and auth.jwt and sent and attempt == 0:
                    continue  # access token expired early: refresh once
                if response.status >= 300:
                    hint = ""
                    if response.status in (401, 403):
                        if auth is None:
                            hint = "; set LABEL_STUDIO_API_KEY to a valid Label Studio token"
                        elif not sent:
                            hint = ("; the Label Studio token is sent only on Label Studio's file paths "
                                    "(/data/upload/, /data/local-files/, /storage-data/, "
                                    "/tasks|projects/<id>/resolve/)")
                        else:
                            hint = "; check LABEL_STUDIO_API_KEY"
                    raise ImageFetchError(f"fetching the image {short_url(url)} failed: HTTP {response.status}{hint}",
                                          424)
                return response.content
            raise ImageFetchError(f"fetching the image {short_url(url)} failed: HTTP 401 after a token refresh", 424)
        finally:
            self._fetch_slots.release()

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
