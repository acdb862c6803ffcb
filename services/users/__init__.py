"""Users service: tenants, users, password hashes, tokens, API keys.

Each request runs in one transaction, the request's session. Its lifespan adds a token issuer to
the common service state.
"""
