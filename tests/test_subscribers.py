"""Addresses, names and the subscription rules, against a real SQLite file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email
from hypothesis import given, settings
from hypothesis import strategies as st

from newsletter.audience import emails
from newsletter.audience import subscriptions as subs
from newsletter.audience.subscriptions import (
    SMTPUTF8_REFUSED,
    AddressError,
    clean_name,
    normalise_address,
)
from newsletter.audience.subscriptions import Subscribers as SubscriberQueries
from newsletter.audience.tokens import TokenError
from newsletter.config import Settings
from newsletter.store import schema as s
from newsletter.store.database import Store as SubscriberStore

NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)
SECRET = b"k" * 32
HOUR = timedelta(hours=1)


@pytest.fixture
def store(make_settings: Callable[..., Settings]) -> Iterator[SubscriberStore]:
    st = SubscriberStore(make_settings().storage.database_url)
    yield st
    st.close()


def form(store: SubscriberQueries, email: str, name: str = "", now: datetime = NOW,
         **kw: object) -> subs.SubscribeOutcome:
    return subs.subscribe(store, email, name, method="form", ip="192.0.2.1",
                          user_agent="Test/1.0", now=now, **kw)  # type: ignore[arg-type]


# -- addresses and names ------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "why"), [
    ("a@@b", "invalid characters"),
    ("alice@example.org.", "period"),
    ("alice@example.org)<bob@example.org>", "invalid characters"),
    ("alice@example.org\r\nBcc: eve@example.org", "line breaks"),
    ("alice\n@example.org", "line breaks"),
    ("x" * 250 + "@example.org", "254"),
    ("Alice <alice@example.org>", "display name"),
    ("", "required"),
    ("   ", "required"),
    ("no-at-sign", "@"),
])
def test_bad_addresses(raw: str, why: str) -> None:
    with pytest.raises(AddressError, match=why):
        normalise_address(raw, smtputf8=True)


def test_address_normalised_and_keyed() -> None:
    assert normalise_address("  Alice@Example.ORG ", smtputf8=False) == (
        "Alice@example.org", "alice@example.org")
    assert normalise_address("alice@example.org", smtputf8=False)[1] \
        == normalise_address("ALICE@EXAMPLE.ORG", smtputf8=False)[1]


def test_internationalised_addresses() -> None:
    with pytest.raises(AddressError) as info:
        normalise_address("jürgen@example.org", smtputf8=False)
    assert info.value.reason == SMTPUTF8_REFUSED
    assert normalise_address("jürgen@example.org", smtputf8=True) == (
        "jürgen@example.org", "jürgen@example.org")
    # A Unicode domain travels as punycode when the relay has no SMTPUTF8; same key either way.
    ascii_form = normalise_address("anna@bücher.example", smtputf8=False)
    unicode_form = normalise_address("anna@bücher.example", smtputf8=True)
    assert ascii_form[0] == "anna@xn--bcher-kva.example"
    assert unicode_form[0] == "anna@bücher.example"
    assert ascii_form[1] == unicode_form[1]


def reference(raw: str, smtputf8: bool) -> tuple[str, str] | None:
    """What email-validator alone says, for comparison with the import fast path."""
    try:
        r = validate_email(raw.strip(), check_deliverability=False, allow_smtputf8=smtputf8)
    except EmailNotValidError:
        return None
    email = r.normalized if smtputf8 else (r.ascii_email or "")
    return email, f"{r.local_part.casefold()}@{r.ascii_domain.lower()}"


@settings(max_examples=400, deadline=None)
@given(local=st.text(alphabet="aZ09.!#$%&'*+/=?^_`{|}~-\"@ ()", min_size=0, max_size=70),
       domain=st.sampled_from(["example.org", "EXAMPLE.org", "ex..org", "-x.org", "x-.org",
                               "localhost", "a.test", "bücher.example", "x.invalid",
                               "example.org.", "1.2.3.4", "[1.2.3.4]", "x_y.org", "ORG"]),
       smtputf8=st.booleans())
def test_fast_path_agrees_with_email_validator(local: str, domain: str,
                                               smtputf8: bool) -> None:
    raw = f"{local}@{domain}"
    try:
        got: tuple[str, str] | None = normalise_address(raw, smtputf8=smtputf8)
    except AddressError:
        got = None
    assert got == reference(raw, smtputf8)


def test_clean_name() -> None:
    assert clean_name("Ann\r\nBcc: x@example.org") == "Ann Bcc: x@example.org"
    assert clean_name("  <b>Ann</b>  &amp;\tCo ") == "<b>Ann</b> &amp; Co"
    assert clean_name("a\x00b\x1bc\u202egro") == "a b cgro"
    assert clean_name("x" * 500) == "x" * 100
    assert clean_name(None) == ""


# -- subscribe ----------------------------------------------------------------------------


def test_new_address_is_pending_with_consent_record(store: SubscriberStore) -> None:
    out = form(store, "Alice@Example.org", "Alice\r\n<script>")
    assert out.state == "new" and out.send_confirmation
    sub = out.subscriber
    assert (sub.status, sub.email, sub.email_key, sub.name) == (
        "pending", "Alice@example.org", "alice@example.org", "Alice <script>")
    assert (sub.consent_at, sub.consent_method, sub.consent_ip, sub.consent_user_agent) == (
        NOW, "form", "192.0.2.1", "Test/1.0")
    assert sub.confirmation_sent_at == NOW and sub.confirmed_at is None


def test_duplicates_by_case_are_one_person(store: SubscriberStore) -> None:
    first = form(store, "bob@example.org")
    again = form(store, "BOB@EXAMPLE.ORG", now=NOW + timedelta(minutes=5))
    assert again.subscriber.id == first.subscriber.id
    assert again.state == "pending" and not again.send_confirmation  # inside resend window
    later = form(store, "Bob@Example.org", now=NOW + 2 * HOUR)
    assert later.send_confirmation
    assert store.count_subscribers()["pending"] == 1


def test_active_subscriber_not_changed_by_form(store: SubscriberStore) -> None:
    sub = form(store, "carol@example.org", "Carol").subscriber
    subs.confirm(store, SECRET, subs.confirm_token(SECRET, sub, NOW), now=NOW, max_age=HOUR)
    out = form(store, "carol@example.org", "Mallory", now=NOW + 3 * HOUR)
    assert out.state == "active" and not out.send_confirmation
    assert store.get_subscriber(sub.id).name == "Carol"  # type: ignore[union-attr]


def test_confirm_activates_and_replay_is_harmless(store: SubscriberStore) -> None:
    sub = form(store, "dan@example.org").subscriber
    token = subs.confirm_token(SECRET, sub, NOW)
    first = subs.confirm(store, SECRET, token, now=NOW + HOUR, max_age=2 * HOUR)
    assert first.changed and first.subscriber.status == "active"
    assert first.subscriber.confirmed_at == NOW + HOUR
    again = subs.confirm(store, SECRET, token, now=NOW + HOUR, max_age=2 * HOUR)
    assert not again.changed and again.subscriber.status == "active"


def test_confirm_refuses_bad_tokens(store: SubscriberStore) -> None:
    a = form(store, "erin@example.org").subscriber
    b = form(store, "frank@example.org").subscriber
    good = subs.confirm_token(SECRET, a, NOW)

    def why(token: str, now: datetime = NOW) -> str:
        with pytest.raises(TokenError) as info:
            subs.confirm(store, SECRET, token, now=now, max_age=HOUR)
        return info.value.reason

    assert why(good, NOW + 2 * HOUR) == "expired"
    assert why(good[:-3]) in ("malformed", "bad signature")
    assert why(subs.confirm_token(b"other-secret-key" * 2, a, NOW)) == "bad signature"
    assert why(subs.unsubscribe_token(SECRET, a.id, a.email, NOW)) == "wrong purpose"
    # A token made for b, relabelled to a's id, does not verify.
    forged = subs.tokens.sign(SECRET, "confirm", str(a.id), NOW,
                              extra=subs._confirm_binding(b))
    assert why(forged) == "bad signature"
    assert why(subs.tokens.sign(SECRET, "confirm", "999999", NOW)) == "bad signature"
    assert store.get_subscriber(a.id).status == "pending"  # type: ignore[union-attr]


def test_unsubscribe_sticks(store: SubscriberStore) -> None:
    sub = form(store, "gina@example.org").subscriber
    old_confirm = subs.confirm_token(SECRET, sub, NOW)
    subs.confirm(store, SECRET, old_confirm, now=NOW, max_age=HOUR)
    token = subs.unsubscribe_token(SECRET, sub.id, sub.email, NOW)
    out = subs.unsubscribe(store, SECRET, token, now=NOW + HOUR, max_age=timedelta(days=30))
    assert out.changed and out.subscriber.status == "unsubscribed"
    assert out.subscriber.unsubscribed_at == NOW + HOUR
    again = subs.unsubscribe(store, SECRET, token, now=NOW + HOUR, max_age=timedelta(days=30))
    assert not again.changed
    # The confirmation link from before cannot bring them back.
    with pytest.raises(TokenError):
        subs.confirm(store, SECRET, old_confirm, now=NOW + HOUR, max_age=2 * HOUR)
    # Neither can an import-like or admin add without --confirmed.
    for method in ("import", "admin"):
        out2 = subs.subscribe(store, "gina@example.org", "", method=method, ip=None,
                              user_agent=None, now=NOW + 2 * HOUR)
        assert out2.state == "suppressed" and not out2.send_confirmation
    assert store.get_subscriber(sub.id).status == "unsubscribed"  # type: ignore[union-attr]


def test_resubscribe_through_form_needs_new_confirmation(store: SubscriberStore) -> None:
    sub = form(store, "hal@example.org").subscriber
    store.unsubscribe_subscriber(sub.id, NOW)
    out = form(store, "hal@example.org", now=NOW + 2 * HOUR)
    assert out.state == "suppressed" and out.send_confirmation  # same answer on the web
    assert out.subscriber.status == "unsubscribed"
    token = subs.confirm_token(SECRET, out.subscriber, NOW + 2 * HOUR)
    done = subs.confirm(store, SECRET, token, now=NOW + 2 * HOUR, max_age=HOUR)
    assert done.changed and done.subscriber.status == "active"


def test_admin_resubscribe_reactivates_confirmed_does_not(store: SubscriberStore) -> None:
    sub = form(store, "ivy@example.org").subscriber
    store.set_subscriber_status(sub.id, "complained", NOW)
    assert not form(store, "ivy@example.org", now=NOW + 2 * HOUR).send_confirmation
    out = subs.subscribe(store, "ivy@example.org", "Ivy", method="admin", ip="ignored",
                         user_agent="ignored", now=NOW + 3 * HOUR, confirmed=True)
    assert out.state == "suppressed" and out.subscriber.status == "complained"
    with pytest.raises(ValueError):  # an override always says why
        subs.subscribe(store, "ivy@example.org", method="admin", ip=None, user_agent=None,
                       now=NOW + 3 * HOUR, resubscribe=True)
    out = subs.subscribe(store, "ivy@example.org", "Ivy", method="admin", ip="ignored",
                         user_agent="ignored", now=NOW + 3 * HOUR, resubscribe=True,
                         reason="wrote to the editor", actor="cli ed")
    assert out.state == "reactivated" and out.previous_status == "complained"
    assert (out.subscriber.status, out.subscriber.name, out.subscriber.consent_method,
            out.subscriber.consent_ip) == ("active", "Ivy", "admin", None)


def test_preferences(store: SubscriberStore) -> None:
    sub = form(store, "jo@example.org").subscriber
    token = subs.preferences_token(SECRET, sub.id, sub.email, NOW)
    out = subs.update_preferences(store, SECRET, token, ["World", "Bogus", "World"], now=NOW,
                                  max_age=HOUR, available=["Tech", "World"])
    assert out.subscriber.sections == ("World",)
    out = subs.update_preferences(store, SECRET, token, ["World", "Tech"], now=NOW,
                                  max_age=HOUR, available=["Tech", "World"])
    assert out.subscriber.sections == ()  # all of them: also future sections
    with pytest.raises(TokenError):
        subs.update_preferences(store, SECRET, subs.unsubscribe_token(SECRET, sub.id, sub.email,
                                                                      NOW),
                                [], now=NOW, max_age=HOUR, available=[])


def test_hard_bounces_and_remove(store: SubscriberStore) -> None:
    sub = form(store, "kim@example.org", confirmed=True).subscriber
    assert sub.status == "active"
    assert store.record_hard_bounce(sub.id, NOW, threshold=2) == "active"
    assert store.record_hard_bounce(sub.id, NOW, threshold=2) == "bounced"
    assert store.remove_subscriber(sub.id, NOW) == "deleted"
    assert store.remove_subscriber(sub.id, NOW) == "missing"


def test_remove_keeps_row_referenced_by_deliveries(store: SubscriberStore) -> None:
    sub = form(store, "lee@example.org", "Lee", confirmed=True).subscriber
    with store.engine.begin() as conn:
        issue_id = conn.execute(s.issues.insert().values(
            number=1, status="sent", subject="s", preheader="", created=NOW, window_start=NOW,
            window_end=NOW, html="", text="", updated_at=NOW)).inserted_primary_key[0]
        conn.execute(s.deliveries.insert().values(
            issue_id=issue_id, subscriber_id=sub.id, status="sent", attempts=1,
            next_attempt_at=NOW, updated_at=NOW))
    assert store.remove_subscriber(sub.id, NOW) == "anonymised"
    kept = store.get_subscriber(sub.id)
    assert kept is not None
    assert (kept.status, kept.name, kept.consent_ip) == ("unsubscribed", "", None)


def test_list_count_and_iterate(store: SubscriberStore) -> None:
    for i in range(25):
        form(store, f"p{i}@example.org", confirmed=i % 2 == 0)
    assert store.count_subscribers() == {"pending": 12, "active": 13, "unsubscribed": 0,
                                         "bounced": 0, "complained": 0}
    assert [x.email for x in store.list_subscribers(status="pending", limit=3, offset=1)] == [
        "p3@example.org", "p5@example.org", "p7@example.org"]
    active = list(store.iter_active(batch=4))
    assert len(active) == 13 and all(x.status == "active" for x in active)
    assert len({x.id for x in store.iter_subscribers(batch=7)}) == 25


def test_claim_confirmation_is_once_per_window(store: SubscriberStore) -> None:
    sub = form(store, "mo@example.org").subscriber  # first claim taken at NOW
    assert not store.claim_confirmation(sub.id, NOW + timedelta(minutes=59), HOUR)
    assert store.claim_confirmation(sub.id, NOW + HOUR, HOUR)
    with store.engine.connect() as conn:
        sent = conn.execute(sa.select(s.subscribers.c.confirmation_sent_at)).scalar()
    assert sent == NOW + HOUR


def test_confirmation_email_text() -> None:
    subject, body = emails.confirmation_email(publication="Ledger", name="Ann <b>",
                                            confirm_url="https://x.example/confirm?token=t",
                                            valid_hours=72)
    assert subject == "Confirm your subscription to Ledger"
    assert "Hello Ann <b>," in body  # plain text: nothing escaped
    assert "https://x.example/confirm?token=t\n" in body and "72 hours" in body


def test_links() -> None:
    unsub, prefs = subs.subscriber_links("https://x.example/", SECRET, 7, "a@example.org", NOW)
    assert unsub.startswith("https://x.example/unsubscribe?token=")
    assert prefs.startswith("https://x.example/preferences?token=")
    assert subs.confirm_url("https://x.example", "abc") == "https://x.example/confirm?token=abc"
