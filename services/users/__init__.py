"""Users service: tenants, users, password hashes, tokens, API keys."""
