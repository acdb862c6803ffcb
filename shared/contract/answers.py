"""What an answer that holds a secret says about caching, and what an aggregate's says about its parts."""

from __future__ import annotations

# What a service sends with an answer that holds a secret (a token, a new API key, a webhook secret);
# the gateway's routes of those answers say `secret` too (`gateway/routes/forward.py`).
NO_STORE = "no-store"
CACHE_CONTROL = "Cache-Control"
# On an aggregate route's answer: `true` only when every part answered (the gateway passes it on from a
# service's answer too).
AGGREGATE_COMPLETE_HEADER = "X-Aggregate-Complete"
