"""`newsletter run` on a fresh checkout answers and publishes; `serve` heeds its proxy list."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import feedparser
import httpx
import pytest

from newsletter.config import Settings
from newsletter.store.database import Store
from tests.helpers.checkout import fresh_copy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_run_on_a_fresh_checkout(tmp_path: Path) -> None:
    repo = fresh_copy(tmp_path / "repo")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    proc = subprocess.Popen([sys.executable, "-m", "newsletter", "run", "--port", str(port)],
                            cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    try:
        deadline = time.monotonic() + 60
        response = None
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"http://127.0.0.1:{port}/feeds/atom.xml", timeout=2)
                if response.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            time.sleep(0.2)  # polling interval inside a deadline, not a wait for an outcome
        assert response is not None and response.status_code == 200
        feed = feedparser.parse(response.content)
        assert feed.bozo == 0 and len(feed.entries) >= 5
        home = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        assert 'rel="alternate"' in home.text
        assert (repo / "var/newsletter.db").exists()
        # A sign-up on the fresh checkout gets its confirmation mail in the file outbox.
        signup = httpx.post(f"http://127.0.0.1:{port}/subscribe",
                            data={"email": "new.reader@example.org", "name": "New Reader"},
                            timeout=5)
        assert signup.status_code in (200, 202), signup.text
        outbox = repo / "var/outbox"
        until = time.monotonic() + 20
        while not list(outbox.glob("*.eml")):
            assert time.monotonic() < until, "no confirmation mail in the outbox"
            time.sleep(0.1)
        mail = next(outbox.glob("*.eml")).read_bytes()
        assert b"new.reader@example.org" in mail and b"/confirm?token=" in mail
        assert (repo / "feeds/rss.xml").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    assert f"http://127.0.0.1:{port}/" in out


@pytest.mark.parametrize(("allowed", "seen"), [([], "203.0.113.9"),
                                                (["192.0.2.0/24"], "127.0.0.1")])
def test_serve_believes_forwarded_for_only_from_allowed_proxies(
        make_settings: Callable[..., Settings], tmp_path: Path, allowed: list[str],
        seen: str) -> None:
    # Empty keeps uvicorn's default (loopback trusted); a list without us makes this
    # loopback client the visitor, whatever X-Forwarded-For it sends.
    settings = make_settings(f"""
[mail]
outbox_dir = "{tmp_path / 'outbox'}"
[server]
forwarded_allow_ips = {json.dumps(allowed)}
""")
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("NEWSLETTER_") and k != "FORWARDED_ALLOW_IPS"}
    proc = subprocess.Popen([sys.executable, "-m", "newsletter", "--config",
                             str(settings.path), "serve", "--port", str(port)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/subscribe", timeout=2).is_success:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "newsletter serve did not answer"
            time.sleep(0.1)  # polling interval inside a deadline
        signup = httpx.post(f"http://127.0.0.1:{port}/subscribe",
                            data={"email": "reader@example.org"},
                            headers={"X-Forwarded-For": "203.0.113.9"}, timeout=5)
        assert signup.status_code == 202, signup.text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
    store = Store(settings.storage.database_url)
    try:
        sub = store.get_subscriber_by_key("reader@example.org")
        assert sub is not None and sub.consent_ip == seen
    finally:
        store.close()
