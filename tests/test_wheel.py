"""A wheel built from the checkout, installed in a fresh venv elsewhere, runs with its templates."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UV = shutil.which("uv")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(UV is None, reason="uv is not on PATH: it builds the wheel and its venv"),
]


def run(*args: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, f"{args}: {done.stdout}\n{done.stderr}"
    return done.stdout


def test_a_wheel_installed_outside_the_checkout_collects_builds_and_previews(tmp_path: Path):
    assert UV is not None
    dist = tmp_path / "dist"
    run(UV, "build", "--wheel", "--out-dir", dist, ROOT, cwd=tmp_path)
    (wheel,) = dist.glob("newsletter-*.whl")

    venv = tmp_path / "venv"
    run(UV, "venv", "--python", sys.executable, venv, cwd=tmp_path)
    python = venv / "bin" / "python"
    # The wheel's own dependency list decides what is installed (--no-deps would hide a missing
    # one); the lock only pins their versions, so this needs nothing the CI run has not fetched.
    pins = tmp_path / "pins.txt"
    run(UV, "export", "--frozen", "--no-hashes", "--no-emit-project", "--project", ROOT,
        "--output-file", pins, cwd=tmp_path)
    run(UV, "pip", "install", "--python", python, "--constraint", pins, wheel, cwd=tmp_path)

    site = tmp_path / "site"
    (site / "articles").mkdir(parents=True)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    (site / "articles" / "harbour.md").write_text(
        f'---\ntitle: "Harbour dues, explained"\ndate: {now}\nsection: Economics\n'
        'summary: "Why the port raised its fees."\n---\n\nThe port raised its fees in spring.\n',
        encoding="utf-8")
    (site / "newsletter.toml").write_text(
        '[publication]\nname = "Wheel Weekly"\nbase_url = "https://wheel.example/"\n'
        'postal_address = "1 Quay, Port"\n'
        '[storage]\ndatabase_url = "sqlite:///state/n.db"\n'
        '[[sources]]\ntype = "folder"\npath = "articles"\n', encoding="utf-8")
    (site / "state").mkdir()

    env = {k: v for k, v in os.environ.items() if not k.startswith("NEWSLETTER_")}
    env["NEWSLETTER_CONFIG"] = str(site / "newsletter.toml")
    env.pop("PYTHONPATH", None)
    where = run(python, "-c", "import newsletter.resources as r; print(r.DEFAULT_TEMPLATES)",
                cwd=site, env=env).strip()
    assert Path(where).is_relative_to(venv), where
    assert not Path(where).is_relative_to(ROOT)

    newsletter = venv / "bin" / "newsletter"
    assert "1 new" in run(newsletter, "collect", cwd=site, env=env)
    run(newsletter, "issue", "build", "--force", cwd=site, env=env)
    out = run(newsletter, "issue", "preview", "1", "--out", site / "preview", cwd=site, env=env)
    html = (site / "preview").glob("*.html")
    page = next(html).read_text(encoding="utf-8")
    assert "Harbour dues, explained" in page
    assert "Wheel Weekly" in page
    assert "unsubscribe" in page.lower()  # the footer comes from the shipped template
    assert "html:" in out
