"""Tests for reading article files safely and dispatching them to the right parser."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from newsletter.collect.sources.files import (
    decode_article_bytes,
    iter_article_files,
    read_article_file,
)
from newsletter.errors import SourceError

FIXTURES = Path(__file__).parent / "fixtures" / "articles"

FRONT = "---\ntitle: Café “Noir”\ndate: 2025-01-02\n---\nBody – text.\n"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    folder = tmp_path / "articles"
    folder.mkdir()
    return folder


def write(path: Path, data: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)
    return path


def reason_for(path: Path, root: Path, **limits: int) -> str:
    with pytest.raises(SourceError) as caught:
        read_article_file(path, root, **limits)
    assert caught.value.where == str(path)
    return caught.value.reason


@pytest.mark.parametrize(
    ("name", "title"),
    [
        (
            "good/front-matter-full.md",
            "Budgets Are Moral Documents: A Reading of the Autumn Statement",
        ),
        ("good/front-matter-minimal.md", "A Short Note"),
        ("good/digest-one-author.md", "Water Treaties Are the Next Diplomatic Frontier"),
        (
            "good/digest-placeholder-links.md",
            "Chips, Export Controls and the Allies Who Pay for Them",
        ),
    ],
)
def test_dispatches_to_the_right_parser(name: str, title: str) -> None:
    path = FIXTURES / name
    draft = read_article_file(path, FIXTURES)
    assert draft.title == title
    assert draft.origin == str(path)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("bad/plain.md", "not recognised: neither front matter nor a digest export"),
        ("bad/fm-unclosed.md", "front matter is not closed by a '---' line"),
        ("bad/digest-no-date.md", "no date line"),
    ],
)
def test_errors_name_the_file(name: str, reason: str) -> None:
    assert reason in reason_for(FIXTURES / name, FIXTURES)


@pytest.mark.parametrize(
    "data",
    [
        FRONT.encode("utf-8"),
        b"\xef\xbb\xbf" + FRONT.encode("utf-8"),
        FRONT.encode("utf-16"),  # with the platform's BOM
        b"\xff\xfe" + FRONT.encode("utf-16-le"),
        b"\xfe\xff" + FRONT.encode("utf-16-be"),
        FRONT.replace("\n", "\r\n").encode("cp1252"),
    ],
)
def test_encodings(root: Path, data: bytes) -> None:
    draft = read_article_file(write(root / "a.md", data), root)
    assert draft.title == "Café “Noir”"
    assert draft.body_html == "<p>Body – text.</p>\n"


def test_latin1_fallback_for_bytes_cp1252_leaves_undefined() -> None:
    # 0x81 is undefined in cp1252 and 0xe9 is not valid UTF-8 here: Latin-1 maps both.
    assert decode_article_bytes(b"caf\xe9 \x81", "x.md") == "café \x81"


def test_valid_utf8_wins_over_cp1252() -> None:
    assert decode_article_bytes("“é”".encode(), "x.md") == "“é”"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"---\ntitle: x\x00\n", "looks binary (contains NUL bytes), not text"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks binary (contains NUL bytes)"),
        (b"\xff\xfe" + "a\x00b".encode("utf-16-le"), "looks binary (contains NUL characters)"),
        (b"\xff\xfe\x00\xd8", "starts with a UTF-16 mark but is not valid UTF-16"),
        (b"", "not recognised: neither front matter nor a digest export"),
    ],
)
def test_bad_bytes(root: Path, data: bytes, reason: str) -> None:
    assert reason in reason_for(write(root / "a.md", data), root)


def test_size_limit_is_checked_before_reading(root: Path) -> None:
    path = root / "huge.md"
    with path.open("wb") as handle:
        handle.truncate(8 * 1024**3)  # sparse: instant to make, very slow to actually read
    assert reason_for(path, root) == f"is {8 * 1024**3} bytes, over the limit of 5000000"


def test_size_limit_is_configurable(root: Path) -> None:
    path = write(root / "a.md", FRONT)
    assert "over the limit of 10" in reason_for(path, root, max_bytes=10)
    assert read_article_file(path, root, max_bytes=len(FRONT.encode())).title


def test_long_lines_are_refused(root: Path) -> None:
    path = write(root / "a.md", FRONT + "x" * 101 + "\n")
    assert reason_for(path, root, max_line=100) == "has a line of 101 characters (limit 100)"
    assert read_article_file(path, root, max_line=101).title
    # A lone CR is a line break too, so it does not hide a long line from the check.
    cr_path = write(root / "cr.md", FRONT.replace("\n", "\r") + "x" * 101)
    assert "has a line of 101" in reason_for(cr_path, root, max_line=100)


def test_path_outside_root_is_refused(tmp_path: Path, root: Path) -> None:
    outside = write(tmp_path / "outside.md", FRONT)
    assert "outside the articles folder" in reason_for(outside, root)
    assert "outside the articles folder" in reason_for(root / ".." / "outside.md", root)


def test_symlink_leaving_root_is_refused(tmp_path: Path, root: Path) -> None:
    write(tmp_path / "secret.md", FRONT)
    link = root / "innocent.md"
    link.symlink_to(tmp_path / "secret.md")
    reason = reason_for(link, root)
    assert reason.startswith("resolves to ")
    assert "outside the articles folder" in reason


def test_symlink_inside_root_is_fine(root: Path) -> None:
    write(root / "real" / "a.md", FRONT)
    (root / "alias.md").symlink_to(root / "real" / "a.md")
    assert read_article_file(root / "alias.md", root).title == "Café “Noir”"


def test_symlinked_root_is_fine(tmp_path: Path, root: Path) -> None:
    write(root / "a.md", FRONT)
    (tmp_path / "link").symlink_to(root)
    assert read_article_file(tmp_path / "link" / "a.md", tmp_path / "link").title


def test_missing_file_and_directories(root: Path) -> None:
    assert reason_for(root / "missing.md", root) == "cannot be read: No such file or directory"
    (root / "folder.md").mkdir()
    assert reason_for(root / "folder.md", root) == "is not a regular file"
    broken = root / "broken.md"
    broken.symlink_to(root / "nowhere.md")
    assert reason_for(broken, root).startswith("cannot be read")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_is_refused_without_hanging(root: Path) -> None:
    os.mkfifo(root / "pipe.md")
    assert reason_for(root / "pipe.md", root) == "is not a regular file"


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(root: Path) -> None:
    path = write(root / "a.md", FRONT)
    path.chmod(0)
    assert reason_for(path, root) == "cannot be opened: Permission denied"


def test_iter_article_files_sorted_and_filtered(tmp_path: Path, root: Path) -> None:
    for name in [
        "b.md",
        "a.markdown",
        "Z.MD",
        "notes.txt",
        "a-b.md",
        ".hidden.md",
        "sub/c.md",
        "sub/.draft.md",
        "sub/deeper/d.md",
        ".git/config.md",
        "_drafts/e.md",
    ]:
        write(root / name, FRONT)
    write(tmp_path / "elsewhere" / "x.md", FRONT)
    (root / "linked-dir").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)
    (root / "linked-file.md").symlink_to(root / "b.md")

    found = [path.relative_to(root).as_posix() for path in iter_article_files(root)]
    assert found == [
        "Z.MD",
        "_drafts/e.md",
        "a-b.md",
        "a.markdown",
        "b.md",
        "linked-file.md",
        "sub/c.md",
        "sub/deeper/d.md",
    ]


def test_iter_article_files_paths_are_readable(root: Path) -> None:
    shutil.copytree(FIXTURES / "good", root / "good")
    titles = [read_article_file(path, root).title for path in iter_article_files(root)]
    assert len(titles) == len(list((FIXTURES / "good").glob("*.md")))


def test_iter_article_files_missing_root(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as caught:
        list(iter_article_files(tmp_path / "nope"))
    assert caught.value.where == str(tmp_path / "nope")
    assert caught.value.reason == "articles folder does not exist or is not a folder"


def test_iter_article_files_empty_root(root: Path) -> None:
    assert list(iter_article_files(root)) == []


def test_example_articles_all_parse() -> None:
    examples = Path(__file__).parent.parent / "examples" / "articles"
    drafts = [read_article_file(path, examples) for path in iter_article_files(examples)]
    assert len(drafts) >= 7
    assert {"World News", "Economy", "Technology"} <= {draft.section for draft in drafts}
    assert all(draft.authors and draft.body_html for draft in drafts)
    assert all('href="#"' not in draft.body_html for draft in drafts)
