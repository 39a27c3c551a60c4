"""Hardening, Host header: only the settings' names are answered, and redirects name no host.

The full app as `newsletter serve` wires it, on uvicorn, sent raw requests (httpx would put
its own Host header in): `GET /issues` with `Host: evil.example` used to redirect to
http://evil.example/issues/ (Starlette's slash redirect builds its URL on the Host header).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from webserver import running

from newsletter import pipeline
from newsletter.config import Settings, load_settings
from newsletter.errors import ConfigError
from newsletter.pipeline.webapp import allowed_hosts

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "hosts-admin-token-0123456789abcdef"
EVIL = "evil.example"
Serve = Callable[..., AbstractContextManager[str]]  # (toml, feeds public_url) → base URL


def raw(base: str, head: str) -> tuple[int, dict[str, str], bytes]:
    """Send the request bytes as they are; the status, headers and whole response."""
    parts = urlsplit(base)
    assert parts.hostname is not None and parts.port is not None
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(head.encode("latin-1"))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    top = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in top[1:])
    return int(top[0].split(" ", 2)[1]), headers, data


def get(base: str, path: str, host: str | None, extra: str = "", method: str = "GET",
        version: str = "1.1") -> tuple[int, dict[str, str], bytes]:
    named = f"Host: {host}\r\n" if host is not None else ""
    return raw(base, f"{method} {path} HTTP/{version}\r\n{named}{extra}Connection: close\r\n\r\n")


@pytest.fixture
def serve(make_settings: Callable[..., Settings], tmp_path: Path) -> Serve:
    """Start the full app on the settings made from `extra`; yield its base URL."""
    (tmp_path / "feeds").mkdir(exist_ok=True)
    (tmp_path / "feeds" / "rss.xml").write_text("<rss/>", "utf-8")
    # A published folder, so the site's own folder redirect is on trial too.
    page = tmp_path / "site" / "articles" / "a-piece" / "index.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    page.write_text("<!doctype html><title>A piece</title>", "utf-8")

    @contextmanager
    def start(extra: str = "", feeds_url: str = "") -> Iterator[str]:
        settings = make_settings(f'[secrets]\nadmin_token = "{ADMIN_TOKEN}"\n{extra}')
        settings = replace(settings, feeds=replace(settings.feeds, public_url=feeds_url))
        store = pipeline.open_store(settings)
        try:
            with running(pipeline.web_app(settings, store)) as base:
                yield base
        finally:
            store.close()

    return start


PATHS = ["/issues", "/admin", "/", "/issues/", "/subscribe", "/confirm?token=x", "/manage",
         "/feeds/rss.xml", "/admin/login", "/articles/a-piece", "/static/site.css",
         "/admin/api/issues"]


def test_a_host_the_settings_do_not_name_gets_400_and_is_never_repeated(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    with serve() as base:
        for path in PATHS:
            for host, extra in ((EVIL, ""), (f"{EVIL}:443", ""), (f"ledger.example.org.{EVIL}", ""),
                                (EVIL, "X-Forwarded-Host: ledger.example.org\r\n"), ("", "")):
                status, headers, response = get(base, path, host, extra)
                assert status == 400, (path, host)
                assert "location" not in headers and b"evil" not in response, (path, host)
        # HTTP/1.0 may leave the Host out: nothing names the site, so nothing is answered.
        assert get(base, "/issues/", None, version="1.0")[0] == 400
        assert get(base, "/issues", EVIL, method="HEAD")[0] == 400
    refused = [r.getMessage() for r in caplog.records if "web.host_refused" in r.getMessage()]
    # One line per name, saying what is allowed and where to add one; not one per request.
    assert len(refused) == 5, refused
    assert "allowed_hosts" in refused[0] and "ledger.example.org" in refused[0]


def test_the_sites_names_are_answered_and_redirects_are_paths(
        serve: Serve) -> None:
    extra = '[server]\nallowed_hosts = ["www.ledger.example.org", "*.mirror.example", "::1"]\n'
    with serve(extra, "https://cdn.ledger.example.net/feeds/") as base:
        for host in ("ledger.example.org", "LEDGER.Example.ORG:443", "www.ledger.example.org",
                     "eu.mirror.example", "cdn.ledger.example.net", "[::1]:8000"):
            assert get(base, "/issues/", host)[0] == 200, host
            status, headers, _ = get(base, "/issues?page=2", host,
                                     f"X-Forwarded-Host: {EVIL}\r\n")
            assert (status, headers["location"]) == (307, "/issues/?page=2"), host
            status, headers, _ = get(base, "/admin", host)
            assert (status, headers["location"]) == (307, "/admin/"), host
        # The loopback names are no longer in the list once the operator sets it.
        assert get(base, "/issues/", "127.0.0.1")[0] == 400
        assert get(base, "/issues/", "localhost:8000")[0] == 400


def test_with_the_check_turned_off_redirects_still_name_no_host(
        serve: Serve) -> None:
    """`allowed_hosts = ["*"]` (a proxy in front already checks): every name is answered,
    and still no redirect takes the Host, X-Forwarded-Host or an absolute request target."""
    with serve('[server]\nallowed_hosts = ["*"]\n') as base:
        for path, extra, where in (
                ("/issues", "", "/issues/"), ("/admin", "", "/admin/"),
                ("/issues", f"X-Forwarded-Host: {EVIL}\r\nX-Forwarded-Proto: https\r\n",
                 "/issues/"),
                (f"http://{EVIL}/issues", "", "/issues/"),
                ("/articles/a-piece", "", "/articles/a-piece/"),
                # A browser reads "//articles/a-piece/" as the host "articles".
                ("//articles/a-piece", "", "/articles/a-piece/")):
            status, headers, response = get(base, path, EVIL, extra)
            assert status in (301, 307) and headers["location"] == where, (path, headers)
            assert b"evil" not in response.split(b"\r\n\r\n", 1)[1]
        status, headers, _ = get(base, "/admin/subscribers/", EVIL, method="POST",
                                 extra="Content-Length: 0\r\n")
        assert (status, headers["location"]) == (307, "/admin/subscribers")  # still a POST


def test_healthz_answers_a_load_balancers_probe_whatever_its_host(
        serve: Serve) -> None:
    with serve() as base:
        # AWS and Kubernetes probe with the target's own address; HTTP/1.0 probes, none.
        for host in ("10.0.3.7:8000", "127.0.0.1", EVIL):
            status, _, response = get(base, "/healthz", host)
            assert status == 200 and response.endswith(b"ok") and b"evil" not in response
        assert get(base, "/healthz", None, version="1.0")[0] == 200
        assert get(base, "/healthz/", EVIL)[0] == 400  # only the probe's own path


def test_the_embedded_default_answers_its_loopback_names() -> None:
    settings = load_settings(ROOT / "config/newsletter.toml", environ={})
    assert settings.site_url == "http://127.0.0.1:8000/"
    assert allowed_hosts(settings) == ["127.0.0.1", "localhost", "[::1]"]


@pytest.mark.parametrize("bad", ["https://news.example.org/", "news.example.org:443",
                                 "news.example.org/", "*evil.example", "ex ample.org", ""])
def test_a_bad_allowed_host_is_one_clear_line(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "n.toml"
    path.write_text(f'[publication]\nname = "T"\nbase_url = "https://example.org/"\n'
                    f'[server]\nallowed_hosts = ["{bad}"]\n', "utf-8")
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert str(info.value) == (
        f"{path}: server.allowed_hosts: expected host names such as news.example.org, "
        f"*.example.org or 127.0.0.1 (no scheme, port or path), got {bad!r}")


def test_refusals_are_logged_at_warning(serve: Serve,
                                        caplog: pytest.LogCaptureFixture) -> None:
    with serve() as base:
        get(base, "/", "newsletter")  # nginx's default Host is the upstream's name
    [line] = [r for r in caplog.records if "web.host_refused" in r.getMessage()]
    assert line.levelno == logging.WARNING and "host=newsletter " in line.getMessage()
