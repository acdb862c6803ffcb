"""Public routes of the gateway, one module per domain, each a table of `Forward` rows (`forward.py`):
method, path, who may call it (`Access`: credentials, plans, scope), its quota, secrecy and deprecation, the errors
its service answers, and what the API reference shows."""
