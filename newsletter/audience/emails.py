"""The plain-text emails people get about their subscription: confirm, manage link, welcome."""

from __future__ import annotations

from pathlib import Path

from jinja2 import Environment

from newsletter import templating
from newsletter.audience.subscriptions import clean_name


def _text_templates(templates_dir: Path | None) -> Environment:
    # Plain text: nothing to escape, and StrictUndefined catches a misspelt variable.
    return templating.environment(templates_dir, autoescape=False, strict=True,
                                  keep_trailing_newline=True)


def confirmation_email(*, publication: str, name: str, confirm_url: str, valid_hours: int,
                       templates_dir: Path | None = None) -> tuple[str, str]:
    """(subject, plain-text body) of the double opt-in email, from email/confirm.txt."""
    env = _text_templates(templates_dir)
    body = env.get_template("email/confirm.txt").render(
        publication=publication, name=clean_name(name), confirm_url=confirm_url,
        valid_hours=valid_hours)
    return f"Confirm your subscription to {clean_name(publication)}", body


def preferences_link_email(*, publication: str, name: str, preferences_url: str,
                           templates_dir: Path | None = None) -> tuple[str, str]:
    """(subject, plain-text body) of the mail /manage sends a subscriber, from email/manage.txt."""
    body = _text_templates(templates_dir).get_template("email/manage.txt").render(
        publication=publication, name=clean_name(name), preferences_url=preferences_url)
    return f"Your link to manage {clean_name(publication)}", body


def welcome_email(*, publication: str, name: str, returning: bool, values: dict[str, object],
                  templates_dir: Path | None = None) -> tuple[str, str]:
    """(subject, plain-text body) of the mail a person gets on confirming, from
    email/welcome.txt; `returning`: they were on the list before ("Welcome back"). `values`
    are the template's other fields: description, rhythm, next_issue, sections,
    sections_text, every_section, latest_issue_url, latest_issue_subject, home_url,
    preferences_url, unsubscribe_url, postal_address."""
    body = _text_templates(templates_dir).get_template("email/welcome.txt").render(
        **values, publication=publication, name=clean_name(name), returning=returning)
    again = " back" if returning else ""
    return f"Welcome{again} to {clean_name(publication)}", body
