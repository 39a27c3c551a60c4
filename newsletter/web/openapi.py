"""The OpenAPI 3.1 description of the admin API, served at /admin/api/openapi.json."""

from __future__ import annotations

from typing import Any

from newsletter import __version__
from newsletter.models import BOUNCE_KINDS, BOUNCE_SOURCES, ISSUE_ACTIONS, ISSUE_STATUSES
from newsletter.store.schema import DELIVERY_STATUSES, SUBSCRIBER_STATUSES

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: dict[str, Any], media: str = JSON) -> dict[str, Any]:
    return {"required": True, "content": {media: {"schema": schema}}}


def _ok(description: str, schema: dict[str, Any] | None = None,
        code: str = "200") -> dict[str, Any]:
    answer: dict[str, Any] = {"description": description}
    if schema is not None:
        answer["content"] = {JSON: {"schema": schema}}
    return {code: answer}


def _errors(*codes: str) -> dict[str, Any]:
    text = {"400": "Bad input", "401": "Missing or wrong bearer token",
            "403": "Admin API disabled (NEWSLETTER_SECRETS_ADMIN_TOKEN unset)",
            "404": "No such issue or subscriber",
            "409": "Not allowed in the issue's status, or the address opted out (resubscribe)",
            "413": "Request body too large", "415": "Wrong content type",
            "429": "Too many wrong tokens from this address"}
    return {c: {"description": text[c], "content": {JSON: {"schema": _ref("Error")}}}
            for c in ("401", "403", "429", *codes)}


def _op(summary: str, responses: dict[str, Any], *errors: str, body: dict[str, Any] | None = None,
        params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "responses": {**responses, **_errors(*errors)}}
    if body is not None:
        op["requestBody"] = body
    if params:
        op["parameters"] = params
    return op


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema,
            "description": description}


NUMBER = {"name": "number", "in": "path", "required": True,
          "schema": {"type": "integer", "minimum": 0}, "description": "Issue number"}
EMAIL = {"name": "email", "in": "path", "required": True, "schema": {"type": "string"},
         "description": "Subscriber address (URL-encoded)"}
_TIME = {"type": ["string", "null"], "format": "date-time"}
# send and approve, like PATCH, may name the version they mean (the body's or If-Match)
_RELEASED_VERSION = {"type": "string", "description": "The version read (GET's \"version\", "
                     "or If-Match with it): refused (409, nothing done) when the issue has "
                     "changed since. Left out: whatever is stored"}
_COUNTS = {"type": "object", "properties": {s: {"type": "integer"} for s in DELIVERY_STATUSES}}


def _schemas() -> dict[str, Any]:
    line_reasons = {"type": "array", "items": {"type": "object", "properties": {
        "line": {"type": "integer"}, "reason": {"type": "string"}}}}
    issue = {"type": "object", "properties": {
        "number": {"type": "integer"}, "status": {"enum": list(ISSUE_STATUSES)},
        "subject": {"type": "string"}, "preheader": {"type": "string"}, "created": _TIME,
        "send_at": _TIME, "window_start": _TIME, "window_end": _TIME, "counts": _COUNTS,
        "total": {"type": "integer", "description": "ledger rows"},
        "done": {"type": "integer", "description": "sent + failed + skipped"},
        "came_back": _ref("CameBack")}}
    subscriber = {"type": "object", "properties": {
        "id": {"type": "integer"}, "email": {"type": "string"}, "name": {"type": "string"},
        "status": {"enum": list(SUBSCRIBER_STATUSES)},
        "sections": {"type": "array", "items": {"type": "string"}}, "consent_at": _TIME,
        "consent_method": {"type": ["string", "null"]}, "confirmed_at": _TIME,
        "unsubscribed_at": _TIME, "created_at": _TIME}}
    by_status = {"type": "object", "additionalProperties": {"type": "integer"}}
    return {
        "Error": {"type": "object", "required": ["error"],
                  "properties": {"error": {"type": "string"}}},
        "Issue": issue,
        "IssueDetail": {"allOf": [_ref("Issue"), {"type": "object", "properties": {
            "preview_url": {"type": "string"},
            "intro": {"type": "string", "description": "The editor's note (Markdown); "
                      "empty: the preheader stands in for it"},
            "edited_at": _TIME, "approved_at": _TIME,
            "version": {"type": "string", "description": "The version of the editable "
                        "content (also the ETag): send it back with an edit (\"version\" "
                        "or If-Match) to have the edit refused (409) if someone changed "
                        "the issue since"},
            "articles": {"type": "array", "description": "Every article in the order the "
                         "email shows them", "items": {"allOf": [_ref("IssueArticle"), {
                             "type": "object",
                             "properties": {"section": {"type": "string"}}}]}},
            "sections": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"},
                "articles": {"type": "array", "items": _ref("IssueArticle")}}}}}}]},
        "IssueArticle": {"type": "object", "properties": {
            "id": {"type": "string"}, "title": {"type": "string"}, "link": {"type": "string"},
            "published": _TIME}},
        "IssueEdit": {"type": "object", "additionalProperties": False, "properties": {
            "subject": {"type": "string", "description": "One line, not empty, at most 200 "
                        "characters"},
            "preheader": {"type": "string", "description": "One line, at most 300 characters"},
            "intro": {"type": "string", "description": "The editor's note in Markdown (at "
                      "most 20 KB; raw HTML shows as text; links http, https, mailto); "
                      "\"\" removes it"},
            "articles": {"type": "array", "minItems": 1, "items": {"type": "string"},
                         "description": "Article ids in the new order: ids left out are "
                         "removed, stored articles not in the issue are added. Sections "
                         "follow the order of their first article; within a section the "
                         "articles keep the order given. Refused (400) when the email "
                         "would not hold them all within the size limit"},
            "version": {"type": "string", "description": "The version this edit was made "
                        "from (GET's \"version\"): refused (409, unchanged) when the issue "
                        "has changed since. Left out: the edit applies to whatever is "
                        "stored"}}},
        "HistoryEntry": {"type": "object", "properties": {
            "at": _TIME, "actor": {"type": "string", "description": "scheduler, cli <user>, "
                                   "api <address>, dashboard <address>"},
            "action": {"enum": list(ISSUE_ACTIONS)},
            "summary": {"type": "string", "description": "What changed, in words"},
            "detail": {"type": "object"}}},
        "Approval": {"allOf": [_ref("Issue"), {"type": "object", "properties": {
            "approved_at": _TIME, "approved_by": {"type": "string"}}}]},
        "TestCopies": {"type": "object", "properties": {
            "sent": {"type": "array", "items": {"type": "object", "properties": {
                "to": {"type": "string"}, "reply": {"type": "string"}}}},
            "failed": {"type": "array", "items": {"type": "object", "properties": {
                "to": {"type": "string"}, "error": {"type": "string"}}}}}},
        "Subscriber": subscriber,
        "CameBack": {"type": "object", "description": "Bounces and complaints of the issue; "
                     "rates are of messages sent", "properties": {
                         "hard": {"type": "integer"}, "soft": {"type": "integer"},
                         "complaints": {"type": "integer"},
                         "hard_bounce_rate": {"type": "number"},
                         "complaint_rate": {"type": "number"},
                         "warnings": {"type": "array", "items": {"type": "string"}}}},
        "Bounce": {"type": "object", "properties": {
            "id": {"type": "integer"}, "email": {"type": "string"},
            "subscriber_id": {"type": "integer"}, "issue": {"type": ["integer", "null"]},
            "kind": {"enum": list(BOUNCE_KINDS)}, "status": {"type": "string"},
            "diagnostic": {"type": "string"}, "source": {"enum": list(BOUNCE_SOURCES)},
            "recipient": {"type": "string"}, "received_at": _TIME}},
        "SubscriberRecord": {"allOf": [_ref("Subscriber"), {"type": "object", "properties": {
            "hard_bounces": {"type": "integer"},
            "consent": {"type": "array", "items": {"type": "object"}},
            "bounces": {"type": "array", "items": _ref("Bounce")}}}]},
        "Collect": {"type": "object", "properties": {
            "new": {"type": "integer"}, "updated": {"type": "integer"},
            "errors": {"type": "array", "items": {"type": "string"}}}},
        "Build": {"type": "object", "properties": {
            "message": {"type": "string"}, "created": {"type": "boolean"},
            "issue": {"oneOf": [_ref("Issue"), {"type": "null"}]}}},
        "Status": {"type": "object", "properties": {
            "last_collect": {"type": ["object", "null"]}, "articles": {"type": "integer"},
            "issues": {"type": "array", "items": _ref("Issue")}, "subscribers": by_status,
            "jobs": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "next_run": _TIME}}}}},
        "SubscriberPage": {"type": "object", "properties": {
            "subscribers": {"type": "array", "items": _ref("Subscriber")},
            "limit": {"type": "integer"}, "offset": {"type": "integer"},
            "next_offset": {"type": ["integer", "null"]}, "counts": by_status}},
        "ImportReport": {"type": "object", "properties": {
            "rows": {"type": "integer"}, "added": {"type": "integer"},
            "merged": {"type": "integer"}, "suppressed": {"type": "integer"},
            "skipped": {"type": "integer", "description": "Left as stored: opted out, or a "
                        "form sign-up awaiting the person's confirmation"},
            "skipped_by": {"type": "object", "additionalProperties": {"type": "integer"}},
            "invalid": {"type": "integer"}, "summary": {"type": "string"},
            "errors": line_reasons, "skipped_rows": line_reasons}},
    }


def _paths() -> dict[str, Any]:
    issue = _ok("The issue with its delivery counts", _ref("Issue"))
    moves = {verb: {"post": _op(f"{verb.capitalize()} the issue", issue, "404", "409",
                                params=[NUMBER])}
             for verb in ("pause", "resume", "cancel")}
    at = {"type": "object", "required": ["at"], "properties": {"at": {
        "type": "string", "format": "date-time",
        "description": "ISO 8601 with UTC offset; over a minute in the past is refused (400)"}}}
    by_kind = {"type": "object", "properties": {k: {"type": "integer"} for k in BOUNCE_KINDS}}
    return {
        "/admin/api/collect": {"post": _op(
            "Collect from every source now and republish the feeds",
            _ok("What was collected", _ref("Collect")))},
        "/admin/api/issues": {
            "get": _op("Recent issues, newest first, with delivery counts",
                       _ok("Issues", {"type": "object", "properties": {
                           "issues": {"type": "array", "items": _ref("Issue")}}}), "400",
                       params=[_query("limit", {"type": "integer", "minimum": 1,
                                                "maximum": 200, "default": 20}, "How many")]),
            "post": _op("Build the next issue (or refresh the current draft)",
                        {**_ok("Nothing new, or the draft was refreshed", _ref("Build")),
                         **_ok("A new issue was built", _ref("Build"), "201")}, "400", "413",
                        body={"required": False, "content": {JSON: {"schema": {
                            "type": "object", "properties": {"force": {
                                "type": "boolean", "default": False,
                                "description": "Build even when nothing is new"}}}}}})},
        "/admin/api/issues/{number}": {
            "get": _op("One issue with its articles (ids in order), sections, note and "
                       "delivery counts", _ok("The issue", _ref("IssueDetail")), "404",
                       params=[NUMBER]),
            "patch": _op("Edit an issue that has not started sending: any of subject, "
                         "preheader, intro, articles; re-rendered once. 409 (and unchanged) "
                         "when it is sending, sent or cancelled, or when the version given "
                         "(\"version\" or If-Match) is not the stored one",
                         _ok("The issue as edited, with what changed", {"allOf": [
                             _ref("IssueDetail"), {"type": "object", "properties": {
                                 "changes": {"type": "array", "items": {"type": "string"}},
                                 "message": {"type": "string"}}}]}),
                         "400", "404", "409", "413", body=_body(_ref("IssueEdit")),
                         params=[NUMBER])},
        "/admin/api/issues/{number}/history": {"get": _op(
            "Who did what to the issue (builds, edits, …), oldest first",
            _ok("The history", {"type": "object", "properties": {
                "number": {"type": "integer"},
                "history": {"type": "array", "items": _ref("HistoryEntry")}}}), "404",
            params=[NUMBER])},
        "/admin/api/issues/{number}/send": {"post": _op(
            "Start sending the issue in the background; poll GET /admin/api/issues/{number}",
            _ok("Sending started", {"type": "object", "properties": {
                "message": {"type": "string"}, "issue": _ref("Issue")}}, "202"),
            "404", "409", params=[NUMBER],
            body={"required": False, "content": {JSON: {"schema": {
                "type": "object", "properties": {"new_subscribers": {
                    "type": "boolean", "description": "An issue already sent goes to those "
                    "who joined since; without it such a send is refused (409)"},
                    "version": _RELEASED_VERSION}}}}})},
        "/admin/api/issues/{number}/review": {"post": _op(
            "Mail the editors the draft for review again, with fresh links (review mode)",
            _ok("The review mail went out", {"type": "object", "properties": {
                "number": {"type": "integer"}, "message": {"type": "string"},
                "reached": {"type": "array", "items": {"type": "string"}}}}) | {
                "502": {"description": "No editor could be reached (message says why)"}},
            "404", "409", params=[NUMBER])},
        "/admin/api/issues/{number}/schedule": {"post": _op(
            "Schedule the issue for a time", issue, "400", "404", "409", "413",
            body=_body(at), params=[NUMBER])},
        **{f"/admin/api/issues/{{number}}/{verb}": op for verb, op in moves.items()},
        "/admin/api/issues/{number}/approve": {"post": _op(
            "Approve the issue (recorded with who): sent now, or at its send time if that is "
            "still ahead (then scheduled). In review mode nothing unapproved is ever sent",
            {**_ok("Approved and scheduled", _ref("Approval")),
             **_ok("Approved; sending started: poll GET /admin/api/issues/{number}",
                   _ref("Approval"), "202")}, "400", "404", "409", params=[NUMBER],
            body={"required": False, "content": {JSON: {"schema": {
                "type": "object", "properties": {"version": _RELEASED_VERSION}}}}})},
        "/admin/api/issues/{number}/test": {"post": _op(
            "Send one test copy to each address (or to [newsletter] seed_list): the issue as "
            "built, subject prefixed [TEST], View in browser a signed draft preview while "
            "it is unpublished, unsubscribe and preferences links the generic manage page",
            {**_ok("Every copy accepted", _ref("TestCopies")),
             "502": {"description": "Some copy was refused by the mail server",
                     "content": {JSON: {"schema": _ref("TestCopies")}}}},
            "400", "404", "409", "413", body={"required": False, "content": {JSON: {
                "schema": {"type": "object", "properties": {"to": {
                    "type": "array", "minItems": 1, "maxItems": 20,
                    "items": {"type": "string", "format": "email"},
                    "description": "Leave out to use [newsletter] seed_list"}}}}}},
            params=[NUMBER])},
        "/admin/api/status": {"get": _op(
            "Last collect, article count, recent issues, subscriber counts and the schedule",
            _ok("Status", _ref("Status")))},
        "/admin/api/subscribers": {
            "get": _op("Subscribers by id, one page at a time",
                       _ok("A page of subscribers", _ref("SubscriberPage")), "400", params=[
                           _query("status", {"enum": list(SUBSCRIBER_STATUSES)}, "Only these"),
                           _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000,
                                            "default": 100}, "Page size"),
                           _query("offset", {"type": "integer", "minimum": 0, "default": 0},
                                  "Rows to skip")]),
            "post": _op("Add a subscriber (confirmed: active at once, else double opt-in). An "
                        "address that unsubscribed, bounced or complained is refused (409) "
                        "unless resubscribe is true with a reason, which is recorded",
                        {**_ok("Already known: state says what happened", {"type": "object"}),
                         **_ok("Added", {"type": "object", "properties": {
                             "state": {"type": "string"},
                             "confirmation_sent": {"type": "boolean"},
                             "subscriber": _ref("Subscriber")}}, "201")}, "400", "409", "413",
                        body=_body({"type": "object", "required": ["email"], "properties": {
                            "email": {"type": "string"}, "name": {"type": "string"},
                            "confirmed": {"type": "boolean", "default": False},
                            "resubscribe": {"type": "boolean", "default": False,
                                            "description": "The person asked to come back "
                                            "after opting out; needs reason"},
                            "reason": {"type": "string", "description": "Who asked, when "
                                       "and how; stored in the consent history"}}}))},
        "/admin/api/subscribers/import": {"post": _op(
            "Import a CSV (columns email, name, sections as a|b); opted-out addresses and "
            "unconfirmed form sign-ups are skipped, with the reason",
            _ok("Import report", _ref("ImportReport")), "400", "413", "415",
            body=_body({"type": "string"}, "text/csv"))},
        "/admin/api/bounces": {"get": _op(
            "Bounces and complaints recorded, newest first",
            _ok("A page of events", {"type": "object", "properties": {
                "bounces": {"type": "array", "items": _ref("Bounce")},
                "next_before": {"type": ["integer", "null"]}, "totals": by_kind}}), "400",
            params=[_query("kind", {"enum": list(BOUNCE_KINDS)}, "Only this kind"),
                    _query("issue", {"type": "integer", "minimum": 1}, "Only this issue's"),
                    _query("limit", {"type": "integer", "minimum": 1, "maximum": 1000,
                                     "default": 100}, "Page size"),
                    _query("before", {"type": "integer", "minimum": 1},
                           "Events older than this id (next_before of the previous page)")])},
        "/admin/api/subscribers/{email}": {"get": _op(
            "A subscriber's record: status, consent history, bounces and complaints",
            _ok("The record", _ref("SubscriberRecord")), "400", "404", params=[EMAIL]),
            "delete": _op(
            "Remove a subscriber (kept anonymised and unsubscribed if issues went to it)",
            _ok("Removed", {"type": "object", "properties": {
                "email": {"type": "string"},
                "result": {"enum": ["deleted", "anonymised"]}}}), "400", "404",
            params=[EMAIL])},
        "/admin/api/openapi.json": {"get": _op("This document",
                                               _ok("OpenAPI 3.1", {"type": "object"}))},
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "newsletter admin API", "version": __version__,
                 "description": "Operate the newsletter: collect, build, send, schedule, "
                                "pause, resume and cancel issues; manage subscribers. Every "
                                "request needs the admin token (NEWSLETTER_SECRETS_ADMIN_TOKEN) "
                                "as a bearer token. Errors are {\"error\": \"...\"}."},
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
                       "schemas": _schemas()},
    }
