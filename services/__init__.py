"""The separately deployed services behind the gateway. Each is built the same way:

`api.py` (routes; each handler is one call of the service) -> `deps.py` (the identity and scope checks
and the collaborators a route may ask for) -> `service.py` (the rules) -> `repository.py` (all SQL,
on `shared/repository.Repository`) over `models.py`; `schemas.py` are the bodies, `app.py` the app
(the shared service app plus what the service adds to its lifespan state), `settings.py` its
settings. Each owns its database and reaches the others only over HTTP.
"""
