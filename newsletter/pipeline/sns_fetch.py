"""Amazon SNS over HTTPS: signing certificates fetched, subscriptions confirmed."""

# Only URLs audience.sns.valid_sns_url accepts (https, sns.<region>.amazonaws.com) are ever
# fetched, with verified TLS, no redirects, a short timeout and a small size cap: a forged
# notification cannot make the service fetch anything else.

from __future__ import annotations

import httpx

from newsletter.audience.sns import valid_sns_url
from newsletter.errors import NewsletterError

MAX_BYTES = 64 * 1024
TIMEOUT = 10.0


def _get(url: str) -> bytes:
    if not valid_sns_url(url):
        raise NewsletterError(f"not an Amazon SNS URL: {url[:120]!r}")
    # trust_env=False: no proxy or .netrc from the environment decides where this goes.
    with httpx.Client(timeout=TIMEOUT, follow_redirects=False, verify=True,
                      trust_env=False) as client, \
            client.stream("GET", url) as response:
        if response.status_code != 200:
            raise NewsletterError(f"{url[:120]}: HTTP {response.status_code}")
        body = b""
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_BYTES:
                raise NewsletterError(f"{url[:120]}: larger than {MAX_BYTES} bytes")
        return body


def fetch_cert(url: str) -> bytes:
    """The PEM certificate at a SigningCertURL."""
    return _get(url)


def confirm_subscription(url: str) -> None:
    """Visit a SubscribeURL: SNS then starts delivering the topic's notifications here."""
    _get(url)
