"""The web application with every route, wired to the store, settings and scheduler."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from newsletter.config import Settings
from newsletter.store.database import Store

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.routing import BaseRoute

    from newsletter.models import Issue


def web_app(settings: Settings, store: Store, *, scheduler: Any = None) -> Starlette:
    from newsletter.audience.tokens import load_or_create_secret
    from newsletter.pipeline.issue_links import IssueLinks
    from newsletter.pipeline.issues import archive_url, masthead, renderer
    from newsletter.pipeline.notices import confirmation_sender, preferences_link_sender
    from newsletter.pipeline.outages import database_check, unreachable
    from newsletter.pipeline.schedule import next_issue_line
    from newsletter.pipeline.welcome import welcome_sender
    from newsletter.web import create_app
    from newsletter.web.archive import archive_routes
    from newsletter.web.health import OutageResponses
    from newsletter.web.manage import manage_routes
    from newsletter.web.subscribe import SubscribeDeps, subscribe_routes

    secret = load_or_create_secret(settings)
    folder = settings.newsletter.templates_dir
    confirm_mail = confirmation_sender(settings)
    routes: list[BaseRoute] = [*archive_routes(
        list_issues=lambda: store.list_issues(limit=50, statuses=("sending", "sent"),
                                              with_articles=True),
        get_issue=store.get_issue, renderer=renderer(settings), masthead=masthead(settings),
        archive_base_url=archive_url(settings), cache_max_age=settings.feeds.cache_max_age,
        preview=IssueLinks.from_settings(settings, store).preview_issue)]
    routes += subscribe_routes(deps=SubscribeDeps.from_settings(
        settings, store=store, secret=secret, send_confirmation=confirm_mail,
        send_preferences_link=preferences_link_sender(settings),
        send_welcome=welcome_sender(settings, store, secret)), more=[manage_routes])
    routes += _admin_routes(settings, store, scheduler, secret)
    routes += _webhook_routes(settings, store)
    app = create_app(feeds_dir=settings.feeds_dir, site_dir=settings.site_dir,
                     publication_name=settings.publication.name,
                     feeds_url=settings.feeds_url, cache_max_age=settings.feeds.cache_max_age,
                     extra_routes=routes, next_issue=lambda: next_issue_line(settings, store),
                     templates_dir=Path(folder) if folder else None,
                     allowed_hosts=allowed_hosts(settings), health=database_check(store))
    app.add_middleware(OutageResponses, when=unreachable)  # 503, not a 500 and a traceback
    return app


def allowed_hosts(settings: Settings) -> list[str]:
    """The Host names the app answers: base_url's, feeds.public_url's, [server] allowed_hosts."""
    named = [urlsplit(url).hostname or "" for url in (settings.site_url, settings.feeds.public_url)]
    hosts: list[str] = []
    for host in [*named, *settings.server.allowed_hosts]:
        host = host.lower().removeprefix("[").removesuffix("]")
        # Starlette compares an IPv6 Host with its brackets: "[::1]:8000" is "[::1]".
        host = f"[{host}]" if ":" in host else host
        if host and host not in hosts:
            hosts.append(host)
    return hosts


def _admin_routes(settings: Settings, store: Store, scheduler: Any,
                  secret: bytes) -> list[BaseRoute]:
    import newsletter.pipeline.control as control
    import newsletter.pipeline.notices as notices
    import newsletter.pipeline.review as review
    import newsletter.pipeline.sending as sending
    from newsletter.audience.subscribers_csv import import_csv
    from newsletter.compose.render import personalize
    from newsletter.errors import NewsletterError
    from newsletter.pipeline.building import build_issue
    from newsletter.pipeline.editing import edit_issue, issue_history
    from newsletter.pipeline.issue_links import IssueLinks
    from newsletter.pipeline.publishing import collect_and_publish, refresh_site
    from newsletter.pipeline.schedule import next_issue_line, next_runs
    from newsletter.web.admin import admin_routes
    from newsletter.web.admin_api import admin_api_routes
    from newsletter.web.admin_http import AdminDeps
    from newsletter.web.metrics import metrics_routes
    from newsletter.web.requests import ClientAddress

    def collect_now() -> dict[str, Any]:
        report = collect_and_publish(settings, store)
        return {"new": report.new, "updated": report.updated, "unchanged": report.unchanged,
                "errors": report.errors, "warnings": report.warnings}

    def preview_html(number: int) -> str:
        issue = store.get_issue(number, with_articles=False)
        if issue is None:
            raise NewsletterError(f"issue {number}: no such issue")
        site = settings.site_url  # the same sample values as `newsletter issue preview`
        return personalize(issue.html, unsubscribe_url=site + "unsubscribe?preview",
                           preferences_url=site + "preferences?preview", name="Reader")

    def send_issue(number: int, actor: str, new_subscribers: bool = False,
                   version: str | None = None) -> int:
        """Fill the ledger now (the dashboard shows the total at once); deliver elsewhere.
        The rows added: whom it goes to. With `version`, only if the issue is still that."""
        issue = sending.get_sendable(store, number)
        added = sending.start_sending(settings, store, issue, actor=actor,
                                      new_subscribers=new_subscribers, version=version)
        if scheduler is not None and scheduler.scheduler is not None:
            scheduler.send_now(number)
        else:  # `newsletter serve`, or a standby process: this process delivers it
            threading.Thread(target=sending.run_worker, name=f"send-{number}", daemon=True,
                             args=(settings, store, sending.get_sendable(store, number))).start()
        return added

    def republishing(change: Callable[..., Issue]) -> Callable[..., Issue]:
        """The change, then the site: the home page says when the next issue goes out."""
        def run(*args: Any) -> Issue:
            issue = change(*args)
            if issue.status != "sending":  # start_sending has republished it
                refresh_site(settings, store)
            return issue
        return run

    deps = AdminDeps(
        token=settings.secrets.admin_token, store=store, collect_now=collect_now,
        build_issue=lambda force, actor="api": build_issue(settings, store, force=force,
                                                           actor=actor),
        edit_issue=lambda n, changes, actor: edit_issue(settings, store, n, changes, actor),
        issue_history=lambda n: issue_history(store, n),
        send_issue=send_issue,
        schedule_issue=republishing(lambda n, at, actor: control.schedule_issue(
            store, n, at, actor=actor)),
        pause_issue=republishing(lambda n, actor: control.pause_issue(store, n, actor=actor)),
        resume_issue=republishing(lambda n, actor: control.resume_issue(store, n,
                                                                        actor=actor)),
        cancel_issue=republishing(lambda n, actor: control.cancel_issue(store, n,
                                                                        actor=actor)),
        approve_issue=republishing(lambda n, actor: review.approve_and_send(store, n, actor,
                                                                            send_issue)),
        newcomers=lambda n: sending.newcomers(settings, store, n),
        review_issue=(lambda n, actor: review.review_by_hand(settings, store, n, actor=actor))
        if settings.newsletter.review else None,
        send_tests=lambda n, to, actor: review.send_test_copies(settings, store, n, to,
                                                                actor=actor),
        editor_of=IssueLinks.from_settings(settings, store).editor_of,
        review=settings.newsletter.review,
        untitled_section=settings.newsletter.untitled_section,
        overview=lambda: control.overview(store, limit=10),
        jobs=lambda: next_runs(settings, store) if scheduler is None or
        scheduler.scheduler is None else [(j.id, j.next_run_time)
                                          for j in scheduler.scheduler.get_jobs()],
        preview_html=preview_html,
        next_issue=lambda cron_next: next_issue_line(settings, store, cron_next=cron_next),
        import_subscribers=lambda p, actor="": import_csv(
            store, p, now=datetime.now(UTC), smtputf8=settings.mail.smtputf8, actor=actor),
        sessions=store.sessions,  # in the database: logout holds in every process
        send_confirmation=notices.subscriber_confirmation(settings, secret),
        publication_name=settings.publication.name,
        smtputf8=settings.mail.smtputf8, timezone=settings.schedule.timezone,
        rate_lines=(settings.bounces.complaint_rate_warning,
                    settings.bounces.hard_bounce_rate_warning),
        templates_dir=Path(folder) if (folder := settings.newsletter.templates_dir) else None,
        client_ip=ClientAddress.from_setting(settings.server.forwarded_allow_ips))
    return [*admin_api_routes(deps), *admin_routes(deps), *metrics_routes(deps)]


def _webhook_routes(settings: Settings, store: Store) -> list[BaseRoute]:
    """POST /webhooks/<provider>: each on only when its [bounces] keys are set."""
    import newsletter.pipeline.sns_fetch as sns_fetch
    from newsletter.pipeline.bounces import Ingestor
    from newsletter.web.requests import ClientAddress
    from newsletter.web.webhooks import WebhookDeps, webhook_routes

    b = settings.bounces

    def ingest(source: str, events: list[Any]) -> dict[str, int]:
        return Ingestor(settings, store).provider_events(source, events)

    return webhook_routes(WebhookDeps(
        ingest=ingest, confirm_sns_subscription=sns_fetch.confirm_subscription,
        fetch_cert=sns_fetch.fetch_cert, ses_topic_arns=tuple(b.ses_topic_arns),
        mailgun_signing_key=b.mailgun_signing_key, postmark_username=b.postmark_username,
        postmark_password=b.postmark_password, sendgrid_public_key=b.sendgrid_public_key,
        max_age_seconds=b.webhook_max_age_seconds,
        client_ip=ClientAddress.from_setting(settings.server.forwarded_allow_ips)))
