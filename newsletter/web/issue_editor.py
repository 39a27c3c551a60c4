"""An editor's signed link as a session scoped to one issue, and the issue's editor page."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from newsletter import log
from newsletter.web.admin_http import AdminDeps, HttpError, load_issue
from newsletter.web.admin_sessions import FLASH_COOKIE

EDITOR_COOKIE = "newsletter_editor"
# What the holder of an issue's editor link may do to that issue, as "verb:number" purposes
# (the dashboard's CSRF purposes): open its editor page and preview, approve it. Nothing else:
# not another issue, not the dashboard, not the API, not sending or cancelling.
LINK_ACTIONS = ("edit", "preview", "approve")
_NO_STORE = {"cache-control": "no-store", "referrer-policy": "no-referrer",
             "x-content-type-options": "nosniff", "x-robots-tag": "noindex"}


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
    route uses: the editor page, its preview, its approve button (and later its edits)."""
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


def editor_routes(d: Pages) -> list[BaseRoute]:
    """GET /admin/issues/N/edit: with ?token= (the mailed link) it checks the token, keeps it
    in a cookie for this issue's paths only and redirects to the same page without it (out
    of the address bar, history and Referer); without a token it needs a dashboard session
    or that cookie, else it redirects to the login."""

    async def edit(request: Request) -> Response:
        deps = d.deps
        if not deps.enabled:
            return d.page("message.html", 403, title="Admin disabled",
                          text="The dashboard is off: approve with `newsletter issue approve`.")
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
            issue = await run_in_threadpool(load_issue, deps, number)
        except HttpError as exc:
            return d.page("message.html", exc.code, title="Not found", text=exc.text)
        csrf_nonce = nonce or (access.nonce if access else "")
        page = d.page("editor.html", issue=issue, editor=access.editor if access else "",
                      flash=d.sessions.read_flash(request),
                      approvable=issue.status in ("draft", "scheduled", "paused")
                      and issue.approved_at is None,
                      csrf=lambda purpose: d.sessions.csrf(csrf_nonce, purpose))
        page.delete_cookie(FLASH_COOKIE, path="/admin")
        return page

    return [Route("/admin/issues/{number:int}/edit", edit, methods=["GET"])]
