"""NEWSLETTER_* environment variables: each one a setting, or named in an allow-list."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping

from newsletter.errors import ConfigError

# Variables that start with NEWSLETTER_ but are not NEWSLETTER_<SECTION>_<KEY> settings; any
# other such name is taken for a mistyped setting and refused. Add new ones here.
ENV_NOT_SETTINGS = frozenset({
    "NEWSLETTER_CONFIG",  # the configuration file (--config)
    "NEWSLETTER_TEST_DATABASE_URL",  # the PostgreSQL the test suite and CI use
    "NEWSLETTER_BENCH_PG_URL",  # the PostgreSQL bench/ measures against
})


def check_env_names(environ: Mapping[str, str], settings: Iterable[str]) -> None:
    """A mistyped name used to be ignored, so its setting silently kept the file's value."""
    known = set(settings) | ENV_NOT_SETTINGS
    for name in sorted(environ):
        if not name.startswith("NEWSLETTER_") or name in known:
            continue
        # Compared without the shared prefix, which would make every name look close.
        close = difflib.get_close_matches(name[11:], sorted(k[11:] for k in known), n=1,
                                          cutoff=0.6)
        hint = (f"did you mean NEWSLETTER_{close[0]}?" if close else
                "settings are NEWSLETTER_<SECTION>_<KEY>, see `newsletter config example`")
        raise ConfigError(f"environment {name}: unknown setting ({hint})")


def blame_environment(exc: ConfigError, where: str,
                      overridden: Iterable[tuple[str, str]]) -> ConfigError:
    """A mistake found in a value NEWSLETTER_<SECTION>_<KEY> gave, named as that variable:
    "environment NEWSLETTER_NEWSLETTER_SEED_LIST: …", not the file, which does not hold it."""
    text = str(exc)
    for section, key in overridden:
        prefix = f"{where}: {section}.{key}"
        if text.startswith(prefix) and text[len(prefix):len(prefix) + 1] in (":", " "):
            rest = text[len(prefix):]
            if ": expected" in rest and "got '[" in rest:  # a TOML or JSON list, as written
                rest += " (in the environment a list is comma-separated: a,b; empty for none)"
            return ConfigError("environment " + f"NEWSLETTER_{section}_{key}".upper() + rest)
    return exc
