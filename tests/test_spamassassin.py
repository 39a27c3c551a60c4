"""SpamAssassin's local rules score a real issue, as delivery renders it for one reader.

Needs Debian's `spamassassin` (local development only; skipped elsewhere). `-L` keeps it
offline: no DNS blocklists, no URIBL, no DKIM key lookups, so the score covers what the
message itself says — headers, HTML, text — which is what the templates control.
See docs/spamassassin.md for the rules and what each means.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from newsletter import pipeline
from newsletter.config import Settings
from newsletter.models import Claimed
from newsletter.pipeline import sending

SPAMASSASSIN = shutil.which("spamassassin")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "articles"
MAX_SCORE = 1.0

pytestmark = pytest.mark.skipif(
    SPAMASSASSIN is None,
    reason="spamassassin is not installed (apt-get install spamassassin); local check only")

_SUMMARY_RE = re.compile(r"Content analysis details:\s+\((-?\d+(?:\.\d+)?) points?,")
_RULE_RE = re.compile(r"^\s*(-?\d+\.\d+)\s+([A-Z0-9_]+)\s+(.*)$")


def issue_message(make_settings: Callable[..., Settings], tmp_path: Path, *,
                  dkim: bool) -> bytes:
    """The example articles collected into a fresh store, the issue built from them, and the
    bytes run_worker would send to one reader (same plan, variant, links, headers, DKIM)."""
    (tmp_path / "articles").mkdir(exist_ok=True)
    for article in EXAMPLES.glob("*.md"):
        shutil.copy(article, tmp_path / "articles" / article.name)
    extra = """
[newsletter]
lookback_days = 36500
[mail]
transport = "smtp"
from_address = "news@ledger.example.org"
reply_to = "editor@ledger.example.org"
"""
    if dkim:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = tmp_path / "dkim.pem"
        pem.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
        extra += f'dkim_key_path = "{pem}"\ndkim_selector = "mail"\n'
    settings = make_settings(extra)
    store = pipeline.open_store(settings)
    try:
        report = pipeline.collect(settings, store)
        assert report.ok and report.new >= 5, report
        # Built as of just after the newest example, so the test does not age.
        newest = max(a.published for a in store.latest_articles(100))
        now = newest + timedelta(hours=1)
        issue = pipeline.build_issue(settings, store, now=now).issue
        assert issue is not None and len(issue.articles) >= 5
        plan = sending.make_plan(settings, store, issue, now=now)
        row = Claimed(1, 1, "ana.silva@example.com", "Ana Silva", (), 0, None)
        stamp = plan.variant_for(row.sections)
        assert stamp is not None
        unsubscribe, preferences = plan.urls_for(row)
        return stamp.render(to_address=row.email, to_name=row.name,
                            message_id=plan.message_id_for(row), unsubscribe_url=unsubscribe,
                            preferences_url=preferences, date=now)
    finally:
        store.close()


def spamassassin(message: bytes, home: Path) -> tuple[float, list[tuple[float, str, str]]]:
    """(score, [(points, rule, description)]) from `spamassassin -L -t`."""
    assert SPAMASSASSIN is not None
    home.mkdir(exist_ok=True)
    # HOME apart: no one's Bayes database, auto-whitelist or user_prefs sways the score.
    out = subprocess.run([SPAMASSASSIN, "-L", "-t"], input=message, capture_output=True,
                         timeout=60, env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                         check=True).stdout.decode("utf-8", "replace")
    found = _SUMMARY_RE.search(out)
    assert found, out[-2000:]
    rules: list[tuple[float, str, str]] = []
    for line in out[found.end():].splitlines():
        if m := _RULE_RE.match(line):
            rules.append((float(m[1]), m[2], m[3].strip()))
        elif rules and line.startswith(" " * 10) and line.strip():  # a wrapped description
            points, name, text = rules[-1]
            rules[-1] = (points, name, f"{text} {line.strip()}")
    return float(found[1]), rules


@pytest.mark.parametrize("dkim", [False, True], ids=["plain", "dkim"])
def test_issue_scores_low(make_settings: Callable[..., Settings], tmp_path: Path,
                          dkim: bool) -> None:
    message = issue_message(make_settings, tmp_path, dkim=dkim)
    assert message.startswith(b"DKIM-Signature:") == dkim
    score, rules = spamassassin(message, tmp_path / "home")
    hits = ", ".join(f"{name} {points:+.1f}" for points, name, _ in rules)
    assert score <= MAX_SCORE, f"SpamAssassin score {score} > {MAX_SCORE}: {hits}"
    # Nothing about the message itself should look like bulk spam: no rule outside the
    # informational ones may cost more than the whole budget.
    assert all(points <= MAX_SCORE for points, _, _ in rules), hits
    # Hidden text in the background colour (the preheader once was): see docs/spamassassin.md.
    assert "HTML_FONT_LOW_CONTRAST" not in {name for _, name, _ in rules}, hits
