"""Sources to stored articles: reading, identity, sanitising, what is new."""
