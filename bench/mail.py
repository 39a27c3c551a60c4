"""Per-recipient cost of MessageTemplate vs an EmailMessage per recipient; DKIM; SMTP throughput."""

from __future__ import annotations

import argparse
import asyncio
import html
import shutil
import socket
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from email.message import EmailMessage
from email.policy import SMTP as SMTP_POLICY
from email.utils import format_datetime

import dkim
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from newsletter.deliver.dkim import DkimSigner
from newsletter.deliver.headers import message_id
from newsletter.deliver.mail import MailIdentity, MessageTemplate
from newsletter.deliver.smtp import SmtpPool

IDENTITY = MailIdentity("news@ledger.example.org", "The Ledger", "editor@ledger.example.org",
                        "The Ledger <ledger.example.org>", "unsubscribe@ledger.example.org",
                        "ledger.example.org")
ARTICLE = (
    '<tr><td style="padding: 16px 24px; font-family: Georgia, serif; color: #222222;">\n'
    '<h2 style="margin: 0 0 8px; font-size: 20px; line-height: 1.3;">'
    '<a href="https://ledger.example.org/articles/{n}/" style="color: #0b4f6c; '
    'text-decoration: none;">Article {n}: trade, tariffs and the harbour economy — what '
    'changed</a></h2>\n<p style="margin: 0 0 8px; font-size: 13px; color: #666666;">By Writer '
    '{n} and Second Writer · Économie</p>\n<p style="margin: 0; font-size: 16px; '
    'line-height: 1.5;">{summary}</p>\n</td></tr>\n')
SUMMARY = ("Port authorities say container volumes rose for the third month while tariffs on "
           "steel and aluminium reshaped where ships call, and who pays for the dredging. ") * 9


def issue_html() -> str:
    rows = "".join(ARTICLE.format(n=n, summary=SUMMARY) for n in range(30))
    return ('<!doctype html><html lang="en"><body style="margin: 0; background: #f4f4f4;">'
            '<table role="presentation" width="100%" style="max-width: 640px;">'
            '<tr><td style="padding: 24px;">Hello %%NAME%%,</td></tr>\n' + rows
            + '<tr><td style="padding: 24px; font-size: 12px;"><a href="%%UNSUBSCRIBE_URL%%">'
            'Unsubscribe</a> · <a href="%%PREFERENCES_URL%%">Preferences</a></td></tr>'
            "</table></body></html>\n")


def issue_text() -> str:
    body = "".join(f"Article {n}: trade, tariffs and the harbour economy\n"
                   f"https://ledger.example.org/articles/{n}/\n\n{SUMMARY[:300]}\n\n"
                   for n in range(30))
    return ("Hello %%NAME%%,\n\n" + body
            + "Unsubscribe: %%UNSUBSCRIBE_URL%%\nPreferences: %%PREFERENCES_URL%%\n")


def recipient(i: int) -> dict[str, object]:
    return {"to_address": f"reader{i}@example.com", "to_name": f"Reader Number {i}",
            "message_id": message_id(12, i, "ledger.example.org"),
            "unsubscribe_url": f"https://ledger.example.org/u/{i:08d}.{'k' * 43}",
            "preferences_url": f"https://ledger.example.org/p/{i:08d}.{'k' * 43}",
            "date": datetime(2024, 6, 3, 9, 0, tzinfo=UTC)}


def email_message(i: int, html_doc: str, text_doc: str) -> bytes:
    """The reference: personalise the documents and build an EmailMessage per recipient."""
    r = recipient(i)
    values = {"%%NAME%%": str(r["to_name"]), "%%UNSUBSCRIBE_URL%%": str(r["unsubscribe_url"]),
              "%%PREFERENCES_URL%%": str(r["preferences_url"])}
    h, t = html_doc, text_doc
    for key, value in values.items():
        h, t = h.replace(key, html.escape(value)), t.replace(key, value)
    msg = EmailMessage()
    msg["From"] = "The Ledger <news@ledger.example.org>"
    msg["To"] = f"{r['to_name']} <{r['to_address']}>"
    msg["Subject"] = "The Ledger — 3 June 2024"
    msg["Date"] = format_datetime(r["date"])  # type: ignore[arg-type]
    msg["Message-ID"] = str(r["message_id"])
    msg["List-Id"] = "The Ledger <ledger.example.org>"
    msg["List-Unsubscribe"] = f"<{r['unsubscribe_url']}>"
    msg["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    msg.set_content(t, cte="quoted-printable")
    msg.add_alternative(h, subtype="html", cte="quoted-printable")
    return msg.as_bytes(policy=SMTP_POLICY)


def per_call(fn, n: int) -> float:  # noqa: ANN001 - any zero-argument callable
    """Microseconds per call, best of three runs."""
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for i in range(n):
            fn(i)
        best = min(best, (time.perf_counter() - start) / n)
    return best * 1e6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def throughput(template: MessageTemplate, port: int, total: int, connections: int) -> float:
    """Messages per second: render (with DKIM) + send, `connections` sessions at once."""
    pool = SmtpPool([("127.0.0.1", port)], security="none", timeout=30,
                    local_hostname="bench.test")
    queue = list(range(total))

    async def worker() -> None:
        conn = await pool.connect()
        try:
            while queue:
                i = queue.pop()
                message = template.render(**recipient(i))  # type: ignore[arg-type]
                result = await conn.send("bounces@ledger.example.org", f"r{i}@example.com",
                                         message)
                assert result.status == "sent", result
        finally:
            await conn.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(connections)))
    return total / (time.perf_counter() - start)


def _process_rate(port: int, total: int, connections: int, pem: bytes) -> float:
    """One sending process (as `delivery.workers` starts them), its own template and signer."""
    signer = DkimSigner("bench", "ledger.example.org", pem)
    template = MessageTemplate.build(identity=IDENTITY, subject="The Ledger — 3 June 2024",
                                     html=issue_html(), text=issue_text(), dkim=signer)
    return asyncio.run(throughput(template, port, total, connections))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=2000, help="recipients per timing")
    parser.add_argument("--smtp-messages", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=4)
    args = parser.parse_args()

    html_doc, text_doc = issue_html(), issue_text()
    print(f"issue: html {len(html_doc.encode()) / 1000:.1f} KB, "
          f"text {len(text_doc.encode()) / 1000:.1f} KB")
    start = time.perf_counter()
    plain = MessageTemplate.build(identity=IDENTITY, subject="The Ledger — 3 June 2024",
                                  html=html_doc, text=text_doc)
    print(f"MessageTemplate.build (once per variant): {(time.perf_counter() - start) * 1e3:.1f} ms")
    size = len(plain.render(**recipient(0)))  # type: ignore[arg-type]
    print(f"message size: {size / 1000:.1f} KB")

    ours = per_call(lambda i: plain.render(**recipient(i)), args.n)  # type: ignore[arg-type]
    ref = per_call(lambda i: email_message(i, html_doc, text_doc), max(args.n // 10, 50))
    print(f"render per recipient:        {ours:8.1f} µs")
    print(f"EmailMessage per recipient:  {ref:8.1f} µs")
    print(f"ratio:                       {ref / ours:8.1f}x")

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    signer = DkimSigner("bench", "ledger.example.org", pem)
    signed = MessageTemplate.build(identity=IDENTITY, subject="The Ledger — 3 June 2024",
                                   html=html_doc, text=text_doc, dkim=signer)
    message = plain.render(**recipient(0))  # type: ignore[arg-type]
    sign_us = per_call(lambda i: signer.sign(message), args.n // 4)
    dkimpy_us = per_call(lambda i: dkim.sign(message, b"bench", b"ledger.example.org", pem,
                                             canonicalize=(b"relaxed", b"relaxed")), 10)
    both = per_call(lambda i: signed.render(**recipient(i)), args.n // 4)  # type: ignore[arg-type]
    print(f"DKIM sign (rsa-2048, OpenSSL): {sign_us:8.1f} µs per message")
    print(f"DKIM sign (dkimpy, reference): {dkimpy_us:8.1f} µs per message "
          f"({dkimpy_us / sign_us:.0f}x slower)")
    print(f"DKIM inside render (body known canonical): {both - ours:8.1f} µs per message")
    print(f"render + DKIM per recipient:   {both:8.1f} µs "
          f"(≈ {1e6 / both:,.0f} messages/s on one core)")

    sink = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"
    if not shutil.which(sink):
        print("smtp-sink not found: SMTP throughput skipped (apt install postfix)")
        return
    port = free_port()
    # Postfix's smtp-sink answers 250 to everything as fast as it can: the client is measured.
    proc = subprocess.Popen([sink, "-u", "nobody", f"127.0.0.1:{port}", "256"])
    try:
        time.sleep(0.3)
        rate = asyncio.run(throughput(signed, port, args.smtp_messages, args.connections))
        print(f"render + DKIM + SMTP to smtp-sink, 1 process x {args.connections} connections: "
              f"{rate:,.0f} messages/s")
        with ProcessPoolExecutor(2) as workers:
            rates = list(workers.map(_process_rate, [port] * 2, [args.smtp_messages] * 2,
                                     [args.connections] * 2, [pem] * 2))
        print(f"render + DKIM + SMTP to smtp-sink, 2 processes x {args.connections} "
              f"connections: {sum(rates):,.0f} messages/s (smtp-sink shares the 2 cores)")
    finally:
        proc.terminate()
        proc.wait()


if __name__ == "__main__":
    main()
