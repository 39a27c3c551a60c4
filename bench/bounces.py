"""Bounce ingestion: a 10,000-message Maildir ingested into a fresh SQLite file, against the
standard library reading and parsing the same Maildir and against our parse() alone; then the
whole loop on a private Postfix + Dovecot: an issue sent to N dead addresses, the mailbox polled
every 0.5 s until every one of them is bounced.

    python bench/bounces.py                       # both parts (the IMAP loop needs root)
    python bench/bounces.py --no-imap             # the Maildir part only
    python bench/bounces.py --profile             # + where an ingestion's time goes
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import email.parser
import email.policy
import functools
import io
import logging
import mailbox
import os
import platform
import pstats
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sqlalchemy as sa  # noqa: E402
from common import SENDER, seed, write_config  # noqa: E402

from newsletter import log, pipeline  # noqa: E402
from newsletter.audience.bounces import parse, verp_address, verp_token_of  # noqa: E402
from newsletter.audience.tokens import load_or_create_secret  # noqa: E402
from newsletter.config import Settings, load_settings  # noqa: E402
from newsletter.models import BounceNotice, Claimed, Issue  # noqa: E402
from newsletter.pipeline import sending  # noqa: E402
from newsletter.pipeline.bounce_files import ingest_paths  # noqa: E402
from newsletter.pipeline.bounce_imap import poll_mailbox  # noqa: E402
from newsletter.pipeline.bounces import IngestSummary, policy_of  # noqa: E402
from newsletter.store import schema as s  # noqa: E402
from newsletter.store.database import Store  # noqa: E402

RETURN_PATH = "bounces@meridian.example.org"
FBL = "fbl@meridian.example.org"  # where a feedback loop sends complaints: no token there
EDITOR = "editor@meridian.example.org"  # write_config's reply_to
UNUSED_PORT = 9  # part 1 never sends; the config needs an SMTP port all the same

# The Maildir's mix, as fractions of the messages. Every kind that names a subscriber names a
# different one, all of whom were sent the issue.
MIX = (
    ("postfix", 0.60),     # Postfix DSN to the VERP address, 5.1.1, the whole message returned
    ("gmail-hard", 0.10),  # Gmail-style DSN to the VERP address, 5.1.1, headers returned
    ("gmail-soft", 0.05),  # the same, "delayed" 4.2.2 (mailbox full)
    ("unsigned", 0.07),    # an MTA that bounces to the From address: no token, matched by address
    ("arf", 0.03),         # feedback-loop complaint to the FBL address (by Original-Rcpt-To)
    ("auto", 0.08),        # vacation and out-of-office replies
    ("reply", 0.03),       # people answering the newsletter, and spam: unrecognised
    ("garbage", 0.02),     # random bytes, empty files, broken MIME, text with no header
    ("forged", 0.01),      # a DSN whose token's MAC does not verify
    ("duplicate", 0.01),   # a DSN delivered twice (same Message-ID)
)
NAMED = ("postfix", "gmail-hard", "gmail-soft", "unsigned", "arf")


def now_utc() -> datetime:
    return datetime.now(UTC)


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds, result)."""
    cpu0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, time.process_time() - cpu0, out


def snapshot(src: Path, dst: Path) -> Path:
    """A consistent copy of an SQLite file (WAL included) through the backup API."""
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    try:
        a.backup(b)
    finally:
        a.close()
        b.close()
    return dst


def quiet_log(path: Path, level: str) -> None:
    """Log as the CLI does, but into a file: warnings about the garbage would flood the
    terminal, and a terminal is slower than a file."""
    log.setup(level)
    handler = logging.getLogger("newsletter").handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(path.open("a", encoding="utf-8"))


def add_bounces_section(config: Path, text: str) -> None:
    with config.open("a", encoding="utf-8") as f:
        f.write(f"\n[bounces]\n{text}\n")


# -- part 1: the Maildir --------------------------------------------------------------------

@dataclass
class Seeded:
    settings: Settings
    db: Path
    issue: Issue
    subscribers: list[tuple[int, str]]  # (id, email), every one of them sent the issue


def prepare(folder: Path, subscribers: int) -> Seeded:
    """A fresh SQLite file: the example articles, `subscribers` readers, an issue built and its
    ledger filled by start_sending, then every row marked sent (as settle would): the token
    path needs the delivery row, the unsigned path its sent_at."""
    db = folder / "seed.db"
    config = write_config(folder, f"sqlite:///{db}", UNUSED_PORT, concurrency=1,
                          batch_size=200, dkim_key=None)
    add_bounces_section(config, f'return_path = "{RETURN_PATH}"')
    settings = load_settings(config, environ={})
    store = pipeline.open_store(settings)
    report = pipeline.collect(settings, store)
    assert report.ok, report.errors
    seed(store, subscribers)
    issue = pipeline.build_issue(settings, store).issue
    assert issue is not None and issue.id is not None
    assert sending.start_sending(settings, store, issue) == subscribers
    sent_at = now_utc() - timedelta(hours=1)
    when = sa.bindparam("when", type_=s.UTCDateTime())
    with store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE deliveries SET status = 'sent', attempts = 1, "
                             "first_attempt_at = :when, sent_at = :when, last_code = 250, "
                             "last_reply = '250 2.0.0 Ok', updated_at = :when "
                             "WHERE issue_id = :issue").bindparams(when),
                     {"when": sent_at, "issue": issue.id})
        people = [(int(i), str(e)) for i, e in conn.execute(
            sa.select(s.subscribers.c.id, s.subscribers.c.email).order_by(s.subscribers.c.id))]
    store.set_issue_status(issue.number, "sent", now_utc(), expect=("sending",))
    store.close()
    return Seeded(settings, db, issue, people)


def _lf(text: str) -> bytes:
    return text.encode("utf-8")


def _date(rng: random.Random) -> str:
    return format_datetime(datetime(2026, 12, 5, 10, 0, tzinfo=UTC)
                           + timedelta(seconds=rng.randint(0, 86_400)))


def postfix_dsn(rng: random.Random, to: str, rcpt: str, returned: bytes) -> bytes:
    """As Postfix writes it (modelled on one the test mail stack produced): a text part, the
    delivery status, and the undelivered message itself."""
    qid = f"{rng.getrandbits(40):010X}"
    mx = f"mx{rng.randint(1, 9)}.example.net"
    date = _date(rng)
    boundary = f"{qid}.{rng.getrandbits(30)}/{mx}"
    head = f"""Return-Path: <>
Delivered-To: {to}
Received: from {mx} ({mx} [192.0.2.{rng.randint(1, 254)}])
\tby mail.meridian.example.org (Postfix) with ESMTPS id {qid}
\tfor <{to}>; {date}
Received: by {mx} (Postfix)
\tid {qid}; {date}
Date: {date}
From: Mail Delivery System <MAILER-DAEMON@{mx}>
Subject: Undelivered Mail Returned to Sender
To: {to}
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="{boundary}"
Content-Transfer-Encoding: 8bit
Message-Id: <{rng.getrandbits(48):x}.{qid}@{mx}>

This is a MIME-encapsulated message.

--{boundary}
Content-Description: Notification
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

This is the mail system at host {mx}.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients. It's attached below.

For further assistance, please send mail to postmaster.

If you do so, please include this problem report. You can
delete your own text from the attached returned message.

                   The mail system

<{rcpt}>: host {mx}[192.0.2.7] said: 550 5.1.1 <{rcpt}>:
    Recipient address rejected: User unknown in virtual mailbox table (in reply
    to RCPT TO command)

--{boundary}
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; {mx}
X-Postfix-Queue-ID: {qid}
X-Postfix-Sender: rfc822; {to}
Arrival-Date: {date}

Final-Recipient: rfc822; {rcpt}
Original-Recipient: rfc822;{rcpt}
Action: failed
Status: 5.1.1
Remote-MTA: dns; {mx}
Diagnostic-Code: smtp; 550 5.1.1 <{rcpt}>: Recipient address rejected: User unknown in
    virtual mailbox table

--{boundary}
Content-Description: Undelivered Message
Content-Type: message/rfc822
Content-Transfer-Encoding: 8bit

Return-Path: <{to}>
Received: from mail.meridian.example.org (mail.meridian.example.org [198.51.100.25])
\tby {mx} (Postfix) with ESMTPS id {qid}
\tfor <{rcpt}>; {date}
"""
    return _lf(head) + returned.replace(b"\r\n", b"\n") + _lf(f"\n--{boundary}--\n")


def gmail_dsn(rng: random.Random, to: str, rcpt: str, returned_headers: bytes, *,
              soft: bool) -> bytes:
    """Gmail-style: nested multipart text and HTML, the status, the returned headers only."""
    b1, b2, b3 = (f"{rng.getrandbits(64):016x}" for _ in range(3))
    date = _date(rng)
    if soft:
        what, action, status = "Delay", "delayed", "4.2.2"
        diag = ("smtp; 452-4.2.2 The recipient's inbox is out of storage space. Please direct "
                "the recipient to https://support.google.com/mail/?p=OverQuotaTemp")
        say = "** Message not delivered yet **\n\nThe recipient's inbox is full. Gmail will retry."
    else:
        what, action, status = "Failure", "failed", "5.1.1"
        diag = ("smtp; 550-5.1.1 The email account that you tried to reach does not exist. "
                "Please try double-checking the recipient's email address for typos")
        say = (f"** Address not found **\n\nYour message wasn't delivered to {rcpt} because "
               f"the address couldn't be found, or is unable to receive mail.")
    text = f"""Return-Path: <>
Delivered-To: {to}
Received: from mail-sor-f69.google.com (mail-sor-f69.google.com [209.85.220.69])
\tby mail.meridian.example.org (Postfix) with ESMTPS id {rng.getrandbits(40):010X}
\tfor <{to}>; {date}
X-Failed-Recipients: {rcpt}
Auto-Submitted: auto-replied
From: Mail Delivery Subsystem <mailer-daemon@googlemail.com>
To: {to}
Subject: Delivery Status Notification ({what})
Message-ID: <{rng.getrandbits(64):x}.{rng.getrandbits(32):x}@mx.google.com>
Date: {date}
MIME-Version: 1.0
Content-Type: multipart/report; boundary="{b1}"; report-type=delivery-status

--{b1}
Content-Type: multipart/related; boundary="{b2}"

--{b2}
Content-Type: multipart/alternative; boundary="{b3}"

--{b3}
Content-Type: text/plain; charset="UTF-8"

{say}

--{b3}
Content-Type: text/html; charset="UTF-8"

<html><body><p>{say.replace(chr(10), '<br>')}</p></body></html>
--{b3}--
--{b2}--
--{b1}
Content-Type: message/delivery-status

Reporting-MTA: dns; googlemail.com
Received-From-MTA: dns; mail.meridian.example.org
Arrival-Date: {date}

Final-Recipient: rfc822; {rcpt}
Action: {action}
Status: {status}
Remote-MTA: dns; gmail-smtp-in.l.google.com. (2a00:1450:4013:c03::1b, the server for the
 domain example.com.)
Diagnostic-Code: {diag}
Last-Attempt-Date: {date}

--{b1}
Content-Type: text/rfc822-headers

"""
    return _lf(text) + returned_headers + _lf(f"\n--{b1}--\n")


def unsigned_dsn(rng: random.Random, rcpt: str, returned_headers: bytes) -> bytes:
    """A bounce sent to the From address rather than the envelope sender: no token."""
    b = f"----=_Part_{rng.getrandbits(40)}"
    date = _date(rng)
    return _lf(f"""Return-Path: <>
Delivered-To: {SENDER}
From: postmaster@mail.example.com
To: {SENDER}
Subject: Undeliverable: Meridian Policy Review No. 1
Date: {date}
Message-ID: <{rng.getrandbits(64):x}@mail.example.com>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="{b}"

--{b}
Content-Type: text/plain; charset=us-ascii

Delivery has failed to these recipients or groups:

{rcpt}
The email address you entered couldn't be found.

--{b}
Content-Type: message/delivery-status

Reporting-MTA: dns;mail.example.com
Received-From-MTA: dns;mail.meridian.example.org
Arrival-Date: {date}

Final-Recipient: rfc822;{rcpt}
Action: failed
Status: 5.1.10
Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP
 address lookup

--{b}
Content-Type: text/rfc822-headers

""") + returned_headers + _lf(f"\n--{b}--\n")


def arf_report(rng: random.Random, rcpt: str, returned_headers: bytes) -> bytes:
    b = f"----=_Part_{rng.getrandbits(40)}"
    date = _date(rng)
    return _lf(f"""Return-Path: <feedback@arf.mail.example.com>
Delivered-To: {FBL}
From: Mail AntiSpam Feedback <feedback@arf.mail.example.com>
To: {FBL}
Subject: FW: Meridian Policy Review No. 1
Date: {date}
Message-ID: <{rng.getrandbits(64):x}@arf.mail.example.com>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=feedback-report; boundary="{b}"

--{b}
Content-Type: text/plain; charset="us-ascii"

This is an email abuse report for an email message received from IP 198.51.100.25 on {date}.

--{b}
Content-Type: message/feedback-report

Feedback-Type: abuse
User-Agent: ExampleMail-Feedback/2.0
Version: 1
Original-Rcpt-To: {rcpt}
Received-Date: {date}
Source-IP: 198.51.100.25
Reported-Domain: meridian.example.org

--{b}
Content-Type: text/rfc822-headers

""") + returned_headers + _lf(f"\n--{b}--\n")


def auto_reply(rng: random.Random, to: str, rcpt: str, n: int) -> bytes:
    marker = ("Auto-Submitted: auto-replied\n", "X-Autoreply: yes\n", "")[n % 3]
    subject = ("Out of Office: Meridian Policy Review No. 1",
               "Automatic reply: Meridian Policy Review No. 1", "Vacation")[n % 3]
    return _lf(f"""Return-Path: <{rcpt}>
Delivered-To: {to}
From: Reader <{rcpt}>
To: {to}
Subject: {subject}
{marker}Date: {_date(rng)}
Message-ID: <{rng.getrandbits(64):x}@example.com>
Content-Type: text/plain; charset=utf-8

I am out of the office until Monday with limited access to email.
For urgent matters please contact my colleague.
""")


def reply_or_spam(rng: random.Random, rcpt: str, n: int) -> bytes:
    if n % 2:
        return _lf(f"""Delivered-To: {EDITOR}
From: Reader <{rcpt}>
To: {EDITOR}
Subject: Re: Meridian Policy Review No. 1
Date: {_date(rng)}
Message-ID: <{rng.getrandbits(64):x}@example.com>
In-Reply-To: <issue-1@meridian.example.org>
Content-Type: text/plain; charset=utf-8

Thanks for this week's issue, the piece on ports was very good.

> Meridian Policy Review No. 1
""")
    return _lf(f"""Delivered-To: {RETURN_PATH}
From: "Prize Desk" <winner@lottery.example>
To: {RETURN_PATH}
Subject: You have won
Date: {_date(rng)}
Message-ID: <{rng.getrandbits(64):x}@lottery.example>
Content-Type: text/html; charset=utf-8

<p>Claim your prize today.</p>
""")


def garbage(rng: random.Random, n: int) -> bytes:
    kind = n % 4
    if kind == 0:
        return rng.randbytes(rng.randint(100, 4000))
    if kind == 1:
        return b""
    if kind == 2:  # a report whose boundary is missing: its parts cannot be found
        return _lf(f"""From: MAILER-DAEMON@mx.example.net
To: {RETURN_PATH}
Subject: Undelivered Mail Returned to Sender
Content-Type: multipart/report; report-type=delivery-status

--b1
Content-Type: message/delivery-status

Final-Recipient: rfc822; someone@example.com
Action: failed
Status: 5.1.1
--b1--
""")
    return b"this is not a mail message at all\njust some text someone saved here\n"


def forge(address: str) -> str:
    local, _, domain = address.partition("@")
    head, _, mac = local.rpartition("-")
    return f"{head}-{'a' if mac[0] != 'a' else 'b'}{mac[1:]}@{domain}"


def returned_headers_of(message: bytes) -> bytes:
    return message.partition(b"\r\n\r\n")[0].replace(b"\r\n", b"\n") + b"\n"


def build_mix(seeded: Seeded, count: int) -> tuple[list[bytes], Counter[str]]:
    """`count` messages in the MIX proportions, shuffled (a mailbox is not sorted by kind)."""
    rng = random.Random(15)
    settings = seeded.settings
    secret = load_or_create_secret(settings)
    store = Store(f"sqlite:///{seeded.db}")
    plan = sending.make_plan(settings, store, seeded.issue)
    stamp = plan.variant_for(())
    assert stamp is not None
    number = seeded.issue.number
    people = iter(seeded.subscribers)
    needed = sum(round(count * f) for k, f in MIX if k in NAMED)
    assert needed <= len(seeded.subscribers), "more subscribers needed than seeded"
    date = now_utc()

    def the_message(sid: int, address: str) -> bytes:
        row = Claimed(sid, sid, address, f"Reader {sid}", (), 1, None)
        unsubscribe, preferences = plan.urls_for(row)
        return stamp.render(to_address=address, to_name=row.name,
                            message_id=plan.message_id_for(row), unsubscribe_url=unsubscribe,
                            preferences_url=preferences, date=date)

    out: list[tuple[str, bytes]] = []
    sizes = [(k, round(count * f)) for k, f in MIX]
    sizes[0] = (sizes[0][0], sizes[0][1] + count - sum(n for _, n in sizes))
    for kind, n in sizes:
        for i in range(n):
            if kind in NAMED:
                sid, address = next(people)
            else:
                sid, address = seeded.subscribers[rng.randrange(len(seeded.subscribers))]
            verp = verp_address(RETURN_PATH, secret, number, sid)
            if kind == "postfix":
                raw = postfix_dsn(rng, verp, address, the_message(sid, address))
            elif kind in ("gmail-hard", "gmail-soft"):
                raw = gmail_dsn(rng, verp, address,
                                returned_headers_of(the_message(sid, address)),
                                soft=kind == "gmail-soft")
            elif kind == "unsigned":
                raw = unsigned_dsn(rng, address, returned_headers_of(the_message(sid, address)))
            elif kind == "arf":
                raw = arf_report(rng, address, returned_headers_of(the_message(sid, address)))
            elif kind == "auto":
                raw = auto_reply(rng, verp if i % 2 else EDITOR, address, i)
            elif kind == "reply":
                raw = reply_or_spam(rng, address, i)
            elif kind == "garbage":
                raw = garbage(rng, i)
            elif kind == "forged":
                raw = gmail_dsn(rng, forge(verp), address,
                                returned_headers_of(the_message(sid, address)), soft=False)
            else:  # duplicate: the same report delivered twice
                raw = next(r for k, r in out[rng.randrange(len(out) // 2):] if k == "postfix")
            out.append((kind, raw))
    store.close()
    rng.shuffle(out)
    return [raw for _, raw in out], Counter(k for k, _ in out)


def write_maildir(path: Path, messages: list[bytes]) -> int:
    box = mailbox.Maildir(path, create=True)
    try:
        for raw in messages:
            box.add(raw)
    finally:
        box.close()
    return sum(len(m) for m in messages)


def read_maildir(path: Path) -> list[bytes]:
    """Every message, in the order ingest_paths reads them."""
    box = mailbox.Maildir(path, factory=None, create=False)
    try:
        out = []
        for key in sorted(box.iterkeys()):
            with box.get_file(key) as f:
                out.append(f.read())
        return out
    finally:
        box.close()


def stdlib_parse_maildir(path: Path) -> int:
    """Reference (a): the standard library reads and parses every message, nothing else."""
    parser = email.parser.BytesParser(policy=email.policy.compat32)
    box = mailbox.Maildir(path, factory=None, create=False)
    n = 0
    try:
        for key in sorted(box.iterkeys()):
            with box.get_file(key) as f:
                parser.parsebytes(f.read())
            n += 1
    finally:
        box.close()
    return n


@dataclass
class Rate:
    label: str
    count: int
    wall: float
    cpu: float

    @property
    def rate(self) -> float:
        return self.count / self.wall

    @property
    def us(self) -> float:
        return self.wall / self.count * 1e6


def best(runs: list[Rate]) -> Rate:
    return min(runs, key=lambda r: r.wall)


def ingest_once(seeded: Seeded, maildir: Path, db: Path) -> tuple[Rate, IngestSummary, Store]:
    store = Store(f"sqlite:///{db}")
    wall, cpu, (summary, errors) = timed(
        lambda: ingest_paths(seeded.settings, store, [str(maildir)]))
    assert not errors, errors
    return Rate("ingest", summary.messages, wall, cpu), summary, store


def part_maildir(root: Path, args: argparse.Namespace) -> dict[str, Rate]:
    folder = root / "maildir-part"
    folder.mkdir()
    t0 = time.perf_counter()
    seeded = prepare(folder, args.subscribers)
    messages, kinds = build_mix(seeded, args.messages)
    maildir = folder / "Maildir"
    size = write_maildir(maildir, messages)
    del messages
    print(f"Maildir: {args.messages:,} messages, {size / 2**20:.1f} MiB "
          f"({', '.join(f'{k} {n}' for k, n in kinds.items())}); "
          f"{args.subscribers:,} subscribers sent issue {seeded.issue.number}; "
          f"prepared in {time.perf_counter() - t0:.1f} s")

    raws = read_maildir(maildir)  # also warms the page cache for every run below
    count = len(raws)
    assert count == args.messages
    reads, stdlib, ours, fresh, again = [], [], [], [], []
    summary = summary2 = None
    for i in range(args.repeat):
        wall, cpu, _ = timed(lambda: read_maildir(maildir))
        reads.append(Rate("read", count, wall, cpu))
        wall, cpu, n = timed(lambda: stdlib_parse_maildir(maildir))
        stdlib.append(Rate("stdlib", n, wall, cpu))
        wall, cpu, _ = timed(lambda: [parse(raw) for raw in raws])
        ours.append(Rate("parse", count, wall, cpu))
        db = snapshot(seeded.db, folder / f"run{i}.db")
        rate, summary, store = ingest_once(seeded, maildir, db)
        fresh.append(rate)
        wall, cpu, (summary2, errors) = timed(
            functools.partial(ingest_paths, seeded.settings, store, [str(maildir)]))
        assert not errors
        again.append(Rate("again", summary2.messages, wall, cpu))
        store.close()
    assert summary is not None and summary2 is not None
    print(f"  first run:  {summary.line()}")
    print(f"  second run: {summary2.line()}")
    rows = {"read": best(reads), "stdlib": best(stdlib), "parse": best(ours),
            "ingest": best(fresh), "again": best(again)}
    ingest = rows["ingest"]
    print()
    print(f"  {'Maildir, ' + format(count, ',') + ' messages':<50} {'msg/s':>9} {'µs/msg':>8} "
          f"{'CPU µs':>8} {'ingest / this':>14} {'(by CPU)':>9}")
    labels = {
        "read": "read only (mailbox.Maildir, no parsing)",
        "stdlib": "(a) stdlib: Maildir + BytesParser(compat32)",
        "parse": "(b) our parse() alone, bytes in memory",
        "ingest": "ingest_paths, fresh SQLite file",
        "again": "ingest_paths again (all already recorded)",
    }
    for key, label in labels.items():
        r = rows[key]
        ratio = cpu_ratio = ""
        if key in ("stdlib", "parse"):
            ratio, cpu_ratio = f"{ingest.rate / r.rate:.2f}", f"{r.cpu / ingest.cpu:.2f}"
        print(f"  {label:<50} {r.rate:9,.0f} {r.us:8.0f} {r.cpu / r.count * 1e6:8.0f} "
              f"{ratio:>14} {cpu_ratio:>9}")
    print(f"  second run / first run: {rows['again'].rate / ingest.rate:.2f} "
          f"(by CPU {ingest.cpu / rows['again'].cpu:.2f})")
    busy = [r.label for r in rows.values() if r.wall > 1.15 * r.cpu]
    if busy:
        print(f"  note: wall time over 1.15 x CPU time for {', '.join(busy)}: the machine was "
              f"busy with something else; the CPU columns are the steadier figures")
    print(f"  matching and storing, per message: {ingest.us - rows['stdlib'].us:.0f} µs over "
          f"(a), {ingest.us - rows['parse'].us - rows['read'].us:.0f} µs over (b) + reading")
    if args.profile:
        profile(seeded, maildir, folder)
    return rows


# -- where an ingestion's time goes ---------------------------------------------------------

def count_sql(store: Store) -> Counter[str]:
    counts: Counter[str] = Counter()

    @sa.event.listens_for(store.engine, "before_cursor_execute")
    def _statement(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        counts[statement.split(None, 1)[0].upper()] += 1

    @sa.event.listens_for(store.engine, "begin")
    def _begin(conn: Any) -> None:
        counts["transactions"] += 1

    return counts


def profile(seeded: Seeded, maildir: Path, folder: Path) -> None:
    print("\nprofile: one ingestion into a fresh copy, under cProfile")
    store = Store(f"sqlite:///{snapshot(seeded.db, folder / 'profile.db')}")
    counts = count_sql(store)
    prof = cProfile.Profile()
    prof.enable()
    summary, _ = ingest_paths(seeded.settings, store, [str(maildir)])
    prof.disable()
    n = summary.messages
    print(f"  SQL per message: {', '.join(f'{k} {v / n:.2f}' for k, v in counts.most_common())}")
    stats = pstats.Stats(prof)
    total = max(v[3] for v in stats.stats.values())  # type: ignore[attr-defined]
    wanted = {
        ("bounce_files.py", "messages"): "read the Maildir (mailbox.Maildir)",
        ("bounces.py", "parse"): "parse() (email package)",
        ("bounces.py", "_token"): "verify the VERP token (HMAC)",
        ("bounces.py", "issue_for_token"): "store.issue_for_token",
        ("bounces.py", "recent_delivery"): "store.recent_delivery (unsigned)",
        ("bounces.py", "record_bounces"): "store.record_bounces",
        ("log.py", "event"): "log.event",
        ("bounces.py", "finish"): "Ingestor.finish (rates)",
    }
    print(f"  {'part of ingest_paths':<40} {'cumulative':>10} {'share':>7}")
    for (file, func), label in wanted.items():
        cum = sum(v[3] for (f, _line, name), v in stats.stats.items()  # type: ignore[attr-defined]
                  if f.endswith("/" + file) and name == func)
        print(f"  {label:<40} {cum:9.2f}s {cum / total:7.1%}")
    print(f"  {'whole ingestion under the profiler':<40} {total:9.2f}s")
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(14)
    print("  top functions by own time:")
    for line in out.getvalue().splitlines():
        if line.strip() and (line.lstrip()[0].isdigit() or "ncalls" in line):
            print("   " + line[:150])
    store.close()

    # One transaction per report against one for many: record_bounces alone, same notices.
    people = seeded.subscribers[:2000]
    policy = policy_of(seeded.settings)
    issue_id = seeded.issue.id

    def notices(part: list[tuple[int, str]], tag: str) -> list[BounceNotice]:
        return [BounceNotice(sid, issue_id, "hard", "5.1.1", "smtp; 550 5.1.1 no such user",
                             "file", address, f"{tag}{sid}") for sid, address in part]

    def record_all(store: Store, batch: list[BounceNotice], per_call: int) -> None:
        now = now_utc()
        for i in range(0, len(batch), per_call):
            store.record_bounces(batch[i:i + per_call], now, policy)

    for per_call in (1, 100):
        store = Store(f"sqlite:///{snapshot(seeded.db, folder / f'record{per_call}.db')}")
        batch = notices(people, "k")
        wall, _cpu, _ = timed(functools.partial(record_all, store, batch, per_call))
        print(f"  record_bounces, {per_call:3d} notice(s) per call: "
              f"{wall / len(batch) * 1e6:6.0f} µs per notice")
        store.close()
    # The same statements straight to the driver, one transaction per 100: SQLite's own cost.
    raw_db = snapshot(seeded.db, folder / "record-raw.db")
    wall = raw_record(raw_db, notices(people, "r"), policy.max_hard_bounces)
    print(f"  the same four statements through sqlite3, 100 per transaction: "
          f"{wall / len(people) * 1e6:6.0f} µs per notice")

    store = Store(f"sqlite:///{seeded.db}")
    number = seeded.issue.number
    since = now_utc() - timedelta(days=7)
    print(f"  on the issue's own ledger ({len(seeded.subscribers):,} rows), "
          f"{len(people):,} lookups:")
    lookups(store, number, people, since, raw_db=seeded.db)
    store.close()
    # The unsigned path on a longer ledger: 50 issues sent to every subscriber.
    big = snapshot(seeded.db, folder / "ledger50.db")
    rows = grow_ledger(big, issues=50)
    store = Store(f"sqlite:///{big}")
    print(f"  on a ledger of {rows:,} rows (50 issues a week apart), {min(len(people), 200)} "
          f"lookups:")
    lookups(store, number, people[:200], since, raw_db=big, plans=True)
    secret = load_or_create_secret(seeded.settings)
    addresses = [verp_address(RETURN_PATH, secret, number, sid) for sid, _ in people]
    wall, _cpu, _ = timed(lambda: [verp_token_of(a, secret) for a in addresses])
    print(f"  verp_token_of: {wall / len(people) * 1e6:.0f} µs per call")
    store.close()


def raw_record(db: Path, batch: list[BounceNotice], max_hard: int) -> float:
    """What record_bounces does for hard bounces (duplicate check, insert, count, suppress),
    as four prepared statements through sqlite3, 100 notices per transaction; seconds."""
    con = sqlite3.connect(db, isolation_level=None)
    when = now_utc().replace(tzinfo=None).isoformat(" ")
    t0 = time.perf_counter()
    for i in range(0, len(batch), 100):
        con.execute("BEGIN IMMEDIATE")
        for n in batch[i:i + 100]:
            if con.execute("SELECT id FROM bounce_events WHERE key = ?", (n.key,)).fetchone():
                continue
            con.execute("INSERT INTO bounce_events (subscriber_id, issue_id, kind, status, "
                        "diagnostic, source, recipient, key, received_at) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (n.subscriber_id, n.issue_id, n.kind, n.status, n.diagnostic,
                         n.source, n.recipient, n.key, when))
            con.execute("UPDATE subscribers SET hard_bounces = hard_bounces + 1, "
                        "updated_at = ? WHERE id = ?", (when, n.subscriber_id))
            con.execute("UPDATE subscribers SET status = 'bounced', updated_at = ? "
                        "WHERE id = ? AND hard_bounces >= ? AND status IN ('pending', 'active')",
                        (when, n.subscriber_id, max_hard))
        con.execute("COMMIT")
    wall = time.perf_counter() - t0
    con.close()
    return wall


def statements_of(store: Store, fn: Callable[[], Any]) -> list[tuple[str, Any]]:
    """The SQL statements (and parameters) the store sends to the driver while `fn` runs."""
    seen: list[tuple[str, Any]] = []

    def hook(conn: Any, cursor: Any, statement: str, parameters: Any, *rest: Any) -> None:
        seen.append((statement, parameters))

    sa.event.listen(store.engine, "before_cursor_execute", hook)
    try:
        fn()
    finally:
        sa.event.remove(store.engine, "before_cursor_execute", hook)
    return seen


def lookups(store: Store, number: int, people: list[tuple[int, str]], since: datetime, *,
            raw_db: Path, plans: bool = False) -> None:
    """issue_for_token and recent_delivery per call, against the very statements they send
    replayed through sqlite3 (SQLite's own cost); with `plans`, SQLite's plan of each."""
    calls: dict[str, Callable[[int, str], Any]] = {
        "issue_for_token": lambda sid, _email: store.issue_for_token(number, sid),
        "recent_delivery": lambda _sid, email: store.recent_delivery(email, since),
    }
    con = sqlite3.connect(raw_db, isolation_level=None)

    def every(call: Callable[[int, str], Any]) -> None:
        for sid, address in people:
            call(sid, address)

    def replay(sent: list[tuple[str, Any]]) -> None:
        for sql, params in sent:
            con.execute(sql, params).fetchall()

    for name, call in calls.items():
        sent = statements_of(store, functools.partial(every, call))
        wall, _cpu, _ = timed(functools.partial(every, call))
        raw, _cpu, _ = timed(functools.partial(replay, sent))
        print(f"    {name}: {wall / len(people) * 1e6:7.0f} µs per call; its "
              f"{len(sent) / len(people):.0f} statement(s) alone through sqlite3: "
              f"{raw / len(people) * 1e6:.0f} µs")
        if plans:
            for sql, params in sent[:round(len(sent) / len(people))]:
                plan = [r[-1] for r in con.execute("EXPLAIN QUERY PLAN " + sql, params)]
                print(f"      {' '.join(sql.split())[:70]}…: {'; '.join(plan)}")
    con.close()


def grow_ledger(db: Path, issues: int) -> int:
    """Issues 2..`issues` as copies of issue 1 sent a week apart before it (a weekly letter's
    year), each to every subscriber; returns the ledger's rows."""
    con = sqlite3.connect(db, isolation_level=None)
    earlier = "strftime('%Y-%m-%d %H:%M:%S', {0}, '-' || (7 * ({1} - 1)) || ' days') " \
              "|| substr({0}, 20)"  # stored as 'YYYY-MM-DD HH:MM:SS.ffffff'
    con.execute("BEGIN")
    con.execute(f"WITH RECURSIVE n(i) AS (SELECT 2 UNION ALL SELECT i + 1 FROM n "
                f"WHERE i < {issues}) "
                "INSERT INTO issues (number, status, subject, preheader, created, window_start, "
                "window_end, html, text, send_at, updated_at) SELECT n.i, 'sent', subject, "
                f"preheader, created, window_start, window_end, '', '', "
                f"{earlier.format('send_at', 'n.i')}, updated_at "
                "FROM issues, n WHERE issues.number = 1")
    con.execute("INSERT INTO deliveries (issue_id, subscriber_id, status, attempts, "
                "next_attempt_at, first_attempt_at, sent_at, updated_at) "
                "SELECT i.id, d.subscriber_id, 'sent', 1, i.send_at, i.send_at, i.send_at, "
                "i.send_at FROM deliveries d, issues i WHERE d.issue_id = (SELECT id FROM "
                "issues WHERE number = 1) AND i.number != 1")
    con.execute("COMMIT")
    rows = con.execute("SELECT count(*) FROM deliveries").fetchone()[0]
    con.close()
    return int(rows)


# -- part 2: the IMAP loop on Postfix and Dovecot -----------------------------------------------

def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * p
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


@contextlib.contextmanager
def mailstack() -> Iterator[Any]:
    """tests/mailstack.py's stack outside pytest: its "skip" is pytest's Skipped exception."""
    import pytest

    from tests.mailstack import running_mailstack

    try:
        stack_cm = contextlib.contextmanager(running_mailstack)()
        stack = stack_cm.__enter__()
    except pytest.skip.Exception as exc:
        print(f"IMAP loop skipped: {exc.msg}")
        yield None
        return
    try:
        yield stack
    except BaseException:
        if not stack_cm.__exit__(*sys.exc_info()):
            raise
    else:
        stack_cm.__exit__(None, None, None)


def arrivals(maildir: Path, secret: bytes) -> dict[int, float]:
    """Subscriber id -> when Dovecot stored the DSN (a Maildir file name starts with the
    delivery's seconds and microseconds: 1796500552.M706109P2788.host)."""
    found = {}
    for sub in ("new", "cur"):
        for path in (maildir / sub).iterdir():
            secs, _, rest = path.name.partition(".M")
            micros = rest.partition("P")[0]
            report = parse(path.read_bytes())
            token = verp_token_of(report.verp_address or "", secret)
            if token is not None:
                found[token[1]] = int(secs) + int(micros) / 1e6
    return found


def part_imap(root: Path, args: argparse.Namespace, maildir_rate: float | None) -> None:
    n = args.dead
    with mailstack() as stack:
        if stack is None:
            return
        assert stack.smtp_host == "127.0.0.1"  # what write_config writes
        folder = root / "imap-part"
        db = folder / "n.db"
        config = write_config(folder, f"sqlite:///{db}", stack.smtp_port, concurrency=8,
                              batch_size=200, dkim_key=None)
        add_bounces_section(config, f"""return_path = "{stack.user}@{stack.list_domain}"
imap_url = "imap://{stack.user}@{stack.imap_host}:{stack.imap_port}/INBOX"
imap_password = "{stack.password}"
""")
        settings = load_settings(config, environ={})
        secret = load_or_create_secret(settings)
        store = pipeline.open_store(settings)
        assert pipeline.collect(settings, store).ok
        seed(store, n)
        with store.engine.begin() as conn:  # the readers now live where nobody does
            conn.exec_driver_sql(
                f"UPDATE subscribers SET email = replace(email, '@example.com', "
                f"'@{stack.bounce_domain}'), email_key = replace(email_key, '@example.com', "
                f"'@{stack.bounce_domain}')")
        issue = pipeline.build_issue(settings, store).issue
        assert issue is not None and issue.id is not None
        sending.start_sending(settings, store, issue)
        # The ledger as it is before anything was sent: where a single pass is timed later.
        fresh_imap = snapshot(db, folder / "fresh-imap.db")
        fresh_maildir = snapshot(db, folder / "fresh-maildir.db")
        stack.clear_inbox()

        t_start = time.monotonic()
        summary = sending.run_worker(settings, store, issue)
        t_sent = time.monotonic()
        assert summary.sent == n, summary
        print(f"\nIMAP loop: issue {issue.number} sent to {n} addresses at "
              f"{stack.bounce_domain} through Postfix in {t_sent - t_start:.2f} s "
              f"(VERP return path {stack.user}+TOKEN@{stack.list_domain})")

        bounced = sa.select(sa.func.count()).select_from(s.subscribers).where(
            s.subscribers.c.status == "bounced")
        polls: list[tuple[float, int, float]] = []
        due = t_sent
        while True:
            t0 = time.monotonic()
            got = poll_mailbox(settings, store)
            t1 = time.monotonic()
            polls.append((t0 - t_sent, got.messages, t1 - t0))
            with store.engine.connect() as conn:
                done = conn.execute(bounced).scalar_one()
            if done >= n:
                t_done = time.monotonic()
                break
            if t1 - t_sent > args.deadline:
                raise SystemExit(f"{done} of {n} bounced after {args.deadline:g} s\n"
                                 f"{stack.log()[-3000:]}")
            due += 0.5
            time.sleep(max(0.0, due - time.monotonic()))

        d, b = s.deliveries.c, s.bounce_events.c
        with store.engine.connect() as conn:
            rows = conn.execute(
                sa.select(d.subscriber_id, d.sent_at, b.received_at)
                .join(s.bounce_events, sa.and_(b.subscriber_id == d.subscriber_id,
                                               b.issue_id == d.issue_id))
                .where(d.issue_id == issue.id)).all()
        assert len(rows) == n, len(rows)
        stored = arrivals(stack.maildir, secret)
        total = [(r.received_at - r.sent_at).total_seconds() for r in rows]
        to_box = [stored[r.subscriber_id] - r.sent_at.timestamp() for r in rows]
        in_box = [r.received_at.timestamp() - stored[r.subscriber_id] for r in rows]
        store.close()

        # One pass over the same N DSNs into the untouched ledger, over IMAP and from
        # Dovecot's own Maildir files (the same bytes, less Dovecot's Delivered-To header).
        with stack.imap() as conn:
            conn.store("1:*", "-FLAGS.SILENT", r"(\Seen)")
        fresh = Store(f"sqlite:///{fresh_imap}")
        wall, cpu, got = timed(lambda: poll_mailbox(settings, fresh))
        fresh.close()
        assert (got.messages, got.hard) == (n, n), got.line()
        imap_rate = Rate("imap", n, wall, cpu)
        fresh = Store(f"sqlite:///{fresh_maildir}")
        wall, cpu, (got, errors) = timed(
            lambda: ingest_paths(settings, fresh, [str(stack.maildir)]))
        fresh.close()
        assert not errors and (got.messages, got.hard) == (n, n), (errors, got.line())
        file_rate = Rate("maildir", n, wall, cpu)

    print(f"  polls every 0.5 s: {len(polls)}; messages read per poll: "
          + " ".join(f"{m}" for _, m, _ in polls))
    busiest = max(polls, key=lambda p: p[1])
    print(f"  the busiest poll read {busiest[1]} in {busiest[2] * 1000:.0f} ms")
    print(f"  send finished -> all {n} suppressed: {t_done - t_sent:.2f} s")
    print(f"  {'per DSN (s)':<44} {'median':>7} {'p95':>7} {'max':>7}")
    for label, values in (("Postfix accepted -> bounce recorded", total),
                          ("  accepted -> DSN stored by Dovecot", to_box),
                          ("  stored -> recorded (poll wait + ingest)", in_box)):
        print(f"  {label:<44} {statistics.median(values):7.3f} "
              f"{percentile(values, 0.95):7.3f} {max(values):7.3f}")
    print(f"  one poll_mailbox pass over {n} DSNs, fresh ledger: {imap_rate.rate:,.0f} msg/s "
          f"({imap_rate.us / 1000:.2f} ms/msg, CPU {imap_rate.cpu / n * 1e6:.0f} µs/msg)")
    print(f"  ingest_paths over Dovecot's Maildir, same {n} DSNs: {file_rate.rate:,.0f} msg/s "
          f"-> IMAP / Maildir {imap_rate.rate / file_rate.rate:.2f}")
    if maildir_rate:
        print(f"  IMAP / part 1's Maildir ingestion ({maildir_rate:,.0f} msg/s): "
              f"{imap_rate.rate / maildir_rate:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--subscribers", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=1, help="best of N for part 1")
    parser.add_argument("--dead", type=int, default=200,
                        help="subscribers at the dead domain in the IMAP loop")
    parser.add_argument("--deadline", type=float, default=120.0)
    parser.add_argument("--imap", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--maildir", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    args = parser.parse_args()
    print(f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"SQLite {sqlite3.sqlite_version}")
    with tempfile.TemporaryDirectory(prefix="bench-bounces-") as tmp:
        root = Path(tmp)
        quiet_log(root / "bench.log", args.log_level)
        rows = part_maildir(root, args) if args.maildir else {}
        if args.imap:
            part_imap(root, args, rows["ingest"].rate if rows else None)
        lines = (root / "bench.log").read_text(encoding="utf-8").count("\n")
        print(f"\n({lines:,} log lines at {args.log_level} went to a file)")
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
