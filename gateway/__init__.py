"""The API gateway: the only thing API consumers talk to.

A request passes the common pure ASGI layers (`shared/middleware.py`), then the edge
(`edge/pipeline.py`, `Edge`): one layer that matches the route once and runs the stages in one pass
(hygiene, admission, authentication by the one `Authenticator` of `edge/authentication.py`, rate
limit, idempotency, caching, deprecation). A forwarded route (a `Forward` row of `routes/`, compiled
into a `CompiledForward`) is run by the edge itself: `edge/forwarding.py` `Forwarder.run` checks the
caller's `Access` and sends the request's bytes to one service (`ServiceClient.forward`, through
`upstreams.py`). Other routes (aggregates, real time, GraphQL, docs) are FastAPI's. Everything the
gateway owns while it runs is one `GatewayState` (`state.py`), built in the lifespan in `app.py`;
routes reach it through `deps.py`, the edge through the `EdgeRuntime` the lifespan hands it
(`Edge.running`).
"""
