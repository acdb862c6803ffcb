"""Patterns every process validates text against."""

# Free text: no control characters (PostgreSQL cannot store NUL, and none belongs in a name).
PLAIN_TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"

# Ids in paths and queries: the UUIDs the services hand out fit, and nothing longer than an id column,
# nor a dot or slash that could change a forwarded path, gets through.
RESOURCE_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
