"""TOML settings: read a file, apply environment overrides, validate; one line per mistake."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, get_origin
from urllib.parse import urlsplit

from newsletter import crontab, named_fields
from newsletter.config_env import blame_environment, check_env_names
from newsletter.config_table import (
    DEFAULT_CONFIG,
    SOURCE_TYPES,
    TRANSPORT_KINDS,
    Bounces,
    Collect,
    Delivery,
    Feeds,
    Mail,
    Newsletter,
    Publication,
    Schedule,
    Secrets,
    Server,
    Settings,
    Site,
    Smtp,
    Source,
    Storage,
    Subscriptions,
    opt,
    section_types,
    settings_table,
    type_hints_of,
)
from newsletter.errors import ConfigError

__all__ = ["DEFAULT_CONFIG", "MIN_ADMIN_TOKEN_CHARS", "SOURCE_TYPES", "TRANSPORT_KINDS",
           "Bounces", "Collect", "Delivery", "Feeds", "Mail",
           "Newsletter", "Publication", "Schedule", "Secrets", "Server", "Settings", "Site", "Smtp",
           "Source", "Storage", "Subscriptions", "effective_settings", "load_settings", "opt",
           "settings_table"]

MIN_ADMIN_TOKEN_CHARS = 16  # shorter is guessable despite the failure limit


_TYPE_NAMES: dict[Any, str] = {str: "a string", int: "an integer", float: "a number",
                               bool: "true or false"}
_CONTROL_RE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # tab and newline allowed
# str.splitlines' line boundaries (LF, CR, VT, FF, FS, GS, RS, NEL, LS, PS): a header (From's
# display name, List-Id, Reply-To), a URL or a path holds one line, so only settings marked
# multiline may hold them.
_LINE_BREAK_RE = re.compile("[\n\r\x0b\x0c\x1c-\x1e\x85\u2028\u2029]")
_BOOLS = {"1": True, "true": True, "yes": True, "on": True,
          "0": False, "false": False, "no": False, "off": False}
_URL_PASSWORD_RE = re.compile(r"(://[^/?#@:\s]*:)[^/?#@\s]*@")


def _check_text(where: str, value: str, meta: Mapping[str, Any], got: str) -> None:
    # Hardening: a bare LF passed (only CR was refused) and went into From and List-Id.
    if not meta["multiline"] and _LINE_BREAK_RE.search(value):
        raise ConfigError(f"{where}: expected one line of text (no line breaks), got {got}")
    if _CONTROL_RE.search(value):  # a "\u0001" escape broke every feed
        raise ConfigError(f"{where}: expected text without control characters, got {got}")
    if meta["fields"]:  # a template: refused here, not with a traceback at build time
        try:
            named_fields.check(value, meta["fields"])
        except named_fields.TemplateError as exc:
            raise ConfigError(f"{where}: {exc}") from None


def _coerce(where: str, kind: Any, f: dataclasses.Field[Any], value: Any) -> Any:
    if get_origin(kind) is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {value!r}")
        for item in value:  # each item is one value: a host, a network, a section name
            _check_text(where, item, f.metadata, repr(item))
        return list(value)
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    meta = f.metadata
    got = "a value not shown (secret)" if meta["secret"] else repr(value)  # never echo one
    # Hardening: TOML (and float()) accept nan and inf, which slipped past every bound.
    if not ok or (kind is float and not math.isfinite(value)):
        raise ConfigError(f"{where}: expected {_TYPE_NAMES[kind]}, got {got}")
    if kind is str:
        _check_text(where, value, meta, got)
    if meta["choices"] and value not in meta["choices"]:
        raise ConfigError(f"{where}: expected one of {', '.join(meta['choices'])}, got {got}")
    if meta["min"] is not None and value < meta["min"]:
        raise ConfigError(f"{where}: expected at least {meta['min']}, got {got}")
    if meta["max"] is not None and value > meta["max"]:
        raise ConfigError(f"{where}: expected at most {meta['max']}, got {got}")
    return value


def _build(where: str, cls: type, data: Any) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in data:
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown key (expected one of {', '.join(fields)})")
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _coerce(f"{where}.{name}", type_hints_of(cls)[name], f, data[name])
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}.{name}: missing required key ({f.metadata['help']})")
    return cls(**values)


def _env_names() -> list[str]:
    return [f"NEWSLETTER_{section}_{f.name}".upper() for section, cls in section_types().items()
            if section != "sources" for f in dataclasses.fields(cls)]


def _env_overrides(data: dict[str, Any], environ: dict[str, str]) -> list[tuple[str, str]]:
    """NEWSLETTER_<SECTION>_<KEY> overrides any scalar key; NEWSLETTER_SMTP_PASSWORD et al.
    The (section, key) pairs overridden."""
    check_env_names(environ, _env_names())
    overridden = []
    for section, cls in section_types().items():
        if section == "sources":
            continue
        for f in dataclasses.fields(cls):
            raw = environ.get(f"NEWSLETTER_{section}_{f.name}".upper())
            if raw is None:
                continue
            kind = type_hints_of(cls)[f.name]
            where = "environment " + f"NEWSLETTER_{section}_{f.name}".upper()
            try:
                if get_origin(kind) is list:
                    value: Any = [v.strip() for v in raw.split(",") if v.strip()]
                elif kind is bool:  # a typo ("ture") used to mean false, silently
                    value = _BOOLS[raw.strip().lower()]
                else:
                    value = kind(raw)
            except (ValueError, KeyError):
                got = "a value not shown (secret)" if f.metadata["secret"] else repr(raw)
                raise ConfigError(f"{where}: expected {_TYPE_NAMES[kind]}, got {got}") from None
            data.setdefault(section, {})[f.name] = value
            overridden.append((section, f.name))
    return overridden


def _check(settings: Settings, where: str, environ: dict[str, str]) -> None:
    from newsletter.store import urls as dburl

    token = settings.secrets.admin_token
    if token and len(token) < MIN_ADMIN_TOKEN_CHARS:  # the dashboard would stay off
        origin = ("environment NEWSLETTER_SECRETS_ADMIN_TOKEN"
                  if "NEWSLETTER_SECRETS_ADMIN_TOKEN" in environ
                  else f"{where}: secrets.admin_token")
        raise ConfigError(f"{origin}: expected at least {MIN_ADMIN_TOKEN_CHARS} characters, "
                          f"got {len(token)} (leave it empty to turn the admin dashboard off)")
    try:
        dburl.parse(settings.storage.database_url,
                    "environment NEWSLETTER_STORAGE_DATABASE_URL"
                    if "NEWSLETTER_STORAGE_DATABASE_URL" in environ
                    else f"{where}: storage.database_url")
    except dburl.DatabaseError as exc:
        raise ConfigError(str(exc)) from None
    retention, window = (settings.storage.ledger_retention_days,
                         settings.bounces.unsigned_window_days)
    if 0 < retention < window:  # an unsigned bounce is matched against the ledger's rows
        raise ConfigError(f"{where}: storage.ledger_retention_days: expected 0 (keep for "
                          f"ever) or at least bounces.unsigned_window_days ({window}), got "
                          f"{retention}")
    urls = [("publication.base_url", settings.publication.base_url)]
    if settings.feeds.public_url:
        urls.append(("feeds.public_url", settings.feeds.public_url))
    _check_schedule(settings.schedule, where)
    _check_bounces(settings.bounces, where)
    _check_review(settings.newsletter, where)
    for ip in settings.server.forwarded_allow_ips:
        try:
            if ip != "*":
                ipaddress.ip_network(ip, strict=False)
        except ValueError:
            raise ConfigError(f"{where}: server.forwarded_allow_ips: expected IP addresses or "
                              f"networks (or '*'), got {ip!r}") from None
    for host in settings.server.allowed_hosts:  # a URL or a port here would match no request
        if not _HOST_RE.fullmatch(host) and not _is_ip(host.removeprefix("[").removesuffix("]")):
            raise ConfigError(f"{where}: server.allowed_hosts: expected host names such as "
                              f"news.example.org, *.example.org or 127.0.0.1 (no scheme, port "
                              f"or path), got {host!r}")
    for i, src in enumerate(settings.sources):
        need = "path" if src.type == "folder" else "url"
        if not getattr(src, need):
            raise ConfigError(f"{where}: sources[{i}].{need}: missing required key for a "
                              f"{src.type} source")
        if src.type == "feed":  # hardening: a file:// or ftp:// feed is caught here
            urls.append((f"sources[{i}].url", src.url))
    for name, url in urls:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{where}: {name}: expected an absolute http(s) URL, got {url!r}")


_LOCAL_RE = re.compile(r"[A-Za-z0-9!#$%&'*/=?^_`{|}~.-]{1,40}")
_DOMAIN_RE = re.compile(r"(?=.{1,200}$)([A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
                        r"[A-Za-z]{2,63}\.?")
_LOOPBACK = ("localhost", "127.0.0.1", "::1", "[::1]")
_HOST_RE = re.compile(r"\*|(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _check_bounces(bounces: Bounces, where: str) -> None:
    if bounces.return_path:
        local, at, domain = bounces.return_path.rpartition("@")
        # The token goes after a '+': the local part needs room for it and no '+' of its own.
        if not at or "+" in local or not _LOCAL_RE.fullmatch(local) \
                or not _DOMAIN_RE.fullmatch(domain):
            raise ConfigError(f"{where}: bounces.return_path: expected an address like "
                              f"bounces@news.example.org (no '+', local part at most 40 "
                              f"characters), got {bounces.return_path!r}")
    if bounces.imap_url:
        parts = urlsplit(bounces.imap_url)
        host = parts.hostname or ""
        if parts.scheme not in ("imaps", "imap") or not host or not parts.username:
            shown = _URL_PASSWORD_RE.sub(r"\1********@", bounces.imap_url)
            raise ConfigError(f"{where}: bounces.imap_url: expected imaps://user@host[:port]"
                              f"[/folder], got {shown!r}")
        if parts.password is not None:
            raise ConfigError(f"{where}: bounces.imap_url: put the password in "
                              f"NEWSLETTER_BOUNCES_IMAP_PASSWORD, not in the URL")
        if parts.scheme == "imap" and host not in _LOOPBACK:
            raise ConfigError(f"{where}: bounces.imap_url: imap:// sends the password in the "
                              f"clear; use imaps:// (imap:// is allowed for localhost only)")
        try:
            parts.port  # noqa: B018 - raises on a port that is not a number
        except ValueError:
            raise ConfigError(f"{where}: bounces.imap_url: bad port in "
                              f"{bounces.imap_url!r}") from None
    for arn in bounces.ses_topic_arns:
        if not re.fullmatch(r"arn:aws(-[a-z]+)*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_-]{1,256}", arn):
            raise ConfigError(f"{where}: bounces.ses_topic_arns: expected SNS topic ARNs like "
                              f"arn:aws:sns:eu-west-1:123456789012:ses-bounces, got {arn!r}")
    if bounces.sendgrid_public_key:
        from newsletter.audience.keys import sendgrid_key

        try:  # a bad key would otherwise show only as every webhook request refused
            sendgrid_key(bounces.sendgrid_public_key)
        except ValueError as exc:
            raise ConfigError(f"{where}: bounces.sendgrid_public_key: {exc} (paste the "
                              f"verification key SendGrid shows for the signed event "
                              f"webhook)") from None
    if bool(bounces.postmark_username) != bool(bounces.postmark_password):
        raise ConfigError(f"{where}: bounces.postmark_username and postmark_password: set both "
                          f"(the webhook URL's basic auth) or neither")


def _check_review(newsletter: Newsletter, where: str) -> None:
    """Editors and seed addresses are mailed as they stand: each must be a plain address."""
    from newsletter.deliver.headers import HeaderError, check_address

    for key in ("editors", "seed_list"):
        for address in getattr(newsletter, key):
            try:
                check_address(address)
            except HeaderError:
                raise ConfigError(f"{where}: newsletter.{key}: expected email addresses such "
                                  f"as editor@example.org (no name, no <>), got "
                                  f"{address!r}") from None
    if newsletter.review and not newsletter.editors:
        raise ConfigError(f"{where}: newsletter.review: review = true needs newsletter.editors "
                          f"(the addresses that approve each issue)")


def _check_schedule(schedule: Schedule, where: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from apscheduler.triggers.cron import CronTrigger

    try:
        zone = ZoneInfo(schedule.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}: schedule.timezone: expected an IANA time zone such as "
                          f"Europe/Oslo, got {schedule.timezone!r}") from None
    if schedule.issue_cron:
        try:
            trigger = CronTrigger.from_crontab(crontab.standard(schedule.issue_cron), timezone=zone)
            # Hardening: "0 0 31 2 *" parses but never fires; no issue would ever go out.
            if trigger.get_next_fire_time(None, datetime.now(zone)) is None:
                raise ValueError("it never matches a date")
        except ValueError as exc:
            raise ConfigError(f"{where}: schedule.issue_cron: expected a crontab line (minute "
                              f"hour day month weekday), got {schedule.issue_cron!r}: "
                              f"{exc}") from None


def load_settings(path: str | Path | None = None,
                  environ: dict[str, str] | None = None) -> Settings:
    """Read, override from the environment, and validate; raise ConfigError with one line."""
    environ = dict(os.environ if environ is None else environ)
    path = Path(path or environ.get("NEWSLETTER_CONFIG") or DEFAULT_CONFIG)
    where = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8-sig"))  # BOM: Windows editors
    except FileNotFoundError:
        raise ConfigError(f"{where}: configuration file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{where}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where}: invalid TOML: {exc}") from None
    overridden = _env_overrides(data, environ)
    try:
        return _settings(path, data, environ)
    except ConfigError as exc:  # a value from the environment is named as its variable
        raise blame_environment(exc, where, overridden) from None


def _settings(path: Path, data: dict[str, Any], environ: dict[str, str]) -> Settings:
    where = str(path)
    sections = section_types()
    for key in data:
        if key not in sections:
            raise ConfigError(f"{where}: [{key}]: unknown section "
                              f"(expected one of {', '.join(sections)})")
    if "publication" not in data:
        raise ConfigError(f"{where}: [publication]: missing required section")
    values: dict[str, Any] = {}
    for name, cls in sections.items():
        if name == "sources":
            raw = data.get("sources", [])
            if not isinstance(raw, list):
                raise ConfigError(f"{where}: sources: expected [[sources]] tables")
            values[name] = [_build(f"{where}: sources[{i}]", cls, item)
                            for i, item in enumerate(raw)]
        elif name in data:
            values[name] = _build(f"{where}: {name}", cls, data[name])
    settings = Settings(path=path, **values)
    _check(settings, where, environ)
    return settings


def effective_settings(settings: Settings) -> dict[str, Any]:
    """The settings as plain data with every secret masked, for `config check`."""
    out: dict[str, Any] = {}
    for section in section_types():
        value = getattr(settings, section)
        items = value if isinstance(value, list) else [value]
        rendered = []
        for item in items:
            row = {}
            for f in dataclasses.fields(item):
                v = getattr(item, f.name)
                if f.metadata["secret"]:
                    v = "********" if v else "(unset)"
                elif isinstance(v, str):  # e.g. a PostgreSQL password in storage.database_url
                    v = _URL_PASSWORD_RE.sub(r"\1********@", v)
                row[f.name] = v
            rendered.append(row)
        out[section] = rendered if isinstance(value, list) else rendered[0]
    return out
