"""Public keys given in the settings, read once: SendGrid's event webhook verification key."""

# A leaf module (cryptography only), so config.py can check the key without importing the
# rest of audience/.

from __future__ import annotations

import base64
import binascii
from functools import lru_cache

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


@lru_cache(maxsize=4)
def sendgrid_key(text: str) -> ec.EllipticCurvePublicKey:
    """SendGrid's verification key: base64 DER SubjectPublicKeyInfo as shown, or PEM.

    ValueError when it is neither, or not a P-256 key.
    """
    try:
        if "-----BEGIN" in text:
            key = serialization.load_pem_public_key(text.strip().encode("ascii"))
        else:
            der = base64.b64decode("".join(text.split()), validate=True)
            key = serialization.load_der_public_key(der)
    except (ValueError, UnicodeError, UnsupportedAlgorithm, binascii.Error):
        raise ValueError("not a public key in base64 (DER) or PEM form") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise ValueError("not an ECDSA P-256 public key")
    return key
