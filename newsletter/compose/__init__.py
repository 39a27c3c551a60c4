"""Articles to an issue: choosing them, the HTML email and its plain-text part."""
