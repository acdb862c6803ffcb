"""The shape of an API key, and how it is hashed and named."""

from __future__ import annotations

import hashlib
import re
import secrets

# A key is `sk_` and 32 random bytes in base64url (43 characters without padding). Only its SHA-256
# is ever stored or sent between processes.
API_KEY_PREFIX = "sk_"
API_KEY_BYTES = 32
API_KEY_RE = re.compile(r"^sk_[A-Za-z0-9_-]{43}$")
KEY_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
# The subject of an identity that came from an API key: `key:<key id>`.
KEY_SUBJECT_PREFIX = "key:"


def new_api_key() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(API_KEY_BYTES)


def is_well_formed(raw: str) -> bool:
    return API_KEY_RE.match(raw) is not None


def hash_api_key(raw: str) -> str:
    """Hex SHA-256: a key has 256 bits of entropy, so a fast unsalted hash is enough (no dictionary
    of likely keys exists to attack it with), and it lets the key be looked up by its hash."""
    return hashlib.sha256(raw.encode("ascii")).hexdigest()


def key_subject(key_id: str) -> str:
    return KEY_SUBJECT_PREFIX + key_id


def key_id_of(subject: str) -> str | None:
    """The API key id of a key's subject; None for a user's subject."""
    return subject.removeprefix(KEY_SUBJECT_PREFIX) if subject.startswith(KEY_SUBJECT_PREFIX) else None
