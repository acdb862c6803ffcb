"""Free-text fields: no control characters (PostgreSQL cannot store NUL, and none belongs in a name)."""

PLAIN_TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"
