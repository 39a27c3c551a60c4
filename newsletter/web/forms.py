"""A visitor's form over HTTP: its fields, from urlencoded, multipart or JSON bodies."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from urllib.parse import parse_qsl

from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

Fields = dict[str, list[str]]


class Refused(Exception):
    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code, self.text = code, text


async def parse_fields(request: Request, body: bytes) -> Fields:
    """Form fields from urlencoded, multipart (RFC 8058 prefers it) or a JSON object."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    fields: Fields = {}
    try:
        if ctype == "application/json":
            data = json.loads(body or b"{}")
            if not isinstance(data, dict):
                raise ValueError("not a JSON object")
            for key, value in data.items():
                values = value if isinstance(value, list) else [value]
                fields[key] = [v for v in values if isinstance(v, str)]
        elif ctype == "multipart/form-data":
            async def once() -> AsyncGenerator[bytes, None]:
                yield body

            form = await MultiPartParser(request.headers, once(), max_files=0,
                                         max_fields=100).parse()
            for key, value in form.multi_items():
                if isinstance(value, str):
                    fields.setdefault(key, []).append(value)
        elif body:
            pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=100)
            for key, value in pairs:
                fields.setdefault(key, []).append(value)
    except (ValueError, MultiPartException):  # bad JSON or UTF-8, too many fields, files
        raise Refused(400, "The form could not be read.") from None
    return fields


def first(fields: Fields, name: str) -> str:
    values = fields.get(name) or [""]
    return values[0]
