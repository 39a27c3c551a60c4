"""Public web archive of sent issues: a list page, one page per issue and an Atom feed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from newsletter.compose.render import Masthead, Renderer, archive_feed, archive_updated
from newsletter.models import Issue
from newsletter.web.files import Generated

# Drafts, scheduled and cancelled issues are not public: only what went (or is going) out.
PUBLIC_STATUSES = ("sending", "sent")
# Hardening: /issues/99999999999999999999 reached the database and failed there with a 500
# (the integer overflows SQLite's and PostgreSQL's); no issue can have such a number.
MAX_ISSUE_NUMBER = 2**31 - 1
_CACHE = {"cache-control": "public, max-age=300"}
# A draft shown through its signed preview link: kept out of caches and search engines, and
# the link (its token) is never sent on as a Referer when a reader follows an article link.
_PREVIEW = {"cache-control": "no-store", "x-robots-tag": "noindex, nofollow",
            "referrer-policy": "no-referrer"}


def is_public(issue: Issue | None) -> bool:
    return issue is not None and issue.status in PUBLIC_STATUSES


def archive_routes(
    *,
    list_issues: Callable[[], Sequence[Issue]],
    get_issue: Callable[[int], Issue | None],
    renderer: Renderer,
    masthead: Masthead,
    archive_base_url: str,
    cache_max_age: int = 300,
    preview: Callable[[int, str], Issue | None] | None = None,
) -> list[Route]:
    """Routes for /issues/, /issues/{number} and /issues/feed.xml.

    `archive_base_url` is the public absolute URL of /issues/; the callables may block (they
    query the store), so they run in Starlette's thread pool, as does the rendering.
    `preview(number, token)` gives the issue a signed draft-preview token opens (None for
    any other token): /issues/N?preview=<token> shows a draft that is otherwise a 404.
    """
    base = archive_base_url if archive_base_url.endswith("/") else archive_base_url + "/"

    def public_issues() -> list[Issue]:
        return sorted((i for i in list_issues() if is_public(i)), key=lambda i: i.number,
                      reverse=True)

    def list_page() -> str:
        return renderer.render_archive_list(public_issues(), masthead, base)

    def issue_page(number: int) -> str | None:
        issue = get_issue(number) if number <= MAX_ISSUE_NUMBER else None
        if not is_public(issue):
            return None
        assert issue is not None
        return renderer.render_archive_page(issue, masthead, f"{base}{number}")

    def feed() -> tuple[bytes, datetime]:
        issues = public_issues()
        return archive_feed(issues, masthead, base), archive_updated(issues)

    async def list_endpoint(request: Request) -> Response:
        return HTMLResponse(await run_in_threadpool(list_page), headers=_CACHE)

    def preview_page(number: int, token: str) -> str | None:
        issue = preview(number, token) if preview and number <= MAX_ISSUE_NUMBER else None
        if issue is None:
            return None
        # Marked as a draft unless it went out meanwhile (then it is the public page).
        return renderer.render_archive_page(issue, masthead, f"{base}{number}",
                                            draft=not is_public(issue))

    async def issue_endpoint(request: Request) -> Response:
        token = request.query_params.get("preview")
        if token:
            page = await run_in_threadpool(preview_page, request.path_params["number"], token)
            if page is not None:
                return HTMLResponse(page, headers=_PREVIEW)
        page = await run_in_threadpool(issue_page, request.path_params["number"])
        if page is None:
            # The same answer for a draft as for a number never used: drafts stay unseen.
            raise HTTPException(status_code=404)
        return HTMLResponse(page, headers=_CACHE)

    return [
        Route("/issues/", list_endpoint, name="archive_list"),
        # Served like the other feeds (ETag, Last-Modified, 304, gzip): readers poll it.
        Route("/issues/feed.xml", Generated("atom.xml", feed, max_age=cache_max_age),
              name="archive_feed"),
        Route("/issues/{number:int}", issue_endpoint, name="archive_issue"),
    ]
