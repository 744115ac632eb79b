"""HTTP(S) GET/POST under the fetch policy, with a real total deadline.

For each hop (the URL, then every redirect, at most ``max_redirects``):

1. the host name is resolved once (in a small resolver pool, so a stuck DNS lookup counts
   against the deadline too);
2. each address is checked with :class:`~sqsam_label_studio.netpolicy.FetchPolicy`; none
   allowed -> :class:`ImageFetchError` 403, without any connection attempt;
3. the socket connects to an address that passed the check (never to a second lookup's
   answer: DNS rebinding cannot move it), TLS is verified against the host name;
4. the request's headers come from ``headers_for(url)`` per hop, so credentials meant for one
   origin are not carried along a redirect to another.

A watchdog shuts the socket down when the total deadline passes, so a host that drips one
byte per second, or never answers, is cut at the deadline whatever phase the request is in.
Every network-level failure (refused, reset, timed out, TLS failure, not HTTP, DNS failure)
gives one and the same message naming the URL, so answers do not map the network (only the
time an answer takes can still differ). Proxy environment variables and ``.netrc`` are not
used: the check must see the address the connection really goes to.
"""

from __future__ import annotations

import http.client
import json as jsonlib
import logging
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urljoin, urlsplit

from .errors import ImageFetchError
from .netpolicy import FetchPolicy, Origin

logger = logging.getLogger(__name__)

REDIRECTS = (301, 302, 303, 307, 308)
DEFAULT_MAX_REDIRECTS = 5
READ_CHUNK = 64 * 1024

Resolver = Callable[[str, int], list[tuple[int, tuple]]]


def origin_of(url: str) -> Origin:
    """``(scheme, host, port)`` of a URL, the default port filled in; host lower-case."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = {"http": 80, "https": 443}.get(scheme)
    return scheme, (parts.hostname or "").lower(), port


def short_url(url: str) -> str:
    """The URL without query, fragment or user info (they may hold secrets), at most 160 characters."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    shown = f"{parts.scheme}://{host}{port}{parts.path}" if parts.scheme else parts.path
    shown = shown.encode("ascii", "backslashreplace").decode()
    return shown if len(shown) <= 160 else shown[:157] + "..."


def system_resolver(host: str, port: int) -> list[tuple[int, tuple]]:
    """``[(family, sockaddr), ...]`` for TCP to ``host:port`` (the system's getaddrinfo)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


_RESOLVER_POOL = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sqsam-dns")


@dataclass
class FetchResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    content: bytes = b""
    url: str = ""

    @property
    def status_code(self) -> int:  # the name requests uses
        return self.status

    def json(self):
        return jsonlib.loads(self.content)


class _Watchdog:
    """Shuts a socket down at the deadline (unblocks any recv/send/connect in progress)."""

    def __init__(self, seconds: float):
        self.fired = False
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def watch(self, sock: socket.socket) -> None:
        with self._lock:
            self._sock = sock
            if self.fired:
                _shutdown(sock)

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            if self._sock is not None:
                _shutdown(self._sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class SafeFetcher:
    """Fetches under a :class:`FetchPolicy` (see the module docstring). Thread-safe.

    ``trusted``: a callable returning the origins allowed whatever their address (Label
    Studio's). ``resolver``: ``(host, port) -> [(family, sockaddr)]`` (tests map names with it).
    """

    def __init__(self, policy: FetchPolicy | None = None, timeout: float = 30.0, connect_timeout: float = 5.0,
                 max_bytes: int = 64 * 1024 * 1024, max_redirects: int = DEFAULT_MAX_REDIRECTS,
                 trusted: Callable[[], list[Origin]] | None = None, resolver: Resolver | None = None,
                 ssl_context: ssl.SSLContext | None = None, user_agent: str = "sqsam-label-studio"):
        self.policy = policy or FetchPolicy()
        self.timeout = float(timeout)
        self.connect_timeout = float(connect_timeout)
        self.max_bytes = int(max_bytes)
        self.max_redirects = int(max_redirects)
        self.trusted = trusted or (lambda: [])
        self.resolver = resolver or system_resolver
        self.ssl_context = ssl_context
        self.user_agent = user_agent

    # ------------------------------------------------------------------------------------

    def get(self, url: str, headers_for: Callable[[str], dict] | None = None,
            timeout: float | None = None) -> FetchResponse:
        """GET ``url``, following up to ``max_redirects`` redirects, each hop checked again.

        Returns the final response (any status; the body only for 2xx). Raises
        :class:`ImageFetchError`: 403 refused by the policy, 413 body over ``max_bytes``,
        422 unusable URL, 424 network failure, too many redirects or past the deadline.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else float(timeout))
        current = url
        for _ in range(self.max_redirects + 1):
            headers = dict(headers_for(current)) if headers_for else {}
            response = self._request("GET", current, headers, None, deadline)
            location = response.headers.get("location")
            if response.status in REDIRECTS and location:
                current = urljoin(current, location.strip())
                continue
            return response
        raise ImageFetchError(f"fetching {short_url(url)} failed: more than {self.max_redirects} redirects", 424)

    def post(self, url: str, json=None, timeout=None, allow_redirects: bool = False,
             headers: dict | None = None) -> FetchResponse:
        """POST a JSON body (no redirects followed); the signature ``requests`` uses, for TokenAuth."""
        if isinstance(timeout, tuple):
            timeout = sum(timeout)
        deadline = time.monotonic() + (self.timeout if timeout is None else float(timeout))
        body = jsonlib.dumps(json).encode()
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        return self._request("POST", url, all_headers, body, deadline, read_any_status=True)

    # ------------------------------------------------------------------------------------

    def _failed(self, url: str) -> ImageFetchError:
        # One message for every network failure: it must not tell open ports from closed ones.
        return ImageFetchError(f"fetching {short_url(url)} failed: no complete HTTP answer within "
                               f"{self.timeout:g} s (the host refused, reset, timed out or is not an HTTP server)",
                               424)

    def _resolve(self, url: str, host: str, port: int, deadline: float) -> list[tuple[int, tuple]]:
        try:
            future = _RESOLVER_POOL.submit(self.resolver, host, port)
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except (OSError, UnicodeError, ValueError, FutureTimeout):
            raise self._failed(url) from None

    def _request(self, method: str, url: str, headers: dict, body: bytes | None, deadline: float,
                 read_any_status: bool = False) -> FetchResponse:
        parts = urlsplit(url)
        scheme, host, port = origin_of(url)
        if scheme not in ("http", "https") or not host or port is None:
            raise ImageFetchError(f"cannot fetch {short_url(url)}: only http(s) URLs with a host are fetched")
        if parts.username or parts.password:
            raise ImageFetchError(f"cannot fetch {short_url(url)}: URLs with user info are not fetched")
        addresses = self._resolve(url, host, port, deadline)
        trusted = self.trusted()
        allowed = [(family, sockaddr) for family, sockaddr in addresses
                   if self.policy.allows((scheme, host, port), sockaddr[0], trusted)]
        if not allowed:
            logger.warning("fetch refused by policy: %s", short_url(url))
            raise ImageFetchError(
                f"fetching {short_url(url)} is not allowed: the backend fetches only from Label Studio, from "
                f"hosts in SQSAM_ALLOWED_HOSTS and from public addresses", 403)
        watchdog = _Watchdog(deadline - time.monotonic())
        sock = None
        try:
            sock = self._connect(allowed, host, scheme, deadline, watchdog)
            conn = http.client.HTTPConnection(host, port)
            conn.sock = sock  # already connected to the checked address: no second lookup
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            default_port = 443 if scheme == "https" else 80
            host_header = f"[{host}]" if ":" in host else host
            all_headers = {"Host": host_header if port == default_port else f"{host_header}:{port}",
                           "User-Agent": self.user_agent, "Accept-Encoding": "identity", "Connection": "close",
                           **headers}
            conn.request(method, path, body=body, headers=all_headers)
            response = conn.getresponse()
            result = FetchResponse(response.status, {k.lower(): v for k, v in response.getheaders()}, b"", url)
            if (200 <= response.status < 300) or read_any_status:
                result.content = self._read_body(url, response, deadline)
            return result
        except ImageFetchError:
            raise
        except (OSError, http.client.HTTPException, ValueError):
            raise self._failed(url) from None
        finally:
            watchdog.cancel()
            if sock is not None:
                try:
                    sock.close()
                except OSError:
                    pass

    def _connect(self, allowed, host: str, scheme: str, deadline: float, watchdog: _Watchdog) -> socket.socket:
        last: Exception | None = None
        for family, sockaddr in allowed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock = socket.socket(family, socket.SOCK_STREAM)
            watchdog.watch(sock)
            try:
                sock.settimeout(min(self.connect_timeout, remaining))
                sock.connect(sockaddr)
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                if scheme == "https":
                    context = self.ssl_context or _default_ssl_context()
                    sock = context.wrap_socket(sock, server_hostname=host)
                    watchdog.watch(sock)
                return sock
            except OSError as exc:
                last = exc
                sock.close()
        raise OSError("no address connected") from last

    def _read_body(self, url: str, response: http.client.HTTPResponse, deadline: float) -> bytes:
        length = response.getheader("Content-Length")
        if length and length.strip().isdigit() and int(length) > self.max_bytes:
            raise ImageFetchError(f"{short_url(url)} is {int(length)} bytes, more than the limit of "
                                  f"{self.max_bytes} (SQSAM_MAX_IMAGE_BYTES)", 413)
        chunks, total = [], 0
        while True:
            if time.monotonic() > deadline:
                raise self._failed(url)
            chunk = response.read1(READ_CHUNK)
            if not chunk:
                break
            total += len(chunk)
            if total > self.max_bytes:
                raise ImageFetchError(f"{short_url(url)} is more than the limit of {self.max_bytes} bytes "
                                      f"(SQSAM_MAX_IMAGE_BYTES)", 413)
            chunks.append(chunk)
        if time.monotonic() > deadline:
            raise self._failed(url)
        return b"".join(chunks)


_SSL_CONTEXT: ssl.SSLContext | None = None


def _default_ssl_context() -> ssl.SSLContext:
    global _SSL_CONTEXT
    if _SSL_CONTEXT is None:
        try:
            import certifi

            _SSL_CONTEXT = ssl.create_default_context(cafile=certifi.where())
        except ImportError:
            _SSL_CONTEXT = ssl.create_default_context()
    return _SSL_CONTEXT
