"""The one canonical form of an email (services/users/emails.py), which sign-up, user creation and login
share: what it merges, what it refuses, and that applying it again changes nothing."""

from __future__ import annotations

import sys
import unicodedata

import pytest

from services.users.emails import _fold, canonical_email, canonical_email_or_none


@pytest.mark.parametrize(
    ("typed", "canonical"),
    [
        ("Ada@Example.COM", "ada@example.com"),
        ("  ada@example.com ", "ada@example.com"),
        ("Ada Lovelace <ada@example.com>", "ada@example.com"),
        # Decomposed and composed é are one address.
        ("Jose\u0301@example.com", "jos\u00e9@example.com"),
        ("JOS\u00c9@example.com", "jos\u00e9@example.com"),
        # Lookalikes by compatibility or case folding are one address.
        ("\uff41\uff44\uff41@example.com", "ada@example.com"),
        ("o\ufb00ice@example.com", "office@example.com"),
        ("Stra\u00dfe@example.com", "strasse@example.com"),
        ("\u212aelvin@example.com", "kelvin@example.com"),
        # The domain in its IDNA Unicode form, whichever form was typed.
        ("ada@B\u00dcCHER.de", "ada@b\u00fccher.de"),
        ("ada@xn--bcher-kva.de", "ada@b\u00fccher.de"),
    ],
)
def test_spellings_of_one_address_have_one_canonical_form(typed, canonical):
    assert canonical_email(typed) == canonical


@pytest.mark.parametrize(
    "typed",
    [
        "not-an-email",
        "ada@",
        "ada@[127.0.0.1]",
        "a\nb@example.com",
        # A fullwidth at sign is a letter-like symbol to the validator, but NFKC makes it a second @.
        "x\uff20y@example.com",
        # Longer than an address may be (254) once the ligatures are spelled out.
        "\ufb03" * 85 + "@example.com",
    ],
)
def test_what_is_no_valid_address_in_canonical_form_is_refused(typed):
    with pytest.raises(ValueError, match="not a valid email address"):
        canonical_email(typed)
    assert canonical_email_or_none(typed) is None


def test_folding_a_local_part_twice_changes_nothing_for_any_code_point():
    for code_point in range(sys.maxunicode + 1):
        if unicodedata.category(chr(code_point)) == "Cs":
            continue
        once = _fold(chr(code_point))
        assert _fold(once) == once, hex(code_point)


def test_the_canonical_form_is_its_own_for_every_code_point_the_rule_changes():
    for code_point in range(0x80, sys.maxunicode + 1):
        character = chr(code_point)
        if unicodedata.category(character) == "Cs" or _fold(character) == character:
            continue
        once = canonical_email_or_none(f"a{character}b@example.com")
        if once is not None:
            assert canonical_email(once) == once, hex(code_point)
