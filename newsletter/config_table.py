"""The settings table: every section and key with its type, default, bounds and help."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

DEFAULT_CONFIG = "config/newsletter.toml"
# The keys of pipeline's registries (collecting.SOURCES, transports.TRANSPORTS), checked
# before anything is wired; tests/test_registries.py keeps the two equal.
SOURCE_TYPES = ("folder", "feed")
TRANSPORT_KINDS = ("outbox", "smtp")


def opt(help: str, default: Any = dataclasses.MISSING, *, secret: bool = False,
        choices: tuple[str, ...] = (), minimum: float | None = None,
        maximum: float | None = None, multiline: bool = False,
        fields: dict[str, type] | None = None) -> Any:
    """A setting: its help text lives beside its default, so docs can be checked against it.

    Text is one line unless `multiline` (most of it ends up in a header, a URL or a path);
    `fields` makes it a template of those {names}, of those types (named_fields.check).
    """
    meta = {"help": help, "secret": secret, "choices": choices, "min": minimum, "max": maximum,
            "multiline": multiline, "fields": fields or {}}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Publication:
    name: str = opt("Publication name, shown in feeds and emails (required).")
    base_url: str = opt("Absolute https URL of the site; every published link is built on it "
                        "(required).")
    language: str = opt("Language tag for feeds and emails.", "en")
    description: str = opt("One-line description used in feeds.", "")
    article_path: str = opt("Path of an article on the site, relative to base_url; {slug} is "
                            "replaced.", "articles/{slug}/", fields={"slug": str})
    postal_address: str = opt("Postal address printed in every email footer.", "",
                              multiline=True)


@dataclass(frozen=True)
class Storage:
    database_url: str = opt("SQLAlchemy URL: sqlite:///path (embedded) or "
                            "postgresql+psycopg://… (scale-out).", "sqlite:///var/newsletter.db")
    ledger_retention_days: int = opt(
        "Days a finished (sent or cancelled) issue keeps its per-recipient delivery rows; a "
        "daily job (and `newsletter db prune`) then removes them, in short batches, keeping "
        "the issue, its text and its delivery counts, and each subscriber's latest row. "
        "0 keeps them for ever; otherwise at least bounces.unsigned_window_days.", 180,
        minimum=0)


@dataclass(frozen=True)
class Source:
    type: str = opt("'folder' (Markdown articles and digest exports) or 'feed' (RSS/Atom URL).",
                    choices=SOURCE_TYPES)
    path: str = opt("Folder of articles (type = 'folder').", "")
    url: str = opt("Upstream feed URL (type = 'feed').", "")
    name: str = opt("Label used in logs and status; defaults to the path or URL.", "")
    section: str = opt("Section given to articles from this source that name none.", "")


@dataclass(frozen=True)
class Collect:
    allow_private_networks: bool = opt("Allow feed URLs (and redirects) that resolve to "
                                       "loopback, link-local or private addresses.", False)
    timeout: float = opt("Seconds to wait for each network operation.", 10.0, minimum=0.1)
    deadline: float = opt("Seconds one feed fetch may take in all.", 30.0, minimum=0.1)
    max_feed_bytes: int = opt("Largest feed body accepted, after decompression.",
                              10_000_000, minimum=1024)
    max_redirects: int = opt("Redirects followed per fetch.", 5, minimum=0, maximum=20)
    concurrency: int = opt("Feeds fetched at once.", 8, minimum=1, maximum=64)
    max_entries_per_feed: int = opt("Entries taken from one upstream feed.", 1000, minimum=1)
    max_file_bytes: int = opt("Largest article file accepted.", 5_000_000, minimum=1024)


@dataclass(frozen=True)
class Feeds:
    output_dir: str = opt("Folder the generated feeds are written to.", "feeds")
    max_entries: int = opt("Entries per feed, newest first.", 50, minimum=1, maximum=10_000)
    cache_max_age: int = opt("Cache-Control max-age, in seconds, for served feeds.", 300,
                             minimum=0)
    public_url: str = opt("Absolute URL the feeds folder is served at (self links); empty "
                          "means base_url + 'feeds/'.", "")


@dataclass(frozen=True)
class Site:
    output_dir: str = opt("Folder the public pages (home, articles, sections, sitemap.xml, "
                          "robots.txt) are written to.", "site")
    per_page: int = opt("Articles listed on one section page, newest first.", 20, minimum=1,
                        maximum=1000)
    home_per_section: int = opt("Latest articles of each section shown on the home page.", 5,
                                minimum=1, maximum=100)


@dataclass(frozen=True)
class Schedule:
    timezone: str = opt("IANA time zone the cron expression is read in, e.g. Europe/Oslo.",
                        "UTC")
    collect_minutes: int = opt("Collect every N minutes (and publish feeds when something is "
                               "new); 0 turns it off.", 15, minimum=0)
    issue_cron: str = opt("When to build and send an issue, as a crontab line "
                          "(minute hour day month weekday), e.g. '0 9 * * fri'; weekdays "
                          "count as cron counts them (0 and 7 Sunday, 1 Monday); empty turns "
                          "it off.", "")
    late_limit_minutes: int = opt("An issue whose send time passed longer ago than this is not "
                                  "sent automatically; it waits for an operator.", 360,
                                  minimum=1)
    sweep_minutes: int = opt("Every N minutes, retry deferred deliveries and send scheduled "
                             "issues that are due.", 1, minimum=1)


@dataclass(frozen=True)
class Server:
    host: str = opt("Address `newsletter serve` and `newsletter run` listen on.", "127.0.0.1")
    port: int = opt("Port they listen on.", 8000, minimum=1, maximum=65535)
    forwarded_allow_ips: list[str] = opt(
        "Reverse proxies whose X-Forwarded-For/-Proto are believed (the visitor's address, "
        "https): addresses, networks such as 10.0.0.0/8, or '*'. Empty: uvicorn's default, "
        "FORWARDED_ALLOW_IPS from the environment or else 127.0.0.1 and ::1.", [])
    allowed_hosts: list[str] = opt(
        "Host names the web app answers besides the hosts of publication.base_url and "
        "feeds.public_url; a request naming any other gets 400. E.g. 'www.example.org', "
        "'*.example.org' (every subdomain), '*' (any name: no check). /healthz answers any "
        "name, for load balancers' probes. The default lets requests made on the machine "
        "itself (curl http://127.0.0.1:8000/) through.",
        ["localhost", "127.0.0.1", "::1"])


@dataclass(frozen=True)
class Secrets:
    # multiline: its bytes are the key, as they always were; refusing a trailing newline now
    # would change the key and end every link already mailed.
    secret_key: str = opt("Key that signs subscriber tokens (HMAC); set "
                          "NEWSLETTER_SECRETS_SECRET_KEY in production.", "", secret=True,
                          multiline=True)
    admin_token: str = opt("Bearer token for the admin API and dashboard.", "", secret=True)


@dataclass(frozen=True)
class Mail:
    transport: str = opt("'outbox' writes .eml files to outbox_dir (embedded default); 'smtp' "
                         "sends through [smtp].", "outbox", choices=TRANSPORT_KINDS)
    outbox_dir: str = opt("Folder for .eml files when transport = 'outbox'.", "var/outbox")
    from_address: str = opt("From address of every email.", "newsletter@example.org")
    from_name: str = opt("Display name in From; empty uses the publication name.", "")
    reply_to: str = opt("Reply-To address; empty sends none.", "")
    list_id: str = opt("List-Id value (a domain-like identifier); empty derives one from "
                       "from_address.", "")
    unsubscribe_mailto: str = opt("Address for mailto: List-Unsubscribe; empty uses "
                                  "from_address.", "")
    smtputf8: bool = opt("Whether the relay accepts internationalised (SMTPUTF8) addresses.",
                         False)
    dkim_key_path: str = opt("PEM private key for DKIM signing; empty disables DKIM.", "")
    dkim_selector: str = opt("DKIM selector (the DNS record is <selector>._domainkey.<domain>).",
                             "")
    dkim_domain: str = opt("DKIM signing domain; empty uses the From domain.", "")


@dataclass(frozen=True)
class Delivery:
    batch_size: int = opt("Ledger rows a worker claims at once.", 200, minimum=1,
                          maximum=10_000)
    lease_seconds: int = opt("How long a claim lasts before another worker may take the rows.",
                             300, minimum=10)
    retry_initial: int = opt("Seconds before the first retry of a 4xx or connection error.",
                             300, minimum=1)
    retry_max: int = opt("Longest wait between retries, in seconds (backoff doubles up to it).",
                         14_400, minimum=1)
    give_up_after: int = opt("Seconds after the first attempt when a deferred message fails "
                             "for good (default 4 days).", 345_600, minimum=60)
    max_hard_bounces: int = opt("Permanent failures after which a subscriber is marked "
                                "bounced.", 1, minimum=1)
    workers: int = opt("Sending processes `newsletter issue send` starts on this machine.", 1,
                       minimum=1, maximum=64)


@dataclass(frozen=True)
class Subscriptions:
    confirm_hours: int = opt("Hours a double opt-in confirmation link stays valid.", 72,
                             minimum=1)
    unsubscribe_days: int = opt("Days an unsubscribe or preferences link stays valid "
                                "(at least 30).", 400, minimum=30)
    confirm_resend_minutes: int = opt("At most one confirmation email per address in this "
                                      "window.", 60, minimum=1)
    rate_per_ip: int = opt("Subscribe requests accepted per IP address per hour.", 20,
                           minimum=1)
    welcome: bool = opt("Mail a welcome (email/welcome.txt) when a person confirms their "
                        "subscription, or confirms again after leaving: what they will get "
                        "and how often, their preferences link and the latest issue. Not "
                        "sent for operator adds or imports; false sends none.", True)


@dataclass(frozen=True)
class Bounces:
    return_path: str = opt("VERP return path, local@domain (e.g. bounces@news.example.org): "
                           "each message's envelope sender becomes local+TOKEN@domain, the "
                           "token naming the issue and subscriber, signed. Empty: the envelope "
                           "sender is [mail] from_address and only unsigned bounces are "
                           "matched.", "")
    unsigned_window_days: int = opt("A bounce without a valid VERP token counts only for an "
                                    "address sent to within this many days.", 7, minimum=1,
                                    maximum=90)
    soft_limit: int = opt("Temporary failures (4.x.x, delayed), each for a different issue, "
                          "after which a subscriber is marked bounced.", 3, minimum=1)
    soft_window_days: int = opt("Days within which soft_limit temporary failures suppress.",
                                30, minimum=1)
    imap_url: str = opt("Bounce mailbox polled by the scheduler: imaps://user@host[:port]"
                        "[/folder] (imap:// only for loopback tests); empty polls none.", "")
    imap_password: str = opt("Password for imap_url (or NEWSLETTER_BOUNCES_IMAP_PASSWORD).",
                             "", secret=True)
    imap_move_to: str = opt("Folder processed messages are moved to; empty marks them "
                            "\\Seen and leaves them, so read only unseen mail there.", "")
    imap_poll_minutes: int = opt("Poll the bounce mailbox every N minutes.", 5, minimum=1)
    imap_batch: int = opt("Messages read from the mailbox per poll at most.", 500, minimum=1,
                          maximum=100_000)
    max_message_bytes: int = opt("Larger bounce messages are logged and left unread.",
                                 10_000_000, minimum=10_000)
    ses_topic_arns: list[str] = opt("Amazon SNS topic ARNs whose SES notifications "
                                    "/webhooks/ses accepts; empty turns that endpoint off.", [])
    mailgun_signing_key: str = opt("Mailgun webhook signing key; empty turns /webhooks/mailgun "
                                   "off.", "", secret=True)
    postmark_username: str = opt("Basic-auth user name Postmark's webhook URL carries; empty "
                                 "turns /webhooks/postmark off.", "")
    postmark_password: str = opt("Basic-auth password of the Postmark webhook URL.", "",
                                 secret=True)
    sendgrid_public_key: str = opt("SendGrid signed event webhook verification key (base64, as "
                                   "SendGrid shows it); empty turns /webhooks/sendgrid off.", "",
                                   multiline=True)  # PEM is accepted too
    webhook_max_age_seconds: int = opt("Mailgun and SendGrid requests signed longer ago than "
                                       "this are refused as replays. Providers retry a failed "
                                       "delivery with its first signature, so a short window "
                                       "loses events during an outage; replays inside it are "
                                       "refused by event id.", 3600, minimum=60)
    complaint_rate_warning: float = opt("Warn when an issue's complaint rate reaches this "
                                        "fraction of messages sent (Gmail and Yahoo hold bulk "
                                        "senders under 0.003).", 0.001, minimum=0, maximum=1)
    hard_bounce_rate_warning: float = opt("Warn when an issue's hard-bounce rate reaches this "
                                          "fraction of messages sent.", 0.02, minimum=0,
                                          maximum=1)


@dataclass(frozen=True)
class Smtp:
    host: str = opt("SMTP server host.", "localhost")
    port: int = opt("SMTP server port.", 587, minimum=1, maximum=65535)
    security: str = opt("'starttls', 'tls' (implicit) or 'none' (loopback tests only).",
                        "starttls", choices=("starttls", "tls", "none"))
    username: str = opt("SMTP AUTH user name; empty disables AUTH.", "")
    password: str = opt("SMTP AUTH password (or NEWSLETTER_SMTP_PASSWORD).", "", secret=True)
    concurrency: int = opt("SMTP connections used at once.", 4, minimum=1, maximum=256)
    rate: float = opt("Messages per second at most; 0 means no limit.", 0.0, minimum=0)
    timeout: float = opt("Seconds to wait for each SMTP reply.", 60.0, minimum=0.1)
    pipelining: bool = opt("When the server offers PIPELINING (RFC 2920), send MAIL, RCPT "
                           "and DATA in one write, behind the previous message's data: one "
                           "round trip per message. false for a relay that mishandles it.",
                           True)
    fallback_hosts: list[str] = opt("Further relays as 'host:port', tried in order when the "
                                    "main one fails.", [])


@dataclass(frozen=True)
class Newsletter:
    templates_dir: str = opt("Folder of templates that override the built-in ones, file by "
                             "file; empty uses templates/.", "")
    lookback_days: int = opt("How old an article collected after the previous build may be "
                             "and still go into the next issue; how far back a forced build "
                             "looks.", 7, minimum=1)
    max_articles: int = opt("Most articles in one issue (newest kept). The first issue takes "
                            "the newest this many, however old.", 30, minimum=1, maximum=500)
    section_order: list[str] = opt("Sections in this order first; others follow "
                                   "alphabetically.", [])
    subject: str = opt("Subject template: {publication}, {number} and {date} (strftime "
                       "codes allowed, e.g. {date:%d %B %Y}).",
                       "{publication} No. {number} — {date:%d %B %Y}",
                       fields={"publication": str, "number": int, "date": datetime})
    preheader: str = opt("Preview text shown by mail clients and as the intro; empty counts "
                         "the articles and names the sections.", "")
    reason: str = opt("Footer line telling readers why they get the email; {publication} is "
                      "replaced.", "You are receiving this because you subscribed to "
                      "{publication}.", fields={"publication": str})
    direction: str = opt("Text direction of the email.", "ltr", choices=("ltr", "rtl"))
    untitled_section: str = opt("Heading for articles that have no section.", "More")
    review: bool = opt("Review mode: the scheduled issue is built as a draft and mailed to the "
                       "editors for approval instead of being sent; the scheduler never sends "
                       "an issue nobody approved (`newsletter issue approve N`).", False)
    editors: list[str] = opt("Addresses that get the review mail (a preview with a signed "
                             "link to the issue's editor page); required with review = true.",
                             [])
    review_reminder_hours: int = opt("Remind the editors once when a draft has waited this "
                                     "many hours unapproved; 0 sends no reminder.", 24,
                                     minimum=0)
    seed_list: list[str] = opt("Addresses that get one test copy each with `newsletter issue "
                               "send N --seed` (and the dashboard's Send test), subject "
                               "prefixed [TEST].", [])


@dataclass(frozen=True)
class Settings:
    publication: Publication
    storage: Storage = field(default_factory=Storage)
    sources: list[Source] = field(default_factory=list)
    collect: Collect = field(default_factory=Collect)
    feeds: Feeds = field(default_factory=Feeds)
    site: Site = field(default_factory=Site)
    newsletter: Newsletter = field(default_factory=Newsletter)
    mail: Mail = field(default_factory=Mail)
    smtp: Smtp = field(default_factory=Smtp)
    delivery: Delivery = field(default_factory=Delivery)
    bounces: Bounces = field(default_factory=Bounces)
    subscriptions: Subscriptions = field(default_factory=Subscriptions)
    schedule: Schedule = field(default_factory=Schedule)
    server: Server = field(default_factory=Server)
    secrets: Secrets = field(default_factory=Secrets)
    path: Path = field(default=Path(DEFAULT_CONFIG), compare=False)

    @property
    def feeds_dir(self) -> Path:
        return Path(self.feeds.output_dir)

    @property
    def site_dir(self) -> Path:
        return Path(self.site.output_dir)

    @property
    def site_url(self) -> str:
        return self.publication.base_url.rstrip("/") + "/"

    @property
    def feeds_url(self) -> str:
        return (self.feeds.public_url or self.site_url + "feeds/").rstrip("/") + "/"


@cache
def type_hints_of(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def section_types() -> dict[str, type]:
    hints = type_hints_of(Settings)
    return {name: (get_args(t)[0] if get_origin(t) is list else t)
            for name, t in hints.items() if name != "path"}


def settings_table() -> list[tuple[str, str, Any, str, bool]]:
    """(section, key, default, help, secret) for every setting, in declaration order."""
    rows = []
    for section, cls in section_types().items():
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING:
                default = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            rows.append((section, f.name, default, f.metadata["help"], f.metadata["secret"]))
    return rows
