"""Stored articles to what readers fetch: feeds (and the site's pages)."""
