"""Newsletter and syndication service: articles in, feeds and email issues out."""

__version__ = "0.1.0"
