"""A real threaded HTTP(S) server on loopback with scripted routes and a request log, for tests."""

from __future__ import annotations

import gzip as gzip_module
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType


@dataclass
class Route:
    """What the server answers on one path."""

    body: bytes = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str | None = "application/rss+xml; charset=utf-8"
    etag: str | None = None  # answers 304 when If-None-Match matches
    last_modified: str | None = None  # answers 304 when If-Modified-Since equals it
    gzip: bool = False  # compress the body and say Content-Encoding: gzip
    trickle: float | None = None  # seconds between single bytes of the body


@dataclass(frozen=True)
class Request:
    """One request the server saw, with the status it answered."""

    method: str
    path: str
    headers: dict[str, str]  # lower-cased names
    status: int


class FeedServer:
    """Serve registered routes on a loopback port (ephemeral by default); a context manager.

    Requests are logged before the response is written, so once a client has its
    response the log already holds the request: tests never need to wait for it.
    Any 127.x.y.z address works as `host` on Linux, so servers on 127.0.0.2 and 127.0.0.3
    can share one port and a test can see which address a connection really went to.
    With `tls` (a server context) it speaks HTTPS and records each handshake's SNI name.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.server_names: list[str | None] = []  # SNI of each TLS handshake, in order
        self.routes: dict[str, Route] = {}
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> FeedServer:
        server = self

        class Handler(_Handler):
            owner = server

        httpd = ThreadingHTTPServer((self.host, self.port), Handler)
        self.port = httpd.server_address[1]
        if self.tls is not None:
            def record(sock: ssl.SSLObject, name: str | None, ctx: ssl.SSLContext) -> None:
                self.server_names.append(name)

            self.tls.sni_callback = record
            # Handshakes happen on accept; one that fails is dropped by socketserver.
            httpd.socket = self.tls.wrap_socket(httpd.socket, server_side=True)
        # Join handler threads on close, so no thread or socket outlives the test.
        httpd.daemon_threads = False
        httpd.block_on_close = True
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="feedserver", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is None:
            return
        self._stopping.set()  # ends trickling handlers promptly
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = self._thread = None

    def __enter__(self) -> FeedServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- routes ------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"{'https' if self.tls else 'http'}://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def add(self, path: str, body: bytes = b"", *, status: int = 200,
            headers: Mapping[str, str] | None = None,
            content_type: str | None = "application/rss+xml; charset=utf-8",
            etag: str | None = None, last_modified: str | None = None, gzip: bool = False,
            trickle: float | None = None) -> str:
        """Register a route and return its absolute URL."""
        self.routes[path] = Route(body, status, dict(headers or {}), content_type, etag,
                                  last_modified, gzip, trickle)
        return self.url(path)

    def redirect(self, path: str, to: str, status: int = 302) -> str:
        """Register a redirect from `path` to `to` (a path or an absolute URL)."""
        return self.add(path, status=status, headers={"Location": to}, content_type=None)

    def requests_for(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def _log(self, request: Request) -> None:
        with self._lock:
            self.requests.append(request)


class _Handler(BaseHTTPRequestHandler):
    owner: FeedServer
    # HTTP/1.0: one request per connection, so no idle keep-alive thread blocks shutdown.
    protocol_version = "HTTP/1.0"
    timeout = 5

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib name
        pass  # keep test output clean

    def do_HEAD(self) -> None:  # noqa: N802 - stdlib naming
        self._answer(send_body=False)

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._answer(send_body=True)

    def _answer(self, send_body: bool) -> None:
        route = self.owner.routes.get(self.path.split("?", 1)[0])
        headers = {k.lower(): v for k, v in self.headers.items()}
        status = 404 if route is None else route.status
        if route is not None and status == 200 and _not_modified(route, headers):
            status = 304
        self.owner._log(Request(self.command, self.path, headers, status))
        body = b"" if route is None or status == 304 else route.body
        if route is not None and route.gzip and body:
            body = gzip_module.compress(body)
        self.log_request(status)
        self.send_response_only(status)
        # A route may script its own Date (e.g. for undated entries); send only one.
        if route is None or not any(k.lower() == "date" for k in route.headers):
            self.send_header("Date", self.date_time_string())
        if route is not None:
            if route.content_type and status != 304:
                self.send_header("Content-Type", route.content_type)
            if route.etag:
                self.send_header("ETag", route.etag)
            if route.last_modified:
                self.send_header("Last-Modified", route.last_modified)
            if route.gzip:
                self.send_header("Content-Encoding", "gzip")
            for name, value in route.headers.items():
                self.send_header(name, value)
        if status != 304:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not send_body or not body:
            return
        try:
            if route is not None and route.trickle is not None:
                for i in range(len(body)):
                    if self.owner._stopping.wait(route.trickle):
                        return
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
            else:
                self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, which is what several tests want


def _not_modified(route: Route, headers: dict[str, str]) -> bool:
    if route.etag and "if-none-match" in headers:
        tags = [t.strip() for t in headers["if-none-match"].split(",")]
        return route.etag in tags or "*" in tags
    if route.last_modified and "if-modified-since" in headers:
        return headers["if-modified-since"] == route.last_modified
    return False
