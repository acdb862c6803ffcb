"""Portico's common library: every process imports its plumbing from here.

What the processes agree on is the `contract` package; what a process owns while it runs is typed in
`state.py`; what one stage of a request hands the next is `context.py`. The rest is plumbing:
settings, errors, logging, telemetry, metrics, middleware, the database and repository base, the
HTTP client, the internal identity token, the app factory and the command line.
"""
