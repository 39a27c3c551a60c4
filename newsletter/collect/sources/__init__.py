"""Readers that turn files and upstream feeds into ArticleDraft records."""
