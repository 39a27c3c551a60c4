"""Dashboard pages about people: a subscriber's record, and what came back (bounces)."""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import urlencode

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from newsletter.audience import subscriptions
from newsletter.models import BOUNCE_KINDS
from newsletter.web.admin_http import AdminDeps

PAGE = 100


class Pages(Protocol):
    """What these pages need of the dashboard (web/admin.py's): its deps, session check
    and page renderer."""

    deps: AdminDeps

    async def logged_in(self, request: Request) -> Response | None: ...

    def page(self, template: str, status: int = 200, **values: Any) -> Response: ...


def _number(request: Request, name: str) -> int | None:
    raw = request.query_params.get(name, "")
    return int(raw) if raw.isdigit() and len(raw) < 10 else None


def people_routes(d: Pages) -> list[BaseRoute]:
    """GET only: these pages show, they never change anything."""

    async def find(request: Request) -> Response:
        refused = await d.logged_in(request)
        if refused is not None:
            return refused
        email = request.query_params.get("email", "").strip()
        try:
            _address, key = subscriptions.normalise_address(email, smtputf8=True)
        except subscriptions.AddressError as exc:
            return d.page("message.html", 400, title="Not an address",
                          text=f"{email!r}: {exc.reason}")
        sub = await run_in_threadpool(d.deps.store.get_subscriber_by_key, key)
        if sub is None:
            return d.page("message.html", 404, title="Not found",
                          text=f"{email}: no such subscriber.")
        return RedirectResponse(f"/admin/subscribers/{sub.id}", 303)

    async def record(request: Request) -> Response:
        refused = await d.logged_in(request)
        if refused is not None:
            return refused
        store = d.deps.store
        subscriber_id = int(request.path_params["id"])

        def load() -> dict[str, Any] | None:
            sub = store.get_subscriber(subscriber_id) if subscriber_id < 2**31 else None
            if sub is None:
                return None
            return {"sub": sub, "consent": store.consent_history(sub.id),
                    "bounces": store.list_bounces(subscriber_id=sub.id, limit=200)}

        values = await run_in_threadpool(load)
        if values is None:
            return d.page("message.html", 404, title="Not found", text="No such subscriber.")
        return d.page("subscriber.html", **values)

    async def bounces(request: Request) -> Response:
        refused = await d.logged_in(request)
        if refused is not None:
            return refused
        kind = request.query_params.get("kind") or None
        if kind not in (None, *BOUNCE_KINDS):
            kind = None
        before, issue = _number(request, "before"), _number(request, "issue")
        store = d.deps.store
        events, totals = await run_in_threadpool(lambda: (
            store.list_bounces(kind=kind, issue_number=issue, before_id=before, limit=PAGE),
            store.bounce_totals()))
        more = None
        if len(events) == PAGE:
            more = "/admin/bounces?" + urlencode({k: v for k, v in (
                ("kind", kind), ("issue", issue), ("before", events[-1].id)) if v})
        return d.page("bounces.html", events=events, totals=totals, kind=kind, issue=issue,
                      kinds=BOUNCE_KINDS, more=more)

    return [
        Route("/admin/subscribers/find", find, methods=["GET"]),
        Route("/admin/subscribers/{id:int}", record, methods=["GET"]),
        Route("/admin/bounces", bounces, methods=["GET"]),
    ]
