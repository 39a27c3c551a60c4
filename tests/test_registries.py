"""Sources and transports are chosen by registry: the kinds config accepts are the kinds wired."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import ClassVar

import pytest
from click.testing import CliRunner

from newsletter import pipeline
from newsletter.cli.main import cli
from newsletter.collect import articles as arts
from newsletter.config import SOURCE_TYPES, TRANSPORT_KINDS, Settings, Source
from newsletter.deliver.engine import SendResult
from newsletter.models import Article, ArticleDraft
from newsletter.pipeline import collecting, sending, transports
from newsletter.pipeline.sourcing import Run

BASE = '[publication]\nname = "Test"\nbase_url = "https://example.org/"\n'


def test_config_names_exactly_the_registered_source_types() -> None:
    # A kind added to SOURCES but not to config.SOURCE_TYPES could never be configured.
    assert sorted(SOURCE_TYPES) == sorted(collecting.SOURCES)


def test_config_names_exactly_the_registered_transports() -> None:
    assert sorted(TRANSPORT_KINDS) == sorted(transports.TRANSPORTS)


@pytest.mark.parametrize(("toml", "known"), [
    ('[[sources]]\ntype = "mailbox"\nurl = "https://example.org/x"\n', sorted(collecting.SOURCES)),
    ('[mail]\ntransport = "pigeon"\n', sorted(transports.TRANSPORTS)),
])
def test_an_unknown_kind_is_one_line_naming_the_known_ones(tmp_path: Path, toml: str,
                                                           known: list[str]) -> None:
    path = tmp_path / "n.toml"
    path.write_text(BASE + toml, encoding="utf-8")
    result = CliRunner().invoke(cli, ["--config", str(path), "config", "check"])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert all(kind in result.stderr for kind in known), result.stderr


class JsonApiSource:
    """A kind collect() has never heard of, as a new module would add it."""

    owns_identity: ClassVar[bool] = False

    def __init__(self) -> None:
        self.given: list[list[Source]] = []

    def collect(self, run: Run, sources: list[Source]) -> list[Article]:
        self.given.append(sources)
        when = datetime(2026, 11, 2, tzinfo=UTC)
        drafts = [ArticleDraft("From the API", when, "<p>api</p>", sources[0].url,
                               url="https://api.example.net/1"),
                  ArticleDraft("Impostor", when, "<p>evil</p>", sources[0].url,
                               guid="our-own-id")]
        return [arts.build_article(d, source="api", rules=None) for d in drafts]


def test_a_source_kind_is_one_registry_entry(make_settings: Callable[..., Settings],
                                             tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    kind = JsonApiSource()
    monkeypatch.setitem(collecting.SOURCES, "jsonapi", kind)
    settings = make_settings()
    api = Source(type="jsonapi", url="https://api.example.net/items")
    settings = dataclasses.replace(settings, sources=[api, *settings.sources])
    (tmp_path / "articles" / "b.md").write_text(
        "---\ntitle: Ours\nid: our-own-id\ndate: 2026-11-01\n---\nOurs.\n", "utf-8")
    store = pipeline.open_store(settings)
    try:
        report = pipeline.collect(settings, store)
        assert kind.given == [[api]]
        assert report.errors == [] and report.new == 2
        # Listed first, run after the folder: the folder's identity still wins.
        assert [w for w in report.warnings if "our-own-id" in w]
        assert sorted(a.title for a in store.latest_articles(5)) == ["From the API", "Ours"]
    finally:
        store.close()


class MemoryConnection:
    pipelining = False

    def __init__(self, sent: list[tuple[str, str, bytes]]) -> None:
        self.sent = sent

    async def send(self, sender: str, recipient: str, message: bytes,
                   then: tuple[str, str] | None = None) -> SendResult:
        self.sent.append((sender, recipient, message))
        return SendResult("sent", 250, "kept in memory")

    async def close(self) -> None:
        """Nothing to release."""


class MemoryPool:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bytes]] = []

    async def connect(self) -> MemoryConnection:
        return MemoryConnection(self.sent)


def test_a_transport_is_one_registry_entry(make_settings: Callable[..., Settings],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    pool = MemoryPool()
    monkeypatch.setitem(transports.TRANSPORTS, "memory", lambda settings: pool)
    settings = make_settings()
    settings = dataclasses.replace(settings, mail=dataclasses.replace(settings.mail,
                                                                      transport="memory"))
    reply = sending.send_one(settings, "reader@example.com", b"Subject: hi\r\n\r\nhi\r\n",
                             what="test copy")
    assert reply == "kept in memory"
    assert pool.sent == [(settings.mail.from_address, "reader@example.com",
                          b"Subject: hi\r\n\r\nhi\r\n")]


def test_a_transport_not_registered_is_named(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    settings = dataclasses.replace(settings, mail=dataclasses.replace(settings.mail,
                                                                      transport="pigeon"))
    with pytest.raises(ValueError, match="expected one of outbox, smtp, got 'pigeon'"):
        transports.pool_from_settings(settings)
