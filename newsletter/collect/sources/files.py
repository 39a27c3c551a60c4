"""Reading article files from the articles folder safely, and picking the right parser."""

from __future__ import annotations

import codecs
import os
import stat
from collections.abc import Iterator
from pathlib import Path

from newsletter.collect.sources.digest import looks_like_digest, parse_digest
from newsletter.collect.sources.markdown import has_front_matter, parse_markdown
from newsletter.errors import SourceError
from newsletter.models import ArticleDraft

ARTICLE_SUFFIXES = frozenset({".md", ".markdown"})

# O_NONBLOCK: opening a FIFO named "x.md" must not hang the run waiting for a writer.
# O_NOFOLLOW: the path was resolved already; a symlink appearing now is a swap attack.
_OPEN_FLAGS = (
    os.O_RDONLY
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_CLOEXEC", 0)
    | getattr(os, "O_BINARY", 0)
)


def read_article_file(
    path: Path, root: Path, max_bytes: int = 5_000_000, max_line: int = 1_000_000
) -> ArticleDraft:
    """Read one article file under `root` and parse it as front matter Markdown or a digest."""
    origin = str(path)
    text = decode_article_bytes(_read_bytes(path, root, max_bytes, origin), origin)
    longest = max((len(line) for line in text.replace("\r", "\n").split("\n")), default=0)
    if longest > max_line:
        raise SourceError(origin, f"has a line of {longest} characters (limit {max_line})")
    if has_front_matter(text):
        return parse_markdown(text, origin)
    if looks_like_digest(text):
        return parse_digest(text, origin)
    raise SourceError(origin, "not recognised: neither front matter nor a digest export")


def _read_bytes(path: Path, root: Path, max_bytes: int, origin: str) -> bytes:
    try:
        real_root = root.resolve(strict=True)
        real = path.resolve(strict=True)
    except OSError as exc:
        raise SourceError(origin, f"cannot be read: {exc.strerror or exc}") from None
    if not real.is_relative_to(real_root):
        raise SourceError(origin, f"resolves to {real}, outside the articles folder {real_root}")
    try:
        fd = os.open(real, _OPEN_FLAGS)
    except OSError as exc:
        raise SourceError(origin, f"cannot be opened: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise SourceError(origin, "is not a regular file")
        # Size is checked before reading, and the read is capped in case the file grows.
        if info.st_size > max_bytes:
            raise SourceError(origin, f"is {info.st_size} bytes, over the limit of {max_bytes}")
        data = _read_at_most(fd, max_bytes + 1)
    except OSError as exc:
        raise SourceError(origin, f"cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise SourceError(origin, f"is over the limit of {max_bytes} bytes")
    return data


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    remaining = limit
    while remaining > 0:
        chunk = os.read(fd, min(remaining, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def decode_article_bytes(data: bytes, origin: str) -> str:
    """Bytes to text: UTF-8 (BOM optional), UTF-16 with BOM, else Windows-1252/Latin-1."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            text = data.decode("utf-16")  # the BOM picks the byte order and is dropped
        except UnicodeDecodeError:
            raise SourceError(origin, "starts with a UTF-16 mark but is not valid UTF-16") from None
        # UTF-16 text is full of NUL bytes, so "binary" is only judged after decoding it.
        if "\x00" in text:
            raise SourceError(origin, "looks binary (contains NUL characters), not text")
        return text
    if b"\x00" in data:
        raise SourceError(origin, "looks binary (contains NUL bytes), not text")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    # Not UTF-8, so most likely saved by an older Windows editor: cp1252 is what those write,
    # and it agrees with Latin-1 except for curly quotes and dashes in 0x80-0x9F. Latin-1
    # maps every byte, so it is the fallback for the five bytes cp1252 leaves undefined.
    # Guessing wrong here only garbles a few characters; refusing would lose the article.
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def iter_article_files(root: Path, errors: list[str] | None = None) -> Iterator[Path]:
    """Article files (*.md, *.markdown) under root, sorted; skips hidden and symlinked dirs.

    A folder that cannot be listed raises SourceError, or, when `errors` is given, is added
    to it and skipped (hardening: one unreadable subfolder used to stop the whole collect).
    """
    if not root.is_dir():
        raise SourceError(str(root), "articles folder does not exist or is not a folder")

    def fail(exc: OSError) -> None:
        problem = SourceError(str(exc.filename or root),
                              f"cannot list folder: {exc.strerror or exc}")
        if errors is None:
            raise problem
        errors.append(str(problem))

    found: list[tuple[tuple[str, ...], str]] = []
    top = str(root)
    # followlinks=False: a symlinked folder could point anywhere, or loop back on itself.
    # Plain strings, not Path objects: a warm collect of 10,000 files is mostly this loop.
    for folder, dirs, files in os.walk(top, onerror=fail, followlinks=False):
        dirs[:] = sorted(name for name in dirs if not name.startswith("."))
        rel = tuple(os.path.relpath(folder, top).split(os.sep)) if folder != top else ()
        for name in files:
            if name.startswith(".") or os.path.splitext(name)[1].lower() not in ARTICLE_SUFFIXES:
                continue
            found.append(((*rel, name), os.path.join(folder, name)))
    # Sorting on path parts keeps a folder's files together ("a/z.md" before "a-b.md").
    found.sort(key=lambda item: item[0])
    return iter([Path(path) for _, path in found])
