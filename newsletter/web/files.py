"""ASGI endpoint that serves the generated feed files with validators, caching and gzip."""

from __future__ import annotations

import gzip
import hashlib
import logging
import mimetypes
import os
import re
import stat
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from email.utils import formatdate, parsedate_to_datetime
from pathlib import Path

import anyio.to_thread
from starlette.types import Receive, Scope, Send

log = logging.getLogger(__name__)

# Feed files get their registered media types; mimetypes knows none of them by file name.
FEED_TYPES = {
    "rss.xml": "application/rss+xml; charset=utf-8",
    "atom.xml": "application/atom+xml; charset=utf-8",
    "feed.json": "application/feed+json; charset=utf-8",
}
GZIP_MIN_SIZE = 1024  # below this the gzip header and CPU cost outweigh the saving
DEFAULT_MAX_FILE_SIZE = 16 * 1024 * 1024  # feeds are a few MB at most; refuse runaway files
_CACHE_MAX_ENTRIES = 512
_CACHE_MAX_BYTES = 64 * 1024 * 1024
_ETAG_RE = re.compile(r'(?:W/)?"([^"]*)"')
_ALLOW = [(b"allow", b"GET, HEAD")]

Headers = list[tuple[bytes, bytes]]


def content_type_for(name: str) -> str:
    """Media type for a file name: feed names first, then mimetypes, text types in UTF-8."""
    if name in FEED_TYPES:
        return FEED_TYPES[name]
    guessed, _ = mimetypes.guess_type(name)
    if guessed is None:
        return "application/octet-stream"
    if _compressible(guessed) and "charset" not in guessed:
        return f"{guessed}; charset=utf-8"  # everything we generate is UTF-8
    return guessed


def _compressible(media_type: str) -> bool:
    base = media_type.split(";", 1)[0].strip()
    return base.startswith("text/") or base.endswith(
        ("+xml", "+json", "/xml", "/json", "/javascript")
    )


@dataclass(slots=True)
class _Entry:
    """One file version, with every header prepared so a hot request only picks a list."""

    key: tuple[int, int, int]  # (mtime_ns, size, inode) of the version that was read
    mtime: int  # whole seconds, what Last-Modified can express
    body: bytes
    gz_body: bytes | None
    etag: str
    gz_etag: str
    ok_headers: Headers
    ok_gz_headers: Headers
    nm_headers: Headers
    nm_gz_headers: Headers

    @property
    def weight(self) -> int:
        return len(self.body) + len(self.gz_body or b"")


class FeedFiles:
    """Serve regular files under `root` (GET/HEAD) from a route with a `{path:path}` param.

    Any path that leaves the root, names a dot file, a directory or something too large is a
    404, so nothing tells a prober what exists outside the feeds folder.
    """

    def __init__(
        self,
        root: Path,
        *,
        max_age: int = 300,
        max_file_size: int = DEFAULT_MAX_FILE_SIZE,
    ) -> None:
        # Resolved once: the containment check compares resolved paths to this prefix.
        self.root = os.path.realpath(root)
        self.cache_control = f"public, max-age={int(max_age)}".encode()
        self.max_file_size = max_file_size
        self._cache: OrderedDict[str, _Entry] = OrderedDict()
        self._cache_bytes = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        method = scope.get("method", "GET")
        if method not in ("GET", "HEAD"):
            await _plain(send, 405, b"Method Not Allowed", _ALLOW)
            return
        found = self.locate(scope.get("path_params", {}).get("path", ""))
        entry = None if found is None else await self._entry(*found)
        if entry is None:
            await _plain(send, 404, b"Not Found")
            return
        await respond(entry, scope, send)

    def locate(self, rel: str) -> tuple[str, os.stat_result] | None:
        """Real path and stat of a regular file inside the root, or None if it may not be served.

        The hot path is one lstat per segment: the root is already resolved and plain names
        below it cannot leave it. A symlink anywhere on the way sends the request through
        realpath and a containment check instead (realpath alone costs ~15 µs a request).
        """
        if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/"):
            return None
        parts = rel.split("/")
        # Dot segments cover `.`/`..` (however they were encoded: the path is decoded by now)
        # and keep the generator's temp files and .gitkeep private.
        if any(not part or part.startswith(".") for part in parts):
            return None
        path = self.root
        try:
            for part in parts:
                path = f"{path}/{part}"
                st = os.lstat(path)
                if stat.S_ISLNK(st.st_mode):
                    return self._locate_via_symlink(parts)
            if not stat.S_ISREG(st.st_mode):
                return None
        except (OSError, ValueError):
            return None  # missing, a file used as a folder, a name too long...
        return path, st

    def _locate_via_symlink(self, parts: list[str]) -> tuple[str, os.stat_result] | None:
        real = os.path.realpath(os.path.join(self.root, *parts))
        # realpath follows every link, so one pointing outside lands outside the root.
        if not real.startswith(self.root + os.sep):
            return None
        st = os.stat(real)
        return (real, st) if stat.S_ISREG(st.st_mode) else None

    async def _entry(self, path: str, st: os.stat_result) -> _Entry | None:
        # The stat (done inline: a thread hop would cost more) tells us when the generator has
        # renamed a new version into place.
        if st.st_size > self.max_file_size:
            log.warning("not serving %s: %d bytes is over the limit", path, st.st_size)
            return None
        entry = self._cache.get(path)
        if entry is not None and entry.key == (st.st_mtime_ns, st.st_size, st.st_ino):
            self._cache.move_to_end(path)
            return entry
        # Reading, hashing and compressing can take milliseconds: keep them off the loop.
        entry = await anyio.to_thread.run_sync(self._load, path)
        if entry is not None:
            self._store(path, entry)
        return entry

    def _load(self, path: str) -> _Entry | None:
        try:
            with open(path, "rb") as fh:
                # fstat of the open file: key and bytes belong to the same version even if a
                # rename replaces the name between the stat above and this read.
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode) or st.st_size > self.max_file_size:
                    return None
                body = fh.read(self.max_file_size + 1)
        except OSError:
            return None
        if len(body) > self.max_file_size:
            return None
        return build_entry((st.st_mtime_ns, st.st_size, st.st_ino), int(st.st_mtime), body,
                           os.path.basename(path), self.cache_control)

    def _store(self, path: str, entry: _Entry) -> None:
        old = self._cache.pop(path, None)
        if old is not None:
            self._cache_bytes -= old.weight
        self._cache[path] = entry
        self._cache_bytes += entry.weight
        while self._cache and (
            len(self._cache) > _CACHE_MAX_ENTRIES or self._cache_bytes > _CACHE_MAX_BYTES
        ):
            _, evicted = self._cache.popitem(last=False)
            self._cache_bytes -= evicted.weight


class Generated:
    """Serve bytes made per request (the archive feed) like a file: ETag, Last-Modified, gzip.

    `make` returns the body and when it last changed. The last version is kept, so an
    unchanged body is compared but not compressed again.
    """

    def __init__(self, name: str, make: Callable[[], tuple[bytes, datetime]], *,
                 max_age: int = 300) -> None:
        self.name, self.make = name, make
        self.cache_control = f"public, max-age={int(max_age)}".encode()
        self._last: _Entry | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("method", "GET") not in ("GET", "HEAD"):
            await _plain(send, 405, b"Method Not Allowed", _ALLOW)
            return
        body, changed = await anyio.to_thread.run_sync(self.make)
        mtime = int(changed.timestamp())
        entry = self._last
        if entry is None or entry.mtime != mtime or entry.body != body:
            entry = await anyio.to_thread.run_sync(
                build_entry, (mtime, len(body), 0), mtime, body, self.name, self.cache_control)
            self._last = entry
        await respond(entry, scope, send)


def build_entry(key: tuple[int, int, int], mtime: int, body: bytes, name: str,
                cache_control: bytes) -> _Entry:
    """One version of `name` with its validators and gzip prepared; `mtime` in Unix seconds."""
    media_type = content_type_for(name)
    digest = hashlib.sha256(body).hexdigest()[:32]
    etag, gz_etag = f'"{digest}"', f'"{digest}-gz"'
    gz_body = None
    if len(body) > GZIP_MIN_SIZE and _compressible(media_type):
        # mtime=0 keeps the gzip bytes a pure function of the content.
        packed = gzip.compress(body, compresslevel=6, mtime=0)
        if len(packed) < len(body):
            gz_body = packed
    last_modified = formatdate(mtime, usegmt=True).encode()
    common: Headers = [
        (b"cache-control", cache_control),
        (b"last-modified", last_modified),
        (b"vary", b"Accept-Encoding"),
    ]

    def ok(tag: str, data: bytes, encoded: bool) -> Headers:
        extra = [(b"content-encoding", b"gzip")] if encoded else []
        return [
            (b"content-type", media_type.encode()),
            (b"content-length", str(len(data)).encode()),
            (b"etag", tag.encode()),
            *common,
            *extra,
        ]

    return _Entry(
        key=key,
        mtime=mtime,
        body=body,
        gz_body=gz_body,
        etag=etag,
        gz_etag=gz_etag,
        ok_headers=ok(etag, body, False),
        ok_gz_headers=ok(gz_etag, gz_body, True) if gz_body is not None else [],
        # A 304 repeats the validators and caching headers but has no body to describe.
        nm_headers=[(b"etag", etag.encode()), *common],
        nm_gz_headers=[(b"etag", gz_etag.encode()), *common],
    )


async def respond(entry: _Entry, scope: Scope, send: Send) -> None:
    """Answer a GET or HEAD with one prepared version: 304 when the client has it, gzip if asked."""
    accept_encoding = if_none_match = if_modified_since = None
    for name, value in scope["headers"]:
        if name == b"accept-encoding":
            accept_encoding = value.decode("latin-1")
        elif name == b"if-none-match":
            # Repeated header lines form one list (RFC 9110 §5.3).
            text = value.decode("latin-1")
            if_none_match = text if if_none_match is None else f"{if_none_match},{text}"
        elif name == b"if-modified-since":
            if_modified_since = value.decode("latin-1")

    gz = entry.gz_body is not None and accepts_gzip(accept_encoding)
    etag = entry.gz_etag if gz else entry.etag
    if _not_modified(etag, entry.mtime, if_none_match, if_modified_since):
        headers = entry.nm_gz_headers if gz else entry.nm_headers
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    headers = entry.ok_gz_headers if gz else entry.ok_headers
    head = scope.get("method", "GET") == "HEAD"
    body = b"" if head else (entry.gz_body if gz else entry.body)
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def accepts_gzip(header: str | None) -> bool:
    """Whether an Accept-Encoding value allows gzip (explicitly or via `*`) with q > 0."""
    if not header:
        return False
    gzip_q = star_q = None
    for item in header.split(","):
        coding, _, params = item.partition(";")
        coding = coding.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value.strip())
                except ValueError:
                    q = 0.0
        if coding in ("gzip", "x-gzip"):
            gzip_q = q
        elif coding == "*":
            star_q = q
    if gzip_q is not None:
        return gzip_q > 0
    return star_q is not None and star_q > 0


def etag_matches(etag: str, if_none_match: str) -> bool:
    """Weak comparison of `etag` against an If-None-Match list (`*` matches anything)."""
    if if_none_match.strip() == "*":
        return True
    opaque = etag.removeprefix("W/")
    return any(f'"{tag}"' == opaque for tag in _ETAG_RE.findall(if_none_match))


def _not_modified(
    etag: str, mtime: int, if_none_match: str | None, if_modified_since: str | None
) -> bool:
    # RFC 9110 §13.2.2: If-None-Match is evaluated instead of If-Modified-Since when present.
    if if_none_match is not None:
        return etag_matches(etag, if_none_match)
    if if_modified_since is None:
        return False
    try:
        since: datetime = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError, IndexError):
        return False  # an invalid date is ignored, as the RFC asks
    if since.tzinfo is None:
        return False
    return mtime <= since.timestamp()


async def _plain(send: Send, status: int, body: bytes, extra: Headers | None = None) -> None:
    headers = [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
