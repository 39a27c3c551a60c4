"""People and their consent: subscribing, signed links, CSV import and export."""
