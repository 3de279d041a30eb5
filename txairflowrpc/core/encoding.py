"""base64url without padding, as JOSE (JWTs, JWKs) writes it."""

from __future__ import annotations

import base64
import binascii


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url; `ValueError` if it is not base64url."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, TypeError):
        raise ValueError("not base64url") from None
