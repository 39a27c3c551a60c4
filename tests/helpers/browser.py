"""Debian chromium through Playwright for the browser tests, and axe-core's WCAG check."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run", "--disable-sync"]
# `npm install --no-save axe-core` in the checkout puts it here; NEWSLETTER_AXE may point
# at another copy.
AXE = Path(os.environ.get("NEWSLETTER_AXE") or ROOT / "node_modules/axe-core/axe.min.js")


def sync_api_or_skip(*, axe: bool = False) -> Any:
    """playwright.sync_api; the module (or the test) calling it skipped when chromium, axe-core
    (with `axe`) or playwright is missing."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt install chromium)", allow_module_level=True)
    if axe and not AXE.is_file():
        pytest.skip(f"axe-core is not installed ({AXE} is missing: run `npm install --no-save "
                    f"axe-core` in the checkout)", allow_module_level=True)
    return pytest.importorskip("playwright.sync_api",
                               reason="playwright is not installed (pip install playwright)")


def axe_run(*, iframes: bool = True) -> str:
    """A script for page.evaluate: axe-core's WCAG 2 A/AA violations on the page, one line each
    (without `iframes`, the frames in it left unchecked)."""
    options = "{runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa']}}"
    if not iframes:
        options = "{iframes: false, " + options[1:]
    return """async () => {
  const result = await axe.run(document, OPTIONS);
  return result.violations.map(v => `${v.id} (${v.impact}): ` + v.nodes.slice(0, 3)
    .map(n => n.target.join(' ') + ' — ' + (n.failureSummary || '').replace(/\\s+/g, ' '))
    .join(' | '));
}""".replace("OPTIONS", options)
