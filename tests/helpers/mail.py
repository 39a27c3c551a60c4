"""The mail identity the message-building tests give MessageTemplate, without settings."""

from __future__ import annotations

from newsletter.deliver.mail import MailIdentity

IDENTITY = MailIdentity(from_address="news@example.org", from_name="The Ledger",
                        reply_to="editor@example.org", list_id="The Ledger <ledger.example.org>",
                        unsubscribe_mailto="unsubscribe@example.org",
                        message_id_domain="example.org")
