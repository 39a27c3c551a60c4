"""The site's stylesheet (templates/static/), the operator's templates folder first."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from starlette.types import Receive, Scope, Send

from newsletter.resources import DEFAULT_TEMPLATES
from newsletter.web.files import FeedFiles

STATIC_URL = "/static/"


def static_dirs(templates_dir: Path | None = None) -> list[Path]:
    """Where /static/ files are looked for, in order: an override folder, then the shipped one."""
    dirs = [Path(templates_dir) / "static"] if templates_dir else []
    return [*dirs, DEFAULT_TEMPLATES / "static"]


class StaticFiles:
    """The first folder holding the path serves it, with the feeds' ETag, 304 and gzip."""

    def __init__(self, dirs: Sequence[Path], *, max_age: int = 300) -> None:
        self.layers = [FeedFiles(d, max_age=max_age) for d in dirs]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        rel = scope.get("path_params", {}).get("path", "")
        for layer in self.layers[:-1]:
            if layer.locate(rel) is not None:
                await layer(scope, receive, send)
                return
        await self.layers[-1](scope, receive, send)
