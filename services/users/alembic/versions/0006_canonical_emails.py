"""canonical emails: stored local parts NFKC-normalized and case-folded, as sign-up and login now make them

Emails were stored NFC-normalized and lower-cased, with the domain in its IDNA (UTS #46) Unicode form.
The domain rule is unchanged, and an all-ASCII local part lower-cased is already case-folded, so only
addresses with other characters before the `@` may change (`straße@` becomes `strasse@`, `ada@` in
fullwidth letters becomes `ada@`). Such an address that would become another account's, or no valid address,
cannot be changed without choosing between accounts: the migration then changes nothing and stops,
naming the users, for an operator to rename one of them and migrate again.

Downgrading keeps the canonical forms: they are valid addresses under the former rule too (the
original spellings are not kept).

Revision ID: 0006_canonical_emails
Revises: 0005_signing_keys

"""
import unicodedata
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa
from email_validator import EmailNotValidError, validate_email


# revision identifiers, used by Alembic.
revision: str = '0006_canonical_emails'
down_revision: Union[str, Sequence[str], None] = '0005_signing_keys'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

users = sa.table("users", sa.column("id", sa.String), sa.column("email", sa.String))


# Written out rather than imported: a migration keeps meaning what it meant when it was written.
def canonical(email: str) -> str | None:
    """The stored email under the new rule; None when that is no valid address."""
    local_part, _, domain = email.rpartition("@")
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", local_part).casefold())
    try:
        return str(validate_email(f"{folded}@{domain}", check_deliverability=False).normalized)
    except EmailNotValidError:
        return None


def upgrade() -> None:
    """Upgrade schema."""
    connection = op.get_bind()
    # Streamed, keeping only the few rows that can change: the table may be large.
    rows = connection.execute(sa.select(users.c.id, users.c.email).execution_options(yield_per=1000))
    changing = {row.id: row.email for row in rows if not row.email.isascii()}
    # New email -> the user who takes it.
    claimed: dict[str, str] = {}
    stuck: list[str] = []
    for user_id, email in sorted(changing.items()):
        new = canonical(email)
        if new == email:
            continue
        # A canonical address is its own canonical form: an address a row holds now, that row keeps.
        holder = claimed.get(new) if new is not None else None
        if new is not None and holder is None:
            holder = connection.execute(sa.select(users.c.id).where(users.c.email == new)).scalar()
        if new is None:
            stuck.append(f"{user_id} (no valid address)")
        elif holder is not None:
            stuck.append(f"{user_id} (the same as {holder})")
        else:
            claimed[new] = user_id
    if stuck:
        raise RuntimeError(
            "These users' emails would become another user's email, or no valid address, in canonical form "
            f"(services/users/emails.py): {', '.join(stuck)}. Nothing was changed. Give each of them "
            "an address of its own (UPDATE users SET email = ... WHERE id = ...) and migrate again."
        )
    for new, user_id in claimed.items():
        connection.execute(users.update().where(users.c.id == user_id).values(email=new))


def downgrade() -> None:
    """Downgrade schema."""
