"""Public routes of the gateway, one module per domain, each a table of `Forward` rows (`forward.py`):
method, path, the caller dependency that checks scopes (and plans), and what the API reference shows."""
