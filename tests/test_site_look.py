"""One look for the public pages: /static/site.css served like the feeds, linked by every page."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import httpx
from webserver import running

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.resources import DEFAULT_TEMPLATES

LINK = '<link rel="stylesheet" href="/static/site.css">'


def test_stylesheet_is_served_with_validators_and_gzip(
        make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    # As NEWSLETTER_SECRETS_ADMIN_TOKEN would: without one the login page is not offered.
    settings = replace(settings, secrets=replace(settings.secrets, admin_token="t" * 32))
    store = pipeline.open_store(settings)
    try:
        with running(pipeline.web_app(settings, store)) as base, \
                httpx.Client(base_url=base, timeout=10) as client:
            r = client.get("/static/site.css", headers={"accept-encoding": "gzip"})
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/css; charset=utf-8"
            assert r.headers["content-encoding"] == "gzip"
            assert r.content == (DEFAULT_TEMPLATES / "static" / "site.css").read_bytes()
            again = client.get("/static/site.css", headers={"accept-encoding": "gzip",
                                                            "if-none-match": r.headers["etag"]})
            assert again.status_code == 304
            for bad in ("/static/../web/_base.html", "/static/", "/static/.hidden",
                        "/static/nothing.css"):
                assert client.get(bad).status_code == 404, bad
            # Every page family links it; the subscriber and admin policies allow it.
            for path in ("/issues/", "/subscribe", "/manage", "/confirm?token=x",
                         "/admin/login"):
                page = client.get(path)
                assert page.text.count(LINK) == 1, path
                assert page.text.count("<main") == 1, path
                csp = page.headers.get("content-security-policy", "style-src 'self'")
                assert "style-src 'self'" in csp, (path, csp)
    finally:
        store.close()


def test_an_operator_stylesheet_overrides_the_shipped_one(
        make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    own = tmp_path / "own"
    (own / "static").mkdir(parents=True)
    (own / "static" / "site.css").write_text("body { color: teal; }\n", encoding="utf-8")
    settings = make_settings(f'[newsletter]\ntemplates_dir = "{own}"\n')
    store = pipeline.open_store(settings)
    try:
        with running(pipeline.web_app(settings, store)) as base, \
                httpx.Client(base_url=base, timeout=10) as client:
            assert client.get("/static/site.css").text == "body { color: teal; }\n"
    finally:
        store.close()
