"""Admin dashboard at /admin/: token login, signed session cookie, CSRF-checked action forms."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from newsletter import log, templating
from newsletter.audience import consent
from newsletter.errors import NewsletterError
from newsletter.models import example_send_time, now_utc
from newsletter.web.admin_add import add_subscriber
from newsletter.web.admin_http import (
    DISABLED,
    AdminDeps,
    HttpError,
    done_of,
    json_response,
    load_issue,
)
from newsletter.web.admin_issues import IssueActions, when
from newsletter.web.admin_people import people_routes
from newsletter.web.admin_sessions import CSRF_PURPOSE as CSRF_PURPOSE
from newsletter.web.admin_sessions import FLASH_COOKIE, SESSION_COOKIE, Sessions
from newsletter.web.admin_sessions import FLASH_PURPOSE as FLASH_PURPOSE
from newsletter.web.admin_sessions import SESSION_PURPOSE as SESSION_PURPOSE
from newsletter.web.issue_editor import editor_routes, link_access
from newsletter.web.limits import rate_key
from newsletter.web.requests import BodyTooLarge, read_capped
from newsletter.words import plural

ACTIONS = ("send", "schedule", "pause", "resume", "cancel", "approve", "test")
_BASE_HEADERS = {"cache-control": "no-store", "referrer-policy": "same-origin",
                 "x-content-type-options": "nosniff", "x-robots-tag": "noindex"}
# The issue preview is the newsletter's own HTML: shown sandboxed (no scripts, no forms, an
# opaque origin), framed only by the dashboard, loading nothing but images.
PREVIEW_HEADERS = {**_BASE_HEADERS, "x-frame-options": "SAMEORIGIN",
                   "content-security-policy": "sandbox; default-src 'none'; img-src https: "
                   "http: data:; style-src 'unsafe-inline'; frame-ancestors 'self'"}


def _page_headers(nonce: str) -> dict[str, str]:
    return {**_BASE_HEADERS, "x-frame-options": "DENY",
            "content-security-policy": (
                f"default-src 'none'; script-src 'nonce-{nonce}'; "
                f"style-src 'self' 'nonce-{nonce}'; "
                "connect-src 'self'; frame-src 'self'; img-src 'self' data:; "
                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")}


class _Dashboard:
    def __init__(self, deps: AdminDeps) -> None:
        self.deps = deps
        self.sessions = Sessions(deps)
        # Autoescape: subjects, names and errors come from articles, feeds and people.
        self.env = templating.environment(deps.templates_dir, autoescape=True)
        self.env.filters["when"] = when
        self.issues = IssueActions(deps)

    def page(self, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        nonce = secrets.token_urlsafe(16)
        html = self.env.get_template(f"admin/{template}").render(
            publication=self.deps.publication_name, nonce=nonce, **values)
        return HTMLResponse(html, status, headers=_page_headers(nonce))

    def cookie(self, response: Response, request: Request, name: str, value: str,
               max_age: int) -> None:
        response.set_cookie(name, value, max_age=max_age, path="/admin", httponly=True,
                            samesite="strict", secure=request.url.scheme == "https")

    def disabled(self) -> Response:
        return self.page("message.html", 403, title="Admin disabled", text=DISABLED)

    async def logged_in(self, request: Request) -> Response | None:
        """None when the request has a session; else the answer to give instead."""
        if not self.deps.enabled:
            return self.disabled()
        if await self.sessions.nonce(request) is None:
            return RedirectResponse("/admin/login", 303, headers=_BASE_HEADERS)
        return None

    # -- login ----------------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        if not self.deps.enabled:
            return self.disabled()
        if request.method != "POST":
            if await self.sessions.nonce(request):  # already logged in
                return RedirectResponse("/admin/", 303, headers=_BASE_HEADERS)
            return self.page("login.html")
        ip = self.deps.client_ip(request)
        wait = self.deps.failures.blocked(rate_key(ip))
        if wait:
            return self.page("login.html", 429, error="Too many wrong tokens from your "
                             f"address; try again in {plural(int(wait + 0.999), 'second')}.")
        try:
            fields = await self.form(request)
        except HttpError as exc:
            return self.page("login.html", exc.code, error=exc.text)
        if not self.deps.token_ok(fields.get("token", "").strip()):
            self.deps.failures.record(rate_key(ip))
            log.event("admin.login_refused", ip=ip)
            return self.page("login.html", 401, error="That is not the admin token.")
        log.event("admin.login", ip=ip)
        # A new session at every login, never the one the request came with (which, if it
        # was a session of this browser, ends now).
        session = await run_in_threadpool(
            self.sessions.create, ip, request.headers.get("user-agent", ""),
            self.sessions.secret_of(request.cookies.get(SESSION_COOKIE, "")))
        response = RedirectResponse("/admin/", 303, headers=_BASE_HEADERS)
        self.cookie(response, request, SESSION_COOKIE, session,
                    int(self.deps.session_hours * 3600))
        return response

    async def form(self, request: Request, limit: int = 0) -> dict[str, str]:
        try:
            body = await read_capped(request, limit or self.deps.max_body_bytes)
        except BodyTooLarge as exc:
            raise HttpError(413, str(exc)) from None
        try:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=50)
        except ValueError:
            raise HttpError(400, "The form could not be read.") from None
        return dict(pairs)

    # -- pages ----------------------------------------------------------------------------

    async def dashboard(self, request: Request) -> Response:
        if not self.deps.enabled:
            return self.disabled()
        nonce = await self.sessions.nonce(request)
        if nonce is None:
            return RedirectResponse("/admin/login", 303, headers=_BASE_HEADERS)
        # The versions first: an edit after them makes the approve a conflict, never an
        # approval of what this page did not show.
        versions = await run_in_threadpool(self.issues.versions)
        view, jobs, subscribers = await run_in_threadpool(
            lambda: (self.deps.overview(), self.deps.jobs(), self.deps.store.count_subscribers()))
        # The scheduler's own next run, when it has stored one, wins over the config's cron.
        stored = next((at for name, at in jobs or () if name == "issue" and at), None)
        next_issue = await run_in_threadpool(self.deps.next_issue, stored)
        newcomers = await run_in_threadpool(self.issues.newcomers, view)
        issues: list[dict[str, Any]] = [
            {"issue": i, "counts": c, "total": sum(c.values()), "done": done_of(c)}
            for i, c in view.issues]
        preview = next((row["issue"] for row in issues
                        if row["issue"].status not in ("sent", "cancelled")), None)
        recent = await run_in_threadpool(self.deps.store.list_bounces, limit=5)
        live_sessions = await run_in_threadpool(self.sessions.count)
        response = self.page(
            "dashboard.html", view=view, jobs=jobs or view.jobs, issues=issues,
            recent_bounces=recent, rate_lines=self.deps.rate_lines,
            subscribers=subscribers, next_issue=next_issue,
            example_at=example_send_time(self.deps.timezone, now_utc()),
            preview=preview or (issues[0]["issue"] if issues else None),
            flash=self.sessions.read_flash(request), live_sessions=live_sessions,
            review=self.deps.review, versions=versions, newcomers=newcomers,
            csrf=lambda purpose: self.sessions.csrf(nonce, purpose))
        response.delete_cookie(FLASH_COOKIE, path="/admin")
        return response

    async def progress(self, request: Request) -> Response:
        if not self.deps.enabled:
            return json_response({"error": DISABLED}, 403)
        if await self.sessions.nonce(request) is None:
            return json_response({"error": "not logged in"}, 401)
        view = await run_in_threadpool(self.deps.overview)
        return json_response({"issues": [
            {"number": i.number, "status": i.status, "counts": c, "total": sum(c.values()),
             "done": done_of(c)} for i, c in view.issues]})

    async def preview(self, request: Request) -> Response:
        if not self.deps.enabled:
            return self.disabled()
        number = int(request.path_params["number"])
        if await self.sessions.nonce(request) is None and await link_access(
                self.deps, request, f"preview:{number}") is None:
            return Response("Log in at /admin/login first.", 401, headers=_BASE_HEADERS)
        try:
            await run_in_threadpool(load_issue, self.deps, number)
            html = await run_in_threadpool(self.deps.preview_html, number)
        except HttpError as exc:
            return Response(exc.text, exc.code, headers=_BASE_HEADERS)
        return HTMLResponse(html, headers=PREVIEW_HEADERS)

    # -- actions (POST, CSRF-checked, then back to the dashboard) ---------------------------

    async def checked(self, request: Request, purpose: str,
                      read: Callable[[Request], Awaitable[dict[str, Any]]] | None = None
                      ) -> dict[str, Any] | Response:
        """The form's fields if it comes with a live session and this session's CSRF token
        (a token outlives no session: the session is looked up in the database first).
        Without a session, an issue's editor link may do what it allows to its own issue
        (issue_editor.LINK_ACTIONS); request.state.actor names who acts either way. `read`
        parses another kind of body (its "csrf" the token); request.state.refused says why
        a refusal was given."""
        nonce = await self.sessions.nonce(request)
        ip = self.deps.client_ip(request)
        request.state.actor, request.state.back = f"dashboard {ip}", "/admin/"
        request.state.link = None
        if nonce is None and (link := await link_access(self.deps, request, purpose)):
            nonce, request.state.actor = link.nonce, link.actor(ip)
            request.state.back, request.state.link = f"/admin/issues/{link.number}/edit", link
        try:
            fields = await (read or self.form)(request) if nonce else {}
        except HttpError as exc:
            request.state.refused = exc.text
            return self.page("message.html", exc.code, title="Refused", text=exc.text)
        if not nonce or not self.sessions.csrf_ok(nonce, purpose, fields.get("csrf", "")):
            # No session, or a form this session did not render: a forged request.
            log.event("admin.csrf_refused", ip=self.deps.client_ip(request), action=purpose)
            request.state.refused = ("This form has expired or was not sent from the "
                                     "dashboard. Reload the dashboard and try again.")
            return self.page("message.html", 403, title="Refused", text=request.state.refused)
        return fields

    def action(self, purpose_of: Callable[[Request], str],
               work: Callable[[Request, dict[str, str]], Awaitable[str]]) -> Callable[
                   [Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            if not self.deps.enabled:
                return self.disabled()
            purpose = purpose_of(request)
            fields = await self.checked(request, purpose)
            if isinstance(fields, Response):
                return fields
            ok = True
            try:
                text = await work(request, fields)
            except (HttpError, NewsletterError) as exc:
                ok, text = False, getattr(exc, "text", str(exc))
            log.event("admin.action", ip=self.deps.client_ip(request), action=purpose, ok=ok)
            response = RedirectResponse(request.state.back, 303, headers=_BASE_HEADERS)
            self.cookie(response, request, FLASH_COOKIE, self.sessions.flash(ok, text), 60)
            return response

        return endpoint

    async def logout(self, request: Request) -> Response:
        if not self.deps.enabled:
            return self.disabled()
        fields = await self.checked(request, "logout")
        if isinstance(fields, Response):
            return fields
        nonce = await self.sessions.nonce(request)
        if nonce:
            await run_in_threadpool(self.sessions.revoke, nonce)
        log.event("admin.logout", ip=self.deps.client_ip(request))
        response = RedirectResponse("/admin/login", 303, headers=_BASE_HEADERS)
        response.delete_cookie(SESSION_COOKIE, path="/admin")
        return response

    async def logout_everywhere(self, request: Request) -> Response:
        """End every session, in every browser and web process: a lost laptop, a shared
        machine, a cookie that may have leaked."""
        if not self.deps.enabled:
            return self.disabled()
        fields = await self.checked(request, "logout_everywhere")
        if isinstance(fields, Response):
            return fields
        ended = await run_in_threadpool(self.sessions.revoke_all)
        log.event("admin.logout_everywhere", ip=self.deps.client_ip(request), sessions=ended)
        response = RedirectResponse("/admin/login", 303, headers=_BASE_HEADERS)
        response.delete_cookie(SESSION_COOKIE, path="/admin")
        return response

    async def collect(self, request: Request, fields: dict[str, str]) -> str:
        summary = await run_in_threadpool(self.deps.collect_now)
        errors = summary.get("errors") or []
        text = f"Collected: {summary.get('new', 0)} new, {summary.get('updated', 0)} updated"
        if errors:
            raise NewsletterError(f"{text}; {plural(len(errors), 'error')}: "
                                  f"{'; '.join(errors[:3])}")
        return text + "."

    async def build(self, request: Request, fields: dict[str, str]) -> str:
        result = await run_in_threadpool(self.deps.build_issue, fields.get("force") == "1",
                                         actor=f"dashboard {self.deps.client_ip(request)}")
        hint = " Tick “even if nothing is new” to build one anyway." if result.nothing_new \
            else ""
        return result.message[:1].upper() + result.message[1:] + "." + hint

    async def add_subscriber(self, request: Request, fields: dict[str, str]) -> str:
        data = {"email": fields.get("email", ""), "name": fields.get("name", ""),
                "reason": fields.get("reason", ""), "confirmed": fields.get("confirmed") == "1",
                "resubscribe": fields.get("resubscribe") == "1"}
        _code, body = await run_in_threadpool(add_subscriber, self.deps, data,
                                              f"dashboard {self.deps.client_ip(request)}",
                                              consent.HINT_DASHBOARD)
        email, state = body["subscriber"]["email"], body["state"]
        text = {"new": "added", "pending": "already pending confirmation",
                "active": "already active", "activated": "confirmed: now active",
                "reactivated": "subscribed again, as you said the person asked"}[state]
        if body["subscriber"]["status"] == "pending":
            text += ("; a confirmation mail went out" if body["confirmation_sent"]
                     else "; no confirmation mail went out now")
        return f"{email}: {text}."


def _issue_purpose(request: Request) -> str:
    return f"{request.path_params['action']}:{request.path_params['number']}"


def admin_routes(deps: AdminDeps) -> list[BaseRoute]:
    """The dashboard's routes under /admin/ (the JSON API is admin_api_routes)."""
    d = _Dashboard(deps)

    async def not_an_action(request: Request) -> Response:
        return d.page("message.html", 404, title="Not found", text="There is no such action.")

    issue_action = d.action(_issue_purpose, d.issues.act)

    async def dispatch(request: Request) -> Response:
        if request.path_params["action"] not in ACTIONS:
            return await not_an_action(request)
        return await issue_action(request)

    async def opened(request: Request) -> Response:
        """A button's address opened (a bookmark, a pasted link, a reload after Back): a page
        that says nothing was done, never a bare "Method Not Allowed"."""
        if not deps.enabled:
            return d.disabled()
        if "action" in request.path_params and request.path_params["action"] not in ACTIONS:
            return await not_an_action(request)
        response = d.page("message.html", 405, title="Nothing was done", text=(
            "This address is a dashboard button's: it acts only when the button is pressed, "
            "and opening it does nothing. Go back to the dashboard and press the button there."))
        response.headers["allow"] = "POST"
        return response

    buttons = ["/admin/logout", "/admin/logout-everywhere", "/admin/collect", "/admin/build",
               "/admin/subscribers", "/admin/issues/{number:int}/{action}"]

    return [
        Route("/admin/", d.dashboard, methods=["GET"], name="admin"),
        Route("/admin/login", d.login, methods=["GET", "POST"], name="admin_login"),
        Route("/admin/logout", d.logout, methods=["POST"]),
        Route("/admin/logout-everywhere", d.logout_everywhere, methods=["POST"]),
        Route("/admin/progress.json", d.progress, methods=["GET"]),
        Route("/admin/collect", d.action(lambda r: "collect", d.collect), methods=["POST"]),
        Route("/admin/build", d.action(lambda r: "build", d.build), methods=["POST"]),
        Route("/admin/subscribers", d.action(lambda r: "subscriber_add", d.add_subscriber),
              methods=["POST"]),
        Route("/admin/issues/{number:int}/preview", d.preview, methods=["GET"]),
        *editor_routes(d),
        Route("/admin/issues/{number:int}/{action}", dispatch, methods=["POST"]),
        *people_routes(d),
        *(Route(path, opened, methods=["GET"]) for path in buttons),
    ]
