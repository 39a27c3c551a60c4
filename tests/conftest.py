"""Shared fixtures: a settings file in a temp folder with a real SQLite database."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from newsletter.config import Settings, load_settings


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Write a config into tmp_path (articles/, feeds/, n.db) with extra TOML appended."""

    def make(extra: str = "", *, folder: bool = True) -> Settings:
        (tmp_path / "articles").mkdir(exist_ok=True)
        source = f'[[sources]]\ntype = "folder"\npath = "{tmp_path / "articles"}"\n'
        text = f"""
[publication]
name = "Test Ledger"
base_url = "https://ledger.example.org/"
postal_address = "1 Test Street"
[storage]
database_url = "sqlite:///{tmp_path / 'n.db'}"
[feeds]
output_dir = "{tmp_path / 'feeds'}"
{source if folder else ""}
{extra}
"""
        path = tmp_path / "n.toml"
        path.write_text(text, encoding="utf-8")
        return load_settings(path, environ={})

    return make
