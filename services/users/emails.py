"""The one form an email takes in the users service, wherever an email comes in: sign-up, creating a
user, logging in. Stored in that form, an email is unique across the system by the column's unique
index, and found at login by equality.

The rule (docs/operations/security.md, "Email addresses"):

- the address is parsed as email-validator parses it (surrounding spaces dropped, `Name <address>`
  read as its address, no IP literals);
- the domain is IDNA-processed (UTS #46, which also lower-cases it) and kept in its Unicode form, so
  `ada@BÜCHER.de` and `ada@xn--bcher-kva.de` are one address;
- the local part is NFKC-normalized and case-folded (`NFKC(casefold(NFKC(local)))`), so a decomposed
  `é`, fullwidth letters (U+FF21...), a ligature `ﬀ` or `ß` versus `ss` cannot make two accounts that
  read alike;
- the result must itself be a valid address (a fullwidth at sign, U+FF20, would become a
  second `@`).

Portico sends no email: an address is the account's name, never where a secret is sent, so folding
compatibility characters and case costs no one their mailbox. The rule is applied twice without
changing anything (`tests/unit/test_emails.py` checks every code point).
"""

from __future__ import annotations

import unicodedata
from typing import Annotated

from email_validator import EmailNotValidError, validate_email
from pydantic import AfterValidator, WithJsonSchema
from pydantic.networks import validate_email as parse_email
from pydantic_core import PydanticCustomError


def _fold(local_part: str) -> str:
    # NFKC again after casefold: folding can produce compatibility or decomposed forms NFKC maps.
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", local_part).casefold())


def canonical_email(raw: str) -> str:
    """The canonical form of an email address; ValueError when it is not a valid address, before or
    after normalization."""
    try:
        _, normalized = parse_email(raw)
    except PydanticCustomError as exc:
        raise ValueError(str(exc)) from None
    local_part, _, domain = normalized.rpartition("@")
    try:
        checked = validate_email(f"{_fold(local_part)}@{domain}", check_deliverability=False)
    except EmailNotValidError as exc:
        raise ValueError(f"value is not a valid email address once normalized: {exc}") from None
    return str(checked.normalized)


def canonical_email_or_none(raw: str) -> str | None:
    """For a login: a name that is no valid address finds no account, and is told so as any other."""
    try:
        return canonical_email(raw)
    except ValueError:
        return None


# A request body's email: validated and put in canonical form, documented as a plain email string.
Email = Annotated[
    str,
    AfterValidator(canonical_email),
    WithJsonSchema({"type": "string", "format": "email"}),
]
