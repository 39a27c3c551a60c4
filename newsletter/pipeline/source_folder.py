"""The `folder` source kind: Markdown articles and digest exports in a folder, read when changed."""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from newsletter.collect import articles as arts
from newsletter.collect.sources.files import iter_article_files, read_article_file
from newsletter.config import Source
from newsletter.errors import SourceError
from newsletter.models import Article
from newsletter.pipeline.sourcing import Run
from newsletter.store.articles import FileRecord


class FolderSource:
    """Each folder in turn; only files whose size or mtime changed are parsed again."""

    owns_identity: ClassVar[bool] = True

    def collect(self, run: Run, sources: list[Source]) -> list[Article]:
        found: list[Article] = []
        for source in sources:
            found += _collect_folder(run, source)
        return found


def _collect_folder(run: Run, source: Source) -> list[Article]:
    settings, store, report = run.settings, run.store, run.report
    root = Path(source.path)
    if not root.is_dir():
        report.errors.append(f"{root}: articles folder not found")
        return []
    root_key = str(root.resolve()) + os.sep
    prefix = len(str(root)) + 1
    records = store.file_records(root_key)
    paths = [(root_key + str(p)[prefix:], p) for p in iter_article_files(root, report.errors)]
    # Only files still on disk own a link. Hardening: a renamed (or deleted and re-created)
    # article used to collide for ever with the record of its old file name.
    present = {key for key, _ in paths}
    owner = {r.article_key: p for p, r in records.items() if r.article_key and p in present}
    rules = arts.LinkRules(settings.publication.base_url, settings.publication.article_path)
    changed: dict[str, FileRecord] = {}
    found: list[Article] = []
    for key, path in paths:  # key: resolving each file would dominate a warm run
        try:
            st = os.stat(path)
        except OSError as exc:
            report.errors.append(f"{path}: cannot read: {exc.strerror}")
            continue
        old = records.get(key)
        if old and old.mtime_ns == st.st_mtime_ns and old.size == st.st_size:
            report.skipped_files += 1
            if old.error:  # still broken: keep telling the operator until it is fixed
                report.errors.append(old.error)
            continue
        record = FileRecord(st.st_mtime_ns, st.st_size, None, None)
        try:
            draft = read_article_file(path, root, max_bytes=settings.collect.max_file_bytes)
            article = arts.build_article(draft, source=source.name or str(root), rules=rules,
                                         default_section=source.section)
            other = owner.get(article.key)
            if other and other != key:
                raise SourceError(str(path), f"its link {article.link} collides with {other}")
            owner[article.key] = key
            record.article_key = article.key
            found.append(article)
        except SourceError as exc:
            record.error = str(exc)
            report.errors.append(record.error)
        changed[key] = record
    store.save_file_records(changed)
    _forget_deleted(run, records, present, owner)
    run.owned.update(owner)
    return found


def _forget_deleted(run: Run, records: dict[str, FileRecord], present: set[str],
                    owner: dict[str, str]) -> None:
    """A deleted file takes its article out of the store, hence out of feeds and pages.

    A renamed file keeps its article (the new name owns the same identity). An article an
    issue holds stays: the mail already sent links to its page, which must keep working.
    """
    store, report = run.store, run.report
    gone = [p for p in records if p not in present]
    if gone and not present:
        # Every file gone at once looks like an unmounted or emptied disk, not an editor.
        report.warnings.append(f"{next(iter(records)).rsplit(os.sep, 1)[0]}: no article files "
                               f"left; their {len(gone)} articles are kept")
        return
    keys = {records[p].article_key for p in gone} - set(owner) - {None}
    if keys:
        report.removed += store.remove_articles(sorted(k for k in keys if k))
    if gone:
        store.forget_files(gone)
