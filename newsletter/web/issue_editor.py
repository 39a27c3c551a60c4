"""An editor's signed link as a session scoped to one issue, and the issue's editor page."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from newsletter import log
from newsletter.errors import BadValue, NewsletterError
from newsletter.pipeline.editing import EDITABLE, INTRO_MAX_BYTES, NoArticles, version_of
from newsletter.web.admin_http import AdminDeps, HttpError, json_response, load_issue
from newsletter.web.admin_sessions import FLASH_COOKIE
from newsletter.web.requests import BodyTooLarge, read_capped

if TYPE_CHECKING:
    from newsletter.models import Article, Issue
    from newsletter.pipeline.editing import EditResult

EDITOR_COOKIE = "newsletter_editor"
# What the holder of an issue's editor link may do to that issue, as "verb:number" purposes
# (the dashboard's CSRF purposes): open its editor page and preview, edit it ("edit": the
# page, its save and its article search), approve it. Nothing else: not another issue, not
# the dashboard, not the API, not sending or cancelling.
LINK_ACTIONS = ("edit", "preview", "approve")
_NO_STORE = {"cache-control": "no-store", "referrer-policy": "no-referrer",
             "x-content-type-options": "nosniff", "x-robots-tag": "noindex"}
FOUND_MAX = 50  # articles one search answers with, newest first (the page shows a few)
_QUERY_MAX = 100  # characters of a search


@dataclass(frozen=True, slots=True)
class LinkAccess:
    """A request made with an issue's editor link (its cookie): who, for which issue."""

    number: int
    editor: str  # the address the link was mailed to
    nonce: str  # stands for a dashboard session's secret in this link's CSRF tokens

    def actor(self, ip: str) -> str:
        return f"editor {self.editor} {ip}"


def link_nonce(token: str) -> str:
    return "editor-link:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


async def link_access(deps: AdminDeps, request: Request, purpose: str) -> LinkAccess | None:
    """The editor-link session of this request when it may do `purpose` ("verb:number", a
    verb of LINK_ACTIONS): its cookie holds a valid editor token of exactly that issue, for
    an address still among the editors, signed with the current admin token. None
    otherwise, and always while the dashboard is off. The one check every editor-link
    route uses: the editor page, its save, its article search, its preview, its approve
    button."""
    verb, _, number = purpose.partition(":")
    token = request.cookies.get(EDITOR_COOKIE, "")
    if verb not in LINK_ACTIONS or not number.isdigit() or len(number) > 10 \
            or not token or not deps.enabled:
        return None
    editor = await run_in_threadpool(deps.editor_of, int(number), token)
    return None if editor is None else LinkAccess(int(number), editor, link_nonce(token))


class Pages(Protocol):
    """What the editor page needs of the dashboard (web/admin.py's)."""

    deps: AdminDeps
    sessions: Any

    def page(self, template: str, status: int = 200, **values: Any) -> Response: ...

    def cookie(self, response: Response, request: Request, name: str, value: str,
               max_age: int) -> None: ...

    async def form(self, request: Request, limit: int = 0) -> dict[str, str]: ...

    async def checked(self, request: Request, purpose: str,
                      read: Callable[[Request], Awaitable[dict[str, Any]]] | None = None
                      ) -> dict[str, Any] | Response: ...


# -- what the page shows ------------------------------------------------------------------


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC" if value else "—"


def locked_because(deps: AdminDeps, issue: Issue) -> str:
    """Why the issue can no longer be edited, in a sentence; "" while it can (the rule of
    pipeline.editing, which checks it again at the save)."""
    if issue.status in EDITABLE:
        if issue.status != "paused" or issue.id is None or \
                not sum(deps.store.delivery_counts(issue.id).values()):
            return ""
        why = "it started sending before it was paused"
    else:
        why = f"it is {issue.status}"
    return (f"Issue {issue.number} can no longer be edited: {why} (only a draft, scheduled "
            f"or paused issue that has not started sending can).")


def article_json(article: Article, section: str) -> dict[str, Any]:
    return {"id": article.id, "title": article.title, "section": section,
            "meta": f"{article.published:%Y-%m-%d}"}


def editor_view(deps: AdminDeps, number: int) -> dict[str, Any]:
    """The issue as the editor page shows it (and its save answers): fields, sections with
    their articles in order, approval, history newest first. Blocking: run it in a thread."""
    issue = load_issue(deps, number, with_articles=True)
    return {
        "number": issue.number, "status": issue.status, "subject": issue.subject,
        "preheader": issue.preheader, "intro": issue.intro, "version": version_of(issue),
        "intro_max": INTRO_MAX_BYTES,
        "locked": locked_because(deps, issue), "send_at": _when(issue.send_at),
        "at_once": issue.send_at is None,  # approving sends it now, not at a send time
        "approval": (f"approved by {issue.approved_by}, {_when(issue.approved_at)}"
                     if issue.approved_at else "not approved"),
        "approvable": issue.status in EDITABLE and issue.approved_at is None,
        "sections": [{"name": s.name, "articles": [article_json(a, s.name) for a in s.articles]}
                     for s in issue.sections],
        "history": [{"at": _when(e.at), "actor": e.actor, "action": e.action,
                     "summary": e.summary} for e in reversed(deps.issue_history(number))]}


LINK_NO_ARTICLES = ("articles is empty: an issue needs at least one article. To stop this "
                    "issue from going out, leave it unapproved and tell the publication's "
                    "operator, who can cancel it.")


def too_large(deps: AdminDeps) -> str:
    return (f"the changes are larger than {deps.max_edit_bytes:,} bytes: the intro can be at "
            f"most {INTRO_MAX_BYTES:,} bytes (a note at the top, not an article)")


def _saved_text(result: EditResult) -> str:
    if not result.changes:
        return "Nothing to save: the issue is as it was."
    said = f" ({result.note})" if result.note else ""
    return f"Saved: {'; '.join(result.changes)}{said}."


def editor_routes(d: Pages) -> list[BaseRoute]:
    """GET /admin/issues/N/edit: with ?token= (the mailed link) it checks the token, keeps it
    in a cookie for this issue's paths only and redirects to the same page without it (out
    of the address bar, history and Referer); without a token it needs a dashboard session
    or that cookie, else it redirects to the login. POST saves through deps.edit_issue (JSON
    from the page's script, or the plain form without it); GET articles.json?q= finds stored
    articles to add."""
    deps = d.deps

    def off() -> Response:
        return d.page("message.html", 403, title="Admin disabled",
                      text="The dashboard is off: approve with `newsletter issue approve`.")

    async def allowed(request: Request, number: int) -> bool:
        """A dashboard session, or this issue's editor link."""
        return await d.sessions.nonce(request) is not None or \
            await link_access(deps, request, f"edit:{number}") is not None

    async def edit(request: Request) -> Response:
        if not deps.enabled:
            return off()
        number = int(request.path_params["number"])
        here = f"/admin/issues/{number}/edit"
        token = request.query_params.get("token")
        if token is not None:
            editor = await run_in_threadpool(deps.editor_of, number, token)
            if editor is None:
                log.event("admin.editor_link_refused", ip=deps.client_ip(request),
                          number=number)
                return d.page("message.html", 403, title="Link not valid",
                              text="This editor link has expired, or is not for this issue. "
                                   "Ask for a new one, or log in with the admin token.")
            response = RedirectResponse(here, 303, headers=_NO_STORE)
            response.set_cookie(EDITOR_COOKIE, token, path=f"/admin/issues/{number}",
                                max_age=int(deps.session_hours * 3600), httponly=True,
                                # Lax: the mailed link is a navigation from another site.
                                samesite="lax", secure=request.url.scheme == "https")
            log.event("admin.editor_link", ip=deps.client_ip(request), number=number)
            return response
        nonce = await d.sessions.nonce(request)
        access = None if nonce else await link_access(deps, request, f"edit:{number}")
        if nonce is None and access is None:
            return RedirectResponse("/admin/login", 303, headers=_NO_STORE)
        try:
            view = await run_in_threadpool(editor_view, deps, number)
        except HttpError as exc:
            return d.page("message.html", exc.code, title="Not found", text=exc.text)
        csrf_nonce = nonce or (access.nonce if access else "")
        page = d.page("editor.html", view=view, editor=access.editor if access else "",
                      flash=d.sessions.read_flash(request),
                      csrf=lambda purpose: d.sessions.csrf(csrf_nonce, purpose))
        page.delete_cookie(FLASH_COOKIE, path="/admin")
        return page

    async def read(request: Request) -> dict[str, Any]:
        """The changes and CSRF token of a save: JSON from the page's script (the token in
        X-CSRF-Token), or the plain form (articles as ids separated by spaces)."""
        kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
        if kind != "application/json":
            try:
                fields = await d.form(request, deps.max_edit_bytes)
            except HttpError as exc:
                raise HttpError(exc.code, too_large(deps) if exc.code == 413
                                else exc.text) from None
            changes: dict[str, Any] = {k: fields[k] for k in (
                "subject", "preheader", "intro", "version") if k in fields}
            if "articles" in fields:
                changes["articles"] = fields["articles"].replace(",", " ").split()
            return {"csrf": fields.get("csrf", ""), "changes": changes}
        try:
            data = json.loads(await read_capped(request, deps.max_edit_bytes) or b"{}")
        except BodyTooLarge:
            raise HttpError(413, too_large(deps)) from None
        except ValueError:  # includes bad UTF-8
            raise HttpError(400, "The changes could not be read (not JSON).") from None
        if not isinstance(data, dict):
            raise HttpError(400, "The changes must be a JSON object.")
        return {"csrf": request.headers.get("x-csrf-token", ""), "changes": data}

    async def save(request: Request) -> Response:
        """Through deps.edit_issue, as the actor checked() names (the dashboard session or
        the editor link); the script gets JSON, the plain form a redirect with a flash."""
        if not deps.enabled:
            return off()
        number = int(request.path_params["number"])
        wants_json = "application/json" in request.headers.get("accept", "")
        fields = await d.checked(request, f"edit:{number}", read)
        if isinstance(fields, Response):
            if not wants_json:
                return fields
            return json_response({"ok": False, "error": getattr(
                request.state, "refused", "Refused.")}, fields.status_code)
        code, ok, text, view = 200, True, "", None

        def run() -> tuple[str, dict[str, Any]]:
            load_issue(deps, number)  # 404 before anything else
            result = deps.edit_issue(number, fields["changes"], request.state.actor)
            return (_saved_text(result),
                    editor_view(deps, number))

        try:
            text, view = await run_in_threadpool(run)
        except HttpError as exc:
            code, ok, text = exc.code, False, exc.text
        except NoArticles as exc:  # an editor's link cannot cancel: tell them what they can
            code, ok, text = 400, False, LINK_NO_ARTICLES if getattr(
                request.state, "link", None) else str(exc)
        except BadValue as exc:  # not valid, or over the email's size budget
            code, ok, text = 400, False, str(exc)
        except NewsletterError as exc:  # IssueLocked: sending began, or it is sent
            code, ok, text = 409, False, str(exc)
        log.event("admin.edit", ip=deps.client_ip(request), number=number, ok=ok)
        if wants_json:
            return json_response({"ok": ok, "message": text, **(view or {})} if ok
                                 else {"ok": False, "error": text}, code)
        response = RedirectResponse(f"/admin/issues/{number}/edit", 303, headers=_NO_STORE)
        d.cookie(response, request, FLASH_COOKIE,
                 d.sessions.flash(ok, text if ok else f"Not saved: {text}"), 60)
        return response

    async def articles(request: Request) -> Response:
        """Stored articles whose title or section holds ?q=, newest first (the newest
        without q): what the page's "add an article" offers."""
        number = int(request.path_params["number"])
        if not deps.enabled:
            return json_response({"error": "the dashboard is off"}, 403)
        if not await allowed(request, number):
            return json_response({"error": "log in at /admin/login first"}, 401)
        text = request.query_params.get("q", "").strip()[:_QUERY_MAX]

        def run() -> dict[str, Any]:
            load_issue(deps, number)
            found = deps.store.search_articles(text, FOUND_MAX)
            return {"articles": [article_json(a, a.section or deps.untitled_section)
                                 for a in found]}

        try:
            return json_response(await run_in_threadpool(run))
        except HttpError as exc:
            return json_response({"error": exc.text}, exc.code)

    return [Route("/admin/issues/{number:int}/edit", edit, methods=["GET"]),
            Route("/admin/issues/{number:int}/edit", save, methods=["POST"]),
            Route("/admin/issues/{number:int}/articles.json", articles, methods=["GET"])]
