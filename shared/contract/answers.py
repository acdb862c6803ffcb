"""What an answer that holds a secret says about caching."""

from __future__ import annotations

# What a service sends with an answer that holds a secret (a token, a new API key, a webhook secret);
# the gateway's routes of those answers say `secret` too (`gateway/routes/forward.py`).
NO_STORE = "no-store"
CACHE_CONTROL = "Cache-Control"
